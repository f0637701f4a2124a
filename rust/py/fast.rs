//! The per-call hot path of a PB connection, run inside `PbDecoder.feed` so the common calls
//! and answers cost no Python frames of the broker's:
//!
//! - an `answer` to one of our calls resolves its future directly (unless the call pinned
//!   objects, which the broker must release);
//! - every `message` is dispatched here (`Dispatch::call_any`): a plain `Referenceable` runs
//!   `remote_<name>(*args, **kwargs)`, any other object its `remoteMessageReceived`; a result
//!   that is not awaitable and is sent for no particular perspective is encoded as the answer.
//!
//! Answers go to the connection's `Sender`. The rest — a missing object, an exception, an
//! awaitable result, a result for a perspective, a reply that cannot be encoded — becomes an
//! event for the broker to finish. The broker switches the path off while it holds calls back
//! (flow control) and later runs the held calls through `PbDecoder.run`, which is this same
//! path; the path stops itself once a chunk's replies reach `REPLY_FLUSH` bytes so the broker
//! can write them and apply back-pressure to the rest.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};

pyo3::import_exception!(pbfast.errors, Error);

use super::dispatch::{Dispatch, Flavor, Ran};
use super::pb::{PbEncoderPy, EV_AWAITING, EV_FLUSH, EV_RAISED, EV_RETURNED};
use super::sender::SenderPy;
use super::tables::Tables;

/// Reply bytes after which the rest of a chunk goes through the broker (flow control).
pub const REPLY_FLUSH: usize = 1 << 16;

/// The connection's tables and encoder, shared with the decoder.
pub struct FastPath {
    /// Our objects, our calls awaiting replies, the references sent.
    tables: Py<Tables>,
    encoder: Py<PbEncoderPy>,
    /// Where the answers go.
    sender: Py<SenderPy>,
    /// What `remoteMessageReceived` is given as the broker.
    broker: Py<PyAny>,
    dispatch: Dispatch,
    pub enabled: bool,
}
/// What the fast path did with a command.
pub enum Outcome<'py> {
    /// Fully handled: nothing for the broker.
    Done,
    /// An event for the broker instead.
    Event(Bound<'py, PyAny>),
    /// Not for the fast path (an answer the broker must settle): the broker gets the ordinary
    /// event.
    Declined,
}

impl FastPath {
    pub fn new(
        tables: Py<Tables>,
        encoder: Py<PbEncoderPy>,
        sender: Py<SenderPy>,
        broker: Py<PyAny>,
        is_plain: Py<PyAny>,
    ) -> FastPath {
        FastPath { tables, encoder, sender, broker, dispatch: Dispatch::new(is_plain, Flavor::Pb), enabled: true }
    }

    /// `["answer", request_id, value]`: resolve the call's future.
    pub fn answer<'py>(&self, py: Python<'py>, request_id: i64, value: &Bound<'py, PyAny>) -> PyResult<Outcome<'py>> {
        Ok(if self.tables.get().resolve(py, request_id, value)? { Outcome::Done } else { Outcome::Declined })
    }

    /// `["message", ...]`: run the method; a result sent for no particular perspective is
    /// encoded into `replies`, anything else becomes an event for the broker.
    #[allow(clippy::too_many_arguments)]
    pub fn message<'py>(
        &mut self,
        py: Python<'py>,
        request_id: i64,
        object_id: &Bound<'py, PyAny>,
        method_name: &Bound<'py, PyString>,
        answer: bool,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
        replies: &mut Vec<u8>,
    ) -> PyResult<Outcome<'py>> {
        let raised = |e: PyErr| -> PyResult<Outcome<'py>> {
            let event = (EV_RAISED, request_id, answer, method_name, e.into_value(py));
            Ok(Outcome::Event(event.into_pyobject(py)?.into_any()))
        };
        let Some(target) = self.tables.get().object(py, object_id) else {
            return raised(Error::new_err("Invalid Object ID"));
        };
        let broker = self.broker.bind(py);
        let result = match self.dispatch.call_any(py, broker, &target, method_name, args, kwargs)? {
            Ran::Returned(result, None) => result,
            Ran::Returned(result, perspective) => {
                let event = (EV_RETURNED, request_id, answer, method_name, result, perspective);
                return Ok(Outcome::Event(event.into_pyobject(py)?.into_any()));
            }
            Ran::Awaiting(awaitable, perspective) => {
                let event = (EV_AWAITING, request_id, answer, method_name, awaitable, perspective);
                return Ok(Outcome::Event(event.into_pyobject(py)?.into_any()));
            }
            Ran::Raised(e) => return raised(e),
        };
        if !answer {
            return Ok(Outcome::Done);
        }
        let encoder = self.encoder.get();
        let encoded = self
            .tables
            .get()
            .encode_sending(py, || encoder.encode_reply(py, b"answer", request_id, &result, replies))?;
        match encoded {
            Ok(()) => Ok(Outcome::Done),
            Err(e) => raised(e),
        }
    }

    /// Queue the answers so far for writing; with `flush`, also ask the broker to write them
    /// now (an event), before it handles the rest of the chunk.
    pub fn send<'py>(
        &self,
        py: Python<'py>,
        replies: &mut Vec<u8>,
        flush: bool,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        if !replies.is_empty() {
            self.sender.get().append(py, replies)?;
            replies.clear();
        }
        Ok(if flush { Some((EV_FLUSH,).into_pyobject(py)?.into_any()) } else { None })
    }

    /// Queue the answer of a held call; the flush event once the sender holds `REPLY_FLUSH`
    /// bytes (the broker then writes, which may pause writing and hold the next calls).
    pub fn send_held<'py>(&self, py: Python<'py>, replies: &mut Vec<u8>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let held = if replies.is_empty() { 0 } else { self.sender.get().append(py, replies)? };
        replies.clear();
        Ok(if held >= REPLY_FLUSH { Some((EV_FLUSH,).into_pyobject(py)?.into_any()) } else { None })
    }

    pub fn traverse(&self, visit: &pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.tables)?;
        visit.call(&self.encoder)?;
        visit.call(&self.sender)?;
        visit.call(&self.broker)?;
        self.dispatch.traverse(visit)
    }
}
