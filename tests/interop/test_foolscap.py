"""pbfast Tubs against stock foolscap 24.9 (``foolscap_peer.py`` in a subprocess), both ways.

* A stock foolscap client runs each scenario of ``foolscap_peer.py`` against a pbfast Tub
  serving `PbfastRoot` (the same method contract as the peer's own root), judged by the same
  ``foolscap_expect`` checks as the peer's self-test.
* A pbfast Tub calls a stock foolscap Tub's FURL: values, errors, references with identity and
  decref, copies, a gift across three Tubs, keepalives, and refusals of wrong TubIDs.
"""

from __future__ import annotations

import asyncio
import decimal
import gc
import logging
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

import pbfast
import pytest
from foolscap_expect import (
    POINT_TYPE,
    check_bad_tubid,
    check_basic,
    check_copyables,
    check_errors,
    check_gift,
    check_keepalive,
    check_liar,
    check_parallel,
    check_references,
)
from pbfast.furl import FURL
from pbfast.schema import MaxLength
from peers import check_cancels_stay_local, peer_result, peer_tub

pytestmark = pytest.mark.interop

PEER = Path(__file__).resolve().with_name("foolscap_peer.py")
LISTEN = "tcp:0:interface=127.0.0.1"


class PeerError(Exception):
    __module__ = "interop"


class Point(pbfast.Copyable):
    typeToCopy = POINT_TYPE

    def __init__(self, **state):
        self.__dict__.update(state)


class RemotePoint(pbfast.RemoteCopy):
    copytype = POINT_TYPE


class Unregistered(pbfast.Copyable):
    typeToCopy = "example.pbfast/Unknown"


SHELF_INTERFACE = "RIShelf.interop.pbfast.example"


class RIShelf(pbfast.RemoteInterface):
    """foolscap_peer's ``RIShelf``, declared with type hints."""

    __remote_name__ = SHELF_INTERFACE

    def put(self, key: Annotated[bytes, MaxLength(8)], value: int = 0) -> bool: ...


class Shelf(pbfast.Referenceable):
    remote_interface = RIShelf

    def __init__(self):
        self.calls = 0

    def remote_put(self, key, value=0):
        self.calls += 1
        return True

    def remote_calls(self):  # not in the interface: refused
        return self.calls


class Child(pbfast.Referenceable):
    def __init__(self, name):
        self.name = name

    def remote_name(self):
        return self.name

    def remote_echo(self, x):
        return x


class PbfastRoot(pbfast.Referenceable):
    """The contract of ``foolscap_peer.PeerRoot``, served by a pbfast Tub."""

    def __init__(self, tub):
        self.tub = tub
        self.kept = []

    def remote_echo(self, x):
        return x

    def remote_add(self, a, b):
        return a + b

    def remote_hello(self, name):
        return f"hello {name}"

    async def remote_fail(self, kind, message="boom"):
        if kind == "value":
            raise ValueError(message)
        if kind == "custom":
            raise PeerError(message)
        if kind == "violation":
            raise pbfast.Violation(message)
        if kind == "key":
            raise KeyError(message)
        if kind == "later":
            await asyncio.sleep(0.01)
            raise ValueError(message)
        raise ValueError(f"unknown failure kind {kind!r}")

    def remote_child(self, name):
        return Child(name)

    def remote_shelf(self):
        self.shelf = Shelf()
        return self.shelf

    def remote_shelf_calls(self):
        return self.shelf.calls

    def remote_same(self, ref):
        return ref

    def remote_identical(self, a, b):
        return a is b

    def remote_keep(self, ref):
        self.kept.append(ref)
        return len(self.kept)

    def remote_release(self):
        count = len(self.kept)
        self.kept.clear()
        return count

    def remote_call_back(self, ref, method, *args, **kwargs):
        return ref.callRemote(method, *args, **kwargs)

    async def remote_take_gift(self, ref):
        return {"hello": await ref.callRemote("hello", "gift"), "tubid": ref.getRemoteTubID()}

    def remote_furl_of_new_object(self, name):
        return self.tub.registerReference(Child(name))

    def remote_make_copy(self, x, y):
        return Point(x=x, y=y)

    def remote_echo_copy(self, p):
        if not isinstance(p, RemotePoint):
            raise TypeError(f"expected a {POINT_TYPE}, got {type(p).__qualname__}")
        return Point(**vars(p))

    async def remote_sleep(self, seconds, value=None):
        await asyncio.sleep(seconds)
        return value

    async def remote_collect(self):
        await settle(self.tub)

    def remote_table_sizes(self):
        stats = self.tub.statistics()
        return {
            "exported": stats["objects"],
            "imported": stats["proxies"],
            "gifts": stats["gifts"],
            "brokers": stats["connections"],
            "registered": stats["registered"],
        }


async def settle(tub):
    """Collect garbage until every decref this Tub sent has been answered."""
    for _ in range(250):
        gc.collect()
        await asyncio.sleep(0.02)
        if tub.statistics()["pending"] == 0:
            return


async def pbfast_server(**options):
    tub = pbfast.Tub(**options)
    listener = await tub.listenOn(LISTEN)
    tub.setLocation(f"tcp:127.0.0.1:{listener.port}")
    furl = tub.registerReference(PbfastRoot(tub), "root")
    return tub, furl


async def scenario(furl: str, name: str, *args: str) -> dict:
    return await peer_result(PEER, "client", furl, name, *args)


# ------------------------------------------------------------------ stock foolscap calls pbfast


@pytest.mark.parametrize(
    "name,check",
    [
        ("basic", check_basic),
        ("references", check_references),
        ("parallel", check_parallel),
        ("bad_tubid", check_bad_tubid),
    ],
)
def test_foolscap_client_scenarios(run, name, check):
    async def main():
        tub, furl = await pbfast_server()
        async with tub:
            check(await scenario(furl, name))

    run(main())


def test_foolscap_client_errors(run):
    async def main():
        tub, furl = await pbfast_server()
        async with tub:
            loose = check_errors(await scenario(furl, "errors"), traceback="unavailable")
        assert loose["violation"]["value"] == "not allowed"
        assert (
            loose["missing_method"]["value"] == "'PbfastRoot' object has no attribute 'remote_no_such_method'"
        )

    run(main())


def test_foolscap_client_and_pbfast_schemas(run):
    """A stock client calls an object declaring a RemoteInterface on a pbfast Tub: the reference
    names the interface as foolscap does (so the stock client checks its calls against its own
    copy), and a call sent past that check is refused by pbfast with foolscap's Violation before
    the method runs, one holding a string past the interface's limits (and the connection's) as
    it arrives; the connection goes on."""

    async def main():
        tub, furl = await pbfast_server()
        async with tub:
            result = await scenario(furl, "schema")
            root = tub._lookup("root")
            assert root.shelf.calls == 1
        assert result["interface"] == SHELF_INTERFACE
        assert result["good"] == {"failed": False, "result": {"type": "bool", "value": True}}
        local = result["local"]
        assert local["failed"] and not local["copied"] and local["type"] == "foolscap.tokens.Violation"
        remote = result["remote"]
        assert remote["copied"] and remote["type"] == "foolscap.tokens.Violation", remote
        assert "too long: 9 bytes, at most 8 allowed" in remote["value"], remote
        oversize = result["oversize"]
        assert oversize["copied"] and oversize["type"] == "foolscap.tokens.Violation", oversize
        assert "a string of 17825792 bytes" in oversize["value"], oversize
        assert "refused as it arrived: the interface allows at most 8" in oversize["value"], oversize
        assert result["after"]["result"]["value"] == "still fine"

    run(main())


def test_foolscap_client_copyables(run):
    async def main():
        tub, furl = await pbfast_server()
        async with tub:
            unknown = check_copyables(await scenario(furl, "copyables"))
        assert "unknown copyable type 'example.pbfast/Unknown'" in unknown["value"]

    run(main())


def test_foolscap_client_keepalive(run):
    async def main():
        tub, furl = await pbfast_server(keepaliveTimeout=1, disconnectTimeout=2)
        async with tub:
            check_keepalive(await scenario(furl, "keepalive"))

    run(main())


@pytest.mark.parametrize("third", ["pbfast", "foolscap"])
def test_foolscap_client_gives_a_gift(run, third):
    """A stock client passes the pbfast root a reference into a third Tub."""

    async def main():
        tub, furl = await pbfast_server()
        async with tub:
            if third == "pbfast":
                other, third_furl = await pbfast_server()
                async with other:
                    check_gift(await scenario(furl, "gift", "--third", third_furl))
            else:
                async with peer_tub(PEER) as (_, third_furl):
                    check_gift(await scenario(furl, "gift", "--third", third_furl))

    run(main())


def test_lying_client_is_refused(run):
    async def main():
        tub, furl = await pbfast_server()
        async with tub:
            result = await peer_result(PEER, "liar", furl)
            check_liar(result, tub.tubID)
            assert result["error"].startswith("TubID mismatch")
            no_cert = await peer_result(PEER, "liar", furl, "--no-cert")
            assert no_cert["error"] == "you must use a certificate to claim a TubID", no_cert
            assert no_cert["closed"] is True
            # Other clients are unaffected.
            check_parallel(await scenario(furl, "parallel"))

    run(main())


# ------------------------------------------------------------------ pbfast calls stock foolscap

VALUES = [
    None,
    True,
    0,
    -5,
    2**31,
    -(2**31) - 1,
    2**64,
    -(2**70),
    1.5,
    b"bytes\x00",
    b"list",
    "unicod\u00e9",
    [1, [2]],
    (1, b"x", "y"),
    {"a": 1, "k": [2]},
    {b"k": b"v"},
    {1, 2},
    frozenset({b"x"}),
    decimal.Decimal("1.25"),
]


async def one_item() -> AsyncIterator[int]:
    yield 1


def test_pbfast_calls_foolscap(run):
    async def main():
        async with peer_tub(PEER) as (_, furl), pbfast.Tub() as tub:
            root = await tub.getReference(furl)
            assert root.getRemoteTubID() == FURL.parse(furl).tubID
            # foolscap's reference accessors, on a stock Tub's object
            parsed = FURL.parse(furl)
            assert root.getLocationHints() == list(parsed.locationHints)
            peer = root.getPeer()
            assert (peer.type, peer.host) == ("TCP", "127.0.0.1")
            assert f"tcp:127.0.0.1:{peer.port}" in parsed.locationHints
            assert root.isConnected() and root.remote_interface_name is None
            # A stock Tub's hello announces no pbfast extensions: plain foolscap.
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
            received = root.getDataLastReceivedAt()
            assert received is not None and abs(received - time.time()) < 60
            for value in VALUES:
                result = await root.callRemote("echo", value)
                assert result == value and type(result) is type(value), value
            assert math.isnan(await root.callRemote("echo", float("nan")))
            shared = [1]
            back = await root.callRemote("echo", [shared, shared])
            assert back[0] is back[1]
            assert await root.callRemote("add", a=2, b=3) == 5
            results = await asyncio.gather(*(root.callRemote("sleep", 0.01 * (i % 3), i) for i in range(30)))
            assert results == list(range(30))

    run(main())


def test_cancelling_calls_to_foolscap(run, caplog):
    """foolscap cannot cancel a call: cancelling one, or a deadline passing, only abandons it
    here (nothing is sent; foolscap's late answer is dropped without a word)."""
    caplog.set_level(logging.WARNING, logger="pbfast")

    async def main():
        async with peer_tub(PEER) as (_, furl), pbfast.Tub() as tub:
            root = await tub.getReference(furl)
            await check_cancels_stay_local(root, "sleep", "echo", args=(0.3,))

    run(main())
    assert [r for r in caplog.records if r.name.startswith("pbfast")] == []


def test_pbfast_gets_foolscap_errors(run):
    async def main():
        async with peer_tub(PEER) as (_, furl), pbfast.Tub() as tub:
            root = await tub.getReference(furl)
            with pytest.raises(pbfast.RemoteError) as info:
                await root.callRemote("fail", "value", "bad")
            assert info.value.remoteType == "builtins.ValueError" and info.value.remoteValue == "bad"
            assert info.value.check(ValueError)
            assert "Traceback" in info.value.remoteTraceback  # foolscap sends them by default
            with pytest.raises(pbfast.RemoteError) as info:
                await root.callRemote("fail", "violation", "nope")
            assert info.value.check(pbfast.Violation)
            with pytest.raises(pbfast.RemoteError) as info:
                await root.callRemote("no_such_method")
            assert info.value.check(AttributeError)
            with pytest.raises(pbfast.RemoteError) as info:
                await root.callRemote("echo", Unregistered())
            assert info.value.check(pbfast.Violation)
            assert "example.pbfast/Unknown" in info.value.remoteValue
            assert await root.callRemote("echo", 1) == 1

    run(main())


def test_pbfast_checks_calls_to_a_stock_interface(run):
    """A stock Tub names the interface of the object it sends; pbfast, which defines an
    interface of that name too, checks each call before sending it (a violation never reaches
    the stock Tub) and the stock Tub checks what reaches it."""

    async def main():
        async with peer_tub(PEER) as (_proc, furl), pbfast.Tub() as tub:
            root = await tub.getReference(furl)
            shelf = await root.callRemote("shelf")
            assert shelf.remote_interface_name == SHELF_INTERFACE
            assert await shelf.callRemote("put", b"key", value=1) is True
            with pytest.raises(pbfast.Violation, match="too long: 9 bytes, at most 8 allowed"):
                await shelf.callRemote("put", b"123456789")
            with pytest.raises(pbfast.Violation, match="has no method 'calls'"):
                await shelf.callRemote("calls")
            assert await root.callRemote("shelf_calls") == 1  # nothing refused was sent
            # Sent without pbfast's check, the stock Tub refuses it itself.
            with pytest.raises(pbfast.RemoteError) as info:
                await shelf.broker.call(shelf.luid, "put", (b"123456789",), {})
            assert info.value.check(pbfast.Violation)
            assert await root.callRemote("shelf_calls") == 1

    run(main())


def test_pbfast_references_with_foolscap(run):
    async def main():
        async with peer_tub(PEER) as (_, furl), pbfast.Tub() as tub:
            root = await tub.getReference(furl)
            child = await root.callRemote("child", "kid")
            assert await child.callRemote("name") == "kid"
            assert await root.callRemote("same", child) is child
            mine = Child("mine")
            assert await root.callRemote("same", mine) is mine
            assert await root.callRemote("identical", mine, mine) is True
            assert await root.callRemote("call_back", mine, "echo", [1]) == [1]
            assert await root.callRemote("keep", mine) == 1
            fresh = await tub.getReference(await root.callRemote("furl_of_new_object", "fresh"))
            assert await fresh.callRemote("name") == "fresh"
            before = await root.callRemote("table_sizes")
            assert (before["exported"], before["imported"]) == (3, 1), before
            assert await root.callRemote("release") == 1
            del child, fresh
            await root.callRemote("collect")
            await settle(tub)
            after = await root.callRemote("table_sizes")
            assert (after["exported"], after["imported"]) == (1, 0), after
            assert tub.statistics()["objects"] == 0

    run(main())


def test_pbfast_copies_with_foolscap(run):
    async def main():
        async with peer_tub(PEER) as (_, furl), pbfast.Tub() as tub:
            root = await tub.getReference(furl)
            point = await root.callRemote("make_copy", 3, -4)
            assert isinstance(point, RemotePoint) and (point.x, point.y) == (3, -4)
            back = await root.callRemote("echo_copy", Point(x=5, y="six"))
            assert (back.x, back.y) == (5, "six")

    run(main())


def test_gift_from_pbfast_to_foolscap(run):
    """pbfast (B) passes stock foolscap (A) a reference into a third Tub C (foolscap or pbfast);
    A connects to C itself, and B's gift table empties once A has it."""

    async def main():
        async with peer_tub(PEER) as (_, furl_a), peer_tub(PEER) as (_, furl_c), pbfast.Tub() as b:
            b.setLocation("tcp:127.0.0.1:1")
            at_a = await b.getReference(furl_a)
            at_c = await b.getReference(furl_c)
            result = await at_a.callRemote("take_gift", at_c)
            assert result == {"hello": "hello gift", "tubid": FURL.parse(furl_c).tubID}
            for _ in range(100):
                if b.statistics()["gifts"] == 0:
                    break
                await asyncio.sleep(0.01)
            assert b.statistics()["gifts"] == 0
            server, furl_s = await pbfast_server()
            async with server:
                ours = await b.getReference(furl_s)
                result = await at_a.callRemote("take_gift", ours)
                assert result == {"hello": "hello gift", "tubid": server.tubID}

    run(main())


def test_pbfast_keepalive_with_foolscap(run):
    async def main():
        async with (
            peer_tub(PEER, "--disconnect", "1") as (_, furl),
            pbfast.Tub(keepaliveTimeout=0.3) as tub,
        ):
            root = await tub.getReference(furl)
            await asyncio.sleep(2)
            assert await root.callRemote("echo", "awake") == "awake"

    run(main())


def test_wrong_tubid_in_furl_is_refused(run):
    async def main():
        async with peer_tub(PEER) as (_, furl), pbfast.Tub() as tub:
            parsed = FURL.parse(furl)
            wrong = str(FURL(pbfast.Tub().tubID, parsed.locationHints, parsed.name))
            with pytest.raises(pbfast.NegotiationError, match="unknown TubID"):
                await tub.getReference(wrong)
            assert await (await tub.getReference(furl)).callRemote("echo", 1) == 1

    run(main())


# ------------------------------------------------------------------ hanging up, both ways


def test_pbfast_notices_a_stock_tub_stopping(run):
    """The stock Tub's stopService sends TLS close_notify and waits for ours: pbfast answers at
    once, so its calls fail, its reference dies and its disconnect callbacks run, all within
    1 s; and the stock stopService completes."""

    async def main():
        loop = asyncio.get_running_loop()
        async with peer_tub(PEER) as (proc, furl), pbfast.Tub() as tub:
            root = await tub.getReference(furl)
            lost = loop.create_future()
            root.notifyOnDisconnect(lambda: lost.done() or lost.set_result(loop.time()))
            pending = root.callRemote("sleep", 30, "too late")
            assert await root.callRemote("echo", 1) == 1  # so the sleep call has arrived
            started = loop.time()
            proc.stdin.write(b"stop\n")
            await proc.stdin.drain()
            noticed = await asyncio.wait_for(lost, 5) - started
            with pytest.raises(pbfast.PBConnectionLost):
                await asyncio.wait_for(pending, 1)
            assert not root.isConnected()
            with pytest.raises(pbfast.DeadReferenceError):
                await root.callRemote("echo", 2)
            line = await asyncio.wait_for(proc.stdout.readline(), 5)
            assert line.startswith(b"STOPPED "), line
            stock_stop = float(line.split()[1])
            print(f"pbfast noticed the stock Tub stop after {noticed:.3f} s; that stop: {stock_stop:.3f} s")
            assert noticed < 1 and stock_stop < 1, (noticed, stock_stop)
            assert tub.statistics()["connections"] == 0

    run(main())


class CuedRoot(PbfastRoot):
    """`PbfastRoot` that tells the test when a client says ``hello("hangup")``."""

    def __init__(self, tub):
        super().__init__(tub)
        self.cued = asyncio.Event()

    def remote_hello(self, name):
        if name == "hangup":
            self.cued.set()
        return super().remote_hello(name)


def test_stock_tub_notices_pbfast_stopping(run):
    """A pbfast Tub stops with a stock client connected (and a call of its pending): the stock
    side sees the disconnect at once, its own stopService completes (it waits for the
    connection to close), and the stock process exits by itself."""

    async def main():
        loop = asyncio.get_running_loop()
        tub = pbfast.Tub()
        listener = await tub.listenOn(LISTEN)
        tub.setLocation(f"tcp:127.0.0.1:{listener.port}")
        root = CuedRoot(tub)
        furl = tub.registerReference(root, "root")
        client = asyncio.ensure_future(scenario(furl, "hangup"))
        try:
            await asyncio.wait_for(root.cued.wait(), 20)
            started = loop.time()
            await asyncio.wait_for(tub.stopService(grace=0), 5)
            stopped = loop.time() - started
            result = await asyncio.wait_for(client, 15)
            exited = loop.time() - started
        finally:
            client.cancel()
            await asyncio.gather(client, return_exceptions=True)
            await tub.stopService()
        print(
            f"pbfast stop {stopped:.3f} s; the stock Tub noticed after {result['noticed']} s, its stop "
            f"{result['stop']}; its process ended {exited:.3f} s after our stop began"
        )
        assert stopped < 1, stopped
        assert result["noticed"] is not None and result["noticed"] < 1, result
        assert result["pending"]["failed"] is True, result
        assert result["connected"] is False
        assert result["after"]["type"] == "foolscap.ipb.DeadReferenceError", result
        assert result["stop"]["completed"] is True and result["stop"]["seconds"] < 1, result

    run(main())
