"""The asyncio side of a PB connection: bytes in go to the broker (and from it to the Rust
decoder) in one call per chunk; flow-control signals go to the broker too. No parsing here."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ._broker import DEFAULT_OPTIONS, Broker, BrokerOptions
from .endpoints import _set_nodelay
from .referenceable import Referenceable


class PBProtocol(asyncio.Protocol):
    """One PB connection's protocol.

    Args:
        server: True on the accepting side.
        root: (server) a factory for the connection's root object, given the broker.
        options: connection options.
        on_open, on_close: called with the broker when the connection opens and after it ends.
    """

    broker: Broker

    def __init__(
        self,
        *,
        server: bool,
        root: Callable[[Broker], Referenceable] | None = None,
        options: BrokerOptions = DEFAULT_OPTIONS,
        on_open: Callable[[Broker], object] | None = None,
        on_close: Callable[[Broker], object] | None = None,
    ) -> None:
        self._server = server
        self._root = root
        self._options = options
        self._on_open = on_open
        self._on_close = on_close

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        _set_nodelay(transport)
        self.broker = Broker(transport, server=self._server, options=self._options)
        if self._root is not None:
            self.broker.serve_root(self._root(self.broker))
        if self._on_open is not None:
            self._on_open(self.broker)

    def data_received(self, data: bytes) -> None:
        self.broker.data_received(data)

    def eof_received(self) -> bool:
        return False  # the peer is done: close our side too

    def pause_writing(self) -> None:
        self.broker.pause_writing()

    def resume_writing(self) -> None:
        self.broker.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.broker.connection_lost(exc)
        if self._on_close is not None:
            self._on_close(self.broker)
