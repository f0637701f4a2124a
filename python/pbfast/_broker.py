"""One PB connection's dispatch: request ids and answer futures, the object tables, and the
jelly hooks that turn Referenceables into ``remote``/``local`` references and back.

The Rust core does the bytes and the per-call hot path: `PbDecoder` turns each received chunk
into event tuples, and itself runs plain calls and resolves plain answers (its fast path, with
this broker's tables); `Sender` makes each outgoing call in one crossing and gathers the bytes
written in one loop iteration; `PbEncoder` encodes replies and commands. The counts of our
objects the peer holds live in a `RefTable` (Rust); the objects themselves live here, by luid.
Everything else — errors, coroutine results, references, flow control — is handled here.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from . import _core
from ._core import (
    EV_ANSWER,
    EV_AWAITING,
    EV_BAD_CALL,
    EV_BAD_REPLY,
    EV_CACHEMESSAGE,
    EV_DECACHE,
    EV_DECREF,
    EV_DID_NOT_UNDERSTAND,
    EV_ERROR,
    EV_FLUSH,
    EV_MESSAGE,
    EV_RAISED,
    EV_READY,
    EV_UNCACHE,
    EV_UNKNOWN,
)
from ._failure import FAILURE_TAG, CopyableFailure, remote_error
from .cacheable import Cacheable, RemoteCache, RemoteCacheObserver
from .copyable import Copyable, make_copy, unjellyableFor
from .errors import (
    DeadReferenceError,
    Error,
    InsecureJelly,
    JellyError,
    NoSuchMethod,
    PBConnectionLost,
    PbfastError,
    RemoteError,
    qualified_name,
)
from .referenceable import Referenceable, RemoteReference, Viewable, ViewPoint

__all__ = ["Broker", "BrokerOptions"]

log = logging.getLogger("pbfast")

ROOT = b"root"
# Events that ask us for work and a reply: held back while the peer is not reading.
_CALLS = frozenset({EV_MESSAGE, EV_CACHEMESSAGE, EV_BAD_CALL, EV_UNKNOWN, EV_AWAITING})
# Replies queued while handling one chunk go out once this many bytes are waiting.
FLUSH_AT = 1 << 16


@dataclass(frozen=True, slots=True)
class BrokerOptions:
    """Per-connection options, given to `pbfast.serve` and `pbfast.connect` as keywords.

    Attributes:
        unsafeTracebacks: send the full traceback of a failing remote method to the caller
            (off by default: tracebacks reveal server internals).
        max_refs: how many of our objects the peer may hold references to at once.
        max_proxies: how many of the peer's objects (references and cached copies) it may
            make us hold at once.
        backlog: calls kept waiting while the peer is not reading our replies; past it we stop
            reading from the peer.
        max_element_size, max_message_size, max_depth, max_header_length: receive limits
            (banana list/string length, bytes per message, nesting depth, header bytes).
    """

    unsafeTracebacks: bool = False
    max_refs: int = 1 << 16
    max_proxies: int = 1 << 16
    backlog: int = 1024
    limits: dict[str, int] = field(default_factory=dict)

    LIMIT_NAMES = ("max_element_size", "max_message_size", "max_depth", "max_header_length")

    @classmethod
    def from_keywords(cls, options: dict[str, Any]) -> BrokerOptions:
        """Build from ``**options``; unknown names raise TypeError."""
        known = {f.name for f in fields(cls)} - {"limits"}
        plain = {k: v for k, v in options.items() if k in known}
        limits = {k: v for k, v in options.items() if k in cls.LIMIT_NAMES}
        unknown = set(options) - set(plain) - set(limits)
        if unknown:
            names = ", ".join(sorted(known | set(cls.LIMIT_NAMES)))
            raise TypeError(f"unknown option(s) {', '.join(sorted(unknown))} (known: {names})")
        return cls(**plain, limits=limits)


DEFAULT_OPTIONS = BrokerOptions()


class Broker:
    """The PB state of one connection. Created by the connection's protocol; users meet it as
    ``ref.broker``.

    Args:
        transport: the asyncio transport to write to.
        server: True on the side that accepted the connection.
        options: connection options.
    """

    def __init__(
        self,
        transport: asyncio.BaseTransport,
        *,
        server: bool,
        options: BrokerOptions = DEFAULT_OPTIONS,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.transport = transport
        self.server = server
        self.options = options
        self._decoder = _core.PbDecoder(server, hook=self._unjelly, **options.limits)
        self._encoder: _core.PbEncoder | None = None
        self._buffered = 0
        self._receiving = False
        # Calls we made: request id -> (future, luids pinned by its arguments).
        self._pending: dict[int, tuple[asyncio.Future[Any], list[int] | None]] = {}
        # Our objects the peer may name: luid (or b"root") -> object; counts in `_refs`.
        self._refs = _core.RefTable(options.max_refs)
        self._objects: dict[int | bytes, Any] = {}
        # Luids given out by the encoder hook, as a stack: an encode notes the length before
        # it starts and takes (or, if it fails, takes back) what was added after it.
        self._sent: list[int] = []
        # Outgoing bytes (written together once per loop iteration) and calls out.
        self._sender = _core.Sender(
            self._wake,
            self._loop.create_future,
            self._pending,
            self._refs,
            self._sent,
            self._undo_sends,
            self._dead,
        )
        self.call = self._sender.call
        self.call_only = self._sender.call_only
        # Our Cacheables the peer holds copies of: luid -> (cacheable, observer); counts in `_refs`.
        self._caches: dict[int, tuple[Cacheable, RemoteCacheObserver]] = {}
        # ViewPoints while the peer holds them, by (id(perspective), id(viewable)).
        self._viewpoints: dict[tuple[int, int], ViewPoint] = {}
        # Callbacks for when the peer lets go of an object (avatars' logouts), by id(object).
        self._logouts: dict[int, list[Callable[[], object]]] = {}
        # The perspective results are being jellied for (see `_answer`).
        self._perspective: Any = None
        # The peer's objects we hold: luid -> proxy, and its Cacheables' copies: luid -> copy.
        self._proxies: weakref.WeakValueDictionary[int | bytes, RemoteReference] = (
            weakref.WeakValueDictionary()
        )
        self._remote_caches: weakref.WeakValueDictionary[int, RemoteCache] = weakref.WeakValueDictionary()
        # Copies we let go of, until the owner's uncache: luid -> (class, state).
        self._dying_caches: dict[int, tuple[type, dict]] = {}
        # Queued decrefs and decaches: (command, luid, count).
        self._decrefs: list[tuple[bytes, int | bytes, int]] = []
        # Calls received while the peer is not reading our replies (flow control).
        self._backlog: collections.deque[tuple] = collections.deque()
        self._writing_paused = False
        self._reading_paused = False
        # Calls wait in the backlog while this is set: writing is paused, or `backlog` calls
        # are still running.
        self._held = False
        self._fast = True  # the decoder's fast path is on (see data_received)
        self._writable: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._watched: dict[int, RemoteReference] = {}
        self._disconnect_callbacks: list[Callable[[], object]] = []
        self.ready: asyncio.Future[str] = self._loop.create_future()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self.disconnected = False
        self._reason: BaseException | None = None
        if server:
            self._write_now(_core.PbDecoder.offer())
        self._handlers = {
            EV_MESSAGE: self._on_message,
            EV_CACHEMESSAGE: self._on_cachemessage,
            EV_ANSWER: self._on_answer,
            EV_ERROR: self._on_error,
            EV_BAD_CALL: self._on_bad_call,
            EV_BAD_REPLY: self._on_bad_reply,
            EV_DECREF: self._on_decref,
            EV_DECACHE: self._on_decache,
            EV_UNCACHE: self._on_uncache,
            EV_READY: self._on_ready,
            EV_UNKNOWN: self._on_unknown,
            EV_DID_NOT_UNDERSTAND: self._on_did_not_understand,
            EV_RAISED: self._on_raised,
            EV_AWAITING: self._on_awaiting,
            EV_FLUSH: self._on_flush,
        }

    # ------------------------------------------------------------------ public

    def root(self) -> RemoteReference:
        """The peer's root object (``"root"``); not reference-counted, as in Twisted."""
        proxy = self._proxies.get(ROOT)
        if proxy is None:
            proxy = self._proxies[ROOT] = RemoteReference(self, ROOT)
        return proxy

    def serve_root(self, root: Referenceable) -> None:
        """Serve `root` under the name ``"root"`` on this connection."""
        self._objects[ROOT] = root

    async def close(self) -> None:
        """Close the connection (after writing what is queued) and wait until it is gone."""
        if not self.disconnected:
            self._flush()
            self.transport.close()
        await asyncio.shield(self.closed)

    def notifyOnDisconnect(self, callback: Callable[[], object]) -> None:
        """Run ``callback()`` when the connection ends."""
        self._disconnect_callbacks.append(callback)

    def dontNotifyOnDisconnect(self, callback: Callable[[], object]) -> None:
        """Undo `notifyOnDisconnect` (ValueError if `callback` was not registered)."""
        self._disconnect_callbacks.remove(callback)

    async def wait_writable(self) -> None:
        """Wait until the transport accepts writes again (the peer is reading); returns at once
        when it is not paused. Raises `DeadReferenceError` if the connection is gone."""
        while self._writing_paused and not self.disconnected:
            if self._writable is None:
                self._writable = self._loop.create_future()
            await asyncio.shield(self._writable)
        if self.disconnected:
            raise DeadReferenceError("the connection is closed")

    def statistics(self) -> dict[str, int]:
        """Table sizes, for monitoring and tests: ``objects`` (ours the peer holds references
        or cached copies of, root excluded), ``proxies`` (references to the peer's objects we
        hold), ``caches`` (our Cacheables the peer holds copies of), ``cached`` (copies of the
        peer's Cacheables we hold), ``pending`` (our calls awaiting replies),
        ``backlog`` (received calls waiting for the peer to read), ``buffered`` (bytes held for
        an incomplete message)."""
        return {
            "objects": len(self._refs),
            "proxies": sum(1 for luid in self._proxies.keys() if luid != ROOT),
            "caches": len(self._caches),
            "cached": len(self._remote_caches),
            "pending": len(self._pending),
            "backlog": len(self._backlog),
            "buffered": self._buffered,
        }

    def __repr__(self) -> str:
        peer = self.transport.get_extra_info("peername")
        state = "closed" if self.disconnected else "open"
        return f"<Broker {'server' if self.server else 'client'} {state} peer={peer!r}>"

    # ------------------------------------------------------------------ calls out

    # `call(objid, method, args, kwargs) -> future` and `call_only(...)` are the Rust sender's
    # (set in __init__): callRemote costs one crossing.

    def _dead(self) -> DeadReferenceError:
        if self.disconnected:
            return DeadReferenceError("Calling Stale Broker (the connection is closed)")
        return DeadReferenceError("the connection has not finished its handshake")

    def _encode(self, encode: Callable[..., bytes], *args: Any) -> bytes:
        """``encode(*args)``, taking back the references it gave out if it fails."""
        sent = self._sent
        mark = len(sent)
        try:
            data = encode(*args)
        except BaseException:
            self._undo_sends(mark)
            raise
        del sent[mark:]
        return data

    # ------------------------------------------------------------------ bytes in and out

    def data_received(self, data: bytes) -> None:
        if self.disconnected:
            return
        decoder = self._decoder
        # The decoder runs plain calls itself unless we are holding calls back.
        fast = not (self._held or self._backlog)
        if fast is not self._fast:
            decoder.fast = self._fast = fast
        self._receiving = True  # what is sent meanwhile goes out once, at the end
        try:
            events = decoder.feed(data)
            broken = None
        except Exception as exc:
            # The stream is broken at some point; the commands complete before it still count,
            # but a handshake it breaks has failed.
            events = getattr(exc, "events", None) or []
            broken = exc
            if not self.ready.done():
                self.ready.set_exception(exc)
                self.ready.exception()
        # Remote methods run inside `feed` may ask for statistics(): keep the figure here.
        self._buffered = decoder.buffered
        self._handle(events)
        if broken is not None and not self.disconnected:
            self._abort(broken, f"{broken}; closing the connection")

    def _handle(self, events: list[tuple]) -> None:
        """Dispatch received events in order. Calls are held back (see `_defer`) while the
        peer is not reading our replies, or too many of its calls are still running."""
        handlers = self._handlers
        event = None
        self._receiving = True
        try:
            for event in events:
                if (self._backlog or self._held) and event[0] in _CALLS:
                    self._defer(event)
                    continue
                handlers[event[0]](event)
                if self._sender.size >= FLUSH_AT:
                    self._flush()  # may pause writing: later calls then wait
        except Exception as exc:
            self._internal_error(exc, event)
        finally:
            self._receiving = False
            self._flush()

    def _internal_error(self, exc: Exception, event: tuple | None) -> None:
        # An exception escaping a handler is a bug here or in a hook; the connection's state
        # is unknown, so it ends (other connections are unaffected).
        log.error("%r: internal error while handling %s", self, _short(event), exc_info=exc)
        self._abort(exc, "internal error; closing the connection")

    def _abort(self, reason: BaseException, message: str) -> None:
        if not self.disconnected and self._reason is None:
            log.warning("%r: %s", self, message)
            self._reason = reason
        self._sender.take()
        self.transport.abort()

    def _write(self, data: bytes) -> None:
        self._sender.write(data)

    def _write_now(self, data: bytes) -> None:
        self._sender.write(data)
        self._flush()

    def _wake(self) -> None:
        """Bytes are waiting: write them at the end of this loop iteration (or of the chunk
        being handled), together with whatever else is sent meanwhile."""
        if not self._receiving:
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        data = self._sender.take()
        if data is not None and not self.disconnected:
            self.transport.write(data)

    # ------------------------------------------------------------------ flow control

    def pause_writing(self) -> None:
        self._writing_paused = self._held = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_held()
        if self._writable is not None:
            self._writable.set_result(None)
            self._writable = None
        self._drain_backlog()

    def _update_held(self) -> None:
        self._held = self._writing_paused or len(self._tasks) >= self.options.backlog

    def _defer(self, event: tuple) -> None:
        """Hold a received call until the peer reads our replies again; past the backlog limit
        stop reading, so a peer that never reads cannot make us buffer without bound."""
        self._backlog.append(event)
        if len(self._backlog) >= self.options.backlog and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def _drain_backlog(self) -> None:
        """Handle held calls while the peer keeps up, a batch per turn of the loop."""
        backlog = self._backlog
        event = None
        self._receiving = True
        try:
            for _ in range(64):
                if not backlog or self._held or self.disconnected:
                    break
                event = backlog.popleft()
                self._handlers[event[0]](event)
                if self._sender.size >= FLUSH_AT:
                    self._flush()
        except Exception as exc:
            self._internal_error(exc, event)
        finally:
            self._receiving = False
            self._flush()
        if self.disconnected:
            return
        if backlog:
            if not self._held:
                self._loop.call_soon(self._drain_backlog)
        elif self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._held:
            self._update_held()
            if not self._held:
                self._drain_backlog()

    # ------------------------------------------------------------------ events

    def _on_ready(self, event: tuple) -> None:
        _, dialect, reply = event
        self._encoder = _core.PbEncoder(dialect, hook=self._jelly)
        self._sender.start(self._encoder)
        self._decoder.attach(
            self._objects,
            self._pending,
            self._encoder,
            self._sender,
            self._sent,
            self._undo_sends,
            _is_plain,
        )
        self._write(reply)
        if not self.ready.done():
            self.ready.set_result(dialect)

    def _on_message(self, event: tuple) -> None:
        _, request_id, objid, method, answer, args, kwargs = event
        target = self._objects.get(objid)
        if target is None:
            self._fail(request_id, answer, Error("Invalid Object ID"), method)
            return
        try:
            result = target.remoteMessageReceived(self, method, args, kwargs)
            perspective = target.serializingPerspective()
        except Exception as exc:
            self._fail(request_id, answer, exc, method)
            return
        if hasattr(type(result), "__await__"):
            self._start(request_id, answer, method, result, perspective)
        elif answer:
            self._answer(request_id, result, method, perspective)

    def _on_raised(self, event: tuple) -> None:
        _, request_id, answer, method, exc = event
        self._fail(request_id, answer, exc, method)

    def _on_awaiting(self, event: tuple) -> None:
        _, request_id, answer, method, awaitable = event
        self._start(request_id, answer, method, awaitable)

    def _on_flush(self, event: tuple) -> None:
        self._flush()

    def _start(
        self, request_id: int, answer: bool, method: str, awaitable: Any, perspective: Any = None
    ) -> None:
        """Await a remote method's awaitable result in a task, then reply."""
        task = self._loop.create_task(self._finish(request_id, answer, method, awaitable, perspective))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        if len(self._tasks) >= self.options.backlog:
            self._held = True

    def _on_cachemessage(self, event: tuple) -> None:
        _, request_id, luid, method, answer, args, kwargs = event
        cache = self._remote_caches.get(luid) if type(luid) is int else None
        if cache is None:
            self._fail(
                request_id, answer, Error(f"no cached object {luid!r}"), method, ran=False, prefix="observe_"
            )
            return
        try:
            result = cache.remoteMessageReceived(self, method, args, kwargs)
        except Exception as exc:
            self._fail(request_id, answer, exc, method, prefix="observe_")
            return
        if hasattr(type(result), "__await__"):
            self._start(request_id, answer, method, result)
        elif answer:
            self._answer(request_id, result, method)

    async def _finish(
        self, request_id: int, answer: bool, method: str, awaitable: Any, perspective: Any
    ) -> None:
        try:
            result = await awaitable
        except asyncio.CancelledError as exc:
            # Something the method awaited was cancelled: the caller still gets a reply. Only a
            # cancellation of this task itself (the loop shutting down) propagates.
            self._fail(request_id, answer, exc, method)
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            return
        except Exception as exc:
            self._fail(request_id, answer, exc, method)
            return
        if answer:
            self._answer(request_id, result, method, perspective)

    def _answer(self, request_id: int, result: Any, method: str, perspective: Any = None) -> None:
        """Send the answer, jellied for `perspective` (what Copyables and Viewables in it see)."""
        if self.disconnected:
            return
        outer, self._perspective = self._perspective, perspective
        try:
            data = self._encode(self._encoder.answer, request_id, result)
        except Exception as exc:
            exc.add_note(f"while sending the result of remote_{method}")
            self._fail(request_id, True, exc, method)
            return
        finally:
            self._perspective = outer
        self._write(data)

    def _fail(
        self,
        request_id: int,
        answer: bool,
        exc: BaseException,
        method: str,
        ran: bool = True,
        prefix: str = "remote_",
    ) -> None:
        """Report a failed remote call: an `error` reply (if one is wanted) and a log record —
        a traceback for an unexpected exception in a method that ran, one line for a call that
        could not run (a peer can send those at will), nothing for a `pbfast.Error`."""
        if isinstance(exc, Error):
            pass
        elif not ran or isinstance(exc, NoSuchMethod):
            log.warning(
                "%r: %s%s (request %d) refused: %s", self, prefix, method[:200], request_id, _short(exc)
            )
        else:
            log.error("%r: %s%s (request %d) raised", self, prefix, method, request_id, exc_info=exc)
        if not answer or self.disconnected:
            return
        try:
            failure = CopyableFailure(exc, self.options.unsafeTracebacks)
            data = self._encode(self._encoder.error, request_id, failure)
        except Exception as again:
            # The failure itself did not encode (a value too large?): send a plain one.
            log.error("%r: could not send the failure of request %d", self, request_id, exc_info=again)
            data = self._encoder.error(
                request_id, CopyableFailure(Error(f"{qualified_name(type(exc))} (unsendable)"))
            )
        self._write(data)

    def _on_answer(self, event: tuple) -> None:
        _, request_id, value = event
        future = self._settle(request_id)
        if future is not None and not future.done():
            future.set_result(value)

    def _on_error(self, event: tuple) -> None:
        _, request_id, value = event
        future = self._settle(request_id)
        if future is None or future.done():
            return
        if not isinstance(value, BaseException):
            # Twisted fails the call with whatever value the peer sent.
            value = RemoteError(qualified_name(type(value)), value)
        future.set_exception(value)

    def _on_bad_reply(self, event: tuple) -> None:
        _, request_id, exc, unclaimed = event
        self._give_back(unclaimed)
        future = self._settle(request_id)
        if future is not None and not future.done():
            exc.add_note(f"while decoding the reply to request {request_id}")
            future.set_exception(exc)

    def _settle(self, request_id: int) -> asyncio.Future[Any] | None:
        entry = self._pending.pop(request_id, None)
        if entry is None:
            log.warning(
                "%r: the peer replied to request %r, which is not waiting for a reply", self, request_id
            )
            return None
        future, pins = entry
        if pins:
            self._unpin(pins)
        return future

    def _on_bad_call(self, event: tuple) -> None:
        _, request_id, answer, method, exc, unclaimed = event
        self._give_back(unclaimed)
        exc.add_note(f"while decoding the arguments of remote_{method} (request {request_id})")
        self._fail(request_id, answer, exc, method, ran=False)

    def _on_decref(self, event: tuple) -> None:
        luid = event[1]
        if type(luid) is not int or not 0 < luid < 1 << 64 or luid not in self._refs:
            log.warning(
                "%r: the peer sent a decref for %s, which it does not hold; ignored", self, _short(luid)
            )
            return
        if luid in self._caches:
            log.warning("%r: the peer sent a decref for cached object %s; ignored", self, luid)
            return
        if self._refs.decref(luid):
            self._forget(luid)

    def _on_decache(self, event: tuple) -> None:
        luid = event[1]
        if type(luid) is not int or luid not in self._caches:
            log.warning(
                "%r: the peer sent a decache for %s, which it does not hold; ignored", self, _short(luid)
            )
            return
        if self._refs.decref(luid):
            self._forget(luid)

    def _on_uncache(self, event: tuple) -> None:
        luid = event[1]
        if type(luid) is not int:
            return
        self._dying_caches.pop(luid, None)
        cache = self._remote_caches.pop(luid, None)
        if cache is not None:
            cache._pb_cache = None  # the owner forgot it: nothing to decache any more

    def _on_unknown(self, event: tuple) -> None:
        command = event[1]
        log.warning(
            "%r: the peer sent an unknown command %s; answering didNotUnderstand", self, _short(command)
        )
        self._write(self._encoder.command(b"didNotUnderstand", command))

    def _on_did_not_understand(self, event: tuple) -> None:
        log.warning("%r: the peer did not understand our command %s", self, _short(event[1]))

    # ------------------------------------------------------------------ references

    def _jelly(self, obj: Any) -> tuple[tuple, bool] | None:
        """Encoder hook: the jelly form of objects jelly does not know itself."""
        if isinstance(obj, Referenceable):
            luid, new = self._refs.send(id(obj))
            if new:
                self._objects[luid] = obj
            self._sent.append(luid)
            return (b"remote", luid), False
        if isinstance(obj, RemoteReference):
            if obj.broker is not self:
                raise Error(f"cannot send {obj!r} over another connection")
            return (b"local", obj.luid), False
        if isinstance(obj, CopyableFailure):
            return (FAILURE_TAG, obj.state), True
        if isinstance(obj, Cacheable):
            return self._jelly_cacheable(obj)
        if isinstance(obj, Copyable):
            perspective = self._perspective
            tag = _tag_bytes(obj.getTypeToCopyFor(perspective))
            return (tag, obj.getStateToCopyFor(perspective)), True
        if isinstance(obj, Viewable):
            return self._jelly(self._viewpoint(obj))
        if isinstance(obj, RemoteCache):
            cache = obj._pb_cache
            if cache is None or cache[0] is not self:
                raise Error(f"cannot send {obj!r} over another connection")
            return (b"lcache", cache[1]), False
        return None

    def _jelly_cacheable(self, obj: Cacheable) -> tuple[tuple, bool]:
        """The first sending on this connection carries the state; later ones name the luid."""
        luid, new = self._refs.send(id(obj))
        self._sent.append(luid)
        if not new:
            return (b"cached", luid), True
        perspective = self._perspective
        observer = RemoteCacheObserver(self, obj, perspective, luid)
        self._caches[luid] = (obj, observer)
        tag = _tag_bytes(obj.getTypeToCopyFor(perspective))
        return (tag, luid, obj.getStateToCacheAndObserveFor(perspective, observer)), True

    def _viewpoint(self, viewable: Viewable) -> ViewPoint:
        """The one ViewPoint of `viewable` for the current perspective, while the peer holds it."""
        key = (id(self._perspective), id(viewable))
        point = self._viewpoints.get(key)
        if point is None or point.viewable is not viewable:
            point = self._viewpoints[key] = ViewPoint(self._perspective, viewable)
        return point

    def _undo_sends(self, mark: int) -> None:
        """An encode failed: take back the counts it added (the peer never saw them)."""
        sent = self._sent
        for luid in sent[mark:]:
            if self._refs.decref(luid):
                self._forget(luid, uncache=False)
        del sent[mark:]

    def _unpin(self, luids: list[int]) -> None:
        for luid in self._refs.unpin(luids):
            self._forget(luid)

    def _forget(self, luid: int, *, uncache: bool = True) -> None:
        """The peer holds `luid` no more: drop the object and run what waits for that."""
        obj = self._objects.pop(luid, None)
        if obj is not None:
            if isinstance(obj, ViewPoint):
                self._viewpoints.pop((id(obj.perspective), id(obj.viewable)), None)
            for logout in self._logouts.pop(id(obj), ()):
                _run_callback(logout)
            return
        cacheable, observer = self._caches.pop(luid)
        _run_callback(cacheable.stoppedObserving, observer.perspective, observer)
        if uncache and not self.disconnected:
            self._write(self._encoder.command(b"uncache", luid))

    def call_when_released(self, obj: Referenceable, callback: Callable[[], object]) -> None:
        """Run ``callback()`` once, when the peer lets go of `obj` or the connection ends (an
        avatar's logout)."""
        self._logouts.setdefault(id(obj), []).append(callback)

    def _unjelly(self, tag: bytes, items: list) -> Any:
        """Decoder hook: build the values of the PB jelly tags, copies and caches."""
        if tag == b"remote":
            luid = _luid(tag, items)
            proxy = self._proxies.get(luid)
            if proxy is None:
                self._check_held(b"decref", luid)
                proxy = self._proxies[luid] = RemoteReference(self, luid)
            proxy._count += 1
            return proxy
        if tag == b"local":
            luid = _luid(tag, items)
            try:
                return self._objects[luid]
            except KeyError:
                raise JellyError(f"the peer sent back our object {luid!r}, which it does not hold") from None
        if tag == b"cached":
            luid = _luid(tag, items)
            cache = self._remote_caches.get(luid)
            if cache is None:
                cache = self._revive_cache(luid)
            cache._pb_count += 1
            return cache
        if tag == b"lcache":
            luid = _luid(tag, items)
            entry = self._caches.get(luid)
            if entry is None:
                raise JellyError(f"the peer sent back our cached object {luid!r}, which it does not hold")
            return entry[0]
        if tag == FAILURE_TAG and len(items) == 1:
            return remote_error(items[0])
        registered = unjellyableFor(tag)
        if registered is None:
            if len(items) == 2 and type(items[0]) is int:
                # A Cacheable's first sending, refused: its owner counted it.
                self.release_cache(items[0], 1)
            return NotImplemented
        if len(items) == 1:
            return make_copy(tag, items[0])
        if len(items) == 2 and type(items[0]) is int:
            return self._new_cache(tag, registered, items[0], items[1])
        raise JellyError(f"a copy of {tag.decode('utf-8', 'replace')} takes a state (or a luid and a state)")

    def _new_cache(self, tag: bytes, registered: tuple[str, Any], luid: int, state: Any) -> RemoteCache:
        if luid in self._remote_caches:
            raise JellyError(f"the peer sent cached object {luid} again in full")
        self._check_held(b"decache", luid)
        cache = registered[1]()
        if not isinstance(cache, RemoteCache):
            # The owner counts this sending: give it back, as the copy is refused.
            self.release_cache(luid, 1)
            raise InsecureJelly(
                f"{tag.decode('utf-8', 'replace')} is registered to a class that is not a RemoteCache"
            )
        # Registered first, so that if setCopyableState fails the owner still hears decache.
        cache._pb_cache = (self, luid)
        cache._pb_count = 1
        self._remote_caches[luid] = cache
        cache.setCopyableState(state)
        return cache

    def _revive_cache(self, luid: int) -> RemoteCache:
        """The owner named a copy we let go of before its ``uncache`` came back (it sent this
        before our ``decache`` arrived): make the copy again from the state it had."""
        dying = self._dying_caches.get(luid)
        if dying is None:
            raise JellyError(f"the peer named its cached object {luid!r}, which we do not hold")
        cls, state = dying
        cache = cls.__new__(cls)
        cache.__dict__.update(state)
        cache._pb_cache = (self, luid)
        cache._pb_count = 0
        self._remote_caches[luid] = cache
        return cache

    def _check_held(self, command: bytes, luid: int) -> None:
        """Refuse a new proxy or cache past `max_proxies` (giving its reference back)."""
        held = len(self._proxies) - (ROOT in self._proxies) + len(self._remote_caches)
        if held >= self.options.max_proxies:
            self._queue_release(command, luid, 1)
            raise Error(f"the peer sent more than max_proxies={self.options.max_proxies} objects")

    def release(self, luid: int | bytes, count: int) -> None:
        """A proxy died: tell the owner (``decref`` ×count). Runs in finalizers, possibly in
        another thread or in the middle of other work, so it only queues."""
        self._queue_release(b"decref", luid, count)

    def release_cache(self, luid: int, count: int, cache: RemoteCache | None = None) -> None:
        """A RemoteCache died: tell the owner (``decache`` ×count), as `release` does, and keep
        its state until the owner's ``uncache`` in case the owner names it again meanwhile."""
        if cache is not None and not self.disconnected:
            self._dying_caches[luid] = (type(cache), dict(cache.__dict__))
        self._queue_release(b"decache", luid, count)

    def _queue_release(self, command: bytes, luid: int | bytes, count: int) -> None:
        if self.disconnected:
            return
        self._decrefs.append((command, luid, count))
        if len(self._decrefs) == 1:
            try:
                self._loop.call_soon_threadsafe(self._send_decrefs)
            except RuntimeError:  # the loop is closed: so is the connection
                pass

    def _give_back(self, unclaimed: list[tuple[bytes, int]]) -> None:
        """Give back the references of a refused message that never became proxies or copies
        (``decref``/``decache`` pairs from the decoder)."""
        for (command, luid), count in collections.Counter(unclaimed).items():
            self._write(self._encoder.command(command, luid, count))

    def _send_decrefs(self) -> None:
        decrefs, self._decrefs = self._decrefs, []
        if self.disconnected or self._encoder is None:
            return
        for command, luid, count in decrefs:
            self._write(self._encoder.command(command, luid, count))

    def watch(self, ref: RemoteReference) -> None:
        self._watched[id(ref)] = ref

    def unwatch(self, ref: RemoteReference) -> None:
        self._watched.pop(id(ref), None)

    # ------------------------------------------------------------------ the end

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.disconnected:
            return
        self.disconnected = True
        reason = self._reason or exc
        why = f": {reason}" if reason else ""
        pending, self._pending = self._pending, {}
        for future, _ in pending.values():
            if future is not None and not future.done():
                lost = PBConnectionLost(f"the connection was lost before the reply came{why}")
                lost.__cause__ = reason
                future.set_exception(lost)
        if not self.ready.done():
            failure = (
                reason
                if isinstance(reason, PbfastError)
                else PBConnectionLost(f"the connection closed during the handshake{why}")
            )
            self.ready.set_exception(failure)
            self.ready.exception()  # retrieved: connect() reports it if anyone waits
        watched, self._watched = self._watched, {}
        for ref in watched.values():
            for callback in ref._disconnect_callbacks or ():
                _run_callback(callback, ref)
            ref._disconnect_callbacks = None
        callbacks, self._disconnect_callbacks = self._disconnect_callbacks, []
        for callback in callbacks:
            _run_callback(callback)
        caches, self._caches = self._caches, {}
        for cacheable, observer in caches.values():
            _run_callback(cacheable.stoppedObserving, observer.perspective, observer)
        logouts, self._logouts = self._logouts, {}
        for callbacks in logouts.values():
            for logout in callbacks:
                _run_callback(logout)
        self._objects.clear()
        self._viewpoints.clear()
        self._dying_caches.clear()
        self._refs.clear()
        self._backlog.clear()
        self._sender.close()
        if self._writable is not None:
            self._writable.set_result(None)
            self._writable = None
        if not self.closed.done():
            self.closed.set_result(None)


def _is_plain(cls: type) -> bool:
    """Whether the decoder may run calls on objects of `cls` itself: Referenceables that keep
    the default dispatch and send their results for no particular perspective."""
    return (
        issubclass(cls, Referenceable)
        and cls.remoteMessageReceived is Referenceable.remoteMessageReceived
        and cls.serializingPerspective is Referenceable.serializingPerspective
    )


def _tag_bytes(tag: str | bytes) -> bytes:
    return tag.encode("utf-8") if isinstance(tag, str) else tag


def _luid(tag: bytes, items: list) -> int | bytes:
    if len(items) == 1 and isinstance(items[0], (int, bytes)) and not isinstance(items[0], bool):
        return items[0]
    raise JellyError(f"{tag.decode()} takes one integer luid, not {items!r}")


def _short(value: object, limit: int = 200) -> str:
    try:
        text = repr(value)
    except RecursionError:  # a received value nested deeper than repr() goes
        text = f"<{type(value).__name__} nested too deeply to show>"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _run_callback(callback: Callable[..., object], *args: Any) -> None:
    try:
        callback(*args)
    except Exception:
        log.exception("disconnect callback %r raised", callback)
