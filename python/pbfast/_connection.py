"""The connection layer both wires share.

A `Connection` is the asyncio protocol of one connection, Twisted PB's or a Tub's. It owns what
every connection needs whatever its wire:

- bytes: outgoing bytes gathered and written once per loop iteration; back-pressure both ways
  (calls held while the peer does not read our replies or `max_in_flight` of its calls run,
  reading paused past `backlog` held calls);
- limits: the tables a peer can grow (`max_refs`, `max_proxies`), the receive limits handed to
  the wire's decoder, and the process-wide `memory_budget` for incomplete incoming messages;
- time: `handshake_timeout`, `idle_timeout` and keepalives;
- the end: closing, cutting off, shutting down with a grace period, and freeing everything the
  moment the connection is lost (no reference cycle keeps a closed connection's buffers);
- the object tables of a broker: our calls awaiting replies, our objects the peer holds
  (counted in the Rust `RefTable`), the peer's objects we hold (proxies and cached copies),
  reference releases, the state of dying copies, and disconnect watchers;
- the control channel to a pbfast peer (`call_control`, `call_control_only`; its calls run
  ``_control_<method>`` here), which the pbfast-to-pbfast extensions are built on, and two of
  them (`pbfast._calls`): calls cancelled across the wire, and calls with options (deadlines);
- what `pbfast.metrics` reads of connections: the open ones (`tracked`), and the peer's calls
  that end in Python (an awaitable's, a refused one's); the core counts the rest.

Each connection has one Rust session (`self._session`, a `pbfast._core.Session` of its wire):
bytes in, events out, our calls and answers encoded and queued there, the tables kept there.
A wire subclasses `Connection` and adds only its dialect: `pbfast._broker.Broker` (Twisted PB)
and `pbfast._tub_broker.TubBroker` (foolscap) make the session, negotiate and give meaning to
events through the hooks at the end of the class.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextvars
import functools
import inspect
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, TypedDict

from . import _calls, _core, _streaming, _tracing
from .endpoints import PeerAddress, _set_nodelay
from .errors import DeadReferenceError, Error, LimitExceeded, NoSuchMethod, PBConnectionLost, qualified_name
from .streams import RemoteStream, Stream

if TYPE_CHECKING:
    from .cacheable import RemoteCache

__all__ = [
    "CLOSE_TIMEOUT",
    "Connection",
    "ConnectionOptions",
    "DEFAULT_MEMORY_BUDGET",
    "MemoryTransport",
    "configure",
    "memory_pair",
    "run_callback",
    "shutdown",
    "short",
    "tracked",
]

log = logging.getLogger("pbfast")

# What two pbfast peers add to the stock protocols, on both wires: the extensions a connection
# announces while connecting (a name after Twisted's dialects, a key in foolscap's hello: both
# ignored by stock peers; see docs/extensions.md) and speaks when the peer announced them too.
# "large": strings, lists and messages up to max_message_size (the sessions switch the limits
# as they negotiate).
EXTENSIONS: frozenset[str] = frozenset({_calls.CANCEL, _calls.OPTIONS, _streaming.EXTENSION, "large"})

RECEIVE_LIMITS = ("max_element_size", "max_message_size", "max_depth", "max_header_length")
DEFAULT_MEMORY_BUDGET = 256 << 20
# Bytes received while calls are held back, after which we stop reading: with `backlog` this
# bounds what held calls can pin, however large each one is.
BACKLOG_BYTES = 4 << 20
# Seconds a closing connection may take to write what is queued before it is cut off.
CLOSE_TIMEOUT = 10.0
# Held calls handled per turn of the loop while draining the backlog.
_DRAIN_BATCH = 64
# The most read from a socket at once (what asyncio and uvloop read at once themselves).
READ_SIZE = 256 << 10
_thread = threading.local()


def _read_buffer() -> memoryview:
    """The buffer this thread's connections read their sockets into: one per thread, as asyncio
    and uvloop have one per loop, so a read allocates nothing and copies nothing (a session
    keeps only what it must of each chunk)."""
    view: memoryview | None = getattr(_thread, "read_buffer", None)
    if view is None:
        view = _thread.read_buffer = memoryview(bytearray(READ_SIZE))
    return view


@dataclass(frozen=True, slots=True)
class ConnectionOptions:
    """Options of one connection, the same names on both wires (given as keywords to
    `pbfast.serve`, `pbfast.connect`, `pbfast.login` and `pbfast.Tub`).

    Attributes:
        unsafeTracebacks: send the full traceback of a failing remote method to the caller
            (off by default: tracebacks reveal server internals).
        max_in_flight: the peer's calls running at once; later ones wait (held, not dropped)
            until some finish.
        backlog: calls held back (the peer is not reading our replies, or `max_in_flight` are
            running); past this many we stop reading from the peer.
        max_refs: how many of our objects the peer may hold references to at once; the call
            that would go past it fails.
        max_proxies: how many of the peer's objects (references and cached copies) it may make
            us hold at once.
        handshake_timeout: seconds from connecting until the handshake is over (PB's dialect
            and version exchange; a Tub's negotiation, as its ``negotiationTimeout``).
        idle_timeout: close after this many seconds without data from the peer (None: never;
            a Tub's ``disconnectTimeout``).
        limits: the receive limits ``max_element_size``, ``max_message_size``, ``max_depth``
            and ``max_header_length`` given (the decoder's defaults for the others).
    """

    unsafeTracebacks: bool = False
    max_in_flight: int = 1024
    backlog: int = 1024
    max_refs: int = 1 << 16
    max_proxies: int = 1 << 16
    handshake_timeout: float | None = 30.0
    idle_timeout: float | None = None
    limits: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_keywords(cls, options: dict[str, Any]) -> ConnectionOptions:
        """Build from ``**options``.

        Raises:
            TypeError: an unknown option name.
            ValueError: a value out of range (counts and sizes must be positive integers,
                timeouts positive numbers or None).
        """
        known = {f.name for f in fields(cls)} - {"limits"}
        unknown = set(options) - known - set(RECEIVE_LIMITS)
        if unknown:
            names = ", ".join(sorted(known | set(RECEIVE_LIMITS)))
            raise TypeError(f"unknown option(s) {', '.join(sorted(unknown))} (known: {names})")
        for name, value in options.items():
            check_option(name, value)
        plain = {k: v for k, v in options.items() if k in known}
        limits = {k: v for k, v in options.items() if k in RECEIVE_LIMITS}
        return cls(**plain, limits=limits)


def check_option(field: str, value: Any, name: str | None = None) -> None:
    """Raise ValueError unless `value` suits the connection option `field` (called `name` in
    the error, where its users know it by another name)."""
    name = name or field
    if field == "unsafeTracebacks":
        return
    if field in ("handshake_timeout", "idle_timeout"):
        seconds = isinstance(value, int | float) and not isinstance(value, bool)
        if value is not None and not (seconds and value > 0):
            raise ValueError(f"{name} must be a positive number of seconds or None, not {value!r}")
        return
    count = isinstance(value, int) and not isinstance(value, bool)
    if not (count and value >= (0 if field == "max_element_size" else 1)):
        raise ValueError(f"{name} must be a positive integer, not {value!r}")


class SessionCallbacks(TypedDict):
    """What a connection gives its session to call (see `pbfast._core.Session`)."""

    wake: Callable[[], None]
    flush: Callable[[], None]
    create_future: Callable[[], asyncio.Future[Any]]
    dead: Callable[[], DeadReferenceError]
    forget: Callable[[int, bool], None]


class _MemoryBudget:
    """Bytes held for incoming messages not yet complete, over every connection of the process
    (connections may run on loops in several threads, hence the lock)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._lock = threading.Lock()

    def change(self, delta: int) -> int:
        """Add `delta` to the bytes held; the new total."""
        with self._lock:
            self.held += delta
            return self.held


_budget = _MemoryBudget(DEFAULT_MEMORY_BUDGET)


class _Tracked:
    """The process's open connections, and how many each wire has made, for `pbfast.metrics`
    (kept whether metrics are on or not: it costs a set insertion per connection)."""

    def __init__(self) -> None:
        self._live: weakref.WeakSet[Connection] = weakref.WeakSet()
        self._opened: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, connection: Connection) -> None:
        with self._lock:
            self._live.add(connection)
            self._opened[connection._WIRE] = self._opened.get(connection._WIRE, 0) + 1

    def discard(self, connection: Connection) -> None:
        with self._lock:
            self._live.discard(connection)

    def connections(self) -> list[Connection]:
        """The connections open now."""
        with self._lock:
            return list(self._live)

    def opened(self) -> dict[str, int]:
        """Connections made so far, per wire."""
        with self._lock:
            return dict(self._opened)


tracked = _Tracked()


def configure(*, memory_budget: int | None = None) -> dict[str, int]:
    """Process-wide settings; returns those in effect (all of them, changed or not).

    Args:
        memory_budget: the most bytes held, over all connections of both wires, for incoming
            messages not yet complete (default 256 MiB). The connection whose bytes would push
            the total past it is closed. Counted as data arrives, so lowering it affects the
            next bytes received.

    Raises:
        ValueError: `memory_budget` is not a positive integer.
    """
    if memory_budget is not None:
        check_option("memory_budget", memory_budget)
        _budget.limit = memory_budget
    return {"memory_budget": _budget.limit}


class Connection(asyncio.BufferedProtocol, abc.ABC):
    """One connection of either wire (see the module docstring); users meet it as
    ``ref.broker``.

    Args:
        options: the connection's options.
        server: True on the side that accepted the connection.
        group: a set the connection belongs to while it is open (a server's or a Tub's).
    """

    # -- what each wire sets
    # Event kinds that ask us to run a call (held back while we cannot take more).
    _CALL_KINDS: ClassVar[frozenset[int]] = frozenset()
    # Event kind -> handler (an unbound method: a table of bound ones would be a cycle).
    _HANDLERS: ClassVar[dict[int, Callable[[Any, tuple[Any, ...]], None]]] = {}
    # The kinds of release `release` and `cache_died` queue for `_write_release`.
    _DECREF: ClassVar[bytes] = b"decref"
    _DECACHE: ClassVar[bytes] = b"decache"
    # The wire's own names for option fields, where its users know them by others.
    _OPTION_NAMES: ClassVar[dict[str, str]] = {}
    # The wire's name (in metrics and traces), and the event kind of a call that raised.
    _WIRE: ClassVar[str] = ""
    _RAISED: ClassVar[int] = -1
    # Where control calls go on the wire: the object id, and the prefix of the method name.
    _CONTROL_ID: ClassVar[Any] = None
    _CONTROL_PREFIX: ClassVar[str] = ""
    # The keys of `statistics()` (a wire adds its own).
    STATISTICS: ClassVar[tuple[str, ...]] = (
        "objects",
        "proxies",
        "cached",
        "pending",
        "in_flight",
        "streams",
        "backlog",
        "buffered",
    )

    def __init__(
        self, options: ConnectionOptions, *, server: bool, group: set[Connection] | None = None
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.options = options
        self.server = server
        self._group = group
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.peer_address: PeerAddress | None = None
        """Where the peer is, once connected."""
        self.peer: str = "(not connected)"
        """The peer's address, for logs: ``host:port``, a socket path, or a memory link's name."""
        self.peer_extensions: frozenset[str] = frozenset()
        """The pbfast extensions both sides speak, once connected (empty with a stock peer)."""
        self.peer_is_pbfast: bool = False
        """Whether the peer announced itself as pbfast while connecting."""
        self.disconnected: bool = False
        self.closed: asyncio.Future[None] = self._loop.create_future()
        """Resolves once the connection is gone."""
        self._closing = False
        self._reason: BaseException | None = None
        # The wire's session: it reads the peer's bytes and runs its calls, encodes ours and
        # holds the bytes waiting to be written (written together once per loop iteration or
        # chunk received), and keeps the tables (our objects the peer may name, the references
        # it holds, our calls awaiting replies). While the connection is up, `call` and
        # `call_only` are the session's own methods (callRemote costs one crossing); once it is
        # gone, this class's methods answer instead.
        self._session = self._open_session(
            SessionCallbacks(
                wake=self._wake,
                flush=self._flush,
                create_future=self._loop.create_future,
                dead=self._dead,
                forget=self._forget,
            )
        )
        self.call = self._session.call  # type: ignore[method-assign]
        self.call_only = self._session.call_only  # type: ignore[method-assign]
        self._take_output = self._session.take  # type: ignore[method-assign]
        # The peer's objects we hold: luid -> proxy, and its cached objects: luid -> copy.
        self._proxies: weakref.WeakValueDictionary[int | bytes, Any] = weakref.WeakValueDictionary()
        self._remote_caches: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
        # Copies we let go of, until the owner acknowledges: luid -> (class, attributes).
        self._dying_caches: dict[int, tuple[type[RemoteCache], dict[str, Any]]] = {}
        # Releases (kind, luid, count) queued by finalizers, sent on the loop.
        self._releases: list[tuple[bytes, Any, int]] = []
        # References with disconnect callbacks, and callbacks on the connection itself.
        self._watched: dict[int, Any] = {}
        self._disconnect_callbacks: list[Callable[[], object]] = []
        # The peer's calls: running (task -> its request id, by which the peer may cancel it;
        # 0 for a call that wants no answer) and held back (events); the timers that cancel
        # those with a deadline, and the deadline a call being started runs under.
        self._tasks: dict[asyncio.Task[Any], int] = {}
        self._deadlines: dict[asyncio.Task[Any], asyncio.TimerHandle] = {}
        self._call_deadline: float | None = None
        # Our calls cancelled since the last `_send_cancels` (their futures).
        self._cancelled: list[asyncio.Future[Any]] = []
        # The peer's calls it cancelled in the chunk being read, before their events (the
        # session runs a control call as it reads it; a coroutine method's call comes after).
        self._cancelled_unseen: set[int] = set()
        self._backlog: collections.deque[tuple[Any, ...]] = collections.deque()
        self._backlog_bytes = 0
        self._held = False  # calls wait in the backlog (writes paused, or max_in_flight running)
        self._draining = False  # shutting down: no new calls
        self._calls_held = False  # the session is told to hold calls (see `data_received`)
        # Bytes.
        self._receiving = False  # writes made meanwhile go out once, at the end of the chunk
        self._flush_scheduled = False
        self._writing_paused = False
        self._reading_paused = False
        self._writable: asyncio.Future[None] | None = None
        # Limits and timers.
        self._budget_share = 0
        self._limits_logged: set[str] = set()
        # The handshake and idle timeouts and the keepalive: the rules (in Rust) are given the
        # time and say what to do and when to ask again; one timer asks.
        self._liveness: Any = None
        # OpenTelemetry spans for our calls and the peer's, if the application configured
        # tracing when the connection was made (`pbfast._tracing`); the span of the peer's call
        # being run, until its task (if it starts one) takes it.
        self._tracer: _tracing.CallTracer | None = None
        self._call_span: Any = None
        self._last_received = self._loop.time()
        self._idle_watched = False  # whether `_last_received` is kept (a clock read per chunk)
        self._timer: asyncio.TimerHandle | None = None
        self._abort_timer: asyncio.TimerHandle | None = None
        self._read_view = self._thread_read_view = _read_buffer()

    def __repr__(self) -> str:
        role = "server" if self.server else "client"
        state = "closed" if self.disconnected else "open"
        return f"<{type(self).__name__} {role} {state} peer={self.peer}>"

    # ------------------------------------------------------------------ asyncio's protocols

    # A buffered protocol: the transport reads into the thread's read buffer, which the session
    # reads at once, in `buffer_updated`. (`data_received` takes chunks from transports that
    # hand over bytes: the in-memory link's.)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read_view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._read_view[:nbytes])

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer_address = PeerAddress.of(transport)
        self.peer = str(self.peer_address)
        _set_nodelay(transport)
        if self._group is not None:
            self._group.add(self)
        tracked.add(self)
        now = self._last_received = self._loop.time()
        options = self.options
        self._liveness = _core.Liveness(
            now, options.handshake_timeout, options.idle_timeout, self._keepalive_interval()
        )
        self._idle_watched = self._liveness.watches_silence
        self._set_timer(self._liveness.next_poll(now))
        self._tracer = _tracing.tracer(self._WIRE, self.peer)
        if self._tracer is not None:
            self.call = self._traced_call  # type: ignore[method-assign]
            self.call_only = self._traced_call_only  # type: ignore[method-assign]
        self._opened()

    def data_received(self, data: bytes | memoryview) -> None:
        if _calls.options_in_use and _calls.DEADLINE.get() is not None:
            # The code that opened the connection or delivered these bytes (a memory link's
            # peer) had a deadline: the peer's calls must not run under it.
            contextvars.Context().run(self.data_received, data)
            return
        if self._closing:
            return
        if self._idle_watched:
            self._last_received = self._loop.time()
        # The session runs the peer's calls as it reads them, unless we are holding calls back:
        # it then gives them as events, to run later through its `run`.
        holding = bool(self._held or self._backlog or self._draining or self._tracer)
        if holding is not self._calls_held:
            self._session.holding = self._calls_held = holding
        self._receiving = True
        try:
            self._receive(data)
        finally:
            self._receiving = False
            if self._cancelled_unseen:
                self._cancelled_unseen.clear()  # (ids of calls that had already answered)
        if not self._closing:
            held = self._session.buffered
            if held != self._budget_share:
                self._account(held)
            if self._backlog:
                self._backlog_bytes += len(data)
                if self._backlog_bytes >= BACKLOG_BYTES:
                    self._pause_reading("backlog", f"{self._backlog_bytes} bytes of calls are waiting")
        self._flush()

    def eof_received(self) -> bool:
        return False  # the peer is done: close our side too

    def pause_writing(self) -> None:
        self._writing_paused = self._held = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_held()
        if self._writable is not None:
            self._writable.set_result(None)
            self._writable = None
        self._drain_in_context()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.disconnected:
            return
        self.disconnected = self._closing = True
        for timer in (self._timer, self._abort_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._abort_timer = None
        if self._budget_share:
            _budget.change(-self._budget_share)
            self._budget_share = 0
        if self._group is not None:
            self._group.discard(self)
        tracked.discard(self)
        reason = self._reason or exc
        why = f": {reason}" if reason else ""
        for future in self._session.take_pending():
            if not future.done():
                lost = PBConnectionLost(f"the connection to {self.peer} was lost before the reply came{why}")
                lost.__cause__ = reason
                future.set_exception(lost)
        self._lost(reason)
        watched, self._watched = self._watched, {}
        for ref in watched.values():
            for callback in ref._disconnect_callbacks or ():
                run_callback(callback, ref)
            ref._disconnect_callbacks = None
        callbacks, self._disconnect_callbacks = self._disconnect_callbacks, []
        for callback in callbacks:
            run_callback(callback)
        for event in self._backlog:
            self._drop_call(event)
        self._backlog.clear()
        self._dying_caches.clear()
        self._releases.clear()
        self._cancelled.clear()
        for timer in self._deadlines.values():
            timer.cancel()
        self._deadlines.clear()
        if self._writable is not None:
            self._writable.set_result(None)
            self._writable = None
        # Empty the session and let it drop the callbacks and hooks that refer back to this
        # object: its buffers and tables go with the connection, not with a later garbage
        # collection.
        self._session.close()
        del self.call, self.call_only, self._take_output
        # Kept for diagnosis, without its traceback: that would lead back to this connection.
        _drop_tracebacks(self._reason)
        if not self.closed.done():
            self.closed.set_result(None)

    # ------------------------------------------------------------------ public

    async def close(self) -> None:
        """Close the connection (after writing what is queued) and wait until it is gone. A
        peer that does not read what is queued is cut off after `CLOSE_TIMEOUT` seconds."""
        self.close_nowait()
        await asyncio.shield(self.closed)

    def close_nowait(self, reason: BaseException | None = None, *, cancel: bool = False) -> None:
        """Start closing (see `close`); `reason` is what our calls still waiting for replies
        fail with (as the cause of a `PBConnectionLost`). The peer's calls still running go on
        (as in Twisted; their replies go nowhere), or with `cancel` are cancelled."""
        if self._closing:
            return
        if reason is not None and self._reason is None:
            self._reason = reason
        if self._cancelled:
            self._send_cancels()
        self._flush()
        self._closing = True
        self._finish_output()
        if cancel:
            self._cancel_calls(f"the connection to {self.peer} is closing")
        self.transport.close()
        if self.transport.get_write_buffer_size() and not self.disconnected:
            self._abort_timer = self._loop.call_later(CLOSE_TIMEOUT, self.transport.abort)

    def notifyOnDisconnect(self, callback: Callable[[], object]) -> None:
        """Run ``callback()`` when the connection ends."""
        self._disconnect_callbacks.append(callback)

    def dontNotifyOnDisconnect(self, callback: Callable[[], object]) -> None:
        """Undo `notifyOnDisconnect` (ValueError if `callback` was not registered)."""
        self._disconnect_callbacks.remove(callback)

    async def wait_writable(self) -> None:
        """Write what is queued now (rather than at the end of the loop iteration), then wait
        until the transport accepts writes again (the peer is reading); returns at once when it
        is not paused.

        Raises:
            DeadReferenceError: the connection is gone.
        """
        if not self._receiving and not self.disconnected:
            # Written now, so that a transport this fills pauses before the caller queues more.
            self._flush()
        while self._writing_paused and not self.disconnected:
            if self._writable is None:
                self._writable = self._loop.create_future()
            await asyncio.shield(self._writable)
        if self.disconnected:
            raise DeadReferenceError(f"the connection to {self.peer} is closed")

    # Calls out once the connection is gone (until then the session's methods stand in for these).

    def call(
        self, object_id: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], cache: bool = False
    ) -> asyncio.Future[Any]:
        """``method(*args, **kwargs)`` on the peer's object `object_id` (with `cache`, an
        ``observe_`` call on its copy of our Cacheable): a future for the answer. On a
        connection that is gone, the future fails with `_dead()`'s DeadReferenceError."""
        future = self._loop.create_future()
        future.set_exception(self._dead())
        return future

    def call_only(self, object_id: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """`call` without asking for an answer. Raises DeadReferenceError once the connection is
        gone."""
        raise self._dead()

    def call_with_options(
        self,
        object_id: Any,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: dict[str, Any],
    ) -> asyncio.Future[Any]:
        """`call` with call `options` (see `pbfast._calls`): to a peer that speaks ``options``,
        the control call ``call``, answered as the call itself; to others, the plain call
        (the options stay behind)."""
        if self._tracer is not None:
            return self._traced_call(object_id, method, args, kwargs, options=options)
        if _calls.OPTIONS not in self.peer_extensions:
            return self.call(object_id, method, args, kwargs)
        return self.call(
            self._CONTROL_ID, self._CONTROL_PREFIX + "call", (object_id, method, args, kwargs, options), {}
        )

    def call_only_with_options(
        self,
        object_id: Any,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: dict[str, Any],
    ) -> None:
        """`call_only` with call `options`, as `call_with_options` sends them."""
        if self._tracer is not None:
            self._traced_call_only(object_id, method, args, kwargs, options)
            return
        if _calls.OPTIONS not in self.peer_extensions:
            self.call_only(object_id, method, args, kwargs)
            return
        self.call_only(
            self._CONTROL_ID, self._CONTROL_PREFIX + "call", (object_id, method, args, kwargs, options), {}
        )

    # ------------------------------------------------------------------ traced calls

    def _traced_call(
        self,
        object_id: Any,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        cache: bool = False,
        options: dict[str, Any] | None = None,
    ) -> asyncio.Future[Any]:
        """`call` on a traced connection: in a client span, whose trace context goes with the
        call to a peer that takes call options."""
        tracer = self._tracer
        if tracer is None or (object_id == self._CONTROL_ID and options is None) or _tracing.INTERNAL.get():
            return self._session.call(object_id, method, args, kwargs, cache)  # ours, not the application's
        span, carrier = tracer.client_span(method)
        try:
            if cache:  # an observe_ call on the peer's copy of our Cacheable: no options on those
                future = self._session.call(object_id, method, args, kwargs, cache)
            else:
                future = self._session.call(
                    *self._with_options(object_id, method, args, kwargs, options, carrier)
                )
        except BaseException as exc:
            tracer.end(span, exc)
            raise
        future.add_done_callback(functools.partial(tracer.end_with, span))
        return future

    def _traced_call_only(
        self,
        object_id: Any,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: dict[str, Any] | None = None,
    ) -> None:
        """`call_only` on a traced connection: a client span that ends once the call is sent."""
        tracer = self._tracer
        if tracer is None or (object_id == self._CONTROL_ID and options is None) or _tracing.INTERNAL.get():
            self._session.call_only(object_id, method, args, kwargs)
            return
        span, carrier = tracer.client_span(method)
        error = None
        try:
            self._session.call_only(*self._with_options(object_id, method, args, kwargs, options, carrier))
        except BaseException as exc:
            error = exc
            raise
        finally:
            tracer.end(span, error)

    def _with_options(
        self,
        object_id: Any,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: dict[str, Any] | None,
        carrier: dict[str, str],
    ) -> tuple[Any, str, tuple[Any, ...], dict[str, Any]]:
        """What to send for a call with `options` and the trace context `carrier`: the control
        call ``call`` to a peer that takes options, else the plain call."""
        if _calls.OPTIONS not in self.peer_extensions or not (options or carrier):
            return object_id, method, args, kwargs
        if carrier:
            options = {**(options or {}), _tracing.TRACE: carrier}
        return self._CONTROL_ID, self._CONTROL_PREFIX + "call", (object_id, method, args, kwargs, options), {}

    def _run_in_session(self, object_id: Any, method: str, *run_args: Any) -> None:
        """Run the peer's call through the session (``session.run(*run_args)``) and handle what
        it comes to; on a traced connection, in a server span, the child of the caller's span
        when its trace context came with the call."""
        tracer = self._tracer
        session: Any = self._session  # (each wire's session has its `run`)
        if (
            tracer is None
            or object_id == self._CONTROL_ID
            # (A stream's sink and source: their calls are the stream's own, which has its span.)
            or getattr(session.get(object_id), "_untraced", False)
        ):
            for outcome in session.run(*run_args):
                self._HANDLERS[outcome[0]](self, outcome)
            return
        span, token = tracer.server_span(method, _tracing.CARRIER.get())
        self._call_span = span
        error: BaseException | None = None
        try:
            for outcome in session.run(*run_args):
                if outcome[0] == self._RAISED:
                    error = outcome[-1]
                self._HANDLERS[outcome[0]](self, outcome)
        except BaseException as exc:
            error = exc
            raise
        finally:
            tracer.detach(token)
            if self._call_span is span:  # no task took it: the call is over
                self._call_span = None
                tracer.end(span, error)

    # ------------------------------------------------------------------ the control channel

    def call_control(self, method: str, *args: Any) -> asyncio.Future[Any]:
        """Call the peer's control method `method` with `args` (any values, references
        included): a future for its answer. The control channel exists between pbfast peers
        only (docs/extensions.md); on the peer, the call runs ``_control_<method>(*args)`` on
        its end of the connection. With a stock peer the future fails with `Error`, nothing
        sent; an unknown method fails with the peer's `NoSuchMethod`."""
        if not self.peer_is_pbfast:
            future: asyncio.Future[Any] = self._loop.create_future()
            future.set_exception(self._no_control(method))
            return future
        return self.call(self._CONTROL_ID, self._CONTROL_PREFIX + method, args, {})

    def call_control_only(self, method: str, *args: Any) -> None:
        """`call_control` without asking for an answer. Control calls without an answer are
        never held back on the peer (its flow control holds the calls that answer), so they
        suit messages about other calls: cancellations, credit.

        Raises:
            Error: the peer is not pbfast (nothing is sent).
            DeadReferenceError: the connection is gone.
        """
        if not self.peer_is_pbfast:
            raise self._no_control(method)
        self.call_only(self._CONTROL_ID, self._CONTROL_PREFIX + method, args, {})

    def _no_control(self, method: str) -> Error:
        return Error(
            f"cannot send the control call {method!r}: {self.peer} is not a pbfast peer "
            "(the control channel is a pbfast-to-pbfast extension)"
        )

    def _control(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run the peer's control call `method`: ``self._control_<method>(*args)``; its result
        (awaited if awaitable) is the answer.

        Raises:
            NoSuchMethod: there is no such control method.
            Error: the call has keyword arguments (control calls take none).
        """
        handler = getattr(self, "_control_" + method, None) if type(method) is str else None
        if handler is None:
            raise NoSuchMethod(f"no control method {method!r}")
        if kwargs:
            raise Error(f"the control call {method!r} takes no keyword arguments, got {sorted(kwargs)!r}")
        return handler(*args)

    # ------------------------------------------------------------------ cancellation and options

    def _call_cancelled(self, future: asyncio.Future[Any]) -> None:
        """The future of one of our calls was cancelled (see `_calls.CallFuture`): tell the peer,
        together with the others cancelled meanwhile (one pass over our pending calls finds
        their request ids)."""
        if self._closing:
            return
        self._cancelled.append(future)
        if len(self._cancelled) == 1:
            self._loop.call_soon(self._send_cancels)

    def _send_cancels(self) -> None:
        futures, self._cancelled = self._cancelled, []
        if not futures or self._closing:
            return
        request_ids = self._session.cancelled(futures)
        if request_ids:
            self.call_control_only("cancel", request_ids)

    def _control_cancel(self, request_ids: list[int]) -> None:
        """The peer cancelled its calls `request_ids`: cancel those running (each then answers
        that it was cancelled), and take those held back out of the backlog (answered so)."""
        if type(request_ids) is not list or not all(type(i) is int for i in request_ids):
            raise Error("cancel takes a list of request ids")
        held = set(request_ids)
        held.discard(0)
        running = [(task, i) for task, i in self._tasks.items() if i in held]
        for task, request_id in running:
            self._cancel_call(task, _calls.CANCELLED)
            held.discard(request_id)
        if held and self._backlog:
            kept: collections.deque[tuple[Any, ...]] = collections.deque()
            for event in self._backlog:
                request_id = self._cancellable(event)
                if request_id in held:
                    self._answer_cancelled(event, request_id)
                    held.discard(request_id)
                else:
                    kept.append(event)
            self._backlog = kept
            if not kept:
                self._backlog_bytes = 0
                self._resume_reading()
        if held and self._receiving:
            # Calls in this same chunk whose events are still to come (see `_handle`).
            self._cancelled_unseen |= held

    def _answer_cancelled(self, event: tuple[Any, ...], request_id: int) -> None:
        """The peer cancelled its call `event` before it ran: it never will."""
        self._drop_call(event)
        self._send_failure(request_id, asyncio.CancelledError(_calls.CANCELLED))

    def _cancel_call(self, task: asyncio.Task[Any], reason: str) -> None:
        """Cancel the peer's call running in `task`, for `reason` (the call's `_finish` answers
        that it was cancelled, see `_reply_cancelled`; a task that had not started yet ends
        unanswered, its method unrun: only the peer's own cancel reaches it that early, and
        the peer no longer waits)."""
        if not task.done():
            log.debug("%s: cancelling a call: %s", repr(self), reason)
            _cancel_task(task, reason)

    def _reply_cancelled(self, request_id: int, exc: asyncio.CancelledError) -> None:
        """A call of the peer's we cancelled (`_cancel_call`) has stopped: answer it with the
        reason, a TimeoutError for its deadline, a CancelledError for the peer's cancellation
        (which the caller no longer waits for)."""
        reason = exc.args[0] if exc.args else None
        error: BaseException
        if reason == _calls.DEADLINE_PASSED:
            error = TimeoutError(_calls.DEADLINE_PASSED)
        else:
            error = asyncio.CancelledError(_calls.CANCELLED)
        self._send_failure(request_id, error)

    def _control_call(
        self, object_id: Any, method: Any, args: Any, kwargs: Any, options: Any
    ) -> _calls.OptionsCall:
        """The peer's call ``method(*args, **kwargs)`` on its object `object_id`, with call
        `options`: run once the session hands it over with this control call's request id (see
        `_run_with_options`), answered as the call itself.

        Raises:
            Error: a part of the call is not what it should be.
        """
        if not self._object_id_ok(object_id):
            raise Error(f"call: {short(object_id)} is not an object id")
        return _calls.OptionsCall.checked(object_id, method, args, kwargs, options)

    def _run_with_options(self, request_id: int, answer: bool, call: _calls.OptionsCall) -> None:
        """Run the peer's `call` (from `_control_call`) under its options, as a call that arrived
        with `request_id`: a method runs with them in force, and a task it starts keeps them (a
        deadline also cancels the task when it passes)."""
        try:
            restore = _calls.apply_options(call.options)
        except Error as exc:
            self._send_failure(request_id if answer else 0, exc)
            return
        outer, self._call_deadline = self._call_deadline, _calls.DEADLINE.get()
        try:
            self._run_call(request_id, answer, call.object_id, call.method, call.args, call.kwargs)
        finally:
            self._call_deadline = outer
            restore()

    def statistics(self) -> dict[str, int]:
        """Table sizes and queues, for monitoring and tests: ``objects`` (ours the peer holds,
        a root excluded), ``proxies`` (references to the peer's objects we hold), ``cached``
        (copies of the peer's Cacheables we hold), ``pending`` (our calls awaiting replies),
        ``in_flight`` (the peer's calls running), ``streams`` (streams we are producing for the
        peer), ``backlog`` (the peer's calls held back), ``buffered`` (bytes held for incoming
        messages not yet complete, as of the last chunk received)."""
        return {
            "objects": self._session.held,
            "proxies": len(self._proxies),
            "cached": len(self._remote_caches),
            "pending": self._session.pending,
            "in_flight": len(self._tasks),
            "streams": _streaming.running(self),
            "backlog": len(self._backlog),
            "buffered": self._budget_share,
        }

    def data_last_received_at(self) -> float | None:
        """When the peer last sent anything (seconds since the epoch), or None if this
        connection does not watch for silence (no keepalive, no idle timeout)."""
        if not self._idle_watched:
            return None
        return time.time() - (self._loop.time() - self._last_received)

    def watch(self, ref: Any) -> None:
        """Run `ref`'s disconnect callbacks when the connection ends."""
        self._watched[id(ref)] = ref

    def unwatch(self, ref: Any) -> None:
        self._watched.pop(id(ref), None)

    # ------------------------------------------------------------------ streams (pbfast peers)

    def call_stream(
        self, ref: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> RemoteStream:
        """What ``ref.callRemoteStream(method, *args, **kwargs)`` returns (see
        `pbfast._streaming`).

        Raises:
            Error: the peer is not pbfast, or does not speak the ``stream`` extension.
        """
        return _streaming.open_stream(self, ref, method, args, kwargs)

    def _control_stream(self, *args: Any) -> Any:
        if len(args) == 8:  # the call's options (docs/extensions.md): the trace context, if any
            *args, options = args  # type: ignore[assignment]
        else:
            options = None
        tracer = self._tracer
        if tracer is None:
            return _streaming.serve_stream(self, *args)
        # The stream's server span: current while the method is called and its generator's task
        # made (so its own calls are the span's children); it ends with the stream.
        carrier = _tracing.carrier_in(options)
        method = args[1] if len(args) > 1 and type(args[1]) is str else "stream"
        span, token = tracer.server_span(method, carrier)
        end = functools.partial(tracer.end, span)
        try:
            served = _streaming.serve_stream(self, *args, on_end=end)
        except BaseException as exc:
            end(exc)
            raise
        finally:
            tracer.detach(token)
        if inspect.iscoroutine(served):  # (a coroutine method: the rest runs in a task)
            return self._in_span(tracer, span, served)
        return served

    async def _in_span(self, tracer: _tracing.CallTracer, span: Any, coroutine: Any) -> Any:
        """Run `coroutine` with `span` current; end the span if it fails."""
        token = tracer.attach(span)
        try:
            return await coroutine
        except BaseException as exc:
            tracer.end(span, exc)
            raise
        finally:
            tracer.detach(token)

    def _stream_span(self, method: str) -> tuple[_tracing.SpanEnd | None, tuple[Any, ...]]:
        """For a stream of the peer's `method` about to start: what ends its client span
        (None when the connection is not traced) and the options to send with the control call
        ``stream`` (its trace context, to a peer that takes options)."""
        tracer = self._tracer
        if tracer is None:
            return None, ()
        span, carrier = tracer.client_span(method)
        options = ({_tracing.TRACE: carrier},) if carrier and _calls.OPTIONS in self.peer_extensions else ()
        return functools.partial(tracer.end, span), options

    def _control_stream_credit(self, source: Any, items: Any, nbytes: Any) -> None:
        _streaming.source_of(self, source).credit(items, nbytes)

    def _control_stream_close(self, source: Any) -> None:
        _streaming.source_of(self, source).close()

    def _send_stream(self, stream: Stream) -> dict[str, Any]:
        """The state of the copy a `pbfast.stream` travels as (the wire's encoder hook)."""
        return _streaming.send_stream(self, stream)

    def _receive_stream(self, state: Any) -> RemoteStream:
        """What a received ``pbfast.stream`` copy becomes (the wire's decoder hook)."""
        return _streaming.receive_stream(self, state)

    # ------------------------------------------------------------------ shutting down

    def begin_shutdown(self) -> None:
        """Stop starting the peer's calls: those held back and those still to come are refused
        with an error; once the running ones and the streams we produce have finished (and
        their replies are written) the connection closes. `shutdown` gives it a grace period."""
        if self._draining or self._closing:
            return
        self._draining = True
        refused = Error(f"{self._side()} is shutting down: the call was not run")
        backlog, self._backlog = self._backlog, collections.deque()
        self._receiving = True
        try:
            for event in backlog:
                self._refuse_call(event, refused)
        finally:
            self._receiving = False
        self._resume_reading()
        self._flush()
        self._close_if_drained()

    def _close_if_drained(self) -> None:
        """Shutting down: close once nothing of the peer's runs here any more."""
        if self._draining and not self._tasks and not _streaming.running(self):
            self.close_nowait()

    def _stream_ended(self) -> None:
        """One of the streams we produce has ended (its generator closed)."""
        self._close_if_drained()

    def cut_off(self, why: str) -> None:
        """End the connection now, dropping what is queued; running calls are cancelled."""
        if self.disconnected:
            return
        log.debug("%s: cut off: %s", repr(self), why)
        self._cancel_calls(why)
        self._abort(PBConnectionLost(why), why, logged=True)

    def _side(self) -> str:
        return "the server" if self.server else "the client"

    def _cancel_calls(self, why: str) -> None:
        """Cancel the peer's calls still running (a shutdown's grace period is over). Logged at
        DEBUG: this is no error."""
        if not self._tasks:
            return
        log.debug("%s: cancelling %d running call(s): %s", repr(self), len(self._tasks), why)
        for task in list(self._tasks):
            _cancel_task(task, why)

    # ------------------------------------------------------------------ bytes out

    def _wake(self) -> None:
        """Bytes are waiting: write them at the end of this loop iteration (or of the chunk
        being handled), together with whatever else is sent meanwhile."""
        if not self._receiving and not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        data = self._take_output()
        if data and not self._closing:
            self.transport.write(data)

    # ------------------------------------------------------------------ calls in

    def _handle(self, events: list[tuple[Any, ...]]) -> None:
        """Dispatch received events in order; calls are held back (`_defer`) while we cannot
        take more. What they write goes out at the end of the chunk (`data_received`)."""
        handlers = self._HANDLERS
        calls = self._CALL_KINDS
        event = None
        self._receiving = True
        try:
            for event in events:
                if self._cancelled_unseen and event[0] in calls:
                    request_id = self._cancellable(event)
                    if request_id in self._cancelled_unseen:
                        self._cancelled_unseen.discard(request_id)
                        self._answer_cancelled(event, request_id)
                        continue
                if (
                    event[0] in calls
                    and (self._held or self._backlog or self._draining)
                    and not (self.peer_is_pbfast and self._is_control_only(event))
                ):
                    self._defer(event)
                    continue
                handlers[event[0]](self, event)
        except Exception as exc:
            self._internal_error(exc, event)
        finally:
            self._receiving = False

    def _defer(self, event: tuple[Any, ...]) -> None:
        """Hold a received call until we can take it; past `backlog` held calls stop reading,
        so a peer cannot make us hold without bound. Shutting down, refuse it."""
        if self._draining:
            self._refuse_call(event, Error(f"{self._side()} is shutting down: the call was not run"))
            return
        self._backlog.append(event)
        if len(self._backlog) >= self.options.backlog:
            self._pause_reading("backlog", f"{len(self._backlog)} of its calls are waiting")

    def _drain_in_context(self) -> None:
        """`_drain_backlog` in a context of its own (a finished call's task, whose deadline the
        held calls must not run under, may be the one asking)."""
        contextvars.Context().run(self._drain_backlog)

    def _drain_backlog(self) -> None:
        """Run held calls while we can, a batch per turn of the loop."""
        backlog = self._backlog
        handlers = self._HANDLERS
        event = None
        self._receiving = True
        try:
            for _ in range(_DRAIN_BATCH):
                if not backlog or self._held or self._closing:
                    break
                event = backlog.popleft()
                handlers[event[0]](self, event)
        except Exception as exc:
            self._internal_error(exc, event)
        finally:
            self._receiving = False
            self._flush()
        if self._closing:
            return
        if backlog:
            if not self._held:
                self._loop.call_soon(self._drain_backlog)
        else:
            self._backlog_bytes = 0
            self._resume_reading()

    def _timed(self, awaitable: Any, method: str) -> Any:
        """`awaitable`, the result of the peer's call of `method`, counted by the metrics once it
        is done (if they are on)."""
        return _timed(awaitable, self._WIRE, method) if _core.metrics_enabled() else awaitable

    def _count_call(
        self, method: str, outcome: str, seconds: float | None = None, *, ran: bool = True
    ) -> None:
        """Count one of the peer's calls that ended here rather than in the session (`ran`: the
        method was found and run), if metrics are on."""
        _core.metrics_record(self._WIRE, "server", method, outcome, seconds, ran)

    def _start_call(self, coroutine: Any, request_id: int = 0) -> asyncio.Task[Any]:
        """Run the rest of one of the peer's calls (`coroutine`) as a task, counted against
        `max_in_flight`; the peer may cancel it by its `request_id` (0: it wants no answer), and
        a deadline it runs under (see `_run_with_options`) cancels it when it passes."""
        task = self._loop.create_task(coroutine)
        tasks = self._tasks
        tasks[task] = request_id
        when = self._call_deadline
        if when is not None:
            self._deadlines[task] = self._loop.call_at(when, self._cancel_call, task, _calls.DEADLINE_PASSED)
        task.add_done_callback(self._call_done)
        if self._call_span is not None and self._tracer is not None:
            # The call's server span ends with its task.
            task.add_done_callback(functools.partial(self._tracer.end_with, self._call_span))
            self._call_span = None
        if len(tasks) >= self.options.max_in_flight and not self._held:
            self._held = True
            self._limit_reached("max_in_flight", f"{len(tasks)} of its calls are running; later ones wait")
        return task

    def _call_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.pop(task, None)
        if self._deadlines:
            timer = self._deadlines.pop(task, None)
            if timer is not None:
                timer.cancel()
        if self._held and not self._closing:
            self._update_held()
            if not self._held:
                self._drain_in_context()
        if self._draining:  # (checked here: this runs for every call that ran as a task)
            self._close_if_drained()

    def _update_held(self) -> None:
        self._held = self._writing_paused or len(self._tasks) >= self.options.max_in_flight or self._holding()

    def _pause_reading(self, limit: str, detail: str) -> None:
        if not self._reading_paused and not self._closing:
            self._reading_paused = True
            self._limit_reached(limit, f"{detail}; reading from it paused")
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and not self._closing:
            self._reading_paused = False
            self.transport.resume_reading()

    def _internal_error(self, exc: Exception, event: tuple[Any, ...] | None) -> None:
        # An exception escaping a handler is a bug here or in a hook; the connection's state
        # is unknown, so it ends (other connections are unaffected).
        log.error("%s: internal error while handling %s", repr(self), short(event), exc_info=exc)
        self._abort(exc, "internal error; closing the connection")

    # ------------------------------------------------------------------ limits and timers

    def _limit_reached(self, limit: str, detail: str) -> None:
        """Log, once per connection and limit, that the peer reached `limit` (an option field,
        or ``memory_budget``), under the name this wire's users know it by."""
        if limit in self._limits_logged:
            return
        self._limits_logged.add(limit)
        value = _budget.limit if limit == "memory_budget" else getattr(self.options, limit)
        log.warning("peer %s reached %s=%s: %s", self.peer, self._option_name(limit), value, detail)

    def _option_name(self, field: str) -> str:
        """What this wire's users call the option `field`."""
        return self._OPTION_NAMES.get(field, field)

    def _account(self, held: int) -> None:
        """Count what the decoder now holds against the memory budget; the connection that
        would push the total past it closes."""
        delta = held - self._budget_share
        self._budget_share = held
        total = _budget.change(delta)
        if delta > 0 and total > _budget.limit:
            message = (
                f"incoming messages not yet complete would hold {total} bytes over all connections, "
                f"past memory_budget={_budget.limit} ({held} bytes for this one); closing it"
            )
            self._limit_reached("memory_budget", message)
            # Give the share back now, so the other connections do not pay for this one.
            _budget.change(-held)
            self._budget_share = 0
            self._abort(LimitExceeded(message, "memory_budget"), message, logged=True)

    def _handshake_done(self, peer_extensions: Iterable[str] | None) -> None:
        """The wire's handshake is over; `peer_extensions`: the pbfast extensions both sides
        speak, or None if the peer did not announce itself as pbfast."""
        self.peer_is_pbfast = peer_extensions is not None
        self.peer_extensions = frozenset(peer_extensions or ())
        if self.peer_is_pbfast:
            self._open_control()
        if _calls.CANCEL in self.peer_extensions:
            # Our calls' futures tell us when they are cancelled (at no cost to the others).
            self._session.make_futures(_calls.future_class(self), {"loop": self._loop})
        if self._liveness is not None:
            self._liveness.handshake_done()

    def _set_timer(self, due: float | None) -> None:
        if due is not None and not self.disconnected:
            self._timer = self._loop.call_at(max(due, self._loop.time() + 0.001), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._closing:
            return
        what, idle, due = self._liveness.poll(self._loop.time(), self._last_received)
        if what == _core.DUE_HANDSHAKE:
            name = self._option_name("handshake_timeout")
            message = f"no handshake within {name}={self.options.handshake_timeout} s; closing"
            self._limit_reached("handshake_timeout", message)
            self._timed_out(LimitExceeded(message, name))
        elif what == _core.DUE_IDLE:
            name = self._option_name("idle_timeout")
            message = f"no data for {idle:.1f} s, past {name}={self.options.idle_timeout}; closing"
            self._limit_reached("idle_timeout", message)
            self._timed_out(LimitExceeded(message, name))
        else:
            if what == _core.DUE_PING:
                self._send_keepalive()
            self._set_timer(due)

    # ------------------------------------------------------------------ the end

    def _abort(self, reason: BaseException, message: str, *, logged: bool = False) -> None:
        """End the connection at once for `reason` (logged at WARNING with `message`)."""
        if not self.disconnected and self._reason is None:
            if not logged:
                log.warning("%s: %s", repr(self), message)
            self._reason = reason
        self._closing = True
        # What waits to be written is dropped, and what is held of an incomplete message goes
        # now, not at the close.
        self._session.discard()
        if self.transport is not None:
            self.transport.abort()

    # ------------------------------------------------------------------ objects

    def _send_ref(self, obj: Any) -> tuple[int, bool]:
        """Count one more sending of our object `obj`: its luid, and whether the peer holds it
        for the first time (the caller then files it).

        Raises:
            LimitExceeded: the peer would hold more than `max_refs` of our objects.
        """
        try:
            return self._session.send(obj)
        except LimitExceeded as exc:
            self._limit_reached("max_refs", f"{exc}; the call sending one more fails")
            raise

    def _export(self, obj: Any) -> int:
        """`_send_ref` for an object the peer may call, filed under its luid; its luid."""
        try:
            return self._session.export(obj)
        except LimitExceeded as exc:
            self._limit_reached("max_refs", f"{exc}; the call sending one more fails")
            raise

    def _released_by_peer(self, luid: Any, count: int, what: str = "decref") -> None:
        """The peer let go of `count` references to our object `luid`."""
        if type(luid) is not int or not 0 < luid < 1 << 64 or not self._session.holds(luid):
            log.warning(
                "%s: the peer sent a %s for %s, which it does not hold; ignored",
                repr(self),
                what,
                short(luid),
            )
            return
        if self._session.decref(luid, count):
            self._forget(luid)

    def _settle(self, request_id: int, failed: bool = False) -> asyncio.Future[Any] | None:
        """The future of our call `request_id`, which a reply has now answered (`failed`: with a
        failure)."""
        future = self._session.settle(request_id, failed)
        if future is None:
            log.warning(
                "%s: the peer replied to request %r, which is not waiting for a reply", repr(self), request_id
            )
        return future

    def _proxy_count(self) -> int:
        return len(self._proxies) + len(self._remote_caches)

    def _admit_proxy(self, luid: Any, kind: bytes) -> None:
        """Refuse one more proxy or copy past `max_proxies`, giving its reference back.

        Raises:
            LimitExceeded: we already hold `max_proxies` of the peer's objects.
        """
        if self._proxy_count() >= self.options.max_proxies:
            self._queue_release(kind, luid, 1)
            message = f"the peer sent more than max_proxies={self.options.max_proxies} objects"
            self._limit_reached("max_proxies", f"{message}; the message carrying one more fails")
            raise LimitExceeded(message, "max_proxies")

    def release(self, luid: int | bytes, count: int) -> None:
        """A proxy died: tell the owner (``count`` references). Runs in finalizers, possibly in
        another thread or in the middle of other work, so it only queues."""
        self._queue_release(self._DECREF, luid, count)

    def cache_died(self, link: Any, cache: Any) -> None:
        """A copy of the peer's Cacheable died (`link` is its `cacheable.CacheLink`): keep its
        state until the owner acknowledges, since it may name the copy again meanwhile, and let
        the owner know. Runs in finalizers, like `release`."""
        if self.disconnected:
            return
        state = {k: v for k, v in cache.__dict__.items() if k != "_cache_link"}
        self._dying_caches[link.luid] = (type(cache), state)
        if link.count:
            self._queue_release(self._DECACHE, link.luid, link.count)

    def _revive_cache(self, luid: int) -> RemoteCache | None:
        """The copy `luid` we let go of, made again from its last state (the owner named it
        before our release reached it), or None."""
        dying = self._dying_caches.pop(luid, None)
        if dying is None:
            return None
        cls, state = dying
        cache = cls.__new__(cls)
        cache.__dict__.update(state)
        return cache

    def _queue_release(self, kind: bytes, luid: Any, count: int) -> None:
        if self.disconnected:
            return
        self._releases.append((kind, luid, count))
        if len(self._releases) == 1:
            try:
                self._loop.call_soon_threadsafe(self._send_releases)
            except RuntimeError:  # the loop is closed: so is the connection
                pass

    def _send_releases(self) -> None:
        releases, self._releases = self._releases, []
        if self._closing:
            return
        for kind, luid, count in releases:
            self._write_release(kind, luid, count)

    # ------------------------------------------------------------------ what each wire adds

    @abc.abstractmethod
    def _open_session(self, callbacks: SessionCallbacks) -> _core.Session:
        """The wire's session, given the connection's `callbacks`."""

    def _opened(self) -> None:
        """The transport is connected: start the handshake."""

    @abc.abstractmethod
    def _dead(self) -> DeadReferenceError:
        """Why a call cannot be made now (not negotiated yet, or gone)."""

    @abc.abstractmethod
    def _receive(self, data: bytes | memoryview) -> None:
        """Decode received bytes and handle the events (usually through `_handle`). `data` may
        be a view of the read buffer: it is not kept."""

    def _take_output(self) -> bytes | memoryview | None:
        """The bytes to write now, if any (a large buffer is handed over as a read-only
        memoryview, not copied). While the connection is up the session's own `take` stands
        here (called once per chunk received: no Python frame); once it is gone, nothing."""
        return None

    def _finish_output(self) -> None:
        """Write what ends the stream in an orderly way (a TLS close_notify), if anything."""

    @abc.abstractmethod
    def _refuse_call(self, event: tuple[Any, ...], exc: BaseException) -> None:
        """Answer a held call that will not run with `exc`."""

    def _drop_call(self, event: tuple[Any, ...]) -> None:
        """A held call will never run (the connection is gone): let go of what it holds (a
        coroutine is closed, not left to be collected unawaited)."""

    @abc.abstractmethod
    def _write_release(self, kind: bytes, luid: Any, count: int) -> None:
        """Tell the peer we let go of `count` references to its object `luid`."""

    def _forget(self, luid: int, uncache: bool = True) -> None:
        """The peer holds our object `luid` no more (`uncache` false: it never knew it, an
        encode that named it failed)."""
        self._session.pop(luid)

    def _holding(self) -> bool:
        """Whether the wire itself holds calls back for now (besides back-pressure)."""
        return False

    def _open_control(self) -> None:
        """The peer is pbfast: let its control calls reach `_control`."""

    def _is_control_only(self, event: tuple[Any, ...]) -> bool:
        """Whether the call `event` is a control call that asks no answer (never held back)."""
        return False

    @abc.abstractmethod
    def _cancellable(self, event: tuple[Any, ...]) -> int:
        """The request id of the held call `event` if the peer may cancel it there (0: not)."""

    @abc.abstractmethod
    def _object_id_ok(self, object_id: Any) -> bool:
        """Whether `object_id` may name an object of ours on this wire."""

    @abc.abstractmethod
    def _run_call(
        self,
        request_id: int,
        answer: bool,
        object_id: Any,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        """Run the peer's call as if it had just arrived (as `call_with_options` sent it)."""

    @abc.abstractmethod
    def _send_failure(self, request_id: int, exc: BaseException) -> None:
        """Answer the peer's call `request_id` (0: it wants none) with the failure `exc`,
        without logging it (a refusal the peer caused, or a cancellation)."""

    def _keepalive_interval(self) -> float | None:
        return None

    def _send_keepalive(self) -> None:
        """The peer has been silent for the keepalive interval: prompt it."""

    def _timed_out(self, reason: LimitExceeded) -> None:
        """A timeout ran out: end the connection (logged already)."""
        self._abort(reason, str(reason), logged=True)

    def _lost(self, reason: BaseException | None) -> None:
        """The connection is gone: settle what the wire keeps (futures, caches, ...)."""

    @abc.abstractmethod
    def _stream_failure(self, exc: BaseException, what: str) -> Any:
        """`exc`, raised by the stream `what` we produce, as the value the wire sends for a
        failure (the consumer gets a RemoteError); logged as the wire logs remote methods'."""


async def shutdown(connections: Iterable[Connection], grace: float) -> None:
    """Shut `connections` down together: each stops starting calls and closes once its running
    calls have finished and their replies are written; after `grace` seconds those still open
    are cut off (their running calls cancelled), so a peer that does not read cannot hold us."""
    connections = [c for c in connections if not c.disconnected]
    for connection in connections:
        connection.begin_shutdown()
    waiting = [c.closed for c in connections if not c.closed.done()]
    if waiting and grace > 0:
        await asyncio.wait(waiting, timeout=grace)
    for connection in connections:
        if not connection.disconnected:
            connection.cut_off(f"still busy after the {grace} s grace period of a shutdown")
    waiting = [c.closed for c in connections if not c.closed.done()]
    if waiting:
        await asyncio.wait(waiting, timeout=CLOSE_TIMEOUT)


class MemoryTransport(asyncio.Transport):
    """One end of an in-memory link (see `memory_pair`). `written` counts the bytes sent
    through it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: Connection, name: str) -> None:
        super().__init__()
        self._loop = loop
        self._protocol = protocol
        self._name = name
        self.peer: MemoryTransport | None = None
        self.written: int = 0
        self._closing = False
        self._reading = True
        self._held: list[bytes] = []

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": self._name}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self.peer is None:
            return
        data = bytes(data)
        self.written += len(data)
        self._loop.call_soon(self.peer._deliver, data)

    def _deliver(self, data: bytes) -> None:
        if self._closing:
            return
        if not self._reading:
            self._held.append(data)
            return
        self._protocol.data_received(data)

    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        self._reading = True
        held, self._held = self._held, []
        for data in held:
            self._protocol.data_received(data)

    def is_reading(self) -> bool:
        return self._reading

    def is_closing(self) -> bool:
        return self._closing

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        self._lose(None)

    def abort(self) -> None:
        self._lose(None)

    def _lose(self, exc: Exception | None) -> None:
        if self._closing:
            return
        self._closing = True
        # Both ends see the loss after bytes already in flight have been delivered.
        self._loop.call_soon(self._protocol.connection_lost, exc)
        if self.peer is not None:
            self._loop.call_soon(self.peer._lose, ConnectionResetError("the in-memory peer closed"))


def memory_pair(client: Connection, server: Connection) -> None:
    """Join two protocols by an in-memory link (bytes written on one side arrive on the other
    on a later loop iteration, as a socket would deliver them; closing either end loses the
    connection on both) and start them."""
    loop = asyncio.get_running_loop()
    server_end = MemoryTransport(loop, server, "memory:server")
    client_end = MemoryTransport(loop, client, "memory:client")
    server_end.peer, client_end.peer = client_end, server_end
    client.connection_made(client_end)
    server.connection_made(server_end)


async def _timed(awaitable: Any, wire: str, method: str) -> Any:
    """Await the result of one of the peer's calls, and count the call (see `Connection._timed`)."""
    started = time.perf_counter()
    outcome = "error"
    try:
        result = await awaitable
        outcome = "ok"
        return result
    except asyncio.CancelledError:
        outcome = "cancelled"
        raise
    finally:
        _core.metrics_record(wire, "server", method, outcome, time.perf_counter() - started)


def _cancel_task(task: asyncio.Task[Any], reason: str) -> None:
    """Cancel one of the peer's calls running in `task`. A task that has not taken its first
    step never starts its coroutine, nor the coroutines that one was handed (the remote
    method's, wrapped to be timed and answered): close them, or each is collected unawaited
    with a warning."""
    _close_handed(task.get_coro())  # (the task's own is ended by the cancel)
    task.cancel(reason)


def _close_handed(coroutine: Any) -> None:
    """Close the coroutines handed to `coroutine` if it never ran, and theirs."""
    frame = coroutine.cr_frame if inspect.iscoroutine(coroutine) else None
    if frame is None or inspect.getcoroutinestate(coroutine) != inspect.CORO_CREATED:
        return
    for value in list(frame.f_locals.values()):  # (its arguments: it never ran)
        if inspect.iscoroutine(value):
            _close_handed(value)
            value.close()


def _drop_tracebacks(exc: BaseException | None) -> None:
    """Clear the tracebacks of `exc` and the exceptions it was raised from or during."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc.__traceback__ = None
        exc = exc.__cause__ or exc.__context__


def short(value: object, limit: int = 200) -> str:
    """``repr(value)``, cut to `limit` characters (values the peer sent can be huge)."""
    try:
        text = repr(value)
    except Exception as e:  # a value nested too deep, or a broken __repr__
        text = f"<{qualified_name(type(value))}: repr() failed: {e!r}>"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def run_callback(callback: Callable[..., object], *args: Any) -> None:
    try:
        callback(*args)
    except Exception:
        log.exception("callback %r raised", callback)
