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
//! | `EV_AWAITING` | `(kind, request_id, answer_required, method, awaitable)`: (fast path) the method returned an awaitable |
//! | `EV_FLUSH` | `(kind,)`: (fast path) write what the sender holds before going on |
//!
//! With the fast path attached (see `fast.rs`), plain calls and answers are handled during
//! `feed`: their answers go straight to the connection's `Sender`.
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
use super::jelly::{JellyDecoder, JellyEncoder};
use super::objects::StrCache;
use super::sender::SenderPy;
use super::tables::Tables;
use super::{dialect, limits, raw_value, with_bytes, with_events};
use crate::banana::cursor::{Cursor, Item};
use crate::banana::{BananaError, Dialect, Encoder, Framer, Limits};
use crate::jelly::scan::{references, Claim};

pyo3::import_exception!(pbfast.errors, ProtocolError);
pyo3::import_exception!(pbfast.errors, NegotiationError);

/// The root object's name, made once (its hash is then cached for the object-table lookups).
static ROOT: pyo3::sync::PyOnceLock<Py<PyBytes>> = pyo3::sync::PyOnceLock::new();

/// The PB protocol version Twisted has spoken since 2003.
pub const PB_VERSION: i64 = 6;

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

/// Negotiation expressions are a few bytes; anything longer is not a PB peer.
const HELLO_LIMIT: usize = 256;
/// The server's offer, in preference order.
const OFFER: [&[u8]; 2] = [b"pb", b"none"];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Client: waiting for the server's list of dialects.
    AwaitOffer,
    /// Server: waiting for the client's choice.
    AwaitChoice,
    Ready,
}

/// Incremental decoder for one direction of a PB connection.
#[pyclass(module = "pbfast._core", name = "PbDecoder")]
pub struct PbDecoderPy {
    stage: Stage,
    /// Reads the one negotiation expression, a byte at a time so the dialect can change right
    /// after it, mid-chunk.
    hello: Framer,
    framer: Framer,
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
        let limits = self::limits(limits)?;
        let hello_limits = Limits { max_message_size: HELLO_LIMIT, max_depth: 2, ..limits };
        Ok(PbDecoderPy {
            stage: if server { Stage::AwaitChoice } else { Stage::AwaitOffer },
            hello: Framer::new(Dialect::NoVocab, hello_limits),
            framer: Framer::new(Dialect::NoVocab, limits),
            hook,
            strings: StrCache::new(),
            fast: None,
        })
    }

    /// Handle plain calls and answers during `feed` (see `fast.rs`), with the connection's
    /// `tables`, the `encoder`, the `sender`, and `is_plain(type)`: whether objects of a type
    /// dispatch calls the default way (asked once per type).
    fn attach(&mut self, tables: Py<Tables>, encoder: Py<PbEncoderPy>, sender: Py<SenderPy>, is_plain: Py<PyAny>) {
        self.fast = Some(FastPath::new(tables, encoder, sender, is_plain));
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
    fn offer(py: Python<'_>) -> PyResult<Bound<'_, PyBytes>> {
        let mut enc = Encoder::new(Dialect::NoVocab);
        enc.list(OFFER.len()).map_err(PyErr::from)?;
        for word in OFFER {
            enc.bytes(word).map_err(PyErr::from)?;
        }
        Ok(PyBytes::new(py, &enc.out))
    }

    /// Feed a chunk; returns the events it completed (an empty list means "need more").
    /// Raises `BananaError`, `ProtocolError` or `NegotiationError` if the connection must end.
    /// The exception carries the events completed before the fault as `.events`: the commands
    /// a peer sent before breaking the stream still count, as they do in Twisted.
    fn feed<'py>(&mut self, py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
        let events = PyList::empty(py);
        let result = with_bytes(data, |mut bytes| {
            if self.stage != Stage::Ready {
                let used = self.negotiate(py, bytes, &events)?;
                bytes = &bytes[used..];
                if self.stage != Stage::Ready {
                    return Ok(());
                }
            }
            let (dialect, limits) = (self.framer.dialect(), self.framer.limits());
            let hook = self.hook.as_ref().map(|h| h.bind(py).clone());
            let strings = &mut self.strings;
            let mut fast = self.fast.as_mut().filter(|f| f.enabled);
            let mut replies = Vec::new();
            let fed = self.framer.feed(bytes, |expr: &[u8], offset| -> PyResult<()> {
                let mut reader = Envelope {
                    py,
                    expr,
                    offset,
                    dialect,
                    limits,
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
                if replies.len() >= REPLY_FLUSH {
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
        (self.stage == Stage::Ready).then(|| self.framer.dialect().name())
    }

    /// Bytes held for an incomplete expression.
    #[getter]
    fn buffered(&self) -> usize {
        self.hello.buffered() + self.framer.buffered()
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

impl PbDecoderPy {
    /// Read the negotiation expression from the front of `bytes`; returns how many bytes it used.
    fn negotiate<'py>(&mut self, py: Python<'py>, bytes: &[u8], events: &Bound<'py, PyList>) -> PyResult<usize> {
        for (i, byte) in bytes.iter().enumerate() {
            let mut hello = None;
            self.hello
                .feed(std::slice::from_ref(byte), |expr: &[u8], _| -> Result<(), BananaError> {
                    hello = Some(expr.to_vec());
                    Ok(())
                })
                .map_err(|e| match e.limit_name() {
                    Some("max_message_size" | "max_depth") => NegotiationError::new_err(format!(
                        "the peer's dialect negotiation is over {HELLO_LIMIT} bytes or nested: not a PB peer"
                    )),
                    _ => PyErr::from(e),
                })?;
            let Some(expr) = hello else { continue };
            let value = raw_value(py, &mut Cursor::new(&expr, Dialect::NoVocab, self.hello.limits()))?;
            let chosen = match self.stage {
                Stage::AwaitOffer => choose(&value)?,
                _ => accept(&value)?,
            };
            let mut enc = Encoder::new(Dialect::NoVocab);
            if self.stage == Stage::AwaitOffer {
                enc.bytes(chosen.name().as_bytes()).map_err(PyErr::from)?;
            }
            enc.dialect = chosen;
            enc.list(2).map_err(PyErr::from)?;
            enc.bytes(b"version").map_err(PyErr::from)?;
            enc.int(PB_VERSION);
            self.stage = Stage::Ready;
            self.framer.set_dialect(chosen);
            self.framer.start_at(self.hello.offset());
            let ready = (EV_READY, chosen.name(), PyBytes::new(py, &enc.out));
            events.append(ready)?;
            return Ok(i + 1);
        }
        Ok(bytes.len())
    }
}

/// The client's pick from the server's offer: the first dialect we speak.
fn choose(offer: &Bound<'_, PyAny>) -> PyResult<Dialect> {
    let words: Vec<Vec<u8>> = offer.extract().map_err(|_| {
        NegotiationError::new_err(format!("the server's dialect offer is not a list of names: {offer}"))
    })?;
    words.iter().find_map(|w| named_dialect(w)).ok_or_else(|| {
        NegotiationError::new_err(format!("the server offers dialects {offer}, none of which pbfast speaks (pb, none)"))
    })
}

/// The server's check of the client's choice.
fn accept(choice: &Bound<'_, PyAny>) -> PyResult<Dialect> {
    choice
        .cast::<PyBytes>()
        .ok()
        .and_then(|b| named_dialect(b.as_bytes()))
        .ok_or_else(|| NegotiationError::new_err(format!("the client chose dialect {choice}, which was not offered")))
}

fn named_dialect(name: &[u8]) -> Option<Dialect> {
    match name {
        b"pb" => Some(Dialect::Pb),
        b"none" => Some(Dialect::NoVocab),
        _ => None,
    }
}

/// One received top-level expression, read as a PB command.
struct Envelope<'py, 'a> {
    py: Python<'py>,
    expr: &'a [u8],
    offset: u64,
    dialect: Dialect,
    limits: Limits,
    hook: Option<&'a Bound<'py, PyAny>>,
    strings: &'a mut StrCache,
    fast: Option<&'a mut FastPath>,
    replies: &'a mut Vec<u8>,
}

impl<'py> Envelope<'py, '_> {
    fn event(&mut self) -> PyResult<Option<Bound<'py, PyAny>>> {
        let py = self.py;
        let mut cur = Cursor::new(self.expr, self.dialect, self.limits);
        let Some(Item::List(n)) = cur.next_item() else {
            return Err(self.broken("a PB command must be a list", 0));
        };
        let command = match cur.next_item() {
            Some(Item::Bytes(name)) => name,
            _ => return Err(self.broken("a PB command must start with its name as a byte string", 0)),
        };
        let arity = |want: usize| -> PyResult<()> {
            if n == want {
                Ok(())
            } else {
                let fields = |n: usize| if n == 1 { "1 field".to_string() } else { format!("{n} fields") };
                Err(self
                    .broken(&format!("{} takes {}, not {}", show(command), fields(want - 1), n.saturating_sub(1)), 0))
            }
        };
        let event = match command {
            b"message" | b"cachemessage" => {
                arity(7)?;
                let kind = if command == b"message" { EV_MESSAGE } else { EV_CACHEMESSAGE };
                return self.call(kind, &mut cur);
            }
            b"answer" | b"error" => {
                arity(3)?;
                let request_id = self.int(&mut cur, "request id")?;
                let kind = if command == b"answer" { EV_ANSWER } else { EV_ERROR };
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
            b"decref" | b"decache" | b"uncache" => {
                arity(2)?;
                let kind = match command {
                    b"decref" => EV_DECREF,
                    b"decache" => EV_DECACHE,
                    _ => EV_UNCACHE,
                };
                (kind, raw_value(py, &mut cur)?).into_pyobject(py)?.into_any()
            }
            b"version" => {
                arity(2)?;
                let at = cur.pos();
                match cur.next_item() {
                    Some(Item::Int(PB_VERSION)) => return Ok(None),
                    Some(Item::Int(v)) => {
                        return Err(NegotiationError::new_err(format!(
                            "Version Incompatibility: pbfast speaks PB protocol version {PB_VERSION}, the peer {v}"
                        )))
                    }
                    _ => return Err(self.broken("the version must be an integer", at)),
                }
            }
            b"didNotUnderstand" => {
                arity(2)?;
                (EV_DID_NOT_UNDERSTAND, raw_value(py, &mut cur)?).into_pyobject(py)?.into_any()
            }
            other => (EV_UNKNOWN, PyBytes::new(py, other)).into_pyobject(py)?.into_any(),
        };
        Ok(Some(event))
    }

    /// `[message|cachemessage, request_id, object_id, method, answer_required, args, kwargs]`.
    fn call(&mut self, kind: u8, cur: &mut Cursor<'_>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let py = self.py;
        let request_id = self.int(cur, "request id")?;
        let at = cur.pos();
        let object_id = match cur.next_item() {
            Some(Item::Int(luid)) => luid.into_pyobject(py)?.into_any(),
            Some(Item::Bytes(b"root")) => {
                ROOT.get_or_init(py, || PyBytes::new(py, b"root").unbind()).bind(py).clone().into_any()
            }
            Some(Item::Bytes(name)) => PyBytes::new(py, name).into_any(),
            _ => return Err(self.broken("an object id must be an integer or a byte string", at)),
        };
        let method = self.method(cur)?;
        let answer = self.int(cur, "answerRequired")? != 0;
        let arguments = self.jelly(cur).and_then(|args| {
            let at = cur.pos();
            let args = match args.cast_into::<PyTuple>() {
                Ok(t) => t,
                Err(e) => match e.into_inner().cast_into::<PyList>() {
                    Ok(list) => list.to_tuple(),
                    Err(e) => {
                        let what = e.into_inner().get_type().name()?;
                        let at = Some(self.offset + at as u64);
                        return Err(jelly_error(format!("call arguments must be a tuple or list, not {what}"), at));
                    }
                },
            };
            // Most calls have no keyword arguments: skip making an empty dict for them.
            if self.dialect.empty_dictionary() == &self.expr[cur.pos()..] {
                cur.skip_to(self.expr.len());
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

    /// A method name: bytes (UTF-8, as Twisted sends it) or a jellied `unicode`.
    fn method(&mut self, cur: &mut Cursor<'_>) -> PyResult<Bound<'py, PyString>> {
        let at = cur.pos();
        let name = match cur.unicode() {
            Some(name) => name,
            None => match cur.next_item() {
                Some(Item::Bytes(name)) => name,
                _ => return Err(self.broken("a method name must be a byte string", at)),
            },
        };
        self.strings.get(self.py, name).map_err(|_| self.broken("a method name must be UTF-8", at))
    }

    fn int(&self, cur: &mut Cursor<'_>, what: &str) -> PyResult<i64> {
        let at = cur.pos();
        match cur.next_item() {
            Some(Item::Int(v)) => Ok(v),
            _ => Err(self.broken(&format!("the {what} must be an integer"), at)),
        }
    }

    /// One jelly value at the cursor, in its own reference-id space. On failure the cursor is
    /// left where decoding stopped.
    fn jelly(&mut self, cur: &mut Cursor<'_>) -> PyResult<Bound<'py, PyAny>> {
        let start = cur.pos();
        let rest = &self.expr[start..];
        let base = self.offset + start as u64;
        let mut decoder = JellyDecoder::new(self.py, rest, self.dialect, self.limits, base, self.hook, self.strings);
        let value = decoder.build(false);
        cur.skip_to(start + decoder.consumed());
        value
    }

    /// `(command, luid)` for each reference from the cursor to the end of the command: after a
    /// refusal, the ones that never became proxies or copies (the broker gives them back).
    fn unclaimed(&self, cur: &Cursor<'_>) -> PyResult<Bound<'py, PyList>> {
        let found = references(self.expr, self.dialect, self.limits, cur.pos());
        PyList::new(
            self.py,
            found.into_iter().map(|claim| match claim {
                Claim::Remote(luid) => (&b"decref"[..], luid),
                Claim::Cache(luid) => (&b"decache"[..], luid),
            }),
        )
    }

    fn broken(&self, what: &str, at: usize) -> PyErr {
        ProtocolError::new_err(format!("{what} (at byte {})", self.offset + at as u64))
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

fn show(command: &[u8]) -> String {
    crate::jelly::decode::show(command)
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
        let mut enc = self.jelly_encoder(py);
        let raw = enc.raw();
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
        let mut enc = self.jelly_encoder(py);
        let raw = enc.raw();
        raw.list(3).map_err(PyErr::from)?;
        raw.bytes(command).map_err(PyErr::from)?;
        raw.int(request_id);
        enc.jelly(value)?;
        enc.finish(|bytes| out.extend_from_slice(bytes));
        Ok(())
    }
}
