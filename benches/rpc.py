"""RPC latency and throughput: pbfast against stock Twisted PB and two raw uvloop echoes.

    python benches/rpc.py [--seconds 2] [--rounds 3] [--only pbfast,twisted,raw,floor,raw-tls]
                          [--pin same|split|none] [--dicts | --bulk] [--json [PATH]]

For each system, its server runs in its own process and its client in another, both on
127.0.0.1. The client measures the sequential latency of ``echo(1)`` (one call at a time: median
and p99) and the pipelined throughput with exactly 100 calls outstanding (calls per second).
Prints a Markdown report with the ratios between these systems and their targets (from
``targets.py``); see benches/README.md for what each number means.

The two raw echoes are the same length-prefixed frame echo server with two clients: ``raw``, a
future and a request id per call and the writes of one loop iteration batched (the least an
asyncio RPC client does: the ceiling for pbfast), and ``floor``, no futures and no request ids,
each read's replies answered by as many new requests in one write (the callback floor).

With ``--dicts``, pbfast alone echoes the 1,000 small dicts of ``serialization.py`` instead of
``1``, pipelined with 8 calls outstanding; there is no sequential measurement then.

With ``--bulk``, pbfast echoes a 1 MiB byte string (``echo(data)``, answered with the same
1 MiB) against the raw futures client and echo server with 1 MiB frames, over TCP and over TLS
(``raw-tls``: uvloop with the standard ``ssl`` module, measured with ``--bulk`` only), all
pipelined with 4 calls outstanding and no sequential measurement; figures in MB/s of payload
each way.

Only the standard library, the systems measured and the other scripts here are used. Twisted is
optional.

The same file is also the servers and clients it starts (internal):

    python benches/rpc.py --serve SYSTEM                 # prints "PORT n", stops on stdin EOF
    python benches/rpc.py --client SYSTEM --port N ...   # one JSON line of results (stdout or --out)
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import math
import os
import platform
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

# `python benches/rpc.py` puts benches/ on sys.path already; importing this file from elsewhere
# needs it too.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from targets import fmt_target, for_script, verdict  # noqa: E402

PBFAST, TWISTED, RAW, FLOOR, RAW_TLS = "pbfast", "twisted", "raw", "floor", "raw-tls"
SYSTEMS = (PBFAST, TWISTED, RAW, FLOOR, RAW_TLS)
TITLES = {
    PBFAST: "pbfast",
    TWISTED: "Twisted PB",
    RAW: "raw uvloop, futures",
    FLOOR: "raw uvloop, callback floor",
    RAW_TLS: "raw uvloop over TLS, futures",
}
OUTSTANDING = 100
DICT_OUTSTANDING = 8  # with --dicts: each call carries ~157 KB each way
BULK_SIZE = 1 << 20  # with --bulk: the byte string echoed
BULK_OUTSTANDING = 4
# Frames at least this long are gathered chunk by chunk and joined once, not re-copied with
# every chunk that arrives.
LONG_FRAME = 1 << 16
HOST = "127.0.0.1"

# (label, key in the JSON, numerator, denominator, measure, comparison, target): the project's
# targets (benches/targets.py) between two of these systems, of echo(1) and of --bulk.
ROWS = {"pb": PBFAST, "twisted": TWISTED, "raw": RAW, "floor": FLOOR, "raw_tls": RAW_TLS}
TARGETS = for_script(ROWS)
BULK_TARGETS = for_script(ROWS, bulk=True)


def request_size() -> int:
    """Bytes of the PB message pbfast sends for ``root.callRemote("echo", 1)`` (request id 1):
    the size of the raw echo's frames."""
    import pbfast._core

    return len(pbfast._core.PbEncoder("pb").message(1, b"root", "echo", True, (1,), {}))


def bulk_payload(size: int = BULK_SIZE) -> bytes:
    """`size` bytes of a repeating alphabet (not zeros, which a transport could treat specially)."""
    return (bytes(range(65, 91)) * (size // 26 + 1))[:size]


def echo_argument(args: argparse.Namespace) -> Any:
    """What the clients echo: ``1``, with --dicts the serialization benchmark's 1,000 dicts, with
    --bulk a 1 MiB byte string."""
    if args.bulk:
        return bulk_payload()
    if not args.dicts:
        return 1
    from serialization import make_data  # benches/ is on sys.path: this file's own directory

    return make_data()


def describe_call(args: argparse.Namespace) -> str:
    if args.bulk:
        return f"`echo(data)` with `data` a {BULK_SIZE:,}-byte string (1 MiB each way)"
    if args.dicts:
        return "`echo(data)` with `data` the 1,000 small dicts of `serialization.py` (~157 KB each way)"
    return "`echo(1)`"


# ============================================================================================
# Servers (each in its own process: `--serve SYSTEM`)


def announce(port: int) -> None:
    print(f"PORT {port}", flush=True)


def exit_on_stdin_eof() -> None:
    """The bench closes our stdin to stop us (and so does its death): a thread that blocks in
    read() (without the GIL) and ends the process at EOF."""

    def wait() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        finally:
            os._exit(0)

    threading.Thread(target=wait, daemon=True).start()


def serve_pbfast() -> None:
    import pbfast

    class Echo(pbfast.Root):
        def remote_echo(self, x: Any) -> Any:
            return x

    async def main() -> None:
        server = await pbfast.serve(Echo(), f"tcp:port=0:interface={HOST}")
        announce(server.port)
        await asyncio.Event().wait()

    exit_on_stdin_eof()
    pbfast.run(main())


def serve_twisted() -> None:
    from twisted.internet import reactor
    from twisted.spread import pb

    class Echo(pb.Root):
        def remote_echo(self, x: Any) -> Any:
            return x

    port = reactor.listenTCP(0, pb.PBServerFactory(Echo()), interface=HOST)
    announce(port.getHost().port)
    exit_on_stdin_eof()
    reactor.run()


class LongFrame:
    """The chunks of one long frame as they arrive, joined once it is complete: one copy of the
    frame, where prepending what is held to each chunk would copy it again with every chunk."""

    __slots__ = ("missing", "parts")

    def __init__(self, start: memoryview, length: int) -> None:
        self.parts = [start]
        self.missing = length - len(start)

    def add(self, data: bytes) -> tuple[bytes, bytes] | None:
        """Add a chunk: once the frame is complete, (the frame, the bytes after it)."""
        if len(data) < self.missing:
            self.parts.append(memoryview(data))
            self.missing -= len(data)
            return None
        self.parts.append(memoryview(data)[: self.missing])
        return b"".join(self.parts), data[self.missing :]


class RawEchoServer(asyncio.Protocol):
    """Echoes every complete frame (4-byte big-endian length + payload) back, unchanged: the
    frames completed by one read go back in one write; a long frame is gathered and joined once
    (`LongFrame`)."""

    def __init__(self) -> None:
        self._buf = b""
        self._long: LongFrame | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self._long is not None:
            done = self._long.add(data)
            if done is None:
                return
            self._long = None
            frame, data = done
            self._transport.write(frame)
            if not data:
                return
        elif self._buf:
            data = self._buf + data
        end, pos, unpack = len(data), 0, _LENGTH.unpack_from
        while end - pos >= 4:
            frame_end = pos + 4 + unpack(data, pos)[0]
            if frame_end > end:
                if frame_end - pos >= LONG_FRAME:
                    self._long = LongFrame(memoryview(data)[pos:], frame_end - pos)
                break
            pos = frame_end
        if pos:
            self._transport.write(data if pos == end else data[:pos])
        self._buf = b"" if self._long is not None else data[pos:]


def run_uvloop(main: Any) -> Any:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def serve_raw(tls: bool = False) -> None:
    async def main() -> None:
        context = server_tls_context() if tls else None
        server = await asyncio.get_running_loop().create_server(RawEchoServer, HOST, 0, ssl=context)
        announce(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    exit_on_stdin_eof()
    run_uvloop(main())


def server_tls_context() -> Any:
    """The raw TLS echo server's: a fresh self-signed certificate, the ``ssl`` module's defaults
    (TLS 1.3 here, as the Tubs negotiate)."""
    import ssl

    from pbfast.endpoints import self_signed_certificate

    cert, key = self_signed_certificate(HOST)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory(prefix="pbfast-rpc-") as tmp:
        paths = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        for path, pem in zip(paths, (cert, key), strict=True):
            with open(path, "wb") as f:
                f.write(pem)
        context.load_cert_chain(*paths)
    return context


def client_tls_context() -> Any:
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the bench's own server on 127.0.0.1
    return context


SERVERS = {
    PBFAST: serve_pbfast,
    TWISTED: serve_twisted,
    RAW: serve_raw,
    FLOOR: serve_raw,
    RAW_TLS: functools.partial(serve_raw, tls=True),
}


# ============================================================================================
# Clients (each in its own process: `--client SYSTEM --port N ...`, one JSON line on stdout)

_LENGTH = struct.Struct(">I")
_HEADER = struct.Struct(">II")  # frame length, request id


class CpuClock:
    """CPU seconds used by this process and, on Linux, by the server process: in all, and in the
    kernel (system time: sending and receiving, which every system measured does alike)."""

    def __init__(self, server_pid: int | None) -> None:
        self._stat = f"/proc/{server_pid}/stat" if server_pid else None
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def server(self) -> tuple[float, float] | None:
        """The server's (user + system, system) CPU seconds."""
        if self._stat is None:
            return None
        try:
            with open(self._stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        user, system = int(fields[11]), int(fields[12])
        return (user + system) / self._tick, system / self._tick

    def snapshot(self) -> tuple[int, float, float | None, float, float | None]:
        """(wall ns, our CPU s, the server's CPU s, our kernel CPU s, the server's kernel CPU s)."""
        server = self.server()
        return (
            time.perf_counter_ns(),
            time.process_time(),
            None if server is None else server[0],
            os.times().system,
            None if server is None else server[1],
        )


def window(start: tuple, end: tuple, calls: int) -> dict[str, Any]:
    """Calls, wall time and CPU time (ours, the server's; in all and in the kernel) between two
    `CpuClock` snapshots."""
    return {
        "calls": calls,
        "elapsed_s": (end[0] - start[0]) / 1e9,
        "client_cpu_s": end[1] - start[1],
        "server_cpu_s": _difference(start[2], end[2]),
        "client_kernel_s": end[3] - start[3],
        "server_kernel_s": _difference(start[4], end[4]),
    }


def _difference(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else end - start


def cpu_totals() -> list[Any]:
    """CPU seconds added up over rounds: [client, server, calls, client kernel, server kernel]
    (None where a round could not tell)."""
    return [0.0, 0.0, 0, 0.0, 0.0]


class RawClient(asyncio.Protocol):
    """The least an RPC client must do: number each request, keep a future per request id in a
    dict, write the frame (4-byte length, 4-byte id, filler to the size of pbfast's request),
    and on each reply frame pop the future and resolve it with the reply's body. Writes made in
    one loop iteration go out together, as pbfast's do. A long reply's body is gathered and
    joined once (`LongFrame`), and is the value the future gets."""

    def __init__(self, size: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._next = 1
        self._buf = b""
        self._long: LongFrame | None = None
        self._long_id = 0
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._length = size
        self.body = bulk_payload(size - 4)
        self.connected: asyncio.Future[None] = self._loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connected.set_result(None)

    def call(self) -> asyncio.Future[bytes]:
        future = self._loop.create_future()
        request_id = self._next
        self._next = request_id + 1
        self._pending[request_id] = future
        self._out.append(_HEADER.pack(self._length, request_id) + self.body)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        self._transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    def data_received(self, data: bytes) -> None:
        pending = self._pending
        if self._long is not None:
            done = self._long.add(data)
            if done is None:
                return
            self._long = None
            body, data = done
            future = pending.pop(self._long_id, None)
            if future is not None and not future.done():
                future.set_result(body)
            if not data:
                return
        elif self._buf:
            data = self._buf + data
        end, pos, unpack = len(data), 0, _HEADER.unpack_from
        while end - pos >= 8:
            length, request_id = unpack(data, pos)
            frame_end = pos + 4 + length
            if frame_end > end:
                if length >= LONG_FRAME:
                    self._long = LongFrame(memoryview(data)[pos + 8 :], length - 4)
                    self._long_id = request_id
                break
            future = pending.pop(request_id, None)
            if future is not None and not future.done():
                future.set_result(data[pos + 8 : frame_end])
            pos = frame_end
        self._buf = b"" if self._long is not None else data[pos:]

    def connection_lost(self, exc: Exception | None) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError("the raw echo server went away"))


async def measure_asyncio(
    call: Callable[[], asyncio.Future[Any]], expected: Any, args: argparse.Namespace, sequential: bool = True
) -> dict[str, Any]:
    """The same measurement for every asyncio client: `call()` starts one call and returns its
    future, which must resolve to `expected`. Without `sequential`, the pipelined part only."""
    loop = asyncio.get_running_loop()
    clock = CpuClock(args.server_pid)
    for _ in range(3):
        value = await call()
        if value != expected:
            raise AssertionError(f"{args.client}: echo returned {value!r}, expected {expected!r}")

    # Pipelined: OUTSTANDING calls in flight; each completion starts the next call from its
    # done-callback. Untimed warm-up, then the timed window, then the last calls drain.
    completed = bad = 0
    running = True
    snaps: list[tuple[tuple, int]] = []
    drained = loop.create_future()
    in_flight = args.outstanding

    def on_done(future: asyncio.Future[Any]) -> None:
        nonlocal completed, bad, in_flight
        try:
            if future.result() != expected:
                bad += 1
        except Exception:
            bad += 1
        completed += 1
        if running:
            call().add_done_callback(on_done)
        else:
            in_flight -= 1
            if not in_flight:
                drained.set_result(None)

    def snap() -> None:
        snaps.append((clock.snapshot(), completed))

    def stop() -> None:
        nonlocal running
        snap()
        running = False

    for _ in range(args.outstanding):
        call().add_done_callback(on_done)
    loop.call_later(args.warmup, snap)
    loop.call_later(args.warmup + args.seconds, stop)
    await drained
    (start, n0), (end, n1) = snaps
    pipelined = window(start, end, n1 - n0)
    outcome = {
        "runtime": f"{type(loop).__module__}.{type(loop).__name__}",
        "bad_replies": bad,
        "pipelined": pipelined,
        "sequential": None,
    }
    if args.dicts or args.bulk or not sequential:
        return outcome

    # Sequential: one call at a time, each timed.
    for _ in range(200):
        await call()
    samples: list[int] = []
    append, now = samples.append, time.perf_counter_ns
    start = clock.snapshot()
    deadline = start[0] + int(args.seconds * 1e9)
    while True:
        t0 = now()
        value = await call()
        t1 = now()
        append(t1 - t0)
        if value != expected:
            bad += 1
        if t1 >= deadline:
            break
    sequential = window(start, clock.snapshot(), len(samples))
    sequential["samples_ns"] = samples
    outcome["bad_replies"] = bad
    outcome["sequential"] = sequential
    return outcome


def client_pbfast(args: argparse.Namespace) -> dict[str, Any]:
    import pbfast

    async def main() -> dict[str, Any]:
        value = echo_argument(args)
        root = await pbfast.connect(f"tcp:host={HOST}:port={args.port}")
        try:
            return await measure_asyncio(functools.partial(root.callRemote, "echo", value), value, args)
        finally:
            await root.broker.close()

    return pbfast.run(main())


def client_raw(args: argparse.Namespace, tls: bool = False) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        size = 4 + BULK_SIZE if args.bulk else args.size or request_size()
        context = client_tls_context() if tls else None
        transport, protocol = await loop.create_connection(
            lambda: RawClient(size), HOST, args.port, ssl=context
        )
        await protocol.connected
        try:
            return await measure_asyncio(protocol.call, protocol.body, args)
        finally:
            transport.close()

    return run_uvloop(main())


class FloorClient(asyncio.Protocol):
    """The callback floor: no futures, no request ids, no dict of pending calls. Every request is
    the same frame (4-byte length + as many bytes as pbfast's request). Each read's complete reply
    frames are checked against the request and counted, and `on_replies(n)` is called once per
    read: the measurement answers them from there, with one write."""

    def __init__(self, size: int) -> None:
        self.frame = _LENGTH.pack(size) + bytes(65 + i % 26 for i in range(size))
        self.bad = 0
        self.on_replies: Callable[[int], None] = lambda n: None
        self._buf = b""
        self.connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connected.set_result(None)

    def send(self, n: int = 1) -> None:
        """`n` requests, in one write."""
        self._transport.write(self.frame if n == 1 else self.frame * n)

    def data_received(self, data: bytes) -> None:
        if self._buf:
            data = self._buf + data
        end, pos, n, frame, unpack = len(data), 0, 0, self.frame, _LENGTH.unpack_from
        while end - pos >= 4:
            frame_end = pos + 4 + unpack(data, pos)[0]
            if frame_end > end:
                break
            if frame_end - pos != len(frame) or not data.startswith(frame, pos):
                self.bad += 1
            pos, n = frame_end, n + 1
        self._buf = data[pos:]
        if n:
            self.on_replies(n)


async def measure_floor(client: FloorClient, args: argparse.Namespace) -> dict[str, Any]:
    """`measure_asyncio`'s measurement of the callback floor, with the same phases, windows and
    result, but callbacks in place of futures: pipelined, `--outstanding` requests in flight and
    each read's replies answered at once by as many new requests, in one write; sequential, each
    request written from the previous reply's callback."""
    loop = asyncio.get_running_loop()
    clock = CpuClock(args.server_pid)
    now = time.perf_counter_ns

    def sequential(count: int | None, deadline: int = 0) -> asyncio.Future[list[int]]:
        """`count` requests one after another, each timed, or (count None) until `deadline`."""
        samples: list[int] = []
        finished = loop.create_future()
        t0 = 0

        def on_replies(n: int) -> None:
            nonlocal t0
            t1 = now()
            samples.append(t1 - t0)
            if (len(samples) < count) if count is not None else (t1 < deadline):
                t0 = now()
                client.send()
            else:
                finished.set_result(samples)

        client.on_replies = on_replies
        t0 = now()
        client.send()
        return finished

    await sequential(3)
    if client.bad:
        raise AssertionError(f"{args.client}: the echo did not return the request")

    completed = 0
    running = True
    in_flight = args.outstanding
    snaps: list[tuple[tuple, int]] = []
    drained = loop.create_future()

    def on_replies(n: int) -> None:
        nonlocal completed, in_flight
        completed += n
        if running:
            client.send(n)
        else:
            in_flight -= n
            if not in_flight:
                drained.set_result(None)

    def snap() -> None:
        snaps.append((clock.snapshot(), completed))

    def stop() -> None:
        nonlocal running
        snap()
        running = False

    client.on_replies = on_replies
    client.send(args.outstanding)
    loop.call_later(args.warmup, snap)
    loop.call_later(args.warmup + args.seconds, stop)
    await drained
    (start, n0), (end, n1) = snaps
    pipelined = window(start, end, n1 - n0)

    await sequential(200)
    start = clock.snapshot()
    samples = await sequential(None, start[0] + int(args.seconds * 1e9))
    seq = window(start, clock.snapshot(), len(samples))
    seq["samples_ns"] = samples
    return {
        "runtime": f"{type(loop).__module__}.{type(loop).__name__}",
        "bad_replies": client.bad,
        "pipelined": pipelined,
        "sequential": seq,
    }


def client_floor(args: argparse.Namespace) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        size = args.size or request_size()
        transport, protocol = await loop.create_connection(lambda: FloorClient(size), HOST, args.port)
        await protocol.connected
        try:
            return await measure_floor(protocol, args)
        finally:
            transport.close()

    return run_uvloop(main())


def measure_twisted(root: Any, expected: Any, args: argparse.Namespace) -> Any:
    """The measurement of `measure_asyncio`, written with Deferred callbacks for any Twisted
    remote reference `root` (PB or foolscap) on the running reactor: the pipelined loop reissues
    a call from each call's callback. Returns a Deferred that fires with the same dict."""
    from twisted.internet import defer, reactor

    clock = CpuClock(args.server_pid)
    outcome: dict[str, Any] = {"bad_replies": 0}

    def pipelined() -> defer.Deferred:
        state = {"completed": 0, "bad": 0, "running": True, "in_flight": args.outstanding}
        snaps: list[tuple[tuple, int]] = []
        drained = defer.Deferred()

        def on_reply(value: Any) -> None:
            if value != expected:
                state["bad"] += 1
            state["completed"] += 1
            if state["running"]:
                root.callRemote("echo", 1).addCallbacks(on_reply, on_error)
            else:
                state["in_flight"] -= 1
                if not state["in_flight"]:
                    drained.callback(None)

        def on_error(failure: Any) -> None:
            state["bad"] += 1
            on_reply(expected)

        def snap() -> None:
            snaps.append((clock.snapshot(), state["completed"]))

        def stop() -> None:
            snap()
            state["running"] = False

        for _ in range(args.outstanding):
            root.callRemote("echo", 1).addCallbacks(on_reply, on_error)
        reactor.callLater(args.warmup, snap)
        reactor.callLater(args.warmup + args.seconds, stop)

        def done(_: Any) -> None:
            (start, n0), (end, n1) = snaps
            outcome["pipelined"] = window(start, end, n1 - n0)
            outcome["bad_replies"] += state["bad"]

        return drained.addCallback(done)

    def sequential(count: int | None) -> defer.Deferred:
        """`count` untimed calls one after another, or (count None) timed calls for --seconds."""
        samples: list[int] = []
        now = time.perf_counter_ns
        finished = defer.Deferred()
        start = clock.snapshot()
        deadline = start[0] + int(args.seconds * 1e9)
        t0 = 0

        def issue() -> None:
            nonlocal t0
            t0 = now()
            root.callRemote("echo", 1).addCallbacks(on_reply, finished.errback)

        def on_reply(value: Any) -> None:
            t1 = now()
            samples.append(t1 - t0)
            if value != expected:
                outcome["bad_replies"] += 1
            if (count is None and t1 < deadline) or (count is not None and len(samples) < count):
                issue()  # the new call's Deferred is unfired, so this does not recurse
            elif count is None:
                result = window(start, clock.snapshot(), len(samples))
                result["samples_ns"] = samples
                outcome["sequential"] = result
                finished.callback(None)
            else:
                finished.callback(None)

        issue()
        return finished

    @defer.inlineCallbacks
    def run() -> Any:
        for _ in range(3):
            value = yield root.callRemote("echo", 1)
            if value != expected:
                raise AssertionError(f"{args.client}: echo returned {value!r}, expected {expected!r}")
        yield pipelined()
        yield sequential(200)
        yield sequential(None)
        outcome["runtime"] = f"{type(reactor).__module__}.{type(reactor).__name__}"
        return outcome

    return run()


def run_reactor(main: Callable[[], Any]) -> Any:
    """Run Twisted's default reactor until the Deferred `main()` fires; its result (or raise)."""
    from twisted.internet import reactor

    outcome: dict[str, Any] = {}

    def finish(result: Any) -> None:
        if hasattr(result, "getTraceback"):
            outcome["error"] = result.getTraceback()
        else:
            outcome["result"] = result
        reactor.stop()

    reactor.callWhenRunning(lambda: main().addBoth(finish))
    reactor.run()
    if "error" in outcome:
        raise RuntimeError(outcome["error"])
    return outcome.get("result")


def client_twisted(args: argparse.Namespace) -> dict[str, Any]:
    """Twisted's own client on Twisted's default reactor."""
    from twisted.internet import defer, reactor
    from twisted.spread import pb

    @defer.inlineCallbacks
    def main() -> Any:
        factory = pb.PBClientFactory()
        reactor.connectTCP(HOST, args.port, factory)
        root = yield factory.getRootObject()
        outcome = yield measure_twisted(root, 1, args)
        root.broker.transport.loseConnection()
        return outcome

    return run_reactor(main)


CLIENTS = {
    PBFAST: client_pbfast,
    TWISTED: client_twisted,
    RAW: client_raw,
    FLOOR: client_floor,
    RAW_TLS: functools.partial(client_raw, tls=True),
}


# ============================================================================================
# The bench: start the processes, collect the results


@dataclass
class Result:
    system: str
    version: str = ""
    unavailable: str | None = None
    runtime: str = ""
    samples_ns: list[int] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    seq_calls: int = 0
    pipe_calls: int = 0
    bad_replies: int = 0
    # summed over rounds (`cpu_totals`)
    pipe_cpu: list[Any] = field(default_factory=cpu_totals)
    seq_cpu: list[Any] = field(default_factory=cpu_totals)

    @property
    def ok(self) -> bool:
        return self.unavailable is None and bool(self.rates)

    def median_us(self) -> float | None:
        return statistics.median(self.samples_ns) / 1e3 if self.samples_ns else None

    def p99_us(self) -> float | None:
        if not self.samples_ns:
            return None
        ordered = sorted(self.samples_ns)
        return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)] / 1e3  # nearest rank

    def throughput(self) -> float | None:
        return statistics.median(self.rates) if self.rates else None

    def spread(self) -> float:
        if not self.rates:
            return 0.0
        med = statistics.median(self.rates)
        return (max(self.rates) - min(self.rates)) / med * 100 / 2 if med else 0.0

    def measure(self, name: str) -> float | None:
        return self.throughput() if name == "throughput" else self.median_us()


def versions() -> dict[str, str | None]:
    import pbfast

    out: dict[str, str | None] = {PBFAST: pbfast.__version__}
    try:
        import twisted

        out[TWISTED] = twisted.__version__
    except ImportError:
        out[TWISTED] = None
    try:
        import uvloop

        out[RAW] = f"uvloop {uvloop.__version__}"
    except ImportError:
        out[RAW] = None
    out[FLOOR] = out[RAW_TLS] = out[RAW]
    return out


def placement(pin: str) -> tuple[int | None, int | None]:
    """The CPUs for the server and the client process (None: wherever the OS puts them)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # no sched_setaffinity on this platform
        return None, None
    if pin == "same" or (pin == "split" and len(cpus) < 2):
        return cpus[-1], cpus[-1]
    if pin == "split":
        return cpus[-2], cpus[-1]
    return None, None


def pin_args(cpu: int | None) -> list[str]:
    return [] if cpu is None else ["--cpu", str(cpu)]


def start_server(
    system: str, cpu: int | None, python: str = sys.executable
) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [python, os.path.abspath(__file__), "--serve", system, *pin_args(cpu)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        stop_server(proc)
        raise RuntimeError(f"the {system} server did not start (it printed {line!r})")
    return proc, int(line.split()[1])


def stop_server(proc: subprocess.Popen[str]) -> None:
    proc.stdin.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc.stdout.close()


def run_client(
    system: str,
    port: int,
    server_pid: int,
    budget: float,
    args: argparse.Namespace,
    size: int,
    cpu: int | None,
    python: str = sys.executable,
) -> dict:
    command = [
        python, os.path.abspath(__file__), "--client", system, "--port", str(port),
        "--seconds", repr(budget), "--warmup", repr(args.warmup), "--outstanding", str(args.outstanding),
        "--server-pid", str(server_pid), "--size", str(size), *pin_args(cpu),
        *(["--dicts"] if args.dicts else []), *(["--bulk"] if args.bulk else []),
    ]  # fmt: skip
    timeout = 60 + 10 * (2 * budget + args.warmup)
    with tempfile.TemporaryDirectory(prefix="pbfast-rpc-") as tmp:
        out = os.path.join(tmp, "result.json")
        done = subprocess.run([*command, "--out", out], stdin=subprocess.DEVNULL, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"the {system} client failed (exit status {done.returncode})")
        with open(out, encoding="utf-8") as f:
            return json.load(f)


def add_cpu(total: list[Any], part: dict[str, Any]) -> None:
    total[2] += part["calls"]
    keys = ((0, "client_cpu_s"), (1, "server_cpu_s"), (3, "client_kernel_s"), (4, "server_kernel_s"))
    for index, key in keys:
        value = part.get(key)
        total[index] = None if total[index] is None or value is None else total[index] + value


def same_build(system: str) -> tuple[str, str]:
    """How a result's processes run: this interpreter, as that system."""
    return sys.executable, system


def mb_per_second(calls_per_second: float | None) -> float | None:
    """--bulk: MB (10**6 bytes) of payload per second each way."""
    return None if calls_per_second is None else calls_per_second * BULK_SIZE / 1e6


def fmt_mb(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def mode_title(args: argparse.Namespace) -> str:
    """What a round's line adds to the system's title."""
    return " (1,000 dicts)" if args.dicts else " (1 MiB)" if args.bulk else ""


def round_line(rnd: int, args: argparse.Namespace, title: str, rate: float, seq: dict | None) -> str:
    """One round of one system, for stderr."""
    line = f"  round {rnd + 1}/{args.rounds} {title:<34} {rate:>10,.0f} calls/s pipelined"
    if args.bulk:
        line += f" ({fmt_mb(mb_per_second(rate))} MB/s)"
    if seq:
        line += f", median {statistics.median(seq['samples_ns']) / 1e3:.1f} µs sequential"
    return line


def measure(
    results: list[Result],
    args: argparse.Namespace,
    size: int,
    launch: Callable[[str], tuple[str, str]] = same_build,
    rounds: Iterable[int] | None = None,
) -> None:
    """`--rounds` rounds; in each, every system in turn gets a fresh server and client process
    and --seconds/--rounds of each measurement, the starting system rotating between rounds.
    `launch(result's system)` gives the interpreter its processes run with and the system they
    run as (another interpreter measures another build of pbfast). `rounds`: which of the rounds
    to run now (default all; compare.py runs them one at a time, interleaved with others)."""
    budget = args.seconds / args.rounds
    runnable = [r for r in results if r.unavailable is None]
    if not runnable:
        return
    server_cpu, client_cpu = placement(args.pin)
    for rnd in range(args.rounds) if rounds is None else rounds:
        order = runnable[rnd % len(runnable) :] + runnable[: rnd % len(runnable)]
        for res in order:
            python, system = launch(res.system)
            proc, port = start_server(system, server_cpu, python)
            try:
                out = run_client(system, port, proc.pid, budget, args, size, client_cpu, python)
            finally:
                stop_server(proc)
            pipe, seq = out["pipelined"], out["sequential"]
            res.runtime = out["runtime"]
            res.bad_replies += out["bad_replies"]
            res.rates.append(pipe["calls"] / pipe["elapsed_s"])
            res.pipe_calls += pipe["calls"]
            add_cpu(res.pipe_cpu, pipe)
            if seq is not None:
                res.samples_ns.extend(seq["samples_ns"])
                res.seq_calls += seq["calls"]
                add_cpu(res.seq_cpu, seq)
            title = TITLES.get(res.system, res.system) + mode_title(args)
            print(round_line(rnd, args, title, res.rates[-1], seq), file=sys.stderr)
    for res in runnable:
        if res.bad_replies:
            raise AssertionError(f"{res.system}: {res.bad_replies} calls did not echo their argument")


# --------------------------------------------------------------------------------------------
# Report


def fmt_us(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def fmt_rate(rate: float | None) -> str:
    return "–" if rate is None else f"{rate:,.0f}"


def fmt_ratio(ratio: float | None) -> str:
    if ratio is None:
        return "–"
    return f"{ratio:.1f}×" if ratio >= 10 else f"{ratio:.3f}×"  # 3 places: near a target, 1.25 is not 1.254


def per_call_us(total: list[Any], index: int) -> float | None:
    cpu, calls = total[index], total[2]
    return None if cpu is None or not calls else cpu / calls * 1e6


def cpu_per_call(total: list[Any], prefix: str = "") -> dict[str, float | None]:
    """A result's CPU per call for the JSON: client and server, in all and in the kernel."""
    return {
        f"{prefix}client_cpu_us_per_call": per_call_us(total, 0),
        f"{prefix}server_cpu_us_per_call": per_call_us(total, 1),
        f"{prefix}client_kernel_us_per_call": per_call_us(total, 3),
        f"{prefix}server_kernel_us_per_call": per_call_us(total, 4),
    }


def fmt_cpu(total: list[Any], side: int) -> str:
    """One side's (0 client, 1 server) CPU per call, with its kernel part in brackets."""
    cpu, kernel = per_call_us(total, side), per_call_us(total, side + 3)
    return fmt_us(cpu) if cpu is None or kernel is None else f"{fmt_us(cpu)} ({fmt_us(kernel)})"


def ratios(results: list[Any], targets: tuple) -> list[dict[str, Any]]:
    """Each target's ratio and verdict (None where a side did not run, or nothing is aimed at)."""
    by_name = {r.system: r for r in results}
    out = []
    for label, key, num, den, measure_name, comparison, target in targets:
        a, b = by_name.get(num), by_name.get(den)
        ratio = None
        if a and b and a.ok and b.ok:
            x, y = a.measure(measure_name), b.measure(measure_name)
            ratio = x / y if x is not None and y else None
        out.append(
            {
                "label": label,
                "key": key,
                "ratio": ratio,
                "comparison": comparison,
                "target": target,
                "verdict": verdict(ratio, comparison, target),
            }
        )
    return out


def machine_environment() -> dict[str, Any]:
    """Python, pbfast and the machine: what every benchmark's results record."""
    import pbfast
    import pbfast._core

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = None
    return {
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "pbfast_version": pbfast.__version__,
        "pbfast_build_profile": pbfast._core.build_profile,
        "pbfast_tls_aes_gcm": pbfast._core.tls_aes_gcm,
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "platform": platform.platform(),
        "machine": platform.machine(),
    }


def environment() -> dict[str, Any]:
    v = versions()
    return {
        **machine_environment(),
        "uvloop_version": v[RAW].split()[1] if v[RAW] else None,
        "twisted_version": v[TWISTED],
    }


def busy_percent(seconds: float = 0.5) -> float | None:
    """How busy the machine's CPUs were over `seconds` (Linux: /proc/stat), before we start: other
    work running meanwhile makes every number here noisy."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return sum(fields[:8]), fields[3] + fields[4]  # total, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    total = total1 - total0
    return 100.0 * (1 - (idle1 - idle0) / total) if total > 0 else None


def debug_warning() -> str:
    import pbfast._core

    return (
        f"**WARNING: pbfast._core is a `{pbfast._core.build_profile}` build, not `release`. Its numbers "
        "are meaningless. Rebuild with `maturin develop --release` or `pip install .`.**"
    )


BUSY_WARNING = 10  # percent of CPU time used by other work before the run


def busy_note(busy: float | None) -> str:
    if busy is None or busy <= BUSY_WARNING:
        return ""
    return f"; **{busy:.0f}% busy with other work just before the run: expect noisy numbers**"


def describe_pin(pin: str) -> str:
    server, client = placement(pin)
    if server is None:
        return "left to the OS"
    if server == client:
        return f"server and client both on CPU {server}"
    return f"server on CPU {server}, client on CPU {client}"


def report(results: list[Result], env: dict[str, Any], args: argparse.Namespace, size: int) -> str:
    lines = ["# RPC benchmark", ""]
    if env["pbfast_build_profile"] != "release":
        lines += [debug_warning(), ""]
    cpus = f"{env['cpu_count']}" + (
        f" ({env['cpus_usable']} usable)" if env["cpus_usable"] not in (None, env["cpu_count"]) else ""
    )
    runtimes = ", ".join(f"{TITLES[r.system]} on `{r.runtime}`" for r in results if r.ok)
    lines += [
        f"- Python {env['python']} ({env['python_implementation']})",
        f"- pbfast {env['pbfast_version']}, `pbfast._core.build_profile` = `{env['pbfast_build_profile']}`",
        f"- uvloop {env['uvloop_version'] or 'not installed'}, "
        f"Twisted {env['twisted_version'] or 'not installed'}",
        f"- Event loops: {runtimes}",
        f"- CPUs: {cpus}{busy_note(env.get('cpu_busy_before_percent'))}",
        f"- Platform: {env['platform']}",
        f"- Call: {describe_call(args)} over TCP on {HOST}, server and client in separate processes; "
        + (
            f"the raw echoes' frames: 4-byte length, 4-byte request id + {BULK_SIZE:,} bytes"
            if args.bulk
            else f"`echo(1)` request {size} bytes (the raw echoes' frames: 4-byte length + {size} bytes)"
        ),
        f"- Timing: {args.seconds:g} s per system per measurement in {args.rounds} alternating rounds "
        f"(a fresh server and client each round); warm-up {args.warmup:g} s; "
        f"pipelined with {args.outstanding} calls outstanding",
        f"- CPU placement (`--pin {args.pin}`): {describe_pin(args.pin)}",
        "",
        "| system | version | seq median µs | seq p99 µs | pipelined calls/s | MB/s each way "
        "| throughput spread | seq calls | pipelined calls |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        if not r.ok:
            lines.append(f"| {TITLES[r.system]} | {r.unavailable or 'not run'} | – | – | – | – | – | – | – |")
            continue
        mb = fmt_mb(mb_per_second(r.throughput())) if args.bulk else "–"
        lines.append(
            f"| {TITLES[r.system]} | {r.version} | {fmt_us(r.median_us())} | {fmt_us(r.p99_us())} | "
            f"{fmt_rate(r.throughput())} | {mb} | ±{r.spread():.0f}% | {r.seq_calls:,} | {r.pipe_calls:,} |"
        )
    lines += ["", "| ratio | value | target | result |", "|---|--:|--:|---|"]
    for t in ratios(results, BULK_TARGETS if args.bulk else TARGETS):
        target = fmt_target(t["comparison"], t["target"])
        lines.append(f"| {t['label']} | {fmt_ratio(t['ratio'])} | {target} | {t['verdict'] or '–'} |")
    lines += [
        "",
        "CPU time per call (µs), client and server process (in brackets, the part spent in the kernel):",
        "",
        "| system | pipelined client | pipelined server | sequential client | sequential server |",
        "|---|--:|--:|--:|--:|",
    ]
    for r in results:
        if r.ok:
            cells = [fmt_cpu(total, side) for total in (r.pipe_cpu, r.seq_cpu) for side in (0, 1)]
            lines.append(f"| {TITLES[r.system]} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def results_json(
    results: list[Result], env: dict[str, Any], args: argparse.Namespace, size: int
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "benchmark": "rpc",
        "call": describe_mode(args),
        "request_bytes": size,
        "environment": env,
        "settings": {
            "seconds": args.seconds,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "outstanding": args.outstanding,
            "dicts": args.dicts,
            "bulk": args.bulk,
            "pin": args.pin,
            "placement": describe_pin(args.pin),
        },
        "systems": {},
        "ratios": {},
    }
    for r in results:
        if not r.ok:
            out["systems"][r.system] = {"unavailable": r.unavailable or "not run"}
            continue
        out["systems"][r.system] = {
            "version": r.version,
            "runtime": r.runtime,
            "sequential": {
                "median_us": r.median_us(),
                "p99_us": r.p99_us(),
                "calls": r.seq_calls,
                **cpu_per_call(r.seq_cpu),
            },
            "pipelined": {
                "calls_per_second_median": r.throughput(),
                "calls_per_second_rounds": r.rates,
                "mb_per_second_median": mb_per_second(r.throughput()) if args.bulk else None,
                "calls": r.pipe_calls,
                **cpu_per_call(r.pipe_cpu),
            },
        }
    for t in ratios(results, BULK_TARGETS if args.bulk else TARGETS):
        out["ratios"][t["key"]] = {k: t[k] for k in ("ratio", "comparison", "target", "verdict")}
    return out


def add_timing_options(parser: argparse.ArgumentParser) -> None:
    """How long and where the systems are measured: the options rpc.py, tub.py and compare.py share."""
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="seconds per system per measurement (default: 2)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default: 3)")
    parser.add_argument(
        "--warmup",
        type=float,
        default=0.3,
        help="untimed pipelined seconds per client process (default: 0.3)",
    )
    parser.add_argument(
        "--pin",
        choices=("same", "split", "none"),
        default="same",
        help="CPU placement of each server and its client: both on one CPU (default), one CPU each, "
        "or left to the OS",
    )
    # Calls in flight in the pipelined measurement: OUTSTANDING, or DICT_OUTSTANDING with --dicts,
    # BULK_OUTSTANDING with --bulk.
    parser.add_argument("--outstanding", type=int, help=argparse.SUPPRESS)
    parser.set_defaults(dicts=False, bulk=False)  # rpc.py and tub.py have --dicts and --bulk options


def check_timing_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.dicts and args.bulk:
        parser.error("--dicts and --bulk are measured apart: give one of them")
    if args.outstanding is None:
        args.outstanding = DICT_OUTSTANDING if args.dicts else BULK_OUTSTANDING if args.bulk else OUTSTANDING
    if args.seconds <= 0 or args.rounds < 1 or args.warmup < 0 or args.outstanding < 1:
        parser.error("--seconds must be > 0, --rounds >= 1, --warmup >= 0")


def describe_mode(args: argparse.Namespace) -> str:
    """The call measured, for the JSON."""
    return "echo(1,000 dicts)" if args.dicts else "echo(1 MiB bytes)" if args.bulk else "echo(1)"


def common_parser(systems: tuple[str, ...], doc: str) -> argparse.ArgumentParser:
    """The options rpc.py and tub.py share, including their internal server/client modes."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    add_timing_options(parser)
    parser.add_argument(
        "--only",
        default=",".join(systems),
        help=f"systems to run, comma-separated (default: {','.join(systems)})",
    )
    parser.add_argument(
        "--dicts",
        action="store_true",
        help="pbfast only: echo the 1,000 small dicts of serialization.py instead of 1, pipelined with "
        f"{DICT_OUTSTANDING} calls outstanding (no sequential measurement)",
    )
    parser.add_argument(
        "--bulk",
        action="store_true",
        help=f"echo a {BULK_SIZE:,}-byte string instead of 1, pipelined with {BULK_OUTSTANDING} calls "
        "outstanding (no sequential measurement): pbfast and the raw uvloop echoes, over TCP and TLS",
    )
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="PATH",
        help="print one JSON object instead of the report; with PATH, print the report and also "
        "write the JSON to PATH",
    )
    # Internal: the server and client processes.
    parser.add_argument("--serve", choices=systems, help=argparse.SUPPRESS)
    parser.add_argument("--client", choices=systems, help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    return parser


def check_common(
    parser: argparse.ArgumentParser, args: argparse.Namespace, systems: tuple[str, ...]
) -> list[str]:
    """Validate the shared options; the systems chosen with --only."""
    check_timing_options(parser, args)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    if set(only) - set(systems) or not only:
        parser.error(f"--only takes a comma-separated subset of {','.join(systems)}")
    return only


def warm_allocator() -> None:
    """Make and free one 8 MiB block, in every server and client process of every system alike.

    A fresh process's allocator (glibc's) gives back to the OS any free memory at the top of its
    heap past a threshold that starts at 128 KiB and grows only once a large block made apart
    has been freed. Until then, 1 MiB values that come and go can make a process give its heap
    back and take it again at nearly every call, paying a page fault per 4 KiB each time (which
    process does depends on the order of its allocations: it varies from run to run and system
    to system). A process that has run for a while has raised the threshold already; this does
    it at once, so that the figures compare the systems, not their luck with the allocator."""
    block = bytearray(8 << 20)
    del block


def run_internal(args: argparse.Namespace, servers: dict[str, Any], clients: dict[str, Any]) -> bool:
    """Run this process as a server or client if asked to (``--serve``/``--client``)."""
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    if args.serve or args.client:
        warm_allocator()
    if args.serve:
        servers[args.serve]()
        return True
    if args.client:
        line = json.dumps(clients[args.client](args))
        if args.out:
            with open(args.out, "w", encoding="utf-8") as f:
                f.write(line + "\n")
        else:
            print(line, flush=True)
        return True
    return False


def preflight(env: dict[str, Any]) -> None:
    """Warn on stderr about what makes the numbers meaningless (a debug build) or noisy (a busy
    machine); records how busy the machine was in `env`."""
    if env["pbfast_build_profile"] != "release":
        banner = "!" * 78
        print(f"{banner}\n{debug_warning()}\n{banner}", file=sys.stderr)
    busy = env["cpu_busy_before_percent"] = busy_percent()
    if busy is not None and busy > BUSY_WARNING:
        print(
            f"warning: the CPUs were {busy:.0f}% busy with other work just before the run; "
            "expect noisy numbers",
            file=sys.stderr,
        )


def unavailable(system: str, version: str | None, args: argparse.Namespace) -> str | None:
    """Why `system` cannot be measured here (None: it can)."""
    if not version:
        return "not installed"
    if args.dicts and system != PBFAST:
        return "not measured with --dicts"
    if args.bulk and system not in (PBFAST, RAW, RAW_TLS):
        return "not measured with --bulk"
    if system == RAW_TLS and not args.bulk:
        return "measured with --bulk only"
    return None


def prepare(args: argparse.Namespace, only: list[str]) -> list[Result]:
    """A result for each system in `only`; those that cannot run are kept, marked unavailable."""
    have = versions()
    return [Result(s, have[s] or "", unavailable=unavailable(s, have[s], args)) for s in SYSTEMS if s in only]


def run(args: argparse.Namespace, only: list[str]) -> tuple[list[Result], dict[str, Any], int]:
    """Measure the systems in `only`: the results, the environment and the request size, for
    `report` and `results_json`."""
    env = environment()
    preflight(env)
    size = request_size()
    results = prepare(args, only)
    measure(results, args, size)
    return results, env, size


def write_json(path: str, data: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    print(f"results written to {path}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = common_parser(SYSTEMS, __doc__)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    only = check_common(parser, args, SYSTEMS)
    if run_internal(args, SERVERS, CLIENTS):
        return 0

    results, env, size = run(args, only)
    data = results_json(results, env, args, size)
    if args.json == "-":
        print(json.dumps(data, indent=2))
    else:
        print(report(results, env, args, size), end="")
    if args.json and args.json != "-":
        write_json(args.json, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
