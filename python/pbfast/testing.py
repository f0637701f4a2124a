"""Test helpers: two PB brokers joined by an in-memory link, no sockets.

    client_root, server = await pbfast.testing.connected_pair(MyRoot())
    assert await client_root.callRemote("echo", 1) == 1

Bytes written on one side are delivered to the other on a later loop iteration, as a socket
would deliver them; closing either end loses the connection on both.
"""

from __future__ import annotations

from typing import Any

from ._broker import Broker
from ._connection import ConnectionOptions, MemoryTransport, memory_pair
from .pb import _root_factory
from .referenceable import Referenceable, RemoteReference

__all__ = ["MemoryTransport", "connected_pair"]


async def connected_pair(server_root: Referenceable, **options: Any) -> tuple[RemoteReference, Broker]:
    """A client and a server broker joined in memory, after their handshake.

    Returns the client's `RemoteReference` to ``server_root.rootObject(broker)`` (or
    `server_root` itself) and the server's `Broker`. Options as for `pbfast.serve`.
    """
    settings = ConnectionOptions.from_keywords(options)
    server = Broker(settings, server=True, root=_root_factory(server_root))
    client = Broker(settings, server=False)
    memory_pair(client, server)
    await client.ready
    await server.ready
    return client.root(), server
