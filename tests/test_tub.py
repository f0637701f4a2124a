"""Tubs talking to Tubs: pbfast on both ends, over TLS on 127.0.0.1 (or in memory for a Tub
calling itself): what only the Tub has (FURLs, gifts, negotiation, keepalives, reconnection,
Cacheables between Tubs). The broker behaviours it shares with PB run on both wires in
``tests/test_wires.py``. Stock foolscap on the other end is in ``tests/interop/test_foolscap.py``."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import socket
import struct
import time

import pbfast
import pytest
from connections import CountingSession
from pbfast.furl import FURL
from pbfast.tub import backoff

LISTEN = "tcp:0:interface=127.0.0.1"


class Point(pbfast.Copyable):
    typeToCopy = "example.pbfast/tub-test/Point"

    def __init__(self, x: int = 0, y: int = 0) -> None:
        self.x, self.y = x, y


class RemotePoint(pbfast.RemoteCopy):
    pass


pbfast.setUnjellyableForClass("example.pbfast/tub-test/Point", RemotePoint)


class Child(pbfast.Referenceable):
    def __init__(self, name: str) -> None:
        self.name = name

    def remote_name(self) -> str:
        return self.name


class Echo(pbfast.Referenceable):
    def __init__(self) -> None:
        self.received: list = []
        self.kept: list = []

    def remote_echo(self, value):
        return value

    def remote_add(self, a, b=0):
        return a + b

    async def remote_slow(self, value, delay=0.01):
        await asyncio.sleep(delay)
        return value

    def remote_fail(self, message):
        raise ValueError(message)

    def remote_fail_pb(self):
        raise pbfast.Error("expected")

    def remote_child(self, name):
        return Child(name)

    def remote_same(self, ref):
        return ref

    async def remote_call_back(self, ref, method, *args):
        return await ref.callRemote(method, *args)

    def remote_keep(self, value):
        self.kept.append(value)

    def remote_forget(self):
        self.kept.clear()

    def remote_point(self, x, y):
        return Point(x, y)

    def remote_take_point(self, p):
        return (type(p).__name__, p.x, p.y)

    def remote_note(self, value):
        self.received.append(value)

    async def remote_take_gift(self, ref):
        return await ref.callRemote("name")


@contextlib.asynccontextmanager
async def serving(obj=None, name=None, **options):
    """A listening Tub serving `obj`; yields ``(tub, furl)``."""
    async with pbfast.Tub(**options) as tub:
        listener = await tub.listenOn(LISTEN)
        tub.setLocation(f"tcp:127.0.0.1:{listener.port}")
        furl = tub.registerReference(obj if obj is not None else Echo(), name)
        yield tub, furl


async def settle(*tubs, key="objects", value=0):
    """Wait (briefly) until each Tub's `key` statistic is `value`; the statistics then."""
    for _ in range(200):
        gc.collect()
        await asyncio.sleep(0.005)
        if all(tub.statistics()[key] == value for tub in tubs):
            break
    return [tub.statistics() for tub in tubs]


def test_api_example(run, tmp_path):
    async def main():
        cert = tmp_path / "server.pem"
        async with pbfast.Tub(certFile=str(cert)) as server_tub:
            listener = await server_tub.listenOn(LISTEN)
            server_tub.setLocation(f"tcp:127.0.0.1:{listener.port}")
            furl = server_tub.registerReference(Echo(), "echo")
            assert furl == f"pb://{server_tub.tubID}@tcp:127.0.0.1:{listener.port}/echo"
            async with pbfast.Tub() as client_tub:
                ref = await client_tub.getReference(furl)
                assert await ref.callRemote("echo", 7) == 7
                assert ref.getRemoteTubID() == server_tub.tubID
                assert ref.getSturdyRef() == furl
        assert cert.stat().st_mode & 0o777 == 0o600
        assert pbfast.Tub(certFile=str(cert)).tubID == server_tub.tubID

    run(main())


def test_references_name_their_tub(run):
    """(Calls, references both ways and their identity run on both wires in test_wires.py.)"""

    async def main():
        echo = Echo()
        async with serving(echo) as (server, furl), pbfast.Tub() as client:
            ref = await client.getReference(furl)
            assert ref.getRemoteTubID() == server.tubID
            await ref.callRemote("keep", Child("mine"))
            assert isinstance(echo.kept[0], pbfast.TubReference)
            assert echo.kept[0].getRemoteTubID() == client.tubID

    run(main())


def test_decref_empties_the_exporting_tables(run):
    """The Tub's totals, down to the registered object itself, released with the last reference
    to it (each connection's tables emptying runs on both wires in test_wires.py)."""

    async def main():
        echo = Echo()
        async with serving(echo) as (server, furl), pbfast.Tub() as client:
            ref = await client.getReference(furl)
            children = [await ref.callRemote("child", str(i)) for i in range(5)]
            again = await ref.callRemote("child", "x")
            await ref.callRemote("keep", Child("held"))
            assert server.statistics()["objects"] == 7  # root and six children
            assert client.statistics()["objects"] == 1
            del children, again
            stats = await settle(server, value=1)
            assert stats[0]["objects"] == 1
            await ref.callRemote("forget")
            await settle(client)
            assert client.statistics()["objects"] == 0
            del ref
            await settle(server)
            assert server.statistics()["objects"] == 0
            assert client.statistics()["proxies"] == 0

    run(main())


def test_a_callable_comes_back_as_itself(run):
    """A function travels as a callable reference (a negative clid, as foolscap numbers them);
    the peer can call it, and sending it back names our function again."""

    async def main():
        heard = []

        def note(value):
            heard.append(value)
            return value * 2

        async with serving() as (_, furl), pbfast.Tub() as client:
            ref = await client.getReference(furl)
            assert await ref.callRemote("call_back", note, "__call__", 21) == 42
            assert await ref.callRemote("same", note) is note
            assert heard == [21]
            del ref
            await settle(client)

    run(main())


def test_copyables_by_type_name(run):
    async def main():
        async with serving() as (_, furl), pbfast.Tub() as client:
            ref = await client.getReference(furl)
            point = await ref.callRemote("point", 3, -4)
            assert isinstance(point, RemotePoint) and (point.x, point.y) == (3, -4)
            assert await ref.callRemote("take_point", Point(1, 2)) == ("RemotePoint", 1, 2)

    run(main())


def test_unregistered_copyable_is_a_violation(run):
    class Secret(pbfast.Copyable):
        typeToCopy = "example.pbfast/Unregistered"

    async def main():
        async with serving() as (_, furl), pbfast.Tub() as client:
            ref = await client.getReference(furl)
            with pytest.raises(pbfast.RemoteError) as info:
                await ref.callRemote("echo", Secret())
            assert info.value.check(pbfast.Violation)
            assert await ref.callRemote("echo", 5) == 5

    run(main())


def test_one_connection_per_remote_tub(run):
    async def main():
        async with serving() as (server, furl), pbfast.Tub() as client:
            refs = await asyncio.gather(*(client.getReference(furl) for _ in range(5)))
            assert len({id(r.broker) for r in refs}) == 1
            other = server.registerReference(Echo())
            assert (await client.getReference(other)).broker is refs[0].broker
            assert client.statistics()["connections"] == 1

    run(main())


def test_wrong_tubid_is_refused(run):
    async def main():
        async with serving() as (_, furl), pbfast.Tub() as client:
            parsed = FURL.parse(furl)
            other = pbfast.Tub().tubID
            wrong = str(FURL(other, parsed.locationHints, parsed.name))
            with pytest.raises(pbfast.NegotiationError, match="unknown TubID"):
                await client.getReference(wrong)
            assert await (await client.getReference(furl)).callRemote("echo", 1) == 1

    run(main())


def test_unknown_name_and_unregister(run):
    async def main():
        echo = Echo()
        async with serving(echo) as (server, furl), pbfast.Tub() as client:
            ref = await client.getReference(furl)
            server.unregisterReference(echo)
            assert await ref.callRemote("echo", 1) == 1  # live references keep working
            with pytest.raises(pbfast.RemoteError) as info:
                await client.getReference(furl)
            assert info.value.check(KeyError)
            assert FURL.parse(furl).name not in str(info.value)  # the secret is not echoed
            with pytest.raises(KeyError):
                server.unregisterReference(echo)

    run(main())


def test_name_lookup_handler(run):
    async def main():
        async with serving() as (server, furl), pbfast.Tub() as client:
            server.registerNameLookupHandler(lambda name: Child(name) if name.startswith("kid-") else None)
            base = FURL.parse(furl)
            ref = await client.getReference(str(FURL(base.tubID, base.locationHints, "kid-7")))
            assert await ref.callRemote("name") == "kid-7"
            with pytest.raises(pbfast.RemoteError):
                await client.getReference(str(FURL(base.tubID, base.locationHints, "other")))

    run(main())


def test_name_lookup_handler_can_be_removed(run):
    async def main():
        async with serving() as (server, furl), pbfast.Tub() as client:

            def lookup(name):
                return Child(name)

            server.registerNameLookupHandler(lookup)
            base = FURL.parse(furl)
            kid = str(FURL(base.tubID, base.locationHints, "kid-1"))
            assert await (await client.getReference(kid)).callRemote("name") == "kid-1"
            server.unregisterNameLookupHandler(lookup)
            with pytest.raises(pbfast.RemoteError):
                await client.getReference(str(FURL(base.tubID, base.locationHints, "kid-2")))
            with pytest.raises(ValueError):
                server.unregisterNameLookupHandler(lookup)

    run(main())


def test_tub_ids_and_listeners(run):
    """foolscap's accessors: the TubID (whole and short), the listeners, and a listener stopped
    (it leaves the list and refuses new connections; those it accepted stay up)."""

    async def main():
        async with serving() as (server, furl), pbfast.Tub() as client:
            assert server.getTubID() == server.tubID
            assert server.getShortTubID() == server.tubID[:4]
            (listener,) = server.getListeners()
            second = await server.listenOn(LISTEN)
            assert server.getListeners() == [listener, second]
            ref = await client.getReference(furl)
            await server.stopListeningOn(listener)
            assert server.getListeners() == [second]
            assert await ref.callRemote("echo", 1) == 1  # the accepted connection stays up
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", listener.port)
            with pytest.raises(ValueError):
                await server.stopListeningOn(listener)
            second.close()  # closed directly: the Tub leaves it out too
            assert server.getListeners() == []

    run(main())


def test_url_for_an_unregistered_reference(run):
    async def main():
        echo = Echo()
        async with serving() as (server, _furl), pbfast.Tub() as client:
            furl = server.getOrCreateURLForReference(echo)
            assert furl is not None and FURL.parse(furl).tubID == server.tubID
            assert server.getOrCreateURLForReference(echo) == furl
            ref = await client.getReference(furl)
            assert await ref.callRemote("echo", "hi") == "hi"
        # (held weakly: a FURL that would keep any object alive forever is a leak)
        assert pbfast.Tub().getOrCreateURLForReference(echo) is None  # no location, no FURL

    run(main())


def test_reference_accessors(run):
    """A Tub reference says where its Tub is, which hints its FURL has, and when its connection
    last received data (None when nothing watches for silence)."""

    async def main():
        async with serving() as (server, furl), pbfast.Tub() as client:
            (listener,) = server.getListeners()
            ref = await client.getReference(furl)
            assert ref.isConnected()
            peer = ref.getPeer()
            assert (peer.type, peer.host, peer.port) == ("TCP", "127.0.0.1", listener.port)
            assert str(peer) == f"127.0.0.1:{listener.port}"
            assert ref.getLocationHints() == [f"tcp:127.0.0.1:{listener.port}"]
            before = time.time()
            await ref.callRemote("echo", 1)
            received = ref.getDataLastReceivedAt()
            assert received is not None and before - 1 <= received <= time.time() + 1
            # A reference to one of the Tub's own objects goes through memory.
            own = await server.getReference(furl)
            assert own.getPeer().type == "memory"
        async with (
            serving(keepaliveTimeout=None) as (_server, furl),
            pbfast.Tub(keepaliveTimeout=None) as client,
        ):
            ref = await client.getReference(furl)
            assert ref.getDataLastReceivedAt() is None

    run(main())


def test_furl_file_keeps_the_furl(run, tmp_path):
    async def main():
        cert, furl_file = tmp_path / "tub.pem", tmp_path / "echo.furl"
        async with pbfast.Tub(certFile=str(cert)) as tub:
            tub.setLocation("tcp:127.0.0.1:1")
            first = tub.registerReference(Echo(), furlFile=furl_file)
        assert furl_file.read_text().strip() == first
        assert furl_file.stat().st_mode & 0o777 == 0o600
        async with pbfast.Tub(certFile=str(cert)) as tub:
            tub.setLocation("tcp:127.0.0.1:1")
            assert tub.registerReference(Echo(), furlFile=furl_file) == first

    run(main())


def test_foolscap_option_names(caplog):
    """foolscap's spellings work: ``accept-gifts`` is ``acceptGifts``; the options with nothing to
    act on are accepted and say why; an unknown name is still refused."""
    tub = pbfast.Tub(**{"accept-gifts": False})
    assert tub.acceptGifts is False
    tub.setOption("accept-gifts", True)
    assert tub.acceptGifts is True
    with caplog.at_level("INFO", logger="pbfast.tub"):
        for name, value in [
            ("expose-remote-exception-types", False),
            ("handle-old-duplicate-connections", 60),
            ("logport-furlfile", "logport.furl"),
            ("log-gatherer-furl", "pb://x@tcp:h:1/y"),
            ("log-gatherer-furlfile", "gatherer.furl"),
            ("bridge-twisted-logs", True),
        ]:
            tub.setOption(name, value)
            assert f"Tub option {name!r} has no effect" in caplog.text
    tub.setOption("keepaliveTimeout", 30)
    tub.setOption("disconnectTimeout", 90)
    assert tub.options.idle_timeout == 90
    with pytest.raises(TypeError, match="unknown Tub option 'accept_gifts'"):
        tub.setOption("accept_gifts", True)


def test_register_needs_a_location():
    tub = pbfast.Tub()
    with pytest.raises(RuntimeError, match="setLocation"):
        tub.registerReference(Echo())
    with pytest.raises(pbfast.BadFURLError):
        tub.setLocation("tcp:host:notaport")
    with pytest.raises(TypeError, match="unknown Tub option"):
        pbfast.Tub(noSuchOption=1)


def test_set_location_automatically(run):
    async def main():
        async with pbfast.Tub() as tub:
            with pytest.raises(RuntimeError):
                await tub.setLocationAutomatically()
            listener = await tub.listenOn("tcp:0")
            hints = await tub.setLocationAutomatically()
            assert hints[-1] == f"tcp:127.0.0.1:{listener.port}"
            furl = tub.registerReference(Echo())
            async with pbfast.Tub() as client:
                assert await (await client.getReference(furl)).callRemote("echo", 3) == 3

    run(main())


def test_gift_across_three_tubs(run):
    async def main():
        async with (
            serving(Echo()) as (a, furl_a),
            serving(Child("in C")) as (c, furl_c),
            pbfast.Tub() as b,
        ):
            b.setLocation("tcp:127.0.0.1:1")  # B exports nothing here, but has a location
            at_a = await b.getReference(furl_a)
            at_c = await b.getReference(furl_c)
            assert await at_a.callRemote("take_gift", at_c) == "in C"
            assert a.statistics()["connections"] == 2  # A connected to C itself
            stats = await settle(b, key="gifts")
            assert stats[0]["gifts"] == 0

    run(main())


class GiftTaker(pbfast.Referenceable):
    """Notes the order its calls run in."""

    def __init__(self, c_tub_id: str = "") -> None:
        self.c_tub_id = c_tub_id
        self.order: list = []

    def remote_take(self, ref):
        # Runs once the gift is fetched: `ref` is our own reference into C by then.
        self.order.append("gift")
        return isinstance(ref, pbfast.RemoteReference) and ref.getRemoteTubID() == self.c_tub_id

    def remote_note(self, n):
        self.order.append(n)
        return n


def test_calls_behind_a_gift_wait_for_it_in_order(run):
    """A call carrying a gift (a reference into a third Tub) runs once the gift is fetched, and
    the calls sent after it wait behind it and then run in order: all of them held back, and
    run by the decoder all the same."""

    async def main():
        taker = GiftTaker()
        async with (
            serving(taker) as (a, furl_a),
            serving(Child("in C")) as (c, furl_c),
            pbfast.Tub() as b,
        ):
            taker.c_tub_id = c.tubID
            b.setLocation("tcp:127.0.0.1:1")
            at_a = await b.getReference(furl_a)
            at_c = await b.getReference(furl_c)
            (server,) = a._connections
            decoder = server._session = CountingSession(server._session)
            calls = [at_a.callRemote("take", at_c)] + [at_a.callRemote("note", n) for n in range(5)]
            assert await asyncio.gather(*calls) == [True, 0, 1, 2, 3, 4]
            assert taker.order == ["gift", 0, 1, 2, 3, 4]
            assert decoder.ran == ["take"] + ["note"] * 5
            server._session = decoder.real

    run(main())


def test_keepalives_keep_an_idle_connection(run):
    async def main():
        async with (
            serving() as (_, furl),
            pbfast.Tub(keepaliveTimeout=0.05, disconnectTimeout=0.3) as client,
        ):
            ref = await client.getReference(furl)
            await asyncio.sleep(0.6)
            assert await ref.callRemote("echo", 1) == 1

    run(main())


def test_disconnect_timeout_drops_a_silent_peer(run):
    async def main():
        async with (
            serving(keepaliveTimeout=None) as (_, furl),
            pbfast.Tub(keepaliveTimeout=None, disconnectTimeout=0.1) as client,
        ):
            ref = await client.getReference(furl)
            lost = asyncio.get_running_loop().create_future()
            ref.notifyOnDisconnect(lost.set_result, True)
            assert await asyncio.wait_for(lost, 5)
            with pytest.raises(pbfast.DeadReferenceError):
                await ref.callRemote("echo", 1)

    run(main())


@pytest.mark.parametrize("stopping", ["server", "client"])
def test_a_stopping_peer_is_noticed_at_once(run, stopping):
    """Either Tub stops (close_notify, then TCP close) with calls pending both ways: the other
    side's calls fail with PBConnectionLost, its references go dead and its notifyOnDisconnect
    callbacks run at once; later calls raise DeadReferenceError. The stopping side's own pending
    calls fail the same way."""

    async def main():
        loop = asyncio.get_running_loop()
        server_root = Echo()
        async with serving(server_root) as (server, furl), pbfast.Tub() as client:
            at_server = await client.getReference(furl)
            await at_server.callRemote("keep", Echo())
            at_client = server_root.kept[0]
            assert isinstance(at_client, pbfast.TubReference)
            if stopping == "server":
                stopper, ref, back = server, at_server, at_client
            else:
                stopper, ref, back = client, at_client, at_server
            lost = loop.create_future()
            ref.notifyOnDisconnect(lambda: lost.done() or lost.set_result(loop.time()))
            pending = ref.callRemote("slow", 1, delay=30)
            # Runs on the side that stays (a lost connection does not cancel it): short.
            own = back.callRemote("slow", 2, delay=0.5)
            await asyncio.sleep(0.05)
            started = loop.time()
            await asyncio.wait_for(stopper.stopService(grace=0), 5)
            stopped = loop.time() - started
            noticed = await asyncio.wait_for(lost, 5) - started
            with pytest.raises(pbfast.PBConnectionLost):
                await asyncio.wait_for(pending, 1)
            with pytest.raises(pbfast.PBConnectionLost):
                await asyncio.wait_for(own, 1)
            assert not ref.isConnected() and not back.isConnected()
            with pytest.raises(pbfast.DeadReferenceError):
                await ref.callRemote("echo", 1)
            assert stopped < 1 and noticed < 1, (stopped, noticed)
            await asyncio.sleep(0.6)  # the remote method behind `own` ends; its answer is dropped

    run(main())


@pytest.mark.parametrize("how", ["eof", "reset"])
def test_a_tcp_close_without_close_notify_is_noticed_at_once(run, how):
    """The peer's socket ends without TLS close_notify (a half-close, or a reset): the
    connection ends at once, with the same outcome as a close_notify."""

    async def main():
        loop = asyncio.get_running_loop()
        async with serving() as (server, furl), pbfast.Tub() as client:
            ref = await client.getReference(furl)
            lost = loop.create_future()
            ref.notifyOnDisconnect(lambda: lost.done() or lost.set_result(loop.time()))
            pending = ref.callRemote("slow", 1, delay=0.5)  # goes on running on the server
            await asyncio.sleep(0.05)
            (connection,) = server._connections
            started = loop.time()
            sock = connection.transport.get_extra_info("socket")
            if how == "eof":
                # Behind the transport's back (through a duplicate descriptor): it still reads.
                with socket.fromfd(sock.fileno(), socket.AF_INET, socket.SOCK_STREAM) as dup:
                    dup.shutdown(socket.SHUT_WR)
            else:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                connection.transport.abort()
            noticed = await asyncio.wait_for(lost, 5) - started
            with pytest.raises(pbfast.PBConnectionLost):
                await asyncio.wait_for(pending, 1)
            assert not ref.isConnected() and noticed < 1, noticed
            with pytest.raises(pbfast.DeadReferenceError):
                await ref.callRemote("echo", 1)
            # The half-closed server side hears our close_notify and ends too.
            await asyncio.wait_for(connection.closed, 5)
            assert server.statistics()["connections"] == 0
            await asyncio.sleep(0.5)

    run(main())


def test_crossing_connections_settle_on_one(run):
    async def main():
        async with serving() as (a, furl_a), serving() as (b, furl_b):
            ref_b, ref_a = await asyncio.gather(a.getReference(furl_b), b.getReference(furl_a))
            await asyncio.sleep(0.05)
            assert a.statistics()["connections"] == 1 and b.statistics()["connections"] == 1
            for ref in (await a.getReference(furl_b), await b.getReference(furl_a)):
                assert await ref.callRemote("echo", 1) == 1

    run(main())


def test_backoff_grows_and_is_capped():
    delays = backoff(1.0, 2.0, 30.0, 0.1, random.Random(7))
    seen = [next(delays) for _ in range(12)]
    for i, delay in enumerate(seen[:5]):
        assert 0.9 * 2**i <= delay <= 1.1 * 2**i
    assert all(delay <= 30.0 for delay in seen)
    assert all(27.0 <= delay for delay in seen[6:])
    assert len(set(seen)) == len(seen)  # jittered


def test_reconnector_follows_a_restarting_server(run):
    async def main():
        identity = pbfast.Tub().identity.to_pem()
        connected: list = []
        again = asyncio.Event()

        async def start(port=0):
            tub = pbfast.Tub(certData=identity)
            listener = await tub.listenOn(f"tcp:{port}:interface=127.0.0.1")
            tub.setLocation(f"tcp:127.0.0.1:{listener.port}")
            return tub, tub.registerReference(Echo(), "echo"), listener.port

        server, furl, port = await start()
        async with pbfast.Tub(reconnectInitialDelay=0.05, reconnectMaxDelay=0.2) as client:

            async def on_connect(ref, tag):
                connected.append((tag, await ref.callRemote("echo", len(connected))))
                again.set()

            reconnector = client.connectTo(furl, on_connect, "hello")
            await asyncio.wait_for(again.wait(), 5)
            again.clear()
            await server.stopService()
            await asyncio.sleep(0.3)
            assert reconnector.getLastFailure() is not None
            server, _, _ = await start(port)
            await asyncio.wait_for(again.wait(), 5)
            assert connected == [("hello", 0), ("hello", 1)]
            reconnector.stopConnecting()
        await server.stopService()

    run(main())


class Counter(pbfast.Cacheable):
    def __init__(self) -> None:
        self.value = 0
        self.observers: list = []
        self.stopped = 0

    def getStateToCacheAndObserveFor(self, perspective, observer):
        self.observers.append(observer)
        return {"value": self.value}

    def stoppedObserving(self, perspective, observer):
        self.observers.remove(observer)
        self.stopped += 1

    def bump(self) -> list:
        self.value += 1
        return [o.callRemote("set", self.value) for o in self.observers]


class CounterCopy(pbfast.RemoteCache):
    copytype = "example.pbfast/Counter"

    def observe_set(self, value):
        self.value = value


Counter.typeToCopy = "example.pbfast/Counter"


class CounterHolder(pbfast.Referenceable):
    def __init__(self) -> None:
        self.counter = Counter()

    def remote_counter(self):
        return self.counter

    def remote_bump(self):
        return len(self.counter.bump())


def test_cacheable_between_pbfast_tubs(run):
    async def main():
        holder = CounterHolder()
        async with serving(holder) as (server, furl), pbfast.Tub() as client:
            ref = await client.getReference(furl)
            copy = await ref.callRemote("counter")
            assert isinstance(copy, CounterCopy) and copy.value == 0
            assert await ref.callRemote("counter") is copy  # one copy per holder
            assert await ref.callRemote("bump") == 1
            for _ in range(100):
                if copy.value == 1:
                    break
                await asyncio.sleep(0.005)
            assert copy.value == 1
            del copy
            for _ in range(200):
                gc.collect()
                await asyncio.sleep(0.005)
                if holder.counter.stopped:
                    break
            assert holder.counter.stopped == 1 and holder.counter.observers == []
            copy = await ref.callRemote("counter")  # sent afresh, with its current state
            assert copy.value == 1

    run(main())


def test_statistics_share_the_names_of_pb_connections(run):
    """A Tub's totals (each connection's names, on both wires, are in test_wires.py)."""
    shared = ("objects", "proxies", "cached", "pending", "in_flight", "streams", "backlog", "buffered")

    async def main():
        async with pbfast.Tub() as idle:
            assert idle.statistics() == {
                "connections": 0,
                **dict.fromkeys(shared, 0),
                "gifts": 0,
                "caches": 0,
                "registered": 0,
            }
        async with serving() as (server, furl), pbfast.Tub() as client:
            ref = await client.getReference(furl)
            assert await ref.callRemote("echo", 1) == 1
            assert set(client.statistics()) == {"connections", *ref.broker.statistics(), "registered"}
            assert client.statistics()["connections"] == 1 and client.statistics()["proxies"] == 1

    run(main())
