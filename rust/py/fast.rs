//! The per-call hot path of a PB connection, run inside `PbDecoder.feed` so the common calls
//! and answers cost no Python frames of the broker's:
//!
//! - an `answer` to one of our calls resolves its future directly (unless the call pinned
//!   objects, which the broker must release);
//! - a `message` to a plain `Referenceable` (one whose type keeps the default dispatch: the
//!   broker's `is_plain` decides) runs `remote_<name>(*args, **kwargs)` and, if the result is not
//!   awaitable, encodes the answer.
//!
//! Answers go to the connection's `Sender`. Anything else — a missing object or method, an
//! exception, an awaitable result, a reply that cannot be encoded — becomes an event for the
//! broker, which handles it as it would without this path. The broker switches the path off
//! while it holds calls back (flow control), and the path stops itself once a chunk's replies
//! reach `REPLY_FLUSH` bytes so the broker can write them and apply back-pressure to the rest.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};

use super::dispatch::{Called, Dispatch};
use super::pb::{PbEncoderPy, EV_AWAITING, EV_FLUSH, EV_RAISED};
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
    dispatch: Dispatch,
    pub enabled: bool,
}
/// What the fast path did with a command.
pub enum Outcome<'py> {
    /// Fully handled: nothing for the broker.
    Done,
    /// An event for the broker instead.
    Event(Bound<'py, PyAny>),
    /// Not for the fast path: the broker gets the ordinary event.
    Declined,
}

impl FastPath {
    pub fn new(tables: Py<Tables>, encoder: Py<PbEncoderPy>, sender: Py<SenderPy>, is_plain: Py<PyAny>) -> FastPath {
        FastPath { tables, encoder, sender, dispatch: Dispatch::new(is_plain), enabled: true }
    }

    /// `["answer", request_id, value]`: resolve the call's future.
    pub fn answer<'py>(&self, py: Python<'py>, request_id: i64, value: &Bound<'py, PyAny>) -> PyResult<Outcome<'py>> {
        Ok(if self.tables.get().resolve(py, request_id, value)? { Outcome::Done } else { Outcome::Declined })
    }

    /// `["message", ...]`: run the method, encode a plain result into `replies`.
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
        let Some(target) = self.tables.get().object(py, object_id) else { return Ok(Outcome::Declined) };
        let result = match self.dispatch.call(py, &target, method_name, args, kwargs)? {
            Called::Returned(result) => result,
            Called::Awaiting(awaitable) => {
                let event = (EV_AWAITING, request_id, answer, method_name, awaitable);
                return Ok(Outcome::Event(event.into_pyobject(py)?.into_any()));
            }
            Called::Raised(e) => {
                let event = (EV_RAISED, request_id, answer, method_name, e.into_value(py));
                return Ok(Outcome::Event(event.into_pyobject(py)?.into_any()));
            }
            Called::Declined => return Ok(Outcome::Declined),
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
            Err(e) => {
                let event = (EV_RAISED, request_id, answer, method_name, e.into_value(py));
                Ok(Outcome::Event(event.into_pyobject(py)?.into_any()))
            }
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

    pub fn traverse(&self, visit: &pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.tables)?;
        visit.call(&self.encoder)?;
        visit.call(&self.sender)?;
        self.dispatch.traverse(visit)
    }
}
