//! `pbfast._core.FoolscapSession`: one foolscap (Tub) connection, as bytes in and events out.
//! It owns the whole stream: foolscap's negotiation (the plaintext upgrade, TLS, the hello and
//! decision blocks), then banana inside the TLS session the negotiation hands over — the reading
//! side ([`Reader`]) and the encoder — and, through its base `Session` (`session.rs`), the bytes
//! waiting to be written and the tables. A Tub's connection to itself has neither negotiation
//! nor TLS: banana from the start.
//!
//! `feed` takes what the socket gave: during negotiation it answers with `FS_DECIDE` (we are the
//! master: the broker decides with `decide` or `refuse`s) or `FS_NEGOTIATED` (banana from here
//! on; the peer's details are on the session), after which, as on PB, each chunk is decrypted,
//! its calls run and its answers resolve as it is read (see `foolscap.rs`), and the rest are
//! events. `take` gives what to write: the negotiation's bytes, then TLS records of what waits
//! (a long byte string sealed straight from its bytes object). While a long message comes,
//! `landing` gives the transport room after the bytes held of it to read the rest into, and its
//! records are opened there: received bytes are not copied out of a read buffer first.
//! Refusals raise `NegotiationError`, a failed TLS exchange `TLSError` (its alert then waits in
//! `take`), a broken stream `BananaError` carrying the events read before it.

use std::os::raw::c_char;
use std::sync::{Arc, Mutex, MutexGuard};

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyRuntimeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use super::dispatch::{Dispatch, Flavor};
use super::foolscap::{in_use, ping, Fast, FoolscapEncoderPy, Reader, FS_DECIDE, FS_NEGOTIATED};
use super::metrics::{self, Wire};
use super::schemas::CallLimits;
use super::session::{Encoded, Encoding, Input, SessionPy};
use super::{element_size_set, with_received_mut};
use crate::banana::LARGE;
use crate::foolscap::negotiate::{Negotiation, Setup, Step};
use crate::tls::{Identity, TlsSession};

/// What reads the stream and runs calls: held for the whole of a `feed` or `run`.
struct Incoming {
    reader: Reader,
    /// `max_element_size` was set: a peer that speaks `large` does not raise it.
    element_size_set: bool,
    dispatch: Dispatch,
    /// The target of clid 0 (the Tub's own methods) and what `remoteMessageReceived` is given.
    broker: Py<PyAny>,
    /// The string limits calls are held to as they arrive.
    call_limits: CallLimits,
    /// Where the transport was told to put the next bytes, if it was (see `landing`).
    landing: Option<Landing>,
}

/// A message this long (or longer) being received over TLS has the rest of its records read
/// straight into the buffer that holds it (see `FoolscapSession.landing`).
const LAND_AT: usize = 1 << 16;

/// Room made for the transport after the held bytes of a message: where it starts, where the
/// held bytes ended then, and how much there is.
#[derive(Clone, Copy)]
struct Landing {
    at: usize,
    held_end: usize,
    room: usize,
}

/// The length of `data` if it is the bytes the transport read where `landing` said (a view of
/// that memory from its start, no longer than the room).
fn landed(data: &Bound<'_, PyAny>, landing: Landing) -> Option<usize> {
    let buffer = PyBuffer::<u8>::get(data).ok()?;
    let len = buffer.len_bytes();
    (buffer.buf_ptr() as usize == landing.at && len <= landing.room && buffer.is_c_contiguous()).then_some(len)
}

/// What carries banana: the negotiation, then TLS. Locked briefly, never while Python runs.
struct Link {
    /// Until banana starts, and kept for what it learnt of the peer.
    negotiation: Option<Negotiation>,
    /// Banana's TLS session, once the negotiation hands it over.
    tls: Option<TlsSession>,
    banana: bool,
    closed: bool,
    /// Bytes to send before any of banana's: the end of the negotiation (the decision block).
    early: Vec<u8>,
    /// The encoder, until banana starts (from then on the base session's).
    writer: Option<FoolscapEncoderPy>,
}

#[pyclass(module = "pbfast._core", name = "FoolscapSession", extends = SessionPy, frozen)]
pub struct FoolscapSession {
    incoming: Input<Incoming>,
    link: Mutex<Link>,
}

#[pymethods]
impl FoolscapSession {
    /// A connection whose peer may hold at most `max_refs` of our objects, with the receive
    /// `limits` (`max_depth` bounds what we send too). The broker's callbacks: `wake`, `flush`,
    /// `create_future`, `dead` and `forget` as `Session` takes them; `broker`, the target of
    /// clid 0 (the Tub's own methods) and what `remoteMessageReceived` is given; `unslice`, the
    /// decoder's hook, and `slice`, the encoder's; `is_plain(type)` and `call_limits(type)` as
    /// the dispatch and the call limits ask them (once per type). Negotiation: the Tub's
    /// `identity` (certificate and PKCS#8 key, DER; None for a Tub's connection to itself,
    /// which starts at banana), its `incarnation` and the `extensions` it announces (on a
    /// connection to itself, those the peer speaks: its own); a client
    /// names the TubID it dials (`target`), the `host` it dialled and what its last connection
    /// to that Tub settled (`last_connection`).
    #[new]
    #[pyo3(signature = (
        max_refs, limits, /, *, wake, flush, create_future, dead, forget, broker, unslice, slice,
        is_plain, call_limits, identity=None, incarnation=String::new(), extensions=Vec::new(),
        target=None, host="", last_connection=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        max_refs: usize,
        limits: Option<&Bound<'_, PyDict>>,
        wake: Py<PyAny>,
        flush: Py<PyAny>,
        create_future: Py<PyAny>,
        dead: Py<PyAny>,
        forget: Py<PyAny>,
        broker: Py<PyAny>,
        unslice: Py<PyAny>,
        slice: Py<PyAny>,
        is_plain: Py<PyAny>,
        call_limits: Py<PyAny>,
        identity: Option<(Vec<u8>, Vec<u8>)>,
        incarnation: String,
        extensions: Vec<String>,
        target: Option<&str>,
        host: &str,
        last_connection: Option<(String, i64)>,
    ) -> PyResult<PyClassInitializer<FoolscapSession>> {
        let mut reader = Reader::new(Some(unslice), limits)?;
        let element_size_set = element_size_set(limits)?;
        let mut writer = FoolscapEncoderPy::for_connection(slice, reader.limits().banana.max_depth);
        let speaks_large = extensions.iter().any(|e| e == LARGE);
        let floor = reader.limits().max_index_length as u64;
        let negotiation = match identity {
            None => None,
            Some((certificate, key)) => {
                let identity = py.detach(|| Identity::from_der(&certificate, &key))?;
                let setup = Setup { identity, incarnation, extensions };
                Some(match target {
                    Some(target) => Negotiation::client(&setup, target, host, last_connection)?,
                    None => Negotiation::server(&setup)?,
                })
            }
        };
        let base = SessionPy::new(Wire::Foolscap, max_refs, wake, flush, create_future, dead, forget);
        let banana = negotiation.is_none();
        if banana && speaks_large {
            // A Tub's connection to itself: the peer speaks what we speak.
            large(&mut reader, &mut writer, element_size_set);
        }
        let writer = if banana {
            base.start_encoding(Encoding::Foolscap(Arc::new(Mutex::new(writer))))?;
            None
        } else {
            Some(writer)
        };
        let incoming = Incoming {
            reader,
            element_size_set,
            dispatch: Dispatch::new(is_plain, Flavor::Foolscap),
            broker,
            call_limits: CallLimits::new(call_limits, floor),
            landing: None,
        };
        let link = Link { negotiation, tls: None, banana, closed: false, early: Vec::new(), writer };
        let session = FoolscapSession { incoming: Input::new(incoming, "a Tub session"), link: Mutex::new(link) };
        Ok(PyClassInitializer::from(base).add_subclass(session))
    }

    /// Feed what the socket gave; returns the events it completed (see the module docs).
    fn feed<'py>(slf: &Bound<'py, Self>, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
        let (py, this, session) = (slf.py(), slf.get(), slf.as_super().get());
        let mut guard = this.incoming.hold()?;
        let Some(incoming) = guard.as_mut() else { return Ok(PyList::empty(py)) };
        let events = match incoming.landing.take().and_then(|landing| Some((landing, landed(data, landing)?))) {
            Some((landing, len)) => {
                metrics::received(Wire::Foolscap, len);
                this.receive_landed(py, session, incoming, landing, len)
            }
            None => with_received_mut(data, |bytes| {
                metrics::received(Wire::Foolscap, bytes.len());
                this.receive(py, session, incoming, bytes)
            }),
        };
        events
    }

    /// Where the transport is to read the next bytes, or None (its own buffer, then): while a
    /// message of [`LAND_AT`] bytes or more comes over TLS, room after the bytes held of it,
    /// at least `room` bytes, whose records are opened where they land, their plaintext moved
    /// down onto the end of the message rather than copied out of a read buffer. A writable
    /// `memoryview` of memory the session owns: good until the session is next used, and the
    /// next `feed` is to be given the bytes that came, as a slice of it from its start.
    fn landing<'py>(slf: &Bound<'py, Self>, room: usize) -> PyResult<Option<Bound<'py, PyAny>>> {
        let (py, this) = (slf.py(), slf.get());
        let Some(mut guard) = this.incoming.peek() else { return Ok(None) };
        let Some(incoming) = guard.as_mut() else { return Ok(None) };
        incoming.landing = None;
        if incoming.reader.buffered() < LAND_AT {
            return Ok(None);
        }
        let mut link = this.lock_link()?;
        let Some(tls) = link.tls.as_mut() else { return Ok(None) };
        let Some(buffer) = incoming.reader.held_mut() else { return Ok(None) };
        let Some(cut) = tls.prepare_landing(buffer, room) else { return Ok(None) };
        let held_end = buffer.as_ptr() as usize + buffer.len();
        let landing = Landing { at: held_end + cut, held_end, room: buffer.capacity() - buffer.len() - cut };
        incoming.landing = Some(landing);
        // SAFETY: `landing.room` bytes of the buffer's spare capacity from `landing.at`, which
        // nothing touches before the next use of the session (the transport reads into them
        // at once, then feeds them back).
        unsafe {
            let view = ffi::PyMemoryView_FromMemory(landing.at as *mut c_char, landing.room as isize, ffi::PyBUF_WRITE);
            Bound::from_owned_ptr_or_err(py, view).map(Some)
        }
    }

    /// As master, after `FS_DECIDE`: accept the connection as number `seqnum`. Returns the
    /// events that follows (`FS_NEGOTIATED`, and banana's, if any came with the peer's hello).
    fn decide<'py>(slf: &Bound<'py, Self>, seqnum: i64) -> PyResult<Bound<'py, PyList>> {
        let (py, this, session) = (slf.py(), slf.get(), slf.as_super().get());
        let mut guard = this.incoming.hold()?;
        let Some(incoming) = guard.as_mut() else { return Ok(PyList::empty(py)) };
        let rest = {
            let mut link = this.lock_link()?;
            let link = &mut *link;
            let Some(negotiation) = link.negotiation.as_mut().filter(|_| !link.banana) else {
                return Err(PyRuntimeError::new_err("no decision is awaited: negotiation is over"));
            };
            match negotiation.decide(seqnum)? {
                Step::Negotiated => start_banana(session, link, incoming)?,
                _ => return Ok(PyList::empty(py)),
            }
        };
        let events = negotiated(py, this.read(py, session, incoming, &rest, false));
        events
    }

    /// Refuse the connection for `reason` during negotiation, telling the peer in the current
    /// phase's form (nothing once negotiation has failed: the peer has been told).
    fn refuse(&self, reason: &str) -> PyResult<()> {
        let mut link = self.lock_link()?;
        let link = &mut *link;
        if let Some(negotiation) = link.negotiation.as_mut().filter(|_| !link.banana) {
            negotiation.refuse(reason);
        }
        Ok(())
    }

    /// Run a call the broker held back (an `FS_CALL` event's items), as `feed` would have run
    /// it: returns the events it leads to (`FS_RAISED`, `FS_AWAITING`); a ready answer is
    /// queued. Nothing runs once the input is dropped.
    fn run<'py>(
        slf: &Bound<'py, Self>,
        reqid: i64,
        clid: i64,
        method: &Bound<'py, PyString>,
        args: &Bound<'py, PyTuple>,
        kwargs: &Bound<'py, PyDict>,
    ) -> PyResult<Bound<'py, PyList>> {
        let (py, this, session) = (slf.py(), slf.get(), slf.as_super().get());
        let events = PyList::empty(py);
        let mut guard = this.incoming.hold()?;
        let Some(incoming) = guard.as_mut() else { return Ok(events) };
        let writer = writer(session, py)?;
        let broker = incoming.broker.bind(py);
        let mut fast = Fast::new(session, &writer, &mut incoming.dispatch, broker);
        let mut replies = Encoded::new(session.buffer());
        let kwargs = Some(kwargs).filter(|kw| !kw.is_empty());
        if let Some(event) = fast.call(py, reqid, clid, method, args, kwargs, &mut replies)? {
            events.append(event)?;
        }
        session.append_encoded(py, &mut replies, false)?;
        session.recycle(replies.bytes);
        Ok(events)
    }

    /// Queue `(answer reqid value)`. Raises if it cannot be encoded (the references it gave out
    /// are then taken back, and nothing is queued).
    fn answer(slf: &Bound<'_, Self>, reqid: i64, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let (py, session) = (slf.py(), slf.as_super().get());
        let writer = writer(session, py)?;
        let mut out = Encoded::new(session.buffer());
        session.encode_sending(py, || {
            writer.try_lock().map_err(|_| in_use())?.answer_into(py, reqid, value, &mut out)
        })??;
        session.append_encoded(py, &mut out, false)?;
        session.recycle(out.bytes);
        Ok(())
    }

    /// Queue `(error reqid failure)`, the failure's `state` a dict or (name, value) pairs.
    fn error(slf: &Bound<'_, Self>, reqid: i64, state: &Bound<'_, PyAny>) -> PyResult<()> {
        let (py, session) = (slf.py(), slf.as_super().get());
        let writer = writer(session, py)?;
        let mut out = session.buffer();
        session
            .encode_sending(py, || writer.try_lock().map_err(|_| in_use())?.error_into(py, reqid, state, &mut out))??;
        session.append_buffer(py, &mut out, false)?;
        session.recycle(out);
        Ok(())
    }

    /// Queue a PING numbered `n` (a keepalive).
    #[pyo3(signature = (n=0))]
    fn ping(slf: &Bound<'_, Self>, n: u64) -> PyResult<()> {
        slf.as_super().get().append(slf.py(), &ping(n, false))
    }

    /// Queue the PONG answering PING `n`.
    fn pong(slf: &Bound<'_, Self>, n: u64) -> PyResult<()> {
        slf.as_super().get().append(slf.py(), &ping(n, true))
    }

    /// What to write now, or None: the negotiation's bytes, then TLS records of what waits
    /// (plain for a Tub's connection to itself); a `bytes`, or a read-only `memoryview` of a
    /// large buffer handed over (as `Session.take`).
    fn take<'py>(slf: &Bound<'py, Self>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let (py, this, session) = (slf.py(), slf.get(), slf.as_super().get());
        let mut link = this.lock_link()?;
        let link = &mut *link;
        if !link.banana {
            let negotiation = link.negotiation.as_mut().and_then(|n| n.take_with(|out| bytes(py, &[], out)));
            if let Some(out) = &negotiation {
                metrics::sent(Wire::Foolscap, out.as_bytes().len());
            }
            return Ok(negotiation.map(Bound::into_any));
        }
        let Some(tls) = link.tls.as_mut() else {
            return session.take(py);
        };
        session.drain(py, |parts| tls.write_parts(parts))?;
        if !link.early.is_empty() {
            let early = std::mem::take(&mut link.early);
            let records = tls.take_with(|out| bytes(py, &early, out));
            if let Some(records) = &records {
                metrics::sent(Wire::Foolscap, records.as_bytes().len());
            }
            return Ok(records.map(Bound::into_any));
        }
        // The records go straight into a buffer of the session's, which the transport is handed.
        let records = tls.take_into(session.buffer());
        if records.is_empty() {
            session.recycle(records);
            return Ok(None);
        }
        metrics::sent(Wire::Foolscap, records.len());
        session.hand_off(py, records).map(Some)
    }

    /// End the stream in an orderly way: queue TLS's close_notify (once the upgrade has started
    /// TLS) and return what is to be written now.
    fn close_notify<'py>(slf: &Bound<'py, Self>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let this = slf.get();
        {
            let mut link = this.lock_link()?;
            let link = &mut *link;
            match (&mut link.negotiation, &mut link.tls) {
                (_, Some(tls)) => tls.close(),
                (Some(negotiation), None) => negotiation.close(),
                (None, None) => {}
            }
        }
        Self::take(slf)
    }

    /// Drop what waits to be written and what is held of an incomplete message (the connection
    /// is being cut off and will read nothing more).
    fn discard(slf: &Bound<'_, Self>) {
        let this = slf.get();
        this.incoming.drop_input();
        slf.as_super().get().discard();
        if let Ok(mut link) = this.link.try_lock() {
            link.early.clear();
            if let Some(tls) = link.tls.as_mut() {
                tls.take_with(|_| ());
            }
            if let Some(negotiation) = link.negotiation.as_mut() {
                negotiation.take_with(|_| ());
            }
        }
    }

    /// The connection is gone: `discard`, refuse further calls, empty the tables, and let go of
    /// the broker's callbacks and hooks, the negotiation and the TLS session.
    fn close(slf: &Bound<'_, Self>) {
        let this = slf.get();
        this.incoming.drop_input();
        slf.as_super().get().shut();
        if let Ok(mut link) = this.link.try_lock() {
            let gone = (link.negotiation.take(), link.tls.take(), link.writer.take());
            link.closed = true;
            link.early = Vec::new();
            drop(link);
            drop(gone);
        }
    }

    /// The id the next OPEN we send gets (foolscap numbers a stream's objects; set it to send
    /// bytes encoded elsewhere).
    #[getter]
    fn get_next_open_id(slf: &Bound<'_, Self>) -> PyResult<u64> {
        with_writer(slf, |w| w.get_next_open_id())
    }

    #[setter]
    fn set_next_open_id(slf: &Bound<'_, Self>, value: u64) -> PyResult<()> {
        with_writer(slf, |w| w.set_next_open_id(value))
    }

    /// "banana" once negotiation is over, else the negotiation's phase ("upgrade", "hello",
    /// "deciding", "decision", "done", "failed"); "closed" once the connection is gone.
    #[getter]
    fn phase(&self) -> PyResult<&'static str> {
        let link = self.lock_link()?;
        Ok(match (&link.negotiation, link.banana, link.closed) {
            (_, _, true) => "closed",
            (_, true, _) => "banana",
            (Some(negotiation), false, _) => negotiation.phase().name(),
            (None, false, _) => "closed",
        })
    }

    /// Whether the peer has sent TLS's close_notify.
    #[getter]
    fn peer_closed(&self) -> PyResult<bool> {
        let link = self.lock_link()?;
        Ok(link.tls.as_ref().is_some_and(TlsSession::peer_closed)
            || link.negotiation.as_ref().is_some_and(Negotiation::peer_closed))
    }

    /// The peer's TubID, once its hello is accepted (else None); likewise the other `peer_`
    /// attributes.
    #[getter]
    fn peer_tub_id(&self) -> PyResult<Option<String>> {
        self.peer(|hello| hello.tub_id.clone())
    }

    #[getter]
    fn peer_incarnation(&self) -> PyResult<Option<String>> {
        self.peer(|hello| hello.incarnation.clone())
    }

    /// Whether the peer dialled (its hello says its last connection).
    #[getter]
    fn peer_is_client(&self) -> PyResult<Option<bool>> {
        self.peer(|hello| hello.client)
    }

    /// (master incarnation, seqnum) of the peer's last connection to us, as its hello says.
    #[getter]
    fn peer_last_connection(&self) -> PyResult<Option<(String, i64)>> {
        Ok(self.peer(|hello| hello.last_connection.clone())?.flatten())
    }

    /// The pbfast extensions both sides know; None if the peer is not pbfast (or negotiation
    /// is not over).
    #[getter]
    fn peer_extensions(&self) -> PyResult<Option<Vec<String>>> {
        Ok(self.peer(|hello| hello.pbfast.then(|| hello.extensions.clone()))?.flatten())
    }

    /// The connection's seqnum, once negotiated (else None).
    #[getter]
    fn seqnum(&self) -> PyResult<Option<i64>> {
        let link = self.lock_link()?;
        Ok(link.negotiation.as_ref().and_then(|n| n.outcome()).map(|outcome| outcome.seqnum))
    }

    /// Non-master, once negotiated: (master incarnation, seqnum), for our next hello to that Tub.
    #[getter]
    fn master_connection(&self) -> PyResult<Option<(String, i64)>> {
        let link = self.lock_link()?;
        Ok(link.negotiation.as_ref().and_then(|n| n.outcome()).and_then(|o| o.master_connection.clone()))
    }

    /// The TLS version banana runs over (None before, and on a Tub's connection to itself).
    #[getter]
    fn protocol_version(&self) -> PyResult<Option<&'static str>> {
        Ok(self.lock_link()?.tls.as_ref().and_then(TlsSession::protocol_version))
    }

    /// The TLS cipher suite banana runs over (likewise).
    #[getter]
    fn cipher_suite(&self) -> PyResult<Option<&'static str>> {
        Ok(self.lock_link()?.tls.as_ref().and_then(TlsSession::cipher_suite))
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        // Never blocks: these locks are only held while this object is in use.
        if let Some(incoming) = self.incoming.peek() {
            if let Some(i) = incoming.as_ref() {
                i.reader.traverse(&visit)?;
                i.dispatch.traverse(&visit)?;
                i.call_limits.traverse(&visit)?;
                visit.call(&i.broker)?;
            }
        }
        if let Ok(link) = self.link.try_lock() {
            if let Some(writer) = &link.writer {
                writer.traverse(&visit)?;
            }
        }
        Ok(())
    }
}

impl FoolscapSession {
    /// The events of `bytes` from the socket, in whatever phase the stream is.
    fn receive<'py>(
        &self,
        py: Python<'py>,
        session: &SessionPy,
        incoming: &mut Incoming,
        bytes: &mut [u8],
    ) -> PyResult<Bound<'py, PyList>> {
        // What the link makes of the bytes; it is released before banana is read (Python runs
        // then, and may write).
        let banana = {
            let mut guard = self.lock_link()?;
            let link = &mut *guard;
            if !link.banana {
                let Some(negotiation) = link.negotiation.as_mut() else { return Ok(PyList::empty(py)) };
                // Handshake signatures and decryption need no Python: let other threads run.
                match py.detach(|| negotiation.receive(bytes))? {
                    Step::Pending => return Ok(PyList::empty(py)),
                    Step::Decide => return PyList::new(py, [(FS_DECIDE,)]),
                    Step::Negotiated => Banana::Started(start_banana(session, link, incoming)?),
                }
            } else if let Some(tls) = link.tls.as_mut() {
                // Decrypted into the framer's own buffer, and read from there (nothing is added
                // if the session fails).
                let decrypted = incoming.reader.append_with(|buffer| py.detach(|| tls.feed_in_place(bytes, buffer)));
                if let Err(e) = decrypted {
                    // The session is broken: nothing more goes through it but its alert.
                    session.discard();
                    return Err(e.into());
                }
                Banana::Decrypted
            } else {
                Banana::Plain
            }
        };
        match banana {
            Banana::Started(rest) => negotiated(py, self.read(py, session, incoming, &rest, false)),
            Banana::Plain => self.read(py, session, incoming, bytes, true),
            Banana::Decrypted => self.read(py, session, incoming, &[], true),
        }
    }

    /// [`Self::receive`] for `len` bytes the transport read where `landing` said.
    fn receive_landed<'py>(
        &self,
        py: Python<'py>,
        session: &SessionPy,
        incoming: &mut Incoming,
        landing: Landing,
        len: usize,
    ) -> PyResult<Bound<'py, PyList>> {
        {
            let mut link = self.lock_link()?;
            let lost = || PyRuntimeError::new_err("bytes were read into a buffer the session no longer has");
            let (Some(tls), Some(buffer)) = (link.tls.as_mut(), incoming.reader.held_mut()) else { return Err(lost()) };
            if buffer.as_ptr() as usize + buffer.len() != landing.held_end {
                return Err(lost());
            }
            // SAFETY: the buffer is where `landing` made room in it, unchanged since, and the
            // transport has just written `len` bytes (at most the room) there.
            if let Err(e) = py.detach(|| unsafe { tls.open_landed(buffer, len) }) {
                // The session is broken: nothing more goes through it but its alert.
                session.discard();
                return Err(e.into());
            }
        }
        self.read(py, session, incoming, &[], true)
    }

    /// The events of banana `plaintext`: with the fast path unless the broker holds calls back
    /// or (`fast` false) must see an event first.
    fn read<'py>(
        &self,
        py: Python<'py>,
        session: &SessionPy,
        incoming: &mut Incoming,
        plaintext: &[u8],
        fast: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        let Incoming { reader, dispatch, broker, call_limits, .. } = incoming;
        let broker = broker.bind(py);
        let writer = writer(session, py)?;
        let mut fast = (fast && !session.holding()).then(|| Fast::new(session, &writer, dispatch, broker));
        let tables = session.tables();
        let limits = tables.checks_calls().then_some((call_limits, tables));
        let events = reader.decode(py, plaintext, fast.as_mut(), limits);
        session.set_buffered(reader.buffered());
        events
    }

    /// The link (never held while Python runs, so it is only busy when used from two threads).
    fn lock_link(&self) -> PyResult<MutexGuard<'_, Link>> {
        self.link.try_lock().map_err(|_| PyRuntimeError::new_err("a Tub session was used from two threads at once"))
    }

    fn peer<T>(&self, f: impl FnOnce(&crate::foolscap::negotiate::Hello) -> T) -> PyResult<Option<T>> {
        let link = self.lock_link()?;
        Ok(link.negotiation.as_ref().and_then(Negotiation::peer).map(f))
    }
}

/// Banana bytes to read.
enum Banana {
    /// The plaintext that followed the end of the negotiation.
    Started(Vec<u8>),
    /// What the socket gave (a Tub's connection to itself).
    Plain,
    /// What TLS made of what the socket gave, already in the reader's framer.
    Decrypted,
}

/// Negotiation is over: banana from here on, in the TLS session it hands over (the end of the
/// negotiation is sent first), with the limits the extensions both speak give. The plaintext
/// that followed its last block.
fn start_banana(session: &SessionPy, link: &mut Link, incoming: &mut Incoming) -> PyResult<Vec<u8>> {
    let (Some(negotiation), Some(mut writer)) = (link.negotiation.as_mut(), link.writer.take()) else {
        return Err(PyRuntimeError::new_err("banana has started already"));
    };
    link.early.extend(negotiation.take());
    if negotiation.peer().is_some_and(|hello| hello.pbfast && hello.extensions.iter().any(|e| e == LARGE)) {
        large(&mut incoming.reader, &mut writer, incoming.element_size_set);
    }
    let Some((tls, rest)) = negotiation.finish() else {
        return Err(PyRuntimeError::new_err("negotiation is not over"));
    };
    link.tls = Some(tls);
    link.banana = true;
    session.start_encoding(Encoding::Foolscap(Arc::new(Mutex::new(writer))))?;
    Ok(rest)
}

/// The peer speaks `large`: elements as long as messages either way, and no message longer than
/// our `max_message_size` sent.
fn large(reader: &mut Reader, writer: &mut FoolscapEncoderPy, element_size_set: bool) {
    reader.lift_for_large(element_size_set);
    writer.set_max_message(reader.limits().banana.max_message_size);
}

/// `FS_NEGOTIATED` ahead of the events `read` gave (or of those on its error).
fn negotiated<'py>(py: Python<'py>, read: PyResult<Bound<'py, PyList>>) -> PyResult<Bound<'py, PyList>> {
    match read {
        Ok(events) => {
            events.insert(0, (FS_NEGOTIATED,))?;
            Ok(events)
        }
        Err(e) => {
            if let Ok(events) = e.value(py).getattr("events").and_then(|e| Ok(e.cast_into::<PyList>()?)) {
                events.insert(0, (FS_NEGOTIATED,))?;
            }
            Err(e)
        }
    }
}

/// The session's encoder, once banana has started.
fn writer(session: &SessionPy, py: Python<'_>) -> PyResult<Arc<Mutex<FoolscapEncoderPy>>> {
    match session.encoding(py) {
        Some(Encoding::Foolscap(writer)) => Ok(writer),
        _ => Err(PyRuntimeError::new_err("nothing can be sent before negotiation is over")),
    }
}

/// `f` of the encoder, wherever it is (the link's until banana starts).
fn with_writer<T>(slf: &Bound<'_, FoolscapSession>, f: impl FnOnce(&mut FoolscapEncoderPy) -> T) -> PyResult<T> {
    if let Ok(writer) = writer(slf.as_super().get(), slf.py()) {
        return Ok(f(&mut *writer.try_lock().map_err(|_| in_use())?));
    }
    let mut link = slf.get().lock_link()?;
    link.writer.as_mut().map(f).ok_or_else(|| PyRuntimeError::new_err("the session is closed"))
}

/// `first` then `then` as one `bytes`, or None if both are empty.
fn bytes<'py>(py: Python<'py>, first: &[u8], then: &[u8]) -> Option<Bound<'py, PyBytes>> {
    if first.is_empty() && then.is_empty() {
        return None;
    }
    Some(
        PyBytes::new_with(py, first.len() + then.len(), |buffer| {
            buffer[..first.len()].copy_from_slice(first);
            buffer[first.len()..].copy_from_slice(then);
            Ok(())
        })
        .expect("a buffer of the right size"),
    )
}

/// Two sessions, a client and a server, negotiating and calling each other with every chunk
/// fed a byte at a time (these need an interpreter: `cargo test --features python`, with
/// `python/` on `PYTHONPATH`).
#[cfg(test)]
mod tests {
    use pyo3::prelude::*;
    use pyo3::types::{PyBytes, PyList, PyModule, PyTuple};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    use super::*;
    use crate::py::foolscap::{FS_CALL, FS_RAISED};

    /// The checked-in identities (`tests/vectors/tls/`): the first's TubID sorts after the
    /// second's, so it is the master.
    const MASTER: &str = "ec_p256.pem";
    const SLAVE: &str = "ed25519.pem";

    /// The wire's hooks, after `session::test_broker::COMMON`.
    const WIRE_HOOKS: &str = "
def unslice(kind, *payload): return NotImplemented
def slice(obj): return None
def is_plain(cls): return True
def call_limits(cls): return None
";

    /// (certificate, PKCS#8 key), DER.
    fn identity(file: &str) -> (Vec<u8>, Vec<u8>) {
        let path = format!("{}/tests/vectors/tls/{file}", env!("CARGO_MANIFEST_DIR"));
        let pem = std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
        let certificate = CertificateDer::from_pem_slice(&pem).unwrap();
        let key = PrivateKeyDer::from_pem_slice(&pem).unwrap();
        (certificate.to_vec(), key.secret_der().to_vec())
    }

    fn session<'py>(helpers: &Bound<'py, PyModule>, file: &str, target: Option<&str>) -> Bound<'py, FoolscapSession> {
        let py = helpers.py();
        let h = |name: &str| helpers.getattr(name).unwrap().unbind();
        let init = FoolscapSession::new(
            py,
            100,
            None,
            h("wake"),
            h("flush"),
            h("Future"),
            h("dead"),
            h("forget"),
            py.None(),
            h("unslice"),
            h("slice"),
            h("is_plain"),
            h("call_limits"),
            Some(identity(file)),
            "c0ffee".into(),
            vec!["cacheable".into()],
            target,
            "127.0.0.1",
            None,
        )
        .unwrap();
        Bound::new(py, init).unwrap()
    }

    /// What `from` has to send, fed to `to` a byte at a time: the events `to` gave.
    fn pump<'py>(from: &Bound<'py, FoolscapSession>, to: &Bound<'py, FoolscapSession>) -> Vec<Bound<'py, PyAny>> {
        let py = from.py();
        let taken = from.call_method0("take").unwrap();
        let data: Vec<u8> = if taken.is_none() { Vec::new() } else { taken.extract().unwrap() };
        let mut events = Vec::new();
        for byte in &data {
            let got = to.call_method1("feed", (PyBytes::new(py, std::slice::from_ref(byte)),)).unwrap();
            events.extend(got.cast_into::<PyList>().unwrap().iter());
        }
        events
    }

    fn kinds(events: &[Bound<'_, PyAny>]) -> Vec<u8> {
        events.iter().map(|e| e.get_item(0).unwrap().extract().unwrap()).collect()
    }

    fn call<'py>(session: &Bound<'py, FoolscapSession>, method: &str, arg: &str) -> Bound<'py, PyAny> {
        let py = session.py();
        let args = PyTuple::new(py, [arg]).unwrap();
        session.call_method1("call", (1, method, args, pyo3::types::PyDict::new(py))).unwrap()
    }

    fn outcome<'py>(future: &Bound<'py, PyAny>) -> (String, Bound<'py, PyAny>) {
        future.getattr("outcome").unwrap().extract().unwrap()
    }

    #[test]
    fn two_sessions_negotiate_and_talk_a_byte_at_a_time() {
        Python::initialize();
        Python::attach(|py| {
            let helpers = crate::py::session::test_broker::helpers(py, WIRE_HOOKS);
            let master_id = crate::tls::Identity::from_der(&identity(MASTER).0, &identity(MASTER).1).unwrap().tub_id();
            let slave_id = crate::tls::Identity::from_der(&identity(SLAVE).0, &identity(SLAVE).1).unwrap().tub_id();
            let server = session(&helpers, MASTER, None);
            let client = session(&helpers, SLAVE, Some(&master_id));
            server.call_method1("put", (1, helpers.getattr("Root").unwrap().call0().unwrap())).unwrap();
            assert!(client
                .call_method1("call", (1, "echo", PyTuple::empty(py), pyo3::types::PyDict::new(py)))
                .is_ok_and(|f| outcome(&f).0 == "exception"));

            // Negotiation: the upgrade, TLS and the hellos, until the master (the server) is
            // asked to decide; then its decision ends it on both sides.
            let mut decided = false;
            for _ in 0..20 {
                let events = pump(&client, &server);
                if kinds(&events) == [FS_DECIDE] {
                    assert_eq!(server.getattr("peer_tub_id").unwrap().extract::<String>().unwrap(), slave_id);
                    assert!(server.getattr("peer_is_client").unwrap().extract::<bool>().unwrap());
                    let after = server.call_method1("decide", (7,)).unwrap().cast_into::<PyList>().unwrap();
                    assert_eq!(kinds(&after.iter().collect::<Vec<_>>()), [FS_NEGOTIATED]);
                    decided = true;
                } else {
                    assert!(events.is_empty());
                }
                let events = pump(&server, &client);
                if decided && !events.is_empty() {
                    assert_eq!(kinds(&events), [FS_NEGOTIATED]);
                    break;
                }
            }
            for side in [&client, &server] {
                assert_eq!(side.getattr("phase").unwrap().extract::<String>().unwrap(), "banana");
                assert_eq!(side.getattr("seqnum").unwrap().extract::<i64>().unwrap(), 7);
            }
            let master: (String, i64) = client.getattr("master_connection").unwrap().extract().unwrap();
            assert_eq!(master, ("c0ffee".to_string(), 7));

            // A call runs inside the server's feed, its answer resolves the future inside the
            // client's: no events either side.
            let future = call(&client, "echo", "hello");
            assert!(pump(&client, &server).is_empty());
            assert!(pump(&server, &client).is_empty());
            assert_eq!(outcome(&future).1.extract::<String>().unwrap(), "hello");

            // A method that raised is the broker's to answer ...
            let failing = call(&client, "fail", "no");
            let raised = pump(&client, &server);
            assert_eq!(kinds(&raised), [FS_RAISED]);
            assert!(raised[0].get_item(2).unwrap().is_instance_of::<pyo3::exceptions::PyValueError>());
            assert!(failing.getattr("outcome").unwrap().is_none());

            // ... and a call held back comes as an event, and runs on the same path later.
            server.setattr("holding", true).unwrap();
            let held = call(&client, "echo", "later");
            let events = pump(&client, &server);
            assert_eq!(kinds(&events), [FS_CALL]);
            let items = events[0].cast::<PyTuple>().unwrap().get_slice(1, 6);
            assert!(server.call_method1("run", items).unwrap().cast_into::<PyList>().unwrap().is_empty());
            assert!(pump(&server, &client).is_empty());
            assert_eq!(outcome(&held).1.extract::<String>().unwrap(), "later");

            // Closing: our close_notify ends the peer's stream; the session lets go of the
            // callbacks.
            let bye: Vec<u8> = client.call_method0("close_notify").unwrap().extract().unwrap();
            for byte in &bye {
                server.call_method1("feed", (PyBytes::new(py, std::slice::from_ref(byte)),)).unwrap();
            }
            assert!(server.getattr("peer_closed").unwrap().extract::<bool>().unwrap());
            let wake = helpers.getattr("wake").unwrap();
            let before = wake.get_refcnt();
            client.call_method0("close").unwrap();
            assert_eq!(wake.get_refcnt(), before - 1);
            assert_eq!(client.getattr("phase").unwrap().extract::<String>().unwrap(), "closed");
        });
    }
}
