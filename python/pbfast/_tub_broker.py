"""One Tub connection's PB layer, as foolscap speaks it: calls, answers and errors, the objects
each side exports (clids) and imports, gifts, and keepalives.

The Rust codec turns received bytes into message events and messages into bytes; this module
keeps the per-connection tables and runs the calls. It writes through a *link*: an object with
``send(data)`` (queue bytes; they go out at the end of the current loop iteration) and
``close(reason)``, which is the TLS connection or, for a Tub calling itself, an in-memory one.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import traceback
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any

from . import _core
from ._failure import UNAVAILABLE, parents_of, remote_error
from .cacheable import Cacheable, RemoteCache, RemoteCacheObserver
from .copyable import Copyable, make_copy, unjellyableFor
from .errors import (
    BananaError,
    DeadReferenceError,
    NoSuchMethod,
    PBConnectionLost,
    RemoteError,
    Violation,
    qualified_name,
)
from .furl import FURL
from .referenceable import Referenceable, RemoteReference, prefixed_method

if TYPE_CHECKING:
    from .tub import Tub

log = logging.getLogger("pbfast.tub")

FAILURE_TYPE = "twisted.python.failure.Failure"
# The copyable type of a Cacheable between two pbfast Tubs (only sent to peers that announced
# the "cacheable" extension): its state names the owner's `_CacheHandle` and the cache's own
# state (omitted when the holder already has the copy).
CACHE_TYPE = "pbfast.cacheable"
VIOLATION_TYPE = "foolscap.tokens.Violation"
# foolscap's receive limits on a failure's fields; longer ones are cut when sending.
_TYPE_LIMIT, _VALUE_LIMIT, _PARENT_LIMIT = 200, 1000, 200


class TubReference(RemoteReference):
    """A reference to an object in another Tub (or in this one, through its own FURL)."""

    __slots__ = ()

    def getRemoteTubID(self) -> str:
        """The TubID of the Tub that holds the object."""
        return self.broker.peer_tub_id

    def getSturdyRef(self) -> str | None:
        """The object's FURL, if its Tub sent one (it does once it has a location)."""
        return self.broker.furl_of(self.luid)

    def isConnected(self) -> bool:
        return not self.broker.disconnected

    def __repr__(self) -> str:
        return f"<TubReference {self.luid} at {self.broker.peer_tub_id[:8]}>"


class _Gift:
    """Stands in for a received third-party reference until the receiver has connected to it."""

    __slots__ = ("furl", "gift_id", "reference")

    def __init__(self, gift_id: int, furl: str) -> None:
        self.gift_id = gift_id
        self.furl = furl
        self.reference: RemoteReference | None = None


class TubBroker:
    """The PB layer of one connection to the Tub `peer_tub_id`."""

    def __init__(
        self, tub: Tub, link: Any, peer_tub_id: str, *, peer_extensions: frozenset[str] = frozenset()
    ):
        self.tub = tub
        self.peer_tub_id = peer_tub_id
        self.peer_extensions = peer_extensions
        self.disconnected = False
        # Set by the Tub for duplicate-connection decisions.
        self.peer_incarnation = ""
        self.seqnum = 0
        self._link = link
        self._loop = asyncio.get_running_loop()
        self._encoder = _core.FoolscapEncoder(self._slice)
        self._decoder = _core.FoolscapDecoder(self._unslice, **tub._limits)
        self._next_reqid = 1
        self._pending: dict[int, asyncio.Future[Any]] = {}
        # Objects the peer may call: clid -> [object, sends not yet decref'd]; and back.
        self._exports: dict[int, list[Any]] = {}
        self._clids: dict[int, int] = {}
        self._next_clid = 1
        # The peer's objects: clid -> live proxy; (interface, FURL) it told us per clid.
        self._proxies: dict[int, weakref.ref[TubReference]] = {}
        self._import_info: dict[int, tuple[str | None, str | None]] = {}
        # References into third Tubs we sent the peer, held until it has fetched them.
        self._gifts: dict[int, list[Any]] = {}
        self._gift_ids: dict[int, int] = {}
        self._next_gift_id = 1
        # Cacheables: ours sent to the peer, id(cacheable) -> handle; the peer's we hold, handle
        # clid -> our copy, and the last state of copies that died while the owner may still
        # name them again.
        self._cache_handles: dict[int, _CacheHandle] = {}
        self._caches: dict[int, weakref.ref[RemoteCache]] = {}
        self._dying_caches: dict[int, tuple[type, dict[str, Any]]] = {}
        # Gifts met while decoding the current message.
        self._unresolved: list[_Gift] = []
        # Calls waiting behind one whose gifts are being fetched.
        self._queue: deque[tuple[int, int, str, tuple, dict, list[_Gift]]] = deque()
        self._queue_busy = False
        self._releases: list[tuple[int, int]] = []
        self._watched: dict[int, RemoteReference] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._last_received = self._loop.time()
        self._keepalive: asyncio.TimerHandle | None = None
        self._schedule_keepalive()
        self.closed: asyncio.Future[BaseException | None] = self._loop.create_future()

    def __repr__(self) -> str:
        return f"<TubBroker to {self.peer_tub_id}>"

    # ------------------------------------------------------------------ outgoing calls

    def call(self, clid: int, method: str, args: tuple, kwargs: dict) -> asyncio.Future[Any]:
        future = self._loop.create_future()
        if self.disconnected:
            future.set_exception(DeadReferenceError(f"the connection to Tub {self.peer_tub_id} is gone"))
            return future
        reqid = self._next_reqid
        self._next_reqid += 1
        try:
            data = self._encoder.call(reqid, clid, method, args, kwargs)
        except Exception as e:
            future.set_exception(e)
            return future
        self._pending[reqid] = future
        self._link.send(data)
        return future

    def call_only(self, clid: int, method: str, args: tuple, kwargs: dict) -> None:
        if self.disconnected:
            raise DeadReferenceError(f"the connection to Tub {self.peer_tub_id} is gone")
        self._link.send(self._encoder.call(0, clid, method, args, kwargs))

    def root(self, name: str) -> asyncio.Future[Any]:
        """Ask the peer's Tub for the object it registered as `name`."""
        return self.call(0, "getReferenceByName", (), {"name": name.encode()})

    # ------------------------------------------------------------------ incoming bytes

    def feed(self, data: bytes) -> None:
        self._last_received = self._loop.time()
        try:
            events = self._decoder.feed(data)
        except BananaError as e:
            self._handle(getattr(e, "events", ()))
            self.fail(e)
            return
        self._handle(events)

    def _handle(self, events: Any) -> None:
        for event in events:
            kind = event[0]
            if kind == _core.FS_CALL:
                _, reqid, clid, method, args, kwargs = event
                gifts, self._unresolved = self._unresolved, []
                if gifts or self._queue_busy:
                    self._queue.append((reqid, clid, method, args, kwargs, gifts))
                    self._drain_queue()
                else:
                    self._deliver(reqid, clid, method, args, kwargs)
            elif kind == _core.FS_ANSWER:
                gifts, self._unresolved = self._unresolved, []
                self._answered(event[1], event[2], gifts)
            elif kind == _core.FS_ERROR:
                self._unresolved = []
                self._failed(event[1], event[2])
            elif kind == _core.FS_PING:
                self._link.send(self._encoder.pong(event[1]))
            elif kind == _core.FS_PONG:
                pass
            elif kind == _core.FS_VIOLATION:
                self._unresolved = []
                self._violation(*event[1:])
            elif kind == _core.FS_CALL_ABORTED:  # the caller gave up sending it: no reply
                self._unresolved = []
            elif kind == _core.FS_PEER_ERROR:
                self.fail(
                    BananaError(f"Tub {self.peer_tub_id} reported a protocol error: {event[1]}"), notify=False
                )

    def _violation(self, what: str, reqid: int | None, message: str) -> None:
        log.warning("refused a %s from Tub %s: %s", what, self.peer_tub_id, message)
        if what == "call" and reqid:
            self._send_error(reqid, Violation(message))
        elif what in ("answer", "error") and reqid is not None:
            future = self._pending.pop(reqid, None)
            if future is not None and not future.done():
                future.set_exception(Violation(f"the reply could not be accepted: {message}"))

    def _answered(self, reqid: int, value: Any, gifts: list[_Gift]) -> None:
        future = self._pending.pop(reqid, None)
        if future is None:
            log.warning("Tub %s answered unknown request %d", self.peer_tub_id, reqid)
            return
        if gifts:
            self._spawn(self._answer_with_gifts(future, value, gifts))
        elif not future.done():
            future.set_result(value)

    async def _answer_with_gifts(self, future: asyncio.Future[Any], value: Any, gifts: list[_Gift]) -> None:
        try:
            await self._resolve(gifts)
        except Exception as e:
            if not future.done():
                future.set_exception(e)
            return
        if not future.done():
            future.set_result(_substitute(value))

    def _failed(self, reqid: int, failure: Any) -> None:
        future = self._pending.pop(reqid, None)
        if future is None:
            log.warning("Tub %s sent an error for unknown request %d", self.peer_tub_id, reqid)
            return
        if not isinstance(failure, RemoteError):
            failure = RemoteError("builtins.object", repr(failure), UNAVAILABLE)
        if self.tub.logRemoteFailures:
            log.info("call to Tub %s failed remotely: %s", self.peer_tub_id, failure)
        if not future.done():
            future.set_exception(failure)

    # ------------------------------------------------------------------ incoming calls

    def _deliver(self, reqid: int, clid: int, method: str, args: tuple, kwargs: dict) -> None:
        try:
            result = self._invoke(clid, method, args, kwargs)
        except Exception as e:
            self._send_error(reqid, e)
            return
        if inspect.isawaitable(result):
            task = self._spawn(_awaited(result))
            task.add_done_callback(lambda t, reqid=reqid: self._finished(reqid, t))
        else:
            self._send_answer(reqid, result)

    def _invoke(self, clid: int, method: str, args: tuple, kwargs: dict) -> Any:
        if clid == 0:
            handler = getattr(self, "_broker_" + method, None)
            if handler is None:
                raise NoSuchMethod(f"the Tub has no method {method!r}")
            return handler(*args, **kwargs)
        entry = self._exports.get(clid)
        if entry is None:
            raise Violation(f"unknown clid {clid}")
        target = entry[0]
        if clid < 0:
            return target(*args, **kwargs)
        if type(target).remoteMessageReceived is Referenceable.remoteMessageReceived:
            return prefixed_method(target, "remote_", method, foolscap=True)(*args, **kwargs)
        return target.remoteMessageReceived(self, method, args, kwargs)

    def _finished(self, reqid: int, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            self._send_error(reqid, asyncio.CancelledError("the remote method was cancelled"))
        elif task.exception() is not None:
            self._send_error(reqid, task.exception())
        else:
            self._send_answer(reqid, task.result())

    def _send_answer(self, reqid: int, result: Any) -> None:
        if not reqid or self.disconnected:
            return
        try:
            data = self._encoder.answer(reqid, result)
        except Exception as e:
            self._send_error(reqid, e)
            return
        self._link.send(data)

    def _send_error(self, reqid: int, exc: BaseException) -> None:
        if self.tub.logLocalFailures:
            log.error("remote call from Tub %s failed", self.peer_tub_id, exc_info=exc)
        if not reqid or self.disconnected:
            return
        self._link.send(self._encoder.error(reqid, failure_state(exc, self.tub.unsafeTracebacks)))

    def _drain_queue(self) -> None:
        if not self._queue_busy and self._queue:
            self._queue_busy = True
            self._spawn(self._run_queue())

    async def _run_queue(self) -> None:
        try:
            while self._queue and not self.disconnected:
                reqid, clid, method, args, kwargs, gifts = self._queue.popleft()
                if gifts:
                    try:
                        await self._resolve(gifts)
                    except Exception as e:
                        self._send_error(reqid, e)
                        continue
                    args, kwargs = _substitute(args), _substitute(kwargs)
                self._deliver(reqid, clid, method, args, kwargs)
        finally:
            self._queue_busy = False

    async def _resolve(self, gifts: list[_Gift]) -> None:
        """Connect to each gift's Tub, then tell the giver it may let go."""
        for gift in gifts:
            gift.reference = await self.tub.getReference(gift.furl)
            if gift.gift_id and not self.disconnected:
                self._link.send(self._encoder.call(0, 0, "decgift", (), {"giftID": gift.gift_id, "count": 1}))

    # The methods of the Tub itself (clid 0), as foolscap's RIBroker names them.

    def _broker_getReferenceByName(self, name: bytes | str) -> Any:
        text = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
        return self.tub._lookup(text)

    def _broker_decref(self, clid: int, count: int) -> None:
        entry = self._exports.get(clid)
        if entry is None:
            log.warning("Tub %s released unknown clid %d", self.peer_tub_id, clid)
            return
        entry[1] -= count
        if entry[1] <= 0:
            del self._exports[clid]
            self._clids.pop(id(entry[0]), None)
            if isinstance(entry[0], _CacheHandle):
                entry[0].stop()

    def _broker_decgift(self, giftID: int, count: int) -> None:
        entry = self._gifts.get(giftID)
        if entry is None:
            return
        entry[1] -= count
        if entry[1] <= 0:
            del self._gifts[giftID]
            self._gift_ids.pop(id(entry[0]), None)

    # ------------------------------------------------------------------ values (codec hooks)

    def _slice(self, obj: Any) -> tuple[Any, ...] | None:
        """How the encoder sends an object it does not know."""
        if isinstance(obj, Referenceable):
            return self._export(obj)
        if isinstance(obj, RemoteReference):
            if obj.broker is self:
                return ("your-reference", obj.luid)
            return self._give(obj)
        if isinstance(obj, RemoteError):
            return ("copyable", FAILURE_TYPE, _copied_failure_state(obj))
        if isinstance(obj, Cacheable):
            return self._send_cacheable(obj)
        if isinstance(obj, Copyable):
            return ("copyable", _tag_text(obj.getTypeToCopy()), obj.getStateToCopy())
        if callable(obj) and not isinstance(obj, type):
            return self._export(obj, callable_=True)
        return None

    def _export(self, obj: Any, callable_: bool = False) -> tuple[Any, ...]:
        clid = self._clids.get(id(obj))
        if clid is not None:
            self._exports[clid][1] += 1
            return ("my-reference", clid)
        clid = self._next_clid
        self._next_clid += 1
        if callable_:
            clid = -clid
        self._exports[clid] = [obj, 1]
        self._clids[id(obj)] = clid
        furl = None if callable_ else self.tub._furl_for_export(obj)
        return ("my-reference", clid, _interface_name(obj), furl)

    def _give(self, ref: RemoteReference) -> tuple[Any, ...]:
        furl = ref.broker.furl_of(ref.luid) if isinstance(ref.broker, TubBroker) else None
        if furl is None:
            raise TypeError(f"{ref!r} cannot be given to another Tub: its owner sent no FURL for it")
        gift_id = self._gift_ids.get(id(ref))
        if gift_id is None:
            gift_id = self._next_gift_id
            self._next_gift_id += 1
            self._gifts[gift_id] = [ref, 0]
            self._gift_ids[id(ref)] = gift_id
        self._gifts[gift_id][1] += 1
        return ("their-reference", gift_id, furl)

    def _unslice(self, kind: str, *payload: Any) -> Any:
        """What the decoder builds for a reference or a copy."""
        if kind == "my-reference":
            return self._import(*payload)
        if kind == "your-reference":
            entry = self._exports.get(payload[0])
            if entry is None:
                raise Violation(f"your-reference to unknown clid {payload[0]}")
            return entry[0]
        if kind == "their-reference":
            if not self.tub.acceptGifts:
                raise Violation("this Tub does not accept gifts")
            gift = _Gift(*payload)
            FURL.parse(gift.furl)
            self._unresolved.append(gift)
            return gift
        if kind == "copyable":
            typename, state = payload
            if typename == FAILURE_TYPE:
                return remote_error(state)
            if typename == CACHE_TYPE and "cacheable" in self.peer_extensions:
                return self._receive_cacheable(state)
            if unjellyableFor(typename.encode()) is None:
                return NotImplemented
            return make_copy(typename.encode(), state)
        raise Violation(f"unknown reference kind {kind!r}")

    def _import(self, clid: int, interface: str | None = None, furl: str | None = None) -> TubReference:
        if furl is not None:
            owner = FURL.parse(furl).tubID
            if owner != self.peer_tub_id:
                raise Violation(f"Tub {self.peer_tub_id} sent a reference with a FURL of Tub {owner}")
        if interface is not None or furl is not None:
            self._import_info[clid] = (interface, furl)
        weak = self._proxies.get(clid)
        ref = weak() if weak is not None else None
        if ref is None:
            ref = TubReference(self, clid)
            self._proxies[clid] = weakref.ref(ref)
        ref._count += 1
        return ref

    def furl_of(self, clid: int) -> str | None:
        info = self._import_info.get(clid)
        return info[1] if info else None

    # ------------------------------------------------------------------ reference counts

    def release(self, clid: int, count: int) -> None:
        """A proxy died: tell the owner. Runs in finalizers (any thread, any moment), so it only
        queues."""
        if self.disconnected:
            return
        self._releases.append((clid, count))
        if len(self._releases) == 1:
            try:
                self._loop.call_soon_threadsafe(self._send_releases)
            except RuntimeError:  # the loop is closed: so is the connection
                pass

    def _send_releases(self) -> None:
        releases, self._releases = self._releases, []
        for clid, count in releases:
            weak = self._proxies.get(clid)
            if weak is not None and weak() is None:
                del self._proxies[clid]
            if self.disconnected:
                continue
            self.call(0, "decref", (), {"clid": clid, "count": count}).add_done_callback(
                lambda f, clid=clid: self._released(clid, f)
            )

    def _released(self, clid: int, future: asyncio.Future[Any]) -> None:
        if not future.cancelled():
            future.exception()  # a lost connection is no news here
        if clid not in self._proxies:
            self._import_info.pop(clid, None)
            self._dying_caches.pop(clid, None)

    # ------------------------------------------------------------------ Cacheables (pbfast peers)

    def _send_cacheable(self, obj: Cacheable) -> tuple[Any, ...]:
        if "cacheable" not in self.peer_extensions:
            raise TypeError(f"Tub {self.peer_tub_id} does not take Cacheables (it is not a pbfast Tub)")
        handle = self._cache_handles.get(id(obj))
        state: dict[str, Any] = {"type": _tag_text(obj.getTypeToCopy())}
        if handle is None:
            handle = self._cache_handles[id(obj)] = _CacheHandle(self, obj)
            state["state"] = obj.getStateToCacheAndObserveFor(None, handle.observer)
        elif id(handle) not in self._clids:  # the holder let go: it needs the state again
            state["state"] = obj.getStateToCacheAndObserveFor(None, handle.observer)
        state["handle"] = handle
        return ("copyable", CACHE_TYPE, state)

    def _receive_cacheable(self, state: dict[str, Any]) -> Any:
        handle = state.get("handle")
        if not isinstance(handle, TubReference) or handle.broker is not self:
            raise Violation("a cacheable without its handle")
        weak = self._caches.get(handle.luid)
        cache = weak() if weak is not None else None
        if cache is not None:
            return cache
        tag = str(state.get("type", "")).encode()
        registered = unjellyableFor(tag)
        if registered is None:
            return NotImplemented
        if "state" in state:
            cache = make_copy(tag, state["state"])
        elif handle.luid in self._dying_caches:
            cls, attributes = self._dying_caches.pop(handle.luid)
            cache = cls.__new__(cls)
            cache.__dict__.update(attributes)
        else:
            raise Violation(f"no cached copy {handle.luid} to update")
        if not isinstance(cache, RemoteCache):
            raise Violation(
                f"{qualified_name(type(cache))} is registered for a cacheable but is not a RemoteCache"
            )
        cache._tub_link = _CacheLink(self, handle)
        self._caches[handle.luid] = weakref.ref(cache)
        self._loop.call_soon(handle.callRemoteOnly, "subscribe", _CacheEndpoint(cache))
        return cache

    def cache_died(self, clid: int, cache: RemoteCache) -> None:
        """Keep a dying copy's state until the owner acknowledges the release (it may name the
        copy again meanwhile, without its state)."""
        if not self.disconnected:
            attributes = {k: v for k, v in cache.__dict__.items() if k != "_tub_link"}
            self._dying_caches[clid] = (type(cache), attributes)

    def watch(self, ref: RemoteReference) -> None:
        self._watched[id(ref)] = ref

    def unwatch(self, ref: RemoteReference) -> None:
        self._watched.pop(id(ref), None)

    def statistics(self) -> dict[str, int]:
        """Sizes of this connection's tables (for tests, monitoring and leak hunts)."""
        return {
            "exported": len(self._exports),
            "imported": sum(1 for w in self._proxies.values() if w() is not None),
            "gifts": len(self._gifts),
            "pending": len(self._pending),
        }

    # ------------------------------------------------------------------ keepalives and the end

    def _schedule_keepalive(self) -> None:
        intervals = [t for t in (self.tub.keepaliveTimeout, self.tub.disconnectTimeout) if t]
        if intervals:
            self._keepalive = self._loop.call_later(min(intervals), self._check_idle)

    def _check_idle(self) -> None:
        if self.disconnected:
            return
        idle = self._loop.time() - self._last_received
        if self.tub.disconnectTimeout and idle >= self.tub.disconnectTimeout:
            self.fail(
                DeadReferenceError(f"no data from Tub {self.peer_tub_id} for {idle:.0f} s"), notify=False
            )
            return
        if self.tub.keepaliveTimeout and idle >= self.tub.keepaliveTimeout:
            self._link.send(self._encoder.ping(0))
        self._schedule_keepalive()

    def _spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        task = self._loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def cancel_tasks(self) -> list[asyncio.Task[Any]]:
        """Cancel the remote methods still running (the Tub is stopping); the tasks."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        return tasks

    def fail(self, reason: BaseException, *, notify: bool = True) -> None:
        """End the connection for `reason` (telling the peer, if `notify`, with an ERROR token)."""
        if self.disconnected:
            return
        if notify:
            self._link.send(
                _core.encode_tokens([("ERROR", str(reason).encode("utf-8", "replace"))], "foolscap")
            )
        self._link.close(reason)

    def connection_lost(self, reason: BaseException | None) -> None:
        if self.disconnected:
            return
        self.disconnected = True
        if self._keepalive is not None:
            self._keepalive.cancel()
        why = f": {reason}" if reason else ""
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                lost = PBConnectionLost(f"the connection to Tub {self.peer_tub_id} was lost{why}")
                lost.__cause__ = reason
                future.set_exception(lost)
        handles, self._cache_handles = list(self._cache_handles.values()), {}
        for handle in handles:
            handle.stop()
        self._exports.clear()
        self._clids.clear()
        self._gifts.clear()
        self._gift_ids.clear()
        self._queue.clear()
        watched, self._watched = self._watched, {}
        for ref in watched.values():
            for callback in ref._disconnect_callbacks or ():
                try:
                    callback(ref)
                except Exception:
                    log.exception("notifyOnDisconnect callback %r failed", callback)
            ref._disconnect_callbacks = None
        if not self.closed.done():
            self.closed.set_result(reason)
        self.tub._broker_lost(self)


class _CacheHandle(Referenceable):
    """The owner's end of one holder's copy of a Cacheable: the holder subscribes an endpoint
    to it, and `observer` (what the Cacheable keeps) sends updates there. Updates made before
    the subscription arrives wait for it, in order."""

    def __init__(self, broker: TubBroker, cacheable: Cacheable) -> None:
        self.broker = broker
        self.cacheable = cacheable
        self.observer = RemoteCacheObserver(self, cacheable, None, 0)  # type: ignore[arg-type]
        self._endpoint: RemoteReference | None = None
        self._waiting: list[tuple[str, tuple, dict, asyncio.Future[Any]]] = []
        self._stopped = False

    def remote_subscribe(self, endpoint: RemoteReference) -> None:
        self._endpoint = endpoint
        waiting, self._waiting = self._waiting, []
        for name, args, kwargs, future in waiting:
            _forward(endpoint.callRemote("observe", name, args, kwargs), future)

    def call(
        self, _luid: int, name: str, args: tuple, kwargs: dict, cache: bool = True
    ) -> asyncio.Future[Any]:
        """What `observer.callRemote` runs."""
        if self._stopped:
            future = asyncio.get_running_loop().create_future()
            future.set_exception(DeadReferenceError("the holder of this copy has let go of it"))
            return future
        if self._endpoint is not None:
            return self._endpoint.callRemote("observe", name, args, kwargs)
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((name, args, kwargs, future))
        return future

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._endpoint = None
        self.broker._cache_handles.pop(id(self.cacheable), None)
        for *_, future in self._waiting:
            if not future.done():
                future.set_exception(DeadReferenceError("the holder of this copy has let go of it"))
        self._waiting.clear()
        try:
            self.cacheable.stoppedObserving(None, self.observer)
        except Exception:
            log.exception("stoppedObserving of %r failed", self.cacheable)


class _CacheEndpoint(Referenceable):
    """The holder's end: runs the owner's updates as ``observe_*`` on the copy (held weakly,
    so the copy can go when its holder drops it)."""

    def __init__(self, cache: RemoteCache) -> None:
        self._cache = weakref.ref(cache)

    def remote_observe(self, name: str, args: tuple, kwargs: dict) -> Any:
        cache = self._cache()
        if cache is None:
            raise DeadReferenceError("the copy is gone")
        return cache.remoteMessageReceived(None, name, tuple(args), kwargs)  # type: ignore[arg-type]


class _CacheLink:
    """Kept on a copy: holds the owner's handle (so the owner keeps sending updates while the
    copy lives) and reports the copy's death to the broker."""

    __slots__ = ("broker", "handle")

    def __init__(self, broker: TubBroker, handle: TubReference) -> None:
        self.broker = broker
        self.handle = handle


def _forward(source: asyncio.Future[Any], destination: asyncio.Future[Any]) -> None:
    """Settle `destination` as `source` settles."""

    def settle(done: asyncio.Future[Any]) -> None:
        error = None if done.cancelled() else done.exception()
        if destination.done():
            return
        if done.cancelled():
            destination.cancel()
        elif error is not None:
            destination.set_exception(error)
        else:
            destination.set_result(done.result())

    source.add_done_callback(settle)


def _tag_text(tag: str | bytes) -> str:
    return tag.decode() if isinstance(tag, bytes) else tag


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _interface_name(obj: Any) -> str | None:
    name = getattr(obj, "remote_interface_name", None)
    return name if isinstance(name, str) else None


def _cut(text: str, limit: int) -> bytes:
    return text.encode("utf-8", "replace")[:limit]


def failure_state(exc: BaseException, unsafe_tracebacks: bool) -> list[tuple[str, Any]]:
    """The attributes of foolscap's failure copyable for `exc`, cut to foolscap's limits."""
    cls = type(exc)
    if isinstance(exc, RemoteError):  # passing on a remote failure keeps its remote type
        return _copied_failure_state(exc)
    if isinstance(exc, Violation):  # foolscap's own class, so its callers can trap it
        parents = [VIOLATION_TYPE, *(qualified_name(c) for c in Exception.__mro__)]
        return _state(exc, VIOLATION_TYPE, parents, unsafe_tracebacks)
    return _state(exc, qualified_name(cls), parents_of(cls), unsafe_tracebacks)


def _state(
    exc: BaseException, type_name: str, parents: list[str], unsafe_tracebacks: bool
) -> list[tuple[str, Any]]:
    cls = type(exc)
    try:
        value = str(exc)
    except Exception as e:  # a broken __str__ must not become a second failure
        value = f"<str() of {qualified_name(cls)} failed: {e!r}>"
    text = "".join(traceback.format_exception(exc)) if unsafe_tracebacks else UNAVAILABLE
    if len(text) > 1900:
        text = text[:700] + "\n\n-- TRACEBACK ELIDED --\n\n" + text[-1200:]
    return [
        ("value", _cut(value, _VALUE_LIMIT)),
        ("type", _cut(type_name, _TYPE_LIMIT)),
        ("traceback", text.encode("utf-8", "replace")),
        ("parents", [_cut(name, _PARENT_LIMIT) for name in parents]),
    ]


def _copied_failure_state(error: RemoteError) -> list[tuple[str, Any]]:
    return [
        ("value", _cut(str(error.remoteValue), _VALUE_LIMIT)),
        ("type", _cut(error.remoteType, _TYPE_LIMIT)),
        ("traceback", _cut(error.remoteTraceback or UNAVAILABLE, 2000)),
        ("parents", [_cut(name, _PARENT_LIMIT) for name in error.parents]),
    ]


def _substitute(value: Any) -> Any:
    """`value` with each resolved `_Gift` replaced by its reference (gifts are rare, so this
    walk only runs for messages that carried one)."""
    if isinstance(value, _Gift):
        return value.reference
    if isinstance(value, list):
        value[:] = [_substitute(v) for v in value]
        return value
    if isinstance(value, tuple):
        return tuple(_substitute(v) for v in value)
    if isinstance(value, dict):
        for key in list(value):
            value[key] = _substitute(value[key])
        return value
    if isinstance(value, (set, frozenset)):
        return type(value)(_substitute(v) for v in value)
    if hasattr(value, "__dict__") and not isinstance(value, type) and hasattr(value, "setCopyableState"):
        for key, item in vars(value).items():
            setattr(value, key, _substitute(item))
    return value
