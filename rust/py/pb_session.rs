//! `pbfast._core.PbSession`: one Twisted PB connection, as bytes in and events out. It owns the
//! reading side ([`Reader`]), the writing side ([`Writer`], once the dialect is negotiated) and,
//! through its base `Session` (`session.rs`), the bytes waiting to be written and the tables.
//!
//! `feed` reads a chunk and runs the per-call hot path as it reads, so the common calls and
//! answers cost no Python frames of the broker's:
//!
//! - an `answer` to one of our calls resolves its future directly (unless the call pinned
//!   objects, which the broker must release);
//! - every `message` is dispatched here (`Dispatch::call_any`): a plain `Referenceable` runs
//!   `remote_<name>(*args, **kwargs)`, any other object its `remoteMessageReceived`; a result
//!   that is not awaitable and is sent for no particular perspective is encoded as the answer
//!   and queued.
//!
//! The rest — a missing object, an exception, an awaitable result, a result for a perspective,
//! a reply that cannot be encoded, any other command — becomes an event for the broker (see
//! `pb.rs` for the tuples). While the broker holds calls back (flow control) it sets `holding`,
//! and calls come to it as `EV_MESSAGE` events, which it later runs through `run`, this same
//! path; the path stops itself once a chunk's replies reach [`REPLY_FLUSH`] bytes, so the
//! broker can write them and apply back-pressure to the rest. The broker's own messages
//! (answers it awaited, errors, releases) are encoded and queued by `answer`, `error` and
//! `command`.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

pyo3::import_exception!(pbfast.errors, Error);
pyo3::import_exception!(pbfast.errors, ProtocolError);

use super::dispatch::{Dispatch, Flavor, Ran};
use super::metrics::{self, Outcome as Counted, Wire};
use super::pb::{Envelope, Reader, Writer, EV_AWAITING, EV_FLUSH, EV_RAISED, EV_READY, EV_RETURNED};
use super::session::{Encoding, Input, SessionPy};
use super::{element_size_set, limits, with_events, with_received};
use crate::banana::LARGE;
use crate::pb::Received;

/// Reply bytes after which the rest of a chunk goes through the broker (flow control).
pub const REPLY_FLUSH: usize = 1 << 16;

/// What reads the stream and runs calls: held for the whole of a `feed` or `run` (Python runs
/// meanwhile, but no second `feed` can).
struct Incoming {
    reader: Reader,
    dispatch: Dispatch,
    /// What `remoteMessageReceived` is given as the broker.
    broker: Py<PyAny>,
    /// The encoder hook, until the dialect is known and the writer made.
    jelly: Option<Py<PyAny>>,
}

#[pyclass(module = "pbfast._core", name = "PbSession", extends = SessionPy, frozen)]
pub struct PbSession {
    server: bool,
    incoming: Input<Incoming>,
}

#[pymethods]
impl PbSession {
    /// `server`: this side accepted the connection (it offers the dialects, the client picks);
    /// the peer may hold at most `max_refs` of our objects; `limits`, the receive limits
    /// (`max_message_size`, ...: the decoder's defaults for the others). The broker's callbacks: `wake`,
    /// `flush`, `create_future`, `dead` and `forget` as `Session` takes them; `broker`, what
    /// `remoteMessageReceived` is given; `unjelly(tag, items)` builds the values of non-builtin
    /// jelly tags and `jelly(obj)` gives the jelly form of objects jelly does not know;
    /// `is_plain(type)`: whether objects of a type dispatch calls the default way (asked once
    /// per type); `extensions`, the pbfast extensions this side speaks with a pbfast peer
    /// (None: it does not announce itself).
    #[new]
    #[pyo3(signature = (server, max_refs, limits, /, *, wake, flush, create_future, dead, forget, broker, unjelly, jelly, is_plain, extensions=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        server: bool,
        max_refs: usize,
        limits: Option<&Bound<'_, PyDict>>,
        wake: Py<PyAny>,
        flush: Py<PyAny>,
        create_future: Py<PyAny>,
        dead: Py<PyAny>,
        forget: Py<PyAny>,
        broker: Py<PyAny>,
        unjelly: Py<PyAny>,
        jelly: Py<PyAny>,
        is_plain: Py<PyAny>,
        extensions: Option<Vec<String>>,
    ) -> PyResult<PyClassInitializer<PbSession>> {
        let incoming = Incoming {
            reader: Reader::new(server, Some(unjelly), self::limits(limits)?, extensions.as_deref())
                .keep_element_size(element_size_set(limits)?),
            dispatch: Dispatch::new(is_plain, Flavor::Pb),
            broker,
            jelly: Some(jelly),
        };
        let base = SessionPy::new(Wire::Pb, max_refs, wake, flush, create_future, dead, forget);
        let session = PbSession { server, incoming: Input::new(incoming, "a PB session") };
        Ok(PyClassInitializer::from(base).add_subclass(session))
    }

    /// The connection is up: a server queues its offer of dialects.
    fn open(slf: &Bound<'_, Self>) -> PyResult<()> {
        if slf.get().server {
            let offer = slf.get().incoming.hold()?.as_ref().map(|incoming| incoming.reader.offer());
            if let Some(offer) = offer {
                slf.as_super().get().append(slf.py(), &offer)?;
            }
        }
        Ok(())
    }

    /// Feed a chunk; returns the events it completed (an empty list means "need more"), having
    /// run the calls and resolved the answers it could, and queued their replies. Raises
    /// `BananaError`, `ProtocolError` or `NegotiationError` if the connection must end; the
    /// exception carries the events completed before the fault as `.events` (the commands a
    /// peer sent before breaking the stream still count, as they do in Twisted).
    fn feed<'py>(slf: &Bound<'py, Self>, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
        let (py, this, session) = (slf.py(), slf.get(), slf.as_super().get());
        let events = PyList::empty(py);
        let mut guard = this.incoming.hold()?;
        let Some(incoming) = guard.as_mut() else { return Ok(events) };
        let Incoming { reader, dispatch, broker, jelly } = incoming;
        let broker = broker.bind(py);
        let holding = session.holding();
        let result = with_received(data, |bytes| {
            metrics::received(Wire::Pb, bytes.len());
            // The fast path, once the dialect is negotiated.
            let mut fast = match session.encoding(py) {
                Some(Encoding::Pb(writer)) if !holding => Some(Fast::new(session, writer, dispatch, broker)),
                _ => None,
            };
            let mut replies = session.buffer();
            // (The limit of what we send to a peer that speaks `large`.)
            let max_message = reader.limits().max_message_size;
            // Bytes of answers the fast path queued while reading this chunk.
            let mut answered = 0;
            let fed = reader.feed(py, bytes, |received, values| -> PyResult<()> {
                let command = match received {
                    Received::Ready { dialect, send, extensions } => {
                        // The broker handles the event after `feed`: the commands after it in
                        // this chunk come to it as events too (calls to run through `run`).
                        let mut writer = Writer::new(dialect, jelly.take());
                        if extensions.as_ref().is_some_and(|e| e.iter().any(|e| e == LARGE)) {
                            writer = writer.large(max_message);
                        }
                        session.start_encoding(Encoding::Pb(writer))?;
                        session.append(py, &send)?;
                        return events.append((EV_READY, dialect.name(), extensions));
                    }
                    Received::Command(command) => command,
                };
                if let Some(event) = Envelope::new(py, command, values, fast.as_mut(), &mut replies).event()? {
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
                if let Some(f) = fast.as_ref().filter(|_| !replies.is_empty()) {
                    // Each answer is queued as it is made (the session writes every few of them
                    // at once: the peer starts on them while the rest of the chunk runs).
                    answered += replies.len();
                    f.send(py, &mut replies, false)?;
                }
                if answered >= REPLY_FLUSH {
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
            session.recycle(replies);
            fed
        });
        session.set_buffered(reader.buffered());
        drop(guard); // (the input goes now if it was dropped meanwhile)
        with_events(py, events, result)
    }

    /// Run a `message` the broker held back (an `EV_MESSAGE` event's items), as `feed` would
    /// have run it: returns the events it leads to (`EV_RAISED`, `EV_AWAITING`,
    /// `EV_RETURNED`); a plain answer is queued. Nothing runs once the input is dropped.
    #[allow(clippy::too_many_arguments)]
    fn run<'py>(
        slf: &Bound<'py, Self>,
        request_id: i64,
        object_id: &Bound<'py, PyAny>,
        method: &Bound<'py, PyString>,
        answer: bool,
        args: &Bound<'py, PyTuple>,
        kwargs: &Bound<'py, PyDict>,
    ) -> PyResult<Bound<'py, PyList>> {
        let (py, this, session) = (slf.py(), slf.get(), slf.as_super().get());
        let events = PyList::empty(py);
        let mut guard = this.incoming.hold()?;
        let Some(incoming) = guard.as_mut() else { return Ok(events) };
        let Some(Encoding::Pb(writer)) = session.encoding(py) else {
            return Err(ProtocolError::new_err("a call arrived before the dialect was negotiated"));
        };
        let broker = incoming.broker.bind(py);
        let mut fast = Fast::new(session, writer, &mut incoming.dispatch, broker);
        let mut replies = session.buffer();
        let kwargs = Some(kwargs).filter(|kw| !kw.is_empty());
        if let Outcome::Event(event) =
            fast.message(py, request_id, object_id, method, answer, args, kwargs, &mut replies)?
        {
            events.append(event)?;
        }
        fast.send(py, &mut replies, false)?;
        session.recycle(replies);
        Ok(events)
    }

    /// Queue `["answer", request_id, value]`. Raises if it cannot be encoded (the references it
    /// gave out are then taken back, and nothing is queued).
    fn answer(slf: &Bound<'_, Self>, request_id: i64, value: &Bound<'_, PyAny>) -> PyResult<()> {
        reply(slf, b"answer", request_id, value)
    }

    /// Queue `["error", request_id, failure]`, as `answer` does.
    fn error(slf: &Bound<'_, Self>, request_id: i64, failure: &Bound<'_, PyAny>) -> PyResult<()> {
        reply(slf, b"error", request_id, failure)
    }

    /// Queue `[command, item]` with a raw banana item (an int luid, bytes): decref, decache,
    /// uncache, didNotUnderstand; `count` copies back to back.
    #[pyo3(signature = (command, item, count=1))]
    fn command(slf: &Bound<'_, Self>, command: &[u8], item: &Bound<'_, PyAny>, count: usize) -> PyResult<()> {
        let (py, session) = (slf.py(), slf.as_super().get());
        let writer = writer(slf)?;
        let mut out = Vec::new();
        writer.command(command, item, count, &mut out)?;
        session.append(py, &out)
    }

    /// The negotiated dialect ("pb" or "none"), or None before negotiation ends.
    #[getter]
    fn dialect(slf: &Bound<'_, Self>) -> Option<&'static str> {
        match slf.as_super().get().encoding(slf.py()) {
            Some(Encoding::Pb(writer)) => Some(writer.dialect().name()),
            _ => None,
        }
    }

    /// Drop what waits to be written and what is held of an incomplete expression (the
    /// connection is being cut off and will read nothing more).
    fn discard(slf: &Bound<'_, Self>) {
        slf.get().incoming.drop_input();
        slf.as_super().get().discard();
    }

    /// The connection is gone: `discard`, refuse further calls, empty the tables, and let go of
    /// the broker's callbacks and hooks.
    fn close(slf: &Bound<'_, Self>) {
        slf.get().incoming.drop_input();
        slf.as_super().get().shut();
    }

    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        // Never blocks: a feed holds the lock only while this object is alive and in use.
        if let Some(incoming) = self.incoming.peek() {
            if let Some(i) = incoming.as_ref() {
                i.reader.traverse(&visit)?;
                i.dispatch.traverse(&visit)?;
                visit.call(&i.broker)?;
                if let Some(jelly) = &i.jelly {
                    visit.call(jelly)?;
                }
            }
        }
        Ok(())
    }
}

/// The session's writer, once the dialect is negotiated.
fn writer(slf: &Bound<'_, PbSession>) -> PyResult<Writer> {
    match slf.as_super().get().encoding(slf.py()) {
        Some(Encoding::Pb(writer)) => Ok(writer),
        _ => Err(ProtocolError::new_err("nothing can be sent before the dialect is negotiated")),
    }
}

/// Queue `[command, request_id, value]`, the references it gives out committed, or taken back
/// if it fails (nothing queued).
fn reply(slf: &Bound<'_, PbSession>, command: &[u8], request_id: i64, value: &Bound<'_, PyAny>) -> PyResult<()> {
    let (py, session) = (slf.py(), slf.as_super().get());
    let writer = writer(slf)?;
    let mut out = session.buffer();
    session.encode_sending(py, || writer.reply(py, command, request_id, value, &mut out))??;
    session.append_buffer(py, &mut out, false)?;
    session.recycle(out);
    Ok(())
}

/// The hot path of one chunk (or one held call): the session's tables and writer, and the
/// dispatch.
pub struct Fast<'py, 'a> {
    session: &'a SessionPy,
    writer: Writer,
    dispatch: &'a mut Dispatch,
    /// What `remoteMessageReceived` is given as the broker.
    broker: &'a Bound<'py, PyAny>,
}

impl Drop for Fast<'_, '_> {
    fn drop(&mut self) {
        // The chunk is done: what it counted goes to the metrics.
        self.dispatch.tally.save();
    }
}

/// What the fast path did with a command.
pub enum Outcome<'py> {
    /// Fully handled: nothing for the broker.
    Done,
    /// An event for the broker instead.
    Event(Bound<'py, PyAny>),
    /// Not for the fast path (an answer the broker must settle): the broker gets the ordinary
    /// event.
    Declined,
}

impl<'py, 'a> Fast<'py, 'a> {
    fn new(session: &'a SessionPy, writer: Writer, dispatch: &'a mut Dispatch, broker: &'a Bound<'py, PyAny>) -> Self {
        Fast { session, writer, dispatch, broker }
    }

    /// `["answer", request_id, value]`: resolve the call's future.
    pub fn answer(&mut self, py: Python<'py>, request_id: i64, value: &Bound<'py, PyAny>) -> PyResult<Outcome<'py>> {
        let resolved = self.session.resolve(py, request_id, value, &mut self.dispatch.tally)?;
        Ok(if resolved { Outcome::Done } else { Outcome::Declined })
    }

    /// `["message", ...]`: run the method; a result sent for no particular perspective is
    /// encoded into `replies`, anything else becomes an event for the broker.
    #[allow(clippy::too_many_arguments)]
    pub fn message(
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
        let raised = |e: PyErr| -> PyResult<Outcome<'py>> {
            let event = (EV_RAISED, request_id, answer, method_name, e.into_value(py));
            Ok(Outcome::Event(event.into_pyobject(py)?.into_any()))
        };
        let started = metrics::start();
        let Some(target) = self.session.tables().object(py, object_id) else {
            self.count(method_name, Counted::Error, started, false);
            return raised(Error::new_err("Invalid Object ID"));
        };
        let result = match self.dispatch.call_any(py, self.broker, &target, method_name, args, kwargs)? {
            Ran::Returned(result, None) => result,
            Ran::Returned(result, perspective) => {
                self.count(method_name, Counted::Ok, started, true);
                let event = (EV_RETURNED, request_id, answer, method_name, result, perspective);
                return Ok(Outcome::Event(event.into_pyobject(py)?.into_any()));
            }
            // (The broker counts it once it is done.)
            Ran::Awaiting(awaitable, perspective) => {
                let event = (EV_AWAITING, request_id, answer, method_name, awaitable, perspective);
                return Ok(Outcome::Event(event.into_pyobject(py)?.into_any()));
            }
            Ran::Raised(e) => {
                if started.is_some() {
                    self.count(method_name, Counted::Error, started, metrics::ran(py, &e));
                }
                return raised(e);
            }
        };
        if !answer {
            self.count(method_name, Counted::Ok, started, true);
            return Ok(Outcome::Done);
        }
        let writer = &self.writer;
        match self.session.encode_sending(py, || writer.reply(py, b"answer", request_id, &result, replies))? {
            Ok(()) => {
                self.count(method_name, Counted::Ok, started, true);
                Ok(Outcome::Done)
            }
            Err(e) => {
                self.count(method_name, Counted::Error, started, true);
                raised(e)
            }
        }
    }

    /// Count a call that ended here, if metrics were on when it `started`.
    #[inline(always)]
    fn count(&mut self, method: &Bound<'py, PyString>, outcome: Counted, started: Option<u64>, ran: bool) {
        if started.is_some() {
            self.dispatch.tally.served(Wire::Pb, method, outcome, started, ran);
        }
    }

    /// Queue the answers so far; with `flush`, also ask the broker to write them now (an
    /// event), before it handles the rest of the chunk.
    fn send(&self, py: Python<'py>, replies: &mut Vec<u8>, flush: bool) -> PyResult<Option<Bound<'py, PyAny>>> {
        if !replies.is_empty() {
            self.session.append_buffer(py, replies, true)?;
        }
        Ok(if flush { Some((EV_FLUSH,).into_pyobject(py)?.into_any()) } else { None })
    }
}

/// A client and a server session driven by hand, every chunk fed a byte at a time (these need an
/// interpreter: `cargo test --features python`, with `python/` on `PYTHONPATH`).
#[cfg(test)]
mod tests {
    use pyo3::prelude::*;
    use pyo3::types::{PyBytes, PyList, PyModule, PyTuple};

    use super::*;
    use crate::banana::Dialect;
    use crate::py::pb::{EV_MESSAGE, EV_READY};

    /// The wire's hooks, after `session::test_broker::COMMON`.
    const WIRE_HOOKS: &str = "
def unjelly(tag, items): return NotImplemented
def jelly(obj): return None
def is_plain(cls): return True
";

    fn session<'py>(helpers: &Bound<'py, PyModule>, server: bool) -> Bound<'py, PbSession> {
        let py = helpers.py();
        let h = |name: &str| helpers.getattr(name).unwrap().unbind();
        let init = PbSession::new(
            server,
            100,
            None,
            h("wake"),
            h("flush"),
            h("Future"),
            h("dead"),
            h("forget"),
            py.None(),
            h("unjelly"),
            h("jelly"),
            h("is_plain"),
            None,
        )
        .unwrap();
        Bound::new(py, init).unwrap()
    }

    /// The events of `data`, fed one byte at a time.
    fn feed_bytewise<'py>(session: &Bound<'py, PbSession>, data: &[u8]) -> Vec<Bound<'py, PyAny>> {
        let py = session.py();
        let mut events = Vec::new();
        for byte in data {
            let got = session.call_method1("feed", (PyBytes::new(py, std::slice::from_ref(byte)),)).unwrap();
            events.extend(got.cast_into::<PyList>().unwrap().iter());
        }
        events
    }

    fn take(session: &Bound<'_, PbSession>) -> Vec<u8> {
        let taken = session.call_method0("take").unwrap();
        if taken.is_none() {
            return Vec::new();
        }
        taken.extract().unwrap()
    }

    fn call<'py>(session: &Bound<'py, PbSession>, method: &str, arg: &str) -> Bound<'py, PyAny> {
        let py = session.py();
        let args = PyTuple::new(py, [arg]).unwrap();
        session.call_method1("call", (PyBytes::new(py, b"root"), method, args, pyo3::types::PyDict::new(py))).unwrap()
    }

    fn kinds(events: &[Bound<'_, PyAny>]) -> Vec<u8> {
        events.iter().map(|e| e.get_item(0).unwrap().extract().unwrap()).collect()
    }

    fn outcome<'py>(future: &Bound<'py, PyAny>) -> (String, Bound<'py, PyAny>) {
        future.getattr("outcome").unwrap().extract().unwrap()
    }

    #[test]
    fn two_sessions_talk_a_byte_at_a_time() {
        Python::initialize();
        Python::attach(|py| {
            let helpers = crate::py::session::test_broker::helpers(py, WIRE_HOOKS);
            let log = helpers.getattr("log").unwrap();
            let (client, server) = (session(&helpers, false), session(&helpers, true));
            server
                .call_method1("put", (PyBytes::new(py, b"root"), helpers.getattr("Root").unwrap().call0().unwrap()))
                .unwrap();

            // Negotiation: the offer, the client's choice and version, the server's version.
            server.call_method0("open").unwrap();
            let offer = take(&server);
            assert_eq!(offer, crate::pb::Session::new(true, crate::banana::Limits::twisted(), None).offer());
            let ready = feed_bytewise(&client, &offer);
            assert_eq!(kinds(&ready), [EV_READY]);
            assert_eq!(ready[0].get_item(1).unwrap().extract::<String>().unwrap(), "pb");
            assert_eq!(kinds(&feed_bytewise(&server, &take(&client))), [EV_READY]);
            assert!(feed_bytewise(&client, &take(&server)).is_empty());
            assert_eq!(client.getattr("dialect").unwrap().extract::<String>().unwrap(), "pb");

            // A call runs inside the server's feed, and its answer resolves the future inside the
            // client's: no events either side, and the answer is the codec's bytes.
            let future = call(&client, "echo", "hello");
            assert!(feed_bytewise(&server, &take(&client)).is_empty());
            let answer = take(&server);
            let mut expected = Vec::new();
            let value = pyo3::types::PyString::new(py, "hello");
            Writer::new(Dialect::Pb, None).reply(py, b"answer", 1, &value, &mut expected).unwrap();
            assert_eq!(answer, expected);
            assert!(feed_bytewise(&client, &answer).is_empty());
            let (how, value) = outcome(&future);
            assert_eq!((how.as_str(), value.extract::<String>().unwrap().as_str()), ("result", "hello"));

            // What the broker must finish comes out as an event: a method that raised, ...
            let failing = call(&client, "fail", "x");
            let raised = feed_bytewise(&server, &take(&client));
            assert_eq!(kinds(&raised), [EV_RAISED]);
            assert!(raised[0].get_item(4).unwrap().is_instance_of::<pyo3::exceptions::PyValueError>());
            // (The broker sends the failure; the client's broker settles an error.)
            server.call_method1("error", (2, "refused")).unwrap();
            assert_eq!(kinds(&feed_bytewise(&client, &take(&server))), [crate::py::pb::EV_ERROR]);
            assert!(failing.getattr("outcome").unwrap().is_none());

            // ... and a call held back: it comes as an event, and runs on the same path later.
            server.setattr("holding", true).unwrap();
            let held = call(&client, "echo", "later");
            let events = feed_bytewise(&server, &take(&client));
            assert_eq!(kinds(&events), [EV_MESSAGE]);
            assert!(take(&server).is_empty());
            let items = events[0].cast::<PyTuple>().unwrap().get_slice(1, 7);
            assert!(server.call_method1("run", items).unwrap().cast_into::<PyList>().unwrap().is_empty());
            assert!(feed_bytewise(&client, &take(&server)).is_empty());
            assert_eq!(outcome(&held).1.extract::<String>().unwrap(), "later");
            server.setattr("holding", false).unwrap();

            // Bytes waiting wake the broker once; calls are written when it flushes, but the
            // answers made while a chunk is read ask it to write at once every EARLY_WRITE.
            log.call_method0("clear").unwrap();
            let futures: Vec<_> = (0..super::super::session::EARLY_WRITE).map(|_| call(&client, "echo", "x")).collect();
            let said: Vec<String> = log.extract().unwrap();
            assert_eq!(said, ["wake"]);
            let calls = take(&client);
            log.call_method0("clear").unwrap();
            let fed = server.call_method1("feed", (PyBytes::new(py, &calls),)).unwrap();
            assert!(fed.cast_into::<PyList>().unwrap().is_empty());
            let said: Vec<String> = log.extract().unwrap();
            assert_eq!(said, ["wake", "flush"]);
            assert!(feed_bytewise(&client, &take(&server)).is_empty());
            assert!(futures.iter().all(|f| outcome(f).1.extract::<String>().unwrap() == "x"));

            // Closed, a session lets go of the broker's callbacks and refuses calls.
            let wake = helpers.getattr("wake").unwrap();
            let before = wake.get_refcnt();
            client.call_method0("close").unwrap();
            assert_eq!(wake.get_refcnt(), before - 1);
            let args = PyTuple::empty(py);
            let refused = client.call_method1("call", (1, "echo", args, pyo3::types::PyDict::new(py)));
            assert!(refused.is_err());
            assert!(take(&client).is_empty());
        });
    }
}
