"""Connection scaffolding shared by the end-to-end PB tests (test_broker.py, test_flavors.py,
test_cred.py).

``_make_connector`` opens a PB connection to a root over one of three transports: the in-memory
pair of ``pbfast.testing``, real TCP on 127.0.0.1, or a unix socket in a temporary directory.
conftest.py turns it into the ``transport`` fixture (parametrized over ``TRANSPORTS``) and gives
the ``socket_kind`` fixture for tests that drive ``pbfast.serve``/``pbfast.connect`` themselves
with ``_endpoints``. ``eventually``, ``settle`` and ``pbfast_records`` are the polling and
logging helpers those tests share; ``CountingDecoder`` notes the held calls a broker (of either
wire) has its decoder run.

``tests/`` has no ``__init__.py``: pytest's default ("prepend") import mode puts it on
``sys.path``, so test modules import this with ``from connections import ...``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pbfast
import pbfast.testing
import pytest

TRANSPORTS = ("memory", "tcp", "unix")


@dataclass
class Conn:
    kind: str
    root: pbfast.RemoteReference
    server_broker: Any
    server: pbfast.Server | None
    # Opens one more client connection to the same server: (its root, its server-side broker).
    another: Callable[[], Awaitable[tuple[pbfast.RemoteReference, Any]]]

    @property
    def client_broker(self) -> Any:
        return self.root.broker


Connect = Callable[..., contextlib.AbstractAsyncContextManager[Conn]]


def _endpoints(kind: str, tmpdir: str | None) -> tuple[str, Callable[[pbfast.Server], str]]:
    """For a real-socket `kind` ("tcp" or "unix"): the endpoint to listen on, and a function
    giving the endpoint a client connects to once the server listens."""
    if kind == "tcp":
        return "tcp:port=0:interface=127.0.0.1", lambda server: f"tcp:host=127.0.0.1:port={server.port}"
    assert tmpdir is not None
    path = f"{tmpdir}/pb.sock"
    return f"unix:address={path}", lambda server: f"unix:path={path}"


def _make_connector(kind: str, tmpdir: str | None) -> Connect:
    """``async with connector(root, client_options={...}, **server_options) as conn`` serves
    `root` over `kind` (a unix socket goes in `tmpdir`) and gives a connected `Conn`; every
    connection it opened is closed, and its server too, on the way out."""

    @contextlib.asynccontextmanager
    async def connection(
        root: Any, client_options: dict[str, Any] | None = None, **options: Any
    ) -> AsyncIterator[Conn]:
        client_options = client_options or {}
        opened: list[Any] = []  # brokers to close at the end
        if kind == "memory":
            # The in-memory pair takes one set of options for both ends.
            both = {**options, **client_options}

            async def another() -> tuple[pbfast.RemoteReference, Any]:
                client_root, server_broker = await pbfast.testing.connected_pair(root, **both)
                opened.extend((client_root.broker, server_broker))
                return client_root, server_broker

            client_root, server_broker = await another()
            try:
                yield Conn(kind, client_root, server_broker, None, another)
            finally:
                for broker in opened:
                    await broker.close()
            return
        listen_on, connect_to = _endpoints(kind, tmpdir)
        server = await pbfast.serve(root, listen_on, **options)

        async def another() -> tuple[pbfast.RemoteReference, Any]:
            before = set(server.brokers)
            client_root = await pbfast.connect(connect_to(server), timeout=5, **client_options)
            opened.append(client_root.broker)
            await eventually(lambda: len(server.brokers - before) == 1)
            (server_broker,) = server.brokers - before
            await asyncio.wait_for(asyncio.shield(server_broker.ready), 5)
            return client_root, server_broker

        try:
            client_root, server_broker = await another()
            yield Conn(kind, client_root, server_broker, server, another)
        finally:
            for broker in opened:
                await broker.close()
            server.close()
            await asyncio.wait_for(server.wait_closed(), 5)

    return connection


async def eventually(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    """Poll `predicate` (collecting garbage) until it holds, or fail after `timeout` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        gc.collect()
        if predicate():
            return
        if loop.time() > deadline:
            raise AssertionError(f"condition {predicate} still false after {timeout} s")
        await asyncio.sleep(0.005)


async def settle(rounds: int = 4) -> None:
    """Let in-flight bytes (decrefs, decaches, late answers) travel, collecting garbage."""
    for _ in range(rounds):
        gc.collect()
        await asyncio.sleep(0.01)


def pbfast_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    """The records pbfast's loggers wrote at `level` or above."""
    return [r for r in caplog.records if r.name.startswith("pbfast") and r.levelno >= level]


class CountingSession:
    """Stands in for a broker's session (``broker._session = CountingSession(broker._session)``)
    and notes the method names of the held calls it is asked to `run` in `ran`."""

    def __init__(self, real: Any) -> None:
        object.__setattr__(self, "real", real)
        object.__setattr__(self, "ran", [])

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.real, name, value)

    def run(self, *args: Any) -> Any:
        self.ran.append(args[2])  # the method's name, on both wires
        return self.real.run(*args)
