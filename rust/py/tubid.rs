//! Python bindings for [`crate::tubid`]: TubIDs, base32 and FURLs.

use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::tubid::{self, Furl, FurlError, Hint};

pyo3::import_exception!(pbfast.errors, BadFURLError);

impl From<FurlError> for PyErr {
    fn from(e: FurlError) -> PyErr {
        BadFURLError::new_err(e.0)
    }
}

/// tub_id(certificate_der) -> str: base32 of SHA-1 over the DER certificate.
#[pyfunction]
pub fn tub_id(py: Python<'_>, certificate_der: &[u8]) -> String {
    // Hashing a certificate needs no Python: let other threads run meanwhile.
    py.detach(|| tubid::tub_id(certificate_der))
}

/// base32(data) -> str: lowercase, unpadded RFC 4648 base32.
#[pyfunction]
pub fn base32(data: &[u8]) -> String {
    tubid::base32(data)
}

/// parse_furl(furl) -> (tub_id, hints, name). Raises `BadFURLError` naming what is wrong.
#[pyfunction]
pub fn parse_furl(furl: &str) -> PyResult<(String, Vec<String>, String)> {
    let Furl { tub_id, hints, name } = Furl::parse(furl)?;
    Ok((tub_id, hints, name))
}

/// format_furl(tub_id, hints, name) -> str, checked by parsing it back.
#[pyfunction]
pub fn format_furl(tub_id: &str, hints: Vec<String>, name: &str) -> PyResult<String> {
    let text = Furl { tub_id: tub_id.to_owned(), hints, name: name.to_owned() }.to_string();
    let back = Furl::parse(&text)?;
    if back.tub_id != tub_id || back.name != name {
        return Err(FurlError(format!("cannot make a FURL of TubID {tub_id:?}, name {name:?}")).into());
    }
    Ok(text)
}

/// parse_hint(hint) -> ("tcp", host, port) or (type, rest).
#[pyfunction]
pub fn parse_hint<'py>(py: Python<'py>, hint: &str) -> PyResult<Bound<'py, PyTuple>> {
    match Hint::parse(hint)? {
        Hint::Tcp { host, port } => ("tcp", host, port).into_pyobject(py),
        Hint::Other { kind, rest } => (kind, rest).into_pyobject(py),
    }
}
