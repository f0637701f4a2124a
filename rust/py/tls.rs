//! Python binding for [`crate::tls`]: `TlsSession`, one call per received chunk or write batch.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::with_bytes;
use crate::tls::{Identity, TlsSession, KEPT_BUFFER};

/// TlsSession(server, certificate, private_key): TLS for one foolscap connection, without I/O.
///
/// `certificate` is DER (any X.509 version); `private_key` is PKCS#8 DER (PKCS#1 RSA and SEC1 EC
/// DER work too). A client may pass None for both to present no certificate.
#[pyclass(module = "pbfast._core", name = "TlsSession")]
pub struct TlsSessionPy {
    session: TlsSession,
    /// Decrypted bytes of one `feed`, kept to reuse the allocation.
    plaintext: Vec<u8>,
}

impl TlsSessionPy {
    /// A session whose handshake happened elsewhere (in a negotiation).
    pub(crate) fn from_session(session: TlsSession) -> Self {
        TlsSessionPy { session, plaintext: Vec::new() }
    }

    /// Decrypt `data`, appending the plaintext to `plaintext`.
    pub(crate) fn decrypt_into(&mut self, py: Python<'_>, data: &[u8], plaintext: &mut Vec<u8>) -> PyResult<()> {
        let session = &mut self.session;
        Ok(py.detach(|| session.feed(data, plaintext))?)
    }

    /// Queue application data (see `write`).
    pub(crate) fn encrypt(&mut self, data: &[u8]) -> PyResult<()> {
        Ok(self.session.write(data)?)
    }

    /// The ciphertext to send now, or None.
    pub(crate) fn take_some<'py>(&mut self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        Some(self.session.take_with(|bytes| PyBytes::new(py, bytes))).filter(|b| !b.as_bytes().is_empty())
    }
}

#[pymethods]
impl TlsSessionPy {
    #[new]
    fn new(py: Python<'_>, server: bool, certificate: Option<&[u8]>, private_key: Option<&[u8]>) -> PyResult<Self> {
        let identity = match (certificate, private_key) {
            (Some(certificate), Some(key)) => Some(py.detach(|| Identity::from_der(certificate, key))?),
            (None, None) => None,
            _ => return Err(PyValueError::new_err("give both a certificate and its private key, or neither")),
        };
        let session = match (server, &identity) {
            (true, Some(identity)) => TlsSession::server(identity)?,
            (true, None) => return Err(PyValueError::new_err("a TLS server needs a certificate and private key")),
            (false, identity) => TlsSession::client(identity.as_ref())?,
        };
        Ok(TlsSessionPy::from_session(session))
    }

    /// Process received ciphertext; returns all the plaintext it completed (b"" if none).
    /// Raises `TLSError` when the exchange fails; `take()` then still holds the alert to send.
    fn feed<'py>(&mut self, py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
        let (session, plaintext) = (&mut self.session, &mut self.plaintext);
        plaintext.clear();
        // Handshake signatures and bulk decryption need no Python: let other threads run.
        with_bytes(data, |bytes| Ok(py.detach(|| session.feed(bytes, plaintext))?))?;
        let received = PyBytes::new(py, plaintext);
        plaintext.clear();
        plaintext.shrink_to(KEPT_BUFFER);
        Ok(received)
    }

    /// Queue application data; before the handshake completes it is held until it can be sent.
    fn write(&mut self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let session = &mut self.session;
        with_bytes(data, |bytes| Ok(py.detach(|| session.write(bytes))?))
    }

    /// The ciphertext to send now (b"" if none).
    fn take<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyBytes> {
        self.session.take_with(|bytes| PyBytes::new(py, bytes))
    }

    /// Queue close_notify; `write` refuses data after it.
    fn close(&mut self) {
        self.session.close();
    }

    #[getter]
    fn handshaking(&self) -> bool {
        self.session.is_handshaking()
    }

    /// The peer's certificate (DER) once the handshake has checked its signature; None for a
    /// client that sent none.
    #[getter]
    fn peer_certificate<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.session.peer_certificate().map(|der| PyBytes::new(py, der))
    }

    #[getter]
    fn peer_tub_id(&self) -> Option<String> {
        self.session.peer_tub_id()
    }

    /// Whether the peer sent close_notify.
    #[getter]
    fn closed(&self) -> bool {
        self.session.peer_closed()
    }

    #[getter]
    fn protocol_version(&self) -> Option<&'static str> {
        self.session.protocol_version()
    }

    #[getter]
    fn cipher_suite(&self) -> Option<&'static str> {
        self.session.cipher_suite()
    }

    fn __repr__(&self) -> String {
        let state = if self.session.failure().is_some() {
            "failed"
        } else if self.session.is_handshaking() {
            "handshaking"
        } else {
            "open"
        };
        let role = match self.session.role() {
            crate::tls::Role::Client => "client",
            crate::tls::Role::Server => "server",
        };
        match self.session.peer_tub_id() {
            Some(peer) => format!("<TlsSession {role} {state} peer={peer}>"),
            None => format!("<TlsSession {role} {state}>"),
        }
    }
}
