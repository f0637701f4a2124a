//! `pbfast._core.Negotiation`: the Python face of [`crate::foolscap::negotiate::Negotiation`].
//! The connection feeds it each received chunk and writes what `take()` gives, until banana
//! starts (`finish()`) or the connection is refused.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::tls::TlsSessionPy;
use super::with_bytes;
use crate::foolscap::negotiate::{Negotiation, Setup, Step};
use crate::tls::Identity;

/// Negotiation(certificate, private_key, incarnation, extensions, target=None, host="",
/// last_connection=None): foolscap's negotiation of one connection, without I/O.
///
/// The Tub's certificate (DER) and private key (PKCS#8 DER) make its TLS session and TubID;
/// `extensions` are the pbfast extensions it announces and accepts. A client names the TubID it
/// dials (`target`), the host it dialled, and what its last connection to that Tub settled
/// (`master_connection`); without `target` this is the server side.
#[pyclass(module = "pbfast._core", name = "Negotiation")]
pub struct NegotiationPy(Negotiation);

fn step_name(step: Step) -> &'static str {
    match step {
        Step::Pending => "pending",
        Step::Decide => "decide",
        Step::Negotiated => "negotiated",
    }
}

#[pymethods]
impl NegotiationPy {
    #[new]
    #[pyo3(signature = (certificate, private_key, incarnation, extensions, target=None, host="", last_connection=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        certificate: &[u8],
        private_key: &[u8],
        incarnation: String,
        extensions: Vec<String>,
        target: Option<&str>,
        host: &str,
        last_connection: Option<(String, i64)>,
    ) -> PyResult<Self> {
        let identity = py.detach(|| Identity::from_der(certificate, private_key))?;
        let setup = Setup { identity, incarnation, extensions };
        let negotiation = match target {
            Some(target) => Negotiation::client(&setup, target, host, last_connection)?,
            None => Negotiation::server(&setup)?,
        };
        Ok(NegotiationPy(negotiation))
    }

    /// Process received bytes: "pending" (more are needed), "decide" (we are the master: answer
    /// with `decide` or `refuse`) or "negotiated" (`finish` hands over to banana). Raises
    /// `NegotiationError` when the connection is refused (the peer has been told, in what
    /// `take()` gives) and `TLSError` when TLS fails (`take()` gives its alert).
    fn receive(&mut self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<&'static str> {
        let negotiation = &mut self.0;
        // Handshake signatures and decryption need no Python: let other threads run.
        with_bytes(data, |bytes| Ok(step_name(py.detach(|| negotiation.receive(bytes))?)))
    }

    /// As master, after "decide": accept the connection as number `seqnum`; "negotiated".
    fn decide(&mut self, seqnum: i64) -> PyResult<&'static str> {
        Ok(step_name(self.0.decide(seqnum)?))
    }

    /// Refuse the connection for `reason`, telling the peer in the current phase's form
    /// (nothing once negotiation has failed: the peer has been told).
    fn refuse(&mut self, reason: &str) {
        self.0.refuse(reason);
    }

    /// Queue TLS's close_notify (once the upgrade has started TLS).
    fn close(&mut self) {
        self.0.close();
    }

    /// The bytes to send now (b"" if none).
    fn take<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyBytes> {
        self.0.take_with(|bytes| PyBytes::new(py, bytes))
    }

    /// Once "negotiated" and after `take()`: the TLS session for banana, and the plaintext that
    /// followed the last block (banana's first bytes).
    fn finish<'py>(&mut self, py: Python<'py>) -> PyResult<(TlsSessionPy, Bound<'py, PyBytes>)> {
        let phase = self.0.phase().name();
        let (session, rest) = self
            .0
            .finish()
            .ok_or_else(|| PyValueError::new_err(format!("negotiation cannot finish in the {phase} phase")))?;
        Ok((TlsSessionPy::from_session(session), PyBytes::new(py, &rest)))
    }

    /// "upgrade", "hello", "deciding", "decision", "done" or "failed".
    #[getter]
    fn phase(&self) -> &'static str {
        self.0.phase().name()
    }

    /// Whether the peer has sent TLS's close_notify.
    #[getter]
    fn peer_closed(&self) -> bool {
        self.0.peer_closed()
    }

    /// The peer's TubID, once its hello is accepted (else None); likewise the other `peer_`
    /// attributes.
    #[getter]
    fn peer_tub_id(&self) -> Option<String> {
        self.0.peer().map(|hello| hello.tub_id.clone())
    }

    #[getter]
    fn peer_incarnation(&self) -> Option<String> {
        self.0.peer().map(|hello| hello.incarnation.clone())
    }

    /// Whether the peer dialled (its hello says its last connection).
    #[getter]
    fn peer_is_client(&self) -> Option<bool> {
        self.0.peer().map(|hello| hello.client)
    }

    /// (master incarnation, seqnum) of the peer's last connection to us, as its hello says.
    #[getter]
    fn peer_last_connection(&self) -> Option<(String, i64)> {
        self.0.peer().and_then(|hello| hello.last_connection.clone())
    }

    /// The pbfast extensions both sides know; None if the peer is not pbfast (or negotiation
    /// is not over).
    #[getter]
    fn peer_extensions(&self) -> Option<Vec<String>> {
        self.0.peer().filter(|hello| hello.pbfast).map(|hello| hello.extensions.clone())
    }

    /// The connection's seqnum, once negotiated (else None).
    #[getter]
    fn seqnum(&self) -> Option<i64> {
        self.0.outcome().map(|outcome| outcome.seqnum)
    }

    /// Non-master, once negotiated: (master incarnation, seqnum), for our next hello to that Tub.
    #[getter]
    fn master_connection(&self) -> Option<(String, i64)> {
        self.0.outcome().and_then(|outcome| outcome.master_connection.clone())
    }

    fn __repr__(&self) -> String {
        format!("<Negotiation {}>", self.0.phase().name())
    }
}
