"""Hostile peers against real server processes: what a peer can make a ``pbfast serve`` process
hold, and that everyone else is still served meanwhile.

Each test starts ``pbfast serve --object hostile_target:Target`` (see tests/servers.py and
tests/hostile_target.py), on the PB wire or in a Tub (``--tub``), misbehaves towards it from
this process, and checks what the server holds (its resident memory, read from /proc, and what
its ``connections()`` report), what it logs, and that a well-behaved client is still answered:

1. a client that never reads its replies while it keeps sending calls: the server stops reading
   from it (``backlog``), its memory stays flat, a good client is answered quickly, and the
   server still shuts down in its grace period;
2. a client that takes references and never lets go of them: the calls past ``max_refs`` fail
   and the server never holds more than that for it;
3. a client that pipelines 20,000 slow calls: no more than ``max_in_flight`` run at once, none
   is dropped;
4. many peers each holding a large partial message: the ``memory_budget`` closes those that
   would take the total past it;
5. peers aborting in the middle of a large message one after another: the server's memory comes
   back at each close, with its garbage collector off, and no pbfast object is left for it.
6. pbfast peers that speak ``large`` (one string may be as long as ``max_message_size``): a string
   declared past it is refused from its header, lists nested too deep still close the
   connection, and many peers each holding most of one long string are held to the memory budget.

The servers run on the event loop kind the tests run on (``--loop``: asyncio's own, or uvloop's).
Every test prints the figures it measured (``pytest -s`` shows them).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Self

import pbfast
import pytest
from pbfast import _core
from pbfast._connection import DEFAULT_MEMORY_BUDGET
from servers import ServeProcess
from servers import tests_env as server_env  # (a name pytest would collect)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads memory use from /proc"),
]

HOST = "127.0.0.1"
LISTEN = f"tcp:port=0:interface={HOST}"
WIRES = ("pb", "tub")
MiB = 1 << 20
BACKLOG = 1024  # the option's default
# The most an event loop reads from a socket at once (asyncio's 256 KiB, uvloop's 256,000 bytes).
READ_SIZE = 256 << 10

# A partial message: a list of STRINGS strings of STRING_SIZE bytes each (the largest element
# Twisted's banana accepts), whose end never comes: 60 MiB, under the 64 MiB max_message_size.
# A Tub gets the same: its decoder's max_message_size is 64 MiB too (and its max_element_size,
# 16 MiB, is larger), so the same partial message is as much as one peer can make it hold.
STRING_SIZE = 640 << 10
STRINGS = 96
PARTIAL = STRINGS * STRING_SIZE


# ------------------------------------------------------------------------------------ the server


@contextlib.contextmanager
def hostile_server(
    wire: str, loop_name: str, *options: str, no_gc: bool = False, grace: float = 10
) -> Iterator[ServeProcess]:
    """``pbfast serve`` of a `hostile_target.Target` on `wire`, with ``-o`` `options`, on the
    event loop kind `loop_name`; with `no_gc`, its cyclic garbage collector is off; `grace` is
    its shutdown's grace period. Killed on the way out, whatever happens."""
    args = ["--tub"] if wire == "tub" else []
    args += [LISTEN, "--object", "hostile_target:Target", "--grace", str(grace)]
    for option in options:
        args += ["-o", option]
    env = {}
    if loop_name == "asyncio":
        env["PBFAST_TEST_LOOP"] = "asyncio"
    if no_gc:
        env["PBFAST_TEST_NO_GC"] = "1"
    with ServeProcess(*args, env=server_env(**env)) as server:
        yield server


def warned(server: ServeProcess, peer: str, limit: str) -> bool:
    """Whether the server logged that `peer` (``host:port``) reached `limit` (``name=value``)."""
    return f"peer {peer} reached {limit}:" in server.stderr()


class RssSampler:
    """The server's resident memory, sampled every `interval` seconds while in use: `start`
    (on entry), `peak`, `end` (on exit)."""

    def __init__(self, server: ServeProcess, interval: float = 0.02) -> None:
        self.server = server
        self.interval = interval
        self.start = self.peak = self.end = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RssSampler:
        self.start = self.peak = self.server.rss()
        self._task = asyncio.create_task(self._sample())
        return self

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self.server.rss())
            await asyncio.sleep(self.interval)

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.end = self.server.rss()
        self.peak = max(self.peak, self.end)

    def __str__(self) -> str:
        return (
            f"RSS start {self.start / MiB:.0f} MiB, peak {self.peak / MiB:.0f} MiB "
            f"(+{(self.peak - self.start) / MiB:.0f}), end {self.end / MiB:.0f} MiB"
        )


# ------------------------------------------------------------------------------------ clients


class Clients:
    """pbfast clients of one server, on its wire (each Tub client in a Tub of its own: a Tub
    keeps one connection per peer Tub); all cut off on the way out."""

    def __init__(self, wire: str, address: str) -> None:
        self.wire = wire
        self.address = address
        self._tubs: list[pbfast.Tub] = []
        self._brokers: list[Any] = []

    async def connect(self) -> Any:
        """A new connection: the served object's reference."""
        if self.wire == "pb":
            ref = await pbfast.connect(self.address)
        else:
            tub = pbfast.Tub()
            self._tubs.append(tub)
            ref = await tub.getReference(self.address)
        self._brokers.append(ref.broker)
        return ref

    async def __aenter__(self) -> Clients:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for broker in self._brokers:
            if not broker.disconnected:
                broker.transport.abort()
        for tub in self._tubs:
            await tub.stopService(grace=0)
        await asyncio.wait_for(asyncio.gather(*(broker.closed for broker in self._brokers)), 10)


def local_peer(ref: Any) -> str:
    """How the server names this reference's connection: our ``host:port``."""
    host, port = ref.broker.transport.get_extra_info("sockname")[:2]
    return f"{host}:{port}"


def encoded_calls(ref: Any, wire: str, method: str, args: tuple, count: int, first_id: int) -> bytes:
    """`count` calls of `method` on `ref`'s object, encoded on its connection (request ids from
    `first_id`), to be sent with `send_raw`: no futures wait for their replies."""
    broker = ref.broker
    if wire == "pb":
        encoder = _core.PbEncoder(broker._session.dialect)
        return b"".join(encoder.message(first_id + i, ref.luid, method, True, args) for i in range(count))
    # (Numbered where the connection's own messages are, which then continue after these.)
    encoder = _core.FoolscapEncoder(next_open_id=broker._session.next_open_id)
    calls = b"".join(encoder.call(first_id + i, ref.luid, method, args) for i in range(count))
    broker._session.next_open_id = encoder.next_open_id
    return calls


def send_raw(ref: Any, wire: str, data: bytes) -> None:
    """Send bytes of the wire's messages on `ref`'s connection (inside TLS for a Tub)."""
    if wire == "pb":
        ref.broker._session.write(data)
    else:
        ref.broker._session.write(data)


async def echo_times(ref: Any, seconds: float, pause: float = 0.002) -> list[float]:
    """Call ``echo`` over and over for `seconds` (one at a time, `pause` between): each call's
    round-trip time."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    times = []
    while loop.time() < end:
        started = time.perf_counter()
        assert await ref.callRemote("echo", b"ping") == b"ping"
        times.append(time.perf_counter() - started)
        await asyncio.sleep(pause)
    return times


def percentile(values: list[float], percent: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * percent / 100))]


async def wait_for(
    condition: Callable[[], Awaitable[bool]], timeout: float, what: str, interval: float = 0.02
) -> None:
    """Wait until ``await condition()`` is true; fail after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting until {what}")
        await asyncio.sleep(interval)


# ------------------------------------------------------------------------- partial messages


class RawPeer:
    """A peer that writes raw banana: PB over a plain socket after its own negotiation (offering
    `EXTENSIONS`), a Tub through a pbfast Tub's connection; `closed` once the server has closed
    the connection."""

    EXTENSIONS: tuple[str, ...] = ()

    def __init__(self, wire: str) -> None:
        self.wire = wire
        self.peer = ""
        self.sent = 0
        self._ref: Any = None
        self._writer: asyncio.StreamWriter | None = None
        self._watch: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    async def open(cls, wire: str, server: ServeProcess, clients: Clients) -> Self:
        self = cls(wire)
        if wire == "pb":
            port = int(server.address.rpartition("port=")[2])
            reader, self._writer = await asyncio.open_connection(HOST, port)
            offer = _core.PbDecoder(False, extensions=list(cls.EXTENSIONS) or None)
            events: list = []
            while not events:
                events = offer.feed(await reader.read(1024))
            if cls.EXTENSIONS:
                assert events[0][3] == list(cls.EXTENSIONS), events  # the server speaks them too
            self._writer.write(events[0][2])  # our choice of dialect, and our version
            self._watch = asyncio.create_task(self._watch_for_close(reader))
            self.peer = "{}:{}".format(*self._writer.get_extra_info("sockname")[:2])
        else:
            self._ref = await clients.connect()
            assert set(cls.EXTENSIONS) <= self._ref.broker.peer_extensions
            self.peer = local_peer(self._ref)
        return self

    async def _watch_for_close(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(1 << 16):
                pass
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed if self.wire == "pb" else self._ref.broker.disconnected


class PartialPeer(RawPeer):
    """A peer that connects, sends the start of one PARTIAL-byte message (a list of strings)
    and never its end."""

    @property
    def transport(self) -> asyncio.Transport:
        return self._writer.transport if self.wire == "pb" else self._ref.broker.transport

    async def send(self) -> None:
        """Send the partial message, or as much of it as the server takes before it closes the
        connection."""
        string = header(STRING_SIZE) + b"\x82" + b"s" * STRING_SIZE
        if self.wire == "pb":
            head = header(STRINGS + 1) + b"\x80"  # a list of one string more than will come
            writer = self._writer
            assert writer is not None
            try:
                writer.write(head)
                for _ in range(STRINGS):
                    writer.write(string)
                    await writer.drain()
                    self.sent += STRING_SIZE
            except ConnectionError:
                pass
            return
        broker = self._ref.broker
        opened = broker._session.next_open_id
        # The start of a call of echo with one argument, a list of strings.
        head = _core.encode_tokens(
            [
                ("OPEN", opened),
                ("STRING", b"call"),
                ("INT", 1 << 20),
                ("INT", self._ref.luid),
                ("STRING", b"echo"),
                ("OPEN", opened + 1),
                ("STRING", b"arguments"),
                ("INT", 1),
                ("OPEN", opened + 2),
                ("STRING", b"list"),
            ],
            "foolscap",
        )
        broker._session.next_open_id = opened + 3
        string = _core.encode_tokens([("STRING", b"s" * STRING_SIZE)], "foolscap")
        try:
            broker._session.write(head)
            for _ in range(STRINGS):
                if broker.disconnected:
                    return
                broker._session.write(string)
                await asyncio.sleep(0)  # written now: one string at a time through TLS
                await broker.wait_writable()
                self.sent += STRING_SIZE
        except pbfast.DeadReferenceError:
            pass

    def abort(self, *, reset: bool) -> None:
        """Go away mid-message: with a TCP reset (`reset`), or a plain close (FIN)."""
        transport = self.transport
        if reset:
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        else:
            transport.close()

    async def close(self) -> None:
        if self.wire == "pb":
            assert self._writer is not None and self._watch is not None
            self._writer.transport.abort()
            await self._watch  # ends at the close


def smallest_call(wire: str, method: str, args: tuple) -> int:
    """The size of the shortest encoding of a call of `method` on the served object."""
    if wire == "pb":
        return len(_core.PbEncoder("pb").message(1, b"root", method, True, args))
    return len(_core.FoolscapEncoder().call(1, 1, method, args))


def header(n: int) -> bytes:
    """A banana header: `n` in base-128 digits, least significant first."""
    out = bytearray()
    while True:
        out.append(n & 0x7F)
        n >>= 7
        if not n:
            return bytes(out)


# ---------------------------------------------------------------------------------- 1. no reads

# Calls a client that never reads sends: small calls with large replies (the held calls reach
# `backlog` in number), or large calls (they reach BACKLOG_BYTES of received bytes first).
FLOODS = {
    "payload": ("payload", (100_000,), 256),
    "echo": ("echo", (b"x" * 65536,), 16),
}
FLOOD_SECONDS = 8.0
# The non-reading client sends as long as less than this waits in its own transport.
CLIENT_BUFFER = 8 * MiB
GRACE = 1.0


@pytest.mark.parametrize("flood", FLOODS)
@pytest.mark.parametrize("wire", WIRES)
def test_client_that_never_reads(run, loop_name: str, wire: str, flood: str) -> None:
    method, args, batch = FLOODS[flood]

    async def main(server: ServeProcess) -> None:
        async with Clients(wire, server.address) as clients:
            good = await clients.connect()
            hostile = await clients.connect()
            assert await hostile.callRemote("echo", 1) == 1
            peer = local_peer(hostile)
            transport = hostile.broker.transport
            before = await good.callRemote("served")
            transport.pause_reading()
            stop = asyncio.Event()
            sent = 0

            async def flood_calls() -> None:
                nonlocal sent
                request_id = 1 << 30
                while not stop.is_set():
                    if transport.get_write_buffer_size() < CLIENT_BUFFER:
                        send_raw(hostile, wire, encoded_calls(hostile, wire, method, args, batch, request_id))
                        request_id += batch
                        sent += batch
                    await asyncio.sleep(0.001)

            async with RssSampler(server) as rss:
                flooding = asyncio.create_task(flood_calls())
                try:
                    times = await echo_times(good, FLOOD_SECONDS)
                finally:
                    stop.set()
                    await flooding
                backed_up = transport.get_write_buffer_size()
                connections = await good.callRemote("connections")
                served = await good.callRemote("served")
            ran = served.get(method, 0) - before.get(method, 0)
            if method == "echo":
                ran -= len(times)  # the good client's
            p50, p99 = percentile(times, 50), percentile(times, 99)
            print(
                f"\n[{wire}, {flood}] sent {sent} calls in {FLOOD_SECONDS} s, the server ran {ran}; "
                f"{backed_up / MiB:.1f} MiB backed up in the client; {rss}; good client: "
                f"{len(times)} calls, p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms, "
                f"max {max(times) * 1e3:.2f} ms; server side: {connections.get(peer)}"
            )
            # The server stopped reading from the client: what it sent waits on its side...
            assert connections[peer]["reading"] is False, connections
            assert connections[local_peer(good)]["reading"] is True, connections
            assert backed_up >= CLIENT_BUFFER // 2, backed_up
            # ... and the server ran only what it could answer before the client's socket filled.
            assert ran < min(2_000, sent // 2), (ran, sent)
            assert rss.peak - rss.start < 256 * MiB, str(rss)
            assert len(times) >= 500, len(times)
            assert p99 < 0.050, f"p99 {p99 * 1e3:.1f} ms"
            assert warned(server, peer, f"backlog={BACKLOG}"), server.stderr()
            # With the client still there, not reading, the server shuts down in its grace period.
            stopping = time.perf_counter()
            code, stderr = await asyncio.to_thread(server.stop)
            stopping = time.perf_counter() - stopping
            print(f"[{wire}, {flood}] stopped (SIGTERM, --grace {GRACE}) in {stopping:.2f} s, exit {code}")
            assert code == 0 and "Traceback" not in stderr, stderr
            assert stopping < GRACE + 5, stopping

    with hostile_server(wire, loop_name, grace=GRACE) as server:
        run(main(server), timeout=60)


# ------------------------------------------------------------------------- 2. reference flood

MAX_REFS = 2000


@pytest.mark.parametrize("wire", WIRES)
def test_reference_flood(run, loop_name: str, wire: str) -> None:
    batches, batch = 8, 500

    async def main(server: ServeProcess) -> None:
        async with Clients(wire, server.address) as clients:
            good = await clients.connect()
            hostile = await clients.connect()
            peer = local_peer(hostile)
            held: list[Any] = []
            refused: list[BaseException] = []
            most_children = most_objects = 0
            started = time.perf_counter()
            for _ in range(batches):
                calls = [hostile.callRemote("new_ref") for _ in range(batch)]
                for result in await asyncio.gather(*calls, return_exceptions=True):
                    (refused if isinstance(result, BaseException) else held).append(result)
                most_children = max(most_children, await good.callRemote("children"))
                connections = await good.callRemote("connections")
                most_objects = max(most_objects, connections[peer]["objects"])
            elapsed = time.perf_counter() - started
            print(
                f"\n[{wire}] {batches * batch} new_ref calls in {elapsed:.2f} s: {len(held)} held, "
                f"{len(refused)} refused; the server held at most {most_children} children, "
                f"{most_objects} objects for the client"
            )
            # In a Tub, the object the client got by its FURL is one the peer holds too.
            assert len(held) == MAX_REFS - (1 if wire == "tub" else 0)
            for error in refused:
                assert isinstance(error, pbfast.RemoteError), repr(error)
                assert error.check(pbfast.LimitExceeded) and "max_refs=2000" in str(error), repr(error)
            assert most_children <= MAX_REFS and most_objects <= MAX_REFS
            assert await held[-1].callRemote("ping") == "pong"  # those it holds still work
            assert warned(server, peer, f"max_refs={MAX_REFS}"), server.stderr()
            # The server lets go of them all when the client leaves.
            hostile.broker.transport.abort()

            async def released() -> bool:
                return await good.callRemote("children") == 0

            await wait_for(released, 5, "the server let go of the children")

    with hostile_server(wire, loop_name, f"max_refs={MAX_REFS}") as server:
        run(main(server))


# ------------------------------------------------------------------------------ 3. call flood

MAX_IN_FLIGHT = 256


@pytest.mark.parametrize("wire", WIRES)
def test_call_flood(run, loop_name: str, wire: str) -> None:
    calls, seconds = 20_000, 0.1

    async def main(server: ServeProcess) -> None:
        async with Clients(wire, server.address) as clients:
            good = await clients.connect()
            hostile = await clients.connect()
            peer = local_peer(hostile)
            loop = asyncio.get_running_loop()
            most_running = most_in_flight = most_backlog = 0
            probe_times = []
            async with RssSampler(server) as rss:
                started = loop.time()
                answers = asyncio.gather(*(hostile.callRemote("slow", seconds, i) for i in range(calls)))
                while not answers.done():
                    probe = time.perf_counter()
                    running = await good.callRemote("running")
                    probe_times.append(time.perf_counter() - probe)
                    most_running = max(most_running, running["running"])
                    connection = (await good.callRemote("connections")).get(peer)
                    if connection is not None:
                        most_in_flight = max(most_in_flight, connection["in_flight"])
                        most_backlog = max(most_backlog, connection["backlog"])
                    await asyncio.wait([answers], timeout=0.2)
                results = await answers
                elapsed = loop.time() - started
            running = await good.callRemote("running")
            print(
                f"\n[{wire}] {calls} slow({seconds}) calls answered in {elapsed:.2f} s "
                f"({calls / elapsed:.0f}/s); most running at once {running['most']} (sampled "
                f"{most_running}); the server held at most {most_in_flight} running and "
                f"{most_backlog} waiting for the client; {rss}; good client probes: max "
                f"{max(probe_times) * 1e3:.1f} ms over {len(probe_times)}"
            )
            assert results == list(range(calls))  # every call answered, with its own value
            assert running["finished"] == calls and running["running"] == 0, running
            assert running["most"] == MAX_IN_FLIGHT, running  # reached, never passed
            # Had more run at once, the calls would have been over sooner.
            assert elapsed >= 0.95 * calls / MAX_IN_FLIGHT * seconds, elapsed
            assert most_in_flight <= MAX_IN_FLIGHT, most_in_flight
            # Reading stops once `backlog` calls are held, after the chunk that took it there:
            # at most one read's worth more are held.
            one_read = READ_SIZE // smallest_call(wire, "slow", (seconds, 0))
            assert most_backlog <= BACKLOG + one_read, (most_backlog, one_read)
            assert rss.peak - rss.start < 64 * MiB, str(rss)
            assert warned(server, peer, f"max_in_flight={MAX_IN_FLIGHT}"), server.stderr()
            assert warned(server, peer, f"backlog={BACKLOG}"), server.stderr()

    with hostile_server(wire, loop_name, f"max_in_flight={MAX_IN_FLIGHT}") as server:
        run(main(server), timeout=60)


# --------------------------------------------------------------- 4. partial messages held

PEERS = 12


@pytest.mark.parametrize("wire", WIRES)
def test_many_peers_holding_partial_messages(run, loop_name: str, wire: str) -> None:
    # The default memory budget has room for this many whole partial messages (with their few
    # bytes of headers), and no more.
    fit = DEFAULT_MEMORY_BUDGET // (PARTIAL + 1024)
    assert (fit + 1) * PARTIAL > DEFAULT_MEMORY_BUDGET

    async def main(server: ServeProcess) -> None:
        async with Clients(wire, server.address) as clients:
            good = await clients.connect()
            peers: list[PartialPeer] = []
            try:
                async with RssSampler(server) as rss:
                    started = time.perf_counter()
                    peers = list(
                        await asyncio.gather(*(PartialPeer.open(wire, server, clients) for _ in range(PEERS)))
                    )
                    await asyncio.gather(*(peer.send() for peer in peers))

                    async def settled() -> bool:
                        # Enough peers closed, and the server has read all the others sent.
                        if sum(peer.closed for peer in peers) < PEERS - fit:
                            return False
                        connections = await good.callRemote("connections")
                        return all(
                            peer.closed or connections[peer.peer]["buffered"] >= PARTIAL for peer in peers
                        )

                    await wait_for(settled, 20, f"{PEERS - fit} peers were closed, the others held", 0.1)
                    elapsed = time.perf_counter() - started
                    probe = time.perf_counter()
                    assert await good.callRemote("echo", 1) == 1
                    probe = time.perf_counter() - probe
                    connections = await good.callRemote("connections")
                    newcomer = await clients.connect()
                    assert await newcomer.callRemote("echo", 2) == 2
                closed = [peer for peer in peers if peer.closed]
                held = [connections[peer.peer]["buffered"] for peer in peers if not peer.closed]
                print(
                    f"\n[{wire}] {PEERS} peers x {PARTIAL / MiB:.0f} MiB partial messages: "
                    f"{len(closed)} closed by the memory budget in {elapsed:.2f} s, the others hold "
                    f"{[round(h / MiB, 1) for h in held]} MiB; {rss}; good client answered in "
                    f"{probe * 1e3:.2f} ms"
                )
                assert len(closed) == PEERS - fit, [peer.sent for peer in peers]
                assert all(h >= PARTIAL for h in held), held
                assert sum(held) <= DEFAULT_MEMORY_BUDGET
                for peer in closed:
                    assert warned(server, peer.peer, f"memory_budget={DEFAULT_MEMORY_BUDGET}"), peer.peer
                assert rss.peak - rss.start < 400 * MiB, str(rss)
            finally:
                for peer in peers:
                    await peer.close()

    with hostile_server(wire, loop_name) as server:
        run(main(server), timeout=60)


# ---------------------------------------------------------- 5. peers aborting mid-message


@pytest.mark.parametrize("wire", WIRES)
def test_peers_aborting_mid_message(run, loop_name: str, wire: str) -> None:
    async def main(server: ServeProcess) -> None:
        async with Clients(wire, server.address) as clients:
            good = await clients.connect()
            # What the server's start-up left for the collector goes first (so that what the
            # collector finds at the end comes from the peers); from here on, none runs.
            await good.callRemote("collect")
            baseline = server.rss()
            figures = []
            started = time.perf_counter()
            for i in range(PEERS):
                peer = await PartialPeer.open(wire, server, clients)
                await peer.send()

                async def holding(peer: PartialPeer = peer) -> bool:
                    connection = (await good.callRemote("connections")).get(peer.peer)
                    return connection is not None and connection["buffered"] >= PARTIAL

                await wait_for(holding, 10, f"the server held peer {i}'s partial message")
                holding_rss = server.rss()
                peer.abort(reset=i % 2 == 1)

                async def gone(peer: PartialPeer = peer) -> bool:
                    return peer.peer not in await good.callRemote("connections")

                await wait_for(gone, 10, f"the server saw peer {i} go")
                figures.append((holding_rss, server.rss()))
                await peer.close()
            elapsed = time.perf_counter() - started
            final = server.rss()
            garbage = await good.callRemote("garbage")
            print(
                f"\n[{wire}] {PEERS} peers aborted after {PARTIAL / MiB:.0f} MiB each, in "
                f"{elapsed:.2f} s: RSS baseline {baseline / MiB:.0f} MiB, while held / after each: "
                f"{[(round(h / MiB), round(a / MiB)) for h, a in figures]} MiB, final "
                f"{final / MiB:.0f} MiB; the garbage collector then found {garbage}"
            )
            for holding_rss, after in figures:
                assert holding_rss - baseline >= 0.75 * PARTIAL  # the server did hold each one
                assert after - baseline < PARTIAL, (baseline, figures)  # and let go of it
            assert final - baseline < PARTIAL, (baseline, final)
            # Each closed connection gave its share of the memory budget back.
            assert "memory_budget" not in server.stderr(), server.stderr()
            assert not [name for name in garbage if name.startswith("pbfast")], garbage
            assert await good.callRemote("echo", 1) == 1

    with hostile_server(wire, loop_name, no_gc=True) as server:
        run(main(server), timeout=60)


# ------------------------------------------------- 6. large values between pbfast peers

# The server's max_message_size here; between pbfast peers that speak `large` a single string may
# be that long, and the protections hold all the same: a string past it is refused from its
# header, partial messages count against the memory budget, nesting against max_depth.
LARGE_LIMIT = 16 * MiB
LARGE_PARTIAL = 15 * MiB  # what each peer sends of one string whose end never comes
LARGE_PEERS = 20


class LargePeer(RawPeer):
    """A peer that announces `large` and then writes raw banana."""

    EXTENSIONS = ("large",)

    def _write(self, data: bytes) -> None:
        if self.wire == "pb":
            assert self._writer is not None
            self._writer.write(data)
        else:
            self._ref.broker._session.write(data)

    async def _drain(self) -> None:
        if self.wire == "pb":
            assert self._writer is not None
            await self._writer.drain()
        else:
            await asyncio.sleep(0)  # written now, through TLS
            await self._ref.broker.wait_writable()

    def _call_head(self) -> bytes:
        """A message up to where its first value goes: PB, a list of two; Tub, a call of echo."""
        if self.wire == "pb":
            return header(2) + b"\x80"
        broker = self._ref.broker
        opened = broker._session.next_open_id
        broker._session.next_open_id = opened + 2
        tokens = [("OPEN", opened), ("STRING", b"call"), ("INT", 1 << 20), ("INT", self._ref.luid)]
        tokens += [("STRING", b"echo"), ("OPEN", opened + 1), ("STRING", b"arguments"), ("INT", 1)]
        return _core.encode_tokens(tokens, "foolscap")

    async def send_string(self, declared: int, body: int) -> None:
        """A message holding one string of `declared` bytes, of which `body` are sent (or as much
        as the server reads before it closes the connection)."""
        try:
            self._write(self._call_head() + header(declared) + b"\x82")
            piece = b"s" * MiB
            while self.sent < body and not self.closed:
                self._write(piece[: body - self.sent])
                await self._drain()
                self.sent += min(MiB, body - self.sent)
        except (ConnectionError, pbfast.DeadReferenceError):
            pass

    def send_nested(self, depth: int) -> None:
        """Lists (PB) or sequences (Tub) nested `depth` deep, never closed."""
        if self.wire == "pb":
            self._write(header(1) + b"\x80" + (header(1) + b"\x80") * depth)
            return
        opened = self._ref.broker._session.next_open_id
        self._write(
            self._call_head()
            + _core.encode_tokens(
                [token for i in range(depth) for token in (("OPEN", opened + 2 + i), ("STRING", b"list"))],
                "foolscap",
            )
        )

    async def close(self) -> None:
        if self.wire == "pb":
            assert self._writer is not None and self._watch is not None
            self._writer.transport.abort()
            await self._watch  # ends at the close
        else:
            self._ref.broker.transport.abort()


@pytest.mark.parametrize("wire", WIRES)
def test_large_values_from_hostile_peers(run, loop_name: str, wire: str) -> None:
    fit = DEFAULT_MEMORY_BUDGET // (LARGE_PARTIAL + 1024)
    assert (fit + 1) * LARGE_PARTIAL > DEFAULT_MEMORY_BUDGET and fit < LARGE_PEERS
    max_depth = 1000 if wire == "pb" else 500  # the decoders' defaults

    async def main(server: ServeProcess) -> None:
        async with Clients(wire, server.address) as clients:
            good = await clients.connect()
            assert "large" in good.broker.peer_extensions
            value = b"v" * (4 * MiB)  # a well-behaved large value goes through, both ways
            assert await good.callRemote("echo", value) == value
            peers: list[LargePeer] = []
            try:
                async with RssSampler(server) as rss:
                    # A string past max_message_size: refused from its header, nothing held.
                    oversize = await LargePeer.open(wire, server, clients)
                    peers.append(oversize)
                    await oversize.send_string(LARGE_LIMIT + 1, 4 * MiB)
                    await wait_for(
                        lambda: asyncio.sleep(0, oversize.closed), 10, "the oversize peer was closed"
                    )
                    after_oversize = server.rss()
                    # Too deep: refused as ever.
                    deep = await LargePeer.open(wire, server, clients)
                    peers.append(deep)
                    deep.send_nested(max_depth + 1)
                    await wait_for(lambda: asyncio.sleep(0, deep.closed), 10, "the deep peer was closed")
                    # Many peers each holding most of one long string: the memory budget closes
                    # those that would take the total past it; the others are held whole.
                    holding = list(
                        await asyncio.gather(
                            *(LargePeer.open(wire, server, clients) for _ in range(LARGE_PEERS))
                        )
                    )
                    peers += holding
                    await asyncio.gather(
                        *(peer.send_string(LARGE_LIMIT - 1024, LARGE_PARTIAL) for peer in holding)
                    )

                    async def settled() -> bool:
                        if sum(peer.closed for peer in holding) < LARGE_PEERS - fit:
                            return False
                        connections = await good.callRemote("connections")
                        return all(
                            peer.closed or connections[peer.peer]["buffered"] >= LARGE_PARTIAL
                            for peer in holding
                        )

                    await wait_for(settled, 30, "the budget closed some peers, the others were held", 0.1)
                    connections = await good.callRemote("connections")
                    # (With the budget full, a small call is all the good client can make.)
                    assert await good.callRemote("echo", 1) == 1
                closed = [peer for peer in holding if peer.closed]
                held = [connections[peer.peer]["buffered"] for peer in holding if not peer.closed]
                print(
                    f"\n[{wire}] a string declared past max_message_size={LARGE_LIMIT}: closed, RSS "
                    f"+{(after_oversize - rss.start) / MiB:.0f} MiB; {LARGE_PEERS} peers x "
                    f"{LARGE_PARTIAL / MiB:.0f} MiB of one string: {len(closed)} closed by the memory "
                    f"budget, "
                    f"the others hold {sorted({round(h / MiB, 1) for h in held})} MiB; {rss}"
                )
                stderr = server.stderr()
                assert f"max_message_size={LARGE_LIMIT}" in stderr, stderr
                assert after_oversize - rss.start < 2 * MiB + LARGE_LIMIT // 4, (rss.start, after_oversize)
                assert f"max_depth={max_depth}" in stderr, stderr
                assert len(closed) == LARGE_PEERS - fit, [peer.sent for peer in holding]
                assert all(h >= LARGE_PARTIAL for h in held), held
                for peer in closed:
                    assert warned(server, peer.peer, f"memory_budget={DEFAULT_MEMORY_BUDGET}"), peer.peer
                assert rss.peak - rss.start < 400 * MiB, str(rss)
                # Once they are gone, the budget has room for large values again.
                for peer in peers:
                    await peer.close()

                async def released() -> bool:
                    return not {peer.peer for peer in peers} & set(await good.callRemote("connections"))

                await wait_for(released, 10, "the server saw the peers go")
                assert await good.callRemote("echo", value) == value
            finally:
                for peer in peers:
                    await peer.close()

    with hostile_server(wire, loop_name, f"max_message_size={LARGE_LIMIT}") as server:
        run(main(server), timeout=90)
