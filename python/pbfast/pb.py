"""Twisted PB over asyncio: `serve` a root object, `connect` to one, and `run` a program on
uvloop when it is installed."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from types import TracebackType
from typing import Any, TypeVar, Unpack

from . import endpoints
from ._broker import Broker
from ._connection import Connection, ConnectionOptions, shutdown
from .cred import Portal, PortalRoot, login_over
from .options import Options
from .referenceable import Referenceable, RemoteReference, Root

__all__ = ["Server", "connect", "login", "run", "serve"]

T = TypeVar("T")

CONNECT_TIMEOUT = 30.0


class Server:
    """A listening PB server (from `serve`): ``.port``, ``.close()``, ``await .wait_closed()``,
    ``await .shutdown(grace)``, and ``async with`` closes it on exit."""

    def __init__(self, listener: endpoints.Listener, brokers: set[Connection]) -> None:
        self._listener = listener
        self.brokers = brokers
        """The open connections' brokers."""

    @property
    def port(self) -> int | None:
        """The bound TCP port (useful with ``port=0``), or None for a unix socket."""
        return self._listener.port

    @property
    def address(self) -> Any:
        """The bound address: ``(host, port)``, or the unix socket's path."""
        return self._listener.address

    def close(self) -> None:
        """Stop listening and close every open connection: what is queued is still written,
        the clients' calls still running are cancelled (logged at DEBUG). A client that does
        not read is cut off after `pbfast._connection.CLOSE_TIMEOUT` seconds."""
        self._listener.close()
        for broker in list(self.brokers):
            broker.close_nowait(cancel=True)

    async def wait_closed(self) -> None:
        """Wait until the listener and every connection are closed."""
        await self._listener.wait_closed()
        closing = [broker.closed for broker in list(self.brokers)]
        if closing:
            await asyncio.gather(*closing)

    async def shutdown(self, grace: float = 10.0) -> None:
        """Stop gracefully: stop listening, refuse new calls (the callers get an error), let
        running calls finish and their replies go out for up to `grace` seconds, then cut off
        the connections still open (their calls cancelled, logged at DEBUG)."""
        self._listener.close()
        await shutdown(list(self.brokers), grace)
        await self.wait_closed()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()


async def serve(
    root: Root | Referenceable | Portal,
    endpoint: str,
    *,
    reuse_port: bool = False,
    **options: Unpack[Options],
) -> Server:
    """Serve `root` on `endpoint` (Twisted's endpoint syntax, e.g. ``"tcp:8800"`` or
    ``"tcp:port=0:interface=127.0.0.1"``); every connection gets ``root.rootObject(broker)``.
    A `Portal` is served for cred logins (`login`), as Twisted's ``PBServerFactory(portal)``.

    With ``reuse_port=True`` the port is bound with ``SO_REUSEPORT``: several servers (in this
    process or in others of the same user) that all set it listen on one port, and the kernel
    spreads the incoming connections among them (``pbfast serve --workers`` runs one per
    process). For ``tcp``, ``tcp6`` and ``ssl`` endpoints, on Linux, the BSDs and macOS.

    Options (`pbfast.options.Options`): ``unsafeTracebacks`` (send
    tracebacks to callers), ``max_in_flight``, ``backlog``, ``max_refs``, ``max_proxies``,
    ``handshake_timeout``, ``idle_timeout`` and the receive limits ``max_element_size``,
    ``max_message_size``, ``max_depth``, ``max_header_length``.

    Raises:
        ValueError: a malformed endpoint string; with `reuse_port`, an endpoint that binds no
            TCP port, or a platform without ``SO_REUSEPORT`` (Windows).
        TypeError: an unknown option, or a root that is not a Referenceable.
        ValueError: an option value out of range.
        OSError: the address cannot be bound (e.g. the port is in use).
    """
    settings = ConnectionOptions.from_keywords(dict(options))
    root_for = _root_factory(root)
    brokers: set[Connection] = set()

    def protocol() -> Broker:
        return Broker(settings, server=True, root=root_for, group=brokers)

    listener = await endpoints.listen(endpoint, protocol, reuse_port=reuse_port)
    return Server(listener, brokers)


def _root_factory(root: Root | Referenceable | Portal) -> Any:
    """A connection's root, given its broker."""
    if isinstance(root, Portal):
        return lambda broker: PortalRoot(root, broker)
    if not isinstance(root, Referenceable):
        raise TypeError(f"the root must be a pbfast.Referenceable or Portal, not {type(root).__name__}")
    return getattr(root, "rootObject", None) or (lambda broker: root)


class connect:  # noqa: N801 (used like a function: `await connect(...)`, `async with connect(...)`)
    """Connect to a PB server at `endpoint` (e.g. ``"tcp:host=127.0.0.1:port=8800"``).

    ``await pbfast.connect(...)`` gives the server's root `RemoteReference`;
    ``async with pbfast.connect(...) as root:`` also closes the connection on exit.
    Options as for `serve`, plus ``timeout`` (seconds for connecting and the handshake — and
    for `login`, the login too; default 30).

    Raises:
        ValueError: a malformed endpoint string.
        TypeError: an unknown option.
        OSError: the connection failed (refused, unreachable, ...).
        TimeoutError: no handshake within ``timeout``.
        NegotiationError: the peer speaks no common dialect or another PB version.
    """

    def __init__(
        self, endpoint: str, *, timeout: float = CONNECT_TIMEOUT, **options: Unpack[Options]
    ) -> None:
        self._endpoint = endpoint
        self._timeout = timeout
        self._options = ConnectionOptions.from_keywords(dict(options))
        self._root: RemoteReference | None = None

    async def _open(self) -> RemoteReference:
        async with asyncio.timeout(self._timeout):
            _, broker = await endpoints.connect(self._endpoint, lambda: Broker(self._options, server=False))
            try:
                await asyncio.shield(broker.ready)
            except BaseException:
                broker.transport.abort()
                raise
        return broker.root()

    def __await__(self) -> Generator[Any, None, RemoteReference]:
        return self._open().__await__()

    async def __aenter__(self) -> RemoteReference:
        self._root = await self._open()
        return self._root

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._root is not None:
            root, self._root = self._root, None
            await root.broker.close()


class login(connect):  # noqa: N801 (used like a function, as `connect` is)
    """Log in to a PB server serving a portal, with Twisted's challenge/response.

    ``await pbfast.login(endpoint, pbfast.UsernamePassword(user, password), mind=None)``
    gives the avatar's `RemoteReference`; ``async with`` also closes the connection on exit.
    `credentials` None (or `pbfast.Anonymous()`) logs in anonymously. `mind` (any jellyable
    value, often a Referenceable the server may call back) goes to the realm.

    Raises:
        UnauthorizedLogin: the server refused the credentials (the connection is closed).
        ValueError, TypeError, OSError, TimeoutError, NegotiationError: as for `connect`.
    """

    def __init__(
        self,
        endpoint: str,
        credentials: Any = None,
        mind: Any = None,
        *,
        timeout: float = CONNECT_TIMEOUT,
        **options: Unpack[Options],
    ) -> None:
        super().__init__(endpoint, timeout=timeout, **options)
        self._credentials = credentials
        self._mind = mind

    async def _open(self) -> RemoteReference:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        root = await super()._open()
        try:
            async with asyncio.timeout_at(deadline):
                return await login_over(root, self._credentials, self._mind)
        except BaseException:
            await root.broker.close()
            raise


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to completion on a new event loop: uvloop's when uvloop is installed, plain
    asyncio's otherwise. Installs no global policy."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
