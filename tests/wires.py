"""One connection API over both wires, for the matrix of tests/test_wires.py.

``connect(variant)`` gives ``async with connector(root, client_options={...}, **server_options)
as w``: `root` served, a client connected to it, and `w` a `Wired` with the same shape on both
wires. The variants (``VARIANTS``) cross the wire with the transports it runs on:

* ``pb-memory``, ``pb-tcp``, ``pb-unix``: PB (`pbfast.serve`/`pbfast.connect`, or the in-memory
  pair of ``pbfast.testing``), built on ``connections.py``;
* ``tub-tls``: a client Tub calling a FURL of a server Tub listening on 127.0.0.1 (TLS);
* ``tub-loopback``: one Tub calling its own FURL (the two ends of its in-memory connection to
  itself, no negotiation, no TLS).

Where the wires legitimately differ, `Wired` says so with a few explicit expectations
(`Expect`), so a test states the difference instead of weakening an assertion.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pbfast
from connections import _make_connector, eventually

VARIANTS = ("pb-memory", "pb-tcp", "pb-unix", "tub-tls", "tub-loopback")
LISTEN = "tcp:0:interface=127.0.0.1"


@dataclass(frozen=True)
class Expect:
    """What legitimately differs between the wires."""

    # Entries for the served root itself in the server's "objects" / the client's "proxies":
    # PB's root is not a counted reference; a Tub's registered object is sent as a reference.
    root_objects: int
    root_proxies: int
    # How values come back (`helpers.assert_deep_equal` options): foolscap sends dict keys
    # sorted, and each frozenset in full (not shared).
    compare: dict[str, bool]
    # An argument the wire cannot send fails the call locally with this exception.
    unsendable: type[BaseException]
    # The remote error of a call to a method the object lacks: its type, and its value given
    # the object's class name and the method's name.
    no_method_type: str
    no_method_value: Callable[[str, str], str]
    # The remote error of a call to an object id the peer does not have: its type, its value.
    no_object_type: str
    no_object_value: Callable[[int], str]
    # The remote value of a refused reference past max_refs (a fragment of it).
    max_refs_value: str
    # Whether the server logs (at ERROR) a remote method's unexpected exception by default
    # (PB does, as Twisted; a Tub only with logLocalFailures, as foolscap).
    logs_failures: bool
    # The decoder event of an incoming call the broker dispatches (its method name at [3]).
    call_event: int
    # Whether the decoder also runs calls on objects with their own dispatch, or leaves them to
    # the broker (both wires' decoders now run every call).
    decoder_runs_every_call: bool
    # The statistics a connection reports beyond the shared names.
    extra_statistics: frozenset[str]
    # A reference's notifyOnDisconnect as foolscap has it (`callback(*args, **kwargs)`, a
    # marker back), or as Twisted does (`callback(ref)`).
    foolscap_disconnect_notices: bool


PB = Expect(
    root_objects=0,
    root_proxies=0,
    compare={},
    unsendable=pbfast.JellyError,
    no_method_type="pbfast.errors.NoSuchMethod",
    no_method_value=lambda cls, name: f"No such method: remote_{name}",
    no_object_type="pbfast.errors.Error",
    no_object_value=lambda luid: "Invalid Object ID",
    max_refs_value="Maximum PB reference count",
    logs_failures=True,
    call_event=pbfast._core.EV_MESSAGE,
    decoder_runs_every_call=True,
    extra_statistics=frozenset({"caches"}),
    foolscap_disconnect_notices=False,
)
TUB = Expect(
    root_objects=1,
    root_proxies=1,
    compare={"ordered_dicts": False, "shared_frozensets": False},
    unsendable=TypeError,
    no_method_type="builtins.AttributeError",
    no_method_value=lambda cls, name: f"{cls!r} object has no attribute {'remote_' + name!r}",
    no_object_type="foolscap.tokens.Violation",
    no_object_value=lambda luid: f"unknown clid {luid}",
    max_refs_value="Maximum PB reference count",
    logs_failures=False,
    call_event=pbfast._core.FS_CALL,
    decoder_runs_every_call=True,
    extra_statistics=frozenset({"caches", "gifts"}),
    foolscap_disconnect_notices=True,
)


@dataclass
class Wired:
    """A connected client and server, whichever the wire."""

    variant: str
    wire: str  # "pb" or "tub"
    root: pbfast.RemoteReference  # the client's reference to the served root
    server: Any  # the server's end of the connection (a Broker or a TubBroker)
    expect: Expect

    @property
    def client(self) -> Any:
        """The client's end of the connection (the root reference's broker)."""
        return self.root.broker

    def client_stats(self) -> dict[str, int]:
        return self.client.statistics()

    def server_stats(self) -> dict[str, int]:
        return self.server.statistics()

    def objects(self) -> int:
        """The server's "objects", the root's own entry left out."""
        return self.server_stats()["objects"] - self.expect.root_objects

    def proxies(self) -> int:
        """The client's "proxies", the root's own proxy left out."""
        return self.client_stats()["proxies"] - self.expect.root_proxies

    async def close_client(self) -> None:
        await self.client.close()

    async def close_server(self) -> None:
        await self.server.close()


Connector = Callable[..., contextlib.AbstractAsyncContextManager[Wired]]


@contextlib.contextmanager
def connector(variant: str) -> Any:
    """The connector of `variant` (a context manager: a unix socket's directory is removed on
    the way out)."""
    wire, kind = variant.split("-")
    if wire == "pb":
        tmpdir = tempfile.mkdtemp(dir="/tmp") if kind == "unix" else None
        try:
            yield _pb(variant, _make_connector(kind, tmpdir))
        finally:
            if tmpdir is not None:
                shutil.rmtree(tmpdir, ignore_errors=True)
    else:
        yield _tub(variant, loopback=kind == "loopback")


def _pb(variant: str, transport: Any) -> Connector:
    @contextlib.asynccontextmanager
    async def connection(
        root: Any, client_options: dict[str, Any] | None = None, **options: Any
    ) -> AsyncIterator[Wired]:
        async with transport(root, client_options=client_options, **options) as conn:
            yield Wired(variant, "pb", conn.root, conn.server_broker, PB)

    return connection


def _tub(variant: str, *, loopback: bool) -> Connector:
    @contextlib.asynccontextmanager
    async def connection(
        root: Any, client_options: dict[str, Any] | None = None, **options: Any
    ) -> AsyncIterator[Wired]:
        async with contextlib.AsyncExitStack() as stack:
            server_tub = await stack.enter_async_context(pbfast.Tub(**options))
            listener = await server_tub.listenOn(LISTEN)
            server_tub.setLocation(f"tcp:127.0.0.1:{listener.port}")
            furl = server_tub.registerReference(root, "root")
            if loopback:
                assert not client_options, "a Tub calling itself has one set of options"
                client_tub = server_tub
            else:
                client_tub = await stack.enter_async_context(pbfast.Tub(**(client_options or {})))
            ref = await asyncio.wait_for(client_tub.getReference(furl), 5)
            if loopback:
                (server_broker,) = server_tub._connections - {ref.broker}
            else:
                await eventually(lambda: len(server_tub._connections) == 1)
                (server_broker,) = server_tub._connections
                await asyncio.wait_for(asyncio.shield(server_broker.ready), 5)
            try:
                yield Wired(variant, "tub", ref, server_broker, TUB)
            finally:
                for broker in (ref.broker, server_broker):
                    await broker.close()

    return connection
