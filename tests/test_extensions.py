"""What two pbfast peers add to the stock protocols (docs/extensions.md), on every wire and
transport of `wires.VARIANTS`. With stock peers (tests/interop/) nothing of it shows."""

from __future__ import annotations

import asyncio
from typing import Any

import pbfast
import pytest
from pbfast._connection import EXTENSIONS
from pbfast._tub_broker import EXTENSIONS as TUB_EXTENSIONS
from wires import VARIANTS, connector


@pytest.fixture(params=VARIANTS)
def wire(request: pytest.FixtureRequest) -> Any:
    with connector(request.param) as connect:
        yield connect


class Root(pbfast.Referenceable):
    def remote_ping(self) -> str:
        return "pong"


def test_pbfast_peers_recognise_each_other(run, wire) -> None:
    async def main() -> None:
        async with wire(Root()) as w:
            assert await w.root.callRemote("ping") == "pong"
            both = EXTENSIONS if w.wire == "pb" else TUB_EXTENSIONS
            for side in (w.client, w.server):
                assert side.peer_is_pbfast is True
                assert side.peer_extensions == both

    run(main())


class Bulk(pbfast.Referenceable):
    def remote_echo(self, value: Any) -> Any:
        return value

    def remote_make(self, size: int) -> bytes:
        return payload(size)


def payload(size: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size]


LIMIT = 2 << 20  # the max_message_size of the large-value tests


def test_large_values_up_to_max_message_size(run, wire, request: pytest.FixtureRequest) -> None:
    """`large`: strings and lists past Twisted's 640 KiB, both ways, up to max_message_size; past
    it the sender refuses before sending anything (the connection goes on), and a receiver with a
    lower limit refuses what it is sent, naming the limit."""

    variant = request.node.callspec.params["wire"]
    loopback = variant == "tub-loopback"  # one Tub: one set of options
    both = None if loopback else {"max_message_size": LIMIT}

    async def main() -> None:
        async with wire(Bulk(), client_options=both, max_message_size=LIMIT) as w:
            assert "large" in w.client.peer_extensions and "large" in w.server.peer_extensions
            data = payload(LIMIT - (64 << 10))
            assert await w.root.callRemote("echo", data) == data  # there and back
            text = "\u00e9" * (700 << 10)  # 1.4 MB of UTF-8
            assert await w.root.callRemote("echo", text) == text
            items = [7] * ((640 << 10) + 1)  # one more element than Twisted's lists hold
            assert await w.root.callRemote("echo", items) == items
            with pytest.raises(pbfast.BananaError) as refused:
                await w.root.callRemote("echo", payload(LIMIT + 1))
            assert refused.value.limit == "max_message_size"
            assert f"max_message_size={LIMIT}" in str(refused.value)
            # An answer over the server's limit fails the call, not the connection.
            with pytest.raises(pbfast.RemoteError) as answered:
                await w.root.callRemote("make", LIMIT + 1)
            assert f"max_message_size={LIMIT}" in str(answered.value)
            assert await w.root.callRemote("echo", b"still fine") == b"still fine"
            assert w.client.statistics()["pending"] == 0
        if variant in ("tub-loopback", "pb-memory"):
            return  # (both ends have the same options)
        # The server may send more than the client takes: the client refuses it from its header.
        async with wire(Bulk(), client_options={"max_message_size": LIMIT}, max_message_size=2 * LIMIT) as w:
            with pytest.raises(pbfast.PBConnectionLost) as lost:
                await w.root.callRemote("make", LIMIT + 1)
            assert f"max_message_size={LIMIT}" in str(lost.value)
            assert lost.value.__cause__.limit == "max_message_size"

    run(main())


class Mixed(pbfast.Referenceable):
    """Answers that hold long byte strings among other values, or fail to encode after them."""

    def remote_mixed(self, *values: Any, **named: Any) -> Any:
        return [values, named, payload(70_000)]

    def remote_unsendable(self) -> Any:
        return [payload(100_000), asyncio]  # (a module: sent on neither wire)


def test_long_byte_strings_among_other_values(run, wire) -> None:
    """Long byte strings (a Tub over TLS seals them straight from their bytes objects) arrive
    whole and in place wherever they sit in a message, however many there are, with calls
    pipelined around them; a message that fails to encode after one of them sends nothing of
    it, and the connection goes on."""

    async def main() -> None:
        async with wire(Mixed()) as w:
            big, bigger = payload(65_536), payload(300_001)[::-1]
            args = (big, b"small", [bigger, {"k": big}], "text")
            named = {"z": bytes(200_000), "a": b"x" * 65_535}
            calls = [w.root.callRemote("mixed", *args[: 1 + i % 4], **named) for i in range(8)]
            for i, answer in enumerate(await asyncio.gather(*calls)):
                assert answer == [args[: 1 + i % 4], named, payload(70_000)], i
            with pytest.raises(w.expect.unsendable):
                await w.root.callRemote("mixed", big, bigger, asyncio)
            # (The answers of calls read together are encoded one after the other.)
            failed, fine = await asyncio.gather(
                w.root.callRemote("unsendable"), w.root.callRemote("mixed", big), return_exceptions=True
            )
            assert isinstance(failed, pbfast.RemoteError) and fine == [(big,), {}, payload(70_000)]
            assert await w.root.callRemote("mixed", bigger) == [(bigger,), {}, payload(70_000)]
            assert w.client.statistics()["pending"] == 0

    run(main())
