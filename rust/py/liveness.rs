//! `pbfast._core.Liveness`: the Python face of [`crate::liveness::Liveness`]. The connection
//! layer keeps one timer and the time the last data arrived; at the timer it asks what to do.

use pyo3::prelude::*;

use crate::liveness::{Due, Liveness};

/// `poll`'s answers.
pub const DUE_NOTHING: u8 = 0;
pub const DUE_PING: u8 = 1;
pub const DUE_HANDSHAKE: u8 = 2;
pub const DUE_IDLE: u8 = 3;

#[pyclass(module = "pbfast._core", name = "Liveness")]
pub struct LivenessPy(Liveness);

#[pymethods]
impl LivenessPy {
    /// The rules for a connection opened at `now`; a timeout or interval that is None or 0 does
    /// not apply.
    #[new]
    #[pyo3(signature = (now, handshake_timeout, idle_timeout, keepalive))]
    fn new(now: f64, handshake_timeout: Option<f64>, idle_timeout: Option<f64>, keepalive: Option<f64>) -> Self {
        LivenessPy(Liveness::new(now, handshake_timeout, idle_timeout, keepalive))
    }

    fn handshake_done(&mut self) {
        self.0.handshake_done();
    }

    /// Whether any rule needs the time the last data arrived.
    #[getter]
    fn watches_silence(&self) -> bool {
        self.0.watches_silence()
    }

    /// `(what, idle, next)`: what to do at `now` (`DUE_NOTHING`, `DUE_PING`, `DUE_HANDSHAKE`,
    /// `DUE_IDLE`), how long the peer has been silent, and when to ask again (None: never).
    fn poll(&mut self, now: f64, last_received: f64) -> (u8, f64, Option<f64>) {
        let what = match self.0.poll(now, last_received) {
            Due::Nothing => DUE_NOTHING,
            Due::Ping => DUE_PING,
            Due::HandshakeTimedOut => DUE_HANDSHAKE,
            Due::IdleTimedOut { .. } => DUE_IDLE,
        };
        (what, now - last_received, self.0.next_poll(last_received))
    }

    /// When to poll first (None: never).
    fn next_poll(&self, last_received: f64) -> Option<f64> {
        self.0.next_poll(last_received)
    }
}
