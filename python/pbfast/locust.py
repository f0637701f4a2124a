"""Locust users that load-test pbfast (and Twisted PB, and foolscap) servers: `PbUser` calls over
the PB wire (Locust's host is a client endpoint such as ``tcp:host=127.0.0.1:port=8787``),
`TubUser` calls an object in a Tub (the host is its FURL). Their ``self.client.callRemote(...)``
blocks the user's greenlet like Locust's other clients, returns the result or raises, and
reports each call to Locust: request type ``PB`` or ``TUB``, the method's name, the response
time, the failure.

Locust runs on gevent, pbfast on asyncio. Each Locust process gets one event-loop thread
(running uvloop's loop when uvloop is installed; see `use_event_loop`), started when the first
user connects. Crossing between them costs one wake-up per batch of calls, not one per call:
calls go to the loop through a queue that wakes the loop only when it has no wake-up pending,
and finished calls come back through another that wakes gevent's hub the same way (with a
thread-safe gevent ``async`` watcher), where each waiting greenlet is resumed.

Importing this module imports Locust, which monkey-patches the standard library for gevent (as
running ``locust`` does anyway); ``import pbfast`` alone imports neither Locust nor gevent.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import os
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Executor
from typing import Any, ClassVar, Literal, TypeVar, TypeVarTuple

try:
    import locust
except ImportError as _missing:
    raise ImportError(f"pbfast.locust needs Locust: pip install 'pbfast[locust]' ({_missing})") from _missing
import gevent
import gevent.monkey
from gevent.hub import Waiter

from ._connection import Connection
from .endpoints import parse_client
from .furl import FURL
from .pb import connect
from .referenceable import RemoteReference
from .tub import Tub

__all__ = ["CONNECT_NAME", "Client", "PbUser", "Reference", "TubUser", "use_event_loop"]

CONNECT_NAME = "(connect)"
"""The name connection attempts are reported under (no method can have it)."""
# How long stopping the event-loop thread at exit may take, closing what is still open (s).
_STOP_TIMEOUT = 10.0
# How often the calls' deadlines are checked (s): a call times out this much late at most.
_SWEEP_INTERVAL = 0.05

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

_start_new_thread: Callable[..., Any] = gevent.monkey.get_original("_thread", "start_new_thread")
_allocate_lock: Callable[[], Any] = gevent.monkey.get_original("_thread", "allocate_lock")


class _Bridge:
    """The process's event-loop thread, and the crossing between it and gevent's hub."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.loop = _new_loop(kind)
        # gevent -> loop: calls to start. A wake-up is sent only when none is pending.
        self._outbox: deque[tuple[Callable[[], Any], Waiter[Any], float | None]] = deque()
        self._outbox_woken = False
        # loop -> gevent: finished calls. Likewise.
        self._inbox: deque[tuple[Waiter[Any], asyncio.Future[Any]]] = deque()
        self._inbox_woken = False
        # Any: every gevent loop's watchers have `ref`, its interface does not name it.
        self._watcher: Any = gevent.get_hub().loop.async_(ref=False)
        self._watcher.start(self._deliver)
        # The watcher keeps the hub running (`ref`) only while some greenlet waits for a call.
        self._waiting = 0
        # On the loop: the deadlines of the calls that have one, checked by `_sweep`.
        self._deadlines: dict[asyncio.Future[Any], float] = {}
        self._sweeping = False
        self.stopped = False
        self._finished = _allocate_lock()
        self._finished.acquire()
        # A native thread, not a greenlet (gevent patched `threading`).
        _start_new_thread(self._run, ())

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()
            self._finished.release()

    # ------------------------------------------------------------------ in a greenlet

    def call(self, start: Callable[[], Any], timeout: float | None) -> Any:
        """Run ``start()`` on the loop (it returns a future, or an awaitable run as a task)
        and block this greenlet until that is done: its result, or its exception raised.

        Raises:
            TimeoutError: not done within `timeout` seconds (it is then cancelled).
            RuntimeError: the event-loop thread has stopped.
        """
        if self.stopped:
            raise RuntimeError("the pbfast event-loop thread of this Locust process has stopped")
        waiter: Waiter[Any] = Waiter()
        self._outbox.append((start, waiter, timeout))
        if not self._outbox_woken:
            self._outbox_woken = True
            self.loop.call_soon_threadsafe(self._start_calls)
        if not self._waiting:
            self._watcher.ref = True
        self._waiting += 1
        try:
            future: asyncio.Future[Any] = waiter.get()
        finally:
            self._waiting -= 1
            if not self._waiting:
                self._watcher.ref = False
        try:
            return future.result()
        except asyncio.CancelledError:
            # Only a timeout cancels, or stopping the thread.
            if timeout is None:
                raise RuntimeError("cancelled: the pbfast event-loop thread is stopping") from None
            raise TimeoutError(f"no answer within {timeout:g} s") from None

    def _deliver(self) -> None:
        """In the hub, woken from the loop: resume the greenlet of each finished call (each runs
        until it waits again, then the next is resumed)."""
        self._inbox_woken = False  # before draining: a call finishing from now on wakes us again
        inbox = self._inbox
        while inbox:
            waiter, future = inbox.popleft()
            waiter.switch(future)

    # ------------------------------------------------------------------ on the loop

    def _start_calls(self) -> None:
        self._outbox_woken = False  # before draining, as in `_deliver`
        outbox = self._outbox
        loop = self.loop
        now = loop.time()
        while outbox:
            start, waiter, timeout = outbox.popleft()
            try:
                started = start()
                future = started if asyncio.isfuture(started) else loop.create_task(_awaited(started))
            except Exception as e:
                future = loop.create_future()
                future.set_exception(e)
            if timeout is not None and not future.done():
                self._deadlines[future] = now + timeout
                if not self._sweeping:
                    self._sweeping = True
                    loop.call_later(_SWEEP_INTERVAL, self._sweep)
            future.add_done_callback(functools.partial(self._finished_call, waiter))

    def _sweep(self) -> None:
        """Cancel the calls past their deadline (a timer per call would cost more)."""
        now = self.loop.time()
        for future in [future for future, deadline in self._deadlines.items() if deadline <= now]:
            future.cancel()
        if self._deadlines:
            self.loop.call_later(_SWEEP_INTERVAL, self._sweep)
        else:
            self._sweeping = False

    def _finished_call(self, waiter: Waiter[Any], future: asyncio.Future[Any]) -> None:
        self._deadlines.pop(future, None)
        if not future.cancelled():
            future.exception()  # retrieved, even if its greenlet was killed while it waited
        self._inbox.append((waiter, future))
        if not self._inbox_woken:
            self._inbox_woken = True
            self._watcher.send()  # thread-safe: libev's ev_async_send

    # ------------------------------------------------------------------ at exit

    def stop(self, cleanup: Callable[[], Awaitable[None]]) -> None:
        """Run `cleanup` on the loop, then stop the loop and wait for its thread to end (all
        bounded by `_STOP_TIMEOUT`)."""
        if self.stopped:
            return
        self.stopped = True

        def finish() -> None:
            task = self.loop.create_task(asyncio.wait_for(cleanup(), _STOP_TIMEOUT))
            task.add_done_callback(lambda _: self.loop.stop())

        self.loop.call_soon_threadsafe(finish)
        self._finished.acquire(timeout=_STOP_TIMEOUT + 1.0)
        self._watcher.stop()
        self._watcher.close()


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    # gevent patched `selectors` (its selector waits in a gevent hub): use the original one.
    selector_class = gevent.monkey.get_original("selectors", "DefaultSelector")
    return _NativeThreadsLoop(selector_class())


class _NativeThreadsLoop(asyncio.SelectorEventLoop):
    """asyncio's loop in a process gevent has patched: what it would run in its default
    executor (name lookups) runs in a native thread instead, since the executor's threads
    would be greenlets of a hub no thread runs, and names are looked up by the unpatched
    resolver."""

    def run_in_executor(
        self, executor: Executor | None, func: Callable[[*_Ts], _T], *args: *_Ts
    ) -> asyncio.Future[_T]:
        if executor is not None:
            return super().run_in_executor(executor, func, *args)
        future = self.create_future()

        def run() -> None:
            try:
                result = func(*args)
            except BaseException as e:  # handed to the awaiting task
                self.call_soon_threadsafe(_settle, future, None, e)
            else:
                self.call_soon_threadsafe(_settle, future, result, None)

        _start_new_thread(run, ())
        return future

    async def getaddrinfo(
        self, host: Any, port: Any, *, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> list[Any]:
        lookup = gevent.monkey.get_original("socket", "getaddrinfo")
        result: list[Any] = await self.run_in_executor(None, lookup, host, port, family, type, proto, flags)
        return result

    async def getnameinfo(self, sockaddr: Any, flags: int = 0) -> tuple[str, str]:
        lookup = gevent.monkey.get_original("socket", "getnameinfo")
        result: tuple[str, str] = await self.run_in_executor(None, lookup, sockaddr, flags)
        return result


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


# ---------------------------------------------------------------------- this process's state

_kind: str | None = None
_bridge: _Bridge | None = None
_tub: Tub | None = None
# The PB connections the users opened and have not closed: closed at exit.
_open: weakref.WeakSet[Connection] = weakref.WeakSet()


def use_event_loop(kind: Literal["uvloop", "asyncio"]) -> None:
    """Choose the event loop of this process's pbfast thread: ``"uvloop"`` (the default when
    uvloop is installed) or ``"asyncio"`` (the standard library's, with its own selector rather
    than gevent's). Call it before the first user starts, e.g. at the top of the locustfile.

    Raises:
        ValueError: an unknown kind.
        ImportError: ``"uvloop"`` without uvloop installed.
        RuntimeError: the thread has already started.
    """
    global _kind
    if kind not in ("uvloop", "asyncio"):
        raise ValueError(f"use_event_loop takes 'uvloop' or 'asyncio', not {kind!r}")
    if kind == "uvloop":
        import uvloop  # noqa: F401
    if _bridge is not None:
        raise RuntimeError(f"the pbfast event-loop thread has already started, running {_bridge.kind}")
    _kind = kind


def _get_bridge() -> _Bridge:
    global _bridge
    if _bridge is None:
        kind = _kind
        if kind is None:
            try:
                import uvloop  # noqa: F401
            except ImportError:
                kind = "asyncio"
            else:
                kind = "uvloop"
        _bridge = _Bridge(kind)
        atexit.register(_stop)
    return _bridge


def _stop() -> None:
    global _bridge, _tub
    bridge, tub = _bridge, _tub
    _bridge = _tub = None
    if bridge is None:
        return

    async def cleanup() -> None:
        if tub is not None:
            await tub.stopService(grace=0)
        await asyncio.gather(*(broker.close() for broker in list(_open)), return_exceptions=True)

    bridge.stop(cleanup)


def _forget_after_fork() -> None:
    # A forked child (Locust's --processes) has none of its parent's threads.
    global _bridge, _tub
    _bridge = _tub = None
    _open.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


# ---------------------------------------------------------------------- what users call


class Client:
    """A user's ``self.client``: calls the target object (PB: the server's root object; Tub:
    the object the FURL names) and reports each call to Locust.

    Each connection attempt is reported too, under the name ``(connect)``. A call made while
    the connection is gone first connects again, and fails (reported, and raised) if that fails.
    """

    def __init__(
        self, user: locust.User, request_type: Literal["PB", "TUB"], host: str, timeout: float | None
    ) -> None:
        self.user = user
        """The Locust user whose calls these are (its environment gets the reports)."""
        self.request_type = request_type
        """The request type calls are reported under: ``"PB"`` or ``"TUB"``."""
        self.host = host
        """What the client connects to: a client endpoint (PB) or a FURL (Tub)."""
        self.timeout = timeout
        """Seconds a connection attempt or a call may take before it fails with TimeoutError
        (None: no limit)."""
        self.reference: RemoteReference | None = None
        """The target's `RemoteReference` (None: not connected)."""

    def callRemote(self, _name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call ``remote_<_name>(*args, **kwargs)`` on the target and return the result (this
        greenlet waits, the others run), connecting first if the connection is gone. The call is
        reported to Locust under the method's name, with its response time in milliseconds and,
        if it failed, its exception (a remote error's text shows in Locust's failures).

        References in the result (the result itself, or inside its lists, tuples and dicts) come
        back as `Reference`, whose calls are reported the same way; a `Reference` in the
        arguments travels as its `RemoteReference`.

        Raises:
            RemoteError: the remote method raised.
            TimeoutError: no answer within `timeout` seconds.
            DeadReferenceError, PBConnectionLost: the connection is gone, or ended during the
                call.
            OSError, NegotiationError: connecting again failed.
            JellyError, BananaError: an argument cannot be sent, or the answer not decoded.
        """
        return self._call(None, _name, args, kwargs)

    def _call(
        self, reference: RemoteReference | None, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """`callRemote` on `reference` (None: the target, connecting first if needed)."""
        started = time.perf_counter()
        try:
            if reference is None:
                if self.reference is None or self.reference.broker.disconnected:
                    self.connect()
                assert self.reference is not None
                reference = self.reference
            target = reference
            if not _all_atoms(args):
                args = _unwrap(args, {})
            if kwargs and not _all_atoms(kwargs.values()):
                kwargs = _unwrap(kwargs, {})
            result = _get_bridge().call(lambda: target.callRemote(name, *args, **kwargs), self.timeout)
        except Exception as e:
            self._report(name, started, 0, e)
            raise
        self._report(name, started, len(result) if isinstance(result, bytes | str) else 0, None)
        return _wrap(result, self, {})

    def connect(self) -> None:
        """Connect (again), after closing the current connection; reported as ``(connect)``.

        Raises:
            OSError, TimeoutError, NegotiationError: the attempt failed.
            ValueError, BadFURLError: the host is not a client endpoint (PB) or a FURL (Tub).
            RemoteError: (Tub) the target Tub has no object under the FURL's name.
        """
        self.close()
        started = time.perf_counter()
        try:
            self.reference = _get_bridge().call(self._open, self.timeout)
        except Exception as e:
            self._report(CONNECT_NAME, started, 0, e)
            raise
        self._report(CONNECT_NAME, started, 0, None)

    async def _open(self) -> RemoteReference:
        global _tub
        if self.request_type == "PB":
            root = await (
                connect(self.host) if self.timeout is None else connect(self.host, timeout=self.timeout)
            )
            if isinstance(root.broker, Connection):
                _open.add(root.broker)
            return root
        if _tub is None:
            _tub = Tub()
        return await _tub.getReference(self.host)

    def close(self) -> None:
        """Close the connection; calls through the references it gave fail from now on. (For a
        Tub only this user's reference is dropped: the connection is the process's, shared by
        its users.) Not reported."""
        reference, self.reference = self.reference, None
        if reference is None or self.request_type != "PB":
            return
        broker = reference.broker
        if isinstance(broker, Connection) and not broker.disconnected:
            _get_bridge().call(lambda: _close(broker), self.timeout)

    def _report(self, name: str, started: float, length: int, error: Exception | None) -> None:
        # The response time counts from the call in the greenlet to its result back in it, as
        # Locust's own clients count theirs.
        self.user.environment.events.request.fire(
            request_type=self.request_type,
            name=name,
            response_time=(time.perf_counter() - started) * 1000.0,
            response_length=length,
            exception=error,
            context=self.user.context(),
        )

    def __repr__(self) -> str:
        return f"<pbfast.locust.Client {self.request_type} {self.host}>"


async def _close(broker: Connection) -> None:
    _open.discard(broker)  # on the loop, as `_open` is changed only there
    await broker.close()


class Reference:
    """A `RemoteReference` that came back in a result of a `Client` call: `callRemote` blocks
    the greenlet and is reported to Locust, as the client's own calls are."""

    def __init__(self, reference: RemoteReference, client: Client) -> None:
        self.reference = reference
        """The `RemoteReference` called through."""
        self.client = client
        """The client it came through (its user gets the reports)."""

    def callRemote(self, _name: str, /, *args: Any, **kwargs: Any) -> Any:
        """As `Client.callRemote`, on this object; a call made after its connection is gone
        fails with DeadReferenceError (reported)."""
        return self.client._call(self.reference, _name, args, kwargs)

    def __repr__(self) -> str:
        return f"<pbfast.locust.Reference to {self.reference!r}>"


# Results and arguments are walked for references; containers are rebuilt, sharing and cycles
# kept (`memo`: id of a container -> its copy).
_ATOMS = frozenset({int, str, bytes, float, bool, type(None)})


def _all_atoms(values: Iterable[Any]) -> bool:
    for value in values:
        if type(value) not in _ATOMS:
            return False
    return True


def _wrap(value: Any, client: Client, memo: dict[int, Any]) -> Any:
    kind = type(value)
    if kind in _ATOMS:
        return value
    if isinstance(value, RemoteReference):
        return Reference(value, client)
    return _rebuild(value, kind, memo, lambda v: _wrap(v, client, memo))


def _unwrap(value: Any, memo: dict[int, Any]) -> Any:
    kind = type(value)
    if kind in _ATOMS:
        return value
    if isinstance(value, Reference):
        return value.reference
    return _rebuild(value, kind, memo, lambda v: _unwrap(v, memo))


def _rebuild(value: Any, kind: type, memo: dict[int, Any], convert: Callable[[Any], Any]) -> Any:
    if kind is not list and kind is not dict and kind is not tuple:
        return value
    done = memo.get(id(value))
    if done is not None:
        return done
    if kind is list:
        new_list: list[Any] = []
        memo[id(value)] = new_list
        new_list.extend(convert(v) for v in value)
        return new_list
    if kind is dict:
        new_dict: dict[Any, Any] = {}
        memo[id(value)] = new_dict
        for k, v in value.items():
            new_dict[k] = convert(v)
        return new_dict
    new_tuple = tuple(convert(v) for v in value)
    memo[id(value)] = new_tuple
    return new_tuple


class _RpcUser(locust.User):
    """What `PbUser` and `TubUser` share."""

    abstract = True
    request_type: ClassVar[Literal["PB", "TUB"]]
    timeout: float | None = 60.0
    """Seconds a connection attempt or a call may take before it fails with TimeoutError
    (None: no limit)."""

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.client: Client = Client(self, self.request_type, self._checked_host(), self.timeout)
        """Calls the target: ``self.client.callRemote("method", ...)``."""

    def _checked_host(self) -> str:
        raise NotImplementedError

    def on_start(self) -> None:
        """Connect. A failure is reported (as ``(connect)``) rather than raised, so the user
        goes on: its next call connects again."""
        try:
            self.client.connect()
        except Exception:
            pass  # reported already; raising would end the user (Locust runs no task after it)

    def on_stop(self) -> None:
        """Close the connection."""
        self.client.close()


class PbUser(_RpcUser):
    """A Locust user that calls a PB server (pbfast's or Twisted's): Locust's host (``--host``,
    or the class's ``host``) is a client endpoint, like ``tcp:host=127.0.0.1:port=8787`` (the
    strings `pbfast.connect` takes). Each user has its own connection, opened in ``on_start``
    and closed in ``on_stop``; ``self.client.callRemote(...)`` calls the server's root object.
    Calls are reported as ``PB``; ``timeout`` (default 60 s, None: none) bounds each call and
    each connection attempt.

    Raises:
        ValueError: (when Locust makes a user) the host is missing or not a client endpoint.
    """

    abstract = True
    request_type: ClassVar[Literal["PB", "TUB"]] = "PB"
    """The request type the calls are reported under."""

    def _checked_host(self) -> str:
        if not self.host:
            raise ValueError(f"{type(self).__name__} needs a host (--host): a PB client endpoint")
        try:
            parse_client(self.host)
        except ValueError as e:
            hint = " (a FURL is for a TubUser)" if self.host.startswith("pb://") else ""
            raise ValueError(
                f"{type(self).__name__}: the host is not a PB client endpoint{hint}: {e}"
            ) from None
        return self.host


class TubUser(_RpcUser):
    """A Locust user that calls an object in a Tub (pbfast's or foolscap's): Locust's host
    (``--host``, or the class's ``host``) is its FURL. The users of one Locust process share one
    client Tub, and so (as between any two Tubs) one connection to the target's Tub; each user
    gets its own reference in ``on_start``, and ``self.client.callRemote(...)`` calls the
    object. Calls are reported as ``TUB``; ``timeout`` as for `PbUser`.

    Raises:
        ValueError: (when Locust makes a user) the host is missing or not a FURL.
    """

    abstract = True
    request_type: ClassVar[Literal["PB", "TUB"]] = "TUB"
    """The request type the calls are reported under."""

    def _checked_host(self) -> str:
        if not self.host:
            raise ValueError(f"{type(self).__name__} needs a host (--host): a FURL")
        try:
            FURL.parse(self.host)
        except ValueError as e:
            raise ValueError(f"{type(self).__name__}: the host is not a FURL: {e}") from None
        return self.host
