"""The control channel between two pbfast peers (docs/extensions.md), on every wire and transport
of `wires.VARIANTS`. Stock peers cannot reach it (tests/interop/)."""

from __future__ import annotations

import asyncio
from typing import Any

import pbfast
import pytest
from connections import eventually
from pbfast._connection import Connection
from wires import VARIANTS, connector

pytestmark = pytest.mark.event_loop


@pytest.fixture(params=VARIANTS)
def wire(request: pytest.FixtureRequest) -> Any:
    with connector(request.param) as connect:
        yield connect


class Root(pbfast.Referenceable):
    def __init__(self) -> None:
        self.open = asyncio.Event()

    def remote_ping(self) -> str:
        return "pong"

    async def remote_wait(self) -> str:
        await self.open.wait()
        return "opened"


class Callback(pbfast.Referenceable):
    def remote_twice(self, x: int) -> int:
        return 2 * x


@pytest.fixture
def control_methods(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Connection, Any]]:
    """Control methods for the test, on every connection: ``echo`` (which end ran it, by id, and
    what it got), ``call_back`` (awaits a call on a reference it was given) and ``note``
    (records which end got what)."""
    noted: list[tuple[Connection, Any]] = []

    def echo(self: Connection, *args: Any) -> list[Any]:
        return [id(self), list(args)]

    async def call_back(self: Connection, ref: pbfast.RemoteReference, x: int) -> Any:
        return await ref.callRemote("twice", x)

    def note(self: Connection, value: Any) -> None:
        noted.append((self, value))

    for name, method in (("echo", echo), ("call_back", call_back), ("note", note)):
        monkeypatch.setattr(Connection, f"_control_{name}", method, raising=False)
    return noted


def test_control_calls_between_pbfast_peers(run, wire, control_methods) -> None:
    """Control calls go both ways and carry any values (references too), awaitable results are
    awaited, an unknown control method fails with NoSuchMethod, and a control call without an
    answer runs even while the peer holds its calls back (max_in_flight reached)."""

    async def main() -> None:
        root = Root()
        async with wire(root, max_in_flight=1) as w:
            client, server = w.client, w.server
            assert await client.call_control("echo", 1, "two", [3]) == [id(server), [1, "two", [3]]]
            assert await server.call_control("echo", {"k": b"v"}) == [id(client), [{"k": b"v"}]]
            assert await client.call_control("call_back", Callback(), 21) == 42

            with pytest.raises(pbfast.RemoteError) as failed:
                await client.call_control("nosuch", 1)
            assert failed.value.remoteType.endswith("NoSuchMethod")
            assert "no control method 'nosuch'" in str(failed.value)

            # One call runs (max_in_flight=1), the next ones wait in the server's backlog (the
            # second, read with the first, has run as far as its awaitable); a control call
            # without an answer is not held behind them.
            running, waiting = w.root.callRemote("wait"), w.root.callRemote("wait")
            await eventually(lambda: w.server_stats()["in_flight"] == 1)
            held = w.root.callRemote("ping")
            await eventually(lambda: w.server_stats()["backlog"] == 2)
            client.call_control_only("note", "not held")
            await eventually(lambda: control_methods == [(server, "not held")])
            assert w.server_stats()["backlog"] == 2 and not held.done()
            root.open.set()
            assert await running == "opened" and await waiting == "opened"
            assert await held == "pong"

            for stats in (w.client_stats(), w.server_stats()):
                assert stats["pending"] == stats["in_flight"] == stats["backlog"] == 0

    run(main())
