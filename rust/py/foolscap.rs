//! foolscap's PB messages for Python: [`Reader`] turns received chunks into event tuples, one
//! `decode` per chunk; [`FoolscapEncoderPy`] turns one outgoing message into bytes, one call per
//! message. A connection's `FoolscapSession` (`fs_session.rs`) owns one of each;
//! `FoolscapDecoder` and `FoolscapEncoder` are the same as plain codecs, for tools and tests.
//! Values are built and read directly as Python objects; Python code runs only in the hook,
//! for what is not a builtin value (references, copyables).
//!
//! Events (the first item is the kind, exported as `FS_*`):
//!
//! | kind | tuple |
//! |---|---|
//! | `FS_CALL` | `(kind, reqid, clid, method, args, kwargs)` |
//! | `FS_ANSWER` | `(kind, reqid, value)` |
//! | `FS_ERROR` | `(kind, reqid, failure)`: what the hook made of the failure copyable |
//! | `FS_PING` / `FS_PONG` | `(kind, number)`: a PING is answered with a PONG of the number |
//! | `FS_VIOLATION` | `(kind, what, reqid, message)`: a message discarded; `what` is `call`, `answer`, `error` or `unknown`, `reqid` None if not read yet; a call refused as it arrived (a string past its interface's limits) is one too |
//! | `FS_CALL_ABORTED` | `(kind, reqid)`: the peer gave up sending a call (ABORT); foolscap sends no reply to it |
//! | `FS_PEER_ERROR` | `(kind, message)`: the peer's ERROR; it hangs up, and nothing after it is read |
//! | `FS_AWAITING` | `(kind, reqid, awaitable, method)`: (session) a call ran and returned an awaitable |
//! | `FS_RAISED` | `(kind, reqid, exception)`: (session) a call ran and raised, or its answer did not encode |
//! | `FS_FLUSH` | `(kind,)`: (session) write what waits before going on |
//! | `FS_DECIDE` | `(kind,)`: (session) we are the master: decide on the connection |
//! | `FS_NEGOTIATED` | `(kind,)`: (session) negotiation is over; banana from here on |
//!
//! A session dispatches every call itself ([`Fast`]), whatever its target, and encodes the
//! answers that are ready: an `FS_CALL` event then only stands for a call the broker held back
//! (`holding`, or a call whose gifts are being fetched), which it later runs through `run`, the
//! same dispatch.
//!
//! A stream that cannot continue (bad tokens, lost sync, a limit) raises `BananaError` with the
//! stream offset; the events completed before it are on the exception as `.events`.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

use pyo3::exceptions::{PyException, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyFrozenSet, PyInt, PyIterator, PyList, PySet, PyString, PyTuple};
use pyo3::{ffi, Borrowed, PyTypeInfo};

use super::dispatch::{Dispatch, Ran};
use super::metrics::{self, Outcome, Wire};
use super::objects::{decimal_type, decode_utf8, dict_next, list_item, qualified_name, utf8_of, GcPause, StrCache};
use super::pb_session::REPLY_FLUSH;
use super::schemas::{too_long, CallLimits};
use super::session::{Encoded, SessionPy, Splice, SPLICE_AT};
use super::tables::Tables;
use super::{int_value, integer, limit_args, set_limit, with_bytes, with_events};
use crate::banana::decode::Token;
use crate::banana::{BananaError, ErrorKind, Integer};
use crate::foolscap::decode::{read_message, Build, Built, Fault, Message};
use crate::foolscap::encode::{word, TooDeep, Word, Writer};
use crate::foolscap::framer::{CallHeader, Receive};
use crate::foolscap::quick::{Fill, Quick};
use crate::foolscap::{Frame, Limits, MessageFramer};
use crate::ids::IdMap;
use crate::jelly::recycle;

pub const FS_CALL: u8 = 0;
pub const FS_ANSWER: u8 = 1;
pub const FS_ERROR: u8 = 2;
pub const FS_PING: u8 = 3;
pub const FS_PONG: u8 = 4;
pub const FS_VIOLATION: u8 = 5;
pub const FS_CALL_ABORTED: u8 = 6;
pub const FS_PEER_ERROR: u8 = 7;
pub const FS_AWAITING: u8 = 8;
pub const FS_RAISED: u8 = 9;
pub const FS_FLUSH: u8 = 10;
pub const FS_DECIDE: u8 = 11;
pub const FS_NEGOTIATED: u8 = 12;

pyo3::import_exception!(pbfast.errors, Violation);

/// The type name a failure travels as.
const FAILURE: &[u8] = b"twisted.python.failure.Failure";

/// The receiving side of a foolscap connection: the framer, the limits, and what values are
/// built with. A connection's `FoolscapSession` (`fs_session.rs`) owns one; `FoolscapDecoder`
/// is the same as a plain codec, for tools and tests.
pub struct Reader {
    framer: MessageFramer,
    limits: Limits,
    /// `hook("copyable", typename, state)`, `hook("my-reference", clid, iface, furl)`,
    /// `hook("your-reference", clid)`, `hook("their-reference", giftid, furl)`.
    hook: Option<Py<PyAny>>,
    strings: StrCache,
    /// Where the message being read stands (see `quick`).
    quick: Quick,
}

impl Reader {
    /// `limits`: `max_element_size` (16 MiB), `max_message_size` (64 MiB), `max_depth` (500),
    /// `max_header_length` (64), `max_index_length` (15), `max_copyable_name` (200).
    pub fn new(hook: Option<Py<PyAny>>, limits: Option<&Bound<'_, PyDict>>) -> PyResult<Reader> {
        let mut all = Limits::foolscap();
        for (name, value) in limit_args(limits)? {
            match name.as_str() {
                "max_index_length" => all.max_index_length = value,
                "max_copyable_name" => all.max_copyable_name = value,
                _ => set_limit(&mut all.banana, &name, value)?,
            }
        }
        Ok(Reader {
            framer: MessageFramer::new(all.banana),
            limits: all,
            hook,
            strings: StrCache::new(),
            quick: Quick::new(&all),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The peer speaks `large`: an element may be as long as a message, unless
    /// `max_element_size` was set (`element_size_set`). Between messages only.
    pub fn lift_for_large(&mut self, element_size_set: bool) {
        self.limits.banana = self.limits.banana.for_large(element_size_set);
        self.framer.set_limits(self.limits.banana);
    }

    /// Add what `fill` appends (decrypted bytes) to the stream, read by the next `decode` ahead
    /// of its bytes without being copied again; if `fill` fails, nothing is added.
    pub fn append_with<E>(&mut self, fill: impl FnOnce(&mut Vec<u8>) -> Result<(), E>) -> Result<(), E> {
        self.framer.append_with(fill)
    }

    /// Bytes held for an incomplete message.
    pub fn buffered(&self) -> usize {
        self.framer.buffered()
    }

    /// The bytes held of the partial message, to append to straight (see `MessageFramer::held_mut`).
    pub fn held_mut(&mut self) -> Option<&mut Vec<u8>> {
        self.framer.held_mut()
    }

    /// The events of `bytes` (plaintext). With `fast`, calls run and plain answers resolve
    /// here; their replies are queued ahead of any later event that needs the broker (the path
    /// stops for the rest of the chunk at the first such message, a call carrying gifts
    /// included, so the calls still run in order), and an `FS_FLUSH` event asks for them to be
    /// written before the rest of a chunk whose replies have grown large. `call_limits`: the
    /// string limits calls on the objects in the tables are held to as they arrive, if any. A stream that cannot continue
    /// raises, the events completed before the fault on the exception as `.events`.
    pub fn decode<'py>(
        &mut self,
        py: Python<'py>,
        bytes: &[u8],
        fast: Option<&mut Fast<'py, '_>>,
        call_limits: Option<(&mut CallLimits, &Tables)>,
    ) -> PyResult<Bound<'py, PyList>> {
        let events = PyList::empty(py);
        let hook = self.hook.as_ref().map(|h| h.bind(py).clone());
        let session = fast.as_ref().map(|f| f.session);
        let build = PyBuild { py, hook: hook.as_ref(), strings: &mut self.strings, gifts: false };
        let mut chunk = Chunk {
            py,
            events,
            limits: &self.limits,
            build,
            quick: &mut self.quick,
            fast,
            // (The session's buffers: a large answer moves on to the transport uncopied.)
            replies: Replies {
                session,
                out: Encoded::new(session.map(SessionPy::buffer).unwrap_or_default()),
                queued: 0,
            },
            call_limits,
        };
        // Nothing cyclic becomes garbage while values are built; collections triggered by the
        // containers being made would only walk them again and again.
        let gc = GcPause::new();
        let result = self.framer.receive(bytes, &mut chunk);
        drop(gc);
        let Chunk { events, mut replies, .. } = chunk;
        replies.send(py, &events, false)?;
        if let Some(session) = session {
            session.recycle(replies.out.bytes);
        }
        with_events(py, events, result)
    }

    /// The object number the next OPEN received gets (`reference` sequences name objects by it).
    pub fn next_open_id(&self) -> u64 {
        self.framer.objects()
    }

    pub fn traverse(&self, visit: &pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        if let Some(h) = &self.hook {
            visit.call(h)?;
        }
        Ok(())
    }
}

/// Incremental decoder for the receiving direction of a foolscap connection, as a plain codec:
/// every message becomes an event (a connection's `FoolscapSession` runs calls itself).
#[pyclass(module = "pbfast._core", name = "FoolscapDecoder")]
pub struct FoolscapDecoderPy(Reader);

#[pymethods]
impl FoolscapDecoderPy {
    /// `limits`: `max_element_size` (16 MiB), `max_message_size` (64 MiB), `max_depth` (500),
    /// `max_header_length` (64), `max_index_length` (15), `max_copyable_name` (200).
    #[new]
    #[pyo3(signature = (hook=None, **limits))]
    fn new(hook: Option<Py<PyAny>>, limits: Option<&Bound<'_, PyDict>>) -> PyResult<FoolscapDecoderPy> {
        Ok(FoolscapDecoderPy(Reader::new(hook, limits)?))
    }

    /// Feed a chunk; returns the events it completed (an empty list means "need more").
    fn feed<'py>(&mut self, py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
        with_bytes(data, |bytes| self.0.decode(py, bytes, None, None))
    }

    /// Bytes held for an incomplete message.
    #[getter]
    fn buffered(&self) -> usize {
        self.0.buffered()
    }

    /// Stream offset of the next byte to be fed.
    #[getter]
    fn offset(&self) -> u64 {
        self.0.framer.offset()
    }

    /// The object number the next OPEN received gets (`reference` sequences name objects by
    /// it). Set it to continue a stream begun elsewhere; only between messages.
    #[getter]
    fn get_next_open_id(&self) -> u64 {
        self.0.next_open_id()
    }

    #[setter]
    fn set_next_open_id(&mut self, value: u64) -> PyResult<()> {
        self.0
            .framer
            .set_objects(value)
            .map_err(|_| PyValueError::new_err("next_open_id can only be set between messages"))
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        self.0.traverse(&visit)
    }

    fn __clear__(&mut self) {
        self.0.hook = None;
    }
}

/// What one chunk's frames and tokens become: the quick pass builds each message from its
/// tokens as they are read (a message it gives up on is read again by the walker), and each
/// message, with the fast path on, is handled here; the rest are events.
struct Chunk<'py, 'a, 'f> {
    py: Python<'py>,
    events: Bound<'py, PyList>,
    limits: &'a Limits,
    build: PyBuild<'py, 'a>,
    quick: &'a mut Quick,
    fast: Option<&'a mut Fast<'py, 'f>>,
    replies: Replies<'f>,
    /// The string limits calls on the objects in the tables are held to, if any.
    call_limits: Option<(&'a mut CallLimits, &'a Tables)>,
}

impl<'py> Receive<PyErr> for Chunk<'py, '_, '_> {
    fn frame(&mut self, frame: Frame<'_>) -> PyResult<()> {
        let py = self.py;
        let event = match frame {
            Frame::Message { bytes, offset, first_object } => {
                self.build.gifts = false;
                let message = match self.quick.take(&mut self.build, bytes, offset) {
                    Some(message) => message,
                    None => read_message(bytes, offset, first_object, self.limits, &mut self.build)?,
                };
                if self.build.gifts && self.fast.is_some() {
                    // A message with gifts waits for them to be fetched, and the messages
                    // after it wait behind it: the rest of the chunk is the broker's.
                    self.fast = None;
                    self.replies.send(py, &self.events, false)?;
                }
                match self.fast.as_deref_mut() {
                    None => event(py, message)?,
                    Some(f) => match f.handle(py, message, &mut self.replies.out)? {
                        Handled::Done if self.replies.answered(py)? < REPLY_FLUSH => return Ok(()),
                        // Let the broker write these (and apply back-pressure) first.
                        Handled::Done => {
                            self.fast = None;
                            return self.replies.send(py, &self.events, true);
                        }
                        Handled::Ran(event) => event,
                        Handled::Declined(event) => {
                            self.fast = None;
                            self.replies.send(py, &self.events, false)?;
                            event
                        }
                    },
                }
            }
            Frame::Refused { reqid, length, at, aborted, .. } => {
                // The broker answers it, after the replies so far (as a Violation of the
                // decoder's, which it is).
                if self.fast.take().is_some() {
                    self.replies.send(py, &self.events, false)?;
                }
                if aborted {
                    (FS_CALL_ABORTED, reqid).into_pyobject(py)?.into_any()
                } else {
                    let why =
                        self.call_limits.as_ref().map_or_else(|| too_long(length, at), |(c, _)| c.refusal(length, at));
                    (FS_VIOLATION, "call", reqid, why).into_pyobject(py)?.into_any()
                }
            }
            Frame::Ping(n) => (FS_PING, n).into_pyobject(py)?.into_any(),
            Frame::Pong(n) => (FS_PONG, n).into_pyobject(py)?.into_any(),
            Frame::PeerError(message) => {
                (FS_PEER_ERROR, String::from_utf8_lossy(message)).into_pyobject(py)?.into_any()
            }
        };
        self.events.append(event)
    }

    fn limits_calls(&self) -> bool {
        self.call_limits.is_some()
    }

    fn call_limit(&mut self, call: CallHeader<'_>) -> PyResult<Option<u64>> {
        let py = self.py;
        self.call_limits.as_mut().map_or(Ok(None), |(c, tables)| c.limit(py, tables, call))
    }

    fn start(&mut self, at: u64) {
        self.quick.start(at);
    }

    #[inline(always)]
    fn token(&mut self, token: &Token<'_>, body: u64) {
        self.quick.token(token, body);
    }

    #[inline(always)]
    fn text(&mut self, utf8: &[u8], at: u64) {
        self.quick.text(utf8, at);
    }

    #[inline(always)]
    fn int(&mut self, type_byte: u8, value: i64) {
        self.quick.int(type_byte, value);
    }

    #[inline(always)]
    fn vocab(&mut self, index: u8) {
        self.quick.vocab(index);
    }

    #[inline(always)]
    fn string(&mut self, body: &[u8], at: u64) {
        self.quick.string(body, at);
    }

    #[inline(always)]
    fn float(&mut self, value: f64) {
        self.quick.float(value);
    }

    #[inline(always)]
    fn open(&mut self, number: u64) {
        self.quick.open(number);
    }

    #[inline(always)]
    fn close(&mut self, number: u64) {
        self.quick.close(number);
    }
}

/// The fast path's replies of one chunk, on their way out.
struct Replies<'a> {
    /// Where they go (with the fast path on).
    session: Option<&'a SessionPy>,
    out: Encoded,
    /// Bytes queued so far.
    queued: usize,
}

impl Replies<'_> {
    /// The answer in `out` is queued now (the session writes every few of them at once: the
    /// peer starts on them while the rest of the chunk runs); returns the bytes of answers
    /// queued while reading this chunk.
    fn answered(&mut self, py: Python<'_>) -> PyResult<usize> {
        if let Some(session) = self.session.filter(|_| !self.out.is_empty()) {
            self.queued += self.out.len();
            session.append_encoded(py, &mut self.out, true)?;
        }
        Ok(self.queued)
    }

    /// Queue the replies so far, ahead of the next event; with `flush`, ask the broker to write
    /// them now.
    fn send(&mut self, py: Python<'_>, events: &Bound<'_, PyList>, flush: bool) -> PyResult<()> {
        let Some(session) = self.session.filter(|_| !self.out.is_empty()) else { return Ok(()) };
        session.append_encoded(py, &mut self.out, true)?;
        if flush {
            events.append((FS_FLUSH,))?;
        }
        Ok(())
    }
}

/// The Tub's hot path (PB's is in `pb_session.rs`): every call runs inside `feed` (or `run`, for
/// a call the broker held back), whatever its target — a plain `Referenceable`'s
/// `remote_<name>`, an object's own `remoteMessageReceived`, a callable (negative clid), the
/// Tub's own methods (clid 0, the broker's `remoteMessageReceived`) — and a result that is
/// ready is encoded as the answer at once; an answer to one of our calls resolves its future.
/// The rest (an awaitable result, an exception, any other message) is an event for the broker.
pub struct Fast<'py, 'a> {
    /// Our objects by clid, our calls awaiting answers, the references sent; where the answers
    /// go.
    session: &'a SessionPy,
    /// The session's encoder (locked for each answer only: a remote method may send).
    writer: &'a Mutex<FoolscapEncoderPy>,
    dispatch: &'a mut Dispatch,
    /// The connection's broker: clid 0's target.
    broker: &'a Bound<'py, PyAny>,
}

impl Drop for Fast<'_, '_> {
    fn drop(&mut self) {
        // The chunk is done: what it counted goes to the metrics.
        self.dispatch.tally.save();
    }
}

/// What the fast path did with a message.
enum Handled<'py> {
    /// Done: nothing for the broker.
    Done,
    /// A call that ran, with an event for the broker (its awaitable, or what it raised).
    Ran(Bound<'py, PyAny>),
    /// Not for this path: the message's ordinary event.
    Declined(Bound<'py, PyAny>),
}

impl<'py, 'a> Fast<'py, 'a> {
    pub fn new(
        session: &'a SessionPy,
        writer: &'a Mutex<FoolscapEncoderPy>,
        dispatch: &'a mut Dispatch,
        broker: &'a Bound<'py, PyAny>,
    ) -> Self {
        Fast { session, writer, dispatch, broker }
    }

    fn handle(
        &mut self,
        py: Python<'py>,
        message: Message<PyBuild<'py, '_>>,
        replies: &mut Encoded,
    ) -> PyResult<Handled<'py>> {
        match message {
            Message::Call { reqid, clid, method, args, kwargs } => {
                let args = PyTuple::new(py, args)?;
                let kwargs = if kwargs.is_empty() {
                    None
                } else {
                    let dict = PyDict::new(py);
                    for (name, value) in kwargs {
                        dict.set_item(name, value)?;
                    }
                    Some(dict)
                };
                Ok(match self.call(py, reqid, clid, &method, &args, kwargs.as_ref(), replies)? {
                    None => Handled::Done,
                    Some(event) => Handled::Ran(event),
                })
            }
            Message::Answer { reqid, value } => {
                if self.session.resolve(py, reqid, &value, &mut self.dispatch.tally)? {
                    return Ok(Handled::Done);
                }
                Ok(Handled::Declined((FS_ANSWER, reqid, value).into_pyobject(py)?.into_any()))
            }
            other => Ok(Handled::Declined(event(py, other)?)),
        }
    }

    /// Run the call `reqid` on `clid`: a ready result's answer is encoded into `replies` (none
    /// for `reqid` 0, which wants none); an awaitable result or an exception comes back as an
    /// event for the broker. Errors are only those that are not the caller's business.
    #[allow(clippy::too_many_arguments)]
    pub fn call(
        &mut self,
        py: Python<'py>,
        reqid: i64,
        clid: i64,
        method: &Bound<'py, PyString>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
        replies: &mut Encoded,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let raised = |e: PyErr| -> PyResult<Option<Bound<'py, PyAny>>> {
            Ok(Some((FS_RAISED, reqid, e.into_value(py)).into_pyobject(py)?.into_any()))
        };
        let started = metrics::start();
        let broker = self.broker;
        let ran = if clid == 0 {
            self.dispatch.call_any(py, broker, broker, method, args, kwargs)?
        } else {
            let Some(target) = self.session.tables().object_at(py, clid) else {
                self.count(method, Outcome::Error, started, false);
                return raised(Violation::new_err(format!("unknown clid {clid}")));
            };
            if clid < 0 {
                self.dispatch.call_function(py, &target, args, kwargs)?
            } else {
                self.dispatch.call_any(py, broker, &target, method, args, kwargs)?
            }
        };
        let result = match ran {
            Ran::Returned(result, _) => result,
            // (The broker counts it once it is done.)
            Ran::Awaiting(awaitable, _) => {
                return Ok(Some((FS_AWAITING, reqid, awaitable, method).into_pyobject(py)?.into_any()));
            }
            Ran::Raised(e) => {
                if started.is_some() {
                    self.count(method, Outcome::Error, started, metrics::ran(py, &e));
                }
                return raised(e);
            }
        };
        if reqid == 0 {
            self.count(method, Outcome::Ok, started, true);
            return Ok(None); // callRemoteOnly
        }
        let encoded = self.session.encode_sending(py, || {
            let mut writer = self.writer.try_lock().map_err(|_| in_use())?;
            writer.answer_into(py, reqid, &result, replies)
        })?;
        self.count(method, if encoded.is_ok() { Outcome::Ok } else { Outcome::Error }, started, true);
        match encoded {
            Ok(()) => Ok(None),
            Err(e) => raised(e),
        }
    }

    /// Count a call that ended here, if metrics were on when it `started`.
    #[inline(always)]
    fn count(&mut self, method: &Bound<'py, PyString>, outcome: Outcome, started: Option<u64>, ran: bool) {
        if started.is_some() {
            self.dispatch.tally.served(Wire::Foolscap, method, outcome, started, ran);
        }
    }
}

/// The encoder is already encoding (a hook of the message being encoded tried to send).
pub fn in_use() -> PyErr {
    pyo3::exceptions::PyRuntimeError::new_err(
        "the connection's encoder is in use: a message cannot be sent from a hook of the message being encoded",
    )
}

fn event<'py>(py: Python<'py>, message: Message<PyBuild<'py, '_>>) -> PyResult<Bound<'py, PyAny>> {
    Ok(match message {
        Message::Call { reqid, clid, method, args, kwargs } => {
            let args = PyTuple::new(py, args)?;
            let dict = PyDict::new(py);
            for (name, value) in kwargs {
                dict.set_item(name, value)?;
            }
            (FS_CALL, reqid, clid, method, args, dict).into_pyobject(py)?.into_any()
        }
        Message::Answer { reqid, value } => (FS_ANSWER, reqid, value).into_pyobject(py)?.into_any(),
        Message::Error { reqid, failure } => (FS_ERROR, reqid, failure).into_pyobject(py)?.into_any(),
        Message::CallAborted { reqid } => (FS_CALL_ABORTED, reqid).into_pyobject(py)?.into_any(),
        Message::Violation { what, reqid, message } => {
            (FS_VIOLATION, what, reqid, message).into_pyobject(py)?.into_any()
        }
    })
}

/// Builds received values as Python objects.
struct PyBuild<'py, 'a> {
    py: Python<'py>,
    hook: Option<&'a Bound<'py, PyAny>>,
    strings: &'a mut StrCache,
    /// The message holds a gift (a `their-reference`).
    gifts: bool,
}

type PyBuilt<'py, T> = Built<T, PyErr>;

impl<'py> PyBuild<'py, '_> {
    /// A Python exception from building: a Violation, unless it is not an `Exception` at all
    /// (KeyboardInterrupt, SystemExit), which stops decoding.
    fn fault(&self, e: PyErr) -> Fault<PyErr> {
        if e.is_instance_of::<PyException>(self.py) {
            Fault::Violation(e.to_string())
        } else {
            Fault::Hard(e)
        }
    }

    fn checked<T>(&self, result: PyResult<T>) -> PyBuilt<'py, T> {
        result.map_err(|e| self.fault(e))
    }

    /// Ask the hook for a special value; `what` names it in messages.
    fn hooked(&self, what: &str, args: Bound<'py, PyTuple>) -> PyBuilt<'py, Bound<'py, PyAny>> {
        let Some(hook) = self.hook else {
            return Err(Fault::Violation(format!("{what} is not accepted here (no hook)")));
        };
        let value = hook.call1(args).map_err(|e| self.fault(e))?;
        if value.is(self.py.NotImplemented()) {
            return Err(Fault::Violation(format!("{what} is not accepted here (the hook refuses it)")));
        }
        Ok(value)
    }
}

impl<'py> Fill for PyBuild<'py, '_> {
    unsafe fn list_of(&mut self, len: usize) -> PyBuilt<'py, Self::Value> {
        // SAFETY: PyList_New returns a new reference (or NULL with an exception set) to a list of
        // `len` empty slots, which the caller fills before the list is used (see `Fill`).
        let list = unsafe { Bound::from_owned_ptr_or_err(self.py, ffi::PyList_New(len as ffi::Py_ssize_t)) };
        self.checked(list)
    }

    unsafe fn fill(&mut self, list: &Self::Value, index: usize, item: Self::Value) -> PyBuilt<'py, ()> {
        // SAFETY: `list` came from `list_of` with more than `index` slots, this one empty (the
        // caller's contract); the slot takes over the item's reference.
        unsafe { ffi::PyList_SET_ITEM(list.as_ptr(), index as ffi::Py_ssize_t, item.into_ptr()) };
        Ok(())
    }
}

impl<'py> Build for PyBuild<'py, '_> {
    type Value = Bound<'py, PyAny>;
    type Name = Bound<'py, PyString>;
    type Error = PyErr;

    fn name(&mut self, raw: &[u8]) -> PyBuilt<'py, Self::Name> {
        let name = self.strings.get(self.py, raw);
        self.checked(name)
    }

    fn int(&mut self, value: Integer) -> PyBuilt<'py, Self::Value> {
        self.checked(integer(self.py, value))
    }

    fn float(&mut self, value: f64) -> PyBuilt<'py, Self::Value> {
        Ok(PyFloat::new(self.py, value).into_any())
    }

    fn bytes(&mut self, value: &[u8]) -> PyBuilt<'py, Self::Value> {
        Ok(PyBytes::new(self.py, value).into_any())
    }

    fn text(&mut self, utf8: &[u8]) -> PyBuilt<'py, Self::Value> {
        self.checked(decode_utf8(self.py, utf8).map(Bound::into_any))
    }

    fn key(&mut self, utf8: &[u8]) -> PyBuilt<'py, Self::Value> {
        let key = self.strings.get(self.py, utf8);
        self.checked(key.map(Bound::into_any))
    }

    fn decimal(&mut self, text: &str) -> PyBuilt<'py, Self::Value> {
        let decimal = decimal_type(self.py).and_then(|d| d.call1((text,)));
        self.checked(decimal)
    }

    fn none(&mut self) -> PyBuilt<'py, Self::Value> {
        Ok(self.py.None().into_bound(self.py))
    }

    fn boolean(&mut self, value: bool) -> PyBuilt<'py, Self::Value> {
        Ok(PyBool::new(self.py, value).to_owned().into_any())
    }

    fn new_list(&mut self) -> PyBuilt<'py, Self::Value> {
        Ok(PyList::empty(self.py).into_any())
    }

    fn list_push(&mut self, list: &Self::Value, item: Self::Value) -> PyBuilt<'py, ()> {
        // SAFETY: `list` is a list this builder made (see `new_list`).
        let list = unsafe { list.cast_unchecked::<PyList>() };
        self.checked(list.append(item))
    }

    fn tuple(&mut self, items: Vec<Self::Value>) -> PyBuilt<'py, Self::Value> {
        self.checked(PyTuple::new(self.py, items).map(Bound::into_any))
    }

    fn new_set(&mut self) -> PyBuilt<'py, Self::Value> {
        self.checked(PySet::empty(self.py).map(Bound::into_any))
    }

    fn set_add(&mut self, set: &Self::Value, item: Self::Value) -> PyBuilt<'py, ()> {
        // SAFETY: `set` is a set this builder made (see `new_set`).
        let set = unsafe { set.cast_unchecked::<PySet>() };
        self.checked(set.add(item))
    }

    fn frozenset(&mut self, items: Vec<Self::Value>) -> PyBuilt<'py, Self::Value> {
        self.checked(PyFrozenSet::new(self.py, &items).map(Bound::into_any))
    }

    fn new_dict(&mut self) -> PyBuilt<'py, Self::Value> {
        Ok(PyDict::new(self.py).into_any())
    }

    fn dict_insert(&mut self, dict: &Self::Value, key: Self::Value, value: Self::Value) -> PyBuilt<'py, ()> {
        // SAFETY: `dict` is a dict this builder made (see `new_dict`).
        let dict = unsafe { dict.cast_unchecked::<PyDict>() };
        // One lookup: a key that was there already leaves the size as it was (the message is
        // then discarded, so the value it replaced does not matter).
        let size = dict.len();
        self.checked(dict.set_item(&key, value))?;
        if dict.len() == size {
            return Err(Fault::Violation(format!("duplicate key {}", short_repr(&key))));
        }
        Ok(())
    }

    fn copyable(&mut self, typename: &str, state: Vec<(Self::Name, Self::Value)>) -> PyBuilt<'py, Self::Value> {
        let py = self.py;
        let dict = PyDict::new(py);
        for (name, value) in state {
            self.checked(dict.set_item(name, value))?;
        }
        let Some(hook) = self.hook else {
            return Err(Fault::Violation(format!("unknown copyable type '{typename}' (no hook)")));
        };
        let value = hook.call1((intern!(py, "copyable"), typename, dict)).map_err(|e| match self.fault(e) {
            Fault::Violation(why) => Fault::Violation(format!("copyable '{typename}': {why}")),
            other => other,
        })?;
        if value.is(py.NotImplemented()) {
            return Err(Fault::Violation(format!("unknown copyable type '{typename}'")));
        }
        Ok(value)
    }

    fn my_reference(&mut self, clid: i64, iface: Option<&str>, furl: Option<&str>) -> PyBuilt<'py, Self::Value> {
        let args = self.checked((intern!(self.py, "my-reference"), clid, iface, furl).into_pyobject(self.py))?;
        self.hooked("my-reference", args)
    }

    fn your_reference(&mut self, clid: i64) -> PyBuilt<'py, Self::Value> {
        let args = self.checked((intern!(self.py, "your-reference"), clid).into_pyobject(self.py))?;
        self.hooked("your-reference", args)
    }

    fn their_reference(&mut self, giftid: i64, furl: &str) -> PyBuilt<'py, Self::Value> {
        self.gifts = true;
        let args = self.checked((intern!(self.py, "their-reference"), giftid, furl).into_pyobject(self.py))?;
        self.hooked("their-reference", args)
    }
}

/// A PING numbered `n`, or (`pong`) the PONG answering it.
pub fn ping(n: u64, pong: bool) -> Vec<u8> {
    let mut w = Writer::new(Vec::new(), 0, 0);
    if pong {
        w.pong(n);
    } else {
        w.ping(n);
    }
    w.finish().0
}

/// `repr(obj)`, cut short for messages.
fn short_repr(obj: &Bound<'_, PyAny>) -> String {
    let text = obj.repr().map(|r| r.to_string()).unwrap_or_else(|_| "<unprintable>".into());
    match text.char_indices().nth(80) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

impl From<TooDeep> for PyErr {
    fn from(e: TooDeep) -> PyErr {
        PyValueError::new_err(e.to_string())
    }
}

/// Encoder of the sending direction of a foolscap connection. It owns the OPEN counter, which
/// foolscap never resets: every message is numbered after the ones before it, and a message that
/// cannot be encoded leaves nothing behind (no bytes, the counter where it was).
#[pyclass(module = "pbfast._core", name = "FoolscapEncoder")]
pub struct FoolscapEncoderPy {
    /// `hook(obj)` for anything that is not a builtin value: None, or a tuple saying how to send
    /// it (see `_core.pyi`).
    hook: Option<Py<PyAny>>,
    next_open_id: u64,
    max_depth: usize,
    /// Kept between messages so a steady stream does not allocate afresh each time.
    scratch: Vec<u8>,
    seen: IdMap<u64>,
    /// The allocation of a message's `keep`, between messages (see `recycle`).
    keep: Vec<usize>,
    order: KeyOrder,
    /// With a peer that speaks `large`: our `max_message_size`, the longest message sent (a
    /// longer one fails before anything is sent); None: no limit, as in foolscap.
    max_message: Option<usize>,
}

#[pymethods]
impl FoolscapEncoderPy {
    #[new]
    #[pyo3(signature = (hook=None, *, next_open_id=0, max_depth=Limits::foolscap().banana.max_depth))]
    fn new(hook: Option<Py<PyAny>>, next_open_id: u64, max_depth: usize) -> FoolscapEncoderPy {
        FoolscapEncoderPy {
            hook,
            next_open_id,
            max_depth,
            scratch: Vec::new(),
            seen: IdMap::default(),
            keep: Vec::new(),
            order: KeyOrder::default(),
            max_message: None,
        }
    }

    /// `(call reqid clid method (arguments n_pos args... name value ...))`, keyword arguments
    /// sorted by name.
    #[pyo3(signature = (reqid, clid, method, args=None, kwargs=None))]
    fn call<'py>(
        &mut self,
        py: Python<'py>,
        reqid: i64,
        clid: i64,
        method: &Bound<'py, PyString>,
        args: Option<&Bound<'py, PyAny>>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let args = match args {
            None => PyTuple::empty(py),
            Some(a) => match a.cast::<PyTuple>() {
                Ok(t) => t.clone(),
                Err(_) => a.cast::<PyList>().map(|l| l.to_tuple()).map_err(|_| {
                    PyTypeError::new_err(format!("call arguments must be a tuple or list, not {}", type_name(a)))
                })?,
            },
        };
        let kwargs = kwargs.cloned().unwrap_or_else(|| PyDict::new(py));
        let bytes = self.call_with(py, reqid, clid, method.to_str()?, &args, &kwargs, Dest::Bytes)?;
        Ok(bytes.expect("a new bytes object"))
    }

    /// `(answer reqid value)`.
    fn answer<'py>(&mut self, py: Python<'py>, reqid: i64, value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
        let bytes = self.reply(py, word::ANSWER, reqid, |m| m.value(value), Dest::Bytes)?;
        Ok(bytes.expect("a new bytes object"))
    }

    /// `(error reqid (copyable "twisted.python.failure.Failure" name value ...))`, the state (a
    /// dict or (name, value) pairs) in the order given.
    fn error<'py>(&mut self, py: Python<'py>, reqid: i64, state: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
        let body = |m: &mut MessageWriter<'py, '_>| {
            m.copyable(FAILURE, state)?;
            m.finish_sequences()
        };
        Ok(self.reply(py, word::ERROR, reqid, body, Dest::Bytes)?.expect("a new bytes object"))
    }

    /// A PING (foolscap sends number 0, as the single byte 8e).
    #[pyo3(signature = (n=0))]
    fn ping<'py>(&self, py: Python<'py>, n: u64) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &ping(n, false))
    }

    /// The PONG answering PING `n`.
    #[pyo3(signature = (n=0))]
    fn pong<'py>(&self, py: Python<'py>, n: u64) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &ping(n, true))
    }

    /// The id the next OPEN will get (set it to continue a stream begun elsewhere).
    #[getter]
    pub(crate) fn get_next_open_id(&self) -> u64 {
        self.next_open_id
    }

    #[setter]
    pub(crate) fn set_next_open_id(&mut self, value: u64) {
        self.next_open_id = value;
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        if let Some(h) = &self.hook {
            visit.call(h)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.hook = None;
        self.order = KeyOrder::default();
    }
}

impl FoolscapEncoderPy {
    /// `(word reqid body)`: an answer or an error, to `dest`.
    fn reply<'py>(
        &mut self,
        py: Python<'py>,
        word: Word,
        reqid: i64,
        body: impl FnOnce(&mut MessageWriter<'py, '_>) -> PyResult<()>,
        dest: Dest<'_>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        request_id(reqid)?;
        let write = |m: &mut MessageWriter<'py, '_>| {
            let reply = m.w.open(word)?;
            m.w.int(reqid);
            body(m)?;
            m.w.close(reply);
            Ok(())
        };
        self.encode_with(py, dest, write)
    }

    /// `call`, appended to `out` (the session's calls out), its long byte strings left out.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn call_into(
        &mut self,
        py: Python<'_>,
        reqid: i64,
        clid: i64,
        method: &str,
        args: &Bound<'_, PyTuple>,
        kwargs: &Bound<'_, PyDict>,
        out: &mut Encoded,
    ) -> PyResult<()> {
        self.call_with(py, reqid, clid, method, args, kwargs, Dest::Splicing(out)).map(drop)
    }

    /// `(call reqid clid method (arguments n args... name value...))`, keyword arguments sorted
    /// by name as foolscap sorts them.
    #[allow(clippy::too_many_arguments)]
    fn call_with<'py>(
        &mut self,
        py: Python<'py>,
        reqid: i64,
        clid: i64,
        method: &str,
        args: &Bound<'py, PyTuple>,
        kwargs: &Bound<'py, PyDict>,
        dest: Dest<'_>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        request_id(reqid)?;
        wire_id("clid", clid, true)?;
        let mut named = Vec::with_capacity(kwargs.len());
        for (name, value) in kwargs.iter() {
            let name = name
                .cast_into::<PyString>()
                .map_err(|_| PyTypeError::new_err("keyword argument names must be str".to_string()))?;
            name.to_str()?;
            named.push((name, value));
        }
        // UTF-8 byte order is code point order.
        named.sort_by(|(a, _), (b, _)| a.to_str().unwrap_or_default().cmp(b.to_str().unwrap_or_default()));
        self.encode_with(py, dest, |m| {
            let call = m.w.open(word::CALL)?;
            m.w.int(reqid);
            m.w.int(clid);
            m.w.bytes(method.as_bytes());
            let arguments = m.w.open(word::ARGUMENTS)?;
            m.w.int(args.len() as i64);
            for arg in args.iter() {
                m.value(&arg)?;
            }
            for (name, value) in &named {
                m.w.bytes(name.to_str()?.as_bytes());
                m.value(value)?;
            }
            m.w.close(arguments);
            m.w.close(call);
            Ok(())
        })
    }

    /// `(answer reqid value)`, appended to `out` (the fast path's replies), its long byte
    /// strings left out.
    pub(crate) fn answer_into(
        &mut self,
        py: Python<'_>,
        reqid: i64,
        value: &Bound<'_, PyAny>,
        out: &mut Encoded,
    ) -> PyResult<()> {
        self.reply(py, word::ANSWER, reqid, |m| m.value(value), Dest::Splicing(out)).map(drop)
    }

    pub(crate) fn traverse(&self, visit: &pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        if let Some(h) = &self.hook {
            visit.call(h)?;
        }
        Ok(())
    }

    /// The encoder of a connection: `hook` for what is not a builtin value, `max_depth` the
    /// deepest nesting it writes.
    pub(crate) fn for_connection(hook: Py<PyAny>, max_depth: usize) -> FoolscapEncoderPy {
        FoolscapEncoderPy::new(Some(hook), 0, max_depth)
    }

    /// The peer speaks `large`: refuse messages longer than `max_message` bytes (ours).
    pub(crate) fn set_max_message(&mut self, max_message: usize) {
        self.max_message = Some(max_message);
    }

    /// `error`, appended to `out`.
    pub(crate) fn error_into<'py>(
        &mut self,
        py: Python<'py>,
        reqid: i64,
        state: &Bound<'py, PyAny>,
        out: &mut Vec<u8>,
    ) -> PyResult<()> {
        let body = |m: &mut MessageWriter<'py, '_>| {
            m.copyable(FAILURE, state)?;
            m.finish_sequences()
        };
        self.reply(py, word::ERROR, reqid, body, Dest::Append(out)).map(drop)
    }

    /// Run `write` on a fresh message that goes to `dest`; the counter moves on only if it
    /// succeeds.
    fn encode_with<'py>(
        &mut self,
        py: Python<'py>,
        dest: Dest<'_>,
        write: impl FnOnce(&mut MessageWriter<'py, '_>) -> PyResult<()>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let out = match dest {
            Dest::Append(out) => return self.encode_into(py, out, None, write).map(|_| None),
            Dest::Splicing(Encoded { bytes, splices, spliced }) => {
                *spliced += self.encode_into(py, bytes, Some(splices), write)?;
                return Ok(None);
            }
            Dest::Bytes => &mut std::mem::take(&mut self.scratch),
        };
        let bytes = self.encode_into(py, out, None, write).map(|_| Some(PyBytes::new(py, out)));
        if out.capacity() <= 1 << 20 {
            out.clear();
            self.scratch = std::mem::take(out);
        }
        bytes
    }

    /// Run `write` on a fresh message appended to `out` (its long byte strings left out and
    /// noted in `splices`, if given); if it fails, `out` and `splices` are left as they were
    /// and so is the counter. Returns the bytes of the strings left out.
    fn encode_into<'py>(
        &mut self,
        py: Python<'py>,
        out: &mut Vec<u8>,
        mut splices: Option<&mut Vec<Splice>>,
        write: impl FnOnce(&mut MessageWriter<'py, '_>) -> PyResult<()>,
    ) -> PyResult<usize> {
        let start = out.len();
        let spliced_before = splices.as_ref().map_or(0, |s| s.len());
        let mut m = MessageWriter {
            py,
            w: SplicingWriter {
                w: Writer::new(std::mem::take(out), self.next_open_id, self.max_depth),
                splices: splices.as_deref_mut(),
                spliced: 0,
            },
            seen: &mut self.seen,
            keep: recycle(std::mem::take(&mut self.keep)),
            hook: self.hook.as_ref().map(|h| h.bind(py).clone()),
            stack: Vec::new(),
            pairs: Vec::new(),
            order: &mut self.order,
        };
        let mut result = write(&mut m);
        let MessageWriter { w, keep, .. } = m;
        let spliced = w.spliced;
        let (mut written, next_open_id) = w.w.finish();
        self.seen.clear();
        if keep.capacity() <= 1 << 16 {
            self.keep = recycle(keep);
        }
        if let (Ok(()), Some(limit)) = (&result, self.max_message) {
            let len = written.len() - start + spliced;
            if len > limit {
                result = Err(BananaError::local(ErrorKind::MessageTooLargeToSend { len, limit }).into());
            }
        }
        match result {
            Ok(()) => self.next_open_id = next_open_id,
            Err(_) => {
                written.truncate(start);
                if let Some(splices) = splices {
                    splices.truncate(spliced_before);
                }
            }
        }
        *out = written;
        result.map(|()| spliced)
    }
}

/// Where a message goes.
enum Dest<'o> {
    /// At the end of this buffer.
    Append(&'o mut Vec<u8>),
    /// At the end of these messages, its long byte strings left out (see [`Splice`]).
    Splicing(&'o mut Encoded),
    /// Into a new bytes object.
    Bytes,
}

/// Request IDs, clids and gift IDs travel as INT (or NEG), which foolscap writes only for
/// -2**31 <= v < 2**31 and requires on receipt: anything larger would go as LONGINT, and a stock
/// peer would drop the connection.
fn wire_id(what: &str, v: i64, negative: bool) -> PyResult<i64> {
    let low = if negative { -(1 << 31) } else { 0 };
    if v < low || v >= 1 << 31 {
        let range = if negative { "-2**31 <= n < 2**31" } else { "0 <= n < 2**31" };
        return Err(PyValueError::new_err(format!("a {what} must be an INT on the wire ({range}), not {v}")));
    }
    Ok(v)
}

fn request_id(reqid: i64) -> PyResult<()> {
    wire_id("request ID", reqid, false).map(drop)
}

/// `obj` as a `T`: of exactly that type, or (not `EXACT`) of a subclass too.
#[inline(always)]
fn cast<'a, 'py, T: PyTypeInfo, const EXACT: bool>(obj: &'a Bound<'py, PyAny>) -> Option<&'a Bound<'py, T>> {
    // A check of the type and an unchecked cast: no error is made for the many misses.
    let is = if EXACT { obj.is_exact_instance_of::<T>() } else { obj.is_instance_of::<T>() };
    // SAFETY: `obj` was just found to be a `T`.
    is.then(|| unsafe { obj.cast_unchecked::<T>() })
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    qualified_name(&obj.get_type()).unwrap_or_else(|_| "?".into())
}

/// One outgoing message: its writer and its scope of shared containers.
struct MessageWriter<'py, 'a> {
    py: Python<'py>,
    w: SplicingWriter<'a>,
    /// Address of each list, tuple, dict and set met in this message -> its open-ID.
    seen: &'a mut IdMap<u64>,
    /// Keeps what `seen` names (and what the hook made) alive, so an address is not reused by
    /// another object within the message.
    keep: Vec<Bound<'py, PyAny>>,
    hook: Option<Bound<'py, PyAny>>,
    /// The sequences being written, innermost last: the walk keeps its place here rather than
    /// on the native stack, so no nesting depth can exhaust that.
    stack: Vec<Walk<'py>>,
    /// The (key, value) pairs of the dicts being written, sorted, outermost first.
    pairs: Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)>,
    order: &'a mut KeyOrder,
}

/// A message's banana writer, which leaves byte strings of [`SPLICE_AT`] bytes or more out of
/// its buffer when it has `splices` to note them in: they are copied once, as they are sealed,
/// rather than into the buffer first.
struct SplicingWriter<'a> {
    w: Writer,
    splices: Option<&'a mut Vec<Splice>>,
    /// The bytes of the strings left out.
    spliced: usize,
}

impl SplicingWriter<'_> {
    #[inline(always)]
    fn byte_string(&mut self, b: &Bound<'_, PyBytes>) {
        let data = b.as_bytes();
        match self.splices.as_deref_mut() {
            Some(splices) if data.len() >= SPLICE_AT => {
                self.w.string_header(data.len());
                splices.push(Splice { at: self.w.written(), bytes: b.clone().unbind() });
                self.spliced += data.len();
            }
            _ => self.w.bytes(data),
        }
    }
}

impl Deref for SplicingWriter<'_> {
    type Target = Writer;

    fn deref(&self) -> &Writer {
        &self.w
    }
}

impl DerefMut for SplicingWriter<'_> {
    fn deref_mut(&mut self) -> &mut Writer {
        &mut self.w
    }
}

/// The order in which the last dict with text keys only (and not too many) was sent: dicts of
/// one shape tend to follow one another, their keys the very same str objects in the same
/// order, which sort the same way each time.
#[derive(Default)]
struct KeyOrder {
    /// The keys in the dict's own order: held, so that no other object can take their address.
    keys: Vec<Py<PyAny>>,
    /// The sorted order: the places in `keys` of the first key, the second, ...
    sorted: Vec<u8>,
}

impl KeyOrder {
    /// Dicts with more keys than this are sorted afresh each time.
    const MAX_KEYS: usize = 16;

    /// The sorted order of a dict whose keys, in its own order, are `keys` (at most
    /// `MAX_KEYS`): the one remembered if they are the keys remembered, else found (and
    /// remembered) if they are all text; None if they are not.
    ///
    /// # Safety
    ///
    /// Each of `keys` is a live object (a borrowed reference).
    #[inline]
    unsafe fn of(&mut self, py: Python<'_>, keys: &[*mut ffi::PyObject]) -> Option<&[u8]> {
        let same = self.keys.len() == keys.len() && self.keys.iter().zip(keys).all(|(k, &key)| k.as_ptr() == key);
        if !same {
            // SAFETY: the caller's contract.
            let keys: Vec<Borrowed<'_, '_, PyAny>> =
                keys.iter().map(|&key| unsafe { Borrowed::from_ptr(py, key) }).collect();
            if !keys.iter().all(|key| text_of(key).is_some()) {
                return None;
            }
            self.keys.clear();
            self.keys.extend(keys.iter().map(|&key| Borrowed::to_owned(key).unbind()));
            self.sorted.clear();
            self.sorted.extend(0..keys.len() as u8);
            self.sorted.sort_unstable_by_key(|&i| text_of(&keys[usize::from(i)]));
        }
        Some(&self.sorted)
    }
}

/// A sequence being written (opened as `id`): where the walk goes on once the item being
/// written is done.
enum Walk<'py> {
    /// A list, read afresh at each step as foolscap's iterator does: the hook may change it.
    List {
        list: Bound<'py, PyList>,
        next: usize,
        id: u64,
    },
    Tuple {
        tuple: Bound<'py, PyTuple>,
        next: usize,
        id: u64,
    },
    /// A dict, whose sorted pairs are `pairs[start..]` of the writer: `next` counts keys and
    /// values from `2 * start` to `end` (pair i's key is `2 * i`, its value `2 * i + 1`).
    Dict {
        start: usize,
        next: usize,
        end: usize,
        id: u64,
    },
    Set {
        members: Bound<'py, PyIterator>,
        id: u64,
    },
    /// A copyable's `(name, value)` pairs, from `state`.
    Copyable {
        pairs: Bound<'py, PyIterator>,
        state: Bound<'py, PyAny>,
        id: u64,
    },
}

impl<'py> MessageWriter<'py, '_> {
    /// Write `obj`, a whole value.
    fn value(&mut self, obj: &Bound<'py, PyAny>) -> PyResult<()> {
        if !scalar::<true>(&mut self.w, obj)? {
            self.write(obj.clone())?;
            self.finish_sequences()?;
        }
        Ok(())
    }

    /// Write the items of the open sequences, innermost first, closing each as it completes.
    fn finish_sequences(&mut self) -> PyResult<()> {
        while let Some(item) = self.step()? {
            self.write(item)?;
        }
        Ok(())
    }

    /// Write `obj`, which is not an exact scalar (see [`scalar`]), or open it if it is a sequence
    /// (its items are then written by [`Self::step`]).
    fn write(&mut self, obj: Bound<'py, PyAny>) -> PyResult<()> {
        if self.sequence::<true>(&obj)? {
            return Ok(());
        }
        self.special(&obj)
    }

    /// Write `obj` if it is of a type foolscap sends as itself, exactly that type (`EXACT`: the
    /// common case, tried before the hook) or a subclass (after it); false if it is not.
    #[inline(always)]
    fn builtin<const EXACT: bool>(&mut self, obj: &Bound<'py, PyAny>) -> PyResult<bool> {
        Ok(scalar::<EXACT>(&mut self.w, obj)? || self.sequence::<EXACT>(obj)?)
    }

    /// Open `obj` if it is a list, tuple, dict, set or frozenset (or write it, if it is a
    /// decimal), as [`Self::builtin`]; false if it is not one of those.
    #[inline(always)]
    fn sequence<const EXACT: bool>(&mut self, obj: &Bound<'py, PyAny>) -> PyResult<bool> {
        if let Some(list) = cast::<PyList, EXACT>(obj) {
            if !self.seen_again(obj)? {
                let id = self.w.open(word::LIST)?;
                self.stack.push(Walk::List { list: list.clone(), next: 0, id });
            }
        } else if let Some(tuple) = cast::<PyTuple, EXACT>(obj) {
            if !self.seen_again(obj)? {
                let id = self.w.open(word::TUPLE)?;
                self.stack.push(Walk::Tuple { tuple: tuple.clone(), next: 0, id });
            }
        } else if let Some(dict) = cast::<PyDict, EXACT>(obj) {
            if !self.seen_again(obj)? {
                let id = self.w.open(word::DICT)?;
                self.dict(dict, id)?;
            }
        } else if cast::<PySet, EXACT>(obj).is_some() {
            self.set(obj, word::SET, true)?;
        } else if cast::<PyFrozenSet, EXACT>(obj).is_some() {
            // foolscap does not track frozensets for sharing.
            self.set(obj, word::IMMUTABLE_SET, false)?;
        } else if self.is_decimal::<EXACT>(obj)? {
            self.decimal(obj)?;
        } else {
            return Ok(false);
        }
        Ok(true)
    }

    /// Write the pairs of `dict` (opened as `id`) in foolscap's order, sorted by key: small
    /// dicts with text keys as far as their pairs are exact scalars here, the rest by [`Self::step`].
    fn dict(&mut self, dict: &Bound<'py, PyDict>, id: u64) -> PyResult<()> {
        #[cfg(not(Py_GIL_DISABLED))]
        if dict.len() <= KeyOrder::MAX_KEYS && self.small_dict(dict, id)? {
            return Ok(());
        }
        let start = self.pairs.len();
        self.sorted_pairs(dict)?;
        self.stack.push(Walk::Dict { start, next: 2 * start, end: 2 * self.pairs.len(), id });
        Ok(())
    }

    /// [`Self::dict`] for a dict of at most `KeyOrder::MAX_KEYS` pairs: false (and nothing
    /// done) if its keys are not all text.
    #[cfg(not(Py_GIL_DISABLED))]
    fn small_dict(&mut self, dict: &Bound<'py, PyDict>, id: u64) -> PyResult<bool> {
        let py = self.py;
        let mut keys = [std::ptr::null_mut(); KeyOrder::MAX_KEYS];
        let mut values = [std::ptr::null_mut(); KeyOrder::MAX_KEYS];
        let (mut n, mut pos) = (0, 0);
        // SAFETY (here and below): PyDict_Next hands out borrowed references to the dict's
        // entries, good while the dict is not changed, and nothing here changes it: no Python
        // code runs while keys are compared and exact scalars written, and a pair that is not
        // made of those is held by owned references before anything else is written.
        unsafe {
            while n < KeyOrder::MAX_KEYS && ffi::PyDict_Next(dict.as_ptr(), &mut pos, &mut keys[n], &mut values[n]) != 0
            {
                n += 1;
            }
        }
        let entry = |p: *mut ffi::PyObject| unsafe { Borrowed::from_ptr(py, p) };
        let Some(sorted) = (unsafe { self.order.of(py, &keys[..n]) }) else { return Ok(false) };
        for (place, &i) in sorted.iter().enumerate() {
            let (key, value) = (entry(keys[usize::from(i)]), entry(values[usize::from(i)]));
            exact_scalar(&mut self.w, &key)?;
            if !exact_scalar(&mut self.w, &value)? {
                // This value, and the pairs after it, are written by `step`.
                let start = self.pairs.len();
                for &j in &sorted[place..] {
                    let j = usize::from(j);
                    self.pairs.push((entry(keys[j]).to_owned(), entry(values[j]).to_owned()));
                }
                self.stack.push(Walk::Dict { start, next: 2 * start + 1, end: 2 * self.pairs.len(), id });
                return Ok(true);
            }
        }
        self.w.close(id);
        Ok(true)
    }

    /// Append the pairs of `dict` to `pairs`, sorted by key as foolscap sorts them, with
    /// Python's sort (keys that cannot be compared raise its TypeError, and nothing is sent);
    /// keys that are all plain text are sorted here, by their UTF-8, whose byte order is code
    /// point order.
    fn sorted_pairs(&mut self, dict: &Bound<'py, PyDict>) -> PyResult<()> {
        let start = self.pairs.len();
        let mut pos = 0;
        while let Some((key, value)) = dict_next(dict, &mut pos) {
            self.pairs.push((key.to_owned(), value.to_owned()));
        }
        let pairs = &mut self.pairs[start..];
        if pairs.len() < 2 {
            return Ok(());
        }
        if pairs.iter().all(|(key, _)| text_of(key).is_some()) {
            pairs.sort_unstable_by(|(a, _), (b, _)| text_of(a).cmp(&text_of(b)));
            return Ok(());
        }
        let keys = PyList::new(self.py, pairs.iter().map(|(key, _)| key))?;
        keys.sort()?;
        for (pair, key) in pairs.iter_mut().zip(keys.iter()) {
            let value = dict.get_item(&key)?.ok_or_else(|| {
                pyo3::exceptions::PyRuntimeError::new_err("dict changed size while it was being sent")
            })?;
            *pair = (key, value);
        }
        Ok(())
    }

    /// A set (or, not `track`ed, a frozenset).
    fn set(&mut self, obj: &Bound<'py, PyAny>, word: Word, track: bool) -> PyResult<()> {
        if !(track && self.seen_again(obj)?) {
            let id = self.w.open(word)?;
            self.stack.push(Walk::Set { members: obj.try_iter()?, id });
        }
        Ok(())
    }

    /// Write the items of the open sequences, innermost first, as far as they are exact
    /// scalars (closing each sequence as it completes); return the first item that is not one
    /// (for [`Self::write`]), or
    /// None once every sequence is complete.
    fn step(&mut self) -> PyResult<Option<Bound<'py, PyAny>>> {
        loop {
            let w = &mut self.w;
            let Some(top) = self.stack.last_mut() else { return Ok(None) };
            let id = match top {
                Walk::List { list, next, id } => {
                    while *next < list.len() {
                        let item = list_item(list, *next)?;
                        *next += 1;
                        if !scalar::<true>(w, &item)? {
                            return Ok(Some(item.to_owned()));
                        }
                    }
                    *id
                }
                Walk::Tuple { tuple, next, id } => {
                    while *next < tuple.len() {
                        // SAFETY: `next < len(tuple)`, just checked (a tuple's length is fixed).
                        let item = unsafe { tuple.get_item_unchecked(*next) };
                        *next += 1;
                        if !scalar::<true>(w, &item)? {
                            return Ok(Some(item));
                        }
                    }
                    *id
                }
                Walk::Dict { next, end, id, .. } => loop {
                    if *next == *end {
                        break *id;
                    }
                    let (key, value) = &self.pairs[*next / 2];
                    let item = if *next % 2 == 0 { key } else { value };
                    *next += 1;
                    if !scalar::<true>(w, item)? {
                        return Ok(Some(item.clone()));
                    }
                },
                Walk::Set { members, id } => {
                    for member in members.by_ref() {
                        let member = member?;
                        if !scalar::<true>(w, &member)? {
                            return Ok(Some(member));
                        }
                    }
                    *id
                }
                Walk::Copyable { pairs, state, id } => {
                    for pair in pairs.by_ref() {
                        let (name, value): (Bound<'py, PyAny>, Bound<'py, PyAny>) =
                            pair?.extract().map_err(|_| bad_state(state))?;
                        if let Ok(name) = name.cast::<PyString>() {
                            w.bytes(name.to_str()?.as_bytes());
                        } else if let Ok(name) = name.cast::<PyBytes>() {
                            w.bytes(name.as_bytes());
                        } else {
                            return Err(PyTypeError::new_err(format!(
                                "copyable attribute names are str, not {}",
                                type_name(&name)
                            )));
                        }
                        if !scalar::<true>(w, &value)? {
                            return Ok(Some(value));
                        }
                    }
                    *id
                }
            };
            if let Some(Walk::Dict { start, .. }) = self.stack.pop() {
                self.pairs.truncate(start);
            }
            self.w.close(id);
        }
    }

    fn is_decimal<const EXACT: bool>(&self, obj: &Bound<'py, PyAny>) -> PyResult<bool> {
        let decimal = decimal_type(self.py)?;
        Ok(if EXACT { obj.get_type().is(decimal) } else { obj.is_instance(decimal)? })
    }

    fn decimal(&mut self, obj: &Bound<'py, PyAny>) -> PyResult<()> {
        let text = obj.str()?;
        Ok(self.w.decimal(text.to_str()?.as_bytes())?)
    }

    /// A tracked container seen before in this message: write `(reference N)` and return true.
    /// Otherwise remember it under the id its OPEN will get, and keep it alive until the message
    /// is written, so that no other object takes its address meanwhile.
    #[inline(always)]
    fn seen_again(&mut self, obj: &Bound<'py, PyAny>) -> PyResult<bool> {
        if let Some(&mut id) = self.seen.get_or_insert(obj.as_ptr() as usize, self.w.next_open_id()) {
            self.w.reference(id)?;
            return Ok(true);
        }
        self.keep.push(obj.clone());
        Ok(false)
    }

    /// Not a builtin value: the hook's form, or a builtin subclass as its base type.
    fn special(&mut self, obj: &Bound<'py, PyAny>) -> PyResult<()> {
        if let Some(hook) = self.hook.clone() {
            let form = hook.call1((obj,))?;
            if !form.is_none() {
                let written = self.hooked(obj, &form);
                self.keep.push(form);
                return written;
            }
        }
        if self.builtin::<false>(obj)? {
            return Ok(());
        }
        Err(PyTypeError::new_err(format!(
            "cannot send {} objects over foolscap (the encoder hook gives no form for them)",
            type_name(obj)
        )))
    }

    /// Write the form the hook gave for `obj`.
    fn hooked(&mut self, obj: &Bound<'py, PyAny>, form: &Bound<'py, PyAny>) -> PyResult<()> {
        let bad = || {
            PyTypeError::new_err(format!(
                "the foolscap encoder hook gave {} for a {} object; expected None, ('my-reference', clid), \
                 ('my-reference', clid, iface, furl), ('your-reference', clid), ('their-reference', giftid, furl) \
                 or ('copyable', typename, state)",
                short_repr(form),
                type_name(obj)
            ))
        };
        let form = form.cast::<PyTuple>().map_err(|_| bad())?;
        let tag = match form.get_item(0) {
            Ok(tag) => tag.extract::<String>().map_err(|_| bad())?,
            Err(_) => return Err(bad()),
        };
        match (tag.as_str(), form.len()) {
            ("my-reference", 2) => {
                let clid = wire_id("clid", form.get_item(1)?.extract()?, true)?;
                Ok(self.w.my_reference(clid, None)?)
            }
            ("my-reference", 4) => {
                let clid = wire_id("clid", form.get_item(1)?.extract()?, true)?;
                let iface: Option<String> = form.get_item(2)?.extract()?;
                let furl: Option<String> = form.get_item(3)?.extract()?;
                let iface = iface.as_deref().unwrap_or("").as_bytes();
                Ok(self.w.my_reference(clid, Some((iface, furl.as_deref().map(str::as_bytes))))?)
            }
            ("your-reference", 2) => {
                let clid = wire_id("your-reference clid", form.get_item(1)?.extract()?, true)?;
                Ok(self.w.your_reference(clid)?)
            }
            ("their-reference", 3) => {
                let giftid = wire_id("gift ID", form.get_item(1)?.extract()?, false)?;
                let furl: String = form.get_item(2)?.extract()?;
                Ok(self.w.their_reference(giftid, furl.as_bytes())?)
            }
            ("copyable", 3) => {
                let typename: String = form.get_item(1)?.extract()?;
                self.copyable(typename.as_bytes(), &form.get_item(2)?)
            }
            _ => Err(bad()),
        }
    }

    /// Open `(copyable TYPENAME name value ...)` from a dict (in its order) or (name, value)
    /// pairs; its items are written by [`Self::step`].
    fn copyable(&mut self, typename: &[u8], state: &Bound<'py, PyAny>) -> PyResult<()> {
        let pairs = match state.cast::<PyDict>() {
            Ok(dict) => dict.items().into_any(),
            Err(_) => state.clone(),
        };
        let id = self.w.open(word::COPYABLE)?;
        self.w.bytes(typename);
        let pairs = pairs.try_iter().map_err(|_| bad_state(state))?;
        self.stack.push(Walk::Copyable { pairs, state: state.clone(), id });
        Ok(())
    }
}

/// The UTF-8 of a dict key that is an exact str (and valid Unicode), by which foolscap's
/// order of text keys goes: UTF-8 byte order is code point order.
#[inline(always)]
fn text_of<'a>(key: &'a Bound<'_, PyAny>) -> Option<&'a [u8]> {
    cast::<PyString, true>(key).and_then(utf8_of)
}

/// Write `obj` if it is an int, str, bytes, float, None or bool, exactly that type (`EXACT`) or
/// a subclass: the values foolscap writes without sequences of their own to walk. False if it
/// is not.
#[inline(always)]
fn scalar<const EXACT: bool>(w: &mut SplicingWriter<'_>, obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    if EXACT {
        return exact_scalar(w, obj);
    }
    // bool is an int subclass, but an exact bool never gets as far as the subclass pass.
    if cast::<PyInt, EXACT>(obj).is_some() {
        match int_value(obj)? {
            Integer::Small(v) => w.int(v),
            Integer::Big(big) => w.big_int(&big),
        }
    } else if let Some(s) = cast::<PyString, EXACT>(obj) {
        match utf8_of(s) {
            Some(utf8) => w.unicode(utf8)?,
            // Lone surrogates: Python's own UnicodeEncodeError, as foolscap's `encode("UTF-8")`.
            None => return Err(s.to_str().expect_err("not UTF-8")),
        }
    } else if let Some(b) = cast::<PyBytes, EXACT>(obj) {
        w.byte_string(b);
    } else if let Some(f) = cast::<PyFloat, EXACT>(obj) {
        w.float(f.value());
    } else if obj.is_none() {
        w.none()?;
    } else if let Some(b) = cast::<PyBool, EXACT>(obj) {
        w.boolean(b.is_true())?;
    } else {
        return Ok(false);
    }
    Ok(true)
}

/// [`scalar`] for the exact types: each found by one compare of the type's address, text (the
/// most common item) first.
#[inline(always)]
fn exact_scalar(w: &mut SplicingWriter<'_>, obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    let ty = obj.get_type_ptr();
    // SAFETY: only the addresses of CPython's static type objects are taken; each cast below
    // follows the check of its exact type.
    unsafe {
        if ty == &raw mut ffi::PyUnicode_Type {
            let s = obj.cast_unchecked::<PyString>();
            match utf8_of(s) {
                Some(utf8) => w.unicode(utf8)?,
                // Lone surrogates: Python's own UnicodeEncodeError, as foolscap's `encode("UTF-8")`.
                None => return Err(s.to_str().expect_err("not UTF-8")),
            }
        } else if ty == &raw mut ffi::PyLong_Type {
            match int_value(obj)? {
                Integer::Small(v) => w.int(v),
                Integer::Big(big) => w.big_int(&big),
            }
        } else if ty == &raw mut ffi::PyFloat_Type {
            w.float(obj.cast_unchecked::<PyFloat>().value());
        } else if ty == &raw mut ffi::PyBytes_Type {
            w.byte_string(obj.cast_unchecked::<PyBytes>());
        } else if obj.is_none() {
            w.none()?;
        } else if ty == &raw mut ffi::PyBool_Type {
            w.boolean(obj.cast_unchecked::<PyBool>().is_true())?;
        } else {
            return Ok(false);
        }
    }
    Ok(true)
}

fn bad_state(state: &Bound<'_, PyAny>) -> PyErr {
    PyTypeError::new_err(format!("a copyable's state is a dict or (name, value) pairs, not {}", type_name(state)))
}
