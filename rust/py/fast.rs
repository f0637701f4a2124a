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

use pyo3::exceptions::{PyAttributeError, PyException};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple, PyType};

use super::pb::{PbEncoderPy, EV_AWAITING, EV_FLUSH, EV_RAISED};
use super::sender::SenderPy;
use super::PtrMap;

/// Reply bytes after which the rest of a chunk goes through the broker (flow control).
pub const REPLY_FLUSH: usize = 1 << 16;
/// Method names remembered per connection (a peer may send any number of distinct names).
const MAX_NAMES: usize = 256;

/// The broker's tables and encoder, shared with the decoder.
pub struct FastPath {
    /// Our objects by luid or name (the broker's dict).
    objects: Py<PyDict>,
    /// Our calls awaiting replies: request id -> (future, pins or None) (the broker's dict).
    pending: Py<PyDict>,
    encoder: Py<PbEncoderPy>,
    /// Where the answers go.
    sender: Py<SenderPy>,
    /// The broker's stack of luids given out while encoding; `undo(mark)` takes back what an
    /// encode that failed added above `mark`.
    sent: Py<PyList>,
    undo: Py<PyAny>,
    /// `is_plain(type) -> bool`: whether calls on objects of a type may run here (asked once
    /// per type).
    is_plain: Py<PyAny>,
    /// Type -> whether it dispatches with the default; the type is kept so its address is not
    /// reused while it is a key.
    types: PtrMap<(Py<PyType>, bool)>,
    /// Method name (the decoder's cached str, kept alive likewise) -> `"remote_<name>"`.
    names: PtrMap<(Py<PyString>, Py<PyString>)>,
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
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        objects: Py<PyDict>,
        pending: Py<PyDict>,
        encoder: Py<PbEncoderPy>,
        sender: Py<SenderPy>,
        sent: Py<PyList>,
        undo: Py<PyAny>,
        is_plain: Py<PyAny>,
    ) -> FastPath {
        FastPath {
            objects,
            pending,
            encoder,
            sender,
            sent,
            undo,
            is_plain,
            types: PtrMap::default(),
            names: PtrMap::default(),
            enabled: true,
        }
    }

    /// `["answer", request_id, value]`: resolve the call's future.
    pub fn answer<'py>(&self, py: Python<'py>, request_id: i64, value: &Bound<'py, PyAny>) -> PyResult<Outcome<'py>> {
        let pending = self.pending.bind(py);
        let Some(entry) = pending.get_item(request_id)? else { return Ok(Outcome::Declined) };
        let Ok(entry) = entry.cast_into::<PyTuple>() else { return Ok(Outcome::Declined) };
        if entry.len() != 2 || !entry.get_item(1)?.is_none() {
            return Ok(Outcome::Declined); // pinned objects to release: the broker's job
        }
        pending.del_item(request_id)?;
        let future = entry.get_item(0)?;
        if !future.call_method0(intern!(py, "done"))?.is_truthy()? {
            future.call_method1(intern!(py, "set_result"), (value,))?;
        }
        Ok(Outcome::Done)
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
        let Some(target) = self.objects.bind(py).get_item(object_id)? else { return Ok(Outcome::Declined) };
        if !self.plain(py, &target)? {
            return Ok(Outcome::Declined);
        }
        let attribute = self.attribute_name(py, method_name);
        let called = match kwargs {
            None => call_method(&target, &attribute, args),
            Some(kwargs) => match target.getattr(&attribute) {
                Ok(method) => method.call(args, Some(kwargs)),
                Err(_) => return Ok(Outcome::Declined),
            },
        };
        let result = match called {
            Ok(result) => result,
            // No such method: the broker reports it (the method never ran), through
            // `prefixed_method`, so the error is worded in one place.
            Err(e) if e.is_instance_of::<PyAttributeError>(py) && !target.hasattr(&attribute)? => {
                return Ok(Outcome::Declined)
            }
            // KeyboardInterrupt, SystemExit and the like are not the caller's business.
            Err(e) if !e.is_instance_of::<PyException>(py) => return Err(e),
            Err(e) => {
                let event = (EV_RAISED, request_id, answer, method_name, e.into_value(py));
                return Ok(Outcome::Event(event.into_pyobject(py)?.into_any()));
            }
        };
        if awaitable(&result) {
            let event = (EV_AWAITING, request_id, answer, method_name, result);
            return Ok(Outcome::Event(event.into_pyobject(py)?.into_any()));
        }
        if !answer {
            return Ok(Outcome::Done);
        }
        let sent = self.sent.bind(py);
        let mark = sent.len();
        match self.encoder.get().encode_reply(py, b"answer", request_id, &result, replies) {
            Ok(()) => {
                if sent.len() > mark {
                    sent.del_slice(mark, sent.len())?;
                }
                Ok(Outcome::Done)
            }
            Err(e) => {
                self.undo.bind(py).call1((mark,))?;
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

    /// Whether calls on `target` may run here (the broker's `is_plain`, cached per type).
    fn plain(&mut self, py: Python<'_>, target: &Bound<'_, PyAny>) -> PyResult<bool> {
        let cls = target.get_type();
        let key = cls.as_ptr() as usize;
        if let Some((_, plain)) = self.types.get(&key) {
            return Ok(*plain);
        }
        let plain = self.is_plain.bind(py).call1((&cls,))?.is_truthy()?;
        // The type is kept alive, so its address cannot be reused by another type.
        self.types.insert(key, (cls.unbind(), plain));
        Ok(plain)
    }

    /// `"remote_" + name`, made once per distinct name. This is `prefixed_method`'s lookup
    /// without a Python frame per call; a miss is declined, so only the broker reports it.
    fn attribute_name<'py>(&mut self, py: Python<'py>, name: &Bound<'py, PyString>) -> Bound<'py, PyString> {
        let key = name.as_ptr() as usize;
        if let Some((_, attribute)) = self.names.get(&key) {
            return attribute.bind(py).clone();
        }
        let attribute = PyString::new(py, &format!("remote_{}", name.to_string_lossy()));
        if self.names.len() < MAX_NAMES {
            self.names.insert(key, (name.clone().unbind(), attribute.clone().unbind()));
        }
        attribute
    }

    pub fn traverse(&self, visit: &pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.objects)?;
        visit.call(&self.pending)?;
        visit.call(&self.encoder)?;
        visit.call(&self.sender)?;
        visit.call(&self.sent)?;
        visit.call(&self.undo)?;
        visit.call(&self.is_plain)?;
        Ok(())
    }
}

/// `target.<name>(*args)` without making a bound method (CPython finds the function on the
/// type and calls it with `target` first, unless the instance shadows it).
fn call_method<'py>(
    target: &Bound<'py, PyAny>,
    name: &Bound<'py, PyString>,
    args: &Bound<'py, PyTuple>,
) -> PyResult<Bound<'py, PyAny>> {
    const INLINE: usize = 8;
    let n = args.len();
    let mut inline = [std::ptr::null_mut::<ffi::PyObject>(); INLINE + 1];
    let mut heap = Vec::new();
    let argv: &mut [*mut ffi::PyObject] = if n < INLINE {
        &mut inline[..=n]
    } else {
        heap.resize(n + 1, std::ptr::null_mut());
        &mut heap
    };
    argv[0] = target.as_ptr();
    for (slot, item) in argv[1..].iter_mut().zip(args.iter_borrowed()) {
        *slot = item.as_ptr();
    }
    // SAFETY: every pointer in `argv` is borrowed from `target` or the `args` tuple, both alive
    // for the call; CPython may use slot 0 as scratch only with PY_VECTORCALL_ARGUMENTS_OFFSET,
    // which it clears when it passes `target` on as the first argument.
    unsafe {
        let result = ffi::PyObject_VectorcallMethod(
            name.as_ptr(),
            argv.as_ptr(),
            (n + 1) | ffi::PY_VECTORCALL_ARGUMENTS_OFFSET,
            std::ptr::null_mut(),
        );
        Bound::from_owned_ptr_or_err(target.py(), result)
    }
}

/// Whether `obj` can be awaited (its type fills the `am_await` slot: coroutines, futures,
/// tasks and any class with `__await__`).
fn awaitable(obj: &Bound<'_, PyAny>) -> bool {
    // SAFETY: `obj` is a live object; its type object outlives this read of two slots.
    unsafe {
        let ty = ffi::Py_TYPE(obj.as_ptr());
        let methods = (*ty).tp_as_async;
        !methods.is_null() && (*methods).am_await.is_some()
    }
}
