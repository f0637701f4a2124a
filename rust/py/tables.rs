//! One connection's tables, owned by its session (`session.rs`) on either wire:
//!
//! - **objects**: ours that the peer may name, by luid (an integer, negative for a Tub's
//!   callables) or by name (`b"root"`);
//! - **refs**: how many references to each the peer holds ([`RefTable`]);
//! - **sent**: the luids given out by the encoding under way, as a stack: an encode notes the
//!   height ([`Tables::mark`]) and, when it is done, takes its luids off ([`Tables::commit`])
//!   or, when it fails, takes their counts back ([`Tables::undo`]) — the peer never saw them;
//! - **pending**: our calls awaiting replies: request id -> (future, luids its arguments pinned,
//!   and while metrics are on its method and start);
//! - **checks_calls**: whether an object filed here has its calls checked against an interface
//!   (a Tub's decoder then asks each call's string limit as it arrives).
//!
//! One small lock that is never held while Python code runs (a remote method or an encoder hook
//! may use the tables while a `feed` is under way). Objects removed under the lock are dropped
//! after it is released, since dropping one may run Python code. The luids that a settled call
//! or an undone encode frees are handed back: the session tells the broker (`forget`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyInt};

use super::metrics::Made;
use crate::ids::OwnKeyMap;
use crate::refs::{RefError, RefTable};

/// The name or number an object is filed under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Int(i64),
    Name(Box<[u8]>),
}

impl Key {
    /// The key for `obj`, or None for a value no object can be filed under (a peer may name
    /// anything: such names find nothing).
    pub fn of(obj: &Bound<'_, PyAny>) -> Option<Key> {
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
    /// The call's method and start, while metrics are on.
    made: Option<Made>,
}

struct Inner {
    objects: OwnKeyMap<Key, Py<PyAny>>,
    refs: RefTable,
    sent: Vec<u64>,
    pending: OwnKeyMap<i64, Pending>,
}

/// A call a reply settled: its future, the luids its pins held that the peer holds no more, and
/// its record for the metrics.
pub type Settled = (Py<PyAny>, Vec<u64>, Option<Made>);

pub struct Tables {
    inner: Mutex<Inner>,
    /// Read for every chunk a Tub receives, so outside the lock.
    checks_calls: AtomicBool,
}

impl Tables {
    /// Tables whose peer may hold at most `max_refs` of our objects at once.
    pub fn new(max_refs: usize) -> Tables {
        let inner = Inner {
            objects: OwnKeyMap::default(),
            refs: RefTable::new(max_refs),
            sent: Vec::new(),
            pending: OwnKeyMap::default(),
        };
        Tables { inner: Mutex::new(inner), checks_calls: AtomicBool::new(false) }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while the lock is held, so it is never poisoned; recover regardless.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ------------------------------------------------------------------ objects

    /// File `obj` under `key`.
    pub fn put(&self, key: Key, obj: Py<PyAny>) {
        let old = self.lock().objects.insert(key, obj);
        drop(old);
    }

    /// The object filed under `key`, or None.
    pub fn object<'py>(&self, py: Python<'py>, key: &Bound<'py, PyAny>) -> Option<Bound<'py, PyAny>> {
        let key = Key::of(key)?;
        let obj = self.lock().objects.get(&key).map(|o| o.clone_ref(py));
        obj.map(|o| o.into_bound(py))
    }

    /// The object filed under the integer `key`, or None.
    pub fn object_at<'py>(&self, py: Python<'py>, key: i64) -> Option<Bound<'py, PyAny>> {
        let obj = self.lock().objects.get(&Key::Int(key)).map(|o| o.clone_ref(py));
        obj.map(|o| o.into_bound(py))
    }

    /// Take the object filed under `key` out of the table.
    pub fn pop<'py>(&self, py: Python<'py>, key: &Bound<'py, PyAny>) -> Option<Bound<'py, PyAny>> {
        let key = Key::of(key)?;
        let obj = self.lock().objects.remove(&key);
        obj.map(|o| o.into_bound(py))
    }

    /// Whether an object filed here has its calls checked against an interface (set when one is
    /// filed; it stays set).
    pub fn checks_calls(&self) -> bool {
        self.checks_calls.load(Ordering::Relaxed)
    }

    pub fn set_checks_calls(&self, on: bool) {
        self.checks_calls.store(on, Ordering::Relaxed);
    }

    // ------------------------------------------------------------------ references

    /// Count one more sending of our object `obj` by the encode under way: `(luid, is_new)`.
    pub fn send(&self, obj: &Bound<'_, PyAny>) -> Result<(u64, bool), RefError> {
        let mut inner = self.lock();
        let (luid, new) = inner.refs.send(obj.as_ptr() as u64)?;
        inner.sent.push(luid);
        Ok((luid, new))
    }

    /// `send` for an object the peer may call, filed under its luid when new; its luid.
    pub fn export(&self, obj: &Bound<'_, PyAny>) -> Result<u64, RefError> {
        let mut inner = self.lock();
        let (luid, new) = inner.refs.send(obj.as_ptr() as u64)?;
        inner.sent.push(luid);
        if new {
            inner.objects.insert(Key::Int(luid as i64), obj.clone().unbind());
        }
        Ok(luid)
    }

    /// The height of the `sent` stack, before an encode.
    pub fn mark(&self) -> usize {
        self.lock().sent.len()
    }

    /// The encode that started at `mark` succeeded: its luids are the peer's now.
    pub fn commit(&self, mark: usize) {
        self.lock().sent.truncate(mark);
    }

    /// The encode that started at `mark` failed: take back the counts it added; the luids this
    /// frees (the peer never held them).
    #[must_use]
    pub fn undo(&self, mark: usize) -> Vec<u64> {
        let mut inner = self.lock();
        let from = mark.min(inner.sent.len());
        let luids: Vec<u64> = inner.sent.drain(from..).collect();
        luids.into_iter().filter(|&luid| inner.refs.decref(luid, 1).unwrap_or(false)).collect()
    }

    /// The peer let go of `count` references to `luid`: true if it holds it no more.
    pub fn decref(&self, luid: u64, count: u64) -> Result<bool, RefError> {
        self.lock().refs.decref(luid, count)
    }

    /// The luid of our object `obj` if the peer holds it.
    pub fn luid_of(&self, obj: &Bound<'_, PyAny>) -> Option<u64> {
        self.lock().refs.luid_of(obj.as_ptr() as u64)
    }

    /// Whether the peer holds our object `luid`.
    pub fn holds(&self, luid: u64) -> bool {
        self.lock().refs.contains(luid)
    }

    /// How many of our objects the peer holds.
    pub fn held(&self) -> usize {
        self.lock().refs.len()
    }

    // ------------------------------------------------------------------ calls

    /// Our call `request_id` awaits its reply in `future`, with the luids its arguments carried
    /// (from `mark`) pinned until then.
    pub fn await_reply(
        &self,
        request_id: i64,
        future: Py<PyAny>,
        mark: usize,
        made: Option<Made>,
    ) -> Result<(), RefError> {
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
        inner.pending.insert(request_id, Pending { future, pins, made });
        Ok(())
    }

    /// A reply came for our call `request_id`: its future (None if it is not waiting) and the
    /// luids its pins held that the peer holds no more.
    pub fn settle(&self, request_id: i64) -> Result<Option<Settled>, RefError> {
        let mut inner = self.lock();
        let Some(entry) = inner.pending.remove(&request_id) else { return Ok(None) };
        let mut freed = Vec::new();
        for luid in entry.pins.into_iter().flatten() {
            if inner.refs.unpin(luid)? {
                freed.push(luid);
            }
        }
        Ok(Some((entry.future, freed, entry.made)))
    }

    /// The future (and metrics record) of our call `request_id` if it waits and pinned nothing
    /// (its answer can then be resolved without the broker), taken out of the table.
    pub fn take_unpinned(&self, request_id: i64) -> Option<(Py<PyAny>, Option<Made>)> {
        let mut inner = self.lock();
        match inner.pending.get(&request_id) {
            Some(p) if p.pins.is_none() => inner.pending.remove(&request_id).map(|p| (p.future, p.made)),
            _ => None,
        }
    }

    /// Every call still waiting, taken out of the table (the connection is gone): their futures
    /// and metrics records.
    pub fn take_pending(&self) -> Vec<(Py<PyAny>, Option<Made>)> {
        let pending = std::mem::take(&mut self.lock().pending);
        pending.into_values().map(|p| (p.future, p.made)).collect()
    }

    /// The request ids of our calls awaiting replies whose futures are among `futures` (by
    /// identity); they stay waiting.
    pub fn requests_of(&self, futures: &[usize]) -> Vec<i64> {
        let wanted: std::collections::HashSet<usize> = futures.iter().copied().collect();
        let inner = self.lock();
        inner
            .pending
            .iter()
            .filter(|(_, p)| wanted.contains(&(p.future.as_ptr() as usize)))
            .map(|(&request_id, _)| request_id)
            .collect()
    }

    /// How many of our calls await replies.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// Empty every table (the connection is gone).
    pub fn clear(&self) {
        let (objects, pending) = {
            let mut inner = self.lock();
            inner.refs.clear();
            inner.sent.clear();
            (std::mem::take(&mut inner.objects), std::mem::take(&mut inner.pending))
        };
        drop((objects, pending));
    }

    pub fn traverse(&self, visit: &pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        // Never blocks: the lock is only held without Python running, so the collector cannot
        // find it held; if it ever did, leaving these out only keeps them alive longer.
        if let Ok(inner) = self.inner.try_lock() {
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
