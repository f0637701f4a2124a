"""Interop with stock Twisted Perspective Broker over real TCP on 127.0.0.1, both ways.

Stock Twisted runs in a subprocess (``twisted_peer.py``, see README.md next to it; started and
stopped with the helpers of ``peers.py``):

* pbfast client -> Twisted ``PBServerFactory`` (``twisted_peer.py server``): every jelly type as
  arguments and results, keyword arguments, errors, references both ways with identity kept on
  return, Twisted calling our objects back, decref (Twisted's ``luids`` table empties once we
  drop our proxies, ours once Twisted drops its), and the connection going away mid-call.
* Twisted ``PBClientFactory`` -> pbfast server (``twisted_peer.py client PORT SCENARIO``): the
  peer runs a scenario against our server and reports what it saw as one ``RESULT <json>`` line;
  our server's own tables are checked after every client is gone.
* Paging both ways: Twisted's ``StringPager`` to ``pbfast.util.getAllPages``, and
  ``pbfast.util.StringPager`` to Twisted's ``getAllPages``, a value past banana's 640 KiB.

Each test starts one Twisted process (a few tenths of a second) and groups its assertions
around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import decimal
import gc
import hashlib
import logging
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pbfast
import pytest
from helpers import assert_deep_equal
from pbfast._connection import EXTENSIONS
from pbfast.banana import encode
from peers import EMPTY_STATISTICS, HOST, check_cancels_stay_local, peer_client, peer_server

pytestmark = pytest.mark.interop

PEER = Path(__file__).resolve().with_name("twisted_peer.py")
UNAVAILABLE = "Traceback unavailable\n"
PB_ERROR = "twisted.spread.pb.Error"
TWISTED_NO_SUCH_METHOD = "twisted.spread.flavors.NoSuchMethod"


def qual(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# --------------------------------------------------------------------------------------------
# values
# --------------------------------------------------------------------------------------------


def jelly_values() -> list[Any]:
    """Every jelly type, with edge cases, as one list (sharing and cycles included)."""
    shared = [1, 2]
    shared_dict = {"k": shared}
    cyclic_list: list[Any] = []
    cyclic_list.append(cyclic_list)
    cyclic_dict: dict[str, Any] = {}
    cyclic_dict["self"] = cyclic_dict
    holder: list[Any] = []
    cyclic_tuple = (holder, "t")
    holder.append(cyclic_tuple)
    return [
        None,
        True,
        False,
        0,
        1,
        -1,
        2**31 - 1,
        2**31,
        -(2**31),
        -(2**31) - 1,
        2**63,
        2**100,
        -(2**100),
        2**448 - 1,  # the largest int banana can carry (64 base-128 digits)
        -(2**448 - 1),
        0.0,
        -0.0,
        1.5,
        -2.25e-300,
        float("inf"),
        float("-inf"),
        float("nan"),
        b"",
        b"bytes\x00\xff",
        b"x" * 200_000,  # several TCP reads
        "",
        "unicode \u2713 \u00e9 \U0001f600",
        "\u00e9" * 100_000,
        [],
        [1, [2, [3, []]]],
        (),
        (1, "two", (3.0, None)),
        {},
        {"a": 1, 2: "b", (1, 2): None, b"k": [], frozenset({1}): 1.5, None: True, 2.5: "f"},
        {"\u00fcnicode key": {"nested": [(), {"x": {1, 2}}, [b"a", "b"]]}},
        set(),
        {1, "2", (3, b"4")},
        frozenset(),
        frozenset({3, "x", (1,)}),
        datetime.datetime(2024, 1, 2, 3, 4, 5, 6),
        datetime.datetime(1, 1, 1),
        datetime.datetime(9999, 12, 31, 23, 59, 59, 999999),
        datetime.date(2024, 2, 29),
        datetime.time(1, 2, 3, 4),
        datetime.time(0, 0),
        datetime.timedelta(days=1, seconds=2, microseconds=3),
        datetime.timedelta(days=-1, seconds=5),
        datetime.timedelta(0),
        decimal.Decimal("1.25"),
        decimal.Decimal("-0.000001"),
        decimal.Decimal("12345678901234567890.123456789"),
        decimal.Decimal("1E+10"),
        decimal.Decimal("0.00"),
        [shared, shared],  # the same list twice
        [shared_dict, (shared_dict,), {"again": shared_dict}],
        cyclic_list,
        cyclic_dict,
        cyclic_tuple,
    ]


def peer_sample_values() -> list[Any]:
    """What ``remote_types`` of twisted_peer.py returns (its sample_values + a cyclic list)."""
    shared = [1, 2]
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    return [
        None,
        True,
        False,
        0,
        -1,
        2**31,
        -(2**31) - 1,
        2**100,
        -(2**100),
        1.5,
        float("inf"),
        b"bytes",
        "unicode \u2713",
        [1, [2]],
        (1, 2),
        {"a": 1, 2: "b"},
        {1, 2},
        frozenset({3}),
        datetime.datetime(2024, 1, 2, 3, 4, 5, 6),
        datetime.date(2024, 1, 2),
        datetime.time(1, 2, 3, 4),
        datetime.timedelta(days=1, seconds=2, microseconds=3),
        decimal.Decimal("1.25"),
        [shared, shared],
        cyclic,
    ]


PEER_SAMPLE_COUNT = len(peer_sample_values()) - 1  # the client's `basic` scenario skips the cycle
PAGED_SIZE = (1 << 20) + 3  # what twisted_peer.py's `paging` scenario asks for


def paged_bytes(size: int) -> bytes:
    """The `size` bytes paged in the paging tests (twisted_peer.py's paged_bytes)."""
    return (bytes(range(256)) * (size // 256 + 1))[:size]


# --------------------------------------------------------------------------------------------
# subprocess helpers
# --------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def twisted_server() -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """A stock Twisted PB server in a subprocess: yields ``(process, port)``."""
    async with peer_server(PEER) as (proc, port):
        yield proc, port


@contextlib.asynccontextmanager
async def twisted_root() -> AsyncIterator[tuple[asyncio.subprocess.Process, pbfast.RemoteReference]]:
    """A pbfast connection to a fresh stock Twisted server: yields ``(process, root)``."""
    async with twisted_server() as (proc, port):
        async with pbfast.connect(f"tcp:host={HOST}:port={port}") as root:
            yield proc, root


async def twisted_client(port: int, scenario: str) -> dict[str, Any]:
    """Run one client scenario of twisted_peer.py against 127.0.0.1:`port`; its RESULT."""
    return await peer_client(PEER, port, scenario)


async def settle(root: pbfast.RemoteReference) -> None:
    """Let our dropped proxies' decrefs go out, then make Twisted collect its garbage: when this
    returns, both sides' decrefs have been read by the other side."""
    gc.collect()
    await asyncio.sleep(0.05)  # the decrefs are written on the next loop iteration
    await root.callRemote("gc")
    # Twisted's decrefs (from its own proxies dying in gc.collect) were written before the
    # answer to `gc`, so they have been read by now.


# --------------------------------------------------------------------------------------------
# pbfast objects handed to Twisted
# --------------------------------------------------------------------------------------------


class OurError(pbfast.Error):
    """An expected error raised by our objects."""


class Local(pbfast.Referenceable):
    """An object of ours that Twisted gets a reference to and calls back."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def remote_hello(self, name: str) -> str:
        self.calls.append(("hello", name))
        return f"hello {name}"

    def remote_add(self, a: Any, b: Any = 0) -> Any:
        self.calls.append(("add", a, b))
        return a + b

    async def remote_slow_hello(self, name: str) -> str:
        await asyncio.sleep(0.01)
        return f"slow hello {name}"

    def remote_echo(self, value: Any) -> Any:
        return value

    def remote_boom(self) -> None:
        raise ValueError("ours")

    def remote_expected(self) -> None:
        raise OurError("expected")


# --------------------------------------------------------------------------------------------
# pbfast client -> stock Twisted server
# --------------------------------------------------------------------------------------------


async def one_item() -> AsyncIterator[int]:
    yield 1


def test_values_round_trip_through_twisted(run):
    """Every jelly type as arguments (positional and keyword) and as results."""

    async def main():
        async with twisted_root() as (_, root):
            assert await root.callRemote("version")  # negotiation and the version exchange worked
            # A stock server offered no pbfast dialect: plain PB, and no control channel
            # (nothing is sent).
            assert root.broker.peer_is_pbfast is False and root.broker.peer_extensions == frozenset()
            with pytest.raises(pbfast.Error, match="not a pbfast peer"):
                await root.broker.call_control("echo", 1)
            with pytest.raises(pbfast.Error, match="not a pbfast peer"):
                root.broker.call_control_only("echo", 1)
            # ... nor streams, either way (refused before anything is sent)
            with pytest.raises(pbfast.Error, match="is not pbfast"):
                root.callRemoteStream("echo", 1)
            with pytest.raises(pbfast.Error, match="is not pbfast"):
                await root.callRemote("echo", pbfast.stream(one_item()))
            assert root.broker.statistics()["pending"] == 0
            values = jelly_values()

            # The whole list in one call: sharing across elements and cycles kept.
            assert_deep_equal(await root.callRemote("echo", values), values)

            # Each value on its own, all calls in flight at once.
            results = await asyncio.gather(*(root.callRemote("echo", v) for v in values))
            for sent, received in zip(values, results, strict=True):
                assert_deep_equal(received, sent)

            # As positional and keyword arguments.
            kwargs = {f"k{i}": v for i, v in enumerate(values)}
            args, kw = await root.callRemote("echo_args", *values, **kwargs)
            assert_deep_equal(args, values)
            assert_deep_equal(kw, kwargs)
            assert await root.callRemote("echo_args", 1, "two", x=3) == [[1, "two"], {"x": 3}]
            assert await root.callRemote("echo_args") == [[], {}]
            assert await root.callRemote("echo_args", **{"caf\u00e9": b"\xff"}) == [
                [],
                {"caf\u00e9": b"\xff"},
            ]

            # Values built by Twisted itself.
            assert_deep_equal(await root.callRemote("types"), peer_sample_values())

            # Objects jelly cannot express go out as Unpersistable, as from Twisted.
            unpersistable = await root.callRemote("echo", object())
            assert type(unpersistable) is pbfast.Unpersistable

            # Values banana cannot carry are refused before anything is sent; the
            # connection stays usable.
            with pytest.raises(pbfast.BananaError):
                await root.callRemote("echo", 2**448)
            with pytest.raises(pbfast.BananaError):
                await root.callRemote("echo", b"x" * (640 * 1024 + 1))
            assert await root.callRemote("echo", "still fine") == "still fine"
            assert root.broker.statistics() == EMPTY_STATISTICS

    run(main())


def test_errors_from_twisted(run):
    async def main():
        async with twisted_root() as (_, root):
            with pytest.raises(pbfast.RemoteError) as info:
                await root.callRemote("fail_value", "boom")
            error = info.value
            assert error.remoteType == "builtins.ValueError"
            assert error.remoteValue == "boom"
            assert error.remoteTraceback == UNAVAILABLE
            assert error.parents == (
                "builtins.ValueError",
                "builtins.Exception",
                "builtins.BaseException",
                "builtins.object",
            )
            assert error.check(KeyError, ValueError) is ValueError
            assert error.check(Exception) is Exception
            assert error.check("builtins.ValueError") == "builtins.ValueError"
            assert error.check(KeyError, PB_ERROR, pbfast.Error) is None
            assert str(error) == "builtins.ValueError: boom"

            with pytest.raises(pbfast.RemoteError) as info:
                await root.callRemote("fail_pb", "expected")
            error = info.value
            assert error.remoteType == "__main__.MyError"  # the peer runs as a script
            assert error.remoteValue == "expected"
            assert error.remoteTraceback == UNAVAILABLE
            assert error.parents[:3] == ("__main__.MyError", PB_ERROR, "builtins.Exception")
            assert error.check(PB_ERROR) == PB_ERROR
            # pbfast.Error plays pb.Error's part: checking for it matches Twisted's.
            assert error.check(pbfast.Error) is pbfast.Error
            assert error.check(ValueError) is None

            with pytest.raises(pbfast.RemoteError) as info:
                await root.callRemote("fail_key")
            error = info.value
            assert error.remoteType == "builtins.KeyError"
            assert error.remoteValue == "'missing'"
            assert error.check(LookupError) is LookupError
            assert "builtins.Exception" in error.parents

            with pytest.raises(pbfast.RemoteError) as info:
                await root.callRemote("no_such_method", 1, k=2)
            error = info.value
            assert error.remoteType == TWISTED_NO_SUCH_METHOD
            assert error.remoteValue == "No such method: remote_no_such_method"
            assert error.check(AttributeError) is AttributeError
            assert error.check(pbfast.NoSuchMethod) is pbfast.NoSuchMethod
            assert error.check(pbfast.Error) is None

            # A wrong signature fails inside Twisted with a TypeError.
            with pytest.raises(pbfast.RemoteError) as info:
                await root.callRemote("echo")
            assert info.value.remoteType == "builtins.TypeError"

            # Errors on a non-root reference, and with several calls in flight.
            child = await root.callRemote("child")
            failures = await asyncio.gather(
                child.callRemote("nope"),
                root.callRemote("fail_value", "a"),
                root.callRemote("echo", "between"),
                root.callRemote("fail_value", "b"),
                return_exceptions=True,
            )
            assert [getattr(f, "remoteType", f) for f in failures] == [
                TWISTED_NO_SUCH_METHOD,
                "builtins.ValueError",
                "between",
                "builtins.ValueError",
            ]
            assert [failures[1].remoteValue, failures[3].remoteValue] == ["a", "b"]

            # Fire-and-forget calls get no answer at all, not even an error; the connection
            # stays in step (the next answer is the next call's).
            root.callRemoteOnly("fail_value", "unseen")
            root.callRemoteOnly("echo", "unseen")
            assert await root.callRemote("echo", "synced") == "synced"
            assert root.broker.statistics()["pending"] == 0

    run(main())


def test_references_with_twisted(run):
    """Twisted's objects by reference, ours by reference, identity kept on the way back, and
    Twisted calling our objects."""

    async def main():
        async with twisted_root() as (_, root):
            broker = root.broker

            # Twisted's objects: called through, keyword arguments, one proxy per object.
            child = await root.callRemote("child", start=10)
            assert isinstance(child, pbfast.RemoteReference)
            assert [await child.callRemote("inc"), await child.callRemote("inc")] == [11, 12]
            assert await child.callRemote("value") == 12
            same = await root.callRemote("same_child")
            assert await root.callRemote("same_child") is same
            assert await root.callRemote("is_same_child", same) is True
            assert await root.callRemote("is_same_child", child) is False
            # Sent back to Twisted, ours arrive as its original objects, and come back as the
            # same proxies.
            assert await root.callRemote("identity", child) is child
            back = await root.callRemote("echo", [child, same, {"c": child}, (same,)])
            assert back[0] is child and back[1] is same and back[2]["c"] is child and back[3][0] is same
            del back
            assert broker.statistics()["proxies"] == 2

            # Our objects: Twisted calls them back, with keyword arguments, async methods too.
            local = Local()
            assert await root.callRemote("call_back", local, "hello", "x") == "hello x"
            assert await root.callRemote("call_back", local, "add", 2, b=3) == 5
            assert await root.callRemote("call_back", local, "slow_hello", "y") == "slow hello y"
            assert await root.callRemote("call_back", local, "echo", jelly_values()[-5]) == [[1, 2], [1, 2]]
            assert local.calls == [("hello", "x"), ("add", 2, 3)]

            # Our object sent to Twisted and straight back is our object again. Stock Twisted
            # decrefs the argument before it sends the answer naming it; pbfast keeps objects
            # sent in a call's arguments until that call's answer is read.
            assert await root.callRemote("identity", local) is local
            results = await asyncio.gather(*(root.callRemote("identity", local) for _ in range(20)))
            assert all(r is local for r in results)
            pair = await root.callRemote("identity", [local, (local, Local())])
            assert pair[0] is local and pair[1][0] is local and isinstance(pair[1][1], Local)
            del results, pair

            # Failures of our methods, as Twisted sees them.
            seen = await root.callRemote("call_back_fail", local, "boom")
            assert seen["type"] == "builtins.ValueError"
            assert seen["message"] == "ours"
            assert "builtins.Exception" in seen["parents"]
            assert PB_ERROR not in seen["parents"]
            seen = await root.callRemote("call_back_fail", local, "expected")
            assert seen["type"] == qual(OurError)
            assert seen["message"] == "expected"
            assert seen["parents"][0] == qual(OurError)
            assert PB_ERROR in seen["parents"]  # so Twisted's failure.check(pb.Error) matches
            seen = await root.callRemote("call_back_fail", local, "missing")
            assert "builtins.AttributeError" in seen["parents"]
            assert TWISTED_NO_SUCH_METHOD in seen["parents"]
            assert seen["message"] == "No such method: remote_missing"
            # A failure of our method, relayed by Twisted's call_back to us.
            with pytest.raises(pbfast.RemoteError) as info:
                await root.callRemote("call_back", local, "boom")
            assert info.value.check(ValueError) is ValueError
            assert info.value.remoteValue == "ours"

            # Twisted keeping our objects: our table counts them until Twisted lets go.
            other = Local()
            assert await root.callRemote("keep", local) == 1
            assert await root.callRemote("keep", local) == 2
            root.callRemoteOnly("keep", other)  # fire-and-forget, with a reference in it
            await settle(root)
            assert broker.statistics()["objects"] == 2
            assert await root.callRemote("call_kept", "hello", "k") == ["hello k"] * 3
            assert other.calls == [("hello", "k")]
            await root.callRemote("drop_and_gc")
            await settle(root)
            assert broker.statistics()["objects"] == 0

            # Nothing of ours is left in Twisted's tables either way.
            tables = await root.callRemote("tables")
            assert tables["remotelyCachedObjects"] == 0
            assert tables["luids"] == 2  # child and same, which we still hold
            del child, same
            await settle(root)
            assert await root.callRemote("tables") == {
                "luids": 0,
                "localObjects": 1,  # the root
                "remotelyCachedObjects": 0,
            }
            assert broker.statistics() == EMPTY_STATISTICS

    run(main())


def test_decref_empties_twisteds_table(run):
    """Twisted's luids table follows the proxies we hold: one decref per reference received."""

    async def main():
        async with twisted_root() as (_, root):
            children = [await root.callRemote("child", i) for i in range(5)]
            # The same object three times: one proxy, three references for Twisted.
            same = [await root.callRemote("same_child") for _ in range(3)]
            assert same[0] is same[1] is same[2]
            tables = await root.callRemote("tables")
            assert tables["luids"] == 6
            assert tables["localObjects"] == 7  # and the root
            assert root.broker.statistics()["proxies"] == 6

            del children[:2]
            await settle(root)
            assert (await root.callRemote("tables"))["luids"] == 4
            assert [await c.callRemote("value") for c in children] == [2, 3, 4]

            del same[1:]  # the proxy is still alive: nothing sent yet
            await settle(root)
            assert (await root.callRemote("tables"))["luids"] == 4
            del same, children
            await settle(root)
            assert await root.callRemote("tables") == {
                "luids": 0,
                "localObjects": 1,
                "remotelyCachedObjects": 0,
            }
            assert root.broker.statistics() == EMPTY_STATISTICS

            # The same object, re-sent after being released, is a fresh reference.
            again = await root.callRemote("same_child")
            assert await again.callRemote("inc") == 1
            assert (await root.callRemote("tables"))["luids"] == 1
            del again
            await settle(root)
            assert (await root.callRemote("tables"))["luids"] == 0

    run(main())


def test_twisted_server_goes_away(run):
    """The Twisted process dies with a call pending: the call fails with PBConnectionLost, later
    calls with DeadReferenceError, and the disconnect callbacks run."""

    async def main():
        async with twisted_server() as (proc, port):
            root = await pbfast.connect(f"tcp:host={HOST}:port={port}")
            broker = root.broker
            child = await root.callRemote("child")
            seen: list[Any] = []
            child.notifyOnDisconnect(lambda ref: seen.append(("child", ref)))
            root.notifyOnDisconnect(lambda ref: seen.append(("root", ref)))
            broker.notifyOnDisconnect(lambda: seen.append("broker"))

            slow = root.callRemote("slow", "x", 5)
            # Twisted reads calls in order: once this answer is back, `slow` is running there.
            assert await root.callRemote("echo", 1) == 1
            assert broker.statistics()["pending"] == 1
            assert not slow.done()

            proc.kill()
            await proc.wait()
            with pytest.raises(pbfast.PBConnectionLost):
                await asyncio.wait_for(slow, 10)
            await asyncio.wait_for(broker.closed, 10)
            assert broker.disconnected
            assert ("child", child) in seen and ("root", root) in seen and "broker" in seen
            assert len(seen) == 3

            with pytest.raises(pbfast.DeadReferenceError):
                await root.callRemote("echo", 1)
            with pytest.raises(pbfast.DeadReferenceError):
                await child.callRemote("inc")
            with pytest.raises(pbfast.DeadReferenceError):
                root.callRemoteOnly("echo", 1)
            assert broker.statistics()["pending"] == 0
            await broker.close()  # closing a dead connection is harmless

    run(main())


def test_cancelling_calls_to_twisted(run, caplog):
    """Twisted PB cannot cancel a call: cancelling one, or a deadline passing, only abandons it
    here (nothing is sent; Twisted's late answer is dropped without a word)."""
    caplog.set_level(logging.WARNING, logger="pbfast")

    async def main():
        async with twisted_root() as (_, root):
            await check_cancels_stay_local(root, "slow", "echo", args=("x", 0.3))

    run(main())
    assert [r for r in caplog.records if r.name == "pbfast"] == []


def test_pages_from_twisted(run):
    """Twisted's StringPager pages a value past its own 640 KiB limit to pbfast's getAllPages."""

    async def main():
        async with twisted_root() as (_, root):
            pages = await pbfast.util.getAllPages(root, "pages", PAGED_SIZE)
            assert len(pages) == -(-PAGED_SIZE // 8192)
            assert {type(page) for page in pages} == {bytes}
            assert b"".join(pages) == paged_bytes(PAGED_SIZE)
            # Another chunk size; an empty value is one empty page.
            pages = await pbfast.util.getAllPages(root, "pages", 100_000, 65536)
            assert [len(page) for page in pages] == [65536, 100_000 - 65536]
            assert await pbfast.util.getAllPages(root, "pages", 0) == [b""]
            # Twisted's pagers let go of our collectors once done.
            await settle(root)
            assert root.broker.statistics() == EMPTY_STATISTICS

    run(main())


# --------------------------------------------------------------------------------------------
# stock Twisted client -> pbfast server
# --------------------------------------------------------------------------------------------


class MyError(pbfast.Error):
    """An expected error, as twisted_peer.py's own MyError(pb.Error)."""


class Tracked:
    """Remembers every object made for a connection, weakly, to check nothing outlives it."""

    def __init__(self) -> None:
        self.alive: weakref.WeakSet[Any] = weakref.WeakSet()
        self.brokers: list[Any] = []
        self.logged: list[str] = []  # class names of the exceptions pbfast logged


class Child(pbfast.Referenceable):
    def __init__(self, tracked: Tracked, start: int = 0) -> None:
        tracked.alive.add(self)
        self.count = start

    def remote_inc(self) -> int:
        self.count += 1
        return self.count

    def remote_value(self) -> int:
        return self.count


class ConnectionRoot(pbfast.Referenceable):
    """The root one Twisted client gets: the methods twisted_peer.py's scenarios call."""

    def __init__(self, tracked: Tracked, broker: Any) -> None:
        tracked.alive.add(self)
        self.tracked = tracked
        self.broker = broker
        self.same_child_instance = Child(tracked)

    def remote_echo(self, x: Any) -> Any:
        return x

    def remote_echo_args(self, *args: Any, **kwargs: Any) -> Any:
        return [list(args), kwargs]

    def remote_fail_value(self, msg: str) -> None:
        raise ValueError(msg)

    def remote_fail_pb(self, msg: str) -> None:
        raise MyError(msg)

    def remote_child(self, start: int = 0) -> Child:
        return Child(self.tracked, start)

    def remote_same_child(self) -> Child:
        return self.same_child_instance

    def remote_identity(self, x: Any) -> Any:
        return x

    def remote_is_same_child(self, ref: Any) -> bool:
        return ref is self.same_child_instance

    async def remote_call_back(
        self, ref: pbfast.RemoteReference, name: str, *args: Any, **kwargs: Any
    ) -> Any:
        self.tracked.alive.add(ref)
        return await ref.callRemote(name, *args, **kwargs)

    def remote_tables(self) -> dict[str, int]:
        return {"objects": self.broker.statistics()["objects"]}

    def remote_gc(self) -> None:
        gc.collect()

    async def remote_slow(self, x: Any, seconds: float) -> Any:
        await asyncio.sleep(seconds)
        return x

    def remote_pages(self, collector: pbfast.RemoteReference, size: int, chunk_size: int = 8192) -> None:
        pbfast.util.StringPager(collector, paged_bytes(size), chunk_size)


class PerConnectionRoot(pbfast.Root):
    def __init__(self) -> None:
        self.tracked = Tracked()

    def rootObject(self, broker: Any) -> ConnectionRoot:
        self.tracked.brokers.append(broker)
        return ConnectionRoot(self.tracked, broker)


@contextlib.asynccontextmanager
async def pbfast_server() -> AsyncIterator[tuple[pbfast.Server, Tracked]]:
    root = PerConnectionRoot()
    server = await pbfast.serve(root, f"tcp:port=0:interface={HOST}")
    try:
        yield server, root.tracked
    finally:
        server.close()
        await server.wait_closed()


def forget_tracebacks(tracked: Tracked, caplog: pytest.LogCaptureFixture) -> None:
    """Note which exceptions pbfast logged, then keep only the text of their tracebacks.

    A log record holds the exception it reports, whose traceback holds the frames (and ``self``)
    of the remote method that raised: the leak check must not count those.
    """
    formatter = logging.Formatter()
    for record in caplog.records:
        if record.exc_info:
            if record.name == "pbfast":
                tracked.logged.append(type(record.exc_info[1]).__name__)
            record.exc_text = record.exc_text or formatter.formatException(record.exc_info)
            record.exc_info = None


async def run_client(
    server: pbfast.Server, tracked: Tracked, caplog: pytest.LogCaptureFixture, scenario: str
) -> dict:
    """Run a Twisted client scenario, then check our side let go of everything."""
    result = await twisted_client(server.port, scenario)
    # The client has exited; its connection ends on our side soon after.
    async with asyncio.timeout(10):
        while server.brokers:
            await asyncio.sleep(0.01)
    assert len(tracked.brokers) == 1
    for broker in tracked.brokers:
        assert broker.disconnected
        assert broker.closed.done()
        # The stock client passed over the pbfast dialect in our offer: plain PB.
        assert broker.peer_is_pbfast is False
    forget_tracebacks(tracked, caplog)
    gc.collect()
    for broker in tracked.brokers:
        assert broker.statistics() == EMPTY_STATISTICS
    leftovers = list(tracked.alive)
    assert not leftovers, f"objects outlived the connection: {leftovers}"
    tracked.brokers.clear()
    return result


def test_twisted_client_basic(run, caplog):
    async def main():
        async with pbfast_server() as (server, tracked):
            report = await run_client(server, tracked, caplog, "basic")
        values = report["values"]
        assert len(values) == PEER_SAMPLE_COUNT
        for entry in values:
            assert entry["equal"] and entry["same_type"], entry
            assert entry["received"] == entry["sent"], entry
        assert report["all_equal"] is True
        assert report["shared_reference_preserved"] is True
        assert report["self_ref"] == {"is_list": True, "len": 1, "is_self": True}
        assert report["echo_args"] == [[1, "two"], {"x": 3}]

    run(main())


def test_twisted_client_errors(run, caplog):
    caplog.set_level(logging.INFO, logger="pbfast")

    async def main():
        async with pbfast_server() as (server, tracked):
            return await run_client(server, tracked, caplog, "errors"), tracked.logged

    report, logged = run(main())
    value = report["fail_value"]
    assert value["exception_class"] == "twisted.spread.pb.RemoteError"
    assert value["is_remote_error"] is True
    assert value["remote_type"] == "builtins.ValueError"
    assert value["exception_args"] == {"tuple": ["boom"]}
    assert value["is_copied_failure"] is True
    assert value["type"] == "builtins.ValueError"
    assert value["message"] == "boom"
    assert value["parents"] == [
        "builtins.ValueError",
        "builtins.Exception",
        "builtins.BaseException",
        "builtins.object",
    ]
    assert value["check_value_error_str"] == "builtins.ValueError"
    assert value["check_value_error_class"] is True
    assert value["check_pb_error"] is False

    expected = report["fail_pb"]
    assert expected["exception_class"] == "twisted.spread.pb.RemoteError"
    assert expected["remote_type"] == qual(MyError)
    assert expected["exception_args"] == {"tuple": ["expected"]}
    assert expected["is_copied_failure"] is True
    assert expected["type"] == qual(MyError)
    assert expected["message"] == "expected"
    assert expected["parents"][0] == qual(MyError)
    assert "builtins.Exception" in expected["parents"]
    assert PB_ERROR in expected["parents"]
    assert expected["check_pb_error"] is True  # Twisted's failure.check(pb.Error) matches
    assert expected["check_value_error_class"] is False
    assert expected["check_value_error_str"] is None

    nosuch = report["nosuch"]
    assert nosuch["exception_class"] == "twisted.spread.pb.RemoteError"
    assert nosuch["is_copied_failure"] is True
    assert nosuch["message"] == "No such method: remote_nosuch"
    assert nosuch["type"].endswith("NoSuchMethod")
    assert "builtins.AttributeError" in nosuch["parents"]
    assert TWISTED_NO_SUCH_METHOD in nosuch["parents"]  # failure.check(flavors.NoSuchMethod)
    assert nosuch["check_pb_error"] is False
    assert nosuch["check_value_error_class"] is False

    # pbfast's control channel is not there for a stock peer: naming it gets the usual answer
    # for an object it holds no reference to.
    control = report["pbfast_object"]
    assert control["message"] == "Invalid Object ID"

    # Unexpected errors are logged with their traceback, a missing method in one line, and
    # pbfast.Error subclasses not at all (the scenario makes each failing call twice).
    assert sorted(logged) == ["ValueError"] * 2


def test_twisted_client_references(run, caplog):
    async def main():
        async with pbfast_server() as (server, tracked):
            return await run_client(server, tracked, caplog, "references")

    report = run(main())
    assert report["inc"] == [1, 2]
    assert report["value"] == 2
    # Stock Twisted makes a new proxy per reference received; what matters is that the object
    # sent back to us is our own.
    assert report["same_child_proxy_identical"] is False
    assert report["is_same_child"] is True
    assert report["call_back"] == "hello pbfast"
    assert report["call_back_add"] == 5
    # Twisted's object sent to us and back is its own object again (our answer names it before
    # we decref it).
    assert report["identity_is_same"] is True
    assert report["identity_result"]["repr"].startswith("<__main__.Local object")
    # Twisted held two of our objects (its proxies `c` and `same`) ...
    assert report["tables_before"] == {"objects": 2}
    # ... and our table emptied once its client dropped them.
    assert report["tables_after"] == {"objects": 0}
    # Twisted's own table emptied once we dropped our proxies for its Local objects.
    assert report["client_tables_after"] == {"luids": 0, "localObjects": 0, "remotelyCachedObjects": 0}


def test_twisted_client_slow_parallel(run, caplog):
    async def main():
        async with pbfast_server() as (server, tracked):
            return await run_client(server, tracked, caplog, "slow_parallel")

    report = run(main())
    assert report["all_ok"] is True
    assert report["results"] == list(range(50))
    assert report["in_order"] is True
    # Answers sent in the reverse order of the calls still reach the right callers.
    assert report["slow_all_ok"] is True
    assert report["slow_results"] == list(range(8))
    assert report["slow_in_order"] is True
    assert report["slow_completion_order"] == list(reversed(range(8)))


def test_twisted_client_gets_pages(run, caplog):
    """pbfast's StringPager pages a value past 640 KiB to Twisted's getAllPages."""

    async def main():
        async with pbfast_server() as (server, tracked):
            return await run_client(server, tracked, caplog, "paging")

    report = run(main())
    assert report == {
        "pages": -(-PAGED_SIZE // 8192),
        "page_types": ["bytes"],
        "page_sizes": [PAGED_SIZE % 8192, 8192],
        "size": PAGED_SIZE,
        "sha256": hashlib.sha256(paged_bytes(PAGED_SIZE)).hexdigest(),
        "equal": True,
    }


def test_twisted_client_bad_version(run, caplog):
    caplog.set_level(logging.INFO, logger="pbfast")

    async def main():
        async with pbfast_server() as (server, tracked):
            return await run_client(server, tracked, caplog, "bad_version")

    report = run(main())
    assert report["sent_choice_and_version"] is True
    # Our dialect offer came first: Twisted's dialects, then pbfast's, which the stock client
    # passed over (it chose "pb").
    pbfast_offer = [b"pb", b"none", " ".join(["pbfast", *sorted(EXTENSIONS)]).encode()]
    assert bytes.fromhex(report["received_hex"]).startswith(encode(pbfast_offer, "none"))
    assert report["closed"] is True  # and we hung up on PB version 5
    assert any("ersion" in r.getMessage() for r in caplog.records if r.name == "pbfast")
