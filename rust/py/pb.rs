//! Twisted PB's broker layer on the wire: dialect negotiation, the `version` exchange, and the
//! command envelopes (`message`, `answer`, `decref`, ...) around jelly values.
//!
//! [`PbDecoderPy`] turns received chunks into event tuples, one `feed` per chunk;
//! [`PbEncoderPy`] turns one outgoing command into bytes, one call per message. The encoder is
//! frozen and separate from the decoder so a jelly hook (user code) may send while a chunk is
//! being decoded.
//!
//! Events (the first item is the kind, exported as `EV_*`):
//!
//! | kind | tuple |
//! |---|---|
//! | `EV_MESSAGE` | `(kind, request_id, object_id, method, answer_required, args, kwargs)` |
//! | `EV_CACHEMESSAGE` | same, for an `observe_*` call on a cache |
//! | `EV_ANSWER` / `EV_ERROR` | `(kind, request_id, value)` |
//! | `EV_BAD_CALL` | `(kind, request_id, answer_required, method, exception, unclaimed)`: arguments that did not unjelly |
//! | `EV_BAD_REPLY` | `(kind, request_id, exception, unclaimed)`: a reply that did not unjelly |
//! | `EV_DECREF` / `EV_DECACHE` / `EV_UNCACHE` | `(kind, luid)` |
//! | `EV_READY` | `(kind, dialect, bytes_to_send)`: negotiation is over |
//! | `EV_UNKNOWN` | `(kind, command)`: a command PB does not have |
//! | `EV_DID_NOT_UNDERSTAND` | `(kind, command)`: the peer did not know one of ours |
//! | `EV_RAISED` | `(kind, request_id, answer_required, method, exception)`: (fast path) the method raised, or its result could not be sent |
//! | `EV_AWAITING` | `(kind, request_id, answer_required, method, awaitable, perspective)`: (fast path) the method returned an awaitable |
//! | `EV_RETURNED` | `(kind, request_id, answer_required, method, result, perspective)`: (fast path) a result to send for a perspective |
//! | `EV_FLUSH` | `(kind,)`: (fast path) write what the sender holds before going on |
//!
//! With the fast path attached (see `fast.rs`), calls and plain answers are handled during
//! `feed`: their answers go straight to the connection's `Sender`. A call the broker held back
//! comes back through `run`, the same path.
//!
//! `unclaimed` lists `(b"decref" or b"decache", luid)` for the references the refused value held
//! after the point of refusal: they never became proxies or copies, so the broker gives them
//! back itself.
//!
//! Anything that breaks the stream or the envelope (bad banana, a non-list command, wrong field
//! types, a version mismatch) raises instead: the connection cannot continue.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use super::errors::jelly_error;
use super::fast::{FastPath, Outcome, REPLY_FLUSH};
use super::jelly::{FlatWriter, JellyDecoder, JellyEncoder};
use super::objects::StrCache;
use super::sender::SenderPy;
use super::tables::Tables;
use super::{dialect, limits, raw_value, with_bytes, with_events};
use crate::banana::cursor::Cursor;
use crate::banana::{Dialect, Encoder};
use crate::jelly::scan::{references, Claim};
use crate::pb::{Command, Kind, ObjectId, PbError, Received, Release, Session};

pyo3::import_exception!(pbfast.errors, ProtocolError);
pyo3::import_exception!(pbfast.errors, NegotiationError);

/// The root object's name, made once (its hash is then cached for the object-table lookups).
static ROOT: pyo3::sync::PyOnceLock<Py<PyBytes>> = pyo3::sync::PyOnceLock::new();

pub const EV_MESSAGE: u8 = 0;
pub const EV_CACHEMESSAGE: u8 = 1;
pub const EV_ANSWER: u8 = 2;
pub const EV_ERROR: u8 = 3;
pub const EV_BAD_CALL: u8 = 4;
pub const EV_BAD_REPLY: u8 = 5;
pub const EV_DECREF: u8 = 6;
pub const EV_DECACHE: u8 = 7;
pub const EV_UNCACHE: u8 = 8;
pub const EV_READY: u8 = 9;
pub const EV_UNKNOWN: u8 = 10;
pub const EV_DID_NOT_UNDERSTAND: u8 = 11;
pub const EV_RAISED: u8 = 12;
pub const EV_AWAITING: u8 = 13;
pub const EV_FLUSH: u8 = 14;
pub const EV_RETURNED: u8 = 15;

impl From<PbError> for PyErr {
    fn from(e: PbError) -> PyErr {
        match e {
            PbError::Banana(e) => e.into(),
            PbError::Protocol(what) => ProtocolError::new_err(what),
            PbError::Negotiation(what) => NegotiationError::new_err(what),
        }
    }
}

/// Incremental decoder for one direction of a PB connection: the sans-IO [`Session`] reads
/// the stream, this makes Python events of what it reads.
#[pyclass(module = "pbfast._core", name = "PbDecoder")]
pub struct PbDecoderPy {
    session: Session,
    hook: Option<Py<PyAny>>,
    strings: StrCache,
    fast: Option<FastPath>,
}

#[pymethods]
impl PbDecoderPy {
    /// `server`: this side accepted the connection (it offers the dialects, the client picks).
    /// `hook(tag, items)` builds the values of non-builtin jelly tags (`remote`, copies, ...).
    #[new]
    #[pyo3(signature = (server, *, hook=None, **limits))]
    fn new(server: bool, hook: Option<Py<PyAny>>, limits: Option<&Bound<'_, PyDict>>) -> PyResult<PbDecoderPy> {
        Ok(PbDecoderPy {
            session: Session::new(server, self::limits(limits)?),
            hook,
            strings: StrCache::new(),
            fast: None,
        })
    }

    /// Handle calls and plain answers during `feed` (see `fast.rs`), with the connection's
    /// `tables`, the `encoder`, the `sender`, the `broker` (what `remoteMessageReceived` is
    /// given) and `is_plain(type)`: whether objects of a type dispatch calls the default way
    /// (asked once per type).
    fn attach(
        &mut self,
        tables: Py<Tables>,
        encoder: Py<PbEncoderPy>,
        sender: Py<SenderPy>,
        broker: Py<PyAny>,
        is_plain: Py<PyAny>,
    ) {
        self.fast = Some(FastPath::new(tables, encoder, sender, broker, is_plain));
    }

    /// Run a `message` the broker held back, as `feed` would have run it: returns the events it
    /// leads to (`EV_RAISED`, `EV_AWAITING`, `EV_RETURNED`, and `EV_FLUSH` once the sender holds
    /// `REPLY_FLUSH` bytes); a plain answer goes to the sender.
    #[allow(clippy::too_many_arguments)]
    fn run<'py>(
        &mut self,
        py: Python<'py>,
        request_id: i64,
        object_id: &Bound<'py, PyAny>,
        method: &Bound<'py, PyString>,
        answer: bool,
        args: &Bound<'py, PyTuple>,
        kwargs: &Bound<'py, PyDict>,
    ) -> PyResult<Bound<'py, PyList>> {
        let events = PyList::empty(py);
        let Some(fast) = self.fast.as_mut() else {
            return Err(ProtocolError::new_err("a call arrived before the dialect was negotiated"));
        };
        let mut replies = Vec::new();
        let kwargs = Some(kwargs).filter(|kw| !kw.is_empty());
        if let Outcome::Event(event) =
            fast.message(py, request_id, object_id, method, answer, args, kwargs, &mut replies)?
        {
            events.append(event)?;
        }
        if let Some(flush) = fast.send_held(py, &mut replies)? {
            events.append(flush)?;
        }
        Ok(events)
    }

    /// Whether the fast path runs (the broker turns it off while it holds calls back).
    #[getter]
    fn get_fast(&self) -> bool {
        self.fast.as_ref().is_some_and(|f| f.enabled)
    }

    #[setter]
    fn set_fast(&mut self, on: bool) {
        if let Some(f) = self.fast.as_mut() {
            f.enabled = on;
        }
    }

    /// The server's first bytes: the dialects it offers.
    #[staticmethod]
    fn offer(py: Python<'_>) -> Bound<'_, PyBytes> {
        PyBytes::new(py, &Session::offer())
    }

    /// Feed a chunk; returns the events it completed (an empty list means "need more").
    /// Raises `BananaError`, `ProtocolError` or `NegotiationError` if the connection must end.
    /// The exception carries the events completed before the fault as `.events`: the commands
    /// a peer sent before breaking the stream still count, as they do in Twisted.
    fn feed<'py>(&mut self, py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
        let events = PyList::empty(py);
        let result = with_bytes(data, |bytes| {
            let hook = self.hook.as_ref().map(|h| h.bind(py).clone());
            let strings = &mut self.strings;
            let mut fast = self.fast.as_mut().filter(|f| f.enabled);
            let mut replies = Vec::new();
            // Bytes of answers the fast path queued while reading this chunk.
            let mut answered = 0;
            let fed = self.session.feed(bytes, |received| -> PyResult<()> {
                let command = match received {
                    Received::Ready { dialect, send } => {
                        return events.append((EV_READY, dialect.name(), PyBytes::new(py, &send)));
                    }
                    Received::Command(command) => command,
                };
                let mut reader = Envelope {
                    py,
                    command,
                    hook: hook.as_ref(),
                    strings: &mut *strings,
                    fast: fast.as_deref_mut(),
                    replies: &mut replies,
                };
                if let Some(event) = reader.event()? {
                    // Later commands must not overtake this one, which the broker handles after
                    // `feed` (the fast path's own events need no such order).
                    let kind: u8 = event.get_item(0)?.extract()?;
                    if kind != EV_AWAITING && kind != EV_RAISED {
                        if let Some(f) = fast.take() {
                            f.send(py, &mut replies, false)?;
                        }
                    }
                    events.append(event)?;
                }
                if !replies.is_empty() {
                    // Each answer goes to the sender as it is made (which writes every few of
                    // them at once: the peer starts on them while the rest of the chunk runs).
                    if let Some(f) = fast.as_deref_mut() {
                        answered += replies.len();
                        f.send(py, &mut replies, false)?;
                    }
                }
                if answered >= REPLY_FLUSH {
                    // Let the broker write these (and apply back-pressure) before the rest.
                    if let Some(f) = fast.take() {
                        events.append(f.send(py, &mut replies, true)?)?;
                    }
                }
                Ok(())
            });
            if let Some(f) = fast {
                f.send(py, &mut replies, false)?;
            }
            fed
        });
        with_events(py, events, result)
    }

    /// The negotiated dialect ("pb" or "none"), or None before negotiation ends.
    #[getter]
    fn dialect(&self) -> Option<&'static str> {
        self.session.dialect().map(Dialect::name)
    }

    /// Bytes held for an incomplete expression.
    #[getter]
    fn buffered(&self) -> usize {
        self.session.buffered()
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        if let Some(h) = &self.hook {
            visit.call(h)?;
        }
        if let Some(f) = &self.fast {
            f.traverse(&visit)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.hook = None;
        self.fast = None;
    }
}

/// One received command, its values made into Python objects (and plain calls and answers
/// handled on the spot, with the fast path).
struct Envelope<'py, 'a> {
    py: Python<'py>,
    command: Command<'a>,
    hook: Option<&'a Bound<'py, PyAny>>,
    strings: &'a mut StrCache,
    fast: Option<&'a mut FastPath>,
    replies: &'a mut Vec<u8>,
}

impl<'py> Envelope<'py, '_> {
    fn event(&mut self) -> PyResult<Option<Bound<'py, PyAny>>> {
        let py = self.py;
        let Command { kind, expr, body, dialect, limits, .. } = self.command;
        let mut cur = Cursor::new(expr, dialect, limits);
        cur.skip_to(body);
        let event = match kind {
            Kind::Message { cache, request_id, object, method, answer } => {
                return self.call(cache, request_id, object, method, answer, &mut cur);
            }
            Kind::Reply { error, request_id } => {
                let kind = if error { EV_ERROR } else { EV_ANSWER };
                match self.jelly(&mut cur) {
                    Ok(value) => {
                        if let (EV_ANSWER, Some(fast)) = (kind, self.fast.as_deref()) {
                            if let Outcome::Done = fast.answer(py, request_id, &value)? {
                                return Ok(None);
                            }
                        }
                        (kind, request_id, value).into_pyobject(py)?.into_any()
                    }
                    Err(e) => {
                        let unclaimed = self.unclaimed(&cur)?;
                        (EV_BAD_REPLY, request_id, e.into_value(py), unclaimed).into_pyobject(py)?.into_any()
                    }
                }
            }
            Kind::Release(release) => {
                let kind = match release {
                    Release::Decref => EV_DECREF,
                    Release::Decache => EV_DECACHE,
                    Release::Uncache => EV_UNCACHE,
                };
                (kind, raw_value(py, &mut cur)?).into_pyobject(py)?.into_any()
            }
            Kind::DidNotUnderstand => (EV_DID_NOT_UNDERSTAND, raw_value(py, &mut cur)?).into_pyobject(py)?.into_any(),
            Kind::Unknown(name) => (EV_UNKNOWN, PyBytes::new(py, name)).into_pyobject(py)?.into_any(),
        };
        Ok(Some(event))
    }

    /// A `message` or `cachemessage`: its arguments (the jelly after the envelope), then the
    /// fast path or an event.
    fn call(
        &mut self,
        cache: bool,
        request_id: i64,
        object: ObjectId<'_>,
        method: &str,
        answer: bool,
        cur: &mut Cursor<'_>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let py = self.py;
        let kind = if cache { EV_CACHEMESSAGE } else { EV_MESSAGE };
        let object_id = match object {
            ObjectId::Luid(luid) => luid.into_pyobject(py)?.into_any(),
            ObjectId::Name(b"root") => {
                ROOT.get_or_init(py, || PyBytes::new(py, b"root").unbind()).bind(py).clone().into_any()
            }
            ObjectId::Name(name) => PyBytes::new(py, name).into_any(),
        };
        let method = self.strings.get(py, method.as_bytes())?;
        let Command { expr, offset, dialect, .. } = self.command;
        let arguments = self.jelly(cur).and_then(|args| {
            let at = cur.pos();
            let args = match args.cast_into::<PyTuple>() {
                Ok(t) => t,
                Err(e) => match e.into_inner().cast_into::<PyList>() {
                    Ok(list) => list.to_tuple(),
                    Err(e) => {
                        let what = e.into_inner().get_type().name()?;
                        let at = Some(offset + at as u64);
                        return Err(jelly_error(format!("call arguments must be a tuple or list, not {what}"), at));
                    }
                },
            };
            // Most calls have no keyword arguments: skip making an empty dict for them.
            if dialect.empty_dictionary() == &expr[cur.pos()..] {
                cur.skip_to(expr.len());
                return Ok((args, None));
            }
            let kwargs = self.jelly(cur)?;
            Ok((args, Some(keywords(kwargs)?)))
        });
        Ok(Some(match arguments {
            Ok((args, kwargs)) => {
                if let (EV_MESSAGE, Some(fast)) = (kind, self.fast.as_deref_mut()) {
                    let kw = kwargs.as_ref().filter(|kw| !kw.is_empty());
                    match fast.message(py, request_id, &object_id, &method, answer, &args, kw, self.replies)? {
                        Outcome::Done => return Ok(None),
                        Outcome::Event(event) => return Ok(Some(event)),
                        Outcome::Declined => {}
                    }
                }
                let kwargs = kwargs.unwrap_or_else(|| PyDict::new(py));
                (kind, request_id, object_id, method, answer, args, kwargs).into_pyobject(py)?.into_any()
            }
            Err(e) => {
                let unclaimed = self.unclaimed(cur)?;
                (EV_BAD_CALL, request_id, answer, method, e.into_value(py), unclaimed).into_pyobject(py)?.into_any()
            }
        }))
    }

    /// One jelly value at the cursor, in its own reference-id space. On failure the cursor is
    /// left where decoding stopped.
    fn jelly(&mut self, cur: &mut Cursor<'_>) -> PyResult<Bound<'py, PyAny>> {
        let Command { expr, offset, dialect, limits, .. } = self.command;
        let start = cur.pos();
        let mut decoder =
            JellyDecoder::new(self.py, &expr[start..], dialect, limits, offset + start as u64, self.hook, self.strings);
        let value = decoder.build(false);
        cur.skip_to(start + decoder.consumed());
        value
    }

    /// `(command, luid)` for each reference from the cursor to the end of the command: after a
    /// refusal, the ones that never became proxies or copies (the broker gives them back).
    fn unclaimed(&self, cur: &Cursor<'_>) -> PyResult<Bound<'py, PyList>> {
        let Command { expr, dialect, limits, .. } = self.command;
        let found = references(expr, dialect, limits, cur.pos());
        PyList::new(
            self.py,
            found.into_iter().map(|claim| match claim {
                Claim::Remote(luid) => (&b"decref"[..], luid),
                Claim::Cache(luid) => (&b"decache"[..], luid),
            }),
        )
    }
}

/// Keyword arguments as a dict with str keys (Python 2 peers send byte-string keys).
fn keywords(kwargs: Bound<'_, PyAny>) -> PyResult<Bound<'_, PyDict>> {
    let Ok(dict) = kwargs.cast_into::<PyDict>() else {
        return Err(jelly_error("keyword arguments must be a dictionary".into(), None));
    };
    if dict.keys().iter().all(|k| k.is_exact_instance_of::<PyString>()) {
        return Ok(dict);
    }
    let fixed = PyDict::new(dict.py());
    for (key, value) in dict.iter() {
        let key = match key.cast::<PyBytes>() {
            Ok(b) => PyString::from_bytes(dict.py(), b.as_bytes())
                .map_err(|_| jelly_error("a keyword argument's name is not UTF-8".into(), None))?,
            Err(_) if key.is_instance_of::<PyString>() => key.cast_into::<PyString>()?,
            Err(_) => return Err(jelly_error(format!("a keyword argument's name must be a string, not {key}"), None)),
        };
        fixed.set_item(key, value)?;
    }
    Ok(fixed)
}

/// Encoder of outgoing PB commands: one call per message, bytes out.
#[pyclass(module = "pbfast._core", name = "PbEncoder", frozen)]
pub struct PbEncoderPy {
    dialect: Dialect,
    /// `hook(obj)`: the jelly form of objects jelly does not know (references, copies, failures).
    hook: Option<Py<PyAny>>,
}

#[pymethods]
impl PbEncoderPy {
    #[new]
    #[pyo3(signature = (dialect="pb", *, hook=None))]
    fn new(dialect: &str, hook: Option<Py<PyAny>>) -> PyResult<PbEncoderPy> {
        Ok(PbEncoderPy { dialect: self::dialect(dialect, false)?, hook })
    }

    /// `["message", request_id, object_id, method, answer_required, args, kwargs]` (or
    /// `cachemessage`). `object_id` is an int luid or a byte-string name such as b"root".
    #[pyo3(signature = (request_id, object_id, method, answer_required, args, kwargs=None, *, cache=false))]
    #[allow(clippy::too_many_arguments)]
    fn message<'py>(
        &self,
        py: Python<'py>,
        request_id: i64,
        object_id: &Bound<'py, PyAny>,
        method: &str,
        answer_required: bool,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
        cache: bool,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let mut out = Vec::new();
        self.encode_message(py, request_id, object_id, method, answer_required, args, kwargs, cache, &mut out)?;
        Ok(PyBytes::new(py, &out))
    }

    /// `["answer", request_id, value]`.
    fn answer<'py>(
        &self,
        py: Python<'py>,
        request_id: i64,
        value: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        self.reply(py, b"answer", request_id, value)
    }

    /// `["error", request_id, failure]`.
    fn error<'py>(
        &self,
        py: Python<'py>,
        request_id: i64,
        failure: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        self.reply(py, b"error", request_id, failure)
    }

    /// `[command, item]` with a raw banana item (an int luid, bytes): decref, decache, uncache,
    /// didNotUnderstand. `count` copies are written back to back.
    #[pyo3(signature = (command, item, count=1))]
    fn command<'py>(
        &self,
        py: Python<'py>,
        command: &[u8],
        item: &Bound<'py, PyAny>,
        count: usize,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let mut one = Encoder::new(self.dialect);
        one.list(2).map_err(PyErr::from)?;
        one.bytes(command).map_err(PyErr::from)?;
        super::raw_encode(&mut one, item)?;
        Ok(PyBytes::new(py, &one.out.repeat(count)))
    }

    #[getter]
    fn dialect(&self) -> &'static str {
        self.dialect.name()
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        if let Some(h) = &self.hook {
            visit.call(h)?;
        }
        Ok(())
    }
}

impl PbEncoderPy {
    /// A `message` (or `cachemessage`) appended to `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn encode_message<'py>(
        &self,
        py: Python<'py>,
        request_id: i64,
        object_id: &Bound<'py, PyAny>,
        method: &str,
        answer_required: bool,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
        cache: bool,
        out: &mut Vec<u8>,
    ) -> PyResult<()> {
        if FlatWriter::fits(args) && kwargs.is_none_or(|kw| kw.is_empty()) {
            let mut w = FlatWriter::new(self.dialect, out);
            let written = (|| {
                message_head(w.raw(), request_id, object_id, method, answer_required, cache)?;
                w.value(args)?;
                w.empty_dict()
            })();
            w.finish(written.is_ok(), out);
            return written;
        }
        let mut enc = self.jelly_encoder(py);
        message_head(enc.raw(), request_id, object_id, method, answer_required, cache)?;
        enc.jelly(args.as_any())?;
        match kwargs {
            Some(kw) => enc.jelly(kw.as_any())?,
            None => enc.jelly(PyDict::new(py).as_any())?,
        }
        enc.finish(|bytes| out.extend_from_slice(bytes));
        Ok(())
    }

    fn jelly_encoder<'py>(&self, py: Python<'py>) -> JellyEncoder<'py> {
        JellyEncoder::new(py, self.dialect, self.hook.as_ref().map(|h| h.bind(py).clone()))
    }

    fn reply<'py>(
        &self,
        py: Python<'py>,
        command: &[u8],
        request_id: i64,
        value: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let mut out = Vec::new();
        self.encode_reply(py, command, request_id, value, &mut out)?;
        Ok(PyBytes::new(py, &out))
    }

    /// `[command, request_id, value]` appended to `out`: every reply's encoding, the fast
    /// path's answers (`fast.rs`) and the broker's answers and errors (`answer`, `error`) alike.
    pub fn encode_reply<'py>(
        &self,
        py: Python<'py>,
        command: &[u8],
        request_id: i64,
        value: &Bound<'py, PyAny>,
        out: &mut Vec<u8>,
    ) -> PyResult<()> {
        let head = |raw: &mut Encoder| -> PyResult<()> {
            raw.list(3).map_err(PyErr::from)?;
            raw.bytes(command).map_err(PyErr::from)?;
            raw.int(request_id);
            Ok(())
        };
        if FlatWriter::fits(value) {
            let mut w = FlatWriter::new(self.dialect, out);
            let written = head(w.raw()).and_then(|()| w.value(value));
            w.finish(written.is_ok(), out);
            return written;
        }
        let mut enc = self.jelly_encoder(py);
        head(enc.raw())?;
        enc.jelly(value)?;
        enc.finish(|bytes| out.extend_from_slice(bytes));
        Ok(())
    }
}

/// `["message" (or "cachemessage"), request_id, object_id, method, answer_required, ...`: a
/// call's envelope up to its arguments.
fn message_head(
    raw: &mut Encoder,
    request_id: i64,
    object_id: &Bound<'_, PyAny>,
    method: &str,
    answer_required: bool,
    cache: bool,
) -> PyResult<()> {
    raw.list(7).map_err(PyErr::from)?;
    raw.bytes(if cache { b"cachemessage" } else { b"message" }).map_err(PyErr::from)?;
    raw.int(request_id);
    if let Ok(name) = object_id.cast::<PyBytes>() {
        raw.bytes(name.as_bytes()).map_err(PyErr::from)?;
    } else {
        let luid: i64 = object_id
            .extract()
            .map_err(|_| PyValueError::new_err(format!("an object id is an int or bytes, not {object_id}")))?;
        raw.int(luid);
    }
    raw.bytes(method.as_bytes()).map_err(PyErr::from)?;
    raw.int(i64::from(answer_required));
    Ok(())
}
