"""Test helpers: two PB brokers joined by an in-memory link, no sockets.

    client_root, server = await pbfast.testing.connected_pair(MyRoot())
    assert await client_root.callRemote("echo", 1) == 1

Bytes written on one side are delivered to the other on a later loop iteration, as a socket
would deliver them; closing either end loses the connection on both.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ._broker import Broker, BrokerOptions
from ._protocol import PBProtocol
from .pb import _root_factory
from .referenceable import Referenceable, RemoteReference

__all__ = ["MemoryTransport", "connected_pair"]


class MemoryTransport(asyncio.Transport):
    """One end of an in-memory link. `written` counts the bytes sent through it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: asyncio.Protocol, name: str) -> None:
        super().__init__()
        self._loop = loop
        self._protocol = protocol
        self._name = name
        self.peer: MemoryTransport | None = None
        self.written = 0
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


async def connected_pair(server_root: Referenceable, **options: Any) -> tuple[RemoteReference, Broker]:
    """A client and a server broker joined in memory, after their handshake.

    Returns the client's `RemoteReference` to ``server_root.rootObject(broker)`` (or
    `server_root` itself) and the server's `Broker`. Options as for `pbfast.serve`.
    """
    loop = asyncio.get_running_loop()
    settings = BrokerOptions.from_keywords(options)
    root_for = _root_factory(server_root)
    server = PBProtocol(server=True, root=root_for, options=settings)
    client = PBProtocol(server=False, options=settings)
    server_end = MemoryTransport(loop, server, "memory:server")
    client_end = MemoryTransport(loop, client, "memory:client")
    server_end.peer, client_end.peer = client_end, server_end
    client.connection_made(client_end)
    server.connection_made(server_end)
    await client.broker.ready
    await server.broker.ready
    return client.broker.root(), server.broker
