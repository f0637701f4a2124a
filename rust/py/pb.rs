//! Twisted PB's broker layer on the wire: dialect negotiation, the `version` exchange, and the
//! command envelopes (`message`, `answer`, `decref`, ...) around jelly values.
//!
//! [`Reader`] turns received chunks into event tuples and [`Writer`] turns one outgoing command
//! into bytes. A connection's `PbSession` (`pb_session.rs`) owns one of each; `PbDecoder` and
//! `PbEncoder` are the same two as plain codecs, for tools and tests (a scripted peer).
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
//! | `EV_READY` | `(kind, dialect, bytes_to_send, peer_extensions)`: negotiation is over; `peer_extensions`, those both speak if the peer is pbfast, else None (a session queues the bytes itself: `(kind, dialect, peer_extensions)`) |
//! | `EV_UNKNOWN` | `(kind, command)`: a command PB does not have |
//! | `EV_DID_NOT_UNDERSTAND` | `(kind, command)`: the peer did not know one of ours |
//! | `EV_RAISED` | `(kind, request_id, answer_required, method, exception)`: (session) the method raised, or its result could not be sent |
//! | `EV_AWAITING` | `(kind, request_id, answer_required, method, awaitable, perspective)`: (session) the method returned an awaitable |
//! | `EV_RETURNED` | `(kind, request_id, answer_required, method, result, perspective)`: (session) a result to send for a perspective |
//! | `EV_FLUSH` | `(kind,)`: (session) write what waits before going on |
//!
//! A session runs calls and resolves plain answers as it reads them (`pb_session.rs`), so it
//! gives `EV_MESSAGE` only for calls the broker holds back; the codec gives every call.
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
use super::jelly::{FlatWriter, JellyDecoder, JellyEncoder};
use super::objects::StrCache;
use super::pb_session::{Fast, Outcome};
use super::{dialect, element_size_set, limits, raw_value, with_bytes, with_events};
use crate::banana::cursor::Cursor;
use crate::banana::{BananaError, Dialect, Encoder, ErrorKind, Limits};
use crate::jelly::scan::{references, Claim};
use crate::pb::{Command, Kind, ObjectId, Received, Release, Session};

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

/// The receiving side of a PB connection: the sans-IO [`Session`] reads the stream, this makes
/// Python values (and events) of what it reads.
pub struct Reader {
    session: Session,
    /// `hook(tag, items)` builds the values of non-builtin jelly tags (`remote`, copies, ...).
    hook: Option<Py<PyAny>>,
    strings: StrCache,
}

/// What a command's values are built with.
pub struct Values<'py, 'a> {
    pub hook: Option<&'a Bound<'py, PyAny>>,
    pub strings: &'a mut StrCache,
}

impl Reader {
    /// `server`: this side accepted the connection (it offers the dialects, the client picks);
    /// `extensions`, the pbfast extensions it speaks with a pbfast peer (None: it does not
    /// announce itself).
    pub fn new(server: bool, hook: Option<Py<PyAny>>, limits: Limits, extensions: Option<&[String]>) -> Reader {
        let extensions: Option<Vec<&str>> = extensions.map(|names| names.iter().map(String::as_str).collect());
        Reader { session: Session::new(server, limits, extensions.as_deref()), hook, strings: StrCache::new() }
    }

    /// Keep `max_element_size` as given when the peer speaks `large` (it was set explicitly).
    pub fn keep_element_size(mut self, keep: bool) -> Reader {
        self.session.keep_element_size(keep);
        self
    }

    /// The server's first bytes: the dialects it offers.
    pub fn offer(&self) -> Vec<u8> {
        self.session.offer()
    }

    /// The receive limits (raised once a peer that speaks `large` is known).
    pub fn limits(&self) -> Limits {
        self.session.limits()
    }

    /// The extensions both sides speak when the peer is pbfast (None: a stock peer, or
    /// negotiation is not over).
    pub fn peer_extensions(&self) -> Option<Vec<String>> {
        self.session.peer_extensions().map(<[String]>::to_vec)
    }

    /// Feed a chunk: `on_received` is called for what it completes, in order, with what to
    /// build its values with.
    pub fn feed<'py>(
        &mut self,
        py: Python<'py>,
        bytes: &[u8],
        mut on_received: impl FnMut(Received<'_>, &mut Values<'py, '_>) -> PyResult<()>,
    ) -> PyResult<()> {
        let hook = self.hook.as_ref().map(|h| h.bind(py).clone());
        let mut values = Values { hook: hook.as_ref(), strings: &mut self.strings };
        self.session.feed(bytes, |received| on_received(received, &mut values))
    }

    /// The negotiated dialect, once negotiation is over.
    pub fn dialect(&self) -> Option<Dialect> {
        self.session.dialect()
    }

    /// Bytes held for an incomplete expression.
    pub fn buffered(&self) -> usize {
        self.session.buffered()
    }

    pub fn traverse(&self, visit: &pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        if let Some(h) = &self.hook {
            visit.call(h)?;
        }
        Ok(())
    }
}

/// Incremental decoder for one direction of a PB connection, as a plain codec: every command
/// becomes an event (a connection's `PbSession` runs calls itself).
#[pyclass(module = "pbfast._core", name = "PbDecoder")]
pub struct PbDecoderPy(Reader);

#[pymethods]
impl PbDecoderPy {
    /// `server`: this side accepted the connection (it offers the dialects, the client picks).
    /// `hook(tag, items)` builds the values of non-builtin jelly tags (`remote`, copies, ...);
    /// `extensions`, the pbfast extensions this side speaks (None: stock Twisted's negotiation).
    #[new]
    #[pyo3(signature = (server, *, hook=None, extensions=None, **limits))]
    fn new(
        server: bool,
        hook: Option<Py<PyAny>>,
        extensions: Option<Vec<String>>,
        limits: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<PbDecoderPy> {
        let reader = Reader::new(server, hook, self::limits(limits)?, extensions.as_deref());
        Ok(PbDecoderPy(reader.keep_element_size(element_size_set(limits)?)))
    }

    /// The server's first bytes: the dialects it offers.
    fn offer<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.offer())
    }

    /// The extensions both sides speak when the peer is pbfast (None: a stock peer, or
    /// negotiation is not over).
    #[getter]
    fn peer_extensions(&self) -> Option<Vec<String>> {
        self.0.peer_extensions()
    }

    /// Feed a chunk; returns the events it completed (an empty list means "need more").
    /// Raises `BananaError`, `ProtocolError` or `NegotiationError` if the connection must end.
    /// The exception carries the events completed before the fault as `.events`: the commands
    /// a peer sent before breaking the stream still count, as they do in Twisted.
    fn feed<'py>(&mut self, py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
        let events = PyList::empty(py);
        let result = with_bytes(data, |bytes| {
            self.0.feed(py, bytes, |received, values| match received {
                Received::Ready { dialect, send, extensions } => {
                    events.append((EV_READY, dialect.name(), PyBytes::new(py, &send), extensions))
                }
                Received::Command(command) => {
                    let mut replies = Vec::new();
                    match Envelope::new(py, command, values, None, &mut replies).event()? {
                        Some(event) => events.append(event),
                        None => Ok(()),
                    }
                }
            })
        });
        with_events(py, events, result)
    }

    /// The negotiated dialect ("pb" or "none"), or None before negotiation ends.
    #[getter]
    fn dialect(&self) -> Option<&'static str> {
        self.0.dialect().map(Dialect::name)
    }

    /// Bytes held for an incomplete expression.
    #[getter]
    fn buffered(&self) -> usize {
        self.0.buffered()
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        self.0.traverse(&visit)
    }

    fn __clear__(&mut self) {
        self.0.hook = None;
    }
}

/// One received command, its values made into Python objects (and, with a session's fast path,
/// plain calls and answers handled on the spot).
pub struct Envelope<'py, 'a, 'f> {
    py: Python<'py>,
    command: Command<'a>,
    hook: Option<&'a Bound<'py, PyAny>>,
    strings: &'a mut StrCache,
    fast: Option<&'a mut Fast<'py, 'f>>,
    replies: &'a mut Vec<u8>,
}

impl<'py, 'a, 'f> Envelope<'py, 'a, 'f> {
    /// `command`, its values built with `values`; with `fast`, its calls run and plain answers
    /// resolve here, and the answers to the calls are encoded into `replies`.
    pub fn new(
        py: Python<'py>,
        command: Command<'a>,
        values: &'a mut Values<'py, '_>,
        fast: Option<&'a mut Fast<'py, 'f>>,
        replies: &'a mut Vec<u8>,
    ) -> Self {
        Envelope { py, command, hook: values.hook, strings: &mut *values.strings, fast, replies }
    }

    /// The command's event, or None when the fast path has handled it.
    pub fn event(&mut self) -> PyResult<Option<Bound<'py, PyAny>>> {
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
                        if let (EV_ANSWER, Some(fast)) = (kind, self.fast.as_deref_mut()) {
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

/// The sending side of a PB connection: one outgoing command at a time, appended to a buffer.
pub struct Writer {
    dialect: Dialect,
    /// `hook(obj)`: the jelly form of objects jelly does not know (references, copies, failures).
    hook: Option<Py<PyAny>>,
    /// With a peer that speaks `large`: our `max_message_size`, the longest message (and
    /// element) sent; None: Twisted's limit on one element, none on a message.
    max_message: Option<usize>,
}

impl Writer {
    pub fn new(dialect: Dialect, hook: Option<Py<PyAny>>) -> Writer {
        Writer { dialect, hook, max_message: None }
    }

    /// A writer for a peer that speaks `large`: elements and messages up to `max_message`
    /// bytes, longer ones refused before anything is sent.
    pub fn large(self, max_message: usize) -> Writer {
        Writer { max_message: Some(max_message), ..self }
    }

    pub fn clone_ref(&self, py: Python<'_>) -> Writer {
        Writer {
            dialect: self.dialect,
            hook: self.hook.as_ref().map(|h| h.clone_ref(py)),
            max_message: self.max_message,
        }
    }

    /// Give `raw` this writer's element limit.
    fn limit(&self, raw: &mut Encoder) {
        if let Some(limit) = self.max_message {
            raw.max_element = (limit, Some("max_message_size"));
        }
    }

    /// Refuse a message of `out[start..]` longer than the limit (taking it back out of `out`).
    fn check_size(&self, out: &mut Vec<u8>, start: usize) -> PyResult<()> {
        match self.max_message {
            Some(limit) if out.len() - start > limit => {
                let len = out.len() - start;
                out.truncate(start);
                Err(BananaError::local(ErrorKind::MessageTooLargeToSend { len, limit }).into())
            }
            _ => Ok(()),
        }
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// `["message" (or "cachemessage"), request_id, object_id, method, answer_required, args,
    /// kwargs]` appended to `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn message<'py>(
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
        let start = out.len();
        if FlatWriter::fits(args) && kwargs.is_none_or(|kw| kw.is_empty()) {
            let mut w = FlatWriter::new(self.dialect, out);
            self.limit(w.raw());
            let written = (|| {
                message_head(w.raw(), request_id, object_id, method, answer_required, cache)?;
                w.value(args)?;
                w.empty_dict()
            })();
            w.finish(written.is_ok(), out);
            return written.and_then(|()| self.check_size(out, start));
        }
        let mut enc = self.jelly_encoder(py);
        message_head(enc.raw(), request_id, object_id, method, answer_required, cache)?;
        enc.jelly(args.as_any())?;
        match kwargs {
            Some(kw) => enc.jelly(kw.as_any())?,
            None => enc.jelly(PyDict::new(py).as_any())?,
        }
        enc.finish(|bytes| out.extend_from_slice(bytes));
        self.check_size(out, start)
    }

    /// `[command, request_id, value]` appended to `out`: every reply's encoding (`answer` or
    /// `error`).
    pub fn reply<'py>(
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
        let start = out.len();
        if FlatWriter::fits(value) {
            let mut w = FlatWriter::new(self.dialect, out);
            self.limit(w.raw());
            let written = head(w.raw()).and_then(|()| w.value(value));
            w.finish(written.is_ok(), out);
            return written.and_then(|()| self.check_size(out, start));
        }
        let mut enc = self.jelly_encoder(py);
        head(enc.raw())?;
        enc.jelly(value)?;
        enc.finish(|bytes| out.extend_from_slice(bytes));
        self.check_size(out, start)
    }

    /// `[command, item]` with a raw banana item (an int luid, bytes): decref, decache, uncache,
    /// didNotUnderstand; `count` copies back to back, appended to `out`.
    pub fn command(&self, command: &[u8], item: &Bound<'_, PyAny>, count: usize, out: &mut Vec<u8>) -> PyResult<()> {
        let mut one = Encoder::new(self.dialect);
        one.list(2).map_err(PyErr::from)?;
        one.bytes(command).map_err(PyErr::from)?;
        super::raw_encode(&mut one, item)?;
        for _ in 0..count {
            out.extend_from_slice(&one.out);
        }
        Ok(())
    }

    fn jelly_encoder<'py>(&self, py: Python<'py>) -> JellyEncoder<'py> {
        let mut enc = JellyEncoder::new(py, self.dialect, self.hook.as_ref().map(|h| h.bind(py).clone()));
        self.limit(enc.raw());
        enc
    }

    pub fn traverse(&self, visit: &pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        if let Some(h) = &self.hook {
            visit.call(h)?;
        }
        Ok(())
    }
}

/// Encoder of outgoing PB commands as a plain codec: one call per message, bytes out.
#[pyclass(module = "pbfast._core", name = "PbEncoder", frozen)]
pub struct PbEncoderPy(Writer);

#[pymethods]
impl PbEncoderPy {
    #[new]
    #[pyo3(signature = (dialect="pb", *, hook=None))]
    fn new(dialect: &str, hook: Option<Py<PyAny>>) -> PyResult<PbEncoderPy> {
        Ok(PbEncoderPy(Writer::new(self::dialect(dialect, false)?, hook)))
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
        self.0.message(py, request_id, object_id, method, answer_required, args, kwargs, cache, &mut out)?;
        Ok(PyBytes::new(py, &out))
    }

    /// `["answer", request_id, value]`.
    fn answer<'py>(
        &self,
        py: Python<'py>,
        request_id: i64,
        value: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let mut out = Vec::new();
        self.0.reply(py, b"answer", request_id, value, &mut out)?;
        Ok(PyBytes::new(py, &out))
    }

    /// `["error", request_id, failure]`.
    fn error<'py>(
        &self,
        py: Python<'py>,
        request_id: i64,
        failure: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let mut out = Vec::new();
        self.0.reply(py, b"error", request_id, failure, &mut out)?;
        Ok(PyBytes::new(py, &out))
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
        let mut out = Vec::new();
        self.0.command(command, item, count, &mut out)?;
        Ok(PyBytes::new(py, &out))
    }

    #[getter]
    fn dialect(&self) -> &'static str {
        self.0.dialect.name()
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        self.0.traverse(&visit)
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
