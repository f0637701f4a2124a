//! The one place Rust errors become Python exceptions. The classes live in `pbfast.errors`.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

use crate::banana::BananaError;
use crate::foolscap::negotiate::Failure;
use crate::jelly;
use crate::pb::PbError;
use crate::refs::RefError;
use crate::tls::TlsError;

pyo3::import_exception!(pbfast.errors, JellyError);
pyo3::import_exception!(pbfast.errors, InsecureJelly);
pyo3::import_exception!(pbfast.errors, TLSError);
pyo3::import_exception!(pbfast.errors, NegotiationError);
pyo3::import_exception!(pbfast.errors, ProtocolError);
pyo3::import_exception!(pbfast.errors, LimitExceeded);

/// Wraps a core [`BananaError`] so `?` turns it into `pbfast.errors.BananaError(message, offset,
/// limit)`.
pub struct PyBananaError(pub BananaError);

impl From<BananaError> for PyBananaError {
    fn from(e: BananaError) -> Self {
        PyBananaError(e)
    }
}

/// The Python class, named apart from the core's `BananaError`.
mod python_class {
    pyo3::import_exception!(pbfast.errors, BananaError);
}
use python_class::BananaError as PyBananaErrorType;

impl From<PyBananaError> for PyErr {
    fn from(PyBananaError(e): PyBananaError) -> PyErr {
        PyBananaErrorType::new_err((e.to_string(), e.offset, e.limit_name()))
    }
}

impl From<BananaError> for PyErr {
    fn from(e: BananaError) -> PyErr {
        PyBananaError(e).into()
    }
}

/// A PB stream that cannot go on: bad banana, a broken envelope, or a failed negotiation.
impl From<PbError> for PyErr {
    fn from(e: PbError) -> PyErr {
        match e {
            PbError::Banana(e) => e.into(),
            PbError::Protocol(what) => ProtocolError::new_err(what),
            PbError::Negotiation(what) => NegotiationError::new_err(what),
        }
    }
}

/// The reference table refusing a sending (the call that tried fails, as in Twisted) or a luid
/// the peer named (only the peer names luids: it broke the protocol).
impl From<RefError> for PyErr {
    fn from(e: RefError) -> PyErr {
        match e {
            RefError::Full { .. } => LimitExceeded::new_err((e.to_string(), "max_refs")),
            RefError::Unknown { .. } => ProtocolError::new_err(e.to_string()),
        }
    }
}

/// Our own certificate or key is a bad argument (`ValueError`); a failed TLS exchange is a
/// `pbfast.errors.TLSError`.
impl From<TlsError> for PyErr {
    fn from(e: TlsError) -> PyErr {
        match e {
            TlsError::Identity(message) => pyo3::exceptions::PyValueError::new_err(message),
            TlsError::Session(message) => TLSError::new_err(message),
        }
    }
}

/// A refused negotiation is a `pbfast.errors.NegotiationError`; a failed TLS exchange as above.
impl From<Failure> for PyErr {
    fn from(failure: Failure) -> PyErr {
        match failure {
            Failure::Refused(reason) => NegotiationError::new_err(reason),
            Failure::Tls(e) => e.into(),
        }
    }
}

/// A jelly error as its Python class: `InsecureJelly` for what policy refuses, `BananaError` for
/// what banana cannot carry, `JellyError` for the rest (all with the message and offset the core
/// gives); a Python exception from the builder or walker as it is.
impl From<jelly::Error<PyErr>> for PyErr {
    fn from(e: jelly::Error<PyErr>) -> PyErr {
        let offset = e.offset();
        match e {
            jelly::Error::Other(e) => e,
            jelly::Error::Banana(e) => PyBananaError(e).into(),
            jelly::Error::Insecure { .. } => InsecureJelly::new_err((e.to_string(), offset)),
            _ => JellyError::new_err((e.to_string(), offset)),
        }
    }
}

/// A Python exception met while building or walking values, passed on as it is.
impl From<PyErr> for jelly::Error<PyErr> {
    fn from(e: PyErr) -> jelly::Error<PyErr> {
        jelly::Error::Other(e)
    }
}

/// Malformed jelly (or a value jelly cannot express), with the stream offset when known.
pub fn jelly_error(message: String, offset: Option<u64>) -> PyErr {
    jelly::Error::Invalid { message, offset }.into()
}

/// A `pbfast.serialization.Unpersistable` standing in for something the sender could not send.
pub fn unpersistable<'py>(py: Python<'py>, reason: &str) -> PyResult<Bound<'py, PyAny>> {
    static CLASS: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    CLASS.import(py, "pbfast.serialization", "Unpersistable")?.call1((reason,))
}
