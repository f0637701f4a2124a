"""Timeouts and graceful shutdown, against peers that stay silent, stop reading or keep calls
running.

- A flood of connections that never send a byte is closed by the handshake timeout while a
  well-behaved client keeps its latency and new connections are served (a real
  ``pbfast serve`` process, both wires).
- ``idle_timeout`` (PB) and ``disconnectTimeout`` (Tub) close a silent connection and keep one
  that talks; the WARNING names the limit and the peer's address.
- SIGTERM and SIGINT end ``pbfast serve --grace`` in time although a peer does not read, after
  the call that could finish has been answered and the one that could not has been cancelled,
  with status 0 and nothing logged as an error.
- In process: what ``Server.shutdown``, ``Tub.stopService`` and ``Server.close`` answer, refuse,
  cancel and log, and how long they take.
- Listening endpoints queue 1024 connections by default.
- ``pbfast serve``'s ``--grace`` and ``-o`` usage errors.

Everything listens and connects on 127.0.0.1; every subprocess ends inside a ``with`` block.
Tests with real processes, many connections or several seconds of waiting are marked ``slow``.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import errno
import fcntl
import functools
import logging
import os
import re
import resource
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import termios
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pbfast
import pytest
from pbfast import _connection
from pbfast.furl import FURL, parse_hint
from servers import ServeProcess
from servers import tests_env as env_with_tests  # (a plain name would be collected as a test)

HOST = "127.0.0.1"
LISTEN = f"tcp:port=0:interface={HOST}"
WIRES = ("pb", "tub")


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def port_of(address: str) -> int:
    """The TCP port in what ``pbfast serve`` printed: a PB client endpoint or a FURL."""
    if address.startswith("pb://"):
        return parse_hint(FURL.parse(address).locationHints[0])[2]
    match = re.search(r":port=(\d+)", address)
    assert match, address
    return int(match[1])


def open_fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@contextlib.contextmanager
def fd_limit(needed: int):
    """Make sure this process (and the servers it starts, which inherit the limit) may open
    `needed` file descriptors; skip if the hard limit is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} open files; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def unread(transport: asyncio.BaseTransport) -> int:
    """Bytes the kernel holds for us on `transport`'s socket, not yet read."""
    count = array.array("i", [0])
    fcntl.ioctl(transport.get_extra_info("socket").fileno(), termios.FIONREAD, count)
    return count[0]


async def stops_reading(transport: asyncio.BaseTransport, *, at_least: int = 32 << 10) -> int:
    """Wait until the peer behind `transport` is blocked writing to us: the bytes waiting unread
    in our socket stop growing (our transport has stopped reading); how many there are."""
    last = -1
    for _ in range(100):
        await asyncio.sleep(0.2)
        now = unread(transport)
        if now == last and now >= at_least:
            return now
        last = now
    raise AssertionError(f"the peer never filled our receive buffer ({last} bytes unread)")


def timed_stop(server: ServeProcess, sig: signal.Signals, timeout: float) -> tuple[int, float]:
    """Send `sig`; the exit status and the seconds from the signal to the exit."""
    started = time.monotonic()
    code, _ = server.stop(sig, timeout)
    return code, time.monotonic() - started


class IdleFlood:
    """`count` TCP connections to `port` that never send a byte, opened and watched by a
    thread: each is timed from its connect until the server closes it (EOF or reset)."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.count = count
        self.opened: dict[int, float] = {}  # our end's port -> when it connected
        self.closed: dict[int, float] = {}  # our end's port -> when the server closed it
        self.connected = threading.Event()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> IdleFlood:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10)

    @property
    def done(self) -> bool:
        return len(self.closed) == self.count or self.error is not None

    def close_times(self) -> list[float]:
        return [self.closed[port] - self.opened[port] for port in self.closed]

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        sockets: list[socket.socket] = []
        try:
            for _ in range(self.count):
                sock = socket.create_connection((HOST, self.port), timeout=10)
                sockets.append(sock)
                sock.setblocking(False)
                port = sock.getsockname()[1]
                self.opened[port] = time.monotonic()
                selector.register(sock, selectors.EVENT_READ, port)
                self._watch(selector, 0)
            self.connected.set()
            while not self.done and not self._stop.is_set():
                self._watch(selector, 0.05)
        except BaseException as e:
            self.error = e
        finally:
            self.connected.set()
            for sock in sockets:
                sock.close()
            selector.close()

    def _watch(self, selector: selectors.BaseSelector, timeout: float) -> None:
        for key, _ in selector.select(timeout):
            try:
                data = key.fileobj.recv(1 << 16)  # type: ignore[union-attr]
            except ConnectionError:
                data = b""
            if not data:
                self.closed[key.data] = time.monotonic()
                selector.unregister(key.fileobj)


class Steady:
    """Calls ``call()`` every `interval` seconds, whether or not the earlier calls have been
    answered (an open loop: a server that stalls delays every call due meanwhile), and times
    each answer."""

    def __init__(self, call: Callable[[], asyncio.Future[Any]], interval: float = 0.005) -> None:
        self._call = call
        self._interval = interval
        self.latencies: list[float] = []
        self.errors: list[BaseException] = []
        self._running = True
        self._pending: set[asyncio.Future[Any]] = set()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Steady:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._running = False
        assert self._task is not None
        await self._task
        if self._pending:
            await asyncio.wait(self._pending, timeout=10)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while self._running:
            started = loop.time()
            future = self._call()
            self._pending.add(future)
            future.add_done_callback(functools.partial(self._done, started=started))
            due += self._interval
            await asyncio.sleep(max(0.0, due - loop.time()))

    def _done(self, future: asyncio.Future[Any], *, started: float) -> None:
        self._pending.discard(future)
        if future.cancelled():
            self.errors.append(asyncio.CancelledError())
        elif future.exception() is not None:
            self.errors.append(future.exception())  # type: ignore[arg-type]
        else:
            self.latencies.append(asyncio.get_running_loop().time() - started)


@dataclass
class Client:
    """A client of either wire: `ref` is the served object (its `broker` the connection), `tub`
    the client's own Tub on the Tub wire."""

    ref: Any
    tub: pbfast.Tub | None = None

    @property
    def broker(self) -> Any:
        return self.ref.broker

    def call(self, method: str, *args: Any) -> asyncio.Future[Any]:
        return self.ref.callRemote(method, *args)

    async def close(self) -> None:
        if self.tub is not None:
            await self.tub.stopService(grace=0)
        else:
            await self.ref.broker.close()


async def open_client(wire: str, address: str) -> Client:
    """Connect to what ``pbfast serve`` printed (a PB endpoint, or with ``--tub`` a FURL)."""
    if wire == "pb":
        return Client(await pbfast.connect(address, timeout=10))
    tub = pbfast.Tub()
    try:
        return Client(await asyncio.wait_for(tub.getReference(address), 10), tub)
    except BaseException:
        await tub.stopService(grace=0)
        raise


@contextlib.asynccontextmanager
async def client(wire: str, address: str) -> AsyncIterator[Client]:
    c = await open_client(wire, address)
    try:
        yield c
    finally:
        await c.close()


def error_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.levelname} {r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]


def debug_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]


# ------------------------------------------------------------------------------------------------
# 1. A flood of connections that never send a byte
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("wire", WIRES)
def test_idle_flood_is_closed_by_the_handshake_timeout(run, wire: str) -> None:
    """1,000 connections that send nothing are each closed once the handshake timeout (2 s) has
    run out — on the Tub too: a silent connection never starts the upgrade, let alone TLS, so
    it costs a Tub no more than a PB server. Meanwhile a well-behaved client calling every 5 ms
    keeps a p99 under 50 ms and a new connection (connect, handshake, one call) is served at
    once. Each expiry is one WARNING line naming the limit and that connection's address."""
    count, timeout = 1000, 2
    limit = "handshake_timeout" if wire == "pb" else "negotiationTimeout"
    args = [LISTEN, "--object", "hostile_target:Target", "-o", f"{limit}={timeout}"]
    if wire == "tub":
        args.insert(0, "--tub")
    with fd_limit(2 * count + 200), ServeProcess(*args) as server:
        port = port_of(server.address)

        async def main() -> dict[str, Any]:
            loop = asyncio.get_running_loop()
            fds_before, own_before = open_fds(server.pid), open_fds()
            async with client(wire, server.address) as good:
                for i in range(20):  # warm up
                    assert await good.call("echo", i) == i
                async with Steady(lambda: good.call("echo", "x")) as steady:
                    with IdleFlood(port, count) as flood:
                        await loop.run_in_executor(None, flood.connected.wait, 30)
                        assert flood.error is None, flood.error
                        connected = max(flood.opened.values())
                        fds_flooded = open_fds(server.pid)
                        while fds_flooded < fds_before + count and time.monotonic() - connected < 1:
                            await asyncio.sleep(0.02)  # the server is still accepting
                            fds_flooded = open_fds(server.pid)
                        # A new connection while the 1,000 are still waiting for their timeout.
                        started = loop.time()
                        async with client(wire, server.address) as new:
                            assert await new.call("echo", "new") == "new"
                        new_connection = loop.time() - started
                        assert time.monotonic() - connected < timeout, "the flood took too long to open"
                        deadline = connected + timeout + 10
                        while not flood.done and time.monotonic() < deadline:
                            await asyncio.sleep(0.05)
                    await asyncio.sleep(0.3)  # a little of the calm after the flood too
                assert await good.call("echo", "after") == "after"
                assert not good.broker.disconnected
            await asyncio.sleep(0.2)
            return {
                "ports": set(flood.opened),
                "closed": len(flood.closed),
                "error": flood.error,
                "close_times": flood.close_times(),
                "latencies": steady.latencies,
                "errors": steady.errors,
                "new_connection": new_connection,
                "fds": (fds_before, fds_flooded, open_fds(server.pid)),
                "own_fds": (own_before, open_fds()),
            }

        got = run(main(), timeout=90)
        code, stderr = server.stop(signal.SIGTERM)

    assert got["error"] is None, got["error"]
    assert got["closed"] == count, f"{count - got['closed']} connections were never closed"
    times = got["close_times"]
    # Closed by the timeout, not before it, and not long after it.
    assert min(times) >= timeout - 0.25, min(times)
    assert max(times) <= timeout + 3, max(times)
    latencies = got["latencies"]
    assert not got["errors"], got["errors"][:3]
    assert len(latencies) > 300, len(latencies)
    p99 = percentile(latencies, 0.99)
    assert p99 < 0.05, f"p99 {p99 * 1000:.1f} ms over {len(latencies)} calls"
    assert got["new_connection"] < 5, got["new_connection"]
    before, flooded, after = got["fds"]
    assert flooded >= before + count, got["fds"]  # the server held every connection...
    assert after <= before + 5, got["fds"]  # ...and let go of each one
    assert got["own_fds"][1] <= got["own_fds"][0] + 5, got["own_fds"]
    assert code == 0
    pattern = re.compile(rf"peer {re.escape(HOST)}:(\d+) reached {limit}={timeout}\b")
    lines = stderr.splitlines()
    warned = collections.Counter(int(m[1]) for line in lines if (m := pattern.search(line)))
    # One WARNING for each connection of the flood, and for no other.
    assert set(warned) == got["ports"], (len(warned), len(got["ports"]), lines[:3])
    assert set(warned.values()) == {1}, warned.most_common(3)
    assert not any("Traceback" in line for line in lines)
    print(
        f"\n{wire}: {count} idle connections closed after {min(times):.2f}-{max(times):.2f} s "
        f"(median {statistics.median(times):.2f}); {len(latencies)} calls meanwhile, p99 "
        f"{p99 * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms; new connection "
        f"{got['new_connection'] * 1000:.0f} ms; server fds {got['fds']}"
    )


# ------------------------------------------------------------------------------------------------
# 2. A silent connection after the handshake
# ------------------------------------------------------------------------------------------------


class Slow(pbfast.Root):
    """echo, payload and slow, recording which slow calls started, finished or were cancelled."""

    def __init__(self) -> None:
        self.started: list[Any] = []
        self.finished: list[Any] = []
        self.cancelled: list[Any] = []

    def remote_echo(self, value: Any) -> Any:
        return value

    def remote_payload(self, size: int) -> bytes:
        return b"x" * size

    async def remote_slow(self, seconds: float, value: Any) -> Any:
        self.started.append(value)
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self.cancelled.append(value)
            raise
        self.finished.append(value)
        return value


@contextlib.asynccontextmanager
async def pb_server(root: pbfast.Root, **options: Any) -> AsyncIterator[tuple[pbfast.Server, str]]:
    server = await pbfast.serve(root, LISTEN, **options)
    try:
        yield server, f"tcp:host={HOST}:port={server.port}"
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), 15)


@contextlib.asynccontextmanager
async def tub_server(root: pbfast.Root, **options: Any) -> AsyncIterator[tuple[pbfast.Tub, str]]:
    tub = pbfast.Tub(**options)
    try:
        listener = await tub.listenOn(LISTEN)
        tub.setLocation(f"tcp:{HOST}:{listener.port}")
        yield tub, tub.registerReference(root, "root")
    finally:
        await tub.stopService(grace=0)


@contextlib.asynccontextmanager
async def serving(wire: str, root: pbfast.Root, **options: Any) -> AsyncIterator[tuple[Any, str]]:
    """A PB server or a Tub serving `root`, and the address to reach it."""
    if wire == "pb":
        async with pb_server(root, **options) as got:
            yield got
    else:
        async with tub_server(root, **options) as got:
            yield got


def local_address(c: Client) -> str:
    host, port = c.broker.transport.get_extra_info("sockname")[:2]
    return f"{host}:{port}"


@pytest.mark.parametrize("wire", WIRES)
def test_idle_timeout_closes_a_silent_connection(run, caplog, wire: str) -> None:
    """A connection that falls silent after its handshake is closed once it has been silent for
    `idle_timeout` (PB) or `disconnectTimeout` (Tub); one that keeps calling stays open. The
    WARNING names the limit and the silent peer's address, and no other peer's."""
    caplog.set_level(logging.INFO, logger="pbfast")
    idle = 0.4
    limit = "idle_timeout" if wire == "pb" else "disconnectTimeout"
    # (The serving Tub sends no keepalives: the silent peer's answers would be data.)
    options = {limit: idle} if wire == "pb" else {limit: idle, "keepaliveTimeout": None}

    async def main() -> float:
        loop = asyncio.get_running_loop()
        async with serving(wire, Slow(), **options) as (_, address):
            silent = await open_client(wire, address)
            chatty = await open_client(wire, address)
            try:
                assert await silent.call("echo", 1) == 1
                quiet_since = loop.time()
                lost = loop.create_future()
                silent.broker.notifyOnDisconnect(lambda: lost.done() or lost.set_result(loop.time()))
                # The chatty client calls every idle/4 s, for 4 idle periods.
                for i in range(16):
                    assert await chatty.call("echo", i) == i
                    await asyncio.sleep(idle / 4)
                closed_after = await asyncio.wait_for(lost, 5) - quiet_since
                assert not chatty.broker.disconnected
                assert await chatty.call("echo", "still here") == "still here"
                with pytest.raises(pbfast.DeadReferenceError):
                    await silent.call("echo", 2)
                silent_at, chatty_at = local_address(silent), local_address(chatty)
            finally:
                await silent.close()
                await chatty.close()
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len([w for w in warnings if f"reached {limit}={idle}" in w]) == 1, warnings
        [warning] = [w for w in warnings if limit in w]
        assert f"peer {silent_at} " in warning, warning
        assert chatty_at not in "\n".join(warnings), warnings
        return closed_after

    closed_after = run(main())
    assert idle - 0.05 <= closed_after <= idle + 1.0, closed_after
    assert not error_records(caplog)


# ------------------------------------------------------------------------------------------------
# 3. SIGTERM and SIGINT while a peer does not read
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("wire", WIRES)
def test_signal_with_a_peer_that_does_not_read(run, wire: str, sig: signal.Signals) -> None:
    """``pbfast serve --grace 2``: one client has stopped reading and filled the server's send
    buffers; another has a 0.5 s call running, and a 30 s one. On the signal the 0.5 s call
    still gets its answer; the non-reading peer holds the server until the grace period ends
    and no longer, when the 30 s call is cancelled: the process exits with status 0 within
    grace + 2 s, having logged the cancelled call at DEBUG, and no error or traceback."""
    grace = 2.0
    # PB sends strings up to 640 KiB; each answer is one of those.
    size, calls = (600_000, 50) if wire == "pb" else (1_000_000, 30)
    args = [LISTEN, "--object", "shutdown_target:Target", "--grace", str(grace)]
    if wire == "tub":
        args.insert(0, "--tub")
    with ServeProcess(*args) as server:

        async def main() -> dict[str, Any]:
            good = await open_client(wire, server.address)
            hog = await open_client(wire, server.address)
            try:
                hog.broker.transport.pause_reading()
                hogged = [hog.call("payload", size) for _ in range(calls)]
                unread_bytes = await stops_reading(hog.broker.transport)
                answer = good.call("slow", 0.5, "in time")
                stuck = good.call("slow", 30, "too late")
                for _ in range(100):
                    if (await good.call("running"))["running"] == 2:
                        break
                    await asyncio.sleep(0.01)
                else:
                    raise AssertionError("the slow calls never started")
                signalled = time.monotonic()
                stopping = asyncio.ensure_future(asyncio.to_thread(timed_stop, server, sig, grace + 10))
                assert await asyncio.wait_for(answer, grace) == "in time"
                answered_after = time.monotonic() - signalled
                code, elapsed = await stopping
                with pytest.raises(pbfast.PBConnectionLost):
                    await asyncio.wait_for(stuck, 5)
                hog.broker.transport.abort()
                outcomes = await asyncio.gather(*hogged, return_exceptions=True)
            finally:
                await good.close()
                await hog.close()
            return {
                "code": code,
                "elapsed": elapsed,
                "answered_after": answered_after,
                "unread": unread_bytes,
                "answered": sum(1 for o in outcomes if not isinstance(o, BaseException)),
            }

        got = run(main(), timeout=60)

    lines = server.stderr().splitlines()
    assert got["code"] == 0, lines
    # The peer that does not read kept the server for the grace period, and no longer.
    assert grace - 0.5 <= got["elapsed"] <= grace + 2, got["elapsed"]
    assert got["answered_after"] < grace, got["answered_after"]
    assert got["answered"] < calls, "the peer that does not read was answered in full"
    assert not any("Traceback" in line for line in lines), "\n".join(lines)
    assert not [line for line in lines if line.startswith(("ERROR", "CRITICAL"))], "\n".join(lines)
    cut = [line for line in lines if line.startswith("DEBUG") and "cut off: still busy after the" in line]
    assert len(cut) == 2, "\n".join(lines)  # the peer that does not read, and the 30 s call's
    cancelled = [line for line in lines if line.startswith("DEBUG") and "cancelling 1 running call" in line]
    assert len(cancelled) == 1, "\n".join(lines)
    print(
        f"\n{wire} {sig.name}: exit {got['code']} {got['elapsed']:.2f} s after the signal "
        f"(grace {grace}); running call answered after {got['answered_after']:.2f} s; "
        f"{got['unread'] >> 10} KiB left unread by the peer that stopped reading"
    )


# ------------------------------------------------------------------------------------------------
# 4. Shutting down in process
# ------------------------------------------------------------------------------------------------


async def hog_the_server(c: Client, wire: str) -> list[asyncio.Future[Any]]:
    """Stop reading on `c` and ask for answers until the server is blocked writing to it."""
    c.broker.transport.pause_reading()
    size, calls = (600_000, 50) if wire == "pb" else (1_000_000, 30)
    hogged = [c.call("payload", size) for _ in range(calls)]
    await stops_reading(c.broker.transport)
    return hogged


async def settle_hog(c: Client, hogged: list[asyncio.Future[Any]]) -> None:
    c.broker.transport.abort()
    await asyncio.gather(*hogged, return_exceptions=True)


@pytest.mark.parametrize("wire", WIRES)
def test_shutdown_grace(run, caplog, wire: str) -> None:
    """``server.shutdown(grace)`` / ``tub.stopService(grace)``: a call running when it starts
    is answered if it finishes within the grace period; a call arriving meanwhile gets an error
    reply and does not run; once the grace period is over a call still running is cancelled
    (its caller gets PBConnectionLost), which is logged at DEBUG and not as an error. A peer
    that does not read does not make it last longer than the grace period."""
    caplog.set_level(logging.DEBUG, logger="pbfast")
    grace = 1.0

    async def main() -> float:
        loop = asyncio.get_running_loop()
        root = Slow()
        async with serving(wire, root) as (server, address):
            calling = await open_client(wire, address)
            hog = await open_client(wire, address)
            try:
                hogged = await hog_the_server(hog, wire)
                quick = calling.call("slow", 0.3, "quick")
                stuck = calling.call("slow", 30, "stuck")
                await wait_until(lambda: len(root.started) == 2, what="two calls to start")
                started = loop.time()
                stopping = asyncio.ensure_future(
                    server.shutdown(grace) if wire == "pb" else server.stopService(grace)
                )
                await asyncio.sleep(0.05)
                with pytest.raises(pbfast.RemoteError, match="shutting down: the call was not run"):
                    await asyncio.wait_for(calling.call("slow", 0, "late"), 2)
                assert await asyncio.wait_for(quick, 2) == "quick"
                assert not stopping.done()
                await asyncio.wait_for(stopping, grace + 5)
                took = loop.time() - started
                with pytest.raises(pbfast.PBConnectionLost):
                    await asyncio.wait_for(stuck, 2)
                assert root.started == ["quick", "stuck"]  # "late" never ran
                assert root.finished == ["quick"]
                assert root.cancelled == ["stuck"]
                await settle_hog(hog, hogged)
            finally:
                await calling.close()
                await hog.close()
        return took

    took = run(main())
    assert grace - 0.1 <= took <= grace + 0.5, took
    assert not error_records(caplog), error_records(caplog)
    debug = debug_messages(caplog)
    assert any("cancelling 1 running call(s)" in m for m in debug), debug


def test_server_close_with_a_running_call(run, caplog, monkeypatch) -> None:
    """``server.close()`` and ``wait_closed()``: returns promptly with a call running, which is
    cancelled (its caller gets PBConnectionLost; nothing logged as an error); a peer that does
    not read is cut off after CLOSE_TIMEOUT, not before."""
    caplog.set_level(logging.DEBUG, logger="pbfast")
    monkeypatch.setattr(_connection, "CLOSE_TIMEOUT", 0.5)

    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        root = Slow()
        async with pb_server(root) as (server, address):
            calling = await open_client("pb", address)
            try:
                stuck = calling.call("slow", 30, "stuck")
                await wait_until(lambda: root.started == ["stuck"], what="the call to start")
                started = loop.time()
                server.close()
                await asyncio.wait_for(server.wait_closed(), 5)
                plain = loop.time() - started
                with pytest.raises(pbfast.PBConnectionLost):
                    await asyncio.wait_for(stuck, 2)
                await wait_until(lambda: root.cancelled == ["stuck"], 2, what="the call to be cancelled")
            finally:
                await calling.close()

        async with pb_server(root) as (server, address):
            hog = await open_client("pb", address)
            try:
                hogged = await hog_the_server(hog, "pb")
                started = loop.time()
                server.close()
                await asyncio.wait_for(server.wait_closed(), 5)
                hogging = loop.time() - started
                await settle_hog(hog, hogged)
            finally:
                await hog.close()
        return plain, hogging

    plain, hogging = run(main())
    assert plain < 0.5, plain
    assert 0.4 <= hogging <= 1.5, hogging
    assert not error_records(caplog), error_records(caplog)


# ------------------------------------------------------------------------------------------------
# 5. The listen backlog
# ------------------------------------------------------------------------------------------------


def connects_completed(port: int, count: int, wait: float) -> int:
    """Start `count` connections to `port` at once, without letting the server's loop run (so it
    accepts none); how many the kernel completed within `wait` seconds. A connection beyond the
    listen backlog waits for the SYN to be sent again (a second or more)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sockets.append(sock)
            sock.setblocking(False)
            err = sock.connect_ex((HOST, port))
            assert err in (0, errno.EINPROGRESS), os.strerror(err)
        selector = selectors.DefaultSelector()
        for sock in sockets:
            selector.register(sock, selectors.EVENT_WRITE)
        completed = 0
        deadline = time.monotonic() + wait
        while completed < count and (left := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(left):
                selector.unregister(key.fileobj)
                if key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:  # type: ignore[union-attr]
                    completed += 1
        selector.close()
        return completed
    finally:
        for sock in sockets:
            sock.close()


@pytest.mark.slow
def test_listen_backlog_defaults_to_1024(run) -> None:
    """An endpoint without ``backlog=`` queues 1,000 connections the server has not accepted
    yet; with ``backlog=16`` most of them wait."""
    with open("/proc/sys/net/core/somaxconn") as f:
        if int(f.read()) < 1024:
            pytest.skip("net.core.somaxconn caps the listen backlog below 1024")
    count = 1000

    async def main() -> tuple[int, int]:
        got = []
        for endpoint in (LISTEN, f"{LISTEN}:backlog=16"):
            server = await pbfast.serve(Slow(), endpoint)
            try:
                # Blocking calls on purpose: the loop, and so the server, accepts nothing meanwhile.
                got.append(connects_completed(server.port, count, 1.0 if endpoint == LISTEN else 0.3))
            finally:
                server.close()
                await asyncio.wait_for(server.wait_closed(), 10)
        return got[0], got[1]

    with fd_limit(2 * count + 200):
        default, small = run(main())
    assert default == count, default
    assert small < 100, small
    print(f"\n{default} of {count} connects queued with the default backlog, {small} with backlog=16")


# ------------------------------------------------------------------------------------------------
# 6. pbfast serve's usage errors
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--grace", "soon"], ["--grace", "'soon' is not a duration"]),
        (["--grace", "-1"], ["--grace", "'-1' is not a duration"]),
        (["--grace", "nan"], ["--grace", "'nan' is not a duration"]),
        (["-o", "handshake_timeout=-1"], ["handshake_timeout", "positive number"]),
        (["-o", "handshake_timeout=fast"], ["handshake_timeout", "not a Python literal"]),
        (["-o", "handshake_timeout"], ["--option takes NAME=VALUE", "'handshake_timeout'"]),
        (["-o", "no_such_option=1"], ["unknown option", "no_such_option"]),
        (["-o", "negotiationTimeout=2"], ["unknown option", "negotiationTimeout"]),
        (["--tub", "-o", "no_such_option=1"], ["unknown Tub option", "no_such_option"]),
        (["--tub", "-o", "negotiationTimeout=0"], ["positive number"]),
    ],
)
def test_serve_usage_errors(args: list[str], fragments: list[str]) -> None:
    """A bad ``--grace`` or ``-o`` value, or an unknown option, is one line on stderr and exit
    status 2, before anything listens."""
    result = subprocess.run(
        [sys.executable, "-m", "pbfast", "serve", LISTEN, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env_with_tests(),
    )
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback (most recent call last)" not in result.stderr
    assert not result.stdout, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pbfast serve: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
