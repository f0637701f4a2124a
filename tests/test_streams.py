"""Streams between pbfast peers (the ``stream`` extension, docs/extensions.md), on every wire and
transport of `wires.VARIANTS`: `RemoteReference.callRemoteStream` (server to client) and
`pbfast.stream` arguments (client to server), their flow control, and how they end."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pbfast
import pbfast._connection
import pbfast._streaming
import pytest
from connections import eventually
from pbfast.streams import estimate_size
from wires import VARIANTS, Wired, connector


@pytest.fixture(params=VARIANTS)
def wire(request: pytest.FixtureRequest) -> Any:
    with connector(request.param) as connect:
        yield connect


class Secret(pbfast.Copyable):
    """A copy no receiver has registered."""


class Producer:
    """A generator's life, seen from outside: what it yielded, and how it ended."""

    def __init__(self) -> None:
        self.produced = 0
        self.closed = asyncio.Event()
        self.exit: str | None = None  # "finished", "closed" (GeneratorExit), "cancelled"

    async def count(
        self,
        n: int,
        size: int = 0,
        fail_at: int | None = None,
        wait: bool = False,
        bad_at: int | None = None,
        secret_at: int | None = None,
    ) -> Any:
        try:
            for i in range(n):
                if i == fail_at:
                    raise ValueError(f"failed at {i}")
                if i == bad_at:
                    yield asyncio  # a module: cannot be sent
                if i == secret_at:
                    yield Secret()  # cannot be received (its class is not registered there)
                if wait:
                    await asyncio.Event().wait()  # a producer with nothing to say
                self.produced += 1
                yield (i, b"x" * size) if size else i
            self.exit = "finished"
        except GeneratorExit:
            self.exit = "closed"
            raise
        except asyncio.CancelledError:
            self.exit = "cancelled"
            raise
        finally:
            self.closed.set()


class Root(pbfast.Referenceable):
    def __init__(self) -> None:
        self.producers: list[Producer] = []
        self.ahead = 0  # the most items a stream argument got ahead of this side's consumption
        self.unblock = asyncio.Event()

    def remote_count(self, n: int, **options: Any) -> Any:
        producer = Producer()
        self.producers.append(producer)
        return producer.count(n, **options)

    async def remote_later(self, n: int) -> Any:
        await asyncio.sleep(0)
        return self.remote_count(n)

    def remote_plain(self) -> list[int]:
        return [1, 2]

    async def remote_block(self) -> str:
        await self.unblock.wait()
        return "unblocked"

    async def remote_total(self, items: pbfast.RemoteStream) -> int:
        total = 0
        async for item in items:
            total += item
        return total

    async def remote_first(self, items: pbfast.RemoteStream, n: int) -> list[Any]:
        got = []
        async for item in items:
            got.append(item)
            if len(got) == n:
                break
        return got

    async def remote_slowly(self, items: pbfast.RemoteStream, counter: Any, window: int) -> int:
        """Consume slowly in a narrow window, noting how far the producer got ahead."""
        consumed = 0
        async for _ in items.window(max_items=window):
            consumed += 1
            self.ahead = max(self.ahead, await counter.callRemote("produced") - consumed)
            await asyncio.sleep(0.001)
        return consumed

    def remote_ignore(self, items: pbfast.RemoteStream) -> str:
        return "ignored"

    async def remote_double(self, items: pbfast.RemoteStream) -> Any:
        async for item in items:
            yield 2 * item

    def remote_give(self, n: int) -> pbfast.Stream:
        producer = Producer()
        self.producers.append(producer)
        return pbfast.stream(producer.count(n))


class Counter(pbfast.Referenceable):
    def __init__(self, producer: Producer) -> None:
        self.producer = producer

    def remote_produced(self) -> int:
        return self.producer.produced


async def empty_tables(w: Wired) -> None:
    """Everything a stream held is gone on both sides: references, calls, tasks."""

    def empty() -> bool:
        client, server = w.client_stats(), w.server_stats()
        return (
            w.proxies() == 0
            and w.objects() == 0
            and client["objects"] == 0
            and server["proxies"] == 0
            and client["pending"] == server["pending"] == 0
            and client["in_flight"] == server["in_flight"] == 0
        )

    await eventually(empty)
    await eventually(lambda: not pbfast._streaming._running)


def test_items_in_order_both_ways(run, wire) -> None:
    async def main() -> None:
        root = Root()
        async with wire(root) as w:
            # server to client: a remote async generator, consumed in order
            assert [x async for x in w.root.callRemoteStream("count", 3000)] == list(range(3000))
            assert root.producers[-1].exit == "finished"
            # large items, several windows' worth
            got = [x async for x in w.root.callRemoteStream("count", 40, size=300_000)]
            assert got == [(i, b"x" * 300_000) for i in range(40)]
            # a method that is a coroutine returning the generator
            assert [x async for x in w.root.callRemoteStream("later", 5)] == list(range(5))
            # client to server: a pbfast.stream argument reaches the method as an async iterator
            producer = Producer()
            assert await w.root.callRemote("total", pbfast.stream(producer.count(2000))) == sum(range(2000))
            assert producer.exit == "finished"
            # nested: a stream argument into a method that is itself streamed
            source = Producer()
            doubled = [x async for x in w.root.callRemoteStream("double", pbfast.stream(source.count(700)))]
            assert doubled == [2 * i for i in range(700)] and source.exit == "finished"
            # a stream as a result
            given = await w.root.callRemote("give", 10)
            assert isinstance(given, pbfast.RemoteStream)
            assert [x async for x in given] == list(range(10))
            # nothing is asked of the peer before iterating
            before = len(root.producers)
            unstarted = w.root.callRemoteStream("count", 5)
            await asyncio.sleep(0.01)
            assert len(root.producers) == before
            del unstarted
            await empty_tables(w)

    run(main())


def test_leaving_early_closes_the_producer(run, wire) -> None:
    async def main() -> None:
        root = Root()
        async with wire(root) as w:
            # break
            async for item in w.root.callRemoteStream("count", 100_000):
                if item == 10:
                    break
            await asyncio.wait_for(root.producers[-1].closed.wait(), 5)
            assert root.producers[-1].exit == "closed"
            # aclose, and an exception leaving `async with`
            stream = w.root.callRemoteStream("count", 100_000)
            assert await anext(stream) == 0
            await stream.aclose()
            await asyncio.wait_for(root.producers[-1].closed.wait(), 5)
            with pytest.raises(StopAsyncIteration):
                await anext(stream)
            with pytest.raises(KeyError):
                async with w.root.callRemoteStream("count", 100_000) as items:
                    async for item in items:
                        raise KeyError(item)
            await asyncio.wait_for(root.producers[-1].closed.wait(), 5)
            assert root.producers[-1].exit == "closed"
            # the other way: the remote method stops early, or never iterates at all
            producer = Producer()
            assert await w.root.callRemote("first", pbfast.stream(producer.count(100_000)), 3) == [0, 1, 2]
            await asyncio.wait_for(producer.closed.wait(), 5)
            assert producer.exit == "closed" and producer.produced <= pbfast.streams.DEFAULT_MAX_ITEMS
            never = Producer()
            assert await w.root.callRemote("ignore", pbfast.stream(never.count(10))) == "ignored"
            assert never.produced == 0
            # a pbfast.stream is consumed once
            once = pbfast.stream(Producer().count(3))
            assert await w.root.callRemote("total", once) == 3
            with pytest.raises(pbfast.RemoteError, match="another receiver"):
                await w.root.callRemote("total", once)
            await empty_tables(w)

    run(main())


def test_cancelling_the_consumer_closes_the_producer(run, wire) -> None:
    async def main() -> None:
        root = Root()
        async with wire(root) as w:
            received: list[Any] = []

            async def consume(**options: Any) -> None:
                async for item in w.root.callRemoteStream("count", 100, **options):
                    received.append(item)

            # waiting on a producer that has nothing to send
            task = asyncio.create_task(consume(wait=True))
            await eventually(lambda: len(root.producers) == 1)
            await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.wait_for(root.producers[-1].closed.wait(), 5)
            assert root.producers[-1].exit == "cancelled" and received == []
            # the connection ending: the consumer gets the usual error, the producer is closed
            stream = w.root.callRemoteStream("count", 10, wait=True)
            waiting = asyncio.ensure_future(anext(stream))
            await eventually(lambda: len(root.producers) == 2)
            with pytest.raises(RuntimeError, match="another task"):
                await anext(stream)
            await w.close_server()
            with pytest.raises(pbfast.PBConnectionLost):
                await waiting
            await asyncio.wait_for(root.producers[-1].closed.wait(), 5)
            assert root.producers[-1].exit == "cancelled"
            with pytest.raises(StopAsyncIteration):
                await anext(stream)
            with pytest.raises(pbfast.DeadReferenceError):
                await anext(w.root.callRemoteStream("count", 1))

    run(main())


def test_errors_reach_the_consumer(run, wire, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        root = Root()
        async with wire(root) as w:
            stream = w.root.callRemoteStream("count", 10, fail_at=3)
            got = []
            with pytest.raises(pbfast.RemoteError) as raised:
                async for item in stream:
                    got.append(item)
            assert got == [0, 1, 2] and raised.value.check(ValueError) and "failed at 3" in str(raised.value)
            with pytest.raises(StopAsyncIteration):
                await anext(stream)
            with pytest.raises(pbfast.RemoteError) as raised:
                await anext(w.root.callRemoteStream("missing"))
            assert raised.value.remoteType in ("pbfast.errors.NoSuchMethod", "builtins.AttributeError")
            with pytest.raises(pbfast.RemoteError, match="not an async iterable"):
                await anext(w.root.callRemoteStream("plain"))
            # an item that cannot be sent: the items before it come, then the error
            got = []
            with pytest.raises(pbfast.RemoteError) as raised:
                async for item in w.root.callRemoteStream("count", 10, bad_at=4):
                    got.append(item)
            assert got == [0, 1, 2, 3] and "module" in str(raised.value)
            await asyncio.wait_for(root.producers[-1].closed.wait(), 5)
            # ... or received: the consumer gets why
            with pytest.raises(pbfast.RemoteError) as raised:
                async for _item in w.root.callRemoteStream("count", 10, secret_at=2):
                    pass
            assert "Secret" in str(raised.value)
            await asyncio.wait_for(root.producers[-1].closed.wait(), 5)
            # the other way: the client's generator raises inside the remote method's loop
            with pytest.raises(pbfast.RemoteError) as raised:
                await w.root.callRemote("total", pbfast.stream(Producer().count(10, fail_at=5)))
            assert "failed at 5" in str(raised.value)
            with pytest.raises(TypeError, match="async iterable"):
                pbfast.stream([1, 2])
            await empty_tables(w)

    with caplog.at_level(logging.CRITICAL, logger="pbfast"):
        run(main())


def test_a_slow_consumer_bounds_the_producer(run, wire) -> None:
    async def main() -> None:
        root = Root()
        async with wire(root) as w:
            # in items: never more than the window produced ahead of what was consumed
            consumed = ahead = 0
            async for _ in w.root.callRemoteStream("count", 60).window(max_items=8):
                consumed += 1
                ahead = max(ahead, root.producers[-1].produced - consumed)
                await asyncio.sleep(0.001)
            assert consumed == 60 and 4 <= ahead <= 8
            # in bytes: the window, plus the one item that may overshoot it
            size = 10_000
            consumed = ahead = 0
            stream = w.root.callRemoteStream("count", 30, size=size).window(
                max_items=1000, max_bytes=5 * size
            )
            async for _ in stream:
                consumed += 1
                ahead = max(ahead, root.producers[-1].produced - consumed)
                await asyncio.sleep(0.001)
            assert consumed == 30 and 2 <= ahead <= 6
            # a stream argument, consumed slowly by the remote method
            producer = Producer()
            counter = Counter(producer)
            assert await w.root.callRemote("slowly", pbfast.stream(producer.count(40)), counter, 4) == 40
            assert 2 <= root.ahead <= 4
            await empty_tables(w)

    run(main())


def test_streams_do_not_take_call_slots(run, wire) -> None:
    """A stream running does not hold one of the peer's max_in_flight calls (the credit it waits
    for comes as calls); the streams a peer starts are bounded by max_in_flight on their own."""

    async def main() -> None:
        root = Root()
        async with wire(root, client_options=None, max_in_flight=2) as w:
            streams = [w.root.callRemoteStream("count", 20).window(max_items=2) for _ in range(3)]
            firsts = [await anext(s) for s in streams[:2]]
            assert firsts == [0, 0]
            with pytest.raises(pbfast.RemoteError, match="max_in_flight"):
                await anext(streams[2])
            # calls filling max_in_flight: later calls wait, but the streams' credit does not
            blocked = [w.root.callRemote("block") for _ in range(2)]
            await eventually(lambda: w.server_stats()["in_flight"] == 2)
            assert [x async for x in streams[0]] == list(range(1, 20))
            assert await anext(streams[1]) == 1
            await streams[1].aclose()
            await asyncio.wait_for(root.producers[1].closed.wait(), 5)
            root.unblock.set()
            assert await asyncio.gather(*blocked) == ["unblocked"] * 2
            del streams
            await empty_tables(w)

    run(main())


def test_a_graceful_shutdown_lets_streams_finish(run, wire) -> None:
    """A shutdown waits for the streams being produced as it waits for running calls (their
    credit still comes), for up to its grace period; one still running then is cut off."""

    async def main() -> None:
        root = Root()
        async with wire(root) as w:
            slow = w.root.callRemoteStream("count", 300).window(max_items=4)
            assert await anext(slow) == 0
            await eventually(lambda: w.server_stats()["streams"] == 1)
            shutting = asyncio.ensure_future(pbfast._connection.shutdown([w.server], grace=30))
            await asyncio.sleep(0.05)
            assert not shutting.done() and not w.server.disconnected
            with pytest.raises(pbfast.RemoteError, match="the server is shutting down"):
                await w.root.callRemote("plain")  # new calls are refused meanwhile
            got = []
            async for item in slow:
                got.append(item)
                await asyncio.sleep(0) if item % 50 else await asyncio.sleep(0.01)
            assert got == list(range(1, 300))
            await asyncio.wait_for(shutting, 5)
            assert w.server.disconnected and root.producers[-1].exit == "finished"

        root = Root()
        async with wire(root) as w:
            stuck = w.root.callRemoteStream("count", 10, wait=True)  # never yields
            waiting = asyncio.ensure_future(anext(stuck))
            await eventually(lambda: w.server_stats()["streams"] == 1)
            await asyncio.wait_for(pbfast._connection.shutdown([w.server], grace=0.2), 5)
            with pytest.raises(pbfast.PBConnectionLost):
                await asyncio.wait_for(waiting, 5)
            await asyncio.wait_for(root.producers[-1].closed.wait(), 5)
            assert root.producers[-1].exit == "cancelled"
            assert w.server_stats()["streams"] == 0

    run(main())


@pytest.mark.parametrize("variant", ["pb-memory", "tub-loopback"])
def test_the_peer_must_speak_the_extension(run, variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pbfast peer that does not announce ``stream`` (stock peers: tests/interop/): both ways
    fail before anything is sent."""
    import pbfast._broker
    import pbfast._tub_broker

    monkeypatch.setattr(pbfast._broker, "EXTENSIONS", frozenset())
    monkeypatch.setattr(pbfast._tub_broker, "EXTENSIONS", frozenset({"cacheable"}))

    async def main() -> None:
        with connector(variant) as connect:
            async with connect(Root()) as w:
                assert w.client.peer_is_pbfast and "stream" not in w.client.peer_extensions
                written = w.client.transport.written
                with pytest.raises(pbfast.Error, match="does not speak the 'stream' extension"):
                    w.root.callRemoteStream("count", 3)
                with pytest.raises(pbfast.Error, match="does not speak the 'stream' extension"):
                    await w.root.callRemote("total", pbfast.stream(Producer().count(3)))
                await asyncio.sleep(0.01)
                assert w.client.transport.written == written
                assert await w.root.callRemote("plain") == [1, 2]

    run(main())


def test_estimate_size() -> None:
    assert estimate_size(b"x" * 1000) == 1000
    assert estimate_size("é" * 10) == 20
    assert estimate_size(7) == estimate_size(None) == 8
    assert estimate_size([b"x" * 100] * 1000) == 8 + 100 * 1000
    assert estimate_size({"k": b"v" * 50}) > 50
