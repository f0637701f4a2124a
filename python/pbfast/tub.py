"""`Tub`: a TLS identity that publishes objects as FURLs and calls other Tubs' FURLs, speaking
foolscap's wire protocol (so stock foolscap Tubs are peers too).

A Tub keeps at most one connection per remote Tub, shared by every reference into it; the side
with the greater TubID settles which of two crossing connections survives, as foolscap does.
`Reconnector` keeps a FURL connected, with exponential back-off between attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import inspect
import itertools
import logging
import os
import random
import socket
import tempfile
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Unpack

from . import _core, endpoints
from ._connection import RECEIVE_LIMITS, Connection, ConnectionOptions, check_option, memory_pair, shutdown
from ._tub_broker import TubBroker, TubReference
from .errors import NegotiationError, PBConnectionLost
from .furl import FURL, new_swissnum, parse_hint
from .identity import TubIdentity
from .options import TubOptions

__all__ = ["Reconnector", "Tub", "TubReference", "backoff"]

log: logging.Logger = logging.getLogger("pbfast.tub")

_OPTIONS: dict[str, Any] = {
    # Send a PING after this many seconds without data from the peer (None: never).
    "keepaliveTimeout": 240.0,
    # Connecting to a FURL, all of its hints at once.
    "connectTimeout": 60.0,
    "logLocalFailures": False,
    "logRemoteFailures": False,
    "acceptGifts": True,
    "reconnectInitialDelay": 1.0,
    "reconnectFactor": 2.0,
    "reconnectMaxDelay": 300.0,
    "reconnectJitter": 0.1,
}
# foolscap's names for two of the connection options: from TCP connect to the end of
# negotiation (60 s), and the silence after which a connection is dropped (None: never).
_FOOLSCAP_NAMES = {name: field for field, name in TubBroker._OPTION_NAMES.items()}
# foolscap's spellings of the Tub's own options.
_SPELLINGS = {"accept-gifts": "acceptGifts"}
# foolscap options a ported program may set that have nothing to act on here (setting one logs
# the reason, at INFO).
_WITHOUT_EFFECT = {
    "expose-remote-exception-types": "a remote failure is always a pbfast.RemoteError, compared "
    "with check() by type name, never the remote's own exception type",
    "handle-old-duplicate-connections": "foolscap's rules for duplicate connections always apply",
    "logport-furlfile": "pbfast logs through Python's logging (the 'pbfast.tub' logger)",
    "log-gatherer-furl": "pbfast logs through Python's logging (the 'pbfast.tub' logger)",
    "log-gatherer-furlfile": "pbfast logs through Python's logging (the 'pbfast.tub' logger)",
    "bridge-twisted-logs": "pbfast does not run on Twisted",
}
# The connection options a Tub takes under their own names (send remote callers full
# tracebacks: foolscap's default is on, but they show file paths, so ours is off).
_SHARED = ("unsafeTracebacks", "max_in_flight", "backlog", "max_refs", "max_proxies", *RECEIVE_LIMITS)


class Tub:
    """A Tub: ``Tub(certFile=None, certData=None, **options)``.

    The identity comes from `certData` (PEM as foolscap stores it), else from `certFile`
    (created, readable by its owner only, if missing), else is made afresh. Options (also
    settable with `setOption`, for connections made afterwards): ``keepaliveTimeout`` (240 s),
    ``disconnectTimeout`` (off), ``negotiationTimeout`` (60 s), ``connectTimeout`` (60 s),
    ``logLocalFailures``, ``logRemoteFailures``, ``acceptGifts`` (True; foolscap's
    ``accept-gifts`` too), the reconnection
    back-off ``reconnectInitialDelay``/``reconnectFactor``/``reconnectMaxDelay``/
    ``reconnectJitter``, and the connection options PB's `pbfast.serve` takes under the same
    names: ``unsafeTracebacks`` (False), ``max_in_flight``, ``backlog``, ``max_refs``,
    ``max_proxies`` and the receive limits ``max_element_size``, ``max_message_size``,
    ``max_depth``, ``max_header_length`` (see `pbfast._connection.ConnectionOptions`);
    ``max_depth`` bounds the nesting of what the Tub sends too. foolscap's
    ``expose-remote-exception-types``, ``handle-old-duplicate-connections`` and logging options
    (``logport-furlfile``, ``log-gatherer-furl``, ``log-gatherer-furlfile``,
    ``bridge-twisted-logs``) are accepted, with no effect (logged at INFO with the reason).
    """

    # The Tub's own options (defaults in `_OPTIONS`; `setOption` sets them).
    keepaliveTimeout: float | None
    connectTimeout: float
    logLocalFailures: bool
    logRemoteFailures: bool
    acceptGifts: bool
    reconnectInitialDelay: float
    reconnectFactor: float
    reconnectMaxDelay: float
    reconnectJitter: float

    def __init__(
        self,
        certFile: str | os.PathLike[str] | None = None,
        certData: str | bytes | None = None,
        **options: Unpack[TubOptions],
    ) -> None:
        if certData is not None:
            identity = TubIdentity.from_pem(certData)
        elif certFile is not None:
            identity = TubIdentity.load_or_create(certFile)
        else:
            identity = TubIdentity.generate()
        self.identity = identity
        """The Tub's certificate and key (a `pbfast.identity.TubIdentity`)."""
        self.tubID: str = identity.tubID
        """The Tub's TubID: the base32 SHA-1 of its certificate."""
        self.incarnation: str = os.urandom(8).hex()
        self._tls_identity = (identity.certificate_der, identity.private_key_der)
        for name, value in _OPTIONS.items():
            setattr(self, name, value)
        self.options: ConnectionOptions = ConnectionOptions(handshake_timeout=60.0)
        """The options of the Tub's connections (`setOption` replaces it)."""
        for name, value in options.items():
            self.setOption(name, value)
        self._location: list[str] | None = None
        self._names: dict[str, Any] = {}
        self._name_of: dict[int, str] = {}
        self._auto_names: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
        self._auto_name_of: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        self._lookup_handlers: list[Callable[[str], Any]] = []
        self._listeners: list[endpoints.Listener] = []
        self._brokers: dict[str, TubBroker] = {}
        self._connecting: dict[str, asyncio.Task[TubBroker]] = {}
        # Every open connection, negotiating or not (the loopback pair too).
        self._connections: set[Connection] = set()
        self._seqnums: dict[str, int] = {}
        self._last_connection: dict[str, tuple[str, int]] = {}
        self._loopback: TubBroker | None = None
        self._reconnectors: set[Reconnector] = set()
        self.running: bool = True

    def __repr__(self) -> str:
        return f"<Tub {self.tubID}>"

    def getTubID(self) -> str:
        """The TubID (also `tubID`)."""
        return self.tubID

    def getShortTubID(self) -> str:
        """The TubID's first four characters, as foolscap shows it in logs."""
        return self.tubID[:4]

    def setOption(self, name: str, value: Any) -> None:
        """Set one of the options the constructor takes.

        Raises:
            TypeError: an unknown option.
            ValueError: a value out of range for a connection option.
        """
        name = _SPELLINGS.get(name, name)
        if name in _OPTIONS:
            setattr(self, name, value)
            return
        if name in _WITHOUT_EFFECT:
            log.info("Tub option %r has no effect: %s", name, _WITHOUT_EFFECT[name])
            return
        if name in _FOOLSCAP_NAMES:
            field = _FOOLSCAP_NAMES[name]
        elif name in _SHARED:
            field = name
        else:
            raise TypeError(f"unknown Tub option {name!r}")
        check_option(field, value, name)
        if field in RECEIVE_LIMITS:
            self.options = dataclasses.replace(self.options, limits={**self.options.limits, field: value})
        else:
            self.options = dataclasses.replace(self.options, **{field: value})

    async def __aenter__(self) -> Tub:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stopService()

    # ------------------------------------------------------------------ where we are

    async def listenOn(self, endpoint: str, *, reuse_port: bool = False) -> endpoints.Listener:
        """Accept Tub connections on a server endpoint, e.g. ``"tcp:0:interface=127.0.0.1"``
        (the listener's ``port`` is the one bound).

        With ``reuse_port=True`` the port is bound with ``SO_REUSEPORT``, shared with the other
        listeners that set it (Tubs of other processes with the same certificate and names serve
        one FURL this way; see `pbfast.serve`).

        Raises:
            ValueError: a malformed endpoint string; with `reuse_port`, an endpoint that binds
                no TCP port, or a platform without ``SO_REUSEPORT``.
            OSError: the address cannot be bound.
        """
        self._check_running()
        listener = await endpoints.listen(endpoint, lambda: TubBroker(self), reuse_port=reuse_port)
        self._listeners.append(listener)
        return listener

    def getListeners(self) -> list[endpoints.Listener]:
        """The listeners accepting connections (those closed since are left out)."""
        self._listeners = [listener for listener in self._listeners if listener.is_serving()]
        return list(self._listeners)

    async def stopListeningOn(self, listener: endpoints.Listener) -> None:
        """Stop accepting connections on `listener` (connections it accepted stay open).

        Raises:
            ValueError: `listener` is not one of this Tub's.
        """
        if listener not in self._listeners:
            raise ValueError(f"{listener!r} is not a listener of this Tub")
        self._listeners.remove(listener)
        listener.close()
        await asyncio.sleep(0)  # the listening socket is closed on the next loop iteration

    def setLocation(self, *hints: str) -> None:
        """The connection hints FURLs carry, e.g. ``"tcp:example.org:8800"``.

        Raises:
            BadFURLError: a malformed hint.
        """
        for hint in hints:
            parse_hint(hint)
        self._location = list(hints)

    async def setLocationAutomatically(self) -> list[str]:
        """Use this host's addresses with each TCP port the Tub listens on; the hints set.

        Raises:
            RuntimeError: the Tub listens on no TCP port yet.
        """
        ports = [listener.port for listener in self.getListeners() if listener.port]
        if not ports:
            raise RuntimeError("setLocationAutomatically needs listenOn() on a TCP port first")
        loop = asyncio.get_running_loop()
        addresses = await loop.run_in_executor(None, _local_addresses)
        self._location = [f"tcp:{address}:{port}" for port in ports for address in addresses]
        return list(self._location)

    def getLocationHints(self) -> list[str]:
        """The connection hints FURLs carry (empty before `setLocation`)."""
        return list(self._location or ())

    # ------------------------------------------------------------------ what we offer

    def registerReference(
        self, obj: Any, name: str | None = None, furlFile: str | os.PathLike[str] | None = None
    ) -> str:
        """Publish `obj` (held strongly until `unregisterReference`); its FURL.

        The name is `name`, else the one in `furlFile` (if that file holds a FURL of this Tub),
        else 160 random bits; the FURL is then written to `furlFile`.

        Raises:
            RuntimeError: the Tub has no location yet (`setLocation`).
        """
        if self._location is None:
            raise RuntimeError("call setLocation() or setLocationAutomatically() before registerReference()")
        if furlFile is not None and name is None:
            name = _name_in_furl_file(Path(furlFile), self.tubID)
        if name is None:
            name = self._name_of.get(id(obj)) or new_swissnum()
        elif self._names.get(name, obj) is not obj:
            raise KeyError(f"the name {name[:2]}... is already registered for another object")
        self._names[name] = obj
        self._name_of[id(obj)] = name
        furl = self._furl(name)
        if furlFile is not None:
            _write_private(Path(furlFile), furl + "\n")
        return furl

    def unregisterReference(self, obj: Any) -> None:
        """Stop publishing `obj` (its FURL no longer resolves; live references keep working).

        Raises:
            KeyError: `obj` is not registered.
        """
        name = self._name_of.pop(id(obj), None)
        if name is None:
            raise KeyError(f"{obj!r} is not registered with this Tub")
        del self._names[name]

    def unregisterURL(self, furl: str) -> None:
        """Stop publishing the object at `furl`.

        Raises:
            KeyError: nothing of this Tub is registered there.
        """
        name = FURL.parse(furl).name
        obj = self._names.pop(name)
        self._name_of.pop(id(obj), None)

    def registerNameLookupHandler(self, lookup: Callable[[str], Any]) -> None:
        """Ask ``lookup(name)`` for names not registered here (it returns the object or None)."""
        self._lookup_handlers.append(lookup)

    def unregisterNameLookupHandler(self, lookup: Callable[[str], Any]) -> None:
        """Stop asking `lookup`.

        Raises:
            ValueError: `lookup` was not registered.
        """
        self._lookup_handlers.remove(lookup)

    def _furl(self, name: str) -> str:
        return str(FURL(self.tubID, tuple(self._location or ()), name))

    def getOrCreateURLForReference(self, obj: Any) -> str | None:
        """A FURL for `obj`: its registered one, else one under a new name held weakly (it
        resolves while `obj` lives); None while the Tub has no location. This is also the FURL
        sent with a reference the first time it crosses a connection, so the receiver can give
        it to a third Tub."""
        if self._location is None:
            return None
        name = self._name_of.get(id(obj))
        if name is None:
            try:
                name = self._auto_name_of.get(obj)
                if name is None:
                    name = new_swissnum()
                    self._auto_names[name] = obj
                    self._auto_name_of[obj] = name
            except TypeError:  # neither weakly referenceable nor hashable: no FURL
                return None
        return self._furl(name)

    def _lookup(self, name: str) -> Any:
        obj = self._names.get(name)
        if obj is None:
            obj = self._auto_names.get(name)
        for lookup in self._lookup_handlers:
            if obj is not None:
                break
            obj = lookup(name)
        if obj is None:
            raise KeyError(f"unable to find reference for name starting with {name[:2]!r}")
        return obj

    # ------------------------------------------------------------------ what we call

    async def getReference(self, furl: str | FURL) -> TubReference:
        """A reference to the object at `furl`, over this Tub's connection to its Tub (made if
        there is none).

        Raises:
            BadFURLError: a malformed FURL.
            NegotiationError: the Tub there refused us, or is not the one the FURL names.
            ConnectionError: none of its hints could be reached.
            RemoteError: that Tub has no object under the FURL's name.
        """
        self._check_running()
        parsed = furl if isinstance(furl, FURL) else FURL.parse(furl)
        broker = await self._broker_for(parsed)
        ref: TubReference = await broker.root(parsed.name)
        return ref

    def connectTo(
        self, furl: str | FURL, callback: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Reconnector:
        """Keep `furl` connected: ``callback(ref, *args, **kwargs)`` runs on each new connection
        (awaited if it is a coroutine); failed attempts are retried with growing delays."""
        self._check_running()
        reconnector = Reconnector(
            self, furl if isinstance(furl, FURL) else FURL.parse(furl), callback, args, kwargs
        )
        self._reconnectors.add(reconnector)
        return reconnector

    async def _broker_for(self, furl: FURL) -> TubBroker:
        if furl.tubID == self.tubID:
            return self._loopback_broker()
        broker = self._brokers.get(furl.tubID)
        if broker is not None and not broker.disconnected:
            return broker
        task = self._connecting.get(furl.tubID)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._connect(furl))
            self._connecting[furl.tubID] = task
            task.add_done_callback(functools.partial(self._connected, furl.tubID))
        return await asyncio.shield(task)

    def _connected(self, tub_id: str, task: asyncio.Task[TubBroker]) -> None:
        if self._connecting.get(tub_id) is task:
            del self._connecting[tub_id]
        if not task.cancelled():
            task.exception()  # retrieved by every waiter; none may be left

    async def _connect(self, furl: FURL) -> TubBroker:
        """Try every TCP hint at once; the first connection to finish negotiating wins."""
        targets: list[tuple[str, int]] = []
        for hint in furl.locationHints:
            with contextlib.suppress(ValueError):
                parsed = parse_hint(hint)
                if parsed[0] == "tcp" and len(parsed) == 3:
                    targets.append((parsed[1], parsed[2]))
        if not targets:
            raise ConnectionError(
                f"no usable location hints in the FURL of Tub {furl.tubID}: {furl.locationHints}"
            )
        attempts = [asyncio.ensure_future(self._dial(furl.tubID, host, port)) for host, port in targets]
        errors: list[BaseException] = []
        try:
            async with asyncio.timeout(self.connectTimeout):
                for next_done in asyncio.as_completed(attempts):
                    try:
                        return await next_done
                    except (OSError, NegotiationError) as e:
                        errors.append(e)
        except TimeoutError:
            errors.append(TimeoutError(f"timed out after {self.connectTimeout} s"))
        finally:
            # Others still negotiating lose; one that also finished was refused as a duplicate.
            for attempt in attempts:
                attempt.cancel()
        # A crossing connection from that Tub may have won the duplicate decision.
        broker = self._brokers.get(furl.tubID)
        if broker is not None and not broker.disconnected:
            return broker
        refusals = [e for e in errors if isinstance(e, NegotiationError)]
        if refusals:
            raise refusals[0]
        why = "; ".join(str(e) for e in errors)
        raise ConnectionError(f"cannot connect to Tub {furl.tubID} at {', '.join(furl.locationHints)}: {why}")

    async def _dial(self, tub_id: str, host: str, port: int) -> TubBroker:
        loop = asyncio.get_running_loop()
        broker: TubBroker | None = None
        try:
            _, broker = await loop.create_connection(
                lambda: TubBroker(self, target=tub_id, host=host), host, port
            )
            await broker.ready
            return broker
        except asyncio.CancelledError:
            if broker is not None:
                broker.close_nowait(PBConnectionLost("connection attempt cancelled"))
            raise

    def _loopback_broker(self) -> TubBroker:
        """Calls to our own FURLs go through a pair of brokers joined in memory (so arguments
        are copied exactly as they would be over the network)."""
        if self._loopback is None or self._loopback.disconnected:
            near, far = TubBroker(self, loopback=True), TubBroker(self, loopback=True)
            memory_pair(near, far)
            self._loopback = near
        return self._loopback

    # ------------------------------------------------------------------ connection bookkeeping

    def _master_decide(self, negotiation: _core.FoolscapSession) -> int:
        """As master, accept the connection the peer of `negotiation` (a connection's session)
        offers (its seqnum) or refuse it as a duplicate of the connection we already have
        (foolscap's rules)."""
        tub_id = negotiation.peer_tub_id or ""
        incarnation, last = negotiation.peer_incarnation, negotiation.peer_last_connection
        existing = self._brokers.get(tub_id)
        if existing is not None and not existing.disconnected:
            if not incarnation or not negotiation.peer_is_client:
                accept = False
            elif incarnation != existing.peer_incarnation:
                accept = True  # the peer restarted
            elif last is None:
                accept = False  # probably a parallel attempt through another hint
            elif last[0] != self.incarnation:
                accept = True  # the peer last talked to an earlier life of ours
            else:
                accept = last[1] == existing.seqnum  # it knows ours is stale
            if not accept:
                raise NegotiationError("Duplicate connection")
        seqnum = self._seqnums.get(tub_id, 0) + 1
        self._seqnums[tub_id] = seqnum
        return seqnum

    def _attach(self, broker: TubBroker, master_connection: tuple[str, int] | None) -> None:
        if master_connection is not None:
            self._last_connection[broker.peer_tub_id] = master_connection
        old = self._brokers.get(broker.peer_tub_id)
        self._brokers[broker.peer_tub_id] = broker
        if old is not None and old is not broker:
            old.close_nowait(
                PBConnectionLost(f"the connection to Tub {old.peer_tub_id} was replaced by a new one")
            )

    def _broker_lost(self, broker: TubBroker) -> None:
        if self._brokers.get(broker.peer_tub_id) is broker:
            del self._brokers[broker.peer_tub_id]

    def statistics(self) -> dict[str, int]:
        """`Connection.statistics` summed over the Tub's connections (the two ends of its
        connection to itself included), with ``connections`` (those counted) and
        ``registered`` (objects registered by name)."""
        totals = {"connections": 0, **dict.fromkeys(TubBroker.STATISTICS, 0)}
        for broker in list(self._connections):
            if not isinstance(broker, TubBroker) or broker._phase != "banana":
                continue
            totals["connections"] += 1
            for key, value in broker.statistics().items():
                totals[key] += value
        totals["registered"] = len(self._names)
        return totals

    # ------------------------------------------------------------------ the end

    def _check_running(self) -> None:
        if not self.running:
            raise RuntimeError("the Tub has been stopped")

    async def stopService(self, grace: float = 10.0) -> None:
        """Stop: stop listening and reconnecting, refuse new calls, let running calls finish
        and their replies go out for up to `grace` seconds, then cut off the connections still
        open (their calls cancelled, logged at DEBUG). Each connection ends with a TLS
        close_notify, so stock foolscap peers see a clean close."""
        if not self.running:
            return
        self.running = False
        for reconnector in list(self._reconnectors):
            reconnector.stopConnecting()
        for listener in self._listeners:
            listener.close()
        for task in list(self._connecting.values()):
            task.cancel()
        await shutdown(list(self._connections), grace)
        for listener in self._listeners:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(listener.wait_closed(), 5)
        self._listeners.clear()
        await asyncio.sleep(0)


class Reconnector:
    """Keeps a FURL connected (made by `Tub.connectTo`): after each failed attempt it waits
    `backoff`'s next delay; after each success it calls the callback and, once that connection
    is lost, starts again from the shortest delay."""

    def __init__(
        self,
        tub: Tub,
        furl: FURL,
        callback: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.tub = tub
        self.furl = furl
        self._callback = callback
        self._args = args
        self._kwargs = kwargs
        self.attempts: int = 0
        self.connections: int = 0
        self._last_failure: BaseException | None = None
        self._next_attempt: float | None = None
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def _delays(self) -> Iterator[float]:
        tub = self.tub
        return backoff(
            tub.reconnectInitialDelay, tub.reconnectFactor, tub.reconnectMaxDelay, tub.reconnectJitter
        )

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        delays = self._delays()
        while True:
            self.attempts += 1
            try:
                ref = await self.tub.getReference(self.furl)
            except Exception as e:
                self._last_failure = e
                delay = next(delays)
                self._next_attempt = loop.time() + delay
                log.info("connecting to %s failed (%s); next try in %.1f s", self.furl.tubID, e, delay)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                self._next_attempt = None
                continue
            delays = self._delays()
            self._last_failure = None
            self.connections += 1
            lost: asyncio.Future[None] = loop.create_future()

            def on_lost(lost: asyncio.Future[None] = lost) -> None:
                if not lost.done():
                    lost.set_result(None)

            ref.notifyOnDisconnect(on_lost)
            try:
                result = self._callback(ref, *self._args, **self._kwargs)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("connectTo callback %r failed", self._callback)
            del ref
            await lost

    def stopConnecting(self) -> None:
        """Stop: no more attempts, and no more callbacks (a live connection stays open)."""
        self._task.cancel()
        self.tub._reconnectors.discard(self)

    def reset(self) -> None:
        """Try again now instead of waiting out the current delay."""
        self._wake.set()

    def getDelayUntilNextAttempt(self) -> float | None:
        """Seconds until the next attempt, or None if not waiting."""
        if self._next_attempt is None:
            return None
        return max(0.0, self._next_attempt - asyncio.get_running_loop().time())

    def getLastFailure(self) -> BaseException | None:
        """Why the last attempt failed (None after a success)."""
        return self._last_failure


def backoff(
    initial: float, factor: float, maximum: float, jitter: float, rng: random.Random | None = None
) -> Iterator[float]:
    """Reconnection delays: `initial`, then each `factor` times the last, capped at `maximum`;
    each spread by up to ±`jitter` (a fraction) so many clients do not retry in step."""
    uniform = (rng or random).uniform
    for step in itertools.count():
        delay = min(maximum, initial * factor**step)
        yield min(maximum, delay * uniform(1 - jitter, 1 + jitter))
        if delay >= maximum:
            break
    while True:
        yield min(maximum, maximum * uniform(1 - jitter, 1 + jitter))


def _local_addresses() -> list[str]:
    """This host's IPv4 addresses, the outward-facing one first and loopback last."""
    found: list[str] = []
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # a UDP connect sends nothing; it only picks a route
        found.append(probe.getsockname()[0])
    with contextlib.suppress(OSError):
        found.extend(socket.gethostbyname_ex(socket.gethostname())[2])
    ordered = [a for a in dict.fromkeys(found) if not a.startswith("127.") and a != "0.0.0.0"]
    return ordered + ["127.0.0.1"]


def _name_in_furl_file(path: Path, tub_id: str) -> str | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    furl = FURL.parse(text)
    return furl.name if furl.tubID == tub_id else None


def _write_private(path: Path, text: str) -> None:
    """Write atomically, readable by the owner only (a FURL is a capability)."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
