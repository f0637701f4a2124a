//! `pbfast._core.Session`: what one connection's session holds on either wire, the base of
//! `PbSession` (and of a Tub's session):
//!
//! - the bytes waiting to be written (calls, answers, the broker's messages, in the order they
//!   were encoded: a foolscap stream numbers its objects in that order) and the rule for when
//!   they go out: at the end of the loop iteration or of the chunk being read (`wake`), or at
//!   once (`flush`) once [`EARLY_WRITE`] answers made while reading or [`FLUSH_AT`] bytes wait;
//! - the buffers messages are encoded into ([`Spares`]): a large message moves from its
//!   encoding buffer to the bytes waiting and on to the transport without being copied (the
//!   transport is handed an [`OutgoingBytes`] that owns them, whose buffer comes back here once
//!   written), and the buffers are used again rather than allocated afresh each time: fresh
//!   memory costs a page fault per 4 KiB, several times what copying it costs;
//! - calls out: `callRemote`'s work (request id, future, encoding, pins, pending entry) in one
//!   crossing of the boundary;
//! - the connection's [`Tables`]: our objects, the references the peer holds, our calls
//!   awaiting replies;
//! - for each wire's session, its input ([`Input`]): the reader and what runs the messages
//!   read, behind one lock, and dropped when the connection is cut off.
//!
//! Frozen with small locks, never held while Python runs, so an encoder hook or a remote method
//! may send while another send or a `feed` is under way. `close` drops every Python object the
//! session holds (the broker's callbacks among them), so a closed connection is freed at once,
//! not by a later garbage collection.

use std::os::raw::c_int;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use pyo3::exceptions::asyncio::InvalidStateError;
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyMemoryView, PyString, PyTuple};

use super::foolscap::{in_use, FoolscapEncoderPy};
use super::metrics::{self, Outcome, Tally, Wire};
use super::pb::Writer as PbWriter;
use super::tables::{Key, Tables};

pyo3::import_exception!(pbfast.errors, DeadReferenceError);

/// Answers made while a chunk of calls is read after which they are written at once, rather
/// than when the whole chunk has run: the caller starts on the first ones while the rest run,
/// so the two ends work at the same time instead of taking turns over each burst. Calls are not
/// written early: the caller is most often the busier end, and an extra write for every few
/// calls cost it more than the overlap gained (measured with `benches/rpc.py`).
pub const EARLY_WRITE: usize = 16;

/// Bytes waiting after which they are written at once: writing them may pause writing (the
/// peer is not reading), and the calls after that then wait.
pub const FLUSH_AT: usize = 1 << 16;

/// Bytes waiting after which `take` hands the transport the buffer itself (an
/// [`OutgoingBytes`]) rather than a copy.
pub const HAND_OFF_AT: usize = 1 << 16;

/// A Tub's byte strings this long or longer are not copied into their message's buffer: their
/// bytes object waits with it (a [`Splice`]) and TLS seals them straight from there (only a
/// connection without TLS joins them, as it writes).
pub const SPLICE_AT: usize = 1 << 16;

/// A byte string left out of the buffer its message was encoded into: its bytes go in at `at`
/// when the buffer is written.
pub struct Splice {
    pub at: usize,
    pub bytes: Py<PyBytes>,
}

/// Buffers of this capacity or less are kept whatever the traffic; larger ones only while large
/// messages keep coming (see [`Spares::settle`]).
const KEPT: usize = 1 << 20;
/// Consecutive small writes after which the large buffers are let go of.
const SMALL_TAKES: usize = 64;

/// The buffers a connection encodes its messages into and writes from, kept for the next
/// messages: a connection that sends large messages would otherwise take fresh memory (and
/// its page faults) for each one. Shared with the [`OutgoingBytes`] the transport holds, which
/// give their buffer back once written.
#[derive(Default)]
pub struct Spares {
    buffers: Mutex<Vec<Vec<u8>>>,
    /// Consecutive small writes.
    small: AtomicUsize,
    /// The connection is gone: buffers given back are let go of.
    closed: AtomicBool,
}

impl Spares {
    /// Buffers kept at most.
    const COUNT: usize = 4;

    /// An empty buffer (with room from earlier messages, if one is kept).
    pub fn take(&self) -> Vec<u8> {
        self.lock().pop().unwrap_or_default()
    }

    /// Keep `buffer` for later (emptied), if there is room.
    pub fn give(&self, mut buffer: Vec<u8>) {
        if buffer.capacity() == 0 {
            return;
        }
        buffer.clear();
        let mut buffers = self.lock();
        if buffers.len() < Self::COUNT && !self.closed.load(Ordering::Relaxed) {
            buffers.push(buffer);
        }
    }

    /// Let go of every buffer, and of those given back from now on.
    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.lock().clear();
    }

    /// A write of `len` bytes: after [`SMALL_TAKES`] small ones in a row the large buffers go
    /// (and `out`'s room shrinks), so a connection's burst of large messages does not pin their
    /// memory for the rest of its life.
    fn settle(&self, len: usize, out: &mut Vec<u8>) {
        if len >= HAND_OFF_AT {
            self.small.store(0, Ordering::Relaxed);
            return;
        }
        if self.small.fetch_add(1, Ordering::Relaxed) + 1 == SMALL_TAKES {
            if out.capacity() > KEPT {
                out.shrink_to(HAND_OFF_AT);
            }
            self.lock().retain(|b| b.capacity() <= KEPT);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Vec<u8>>> {
        self.buffers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Bytes handed to the transport to write (through a `memoryview`: the buffer protocol, read
/// only), without a copy; their buffer goes back to the connection's [`Spares`] when the
/// transport lets go of them.
#[pyclass(module = "pbfast._core", name = "OutgoingBytes", frozen)]
pub struct OutgoingBytes {
    data: Vec<u8>,
    spares: Weak<Spares>,
}

#[pymethods]
impl OutgoingBytes {
    fn __len__(&self) -> usize {
        self.data.len()
    }

    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut pyo3::ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        let data = &slf.get().data;
        // SAFETY: `data` never changes while the object lives (it is frozen), and the view
        // holds a reference to the object.
        let filled = unsafe {
            pyo3::ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                data.as_ptr() as *mut std::ffi::c_void,
                data.len() as pyo3::ffi::Py_ssize_t,
                1,
                flags,
            )
        };
        if filled == -1 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }
}

impl Drop for OutgoingBytes {
    fn drop(&mut self) {
        if let Some(spares) = self.spares.upgrade() {
            spares.give(std::mem::take(&mut self.data));
        }
    }
}

/// The wire's encoder, known once the connection has negotiated. A foolscap encoder numbers
/// what it writes, so it is locked for each message (a PB one is not: its hooks may send).
pub enum Encoding {
    Pb(PbWriter),
    Foolscap(Arc<Mutex<FoolscapEncoderPy>>),
}

impl Encoding {
    fn clone_ref(&self, py: Python<'_>) -> Encoding {
        match self {
            Encoding::Pb(w) => Encoding::Pb(w.clone_ref(py)),
            Encoding::Foolscap(e) => Encoding::Foolscap(Arc::clone(e)),
        }
    }
}

/// The broker's callbacks, dropped when the session closes (they refer back to the broker).
struct Callbacks {
    /// `wake()`: bytes started waiting; the broker schedules a flush.
    wake: Py<PyAny>,
    /// `flush()`: write what waits now.
    flush: Py<PyAny>,
    /// `create_future(**future_keywords)`: the future of a call out.
    create_future: Py<PyAny>,
    future_keywords: Option<Py<PyDict>>,
    /// `dead()`: the exception for a call that cannot be made (not negotiated yet, or gone).
    dead: Py<PyAny>,
    /// `forget(luid, uncache)`: the peer holds our object `luid` no more, freed by a settled
    /// call's pins (`uncache` true) or by an encode that failed (false: the peer never saw it).
    forget: Py<PyAny>,
}

/// The bytes waiting to be written.
struct Outgoing {
    waiting: Mutex<Encoded>,
    /// Messages in `waiting`.
    queued: AtomicUsize,
    /// `wake()` has been called for the bytes waiting.
    scheduled: AtomicBool,
}

/// Encoded messages (those waiting to be written among them): a buffer, and the large strings
/// that go into it.
#[derive(Default)]
pub struct Encoded {
    pub bytes: Vec<u8>,
    /// In the order of their places in `bytes`.
    pub splices: Vec<Splice>,
    /// The bytes of the strings in `splices`.
    pub spliced: usize,
}

impl Encoded {
    /// Messages to be encoded into `buffer`.
    pub fn new(buffer: Vec<u8>) -> Encoded {
        Encoded { bytes: buffer, ..Encoded::default() }
    }

    pub fn len(&self) -> usize {
        self.bytes.len() + self.spliced
    }

    /// (Each string left out follows its header, so there are none without bytes.)
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.splices.clear();
        self.spliced = 0;
    }

    /// The bytes to write, in order: pieces of the buffer with the strings between them.
    pub fn parts<'a>(&'a self, py: Python<'_>) -> Vec<&'a [u8]> {
        let mut parts = Vec::with_capacity(2 * self.splices.len() + 1);
        let mut from = 0;
        for splice in &self.splices {
            parts.extend([&self.bytes[from..splice.at], splice.bytes.as_bytes(py)]);
            from = splice.at;
        }
        parts.push(&self.bytes[from..]);
        parts
    }
}

/// A wire session's input: its reader and what runs the messages read. `feed` and `run` hold
/// it while they work (remote methods run meanwhile); cutting the connection off drops it, at
/// once or, while it is held, as its holder lets go.
pub struct Input<T> {
    slot: Mutex<Option<T>>,
    /// Dropped while held: it goes when the holder lets go.
    dropped: AtomicBool,
    /// The session, for the error of a re-entered feed ("a PB session").
    name: &'static str,
}

impl<T> Input<T> {
    pub fn new(input: T, name: &'static str) -> Self {
        Input { slot: Mutex::new(Some(input)), dropped: AtomicBool::new(false), name }
    }

    /// Hold the input (None once it is dropped); an error if a feed or run holds it already.
    pub fn hold(&self) -> PyResult<InputGuard<'_, T>> {
        match self.slot.try_lock() {
            Ok(guard) => Ok(InputGuard { guard: Some(guard), dropped: &self.dropped }),
            Err(_) => Err(PyRuntimeError::new_err(format!("{}'s feed or run was re-entered", self.name))),
        }
    }

    /// The input if nothing holds it, to look at: never blocks, and drops nothing (the garbage
    /// collector's traversal uses it).
    pub fn peek(&self) -> Option<MutexGuard<'_, Option<T>>> {
        self.slot.try_lock().ok()
    }

    /// Drop the input: at once, or when its holder lets go.
    pub fn drop_input(&self) {
        self.dropped.store(true, Ordering::Relaxed);
        if let Ok(mut slot) = self.slot.try_lock() {
            let dropped = slot.take();
            drop(slot);
            drop(dropped); // (after the lock: dropping Python objects may run code that feeds)
        }
    }
}

/// The input held; letting go drops it if it was dropped meanwhile.
pub struct InputGuard<'a, T> {
    guard: Option<MutexGuard<'a, Option<T>>>,
    dropped: &'a AtomicBool,
}

impl<T> std::ops::Deref for InputGuard<'_, T> {
    type Target = Option<T>;
    fn deref(&self) -> &Option<T> {
        self.guard.as_ref().expect("held until dropped")
    }
}

impl<T> std::ops::DerefMut for InputGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut Option<T> {
        self.guard.as_mut().expect("held until dropped")
    }
}

impl<T> Drop for InputGuard<'_, T> {
    fn drop(&mut self) {
        let Some(mut guard) = self.guard.take() else { return };
        let dropped = if self.dropped.load(Ordering::Relaxed) { guard.take() } else { None };
        drop(guard);
        drop(dropped);
    }
}

#[pyclass(module = "pbfast._core", name = "Session", subclass, frozen)]
pub struct SessionPy {
    /// Which wire the session speaks, for the metrics.
    wire: Wire,
    tables: Tables,
    out: Outgoing,
    /// No more calls, nothing more written (the connection is gone).
    closed: AtomicBool,
    /// Calls come back as events rather than running (the broker holds them back).
    holding: AtomicBool,
    /// Bytes held for an incomplete incoming message, as of the last chunk read.
    buffered: AtomicUsize,
    next_request: AtomicI64,
    callbacks: Mutex<Option<Callbacks>>,
    encoder: Mutex<Option<Encoding>>,
    spares: Arc<Spares>,
}

#[pymethods]
impl SessionPy {
    // ------------------------------------------------------------------ bytes out

    /// Queue `data` (one message, or part of one) to be written.
    fn write(&self, py: Python<'_>, data: &[u8]) -> PyResult<()> {
        self.append(py, data)
    }

    /// Everything waiting to be written, or None: a `bytes`, or (past [`HAND_OFF_AT`] bytes)
    /// a read-only `memoryview` of the buffer itself.
    pub fn take<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let data = {
            let mut out = self.lock_out();
            self.out.scheduled.store(false, Ordering::Relaxed);
            self.out.queued.store(0, Ordering::Relaxed);
            let len = out.len();
            self.spares.settle(len, &mut out.bytes);
            if out.is_empty() {
                return Ok(None);
            }
            metrics::sent(self.wire, len);
            if !out.splices.is_empty() {
                // (Only a Tub's connection to itself, which has no TLS, writes strings spliced.)
                let joined = out.parts(py).concat();
                out.clear();
                joined
            } else if len < HAND_OFF_AT {
                let bytes = PyBytes::new(py, &out.bytes).into_any();
                out.clear();
                return Ok(Some(bytes));
            } else {
                std::mem::replace(&mut out.bytes, self.spares.take())
            }
        };
        self.hand_off(py, data).map(Some)
    }

    /// Whether the peer's calls come back as events (`EV_MESSAGE`, `FS_CALL`) to run later
    /// with the wire session's `run`, rather than running as they are read (the broker holds
    /// calls back).
    #[getter]
    fn get_holding(&self) -> bool {
        self.holding()
    }

    #[setter]
    fn set_holding(&self, on: bool) {
        self.holding.store(on, Ordering::Relaxed);
    }

    /// Bytes held for an incomplete incoming message, as of the last chunk read.
    #[getter]
    fn get_buffered(&self) -> usize {
        self.buffered.load(Ordering::Relaxed)
    }

    /// Bytes waiting to be written.
    #[getter]
    fn size(&self) -> usize {
        self.lock_out().len()
    }

    /// Drop what waits to be written (the connection is being cut off); the wire's session
    /// drops what it holds of an incomplete incoming message too.
    pub fn discard(&self) {
        self.lock_out().clear();
        self.set_buffered(0);
    }

    /// The connection is gone: refuse further calls, drop what waits, empty the tables and let
    /// go of the broker's callbacks.
    fn close(&self) {
        self.shut();
    }

    // ------------------------------------------------------------------ calls out

    /// `callRemote`: a future for the answer to `method(*args, **kwargs)` on `object_id` (with
    /// `cache`, an `observe_*` call on the peer's copy of our Cacheable `object_id`). Failures
    /// to send (dead connection, unsendable arguments) come back in the future.
    #[pyo3(signature = (object_id, method, args, kwargs, cache=false))]
    fn call<'py>(
        &self,
        py: Python<'py>,
        object_id: &Bound<'py, PyAny>,
        method: &Bound<'py, PyString>,
        args: &Bound<'py, PyTuple>,
        kwargs: &Bound<'py, PyDict>,
        cache: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let Some((create_future, keywords)) = self.future_maker(py) else {
            return Err(DeadReferenceError::new_err("the connection is closed"));
        };
        let future = match keywords {
            None => create_future.call0(py)?,
            Some(keywords) => create_future.call(py, (), Some(keywords.bind(py)))?,
        }
        .into_bound(py);
        let request_id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let mark = self.tables.mark();
        let made = metrics::making(method);
        let mut data = match self.encode_call(py, request_id, object_id, method.to_str()?, true, args, kwargs, cache) {
            Ok(data) => data,
            Err(e) => {
                if let Some(made) = made {
                    metrics::made(py, self.wire, made, Outcome::Error);
                }
                future.call_method1(intern!(py, "set_exception"), (e.into_value(py),))?;
                return Ok(future);
            }
        };
        // Objects of ours that the arguments carried stay until the answer has been read,
        // whatever decrefs the peer sends meanwhile (see RefTable).
        self.tables.await_reply(request_id, future.clone().unbind(), mark, made)?;
        self.append_encoded(py, &mut data, false)?;
        self.recycle(data.bytes);
        Ok(future)
    }

    /// `callRemoteOnly`: send without asking for an answer. Raises if it cannot be sent.
    fn call_only<'py>(
        &self,
        py: Python<'py>,
        object_id: &Bound<'py, PyAny>,
        method: &Bound<'py, PyString>,
        args: &Bound<'py, PyTuple>,
        kwargs: &Bound<'py, PyDict>,
    ) -> PyResult<()> {
        let request_id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let mark = self.tables.mark();
        let mut data = self.encode_call(py, request_id, object_id, method.to_str()?, false, args, kwargs, false)?;
        self.tables.commit(mark);
        self.append_encoded(py, &mut data, false)?;
        self.recycle(data.bytes);
        metrics::sent_only(self.wire, method);
        Ok(())
    }

    // ------------------------------------------------------------------ objects

    /// File `obj` under `key` (an int or bytes).
    fn put(&self, key: &Bound<'_, PyAny>, obj: Py<PyAny>) -> PyResult<()> {
        let key = Key::of(key).ok_or_else(|| PyTypeError::new_err("an object is filed under an int or bytes"))?;
        self.tables.put(key, obj);
        Ok(())
    }

    /// The object filed under `key`, or None.
    fn get<'py>(&self, py: Python<'py>, key: &Bound<'py, PyAny>) -> Option<Bound<'py, PyAny>> {
        self.tables.object(py, key)
    }

    /// Take the object filed under `key` out of the table (None if there is none).
    fn pop<'py>(&self, py: Python<'py>, key: &Bound<'py, PyAny>) -> Option<Bound<'py, PyAny>> {
        self.tables.pop(py, key)
    }

    /// Whether an object filed here has its calls checked against an interface (the broker
    /// sets it when it files one; it stays set). Until then a Tub's decoder reads calls without
    /// asking for their limits.
    #[getter]
    fn get_checks_calls(&self) -> bool {
        self.tables.checks_calls()
    }

    #[setter]
    fn set_checks_calls(&self, on: bool) {
        self.tables.set_checks_calls(on);
    }

    /// Count one more sending of our object `obj` by the encode under way: `(luid, is_new)`.
    /// Raises `pbfast.LimitExceeded` (`max_refs`) when the peer would hold too many.
    fn send(&self, obj: &Bound<'_, PyAny>) -> PyResult<(u64, bool)> {
        Ok(self.tables.send(obj)?)
    }

    /// `send` for an object the peer may call, filed under its luid when new; its luid.
    fn export(&self, obj: &Bound<'_, PyAny>) -> PyResult<u64> {
        Ok(self.tables.export(obj)?)
    }

    /// The peer let go of `count` references to `luid`: True if it holds it no more (the
    /// caller then forgets it). Raises `ProtocolError` for a luid the peer does not hold.
    #[pyo3(signature = (luid, count=1))]
    fn decref(&self, luid: u64, count: u64) -> PyResult<bool> {
        Ok(self.tables.decref(luid, count)?)
    }

    /// The luid of our object `obj` if the peer holds it.
    fn luid_of(&self, obj: &Bound<'_, PyAny>) -> Option<u64> {
        self.tables.luid_of(obj)
    }

    /// Whether the peer holds our object `luid`.
    fn holds(&self, luid: &Bound<'_, PyAny>) -> bool {
        luid.extract::<u64>().is_ok_and(|luid| self.tables.holds(luid))
    }

    /// How many of our objects the peer holds.
    #[getter]
    fn held(&self) -> usize {
        self.tables.held()
    }

    // ------------------------------------------------------------------ replies

    /// A reply came for our call `request_id` (`failed`: a failure, or a reply refused): its
    /// future, or None if it is not waiting. The objects its arguments pinned are released;
    /// those the peer no longer holds are forgotten.
    #[pyo3(signature = (request_id, failed=false))]
    fn settle<'py>(&self, py: Python<'py>, request_id: i64, failed: bool) -> PyResult<Option<Bound<'py, PyAny>>> {
        let Some((future, freed, made)) = self.tables.settle(request_id)? else { return Ok(None) };
        self.forget(py, freed, true)?;
        let future = future.into_bound(py);
        if let Some(made) = made {
            let outcome = match () {
                _ if future.call_method0(intern!(py, "done"))?.is_truthy()? => Outcome::Cancelled,
                _ if failed => Outcome::Error,
                _ => Outcome::Ok,
            };
            metrics::made(py, self.wire, made, outcome);
        }
        Ok(Some(future))
    }

    /// Every call still waiting, taken out of the table (the connection is gone): their futures.
    fn take_pending<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let futures = PyList::empty(py);
        for (future, made) in self.tables.take_pending() {
            let future = future.into_bound(py);
            if let Some(made) = made {
                let cancelled = future.call_method0(intern!(py, "done"))?.is_truthy()?;
                metrics::made(py, self.wire, made, if cancelled { Outcome::Cancelled } else { Outcome::Lost });
            }
            futures.append(future)?;
        }
        Ok(futures)
    }

    /// How many of our calls await replies.
    #[getter]
    fn pending(&self) -> usize {
        self.tables.pending()
    }

    /// The request ids of our calls awaiting replies whose futures are among `futures` (cancelled
    /// ones, to tell the peer): one pass over the calls waiting, however many futures. The calls
    /// stay waiting (their replies settle them).
    fn cancelled(&self, futures: &Bound<'_, PyList>) -> Vec<i64> {
        let futures: Vec<usize> = futures.iter().map(|f| f.as_ptr() as usize).collect();
        self.tables.requests_of(&futures)
    }

    /// Make the future of each call out, from the next one on, with
    /// `create_future(**keywords)` (a class and its keywords cost less than a
    /// `functools.partial`, which copies them at each call).
    #[pyo3(signature = (create_future, keywords=None))]
    fn make_futures(&self, create_future: Py<PyAny>, keywords: Option<Py<PyDict>>) -> PyResult<()> {
        let mut callbacks = self.callbacks.lock().unwrap_or_else(|e| e.into_inner());
        let Some(c) = callbacks.as_mut() else {
            return Err(DeadReferenceError::new_err("the connection is closed"));
        };
        let old = (
            std::mem::replace(&mut c.create_future, create_future),
            std::mem::replace(&mut c.future_keywords, keywords),
        );
        drop(callbacks);
        drop(old);
        Ok(())
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        // Never blocks (see `Tables::traverse`).
        if let Ok(callbacks) = self.callbacks.try_lock() {
            if let Some(c) = callbacks.as_ref() {
                for callback in [&c.wake, &c.flush, &c.create_future, &c.dead, &c.forget] {
                    visit.call(callback)?;
                }
                if let Some(keywords) = &c.future_keywords {
                    visit.call(keywords)?;
                }
            }
        }
        if let Ok(encoder) = self.encoder.try_lock() {
            match encoder.as_ref() {
                Some(Encoding::Pb(w)) => w.traverse(&visit)?,
                Some(Encoding::Foolscap(e)) => {
                    if let Ok(e) = e.try_lock() {
                        e.traverse(&visit)?;
                    }
                }
                None => {}
            }
        }
        self.tables.traverse(&visit)
    }
}

impl SessionPy {
    /// A session of `wire` whose peer may hold at most `max_refs` of our objects, with the
    /// broker's callbacks (see [`Callbacks`]).
    pub fn new(
        wire: Wire,
        max_refs: usize,
        wake: Py<PyAny>,
        flush: Py<PyAny>,
        create_future: Py<PyAny>,
        dead: Py<PyAny>,
        forget: Py<PyAny>,
    ) -> SessionPy {
        SessionPy {
            wire,
            tables: Tables::new(max_refs),
            out: Outgoing { waiting: Mutex::default(), queued: AtomicUsize::new(0), scheduled: AtomicBool::new(false) },
            closed: AtomicBool::new(false),
            holding: AtomicBool::new(false),
            buffered: AtomicUsize::new(0),
            next_request: AtomicI64::new(1),
            callbacks: Mutex::new(Some(Callbacks { wake, flush, create_future, future_keywords: None, dead, forget })),
            encoder: Mutex::new(None),
            spares: Arc::default(),
        }
    }

    /// `f` of everything waiting to be written (see [`Encoded::parts`]), which is then no
    /// longer waiting.
    pub fn drain<R>(&self, py: Python<'_>, f: impl FnOnce(&[&[u8]]) -> R) -> R {
        let mut out = self.lock_out();
        self.out.scheduled.store(false, Ordering::Relaxed);
        self.out.queued.store(0, Ordering::Relaxed);
        let taken = f(&out.parts(py));
        let len = out.len();
        out.clear();
        self.spares.settle(len, &mut out.bytes);
        taken
    }

    /// `data` for the transport to write: as bytes if it is short (its buffer kept), else
    /// handed over as a read-only `memoryview` (see [`OutgoingBytes`]).
    pub fn hand_off<'py>(&self, py: Python<'py>, data: Vec<u8>) -> PyResult<Bound<'py, PyAny>> {
        if data.len() < HAND_OFF_AT {
            let bytes = PyBytes::new(py, &data).into_any();
            self.spares.give(data);
            return Ok(bytes);
        }
        let owner = Bound::new(py, OutgoingBytes { data, spares: Arc::downgrade(&self.spares) })?;
        Ok(PyMemoryView::from(owner.as_any())?.into_any())
    }

    /// An empty buffer to encode a message into (see [`Spares`]); `append_buffer` queues it.
    pub fn buffer(&self) -> Vec<u8> {
        self.spares.take()
    }

    /// Keep `buffer` for later messages (see [`Spares`]).
    pub fn recycle(&self, buffer: Vec<u8>) {
        self.spares.give(buffer);
    }

    pub fn holding(&self) -> bool {
        self.holding.load(Ordering::Relaxed)
    }

    pub fn set_buffered(&self, bytes: usize) {
        self.buffered.store(bytes, Ordering::Relaxed);
    }

    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// Start encoding calls with `encoding` (once the connection has negotiated).
    pub fn start_encoding(&self, encoding: Encoding) -> PyResult<()> {
        let mut encoder = self.encoder.lock().unwrap_or_else(|e| e.into_inner());
        if encoder.is_some() || self.closed.load(Ordering::Relaxed) {
            return Err(PyRuntimeError::new_err("the session has started or closed"));
        }
        *encoder = Some(encoding);
        Ok(())
    }

    /// The encoder, once started (a new handle to it: the lock is not held while it runs,
    /// so its hooks may send).
    pub fn encoding(&self, py: Python<'_>) -> Option<Encoding> {
        self.encoder.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|e| e.clone_ref(py))
    }

    /// Queue one message's bytes; they go out as the module docs say.
    pub fn append(&self, py: Python<'_>, data: &[u8]) -> PyResult<()> {
        self.queue(py, Bytes::Borrowed(data), false)
    }

    /// Queue the bytes in `data` (a message, or several), leaving it empty: when nothing else
    /// waits, `data`'s buffer becomes the bytes waiting rather than being copied into them.
    /// With `answer`: answers the fast path made while reading a chunk (see [`EARLY_WRITE`]).
    pub fn append_buffer(&self, py: Python<'_>, data: &mut Vec<u8>, answer: bool) -> PyResult<()> {
        let mut encoded = Encoded::new(std::mem::take(data));
        let queued = self.queue(py, Bytes::Owned(&mut encoded), answer);
        *data = encoded.bytes;
        queued
    }

    /// [`Self::append_buffer`] for messages with strings left out of them.
    pub fn append_encoded(&self, py: Python<'_>, data: &mut Encoded, answer: bool) -> PyResult<()> {
        self.queue(py, Bytes::Owned(data), answer)
    }

    fn queue(&self, py: Python<'_>, data: Bytes<'_>, answer: bool) -> PyResult<()> {
        if self.closed.load(Ordering::Relaxed) {
            if let Bytes::Owned(data) = data {
                data.clear();
            }
            return Ok(());
        }
        let size = {
            let mut out = self.lock_out();
            match data {
                Bytes::Borrowed(data) => out.bytes.extend_from_slice(data),
                Bytes::Owned(data) if out.is_empty() => std::mem::swap(&mut *out, data),
                Bytes::Owned(data) => {
                    let base = out.bytes.len();
                    out.bytes.extend_from_slice(&data.bytes);
                    out.spliced += data.spliced;
                    let splices = data.splices.drain(..).map(|Splice { at, bytes }| Splice { at: base + at, bytes });
                    out.splices.extend(splices);
                    data.clear();
                }
            }
            out.len()
        };
        let early = answer && self.out.queued.fetch_add(1, Ordering::Relaxed) + 1 >= EARLY_WRITE;
        if early || size >= FLUSH_AT {
            if let Some(flush) = self.callback(py, |c| &c.flush) {
                flush.call0(py)?;
            }
        } else if !self.out.scheduled.swap(true, Ordering::Relaxed) {
            if let Some(wake) = self.callback(py, |c| &c.wake) {
                wake.call0(py)?;
            }
        }
        Ok(())
    }

    /// Tell the broker that the peer holds each of `luids` no more.
    pub fn forget(&self, py: Python<'_>, luids: Vec<u64>, uncache: bool) -> PyResult<()> {
        if luids.is_empty() {
            return Ok(());
        }
        let Some(forget) = self.callback(py, |c| &c.forget) else { return Ok(()) };
        for luid in luids {
            forget.call1(py, (luid, uncache))?;
        }
        Ok(())
    }

    /// An answer to our call `request_id`: resolve its future here (the call counted in the fast
    /// path's `tally`). False, leaving it to the broker, when the call is not waiting or pinned
    /// objects (releasing them is the broker's).
    pub fn resolve(
        &self,
        py: Python<'_>,
        request_id: i64,
        value: &Bound<'_, PyAny>,
        tally: &mut Tally,
    ) -> PyResult<bool> {
        let Some((future, made)) = self.tables.take_unpinned(request_id) else { return Ok(false) };
        // A future cancelled meanwhile refuses its result: that is no error here. (Asking it
        // `done()` first would cost a call for every answer.)
        let outcome = match future.bind(py).call_method1(intern!(py, "set_result"), (value,)) {
            Err(e) if e.is_instance_of::<InvalidStateError>(py) => Outcome::Cancelled,
            Err(e) => return Err(e),
            Ok(_) => Outcome::Ok,
        };
        if let Some(made) = made {
            tally.made(py, self.wire, made, outcome);
        }
        Ok(true)
    }

    /// Which wire the session speaks.
    pub fn wire(&self) -> Wire {
        self.wire
    }

    /// `encode()`, with the references it gives out committed once it is done or taken back if
    /// it fails. The outer result fails only if that bookkeeping does.
    pub fn encode_sending<T>(&self, py: Python<'_>, encode: impl FnOnce() -> PyResult<T>) -> PyResult<PyResult<T>> {
        let mark = self.tables.mark();
        let result = encode();
        if result.is_ok() {
            self.tables.commit(mark);
        } else {
            self.forget(py, self.tables.undo(mark), false)?;
        }
        Ok(result)
    }

    /// Refuse further calls, drop what waits and what the session holds of Python's.
    pub fn shut(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.discard();
        // The buffers' memory goes now (what a transport still holds comes back to no one).
        *self.lock_out() = Encoded::default();
        self.spares.close();
        self.tables.clear();
        let callbacks = self.callbacks.lock().unwrap_or_else(|e| e.into_inner()).take();
        let encoder = self.encoder.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop((callbacks, encoder));
    }

    fn lock_out(&self) -> MutexGuard<'_, Encoded> {
        self.out.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What makes the future of a call out, and its keywords.
    fn future_maker(&self, py: Python<'_>) -> Option<(Py<PyAny>, Option<Py<PyDict>>)> {
        let callbacks = self.callbacks.lock().unwrap_or_else(|e| e.into_inner());
        callbacks.as_ref().map(|c| (c.create_future.clone_ref(py), c.future_keywords.as_ref().map(|k| k.clone_ref(py))))
    }

    fn callback(&self, py: Python<'_>, pick: impl FnOnce(&Callbacks) -> &Py<PyAny>) -> Option<Py<PyAny>> {
        self.callbacks.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|c| pick(c).clone_ref(py))
    }

    /// The exception for a call that cannot be made now.
    fn dead(&self, py: Python<'_>) -> PyErr {
        match self.callback(py, |c| &c.dead) {
            Some(dead) => match dead.call0(py) {
                Ok(exc) => PyErr::from_value(exc.into_bound(py)),
                Err(e) => e,
            },
            None => DeadReferenceError::new_err("the connection is closed"),
        }
    }

    /// The bytes of one call (and the strings left out of them); on failure the references it
    /// gave out are taken back.
    #[allow(clippy::too_many_arguments)]
    fn encode_call<'py>(
        &self,
        py: Python<'py>,
        request_id: i64,
        object_id: &Bound<'py, PyAny>,
        method: &str,
        answer: bool,
        args: &Bound<'py, PyTuple>,
        kwargs: &Bound<'py, PyDict>,
        cache: bool,
    ) -> PyResult<Encoded> {
        let encoding = match self.encoding(py) {
            Some(e) if !self.closed.load(Ordering::Relaxed) => e,
            _ => return Err(self.dead(py)),
        };
        let mark = self.tables.mark();
        // Room for a small call, which then needs no growing.
        let mut data = Encoded::new(self.buffer());
        data.bytes.reserve(256);
        let encoded = match &encoding {
            Encoding::Pb(writer) => {
                writer.message(py, request_id, object_id, method, answer, args, Some(kwargs), cache, &mut data.bytes)
            }
            // foolscap numbers a call that wants no answer 0.
            Encoding::Foolscap(encoder) => encoder.try_lock().map_err(|_| in_use()).and_then(|mut e| {
                let reqid = if answer { request_id } else { 0 };
                e.call_into(py, reqid, object_id.extract()?, method, args, kwargs, &mut data)
            }),
        };
        // (On success the caller commits the luids given out, or pins them for the reply.)
        match encoded {
            Ok(()) => Ok(data),
            Err(e) => {
                self.recycle(data.bytes);
                self.forget(py, self.tables.undo(mark), false)?;
                Err(e)
            }
        }
    }
}

/// Bytes to queue: copied, or moved when nothing else waits.
enum Bytes<'a> {
    Borrowed(&'a [u8]),
    Owned(&'a mut Encoded),
}

/// What the session tests of both wires stand in for the broker with: a log of the callbacks,
/// futures that note their outcome, and a root with `echo` and `fail`.
#[cfg(test)]
pub(crate) mod test_broker {
    use pyo3::prelude::*;
    use pyo3::types::PyModule;

    const COMMON: &str = "
log = []

class Future:
    def __init__(self):
        self.outcome = None
    def set_result(self, value):
        self.outcome = ('result', value)
    def set_exception(self, exc):
        self.outcome = ('exception', exc)

class Root:
    def remote_echo(self, x):
        return x
    def remote_fail(self, why):
        raise ValueError(why)

def wake(): log.append('wake')
def flush(): log.append('flush')
def dead(): return RuntimeError('not negotiated')
def forget(luid, uncache): log.append(('forget', luid, uncache))
";

    /// A module of `COMMON` followed by a wire's own hooks (`wire_hooks`, Python source).
    pub(crate) fn helpers<'py>(py: Python<'py>, wire_hooks: &str) -> Bound<'py, PyModule> {
        let source = std::ffi::CString::new(format!("{COMMON}{wire_hooks}")).unwrap();
        PyModule::from_code(py, &source, c"helpers.py", c"helpers").unwrap()
    }
}
