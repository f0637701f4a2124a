//! `pbfast._core.Sender`: the outgoing side of a PB connection — the bytes waiting to be written
//! and the per-call work of `callRemote` (request id, future, encoding, pins, pending entry) in
//! one crossing of the boundary.
//!
//! Frozen with small locks, never held while Python runs, so a jelly hook or a remote method may
//! send while another send or a `feed` is under way.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Mutex, OnceLock};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

use super::pb::PbEncoderPy;
use super::tables::Tables;

#[pyclass(module = "pbfast._core", name = "Sender", frozen)]
pub struct SenderPy {
    out: Mutex<Vec<u8>>,
    /// `wake()` has been called for the bytes waiting in `out`.
    scheduled: AtomicBool,
    closed: AtomicBool,
    next_request: AtomicI64,
    /// Called with no arguments when bytes start waiting: the broker schedules a flush.
    wake: Py<PyAny>,
    create_future: Py<PyAny>,
    /// The connection's tables: the calls awaiting replies, and the references the calls send.
    tables: Py<Tables>,
    /// `dead()` is the exception for a call that cannot be made (closed, or not ready).
    dead: Py<PyAny>,
    encoder: OnceLock<Py<PbEncoderPy>>,
}

#[pymethods]
impl SenderPy {
    #[new]
    fn new(wake: Py<PyAny>, create_future: Py<PyAny>, tables: Py<Tables>, dead: Py<PyAny>) -> SenderPy {
        SenderPy {
            out: Mutex::new(Vec::new()),
            scheduled: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            next_request: AtomicI64::new(1),
            wake,
            create_future,
            tables,
            dead,
            encoder: OnceLock::new(),
        }
    }

    /// Start encoding calls (once the dialect is known).
    fn start(&self, encoder: Py<PbEncoderPy>) -> PyResult<()> {
        self.encoder.set(encoder).map_err(|_| pyo3::exceptions::PyRuntimeError::new_err("the sender has started"))
    }

    /// Queue `data`; returns the bytes now waiting.
    fn write(&self, py: Python<'_>, data: &[u8]) -> PyResult<usize> {
        self.append(py, data)
    }

    /// Everything waiting, or None.
    fn take<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        let mut out = self.out.lock().expect("sender lock");
        self.scheduled.store(false, Ordering::Relaxed);
        if out.is_empty() {
            return None;
        }
        let bytes = PyBytes::new(py, &out);
        out.clear();
        if out.capacity() > 1 << 20 {
            out.shrink_to(64 << 10);
        }
        Some(bytes)
    }

    /// Bytes waiting to be written.
    #[getter]
    fn size(&self) -> usize {
        self.out.lock().expect("sender lock").len()
    }

    /// Refuse further calls and drop what is waiting (the connection is gone).
    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.out.lock().expect("sender lock").clear();
    }

    /// `callRemote`: a future for the answer to `method(*args, **kwargs)` on `object_id` (with
    /// `cache`, an `observe_*` call on the peer's copy of our Cacheable `object_id`). Failures
    /// to send (dead connection, unsendable arguments) come back in the future.
    #[pyo3(signature = (object_id, method, args, kwargs, cache=false))]
    fn call<'py>(
        &self,
        py: Python<'py>,
        object_id: &Bound<'py, PyAny>,
        method: &str,
        args: &Bound<'py, PyTuple>,
        kwargs: &Bound<'py, PyDict>,
        cache: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let future = self.create_future.bind(py).call0()?;
        let request_id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let tables = self.tables.get();
        let mark = tables.mark();
        let data = match self.encode(py, request_id, object_id, method, true, args, kwargs, cache) {
            Ok(data) => data,
            Err(e) => {
                future.call_method1(pyo3::intern!(py, "set_exception"), (e.into_value(py),))?;
                return Ok(future);
            }
        };
        // Objects of ours that the arguments carried stay until the answer has been read,
        // whatever decrefs the peer sends meanwhile (see RefTable).
        tables.await_reply(request_id, future.clone().unbind(), mark)?;
        self.append(py, &data)?;
        Ok(future)
    }

    /// `callRemoteOnly`: send without asking for an answer. Raises if it cannot be sent.
    fn call_only<'py>(
        &self,
        py: Python<'py>,
        object_id: &Bound<'py, PyAny>,
        method: &str,
        args: &Bound<'py, PyTuple>,
        kwargs: &Bound<'py, PyDict>,
    ) -> PyResult<()> {
        let request_id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let tables = self.tables.get();
        let mark = tables.mark();
        let data = self.encode(py, request_id, object_id, method, false, args, kwargs, false)?;
        tables.commit(mark);
        self.append(py, &data)?;
        Ok(())
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.wake)?;
        visit.call(&self.create_future)?;
        visit.call(&self.tables)?;
        visit.call(&self.dead)?;
        if let Some(e) = self.encoder.get() {
            visit.call(e)?;
        }
        Ok(())
    }
}

impl SenderPy {
    pub(crate) fn append(&self, py: Python<'_>, data: &[u8]) -> PyResult<usize> {
        let size = {
            let mut out = self.out.lock().expect("sender lock");
            out.extend_from_slice(data);
            out.len()
        };
        if !self.scheduled.swap(true, Ordering::Relaxed) {
            self.wake.bind(py).call0()?;
        }
        Ok(size)
    }

    /// The bytes of one call; on failure the references it gave out are taken back.
    #[allow(clippy::too_many_arguments)]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        request_id: i64,
        object_id: &Bound<'py, PyAny>,
        method: &str,
        answer: bool,
        args: &Bound<'py, PyTuple>,
        kwargs: &Bound<'py, PyDict>,
        cache: bool,
    ) -> PyResult<Vec<u8>> {
        let encoder = match self.encoder.get() {
            Some(e) if !self.closed.load(Ordering::Relaxed) => e.get(),
            _ => return Err(PyErr::from_value(self.dead.bind(py).call0()?)),
        };
        let tables = self.tables.get();
        let mark = tables.mark();
        let mut data = Vec::new();
        match encoder.encode_message(py, request_id, object_id, method, answer, args, Some(kwargs), cache, &mut data) {
            Ok(()) => Ok(data),
            Err(e) => {
                tables.undo(py, mark)?;
                Err(e)
            }
        }
    }
}
