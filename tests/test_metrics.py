"""`pbfast.metrics`: calls counted per wire, side, method and outcome with their durations, calls in
flight, bytes and connections, on both wires; the bound on method labels against a hostile peer;
the Prometheus exporters, and ``pbfast serve --metrics`` scraped over HTTP.

Counting is process-wide and cumulative, so each test compares a snapshot taken before with one
taken after. Client and server run in this process, so each call is counted on both sides here.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import pbfast
import pytest
from connections import eventually
from pbfast import metrics
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from servers import ServeProcess
from wires import connector

WIRE = {"pb": "pb", "tub": "foolscap"}


class Service(pbfast.Root):
    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.started = 0
        self.log: list[Any] = []

    def remote_echo(self, x: Any) -> Any:
        return x

    def remote_fail(self, message: str) -> None:
        raise pbfast.Error(message)

    async def remote_slow(self, delay: float) -> float:
        await asyncio.sleep(delay)
        return delay

    async def remote_wait(self) -> str:
        self.started += 1
        await self.gate.wait()
        return "opened"

    def remote_record(self, x: Any) -> None:
        self.log.append(x)


class AnyName(pbfast.Root):
    """Answers every method name, as a proxy forwarding calls would."""

    def remoteMessageReceived(self, broker: Any, message: Any, args: Any, kwargs: Any) -> Any:
        return str(message)


@pytest.fixture
def counting() -> Iterator[None]:
    """Metrics on for the test (and off again after it, as the other tests expect)."""
    metrics.enable()
    try:
        yield
    finally:
        metrics.enable(max_methods=metrics.MAX_METHODS)
        metrics.disable()


def grew(before: metrics.Snapshot, after: metrics.Snapshot, **select: str) -> tuple[int, int]:
    """How many more calls, and timed calls, the series matching `select` count."""
    calls = after.calls(**select) - before.calls(**select)
    timed = sum(s.timed for s in after.select(**select)) - sum(s.timed for s in before.select(**select))
    return calls, timed


@pytest.mark.parametrize("variant", ["pb-tcp", "tub-tls"])
def test_calls_bytes_and_connections_are_counted(run, counting: None, variant: str) -> None:
    wire = WIRE[variant.split("-")[0]]
    missing = f"no_such_method_{variant.replace('-', '_')}"

    async def main() -> None:
        metrics.disable()
        service = Service()
        opened = metrics.snapshot()
        with connector(variant) as connect:
            async with connect(service) as w:
                assert metrics.snapshot().wire(wire).connections_open >= 2

                # Off: calls and bytes are not counted.
                off = metrics.snapshot()
                assert await w.root.callRemote("echo", 1) == 1
                after = metrics.snapshot()
                assert after.series == off.series
                assert after.wire(wire).bytes_received == off.wire(wire).bytes_received

                metrics.enable()
                before = metrics.snapshot()
                for i in range(5):
                    assert await w.root.callRemote("echo", i) == i
                for _ in range(2):
                    with pytest.raises(pbfast.RemoteError):
                        await w.root.callRemote("fail", "on purpose")
                assert await w.root.callRemote("slow", 0.05) == 0.05
                with pytest.raises(pbfast.RemoteError):
                    await w.root.callRemote(missing)
                w.root.callRemoteOnly("record", 1)
                await eventually(lambda: service.log == [1])

                # Three calls under way, on both sides.
                waiting = [w.root.callRemote("wait") for _ in range(3)]
                await eventually(lambda: service.started == 3)
                during = metrics.snapshot().wire(wire)
                assert during.in_flight_server >= 3 and during.in_flight_client >= 3
                service.gate.set()
                assert await asyncio.gather(*waiting) == ["opened"] * 3

                # A call cancelled by its caller, whose answer comes later.
                service.gate = asyncio.Event()
                cancelled = w.root.callRemote("wait")
                await eventually(lambda: service.started == 4)
                cancelled.cancel()
                service.gate.set()
                await eventually(lambda: w.client.statistics()["pending"] == 0)

                # Every byte sent here was received here (both ends are in this process).
                def quiet() -> bool:
                    totals = metrics.snapshot().wire(wire)
                    return totals.bytes_sent == totals.bytes_received

                await eventually(quiet)
                after = metrics.snapshot()
                sent = after.wire(wire).bytes_sent - before.wire(wire).bytes_sent
                assert sent > 0

                # A call the connection is lost under.
                service.gate = asyncio.Event()
                lost = w.root.callRemote("wait")
                await eventually(lambda: service.started == 5)
                await w.close_client()
                with pytest.raises(pbfast.PBConnectionLost):
                    await lost
                service.gate.set()
                await asyncio.sleep(0)
        end = metrics.snapshot()

        server, client = {"wire": wire, "side": "server"}, {"wire": wire, "side": "client"}
        assert grew(before, after, **server, method="echo", outcome="ok") == (5, 5)
        assert grew(before, after, **client, method="echo", outcome="ok") == (5, 5)
        assert grew(before, after, **server, method="fail", outcome="error") == (2, 2)
        assert grew(before, after, **client, method="fail", outcome="error") == (2, 2)
        # The peer's awaitable, timed until it finished, not until it first yielded. uvloop
        # keeps its clock in whole milliseconds and may wake a 50 ms sleep a little early.
        assert grew(before, after, **server, method="slow", outcome="ok") == (1, 1)
        (slow,) = after.select(**server, method="slow", outcome="ok")
        assert slow.seconds >= 0.045 * slow.timed
        assert sum(slow.buckets[: after.bounds.index(0.025) + 1]) == 0
        assert grew(before, after, **client, method="slow", outcome="ok") == (1, 1)
        # A method that does not exist gets no label of its own where it is served (this name
        # has none: the label the client's side then makes is made once the error is back).
        assert grew(before, after, **server, method=missing) == (0, 0)
        assert grew(before, after, **server, method="(unknown)", outcome="error") == (1, 1)
        assert grew(before, after, **client, method=missing, outcome="error") == (1, 1)
        # A call that wants no answer: run there, sent here (counted, not timed).
        assert grew(before, after, **server, method="record", outcome="ok") == (1, 1)
        assert grew(before, after, **client, method="record", outcome="ok") == (1, 0)
        assert grew(before, after, **server, method="wait", outcome="ok") == (4, 4)
        assert grew(before, after, **client, method="wait", outcome="ok") == (3, 3)
        assert grew(before, after, **client, method="wait", outcome="cancelled") == (1, 0)
        assert grew(after, end, **client, method="wait", outcome="lost") == (1, 0)
        assert grew(after, end, **server, method="wait", outcome="ok") == (1, 1)
        for s in after.select(wire=wire):
            assert s.timed <= s.calls and (s.seconds > 0) == (s.timed > 0), s
        # Two connections (ours and the server's end of it) opened and closed again.
        assert end.wire(wire).connections_opened - opened.wire(wire).connections_opened == 2
        assert end.wire(wire).connections_open == opened.wire(wire).connections_open

    run(main())


@pytest.mark.parametrize("variant", ["pb-memory", "tub-loopback"])
def test_a_hostile_client_cannot_grow_the_method_labels(run, counting: None, variant: str) -> None:
    """Names of methods that do not exist get no label; names an object answers get labels only
    up to `max_methods`, then count as ``(other)``."""
    wire = WIRE[variant.split("-")[0]]
    # (Names of this test's own: the client's side, in this process too, makes labels of the
    # names it calls.)
    prefix = variant.replace("-", "_")

    def labels(snap: metrics.Snapshot) -> set[str]:
        return {s.method for s in snap.series} - {"(unknown)", "(other)"}

    async def main() -> None:
        with connector(variant) as connect:
            async with connect(Service()) as w:
                server = {"wire": wire, "side": "server"}
                before = metrics.snapshot()
                calls = [w.root.callRemote(f"hostile_{prefix}_{i}") for i in range(120)]
                for result in await asyncio.gather(*calls, return_exceptions=True):
                    assert isinstance(result, pbfast.RemoteError)
                after = metrics.snapshot()
                assert grew(before, after, **server, method="(unknown)", outcome="error") == (120, 120)
                assert not {s.method for s in after.select(**server)} - {
                    s.method for s in before.select(**server)
                }
                # (The client side counts its own calls by name: it chose them.)

            metrics.enable(max_methods=len(labels(metrics.snapshot())) + 5)
            async with connect(AnyName()) as w:
                before = metrics.snapshot()
                calls = [w.root.callRemote(f"any_{prefix}_{i}") for i in range(60)]
                assert await asyncio.gather(*calls) == [f"any_{prefix}_{i}" for i in range(60)]
                after = metrics.snapshot()
        server_names = {s.method for s in after.select(**server)} - {
            s.method for s in before.select(**server)
        }
        assert len(labels(after) - labels(before)) == 5
        assert server_names <= {f"any_{prefix}_{i}" for i in range(5)} | {"(other)"}
        assert grew(before, after, **server, method="(other)", outcome="ok")[0] == 55

    run(main())


def test_the_collector_works_in_any_registry(counting: None) -> None:
    registry = CollectorRegistry()
    collector = metrics.register(registry)
    with pytest.raises(ValueError):
        metrics.register(registry)  # pbfast's metrics are there already
    registry.unregister(collector)
    metrics.register(registry)
    families = {f.name: f for f in text_string_to_metric_families(metrics.prometheus_text().decode())}
    assert set(families) == {
        "pbfast_calls",
        "pbfast_call_duration_seconds",
        "pbfast_calls_in_flight",
        "pbfast_bytes_received",
        "pbfast_bytes_sent",
        "pbfast_connections",
        "pbfast_connections_open",
    }
    assert families["pbfast_calls"].type == "counter"
    assert families["pbfast_call_duration_seconds"].type == "histogram"
    with pytest.raises(ValueError, match="max_methods"):
        metrics.enable(max_methods=0)


def scrape(url: str) -> dict[str, Any]:
    """The families at `url`, parsed by prometheus_client's own parser."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(families: dict[str, Any], family: str, name: str, **labels: str) -> float:
    values = [
        s.value for s in families[family].samples if s.name == name and labels.items() <= s.labels.items()
    ]
    assert len(values) == 1, (family, name, labels, values)
    return float(values[0])


def test_serve_metrics_over_http() -> None:
    with ServeProcess(
        "tcp:port=0:interface=127.0.0.1", "--metrics", "tcp:port=0:interface=127.0.0.1"
    ) as server:
        (url,) = [
            line.removeprefix("metrics at: ") for line in server.lines if line.startswith("metrics at: ")
        ]

        async def calls() -> None:
            root = await pbfast.connect(server.address)
            try:
                for i in range(7):
                    assert await root.callRemote("echo", i) == i
                with pytest.raises(pbfast.RemoteError):
                    await root.callRemote("fail", "no")
                families = await asyncio.to_thread(scrape, url)
                assert sample(families, "pbfast_connections_open", "pbfast_connections_open", wire="pb") == 1
            finally:
                await root.broker.close()

        pbfast.run(calls())
        families = scrape(url)
        served = {"wire": "pb", "side": "server"}
        assert (
            sample(families, "pbfast_calls", "pbfast_calls_total", **served, method="echo", outcome="ok") == 7
        )
        assert (
            sample(families, "pbfast_calls", "pbfast_calls_total", **served, method="fail", outcome="error")
            == 1
        )
        histogram = "pbfast_call_duration_seconds"
        labels = {**served, "method": "echo", "outcome": "ok"}
        assert sample(families, histogram, f"{histogram}_count", **labels) == 7
        assert sample(families, histogram, f"{histogram}_bucket", **labels, le="+Inf") == 7
        assert 0 < sample(families, histogram, f"{histogram}_sum", **labels) < 7
        assert sample(families, "pbfast_connections", "pbfast_connections_total", wire="pb") == 1
        assert sample(families, "pbfast_bytes_received", "pbfast_bytes_received_total", wire="pb") > 0
        assert sample(families, "pbfast_bytes_sent", "pbfast_bytes_sent_total", wire="pb") > 0
        assert "process_cpu_seconds" in families  # the process's own metrics are there too

        # A scraper asking for OpenMetrics gets it; anything but GET or HEAD /metrics is refused.
        host, port = url.removeprefix("http://").split("/")[0].rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n")
            response = s.makefile("rb").read()
        assert response.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"\r\nContent-Type: application/openmetrics-text; version=1.0.0" in response
        assert response.endswith(b"# EOF\n")
        for request, status in [
            (b"POST /metrics HTTP/1.1", b"405"),
            (b"GET / HTTP/1.1", b"404"),
            (b"hi", b"400"),
        ]:
            with socket.create_connection((host, int(port)), timeout=10) as s:
                s.sendall(request + b"\r\n\r\n")
                assert s.makefile("rb").readline().split()[1] == status
        code, stderr = server.stop()
    assert code == 0, stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--metrics", "tcp:port=nope"], "--metrics:"),
        (["--metrics", "tcp:0", "--workers", "2"], "--metrics cannot be combined with --workers"),
    ],
)
def test_serve_metrics_usage_errors(args: list[str], fragment: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pbfast", "serve", *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert fragment in line
