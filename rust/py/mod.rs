//! Thin PyO3 adapters over the sans-IO core: functions and classes of `pbfast._core`.
//! Each call crosses the boundary once per chunk or value, never per token.

pub mod dispatch;
pub mod errors;
pub mod foolscap;
pub mod fs_session;
pub mod jelly;
pub mod liveness;
pub mod metrics;
pub mod negotiate;
pub mod objects;
pub mod pb;
pub mod pb_session;
pub mod schemas;
pub mod session;
pub mod tables;
pub mod tls;
pub mod tubid;

use std::cell::Cell;

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyFloat, PyInt, PyList, PyTuple};

use crate::banana::cursor::{Cursor, Item};
use crate::banana::decode::Token;
use crate::banana::{framer, tb, Dialect, Encoder, Framer, Integer, Limits, Tokenizer};
pub use crate::ids::PtrMap;
use errors::PyBananaError;
use jelly::{JellyDecoder, JellyEncoder};
use objects::StrCache;

fn dialect(name: &str, allow_foolscap: bool) -> PyResult<Dialect> {
    match Dialect::from_name(name) {
        Some(Dialect::Foolscap) if !allow_foolscap => {
            Err(PyValueError::new_err("this operation takes the Twisted dialects 'pb' or 'none'"))
        }
        Some(d) => Ok(d),
        None => Err(PyValueError::new_err(format!("unknown banana dialect {name:?} (use 'pb', 'none' or 'foolscap')"))),
    }
}

/// Decoder limits from `**limits` keyword arguments; missing ones keep Twisted's defaults.
fn limits(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Limits> {
    let mut limits = Limits::twisted();
    for (name, value) in limit_args(kwargs)? {
        set_limit(&mut limits, &name, value)?;
    }
    Ok(limits)
}

/// Whether the `**limits` keyword arguments set `max_element_size` (which a peer that speaks
/// `large` then does not raise).
fn element_size_set(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<bool> {
    Ok(match kwargs {
        Some(kwargs) => kwargs.contains("max_element_size")?,
        None => false,
    })
}

/// The `**limits` keyword arguments as (name, value) pairs; only `max_element_size` may be 0.
pub(crate) fn limit_args(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Vec<(String, usize)>> {
    let mut out = Vec::new();
    for (key, value) in kwargs.into_iter().flatten() {
        let name: String = key.extract()?;
        let value: usize = value.extract()?;
        if value == 0 && name != "max_element_size" {
            return Err(PyValueError::new_err(format!("{name} must be positive")));
        }
        out.push((name, value));
    }
    Ok(out)
}

/// Set one of the banana limits by name.
pub(crate) fn set_limit(limits: &mut Limits, name: &str, value: usize) -> PyResult<()> {
    let field = match name {
        "max_element_size" => &mut limits.max_element_size,
        "max_message_size" => &mut limits.max_message_size,
        "max_depth" => &mut limits.max_depth,
        "max_header_length" => &mut limits.max_header_length,
        _ => return Err(PyTypeError::new_err(format!("unknown decoder limit {name:?}"))),
    };
    *field = value;
    Ok(())
}

/// Run `f` on the bytes of a `bytes`, `bytearray` or `memoryview` (copying only the latter two:
/// Python code `f` runs could change them).
fn with_bytes<R>(data: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> PyResult<R>) -> PyResult<R> {
    if let Ok(b) = data.cast::<PyBytes>() {
        return f(b.as_bytes());
    }
    let Ok(buffer) = PyBuffer::<u8>::get(data) else {
        let name = data.get_type().name()?;
        return Err(PyTypeError::new_err(format!("expected a bytes-like object, not {name}")));
    };
    f(&buffer.to_vec(data.py())?)
}

/// [`with_bytes`] for what a connection received: a view of its read buffer is read in place
/// (only the transport writes there, between reads, never while a session reads it).
fn with_received<R>(data: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> PyResult<R>) -> PyResult<R> {
    if data.cast::<PyBytes>().is_ok() {
        return with_bytes(data, f);
    }
    let Ok(buffer) = PyBuffer::<u8>::get(data) else { return with_bytes(data, f) };
    if !buffer.is_c_contiguous() {
        return with_bytes(data, f);
    }
    // SAFETY: the buffer is held (its memory stays put) while `f` runs; it is contiguous, of
    // `len_bytes` bytes, and nothing writes to a connection's read buffer meanwhile.
    let bytes = unsafe { std::slice::from_raw_parts(buffer.buf_ptr() as *const u8, buffer.len_bytes()) };
    f(bytes)
}

/// [`with_received`] for a reader that works in place (a TLS session decrypting records): a
/// writable view of the connection's read buffer is given as it is (it is scratch space, read
/// once); anything else is copied first.
fn with_received_mut<R>(data: &Bound<'_, PyAny>, f: impl FnOnce(&mut [u8]) -> PyResult<R>) -> PyResult<R> {
    if data.cast::<PyBytes>().is_err() {
        if let Ok(buffer) = PyBuffer::<u8>::get(data) {
            if buffer.is_c_contiguous() && !buffer.readonly() {
                // SAFETY: as in `with_received`; the buffer is writable, and no other reference
                // to its bytes is made while `f` runs.
                let bytes = unsafe { std::slice::from_raw_parts_mut(buffer.buf_ptr() as *mut u8, buffer.len_bytes()) };
                return f(bytes);
            }
        }
    }
    with_bytes(data, |bytes| f(&mut bytes.to_vec()))
}

/// The banana error in `bytes`, if there is one (only asked once decoding has failed).
fn banana_fault(bytes: &[u8], dialect: Dialect, limits: Limits) -> Option<PyErr> {
    framer::exactly_one(bytes, dialect, limits).err().map(PyErr::from)
}

/// A raw banana value from an expression the framer validated. The lists being filled are kept
/// on a heap stack, so no nesting depth can exhaust the native one.
fn raw_value<'py>(py: Python<'py>, cursor: &mut Cursor<'_>) -> PyResult<Bound<'py, PyAny>> {
    // Each list being filled, with how many of its items are still to come.
    let mut open: Vec<(Bound<'py, PyList>, usize)> = Vec::new();
    loop {
        let at = cursor.pos();
        let Some(item) = cursor.next_item() else {
            return Err(PyValueError::new_err(format!("internal error: unvalidated expression at byte {at}")));
        };
        let mut value = match item {
            Item::List(n) if n > 0 => {
                open.push((PyList::empty(py), n));
                continue;
            }
            Item::List(_) => PyList::empty(py).into_any(),
            Item::Bytes(s) => PyBytes::new(py, s).into_any(),
            Item::Float(f) => PyFloat::new(py, f).into_any(),
            int => integer(py, int.integer().expect("an integer item"))?,
        };
        // Append the finished value, and each list it completes, to the list that holds it.
        loop {
            let Some((list, remaining)) = open.last_mut() else { return Ok(value) };
            list.append(value)?;
            *remaining -= 1;
            if *remaining > 0 {
                break;
            }
            let Some((full, _)) = open.pop() else { unreachable!("the list appended to above") };
            value = full.into_any();
        }
    }
}

/// What a decoder's `feed` returns: the events, or the error that broke the stream carrying the
/// events completed before it as `.events` (what a peer sent before breaking it still counts).
fn with_events<'py>(py: Python<'py>, events: Bound<'py, PyList>, result: PyResult<()>) -> PyResult<Bound<'py, PyList>> {
    match result {
        Ok(()) => Ok(events),
        Err(e) => {
            e.value(py).setattr("events", events)?;
            Err(e)
        }
    }
}

/// An int's value (`obj` is an int or a subclass): `Small` without allocating or raising when
/// it fits an `i64`, which it almost always does.
#[inline]
pub(crate) fn int_value(obj: &Bound<'_, PyAny>) -> PyResult<Integer> {
    let mut overflow = 0;
    // SAFETY: obj is an int; PyLong_AsLongLongAndOverflow reports overflow without raising, and
    // cannot fail otherwise for an int.
    let v = unsafe { pyo3::ffi::PyLong_AsLongLongAndOverflow(obj.as_ptr(), &mut overflow) };
    Ok(if overflow == 0 { Integer::Small(v) } else { Integer::Big(obj.extract()?) })
}

pub(crate) fn integer(py: Python<'_>, value: Integer) -> PyResult<Bound<'_, PyAny>> {
    Ok(match value {
        Integer::Small(v) => v.into_pyobject(py)?.into_any(),
        Integer::Big(v) => v.into_pyobject(py)?.into_any(),
    })
}

/// Encode a raw banana value: lists/tuples, ints, floats and bytes (and their subclasses). Lists
/// nested deeper than a decoder accepts by default are refused; the lists and tuples being
/// written are kept on a heap stack, not the native one.
fn raw_encode(enc: &mut Encoder, value: &Bound<'_, PyAny>) -> PyResult<()> {
    let max_depth = Limits::twisted().max_depth;
    // Each list or tuple being written, with its length and the index of its next item.
    let mut open: Vec<(Bound<'_, PyAny>, usize, usize)> = Vec::new();
    let mut value = value.clone();
    loop {
        let len = if let Ok(b) = value.cast::<PyBytes>() {
            enc.bytes(b.as_bytes()).map_err(PyBananaError::from)?;
            0
        } else if let Ok(list) = value.cast::<PyList>() {
            enc.list(list.len()).map_err(PyBananaError::from)?;
            list.len()
        } else if let Ok(tuple) = value.cast::<PyTuple>() {
            enc.list(tuple.len()).map_err(PyBananaError::from)?;
            tuple.len()
        } else if value.is_instance_of::<PyInt>() {
            enc.big_int(&value.extract()?).map_err(PyBananaError::from)?;
            0
        } else if let Ok(f) = value.cast::<PyFloat>() {
            enc.float(f.value());
            0
        } else {
            let name = objects::qualified_name(&value.get_type())?;
            let msg = format!("banana cannot send {name} objects (only lists, tuples, ints, floats and bytes)");
            let kind = crate::banana::ErrorKind::Unsendable(msg);
            return Err(PyBananaError(crate::banana::BananaError::local(kind)).into());
        };
        if len > 0 {
            if open.len() >= max_depth {
                let msg = format!("banana value nested deeper than max_depth={max_depth}; it cannot be sent");
                return Err(PyValueError::new_err(msg));
            }
            open.push((value, len, 0));
        }
        // The next item of the innermost list or tuple that has one left.
        value = loop {
            let Some((seq, len, next)) = open.last_mut() else { return Ok(()) };
            if *next == *len {
                open.pop();
                continue;
            }
            let item = match seq.cast::<PyList>() {
                Ok(list) => list.get_item(*next)?,
                Err(_) => seq.cast::<PyTuple>()?.get_item(*next)?,
            };
            *next += 1;
            break item;
        };
    }
}

/// dumps(obj, /, *, dialect="pb", hook=None) -> bytes
///
/// Jelly `obj` and encode it as banana, in one pass.
#[pyfunction]
#[pyo3(signature = (obj, /, *, dialect="pb", hook=None))]
pub fn dumps<'py>(
    py: Python<'py>,
    obj: &Bound<'py, PyAny>,
    dialect: &str,
    hook: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let mut enc = JellyEncoder::new(py, self::dialect(dialect, false)?, hook);
    enc.jelly(obj)?;
    Ok(enc.finish(|bytes| PyBytes::new(py, bytes)))
}

/// loads(data, /, *, dialect="pb", hook=None, **limits) -> object
///
/// Decode exactly one banana expression and unjelly it.
#[pyfunction]
#[pyo3(signature = (data, /, *, dialect="pb", hook=None, **limits))]
pub fn loads<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
    dialect: &str,
    hook: Option<Bound<'py, PyAny>>,
    limits: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let dialect = self::dialect(dialect, false)?;
    let limits = self::limits(limits)?;
    with_bytes(data, |bytes| {
        if bytes.len() > limits.max_message_size {
            let kind = crate::banana::ErrorKind::MessageTooLarge { limit: limits.max_message_size };
            return Err(crate::banana::BananaError::at(0, kind).into());
        }
        // One pass that builds and checks; the framer's validator only names a banana fault.
        // The cache is this thread's, kept between calls as a decoder keeps its own (a nested
        // call, from a hook, finds none and starts afresh).
        let mut strings = LOADS_CACHE.with(Cell::take).unwrap_or_default();
        let mut decoder = JellyDecoder::new(py, bytes, dialect, limits, 0, hook.as_ref(), &mut strings);
        // A banana fault anywhere outranks a jelly error met before it, as when a framer
        // validates a stream first.
        let value = decoder.build(true).map_err(|e| banana_fault(bytes, dialect, limits).unwrap_or(e));
        LOADS_CACHE.with(|cache| cache.set(Some(strings)));
        value
    })
}

thread_local! {
    static LOADS_CACHE: Cell<Option<StrCache>> = const { Cell::new(None) };
}

/// banana_encode(value, /, dialect="pb") -> bytes
#[pyfunction]
#[pyo3(signature = (value, /, dialect="pb"))]
pub fn banana_encode<'py>(py: Python<'py>, value: &Bound<'py, PyAny>, dialect: &str) -> PyResult<Bound<'py, PyBytes>> {
    let mut enc = Encoder::new(self::dialect(dialect, false)?);
    raw_encode(&mut enc, value)?;
    Ok(PyBytes::new(py, &enc.out))
}

/// banana_decode(data, /, dialect="pb", **limits) -> value
#[pyfunction]
#[pyo3(signature = (data, /, dialect="pb", **limits))]
pub fn banana_decode<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
    dialect: &str,
    limits: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let dialect = self::dialect(dialect, false)?;
    let limits = self::limits(limits)?;
    with_bytes(data, |bytes| {
        framer::exactly_one(bytes, dialect, limits)?;
        raw_value(py, &mut Cursor::new(bytes, dialect, limits))
    })
}

/// Incremental decoder of a Twisted banana stream: raw values, or unjellied ones with `jelly=True`.
#[pyclass(module = "pbfast._core", name = "Decoder")]
pub struct DecoderPy {
    framer: Framer,
    jelly: bool,
    hook: Option<Py<PyAny>>,
    strings: StrCache,
}

#[pymethods]
impl DecoderPy {
    #[new]
    #[pyo3(signature = (dialect="pb", *, jelly=false, hook=None, **limits))]
    fn new(
        dialect: &str,
        jelly: bool,
        hook: Option<Py<PyAny>>,
        limits: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<DecoderPy> {
        let limits = self::limits(limits)?;
        let framer = Framer::new(self::dialect(dialect, false)?, limits);
        Ok(DecoderPy { framer, jelly, hook, strings: StrCache::new() })
    }

    /// Feed a chunk; returns every value completed by it (an empty list means "need more").
    fn feed<'py>(&mut self, py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        let (dialect, limits, jelly) = (self.framer.dialect(), self.framer.limits(), self.jelly);
        let hook = self.hook.as_ref().map(|h| h.bind(py).clone());
        let strings = &mut self.strings;
        with_bytes(data, |bytes| {
            self.framer.feed(bytes, |expr: &[u8], offset| -> PyResult<()> {
                let value = if jelly {
                    JellyDecoder::new(py, expr, dialect, limits, offset, hook.as_ref(), strings).build(true)?
                } else {
                    raw_value(py, &mut Cursor::new(expr, dialect, limits))?
                };
                out.append(value)
            })
        })?;
        Ok(out)
    }

    /// Bytes held for an incomplete expression.
    #[getter]
    fn buffered(&self) -> usize {
        self.framer.buffered()
    }

    /// Stream offset of the next byte to be fed.
    #[getter]
    fn offset(&self) -> u64 {
        self.framer.offset()
    }

    /// The dialect; Twisted switches from 'none' to the negotiated one between expressions.
    #[getter]
    fn get_dialect(&self) -> &'static str {
        self.framer.dialect().name()
    }

    #[setter]
    fn set_dialect(&mut self, name: &str) -> PyResult<()> {
        self.framer.set_dialect(dialect(name, false)?);
        Ok(())
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        if let Some(h) = &self.hook {
            visit.call(h)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.hook = None;
    }
}

/// One token as `(offset, kind, value)`; VOCAB's value is `(index, word)`.
fn token_tuple<'py>(py: Python<'py>, token: Token<'_>, offset: u64) -> PyResult<Bound<'py, PyTuple>> {
    let (kind, value): (&str, Bound<'py, PyAny>) = match token {
        Token::List(n) => ("LIST", n.into_pyobject(py)?.into_any()),
        Token::Int { type_byte, value } => (tb::name(type_byte), integer(py, value)?),
        Token::String(s) => ("STRING", PyBytes::new(py, s).into_any()),
        Token::Float(f) => ("FLOAT", PyFloat::new(py, f).into_any()),
        Token::Vocab { index, word } => ("VOCAB", (index, PyBytes::new(py, word)).into_pyobject(py)?.into_any()),
        Token::Open(n) => ("OPEN", n.into_pyobject(py)?.into_any()),
        Token::Close(n) => ("CLOSE", n.into_pyobject(py)?.into_any()),
        Token::Abort(n) => ("ABORT", n.into_pyobject(py)?.into_any()),
        Token::Error(s) => ("ERROR", PyBytes::new(py, s).into_any()),
        Token::Ping(n) => ("PING", n.into_pyobject(py)?.into_any()),
        Token::Pong(n) => ("PONG", n.into_pyobject(py)?.into_any()),
    };
    PyTuple::new(py, [offset.into_pyobject(py)?.into_any(), pyo3::types::PyString::new(py, kind).into_any(), value])
}

/// Incremental token stream of either dialect.
#[pyclass(module = "pbfast._core", name = "Tokenizer")]
pub struct TokenizerPy {
    inner: Tokenizer,
}

#[pymethods]
impl TokenizerPy {
    #[new]
    #[pyo3(signature = (dialect="pb", **limits))]
    fn new(dialect: &str, limits: Option<&Bound<'_, PyDict>>) -> PyResult<TokenizerPy> {
        // Tokens are not gathered into expressions, so there is no expression size to bound.
        let limits = Limits { max_message_size: usize::MAX, ..self::limits(limits)? };
        Ok(TokenizerPy { inner: Tokenizer::new(self::dialect(dialect, true)?, limits) })
    }

    /// Feed a chunk; returns `(offset, kind, value)` for each complete token.
    fn feed<'py>(&mut self, py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        with_bytes(data, |bytes| {
            self.inner
                .feed(bytes, |token: Token<'_>, offset| -> PyResult<()> { out.append(token_tuple(py, token, offset)?) })
        })?;
        Ok(out)
    }

    #[getter]
    fn buffered(&self) -> usize {
        self.inner.buffered()
    }

    /// foolscap sequences open at this point, innermost last.
    #[getter]
    fn open_sequences(&self) -> Vec<u64> {
        self.inner.open_sequences().to_vec()
    }
}

/// encode_tokens(tokens, /, dialect="pb") -> bytes, from `(kind, value)` pairs.
#[pyfunction]
#[pyo3(signature = (tokens, /, dialect="pb"))]
pub fn encode_tokens<'py>(py: Python<'py>, tokens: &Bound<'py, PyAny>, dialect: &str) -> PyResult<Bound<'py, PyBytes>> {
    let mut enc = Encoder::new(self::dialect(dialect, true)?);
    for item in tokens.try_iter()? {
        let (kind, value): (String, Bound<'py, PyAny>) = item?.extract()?;
        match kind.as_str() {
            "LIST" => enc.list(value.extract()?).map_err(PyBananaError::from)?,
            "INT" | "NEG" | "LONGINT" | "LONGNEG" => enc.big_int(&value.extract()?).map_err(PyBananaError::from)?,
            "STRING" => enc.bytes(value.cast::<PyBytes>()?.as_bytes()).map_err(PyBananaError::from)?,
            "FLOAT" => enc.float(value.extract()?),
            "VOCAB" => enc.numbered(tb::VOCAB, value.extract()?),
            "OPEN" => enc.numbered(tb::OPEN, value.extract()?),
            "CLOSE" => enc.numbered(tb::CLOSE, value.extract()?),
            "ABORT" => enc.numbered(tb::ABORT, value.extract()?),
            "PING" => enc.numbered(tb::PING, value.extract()?),
            "PONG" => enc.numbered(tb::PONG, value.extract()?),
            "ERROR" => enc.error(value.cast::<PyBytes>()?.as_bytes()),
            other => return Err(PyValueError::new_err(format!("unknown token kind {other:?}"))),
        }
    }
    Ok(PyBytes::new(py, &enc.out))
}
