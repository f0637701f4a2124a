//! `pbfast._core.Tables`: one connection's tables, owned in Rust and shared by its decoder (the
//! fast path), its sender and the broker, on both wires.
//!
//! - **objects**: ours that the peer may name, by luid (an integer, negative for a Tub's
//!   callables) or by name (`b"root"`);
//! - **refs**: how many references to each the peer holds ([`RefTable`]);
//! - **sent**: the luids given out by the encoding under way, as a stack: an encode notes the
//!   height ([`Tables::mark`]) and, when it is done, takes its luids off ([`Tables::commit`])
//!   or, when it fails, takes their counts back ([`Tables::undo`]) — the peer never saw them;
//! - **pending**: our calls awaiting replies: request id -> (future, luids its arguments pinned);
//! - **checks_calls**: whether an object filed here has its calls checked against an interface
//!   (a Tub's decoder then asks each call's string limit as it arrives).
//!
//! Frozen with one small lock that is never held while Python code runs (a remote method or an
//! encoder hook may use the tables while a `feed` is under way). Objects removed under the lock
//! are dropped after it is released, since dropping one may run Python code.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use pyo3::exceptions::asyncio::InvalidStateError;
use pyo3::exceptions::PyTypeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyInt, PyList};

use crate::ids::OwnKeyMap;
use crate::refs::{RefError, RefTable};

pyo3::import_exception!(pbfast.errors, LimitExceeded);
pyo3::import_exception!(pbfast.errors, ProtocolError);

impl From<RefError> for PyErr {
    fn from(e: RefError) -> PyErr {
        match e {
            // Raised while sending: the call that tried fails, as in Twisted.
            RefError::Full { .. } => LimitExceeded::new_err((e.to_string(), "max_refs")),
            // Only the peer names luids: it broke the protocol.
            RefError::Unknown { .. } => ProtocolError::new_err(e.to_string()),
        }
    }
}

/// The name or number an object is filed under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Int(i64),
    Name(Box<[u8]>),
}

impl Key {
    /// The key for `obj`, or None for a value no object can be filed under (a peer may name
    /// anything: such names find nothing).
    fn of(obj: &Bound<'_, PyAny>) -> Option<Key> {
        if let Ok(int) = obj.cast::<PyInt>() {
            int.extract().ok().map(Key::Int)
        } else if let Ok(bytes) = obj.cast::<PyBytes>() {
            Some(Key::Name(bytes.as_bytes().into()))
        } else {
            None
        }
    }
}

/// One of our calls awaiting its reply.
struct Pending {
    future: Py<PyAny>,
    /// Luids the call's arguments carried, kept until the reply has been read (see [`RefTable`]).
    pins: Option<Vec<u64>>,
}

struct Inner {
    objects: OwnKeyMap<Key, Py<PyAny>>,
    refs: RefTable,
    sent: Vec<u64>,
    pending: OwnKeyMap<i64, Pending>,
    /// `forget(luid, uncache)`: the peer holds our object `luid` no more, freed by a settled
    /// call's pins (`uncache` true) or by an encode that failed (false: the peer never saw it).
    /// The broker drops the object and what it keeps for it. Dropped by `clear`: it is the
    /// broker's method, and the broker holds these tables.
    forget: Option<Py<PyAny>>,
}

#[pyclass(module = "pbfast._core", name = "Tables", frozen)]
pub struct Tables {
    inner: Mutex<Inner>,
    /// Read for every chunk a Tub receives, so outside the lock.
    checks_calls: AtomicBool,
}

#[pymethods]
impl Tables {
    /// Tables whose peer may hold at most `max_refs` of our objects at once.
    #[new]
    #[pyo3(signature = (max_refs, forget))]
    fn new(max_refs: usize, forget: Py<PyAny>) -> Tables {
        let inner = Inner {
            objects: OwnKeyMap::default(),
            refs: RefTable::new(max_refs),
            sent: Vec::new(),
            pending: OwnKeyMap::default(),
            forget: Some(forget),
        };
        Tables { inner: Mutex::new(inner), checks_calls: AtomicBool::new(false) }
    }

    // ------------------------------------------------------------------ objects

    /// File `obj` under `key` (an int or bytes).
    fn put(&self, key: &Bound<'_, PyAny>, obj: Py<PyAny>) -> PyResult<()> {
        let key = Key::of(key).ok_or_else(|| PyTypeError::new_err("an object is filed under an int or bytes"))?;
        let old = self.lock().objects.insert(key, obj);
        drop(old);
        Ok(())
    }

    /// The object filed under `key`, or None.
    fn get<'py>(&self, py: Python<'py>, key: &Bound<'py, PyAny>) -> Option<Bound<'py, PyAny>> {
        self.object(py, key)
    }

    /// Take the object filed under `key` out of the table (None if there is none).
    fn pop<'py>(&self, py: Python<'py>, key: &Bound<'py, PyAny>) -> Option<Bound<'py, PyAny>> {
        let key = Key::of(key)?;
        let obj = self.lock().objects.remove(&key);
        obj.map(|o| o.into_bound(py))
    }

    /// How many objects are filed.
    #[getter]
    fn objects(&self) -> usize {
        self.lock().objects.len()
    }

    /// Whether an object filed here has its calls checked against an interface (the broker
    /// sets it when it files one; it stays set). Until then a Tub's decoder reads calls without
    /// asking for their limits.
    #[getter]
    pub(crate) fn get_checks_calls(&self) -> bool {
        self.checks_calls.load(Ordering::Relaxed)
    }

    #[setter]
    fn set_checks_calls(&self, on: bool) {
        self.checks_calls.store(on, Ordering::Relaxed);
    }

    // ------------------------------------------------------------------ references

    /// Count one more sending of our object `obj` by the encode under way: `(luid, is_new)`.
    /// Raises `pbfast.LimitExceeded` (`max_refs`) when the peer would hold too many.
    fn send(&self, obj: &Bound<'_, PyAny>) -> PyResult<(u64, bool)> {
        let mut inner = self.lock();
        let (luid, new) = inner.refs.send(obj.as_ptr() as u64)?;
        inner.sent.push(luid);
        Ok((luid, new))
    }

    /// `send` for an object the peer may call, filed under its luid when new; its luid.
    fn export(&self, obj: &Bound<'_, PyAny>) -> PyResult<u64> {
        let mut inner = self.lock();
        let (luid, new) = inner.refs.send(obj.as_ptr() as u64)?;
        inner.sent.push(luid);
        if new {
            inner.objects.insert(Key::Int(luid as i64), obj.clone().unbind());
        }
        Ok(luid)
    }

    /// The height of the `sent` stack, before an encode.
    pub(crate) fn mark(&self) -> usize {
        self.lock().sent.len()
    }

    /// The encode that started at `mark` succeeded: its luids are the peer's now.
    pub(crate) fn commit(&self, mark: usize) {
        self.lock().sent.truncate(mark);
    }

    /// The encode that started at `mark` failed: take back the counts it added; the broker's
    /// `forget(luid, False)` drops each object this frees.
    pub(crate) fn undo(&self, py: Python<'_>, mark: usize) -> PyResult<()> {
        let freed: Vec<u64> = {
            let mut inner = self.lock();
            let from = mark.min(inner.sent.len());
            let luids: Vec<u64> = inner.sent.drain(from..).collect();
            luids.into_iter().filter(|&luid| inner.refs.decref(luid, 1).unwrap_or(false)).collect()
        };
        self.forget(py, freed, false)
    }

    /// The peer let go of `count` references to `luid`: True if it holds it no more (the
    /// caller then forgets it). Raises `ProtocolError` for a luid the peer does not hold.
    #[pyo3(signature = (luid, count=1))]
    fn decref(&self, luid: u64, count: u64) -> PyResult<bool> {
        Ok(self.lock().refs.decref(luid, count)?)
    }

    /// The luid of our object `obj` if the peer holds it.
    fn luid_of(&self, obj: &Bound<'_, PyAny>) -> Option<u64> {
        self.lock().refs.luid_of(obj.as_ptr() as u64)
    }

    /// How many references to `luid` the peer holds.
    fn count(&self, luid: u64) -> u64 {
        self.lock().refs.count(luid)
    }

    /// Whether the peer holds our object `luid`.
    fn holds(&self, luid: &Bound<'_, PyAny>) -> bool {
        luid.extract::<u64>().is_ok_and(|luid| self.lock().refs.contains(luid))
    }

    /// How many of our objects the peer holds.
    #[getter]
    fn held(&self) -> usize {
        self.lock().refs.len()
    }

    #[getter]
    fn max_refs(&self) -> usize {
        self.lock().refs.limit()
    }

    // ------------------------------------------------------------------ calls

    /// A reply came for our call `request_id`: its future, or None if it is not waiting. The
    /// objects its arguments pinned are released; those the peer no longer holds are forgotten.
    fn settle<'py>(&self, py: Python<'py>, request_id: i64) -> PyResult<Option<Bound<'py, PyAny>>> {
        let Some(entry) = self.lock().pending.remove(&request_id) else { return Ok(None) };
        if let Some(pins) = entry.pins {
            let freed = {
                let mut inner = self.lock();
                let mut freed = Vec::new();
                for luid in pins {
                    if inner.refs.unpin(luid)? {
                        freed.push(luid);
                    }
                }
                freed
            };
            self.forget(py, freed, true)?;
        }
        Ok(Some(entry.future.into_bound(py)))
    }

    /// Every call still waiting, taken out of the table (the connection is gone): their futures.
    fn take_pending<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let pending = std::mem::take(&mut self.lock().pending);
        PyList::new(py, pending.into_values().map(|p| p.future))
    }

    /// How many of our calls await replies.
    #[getter]
    fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// Empty every table (the connection is gone).
    fn clear(&self) {
        let (objects, pending, forget) = {
            let mut inner = self.lock();
            inner.refs.clear();
            inner.sent.clear();
            (std::mem::take(&mut inner.objects), std::mem::take(&mut inner.pending), inner.forget.take())
        };
        drop((objects, pending, forget));
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        // Never blocks: the lock is only held without Python running, so the collector cannot
        // find it held; if it ever did, leaving these out only keeps them alive longer.
        if let Ok(inner) = self.inner.try_lock() {
            if let Some(forget) = &inner.forget {
                visit.call(forget)?;
            }
            for obj in inner.objects.values() {
                visit.call(obj)?;
            }
            for p in inner.pending.values() {
                visit.call(&p.future)?;
            }
        }
        Ok(())
    }
}

impl Tables {
    /// Our call `request_id` awaits its reply in `future`, with the luids its arguments carried
    /// (from `mark`) pinned until then.
    pub(crate) fn await_reply(&self, request_id: i64, future: Py<PyAny>, mark: usize) -> PyResult<()> {
        let mut inner = self.lock();
        let pins = if inner.sent.len() > mark {
            let pins: Vec<u64> = inner.sent.drain(mark..).collect();
            for &luid in &pins {
                inner.refs.pin(luid)?;
            }
            Some(pins)
        } else {
            None
        };
        inner.pending.insert(request_id, Pending { future, pins });
        Ok(())
    }

    /// Tell the broker that the peer holds each of `luids` no more.
    fn forget(&self, py: Python<'_>, luids: Vec<u64>, uncache: bool) -> PyResult<()> {
        if luids.is_empty() {
            return Ok(());
        }
        let Some(forget) = self.lock().forget.as_ref().map(|f| f.clone_ref(py)) else { return Ok(()) };
        for luid in luids {
            forget.call1(py, (luid, uncache))?;
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while the lock is held, so it is never poisoned; recover regardless.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The object filed under `key`, or None.
    pub(crate) fn object<'py>(&self, py: Python<'py>, key: &Bound<'py, PyAny>) -> Option<Bound<'py, PyAny>> {
        let key = Key::of(key)?;
        let obj = self.lock().objects.get(&key).map(|o| o.clone_ref(py));
        obj.map(|o| o.into_bound(py))
    }

    /// The object filed under the integer `key`, or None.
    pub(crate) fn object_at<'py>(&self, py: Python<'py>, key: i64) -> Option<Bound<'py, PyAny>> {
        let obj = self.lock().objects.get(&Key::Int(key)).map(|o| o.clone_ref(py));
        obj.map(|o| o.into_bound(py))
    }

    /// An answer to our call `request_id`: resolve its future here. False, leaving it to the
    /// broker, when the call is not waiting or pinned objects (releasing them is the broker's).
    pub(crate) fn resolve(&self, py: Python<'_>, request_id: i64, value: &Bound<'_, PyAny>) -> PyResult<bool> {
        let future = {
            let mut inner = self.lock();
            match inner.pending.get(&request_id) {
                Some(p) if p.pins.is_none() => inner.pending.remove(&request_id).map(|p| p.future),
                _ => None,
            }
        };
        let Some(future) = future else { return Ok(false) };
        // A future cancelled meanwhile refuses its result: that is no error here. (Asking it
        // `done()` first would cost a call for every answer.)
        match future.bind(py).call_method1(intern!(py, "set_result"), (value,)) {
            Err(e) if e.is_instance_of::<InvalidStateError>(py) => Ok(true),
            Err(e) => Err(e),
            Ok(_) => Ok(true),
        }
    }

    /// `encode()`, with the references it gives out committed once it is done or taken back if
    /// it fails. The outer result fails only if that bookkeeping does.
    pub(crate) fn encode_sending<T>(
        &self,
        py: Python<'_>,
        encode: impl FnOnce() -> PyResult<T>,
    ) -> PyResult<PyResult<T>> {
        let mark = self.mark();
        let result = encode();
        if result.is_ok() {
            self.commit(mark);
        } else {
            self.undo(py, mark)?;
        }
        Ok(result)
    }
}
