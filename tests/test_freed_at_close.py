"""A closed connection is freed when it closes, not by a later garbage collection.

Each scenario runs with the cyclic garbage collector off: once the server side's connection has
closed (however it closed: the peer left, broke the protocol, timed out, went over a limit, or
the server shut down), nothing may keep it alive — no reference cycle between it and its Rust
decoder, encoder, sender or TLS session, nor through an exception it kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pbfast
import pytest
from pbfast import _core
from pbfast._connection import Connection

HOST = "127.0.0.1"


class Root(pbfast.Root):
    """Records (weakly) the server side of each connection it is the root of."""

    def __init__(self) -> None:
        self.connections: list[weakref.ref[Connection]] = []

    def rootObject(self, broker: Any) -> Root:
        self.connections.append(weakref.ref(broker))
        return self

    def remote_echo(self, value: Any) -> Any:
        return value

    async def remote_slow(self, seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    def remote_child(self) -> pbfast.Referenceable:
        return Child()

    def remote_fail(self) -> None:
        raise pbfast.Error("as asked")  # an expected error: no log record keeps it


class Child(pbfast.Referenceable):
    def remote_echo(self, value: Any) -> Any:
        return value


@pytest.fixture
def no_gc():
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


async def freed(watched: list[weakref.ref[Connection]], timeout: float = 5.0) -> None:
    """Wait until every watched connection is gone (without collecting garbage)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while any(ref() is not None for ref in watched):
        if loop.time() > deadline:
            alive = [ref() for ref in watched if ref() is not None]
            holders = {repr(c): [type(r).__name__ for r in gc.get_referrers(c)] for c in alive}
            raise AssertionError(f"still alive without a garbage collection: {holders}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def pb_server(**options: Any) -> AsyncIterator[tuple[pbfast.Server, Root]]:
    root = Root()
    server = await pbfast.serve(root, f"tcp:port=0:interface={HOST}", **options)
    try:
        yield server, root
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)


async def raw_client(server: pbfast.Server, data: bytes, *, handshake: bool) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection(HOST, server.port)
    if handshake:
        offer = _core.PbDecoder(False)
        events: list = []
        while not events:
            events = offer.feed(await reader.read(1024))
        writer.write(events[0][2])  # the client's choice of dialect and its version
    writer.write(data)
    await writer.drain()
    return writer


# The start of a message holding a 600 kB string, cut short.
PARTIAL = pbfast.banana.encode([b"x" * 600_000])[:200_000]
GARBAGE = b"\xff" * 64


PB_SCENARIOS: dict[str, Callable[..., Awaitable[None]]] = {}


def pb_scenario(name: str, **options: Any):
    def register(body: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        PB_SCENARIOS[name] = (body, options)
        return body

    return register


@pb_scenario("the client closes")
async def _(server: pbfast.Server) -> None:
    root = await pbfast.connect(f"tcp:host={HOST}:port={server.port}")
    child = await root.callRemote("child")
    assert await child.callRemote("echo", [1, b"2"]) == [1, b"2"]
    with pytest.raises(pbfast.RemoteError):
        await root.callRemote("fail")
    await root.broker.close()


@pb_scenario("the client aborts mid-message")
async def _(server: pbfast.Server) -> None:
    writer = await raw_client(server, PARTIAL, handshake=True)
    await asyncio.sleep(0.05)
    writer.transport.abort()


@pb_scenario("the client sends garbage")
async def _(server: pbfast.Server) -> None:
    writer = await raw_client(server, GARBAGE, handshake=True)
    await asyncio.sleep(0.05)
    writer.close()


@pb_scenario("the client never finishes its handshake", handshake_timeout=0.1)
async def _(server: pbfast.Server) -> None:
    writer = await raw_client(server, b"", handshake=False)
    await asyncio.sleep(0.3)
    writer.close()


@pb_scenario("the client falls silent", idle_timeout=0.1)
async def _(server: pbfast.Server) -> None:
    writer = await raw_client(server, b"", handshake=True)
    await asyncio.sleep(0.3)
    writer.close()


@pb_scenario("the server shuts down under a running call")
async def _(server: pbfast.Server) -> None:
    root = await pbfast.connect(f"tcp:host={HOST}:port={server.port}")
    call = root.callRemote("slow", 5)
    await asyncio.sleep(0.05)
    await server.shutdown(grace=0.05)
    with pytest.raises(pbfast.PBConnectionLost):
        await call


@pytest.mark.parametrize("name", list(PB_SCENARIOS))
def test_pb_connection_is_freed(run, no_gc, name: str) -> None:
    body, options = PB_SCENARIOS[name]

    async def main() -> None:
        async with pb_server(**options) as (server, root):
            await body(server)
            await asyncio.sleep(0.01)
            assert len(root.connections) == 1
            await freed(root.connections)

    run(main())


def test_memory_budget_victim_is_freed(run, no_gc) -> None:
    async def main() -> None:
        previous = pbfast.configure()["memory_budget"]
        pbfast.configure(memory_budget=100_000)
        try:
            async with pb_server() as (server, root):
                for _ in range(3):
                    writer = await raw_client(server, PARTIAL[:150_000], handshake=True)
                    await freed(root.connections)
                    writer.close()
                assert len(root.connections) == 3
        finally:
            pbfast.configure(memory_budget=previous)

    run(main())


# ---------------------------------------------------------------------------------------- Tubs


@contextlib.asynccontextmanager
async def tub_server(**options: Any) -> AsyncIterator[tuple[pbfast.Tub, str, int]]:
    tub = pbfast.Tub(**options)
    try:
        listener = await tub.listenOn(f"tcp:0:interface={HOST}")
        tub.setLocation(f"tcp:{HOST}:{listener.port}")
        yield tub, tub.registerReference(Root(), "root"), listener.port
    finally:
        await tub.stopService(grace=0)


async def tub_side(tub: pbfast.Tub, before: set[Connection]) -> weakref.ref[Connection]:
    for _ in range(500):
        new = set(tub._connections) - before
        if new:
            (connection,) = new
            return weakref.ref(connection)
        await asyncio.sleep(0.01)
    raise AssertionError("the Tub saw no new connection")


@pytest.mark.parametrize("how", ["close", "stop", "garbage before TLS", "negotiation timeout"])
def test_tub_connection_is_freed(run, no_gc, how: str) -> None:
    async def main() -> None:
        options = {"negotiationTimeout": 0.1} if how == "negotiation timeout" else {}
        async with tub_server(**options) as (server, furl, port):
            before = set(server._connections)
            if how in ("close", "stop"):
                client = pbfast.Tub()
                ref = await client.getReference(furl)
                watched = [await tub_side(server, before), weakref.ref(ref.broker)]
                assert await ref.callRemote("echo", 7) == 7
                with pytest.raises(pbfast.RemoteError):
                    await ref.callRemote("fail")
                child = await ref.callRemote("child")
                assert await child.callRemote("echo", 8) == 8
                del ref, child
                if how == "close":
                    (broker,) = client._connections
                    await broker.close()
                    del broker
                await client.stopService(grace=1)
            else:
                reader, writer = await asyncio.open_connection(HOST, port)
                watched = [await tub_side(server, before)]
                if how == "garbage before TLS":
                    writer.write(b"GET /id/nope HTTP/1.1\r\n\r\n")
                await asyncio.sleep(0.3)
                writer.close()
            await freed(watched)

    run(main())
