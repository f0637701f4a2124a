"""Twisted PB's dialect of a connection: the `Broker`.

The shared machinery (bytes, back-pressure, limits, timeouts, the end, and the object tables)
is `pbfast._connection.Connection`'s. What is PB's: the connection's Rust `PbSession` reads each
received chunk into event tuples, running calls and resolving answers as it reads them (the
per-call hot path), makes each outgoing call in one crossing, and encodes and queues the
broker's own replies and commands. Here: the jelly hooks that turn Referenceables, copies and
caches into ``remote``/``local``/``cached`` forms and back, perspectives, and what each event
means.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any, ClassVar

from . import _core
from ._calls import OptionsCall
from ._connection import EXTENSIONS, Connection, ConnectionOptions, SessionCallbacks, run_callback, short
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
    EV_RETURNED,
    EV_UNCACHE,
    EV_UNKNOWN,
)
from ._failure import FAILURE_TAG, CopyableFailure, remote_error
from ._streaming import EXTENSION as STREAM_EXTENSION
from ._streaming import STREAM_TYPE
from .cacheable import Cacheable, CacheLink, RemoteCache, RemoteCacheObserver
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
from .referenceable import Referenceable, RemoteReference, Viewable, ViewPoint, default_dispatch
from .streams import Stream

__all__ = ["Broker", "ROOT"]

log = logging.getLogger("pbfast")

ROOT = b"root"
STREAM_TAG = STREAM_TYPE.encode()
# The name a PB connection serves its control channel under, once the peer is pbfast.
CONTROL = b"pbfast"

DEFAULT_OPTIONS = ConnectionOptions()


class Broker(Connection):
    """The PB state of one connection; users meet it as ``ref.broker``.

    Args:
        options: connection options.
        server: True on the side that accepted the connection.
        root: (server) makes the connection's root object, given the broker.
        group: a set the broker belongs to while the connection is open.
    """

    _WIRE = "pb"
    _RAISED = EV_RAISED
    _CALL_KINDS = frozenset({EV_MESSAGE, EV_CACHEMESSAGE, EV_BAD_CALL, EV_UNKNOWN, EV_AWAITING})
    STATISTICS: ClassVar[tuple[str, ...]] = (*Connection.STATISTICS, "caches")
    _CONTROL_ID: ClassVar[Any] = CONTROL
    _session: _core.PbSession

    def __init__(
        self,
        options: ConnectionOptions = DEFAULT_OPTIONS,
        *,
        server: bool,
        root: Callable[[Broker], Referenceable] | None = None,
        group: set[Connection] | None = None,
    ) -> None:
        super().__init__(options, server=server, group=group)
        self._root_for = root
        # Our Cacheables the peer holds copies of: luid -> (cacheable, observer); counts in the session.
        self._caches: dict[int, tuple[Cacheable, RemoteCacheObserver]] = {}
        # ViewPoints while the peer holds them, by (id(perspective), id(viewable)).
        self._viewpoints: dict[tuple[int, int], ViewPoint] = {}
        # Callbacks for when the peer lets go of an object (avatars' logouts), by id(object).
        self._logouts: dict[int, list[Callable[[], object]]] = {}
        # The perspective results are being jellied for (see `_answer`).
        self._perspective: Any = None
        self._root_proxy: weakref.ref[RemoteReference] | None = None
        self.ready: asyncio.Future[str] = self._loop.create_future()
        """Resolves to the dialect once the handshake is over."""

    # ------------------------------------------------------------------ public

    def root(self) -> RemoteReference:
        """The peer's root object (``"root"``); not reference-counted, as in Twisted."""
        proxy = self._root_proxy() if self._root_proxy is not None else None
        if proxy is None:
            proxy = RemoteReference(self, ROOT)
            self._root_proxy = weakref.ref(proxy)
        return proxy

    def serve_root(self, root: Referenceable) -> None:
        """Serve `root` under the name ``"root"`` on this connection."""
        self._session.put(ROOT, root)

    def statistics(self) -> dict[str, int]:
        """`Connection.statistics`, and ``caches``: our Cacheables the peer holds copies of."""
        stats = super().statistics()
        stats["caches"] = len(self._caches)
        return stats

    def call_when_released(self, obj: Referenceable, callback: Callable[[], object]) -> None:
        """Run ``callback()`` once, when the peer lets go of `obj` or the connection ends (an
        avatar's logout)."""
        self._logouts.setdefault(id(obj), []).append(callback)

    def _dead(self) -> DeadReferenceError:
        if self.disconnected:
            return DeadReferenceError(f"Calling Stale Broker (the connection to {self.peer} is closed)")
        return DeadReferenceError("the connection has not finished its handshake")

    # ------------------------------------------------------------------ the connection's hooks

    def _open_session(self, callbacks: SessionCallbacks) -> _core.PbSession:
        return _core.PbSession(
            self.server,
            self.options.max_refs,
            self.options.limits,
            **callbacks,
            broker=self,
            unjelly=self._unjelly,
            jelly=self._jelly,
            is_plain=default_dispatch,
            extensions=sorted(EXTENSIONS),
        )

    def _opened(self) -> None:
        if self._root_for is not None:
            self.serve_root(self._root_for(self))
        self._session.open()

    def _receive(self, data: bytes | memoryview) -> None:
        events: list[tuple[Any, ...]] | None
        try:
            events = self._session.feed(data)
            broken = None
        except Exception as exc:
            # The stream is broken at some point; the commands complete before it still count,
            # but a handshake it breaks has failed. (Its traceback would only lead back here.)
            events = getattr(exc, "events", None) or []
            broken = exc.with_traceback(None)
            if not self.ready.done():
                self.ready.set_exception(broken)
                self.ready.exception()
        if events:
            self._handle(events)
        # The events may hold exceptions whose tracebacks lead back to this frame (a remote
        # method run by the fast path raised): this frame must not keep them, or the two would
        # make a cycle holding the connection until a garbage collection.
        events = None
        if broken is not None and not self.disconnected:
            self._flush()  # the replies to what came before the break still go out
            self._abort(broken, f"{broken}; closing the connection")

    def _open_control(self) -> None:
        self._session.put(CONTROL, _CONTROL_TARGET)

    def _is_control_only(self, event: tuple[Any, ...]) -> bool:
        # (EV_MESSAGE, request_id, object_id, method, answer, args, kwargs)
        return event[0] == EV_MESSAGE and event[2] == CONTROL and not event[4]

    def _refuse_call(self, event: tuple[Any, ...], exc: BaseException) -> None:
        kind = event[0]
        if kind in (EV_MESSAGE, EV_CACHEMESSAGE):
            _, request_id, _objid, method, answer, _args, _kwargs = event
        elif kind == EV_BAD_CALL:
            _, request_id, answer, method, _exc, unclaimed = event
            self._give_back(unclaimed)
        elif kind == EV_AWAITING:
            _, request_id, answer, method, _awaitable, _perspective = event
            self._drop_call(event)
        else:
            self._HANDLERS[kind](self, event)  # not a call (an unknown command): handle it
            return
        self._count_call(method, "error", ran=kind == EV_AWAITING)
        self._fail(request_id, answer, exc, method, ran=False)

    def _drop_call(self, event: tuple[Any, ...]) -> None:
        if event[0] == EV_AWAITING and hasattr(event[4], "close"):
            event[4].close()  # a coroutine that will never be awaited

    def _cancellable(self, event: tuple[Any, ...]) -> int:
        kind = event[0]
        if kind in (EV_MESSAGE, EV_CACHEMESSAGE):  # (kind, request_id, object_id, method, answer, ...)
            return event[1] if event[4] else 0
        if kind == EV_AWAITING:  # (kind, request_id, answer, ...)
            return event[1] if event[2] else 0
        return 0  # a bad call (its references are given back as it is refused) or no call

    def _object_id_ok(self, object_id: Any) -> bool:
        return type(object_id) is bytes or type(object_id) is int

    def _run_call(
        self,
        request_id: int,
        answer: bool,
        object_id: Any,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self._run_in_session(object_id, method, request_id, object_id, method, answer, args, kwargs)

    def _send_failure(self, request_id: int, exc: BaseException) -> None:
        if request_id and not self._closing:
            self._session.error(request_id, CopyableFailure(exc))

    def _write_release(self, kind: bytes, luid: Any, count: int) -> None:
        if self._session.dialect is not None:
            self._session.command(kind, luid, count)

    def _lost(self, reason: BaseException | None) -> None:
        if not self.ready.done():
            why = f": {reason}" if reason else ""
            failure = (
                reason
                if isinstance(reason, PbfastError)
                else PBConnectionLost(f"the connection closed during the handshake{why}")
            )
            self.ready.set_exception(failure)
            self.ready.exception()  # retrieved: connect() reports it if anyone waits
        caches, self._caches = self._caches, {}
        for cacheable, observer in caches.values():
            run_callback(cacheable.stoppedObserving, observer.perspective, observer)
        logouts, self._logouts = self._logouts, {}
        for callbacks in logouts.values():
            for logout in callbacks:
                run_callback(logout)
        self._viewpoints.clear()

    def _stream_failure(self, exc: BaseException, what: str) -> CopyableFailure:
        failure = CopyableFailure(exc, self.options.unsafeTracebacks)
        if isinstance(exc, RemoteError):
            # The peer's own error (it could not take a batch): passed back as it came.
            remote = exc.remoteType.encode()
            failure.state.update(type=remote, value=str(exc.remoteValue), parents=list(exc.parents))
        elif not isinstance(exc, Error):
            log.error("%s: the stream %s raised", repr(self), what, exc_info=exc)
        return failure

    # ------------------------------------------------------------------ events

    def _on_ready(self, event: tuple[Any, ...]) -> None:
        # (The session has queued our version, and encodes from here on.)
        _, dialect, extensions = event
        self._handshake_done(extensions)
        if not self.ready.done():
            self.ready.set_result(dialect)

    def _on_message(self, event: tuple[Any, ...]) -> None:
        # A call held back while the session was holding: it runs there now all the same.
        _, request_id, object_id, method, answer, args, kwargs = event
        self._run_in_session(object_id, method, request_id, object_id, method, answer, args, kwargs)

    def _on_raised(self, event: tuple[Any, ...]) -> None:
        _, request_id, answer, method, exc = event
        self._fail(request_id, answer, exc, method)

    def _on_awaiting(self, event: tuple[Any, ...]) -> None:
        _, request_id, answer, method, awaitable, perspective = event
        if type(awaitable) is OptionsCall:
            self._run_with_options(request_id, answer, awaitable)
            return
        self._start(request_id, answer, method, awaitable, perspective)

    def _on_returned(self, event: tuple[Any, ...]) -> None:
        _, request_id, answer, method, result, perspective = event
        if answer:
            self._answer(request_id, result, method, perspective)

    def _on_flush(self, event: tuple[Any, ...]) -> None:
        self._flush()

    def _start(
        self, request_id: int, answer: bool, method: str, awaitable: Any, perspective: Any = None
    ) -> None:
        """Await a remote method's awaitable result in a task, then reply."""
        awaitable = self._timed(awaitable, method)
        self._start_call(
            self._finish(request_id, answer, method, awaitable, perspective), request_id if answer else 0
        )

    def _on_cachemessage(self, event: tuple[Any, ...]) -> None:
        _, request_id, luid, method, answer, args, kwargs = event
        cache = self._remote_caches.get(luid) if type(luid) is int else None
        if cache is None:
            self._count_call(method, "error", ran=False)
            self._fail(
                request_id, answer, Error(f"no cached object {luid!r}"), method, ran=False, prefix="observe_"
            )
            return
        started = time.perf_counter()
        try:
            result = cache.remoteMessageReceived(self, method, args, kwargs)
        except Exception as exc:
            self._count_call(method, "error", time.perf_counter() - started)
            self._fail(request_id, answer, exc, method, prefix="observe_")
            return
        if hasattr(type(result), "__await__"):
            self._start(request_id, answer, method, result)
            return
        self._count_call(method, "ok", time.perf_counter() - started)
        if answer:
            self._answer(request_id, result, method)

    async def _finish(
        self, request_id: int, answer: bool, method: str, awaitable: Any, perspective: Any
    ) -> None:
        try:
            result = await awaitable
        except asyncio.CancelledError as exc:
            # (No local for the task: this frame, kept by the error's traceback, would hold it.)
            if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                if self._closing:
                    raise  # the connection is ending (see `_cancel_calls`)
                # For the caller, or its deadline (see `_cancel_call`): the reply says so.
                self._reply_cancelled(request_id if answer else 0, exc)
                return
            # Something the method awaited was cancelled: the caller still gets a reply.
            self._fail(request_id, answer, exc, method)
            return
        except Exception as exc:
            self._fail(request_id, answer, exc, method)
            return
        if answer:
            self._answer(request_id, result, method, perspective)

    def _answer(self, request_id: int, result: Any, method: str, perspective: Any = None) -> None:
        """Send the answer, jellied for `perspective` (what Copyables and Viewables in it see)."""
        if self._closing:
            return
        outer, self._perspective = self._perspective, perspective
        try:
            self._session.answer(request_id, result)
        except Exception as exc:
            exc.add_note(f"while sending the result of remote_{method}")
            self._fail(request_id, True, exc, method)
        finally:
            self._perspective = outer

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
                "%s: %s%s (request %d) refused: %s", repr(self), prefix, method[:200], request_id, short(exc)
            )
        else:
            log.error("%s: %s%s (request %d) raised", repr(self), prefix, method, request_id, exc_info=exc)
        if not answer or self._closing:
            return
        try:
            self._session.error(request_id, CopyableFailure(exc, self.options.unsafeTracebacks))
        except Exception as again:
            # The failure itself did not encode (a value too large?): send a plain one.
            log.error("%s: could not send the failure of request %d", repr(self), request_id, exc_info=again)
            plain = CopyableFailure(Error(f"{qualified_name(type(exc))} (unsendable)"))
            self._session.error(request_id, plain)

    def _on_answer(self, event: tuple[Any, ...]) -> None:
        _, request_id, value = event
        future = self._settle(request_id)
        if future is not None and not future.done():
            future.set_result(value)

    def _on_error(self, event: tuple[Any, ...]) -> None:
        _, request_id, value = event
        future = self._settle(request_id, failed=True)
        if future is None or future.done():
            return
        if not isinstance(value, BaseException):
            # Twisted fails the call with whatever value the peer sent.
            value = RemoteError(qualified_name(type(value)), value)
        future.set_exception(value)

    def _on_bad_reply(self, event: tuple[Any, ...]) -> None:
        _, request_id, exc, unclaimed = event
        self._give_back(unclaimed)
        future = self._settle(request_id, failed=True)
        if future is not None and not future.done():
            exc.add_note(f"while decoding the reply to request {request_id}")
            future.set_exception(exc)

    def _on_bad_call(self, event: tuple[Any, ...]) -> None:
        _, request_id, answer, method, exc, unclaimed = event
        self._give_back(unclaimed)
        self._count_call(method, "error", ran=False)
        exc.add_note(f"while decoding the arguments of remote_{method} (request {request_id})")
        self._fail(request_id, answer, exc, method, ran=False)

    def _on_decref(self, event: tuple[Any, ...]) -> None:
        luid = event[1]
        if type(luid) is int and luid in self._caches:
            log.warning("%s: the peer sent a decref for cached object %s; ignored", repr(self), luid)
            return
        self._released_by_peer(luid, 1)

    def _on_decache(self, event: tuple[Any, ...]) -> None:
        luid = event[1]
        if type(luid) is not int or luid not in self._caches:
            log.warning(
                "%s: the peer sent a decache for %s, which it does not hold; ignored", repr(self), short(luid)
            )
            return
        self._released_by_peer(luid, 1, "decache")

    def _on_uncache(self, event: tuple[Any, ...]) -> None:
        luid = event[1]
        if type(luid) is not int:
            return
        self._dying_caches.pop(luid, None)
        cache = self._remote_caches.pop(luid, None)
        if cache is not None:
            cache._cache_link = None  # the owner forgot it: nothing to decache any more

    def _on_unknown(self, event: tuple[Any, ...]) -> None:
        command = event[1]
        log.warning(
            "%s: the peer sent an unknown command %s; answering didNotUnderstand", repr(self), short(command)
        )
        self._session.command(b"didNotUnderstand", command)

    def _on_did_not_understand(self, event: tuple[Any, ...]) -> None:
        log.warning("%s: the peer did not understand our command %s", repr(self), short(event[1]))

    _HANDLERS = {
        EV_MESSAGE: _on_message,
        EV_CACHEMESSAGE: _on_cachemessage,
        EV_ANSWER: _on_answer,
        EV_ERROR: _on_error,
        EV_BAD_CALL: _on_bad_call,
        EV_BAD_REPLY: _on_bad_reply,
        EV_DECREF: _on_decref,
        EV_DECACHE: _on_decache,
        EV_UNCACHE: _on_uncache,
        EV_READY: _on_ready,
        EV_UNKNOWN: _on_unknown,
        EV_DID_NOT_UNDERSTAND: _on_did_not_understand,
        EV_RAISED: _on_raised,
        EV_AWAITING: _on_awaiting,
        EV_RETURNED: _on_returned,
        EV_FLUSH: _on_flush,
    }

    # ------------------------------------------------------------------ references

    def _jelly(self, obj: Any) -> tuple[tuple[Any, ...], bool] | None:
        """Encoder hook: the jelly form of objects jelly does not know itself."""
        if isinstance(obj, Referenceable):
            return (b"remote", self._export(obj)), False
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
            link = obj._cache_link
            if link is None or link.connection is not self:
                raise Error(f"cannot send {obj!r} over another connection")
            return (b"lcache", link.luid), False
        if isinstance(obj, Stream):
            return (STREAM_TAG, self._send_stream(obj)), True
        return None

    def _jelly_cacheable(self, obj: Cacheable) -> tuple[tuple[Any, ...], bool]:
        """The first sending on this connection carries the state; later ones name the luid."""
        luid, new = self._send_ref(obj)
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

    def _forget(self, luid: int, uncache: bool = True) -> None:
        """The peer holds `luid` no more: drop the object and run what waits for that."""
        obj = self._session.pop(luid)
        if obj is not None:
            if isinstance(obj, ViewPoint):
                self._viewpoints.pop((id(obj.perspective), id(obj.viewable)), None)
            for logout in self._logouts.pop(id(obj), ()):
                run_callback(logout)
            return
        cacheable, observer = self._caches.pop(luid)
        run_callback(cacheable.stoppedObserving, observer.perspective, observer)
        if uncache and not self._closing:
            self._session.command(b"uncache", luid)

    def _unjelly(self, tag: bytes, items: list[Any]) -> Any:
        """Decoder hook: build the values of the PB jelly tags, copies and caches."""
        if tag == b"remote":
            luid = _luid(tag, items)
            proxy = self._proxies.get(luid)
            if proxy is None:
                self._admit_proxy(luid, self._DECREF)
                proxy = self._proxies[luid] = RemoteReference(self, luid)
            proxy._count += 1
            return proxy
        if tag == b"local":
            luid = _luid(tag, items)
            obj = self._session.get(luid)
            if obj is None:
                raise JellyError(f"the peer sent back our object {luid!r}, which it does not hold")
            return obj
        if tag == b"cached":
            luid = _cache_luid(tag, items)
            cache = self._remote_caches.get(luid)
            if cache is None:
                revived = self._revive_cache(luid)
                if revived is None:
                    raise JellyError(f"the peer named its cached object {luid!r}, which we do not hold")
                revived._cache_link = CacheLink(self, luid, 0)
                self._remote_caches[luid] = cache = revived
            link = cache._cache_link
            assert link is not None  # a copy in the table keeps its link until uncached
            link.count += 1
            return cache
        if tag == b"lcache":
            luid = _cache_luid(tag, items)
            entry = self._caches.get(luid)
            if entry is None:
                raise JellyError(f"the peer sent back our cached object {luid!r}, which it does not hold")
            return entry[0]
        if tag == FAILURE_TAG and len(items) == 1:
            return remote_error(items[0])
        if tag == STREAM_TAG and len(items) == 1 and STREAM_EXTENSION in self.peer_extensions:
            return self._receive_stream(items[0])
        registered = unjellyableFor(tag)
        if registered is None:
            if len(items) == 2 and type(items[0]) is int:
                # A Cacheable's first sending, refused: its owner counted it.
                self._queue_release(self._DECACHE, items[0], 1)
            return NotImplemented
        if len(items) == 1:
            return make_copy(tag, items[0])
        if len(items) == 2 and type(items[0]) is int:
            return self._new_cache(tag, registered, items[0], items[1])
        raise JellyError(f"a copy of {tag.decode('utf-8', 'replace')} takes a state (or a luid and a state)")

    def _new_cache(self, tag: bytes, registered: tuple[str, Any], luid: int, state: Any) -> RemoteCache:
        if luid in self._remote_caches:
            raise JellyError(f"the peer sent cached object {luid} again in full")
        self._admit_proxy(luid, self._DECACHE)
        cache = registered[1]()
        if not isinstance(cache, RemoteCache):
            # The owner counts this sending: give it back, as the copy is refused.
            self._queue_release(self._DECACHE, luid, 1)
            raise InsecureJelly(
                f"{tag.decode('utf-8', 'replace')} is registered to a class that is not a RemoteCache"
            )
        # Registered first, so that if setCopyableState fails the owner still hears decache.
        cache._cache_link = CacheLink(self, luid, 1)
        self._remote_caches[luid] = cache
        cache.setCopyableState(state)
        return cache

    def _give_back(self, unclaimed: list[tuple[bytes, int]]) -> None:
        """Give back the references of a refused message that never became proxies or copies
        (``decref``/``decache`` pairs from the decoder)."""
        for (command, luid), count in collections.Counter(unclaimed).items():
            self._session.command(command, luid, count)


class _ControlTarget:
    """What a PB connection serves under ``"pbfast"`` once the peer is pbfast: each call on it
    is a control call of the connection (see `Connection._control`)."""

    __slots__ = ()

    def remoteMessageReceived(
        self, broker: Broker, message: str, args: tuple[Any, ...], kw: dict[str, Any]
    ) -> Any:
        return broker._control(message, args, kw)

    def serializingPerspective(self) -> Any:
        return None


_CONTROL_TARGET = _ControlTarget()


def _tag_bytes(tag: str | bytes) -> bytes:
    return tag.encode("utf-8") if isinstance(tag, str) else tag


def _luid(tag: bytes, items: list[Any]) -> int | bytes:
    """The one luid `items` holds: a number, or a name (``b"root"``)."""
    if len(items) == 1 and isinstance(items[0], (int, bytes)) and not isinstance(items[0], bool):
        luid: int | bytes = items[0]
        return luid
    raise JellyError(f"{tag.decode()} takes one luid (an integer or a name), not {items!r}")


def _cache_luid(tag: bytes, items: list[Any]) -> int:
    """The one luid of a cached object: always a number."""
    luid = _luid(tag, items)
    if isinstance(luid, bytes):
        raise JellyError(f"{tag.decode()} takes one integer luid, not {items!r}")
    return luid
