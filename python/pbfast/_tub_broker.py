"""foolscap's dialect of a connection: the `TubBroker`.

The shared machinery (bytes, back-pressure, limits, timeouts, the end, and the object tables)
is `pbfast._connection.Connection`'s. What is foolscap's:

- negotiation, for either role: the connection's Rust `FoolscapSession` runs it (the plaintext
  upgrade, TLS, the hello and decision blocks) on the bytes it is fed, and banana after it in
  the TLS session the negotiation hands over; the broker asks the Tub to decide on the
  connection when we are the master, and learns the peer's details once it is over. Whoever
  sees a problem tells the peer in the current phase's own form (a ``500`` line, an error
  block, or a banana ERROR token) and closes. A TLS close_notify from the peer ends the
  connection at once; closing sends ours.
- messages: calls, answers and errors (the session runs calls and resolves answers as it reads
  them, and encodes the broker's own messages), the objects each side exports (clids;
  callables as negative ones) and imports, gifts (references into third Tubs), the Tub's own
  methods (clid 0), keepalives, and Cacheables between two pbfast Tubs.

A Tub calling itself uses a pair of brokers joined in memory, which start at banana.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from . import _core
from ._calls import OptionsCall
from ._connection import EXTENSIONS as SHARED_EXTENSIONS
from ._connection import READ_SIZE, Connection, ConnectionOptions, SessionCallbacks, run_callback
from ._core import (
    FS_ANSWER,
    FS_AWAITING,
    FS_CALL,
    FS_CALL_ABORTED,
    FS_DECIDE,
    FS_ERROR,
    FS_FLUSH,
    FS_NEGOTIATED,
    FS_PEER_ERROR,
    FS_PING,
    FS_PONG,
    FS_RAISED,
    FS_VIOLATION,
)
from ._failure import FOOLSCAP_FAILURE_TYPE, UNAVAILABLE, failure_state, remote_error
from ._streaming import EXTENSION as STREAM_EXTENSION
from ._streaming import STREAM_TYPE
from .cacheable import Cacheable, CacheLink, RemoteCache, RemoteCacheObserver
from .copyable import Copyable, make_copy, unjellyableFor
from .endpoints import PeerAddress
from .errors import (
    BananaError,
    DeadReferenceError,
    NegotiationError,
    NoSuchMethod,
    PBConnectionLost,
    RemoteError,
    TLSError,
    Violation,
    qualified_name,
)
from .furl import FURL
from .referenceable import Referenceable, RemoteReference, checked_interface, unchecked_remote_methods
from .schema import RemoteInterface, RemoteMethodSchema, get_remote_interface, remote_interface_by_name
from .streams import RemoteStream, Stream

__all__ = ["DisconnectMarker", "TubBroker", "TubReference"]

log = logging.getLogger("pbfast.tub")

# The copyable type of a Cacheable between two pbfast Tubs (only sent to peers that announced
# the "cacheable" extension): its state names the owner's `_CacheHandle` and the cache's own
# state (omitted when the holder already has the copy).
CACHE_TYPE = "pbfast.cacheable"
# What pbfast Tubs add to foolscap, announced in their hello blocks (stock foolscap ignores
# the key): both wires' extensions, and Cacheables (which Twisted PB has and foolscap lacks).
EXTENSIONS = SHARED_EXTENSIONS | {"cacheable"}
# Control calls between pbfast Tubs are calls on clid 0 whose method names start with this.
CONTROL_PREFIX = "pbfast_"


class TubReference(RemoteReference):
    """A reference to an object in another Tub (or in this one, through its own FURL)."""

    __slots__ = ()
    broker: TubBroker
    luid: int
    # foolscap sends the name of the interface an object implements with its reference.
    carries_interface_names = True

    @property
    def remote_interface_name(self) -> str | None:
        """The name of the `RemoteInterface` the object's Tub says it implements (None if it
        named none)."""
        return self.broker.interface_of(self.luid)

    def getRemoteTubID(self) -> str:
        """The TubID of the Tub that holds the object."""
        return self.broker.peer_tub_id

    def getSturdyRef(self) -> str | None:
        """The object's FURL, if its Tub sent one (it does once it has a location)."""
        return self.broker.furl_of(self.luid)

    def isConnected(self) -> bool:
        """Whether the connection to the object's Tub is still open."""
        return not self.broker.disconnected

    def getPeer(self) -> PeerAddress:
        """Where the object's Tub is: its address on this connection (``type`` ``"memory"``
        for an object of this Tub reached through its own FURL)."""
        address = self.broker.peer_address
        assert address is not None  # a reference is only made on a connection that is up
        return address

    def getLocationHints(self) -> list[str]:
        """The connection hints of the object's FURL (empty if its Tub sent none)."""
        furl = self.getSturdyRef()
        return list(FURL.parse(furl).locationHints) if furl else []

    def getDataLastReceivedAt(self) -> float | None:
        """When the connection last received anything (seconds since the epoch), or None when
        the connection does not watch for silence (no keepalive and no disconnect timeout)."""
        return self.broker.data_last_received_at()

    def notifyOnDisconnect(  # type: ignore[override]
        self, callback: Callable[..., object], *args: Any, **kwargs: Any
    ) -> DisconnectMarker:
        """Run ``callback(*args, **kwargs)`` when the connection ends (soon, if it has already
        ended), as foolscap does; the marker returned undoes it (`dontNotifyOnDisconnect`)."""
        marker = DisconnectMarker(callback, args, kwargs)
        if self.broker.disconnected:
            asyncio.get_running_loop().call_soon(run_callback, marker, self)
        else:
            super().notifyOnDisconnect(marker)
        return marker

    def dontNotifyOnDisconnect(self, marker: DisconnectMarker) -> None:  # type: ignore[override]
        """Undo a `notifyOnDisconnect`; a marker whose callback ran already (or is unknown) is
        ignored, as foolscap does."""
        if self._disconnect_callbacks and marker in self._disconnect_callbacks:
            super().dontNotifyOnDisconnect(marker)

    def __repr__(self) -> str:
        return f"<TubReference {self.luid} at {self.broker.peer_tub_id[:8]}>"


class CheckedTubReference(TubReference):
    """A reference whose interface this process defines too: each call's arguments are checked
    before it is sent (a violation fails the call at once, nothing sent), and its answer when
    it comes."""

    __slots__ = ("_interface",)

    def __init__(self, broker: TubBroker, luid: int, interface: type[RemoteInterface]) -> None:
        super().__init__(broker, luid)
        self._interface = interface

    def callRemote(self, _name: str, /, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        try:
            schema = self._interface.method(_name)
            schema.check_args(args, kwargs, inbound=False)
        except Violation as e:
            refused: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            refused.set_exception(e)
            return refused
        return asyncio.ensure_future(_checked_answer(schema, super().callRemote(_name, *args, **kwargs)))

    def callRemoteOnly(self, _name: str, /, *args: Any, **kwargs: Any) -> None:
        self._interface.method(_name).check_args(args, kwargs, inbound=False)
        super().callRemoteOnly(_name, *args, **kwargs)

    def callRemoteStream(self, _name: str, /, *args: Any, **kwargs: Any) -> RemoteStream:
        self._interface.method(_name).check_args(args, kwargs, inbound=False)
        return super().callRemoteStream(_name, *args, **kwargs)


async def _checked_answer(schema: RemoteMethodSchema, answer: Awaitable[Any]) -> Any:
    result = await answer
    schema.check_result(result, inbound=True)
    return result


class DisconnectMarker:
    """What a Tub reference's `notifyOnDisconnect` returns: runs ``callback(*args, **kwargs)``."""

    __slots__ = ("callback", "args", "kwargs")

    def __init__(
        self, callback: Callable[..., object], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.callback: Callable[..., object] = callback
        self.args: tuple[Any, ...] = args
        self.kwargs: dict[str, Any] = kwargs

    def __call__(self, ref: RemoteReference) -> None:
        self.callback(*self.args, **self.kwargs)

    def __repr__(self) -> str:
        return f"<DisconnectMarker {self.callback!r}>"


class _Gift:
    """Stands in for a received third-party reference until the receiver has connected to it."""

    __slots__ = ("furl", "gift_id", "reference")

    def __init__(self, gift_id: int, furl: str) -> None:
        self.gift_id = gift_id
        self.furl = furl
        self.reference: RemoteReference | None = None


class TubBroker(Connection):
    """One connection of a Tub, to the Tub `peer_tub_id` (known once negotiation is over).

    Args:
        tub: the `pbfast.Tub` the connection belongs to.
        target: (client) the TubID dialled.
        host: (client) the host name dialled, for the upgrade request.
        loopback: one end of a Tub's in-memory connection to itself: no negotiation, no TLS.
    """

    _WIRE = "foolscap"
    _RAISED = FS_RAISED
    _CALL_KINDS = frozenset({FS_CALL, FS_AWAITING})
    # Control calls are calls on the Tub's own object, their names prefixed.
    _CONTROL_ID: ClassVar[Any] = 0
    _CONTROL_PREFIX: ClassVar[str] = CONTROL_PREFIX
    # foolscap's names for two of the options.
    _OPTION_NAMES = {"handshake_timeout": "negotiationTimeout", "idle_timeout": "disconnectTimeout"}
    STATISTICS: ClassVar[tuple[str, ...]] = (*Connection.STATISTICS, "gifts", "caches")
    _session: _core.FoolscapSession

    def __init__(
        self, tub: Any, *, target: str | None = None, host: str = "", loopback: bool = False
    ) -> None:
        options: ConnectionOptions = tub.options
        # (What the session is made from: see `_open_session`.)
        self.tub = tub
        self.target = target
        self.host = host
        self._loopback = loopback
        super().__init__(options, server=target is None, group=tub._connections)
        self.peer_tub_id = tub.tubID if loopback else target or ""
        if loopback:
            self._handshake_done(EXTENSIONS)  # (there is none: both ends are this Tub)
        # Set by negotiation, for the Tub's duplicate-connection decisions.
        self.peer_incarnation: str = ""
        self.seqnum: int = 0
        self.ready: asyncio.Future[None] = self._loop.create_future()
        """Resolves once negotiation is over (to None: a result of this broker would be a
        reference cycle)."""
        # The interface and FURL the peer told us per clid of its objects.
        self._import_info: dict[int, tuple[str | None, str | None]] = {}
        # References into third Tubs we sent the peer, held until it has fetched them.
        self._gifts: dict[int, list[Any]] = {}
        self._gift_ids: dict[int, int] = {}
        self._next_gift_id = 1
        # Our Cacheables sent to the peer: id(cacheable) -> handle.
        self._cache_handles: dict[int, _CacheHandle] = {}
        # Gifts met while decoding the current chunk, until its events claim them.
        self._unresolved: list[_Gift] = []
        # A call's gifts are being fetched: later calls wait (held, in order) until it runs.
        self._fetching_gifts = False
        if loopback:
            self.ready.set_result(None)

    @property
    def _phase(self) -> str:
        """ "banana" once negotiation is over, else the negotiation's phase."""
        return self._session.phase

    def __repr__(self) -> str:
        role = f"client to {self.target}" if self.target else "server"
        state = "closed" if self.disconnected else self._phase
        return f"<TubBroker {role} {state} peer={self.peer}>"

    # ------------------------------------------------------------------ outgoing calls

    def root(self, name: str) -> asyncio.Future[Any]:
        """Ask the peer's Tub for the object it registered as `name`."""
        return self.call(0, "getReferenceByName", (), {"name": name.encode()})

    def _dead(self) -> DeadReferenceError:
        if self._phase != "banana":
            return DeadReferenceError(f"the connection to {self.peer} has not finished negotiating")
        return DeadReferenceError(f"the connection to Tub {self.peer_tub_id} is gone")

    # ------------------------------------------------------------------ the connection's hooks

    def _open_session(self, callbacks: SessionCallbacks) -> _core.FoolscapSession:
        tub, target = self.tub, self.target
        # (A Tub's connection to itself has no negotiation: the extensions are its own.)
        negotiation: dict[str, Any] = {"extensions": sorted(EXTENSIONS)}
        if not self._loopback:
            negotiation |= {
                "identity": tub._tls_identity,
                "incarnation": tub.incarnation,
                "target": target,
                "host": self.host,
                "last_connection": tub._last_connection.get(target) if target else None,
            }
        return _core.FoolscapSession(
            self.options.max_refs,
            self.options.limits,
            **callbacks,
            broker=self,
            unslice=self._unslice,
            slice=self._slice,
            is_plain=_plain,
            call_limits=_call_limits,
            **negotiation,
        )

    def _opened(self) -> None:
        self._flush()  # a client's upgrade request

    def get_buffer(self, sizehint: int) -> memoryview:
        # The rest of a large message over TLS is read straight into the session's own buffer,
        # its records opened where they land.
        view = self._session.landing(READ_SIZE)
        self._read_view = self._thread_read_view if view is None else view
        return self._read_view

    def _receive(self, data: bytes | memoryview) -> None:
        session = self._session
        events: list[tuple[Any, ...]] | None
        try:
            events = session.feed(data)
        except NegotiationError as e:
            self._refuse(e.with_traceback(None))  # kept in `ready`: no cycle through its frames
            return
        except TLSError as e:
            # The session is broken: nothing more goes through it but its alert.
            self._refuse(NegotiationError(f"TLS with {self._peer_label()} failed: {e}"), tell=False)
            return
        except BananaError as e:
            self._handle(self._claim_gifts(getattr(e, "events", None) or []))
            self._protocol_error(e)
            return
        if events:
            self._handle(self._claim_gifts(events) if self._unresolved else events)
        # Exceptions in the events (a call the session ran raised) have tracebacks leading back
        # to this frame: it must not keep them, or the two would make a cycle (see PB's).
        events = None
        if session.peer_closed and not self._closing:
            # The peer's close_notify: it is done. Answer with ours and end at once (a stock
            # Tub waits for that before it lets go of the connection).
            self._reason = PBConnectionLost(f"{self._peer_label()} closed the connection")
            self.close_nowait()

    def _finish_output(self) -> None:
        out = self._session.close_notify()
        if out:
            self.transport.write(out)

    def _refuse_call(self, event: tuple[Any, ...], exc: BaseException) -> None:
        self._count_call(event[3], "error", ran=event[0] == FS_AWAITING)
        self._drop_call(event)
        self._send_error(event[1], exc)

    def _drop_call(self, event: tuple[Any, ...]) -> None:
        if event[0] == FS_AWAITING and hasattr(event[2], "close"):
            event[2].close()  # a coroutine that will never be awaited

    def _cancellable(self, event: tuple[Any, ...]) -> int:
        # (FS_CALL, reqid, ...) or (FS_AWAITING, reqid, awaitable); a call carrying gifts (it has
        # one more item) is left to run, so that the gifts are fetched and given back.
        kind = event[0]
        if (kind == FS_CALL and len(event) == 6) or kind == FS_AWAITING:
            reqid: int = event[1]
            return reqid
        return 0

    def _object_id_ok(self, object_id: Any) -> bool:
        return type(object_id) is int and -(1 << 63) <= object_id < 1 << 63

    def _run_call(
        self,
        request_id: int,
        answer: bool,
        object_id: Any,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self._run(request_id if answer else 0, object_id, method, args, kwargs)

    def _send_failure(self, request_id: int, exc: BaseException) -> None:
        if request_id and not self._closing:
            self._session.error(request_id, failure_state(exc, False))

    def _write_release(self, kind: bytes, luid: Any, count: int) -> None:
        if self._phase == "banana":
            self.call(0, "decref", (), {"clid": luid, "count": count}).add_done_callback(
                functools.partial(self._released, luid)
            )

    def _forget(self, luid: int, uncache: bool = True) -> None:
        obj = self._session.pop(luid)
        if obj is None:
            obj = self._session.pop(-luid)  # a callable
        if isinstance(obj, _CacheHandle):
            obj.stop()

    def _holding(self) -> bool:
        return self._fetching_gifts

    def _is_control_only(self, event: tuple[Any, ...]) -> bool:
        # (FS_CALL, reqid, clid, method, args, kwargs): a call without answer is numbered 0.
        if event[0] != FS_CALL or event[1] != 0 or event[2] != 0:
            return False
        method: str = event[3]
        return method.startswith(CONTROL_PREFIX)

    def _keepalive_interval(self) -> float | None:
        interval: float | None = self.tub.keepaliveTimeout
        return interval

    def _send_keepalive(self) -> None:
        if self._phase == "banana":
            self._session.ping(0)

    def _timed_out(self, reason: Any) -> None:
        if self._phase == "banana":
            super()._timed_out(reason)
        else:
            self._refuse(NegotiationError(str(reason)), logged=True)

    def _lost(self, reason: BaseException | None) -> None:
        if not self.ready.done():
            failure = reason or ConnectionResetError(
                f"{self._peer_label()} closed the connection during negotiation"
            )
            if not isinstance(failure, NegotiationError):
                failure = NegotiationError(f"negotiation with {self._peer_label()} failed: {failure}")
            self.ready.set_exception(failure)
            self.ready.exception()  # nobody may be waiting (a server connection)
        handles, self._cache_handles = list(self._cache_handles.values()), {}
        for handle in handles:
            handle.stop()
        self._gifts.clear()
        self._gift_ids.clear()
        self._unresolved.clear()
        if self._phase == "banana":
            self.tub._broker_lost(self)

    # ------------------------------------------------------------------ negotiation

    def _on_decide(self, event: tuple[Any, ...]) -> None:
        """We are the master: accept the connection (or refuse it, as a duplicate); negotiation
        is then over."""
        try:
            seqnum = self.tub._master_decide(self._session)
            outcome = self._session.decide(seqnum)
        except NegotiationError as e:
            self._refuse(e.with_traceback(None))
            return
        for event in self._claim_gifts(outcome) if self._unresolved else outcome:
            self._HANDLERS[event[0]](self, event)

    def _on_negotiated(self, event: tuple[Any, ...]) -> None:
        """Negotiation is over: banana from here on, in the TLS session it handed over (the
        session sends the end of the negotiation first)."""
        session = self._session
        self.peer_tub_id = session.peer_tub_id or ""
        self.peer_incarnation = session.peer_incarnation or ""
        self.seqnum = session.seqnum or 0
        self._handshake_done(session.peer_extensions)
        self.tub._attach(self, session.master_connection)
        self.ready.set_result(None)

    def _refuse(self, error: NegotiationError, *, tell: bool = True, logged: bool = False) -> None:
        """Tell the peer why, in the current phase's form, and close. A failure after
        negotiation is the peer breaking the protocol."""
        if self._closing:
            return
        if self._phase == "banana":
            self._protocol_error(error, tell=tell)
            return
        if not logged:
            log.info("refused a Tub connection with %s: %s", self._peer_label(), error)
        if tell:
            # Nothing more if the negotiation found the problem itself: it has told the peer.
            self._session.refuse(str(error))
        if not self.ready.done():
            self.ready.set_exception(error)
            self.ready.exception()
        self._reason = error
        self.close_nowait()

    def _peer_label(self) -> str:
        return f"Tub {self.target}" if self.target is not None else self.peer

    # ------------------------------------------------------------------ incoming bytes

    def _protocol_error(self, exc: BaseException, *, tell: bool = True) -> None:
        """The peer broke the protocol: say so (an ERROR token, unless it is the one that did)
        and close."""
        if self._closing:
            return
        log.warning("%s: %s; closing the connection", repr(self), exc)
        if tell:
            error = str(exc).encode("utf-8", "replace")
            self._session.write(_core.encode_tokens([("ERROR", error)], "foolscap"))
        self._reason = exc
        self.close_nowait()

    def _claim_gifts(self, events: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """Give each call and answer the gifts met while decoding it, as an extra item (gifts are
        rare: this walk only runs for chunks that carried one)."""
        unresolved, self._unresolved = self._unresolved, []
        if not unresolved:
            return events
        claimed = []
        for event in events:
            if event[0] in (FS_CALL, FS_ANSWER):
                gifts = _gifts_in(event[-2:] if event[0] == FS_CALL else event[2:])
                if gifts:
                    event = (*event, gifts)
            claimed.append(event)
        return claimed

    def _on_call(self, event: tuple[Any, ...]) -> None:
        """A call the session did not run as it read it (we were holding calls back, it carries
        gifts, or it came with the end of the negotiation): it runs there now all the same."""
        if len(event) > 6:  # it carries gifts (see `_claim_gifts`)
            self._fetching_gifts = self._held = True
            self._start_call(self._call_with_gifts(event[:6], event[6]))
            return
        self._run(*event[1:])

    def _run(self, reqid: int, clid: int, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._run_in_session(clid, method, reqid, clid, method, args, kwargs)

    def _on_answer(self, event: tuple[Any, ...]) -> None:
        reqid, value = event[1], event[2]
        future = self._settle(reqid)
        if future is None:
            return
        if len(event) > 3:  # it carries gifts
            self._start_call(self._answer_with_gifts(future, value, event[3]))
        elif not future.done():
            future.set_result(value)

    def _on_error(self, event: tuple[Any, ...]) -> None:
        _, reqid, failure = event
        future = self._settle(reqid, failed=True)
        if future is None:
            return
        if not isinstance(failure, RemoteError):
            failure = RemoteError("builtins.object", repr(failure), UNAVAILABLE)
        if self.tub.logRemoteFailures:
            log.info("call to Tub %s failed remotely: %s", self.peer_tub_id, failure)
        if not future.done():
            future.set_exception(failure)

    def _on_awaiting(self, event: tuple[Any, ...]) -> None:
        _, reqid, awaitable, method = event
        if type(awaitable) is OptionsCall:
            self._run_with_options(reqid, reqid != 0, awaitable)
            return
        self._start_call(self._finish(reqid, self._timed(awaitable, method)), reqid)

    def _on_raised(self, event: tuple[Any, ...]) -> None:
        self._send_error(event[1], event[2])

    def _on_flush(self, event: tuple[Any, ...]) -> None:
        self._flush()

    def _on_ping(self, event: tuple[Any, ...]) -> None:
        self._session.pong(event[1])

    def _on_pong(self, event: tuple[Any, ...]) -> None:
        pass

    def _on_violation(self, event: tuple[Any, ...]) -> None:
        _, what, reqid, message = event
        peer = self.peer_tub_id
        log.warning("%s: refused the %s %s from Tub %s: %s", repr(self), what, reqid, peer, message)
        if what == "call":
            self._count_call("(unknown)", "error", ran=False)
            if reqid:
                self._send_error(reqid, Violation(message))
        elif what in ("answer", "error") and reqid is not None:
            future = self._session.settle(reqid, True)
            if future is not None and not future.done():
                future.set_exception(Violation(f"the reply could not be accepted: {message}"))

    def _on_call_aborted(self, event: tuple[Any, ...]) -> None:
        pass  # the caller gave up sending it: foolscap sends no reply

    def _on_peer_error(self, event: tuple[Any, ...]) -> None:
        error = BananaError(f"Tub {self.peer_tub_id} reported a protocol error: {event[1]}")
        self._protocol_error(error, tell=False)

    _HANDLERS = {
        FS_CALL: _on_call,
        FS_ANSWER: _on_answer,
        FS_ERROR: _on_error,
        FS_PING: _on_ping,
        FS_PONG: _on_pong,
        FS_VIOLATION: _on_violation,
        FS_CALL_ABORTED: _on_call_aborted,
        FS_PEER_ERROR: _on_peer_error,
        FS_AWAITING: _on_awaiting,
        FS_RAISED: _on_raised,
        FS_FLUSH: _on_flush,
        FS_DECIDE: _on_decide,
        FS_NEGOTIATED: _on_negotiated,
    }

    async def _answer_with_gifts(self, future: asyncio.Future[Any], value: Any, gifts: list[_Gift]) -> None:
        try:
            await self._resolve(gifts)
        except Exception as e:
            if not future.done():
                future.set_exception(e)
            return
        if not future.done():
            future.set_result(_substitute(value))

    # ------------------------------------------------------------------ incoming calls

    async def _finish(self, reqid: int, awaitable: Any) -> None:
        try:
            result = await awaitable
        except asyncio.CancelledError as e:
            # (No local for the task: this frame, kept by the error's traceback, would hold it.)
            if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                if self._closing:
                    raise  # the connection is ending (see `_cancel_calls`)
                # For the caller, or its deadline (see `_cancel_call`): the reply says so.
                self._reply_cancelled(reqid, e)
                return
            self._send_error(reqid, e)
        except Exception as e:
            self._send_error(reqid, e)
        else:
            self._send_answer(reqid, result)

    def _send_answer(self, reqid: int, result: Any) -> None:
        if not reqid or self._closing:
            return
        try:
            self._session.answer(reqid, result)
        except Exception as e:
            self._send_error(reqid, e)

    def _stream_failure(self, exc: BaseException, what: str) -> RemoteError:
        if self.tub.logLocalFailures:
            log.error("the stream %s to Tub %s raised", what, self.peer_tub_id, exc_info=exc)
        return remote_error(dict(failure_state(exc, self.options.unsafeTracebacks)))

    def _send_error(self, reqid: int, exc: BaseException) -> None:
        if self.tub.logLocalFailures:
            log.error("remote call from Tub %s failed", self.peer_tub_id, exc_info=exc)
        if not reqid or self._closing:
            return
        self._session.error(reqid, failure_state(exc, self.options.unsafeTracebacks))

    async def _call_with_gifts(self, call: tuple[Any, ...], gifts: list[_Gift]) -> None:
        """Run `call` (an `FS_CALL` event) in the decoder once its gifts are fetched."""
        _, reqid, clid, method, args, kwargs = call
        try:
            await self._resolve(gifts)
        except Exception as e:
            self._count_call(method, "error", ran=False)
            self._send_error(reqid, e)
        else:
            if not self.disconnected:
                self._run(reqid, clid, method, _substitute(args), _substitute(kwargs))
        finally:
            self._fetching_gifts = False  # the calls held meanwhile run once this task is done

    async def _resolve(self, gifts: list[_Gift]) -> None:
        """Connect to each gift's Tub, then tell the giver it may let go."""
        for gift in gifts:
            gift.reference = await self.tub.getReference(gift.furl)
            if gift.gift_id and not self._closing:
                self.call_only(0, "decgift", (), {"giftID": gift.gift_id, "count": 1})

    # The methods of the Tub itself (clid 0), as foolscap's RIBroker names them. The decoder
    # runs calls on clid 0 as calls on this broker, through `remoteMessageReceived`.

    def remoteMessageReceived(
        self, broker: TubBroker, message: str, args: tuple[Any, ...], kw: dict[str, Any]
    ) -> Any:
        """Run the Tub's own method `message` (a call on clid 0): ``_broker_<message>``, or,
        from a pbfast peer, a control call (see `Connection._control`).

        Raises:
            NoSuchMethod: the Tub has no such method.
        """
        if self.peer_is_pbfast and message.startswith(CONTROL_PREFIX):
            return self._control(message[len(CONTROL_PREFIX) :], args, kw)
        handler = getattr(self, "_broker_" + message, None)
        if handler is None:
            raise NoSuchMethod(f"the Tub has no method {message!r}")
        return handler(*args, **kw)

    def _broker_getReferenceByName(self, name: bytes | str) -> Any:
        text = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
        return self.tub._lookup(text)

    def _broker_decref(self, clid: int, count: int) -> None:
        self._released_by_peer(abs(clid) if type(clid) is int else clid, count)

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
            return self._export_clid(obj, callable_=False)
        if isinstance(obj, RemoteReference):
            if obj.broker is self:
                return ("your-reference", obj.luid)
            return self._give(obj)
        if isinstance(obj, RemoteError):
            return ("copyable", FOOLSCAP_FAILURE_TYPE, failure_state(obj, False))
        if isinstance(obj, Cacheable):
            return self._send_cacheable(obj)
        if isinstance(obj, Copyable):
            return ("copyable", _tag_text(obj.getTypeToCopy()), obj.getStateToCopy())
        if isinstance(obj, Stream):
            return ("copyable", STREAM_TYPE, self._send_stream(obj))
        if callable(obj) and not isinstance(obj, type):
            return self._export_clid(obj, callable_=True)
        return None

    def _export_clid(self, obj: Any, *, callable_: bool) -> tuple[Any, ...]:
        """A ``my-reference`` to our object `obj` (a callable's clid is negative); its first
        sending carries its interface and FURL."""
        luid, new = self._send_ref(obj)
        clid = -luid if callable_ else luid
        if not new:
            return ("my-reference", clid)
        self._session.put(clid, obj)
        if checked_interface(type(obj)) is not None:
            self._session.checks_calls = True  # the decoder asks each call's limits from now on
        furl = None if callable_ else self.tub.getOrCreateURLForReference(obj)
        return ("my-reference", clid, _interface_name(obj), furl)

    def _give(self, ref: RemoteReference) -> tuple[Any, ...]:
        furl = ref.broker.furl_of(ref.luid) if isinstance(ref, TubReference) else None
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
            target = self._session.get(payload[0])
            if target is None:
                raise Violation(f"your-reference to unknown clid {payload[0]}")
            return target
        if kind == "their-reference":
            if not self.tub.acceptGifts:
                raise Violation("this Tub does not accept gifts")
            gift = _Gift(*payload)
            FURL.parse(gift.furl)
            self._unresolved.append(gift)
            return gift
        if kind == "copyable":
            typename, state = payload
            if typename == FOOLSCAP_FAILURE_TYPE:
                return remote_error(state)
            if typename == CACHE_TYPE and "cacheable" in self.peer_extensions:
                return self._receive_cacheable(state)
            if typename == STREAM_TYPE and STREAM_EXTENSION in self.peer_extensions:
                return self._receive_stream(state)
            if unjellyableFor(typename.encode()) is None:
                return NotImplemented
            return make_copy(typename.encode(), state)
        raise Violation(f"unknown reference kind {kind!r}")

    def _import(self, clid: int, interface: str | None = None, furl: str | None = None) -> TubReference:
        if furl is not None:
            owner = FURL.parse(furl).tubID
            if owner != self.peer_tub_id:
                raise Violation(f"Tub {self.peer_tub_id} sent a reference with a FURL of Tub {owner}")
        ref = self._proxies.get(clid)
        if ref is None:
            self._admit_proxy(clid, self._DECREF)
            known = remote_interface_by_name(interface) if interface is not None else None
            if known is not None:
                ref = CheckedTubReference(self, clid, known)
            else:
                ref = TubReference(self, clid)
            self._proxies[clid] = ref
        if interface is not None or furl is not None:
            self._import_info[clid] = (interface, furl)
        ref._count += 1
        return ref

    def furl_of(self, clid: int) -> str | None:
        info = self._import_info.get(clid)
        return info[1] if info else None

    def interface_of(self, clid: int) -> str | None:
        """The interface name the peer sent with its object `clid`, if any."""
        info = self._import_info.get(clid)
        return info[0] if info else None

    def _released(self, clid: int, future: asyncio.Future[Any]) -> None:
        """The owner acknowledged our release of `clid`."""
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
        elif self._session.luid_of(handle) is None:  # the holder let go: it needs the state again
            state["state"] = obj.getStateToCacheAndObserveFor(None, handle.observer)
        state["handle"] = handle
        return ("copyable", CACHE_TYPE, state)

    def _receive_cacheable(self, state: dict[str, Any]) -> Any:
        handle = state.get("handle")
        if not isinstance(handle, TubReference) or handle.broker is not self:
            raise Violation("a cacheable without its handle")
        cache = self._remote_caches.get(handle.luid)
        if cache is not None:
            return cache
        tag = str(state.get("type", "")).encode()
        registered = unjellyableFor(tag)
        if registered is None:
            return NotImplemented
        if "state" in state:
            cache = make_copy(tag, state["state"])
        else:
            cache = self._revive_cache(handle.luid)
            if cache is None:
                raise Violation(f"no cached copy {handle.luid} to update")
        if not isinstance(cache, RemoteCache):
            raise Violation(
                f"{qualified_name(type(cache))} is registered for a cacheable but is not a RemoteCache"
            )
        # The copy keeps the owner's handle (so the owner keeps sending updates while it lives).
        cache._cache_link = CacheLink(self, handle.luid, 0, handle)
        self._remote_caches[handle.luid] = cache
        self._loop.call_soon(handle.callRemoteOnly, "subscribe", _CacheEndpoint(cache))
        return cache

    def statistics(self) -> dict[str, int]:
        """`Connection.statistics`, and ``gifts`` (references into third Tubs the peer has not
        fetched yet) and ``caches`` (our Cacheables the peer holds copies of)."""
        stats = super().statistics()
        stats["gifts"] = len(self._gifts)
        stats["caches"] = len(self._cache_handles)
        return stats


class _CacheHandle(Referenceable):
    """The owner's end of one holder's copy of a Cacheable: the holder subscribes an endpoint
    to it, and `observer` (what the Cacheable keeps) sends updates there. Updates made before
    the subscription arrives wait for it, in order."""

    def __init__(self, broker: TubBroker, cacheable: Cacheable) -> None:
        self.broker = broker
        self.cacheable = cacheable
        self.observer = RemoteCacheObserver(self, cacheable, None, 0)  # type: ignore[arg-type]
        self._endpoint: RemoteReference | None = None
        self._waiting: list[tuple[str, tuple[Any, ...], dict[str, Any], asyncio.Future[Any]]] = []
        self._stopped = False

    def remote_subscribe(self, endpoint: RemoteReference) -> None:
        self._endpoint = endpoint
        waiting, self._waiting = self._waiting, []
        for name, args, kwargs, future in waiting:
            _forward(endpoint.callRemote("observe", name, args, kwargs), future)

    def call(
        self, _luid: int, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], cache: bool = True
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
        run_callback(self.cacheable.stoppedObserving, None, self.observer)


class _CacheEndpoint(Referenceable):
    """The holder's end: runs the owner's updates as ``observe_*`` on the copy (held weakly,
    so the copy can go when its holder drops it)."""

    def __init__(self, cache: RemoteCache) -> None:
        self._cache = weakref.ref(cache)

    def remote_observe(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        cache = self._cache()
        if cache is None:
            raise DeadReferenceError("the copy is gone")
        return cache.remoteMessageReceived(None, name, tuple(args), kwargs)


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


def _plain(cls: type) -> bool:
    """Whether a call on a `cls` instance is ``remote_<name>(*args, **kwargs)`` (a Tub has no
    perspectives, so `serializingPerspective` does not matter). The decoder runs those without a
    Python frame, and reports a missing method as foolscap does (the lookup's AttributeError)."""
    return unchecked_remote_methods(cls)


def _call_limits(cls: type) -> tuple[str, dict[str, int | None]] | None:
    """What the decoder holds calls on a `cls` instance to as they arrive: the name of the
    interface they are checked against and the longest string each of its methods' arguments
    may hold (None: any length); None if they are not checked."""
    interface = checked_interface(cls)
    if interface is None:
        return None
    limits = {name: interface.method(name).max_string_bytes for name in interface.names()}
    return interface.__remote_name__, limits


def _tag_text(tag: str | bytes) -> str:
    return tag.decode() if isinstance(tag, bytes) else tag


def _interface_name(obj: Any) -> str | None:
    """The interface name sent with a reference to `obj`, as foolscap sends it: its
    ``remote_interface``'s ``__remote_name__`` (or a ``remote_interface_name`` it sets)."""
    interface = get_remote_interface(obj)
    if interface is not None:
        return interface.__remote_name__
    name = getattr(obj, "remote_interface_name", None)
    return name if isinstance(name, str) else None


def _gifts_in(value: Any) -> list[_Gift]:
    """The gifts inside `value`, found without recursion."""
    found: list[_Gift] = []
    stack = [value]
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        if isinstance(item, _Gift):
            found.append(item)
        elif isinstance(item, list | tuple | set | frozenset):
            if id(item) not in seen:
                seen.add(id(item))
                stack.extend(item)
        elif isinstance(item, dict):
            if id(item) not in seen:
                seen.add(id(item))
                stack.extend(item.values())
        elif hasattr(item, "setCopyableState") and not isinstance(item, type) and id(item) not in seen:
            seen.add(id(item))
            stack.extend(vars(item).values())
    return found


def _substitute(value: Any) -> Any:
    """`value` with each resolved `_Gift` replaced by its reference (gifts are rare, so this
    walk only runs for messages that carried one). Lists, dicts and copies are changed in place,
    tuples and sets rebuilt. The walk keeps its own stack rather than recursing, so no nesting
    depth can exhaust Python's, and each container is walked once (shared or cyclic ones too)."""

    def is_copy(obj: Any) -> bool:
        return hasattr(obj, "__dict__") and not isinstance(obj, type) and hasattr(obj, "setCopyableState")

    def items(obj: Any) -> list[Any]:
        if isinstance(obj, (list, tuple, set, frozenset)):
            return list(obj)
        if isinstance(obj, dict):
            return list(obj.values())
        return list(vars(obj).values()) if is_copy(obj) else []

    done: dict[int, Any] = {}  # id of each container walked -> what replaces it

    def new(obj: Any) -> Any:
        return obj.reference if isinstance(obj, _Gift) else done.get(id(obj), obj)

    entered: list[Any] = []  # keeps what `done` names alive, so ids stay unique
    seen: set[int] = set()
    stack: list[tuple[Any, bool]] = [(value, False)]
    while stack:
        obj, items_done = stack.pop()
        if not items_done:
            if isinstance(obj, _Gift) or id(obj) in seen or not (items(obj) or is_copy(obj)):
                continue
            seen.add(id(obj))
            entered.append(obj)
            stack.append((obj, True))
            stack.extend((item, False) for item in items(obj))
        elif isinstance(obj, list):
            obj[:] = [new(v) for v in obj]
        elif isinstance(obj, tuple):
            done[id(obj)] = tuple(new(v) for v in obj)
        elif isinstance(obj, dict):
            for key in list(obj):
                obj[key] = new(obj[key])
        elif isinstance(obj, (set, frozenset)):
            done[id(obj)] = type(obj)(new(v) for v in obj)
        else:
            for key, item in list(vars(obj).items()):
                setattr(obj, key, new(item))
    return new(value)
