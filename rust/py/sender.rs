//! `pbfast._core.Sender`: the outgoing side of a connection, on either wire — the bytes waiting
//! to be written (calls, the fast path's answers, the broker's messages, in the order they were
//! encoded: a foolscap stream numbers its objects in that order) and the per-call work of
//! `callRemote` (request id, future, encoding, pins, pending entry) in one crossing of the
//! boundary. Inside TLS, `take(tls)` encrypts what waits in the same crossing.
//!
//! Frozen with small locks, never held while Python runs, so an encoder hook or a remote method
//! may send while another send or a `feed` is under way.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Mutex, OnceLock};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

use super::foolscap::FoolscapEncoderPy;
use super::pb::PbEncoderPy;
use super::tables::Tables;
use super::tls::TlsSessionPy;

/// The wire's encoder, known once the connection has negotiated.
enum Encoding {
    Pb(Py<PbEncoderPy>),
    Foolscap(Py<FoolscapEncoderPy>),
}

#[pyclass(module = "pbfast._core", name = "Sender", frozen)]
pub struct SenderPy {
    out: Mutex<Vec<u8>>,
    /// An empty buffer, for the next foolscap call to be written in (see `append_owned`).
    spare: Mutex<Vec<u8>>,
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
    encoder: OnceLock<Encoding>,
}

#[pymethods]
impl SenderPy {
    #[new]
    fn new(wake: Py<PyAny>, create_future: Py<PyAny>, tables: Py<Tables>, dead: Py<PyAny>) -> SenderPy {
        SenderPy {
            out: Mutex::new(Vec::new()),
            spare: Mutex::new(Vec::new()),
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

    /// Start encoding calls with `encoder` (a `PbEncoder` or a `FoolscapEncoder`), once the
    /// connection has negotiated.
    fn start(&self, encoder: &Bound<'_, PyAny>) -> PyResult<()> {
        let encoding = if let Ok(pb) = encoder.cast::<PbEncoderPy>() {
            Encoding::Pb(pb.clone().unbind())
        } else {
            Encoding::Foolscap(encoder.cast::<FoolscapEncoderPy>()?.clone().unbind())
        };
        self.encoder.set(encoding).map_err(|_| pyo3::exceptions::PyRuntimeError::new_err("the sender has started"))
    }

    /// Queue `data`; returns the bytes now waiting.
    fn write(&self, py: Python<'_>, data: &[u8]) -> PyResult<usize> {
        self.append(py, data)
    }

    /// Everything waiting, or None; with `tls`, what waits is encrypted there first and the
    /// bytes are the session's (records, and its handshake or alerts).
    #[pyo3(signature = (tls=None))]
    fn take<'py>(
        &self,
        py: Python<'py>,
        tls: Option<&Bound<'py, TlsSessionPy>>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let mut out = self.out.lock().expect("sender lock");
        self.scheduled.store(false, Ordering::Relaxed);
        let taken = match tls {
            None if out.is_empty() => None,
            None => Some(PyBytes::new(py, &out)),
            Some(tls) => {
                let mut tls = tls.try_borrow_mut()?;
                if !out.is_empty() {
                    tls.encrypt(&out)?;
                }
                tls.take_some(py)
            }
        };
        out.clear();
        if out.capacity() > 1 << 20 {
            out.shrink_to(64 << 10);
        }
        Ok(taken)
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
        self.send(py, data)?;
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
        self.send(py, data)?;
        Ok(())
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.wake)?;
        visit.call(&self.create_future)?;
        visit.call(&self.tables)?;
        visit.call(&self.dead)?;
        match self.encoder.get() {
            Some(Encoding::Pb(e)) => visit.call(e)?,
            Some(Encoding::Foolscap(e)) => visit.call(e)?,
            None => {}
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
        self.woken(py)?;
        Ok(size)
    }

    /// [`SenderPy::append`] of a buffer of the caller's, which is left empty: when nothing
    /// waits, the buffers are swapped rather than the bytes copied (the caller gets an empty
    /// buffer of the size of the last that was written).
    pub(crate) fn append_owned(&self, py: Python<'_>, data: &mut Vec<u8>) -> PyResult<usize> {
        let size = {
            let mut out = self.out.lock().expect("sender lock");
            if out.is_empty() {
                std::mem::swap(&mut *out, data);
            } else {
                out.extend_from_slice(data);
            }
            data.clear();
            out.len()
        };
        self.woken(py)?;
        Ok(size)
    }

    /// Ask for a flush of what waits, once.
    fn woken(&self, py: Python<'_>) -> PyResult<()> {
        if !self.scheduled.swap(true, Ordering::Relaxed) {
            self.wake.bind(py).call0()?;
        }
        Ok(())
    }

    /// Queue the bytes of a call: a foolscap call's buffer goes to `out` as it is when nothing
    /// waits, and `out`'s empty one becomes the spare.
    fn send(&self, py: Python<'_>, mut data: Vec<u8>) -> PyResult<()> {
        if let Some(Encoding::Foolscap(_)) = self.encoder.get() {
            self.append_owned(py, &mut data)?;
            let mut spare = self.spare.lock().expect("sender lock");
            if data.capacity() > spare.capacity() && data.capacity() <= 1 << 20 {
                *spare = data;
            }
            return Ok(());
        }
        self.append(py, &data).map(drop)
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
        let encoding = match self.encoder.get() {
            Some(e) if !self.closed.load(Ordering::Relaxed) => e,
            _ => return Err(PyErr::from_value(self.dead.bind(py).call0()?)),
        };
        let tables = self.tables.get();
        let mark = tables.mark();
        let mut data = match encoding {
            Encoding::Pb(_) => Vec::new(),
            Encoding::Foolscap(_) => std::mem::take(&mut *self.spare.lock().expect("sender lock")),
        };
        let encoded = match encoding {
            Encoding::Pb(encoder) => encoder.get().encode_message(
                py,
                request_id,
                object_id,
                method,
                answer,
                args,
                Some(kwargs),
                cache,
                &mut data,
            ),
            // foolscap numbers a call that wants no answer 0.
            Encoding::Foolscap(encoder) => encoder.bind(py).try_borrow_mut().map_err(PyErr::from).and_then(|mut e| {
                let reqid = if answer { request_id } else { 0 };
                e.call_into(py, reqid, object_id.extract()?, method, args, kwargs, &mut data)
            }),
        };
        match encoded {
            Ok(()) => Ok(data),
            Err(e) => {
                tables.undo(py, mark)?;
                Err(e)
            }
        }
    }
}
