"""Call metrics: calls per method and outcome with their durations, calls in flight, bytes and
connections, on both wires and both sides of each call, for Prometheus or your own use.

Off until `enable` is called (``pbfast serve --metrics`` calls it): counting then costs a few tens
of nanoseconds per call, off it costs nothing. Read the figures as plain data with `snapshot`, or
export them in Prometheus' text format with `prometheus_text`, a `MetricsCollector` in a
``prometheus_client`` registry (`register`), or an HTTP endpoint (`serve`). The exporters need
``prometheus-client``: ``pip install 'pbfast[metrics]'``.

Every call is counted on the side that made it (``side="client"``) and on the side that served it
(``side="server"``), whichever end of the connection opened it, under its wire (``"pb"`` or
``"foolscap"``), its method name and its outcome:

- ``ok``: a result came back (served: the method returned or its awaitable finished; a call that
  wants no answer is ``ok`` once run, or made once sent);
- ``error``: a failure came back (served: the method raised, the call was refused, or its result
  could not be sent);
- ``cancelled``: made: the caller cancelled its future before the answer came; served: the
  method's task was cancelled;
- ``lost`` (made): the connection was lost before the answer came.

Durations: for a call made, from `callRemote` until its answer is read (cancelled and lost calls,
and calls that want no answer, are counted but not timed); for a call served, from the moment
it is read until its answer is queued.

Method names come from the network, so the method label is bounded: a name gets a label of its
own only from a call that ran a method (not one sent to no object or no method, or refused
before running), and only while fewer than ``max_methods`` names have one (past that, and for
names longer than 200 bytes, the calls count under ``"(other)"``); calls that never ran, under a
name without a label of its own, count under ``"(unknown)"``. A hostile peer cannot grow the
number of series.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import _core, endpoints
from ._connection import tracked

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

__all__ = [
    "MAX_METHODS",
    "CallSeries",
    "MetricsCollector",
    "Snapshot",
    "WireTotals",
    "disable",
    "enable",
    "enabled",
    "prometheus_text",
    "register",
    "serve",
    "snapshot",
]

MAX_METHODS = 1000
"""Distinct method labels kept by default (see `enable`)."""

_WIRES = ("pb", "foolscap")

_MISSING = (
    "exporting pbfast's metrics needs prometheus-client: pip install 'pbfast[metrics]' (or prometheus-client)"
)


def enable(*, max_methods: int | None = None) -> None:
    """Start counting calls and bytes, in every connection of the process (those already open
    too). Connections are tracked whether metrics are on or not, so ``connections_open`` and
    the calls in flight are right whenever you enable them.

    Args:
        max_methods: how many distinct method names get a label of their own (default
            `MAX_METHODS`); calls of further names count under ``"(other)"``. Lowering it keeps
            the labels already made.

    Raises:
        ValueError: `max_methods` is not a positive integer.
    """
    if max_methods is not None and (
        not isinstance(max_methods, int) or isinstance(max_methods, bool) or max_methods < 1
    ):
        raise ValueError(f"max_methods must be a positive integer, not {max_methods!r}")
    _core.metrics_enable(True, max_methods)


def disable() -> None:
    """Stop counting (what was counted so far stays, and can still be read)."""
    _core.metrics_enable(False)


def enabled() -> bool:
    """Whether calls and bytes are being counted."""
    return _core.metrics_enabled()


@dataclass(frozen=True, slots=True)
class CallSeries:
    """The calls of one wire, side, method and outcome counted so far.

    Attributes:
        wire: ``"pb"`` (Twisted PB's wire) or ``"foolscap"`` (a Tub's).
        side: ``"client"`` for calls made here, ``"server"`` for calls served here.
        method: the method name, ``"(unknown)"`` or ``"(other)"`` (see the module docs).
        outcome: ``"ok"``, ``"error"``, ``"cancelled"`` or ``"lost"``.
        calls: how many.
        buckets: how many of them were timed, per duration bucket: the first counts those up to
            ``Snapshot.bounds[0]`` seconds, the next those above it up to ``bounds[1]``, ...,
            the last those above the last bound.
        seconds: the total duration of the timed calls.
    """

    wire: str
    side: str
    method: str
    outcome: str
    calls: int
    buckets: tuple[int, ...]
    seconds: float

    @property
    def timed(self) -> int:
        """How many of the calls were timed (all but cancelled and lost calls made, and calls
        made that want no answer)."""
        return sum(self.buckets)


@dataclass(frozen=True, slots=True)
class WireTotals:
    """One wire's connections, bytes and calls in flight.

    Attributes:
        wire: ``"pb"`` or ``"foolscap"``.
        connections_opened: connections made (either way) since the process started.
        connections_open: connections open now.
        bytes_received: bytes read from peers while metrics were on.
        bytes_sent: bytes written to peers while metrics were on.
        in_flight_server: the peers' calls running now (methods whose awaitable is being awaited).
        in_flight_client: our calls awaiting their answers now.
    """

    wire: str
    connections_opened: int
    connections_open: int
    bytes_received: int
    bytes_sent: int
    in_flight_server: int
    in_flight_client: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything counted, at one moment (see `snapshot`).

    Attributes:
        enabled: whether counting was on.
        max_methods: the bound on distinct method labels.
        bounds: the upper bounds of the duration buckets, in seconds (Prometheus' ``le``).
        series: every series with calls.
        wires: per wire, ``pb`` then ``foolscap``.
    """

    enabled: bool
    max_methods: int
    bounds: tuple[float, ...]
    series: tuple[CallSeries, ...]
    wires: tuple[WireTotals, ...]

    def select(
        self,
        *,
        wire: str | None = None,
        side: str | None = None,
        method: str | None = None,
        outcome: str | None = None,
    ) -> list[CallSeries]:
        """The series matching every criterion given."""
        return [
            s
            for s in self.series
            if (wire is None or s.wire == wire)
            and (side is None or s.side == side)
            and (method is None or s.method == method)
            and (outcome is None or s.outcome == outcome)
        ]

    def calls(
        self,
        *,
        wire: str | None = None,
        side: str | None = None,
        method: str | None = None,
        outcome: str | None = None,
    ) -> int:
        """How many calls the series matching every criterion given count."""
        return sum(s.calls for s in self.select(wire=wire, side=side, method=method, outcome=outcome))

    def wire(self, name: str) -> WireTotals:
        """The totals of the wire `name` (``"pb"`` or ``"foolscap"``).

        Raises:
            KeyError: no such wire.
        """
        for totals in self.wires:
            if totals.wire == name:
                return totals
        raise KeyError(f"no wire {name!r} (the wires are {', '.join(_WIRES)})")


def snapshot() -> Snapshot:
    """Everything counted so far, and the connections and calls in flight now."""
    bounds, series, traffic, max_methods = _core.metrics_collect()
    opened = tracked.opened()
    open_now = dict.fromkeys(_WIRES, 0)
    serving = dict.fromkeys(_WIRES, 0)
    awaiting = dict.fromkeys(_WIRES, 0)
    for connection in tracked.connections():
        wire = connection._WIRE
        statistics = connection.statistics()
        open_now[wire] += 1
        serving[wire] += statistics["in_flight"]
        awaiting[wire] += statistics["pending"]
    received = {wire: (inbound, outbound) for wire, inbound, outbound in traffic}
    return Snapshot(
        enabled=_core.metrics_enabled(),
        max_methods=max_methods,
        bounds=tuple(bounds),
        series=tuple(
            CallSeries(wire, side, method, outcome, calls, tuple(buckets), seconds)
            for wire, side, method, outcome, calls, seconds, buckets in series
        ),
        wires=tuple(
            WireTotals(
                wire=wire,
                connections_opened=opened.get(wire, 0),
                connections_open=open_now[wire],
                bytes_received=received[wire][0],
                bytes_sent=received[wire][1],
                in_flight_server=serving[wire],
                in_flight_client=awaiting[wire],
            )
            for wire in _WIRES
        ),
    )


# ------------------------------------------------------------------------------------ Prometheus


class MetricsCollector:
    """pbfast's metrics as a ``prometheus_client`` collector: register it in any registry (or use
    `register`). Each scrape reads a `snapshot`:

    - ``pbfast_calls_total{wire, side, method, outcome}``: calls (a counter);
    - ``pbfast_call_duration_seconds{wire, side, method, outcome}``: their durations (a
      histogram, of the series with timed calls);
    - ``pbfast_calls_in_flight{wire, side}``: calls under way (a gauge);
    - ``pbfast_bytes_received_total{wire}``, ``pbfast_bytes_sent_total{wire}``: bytes;
    - ``pbfast_connections_total{wire}``: connections made; ``pbfast_connections_open{wire}``:
      open now (a gauge).

    Raises:
        ModuleNotFoundError: (when made) ``prometheus-client`` is not installed.
    """

    def __init__(self) -> None:
        _require_prometheus()

    def describe(self) -> Iterable[Metric]:
        """The metric families, without samples (what a registry checks names with)."""
        return list(self._families(None))

    def collect(self) -> Iterable[Metric]:
        """The metric families, with a sample per series (what a registry scrapes)."""
        return list(self._families(snapshot()))

    def _families(self, snap: Snapshot | None) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        call_labels = ["wire", "side", "method", "outcome"]
        calls = CounterMetricFamily(
            "pbfast_calls", "Calls made (side=client) or served (side=server), by outcome", labels=call_labels
        )
        durations = HistogramMetricFamily(
            "pbfast_call_duration_seconds",
            "Durations of calls made (until the answer is read) and served (until it is queued)",
            labels=call_labels,
        )
        in_flight = GaugeMetricFamily(
            "pbfast_calls_in_flight",
            "Calls under way: made and awaiting answers (side=client), served and running (side=server)",
            labels=["wire", "side"],
        )
        received = CounterMetricFamily("pbfast_bytes_received", "Bytes read from peers", labels=["wire"])
        sent = CounterMetricFamily("pbfast_bytes_sent", "Bytes written to peers", labels=["wire"])
        opened = CounterMetricFamily("pbfast_connections", "Connections made, either way", labels=["wire"])
        open_now = GaugeMetricFamily("pbfast_connections_open", "Connections open now", labels=["wire"])
        if snap is not None:
            bounds = [repr(b) for b in snap.bounds] + ["+Inf"]  # as Go writes them: 1e-06, 0.0025, 1.0
            for s in snap.series:
                labels = [s.wire, s.side, s.method, s.outcome]
                calls.add_metric(labels, s.calls)
                if s.timed:
                    cumulative, total = [], 0
                    for bound, count in zip(bounds, s.buckets, strict=True):
                        total += count
                        cumulative.append((bound, float(total)))
                    durations.add_metric(labels, cumulative, s.seconds)
            for w in snap.wires:
                in_flight.add_metric([w.wire, "server"], w.in_flight_server)
                in_flight.add_metric([w.wire, "client"], w.in_flight_client)
                received.add_metric([w.wire], w.bytes_received)
                sent.add_metric([w.wire], w.bytes_sent)
                opened.add_metric([w.wire], w.connections_opened)
                open_now.add_metric([w.wire], w.connections_open)
        yield from (calls, durations, in_flight, received, sent, opened, open_now)


def register(registry: CollectorRegistry | None = None) -> MetricsCollector:
    """Register a `MetricsCollector` in `registry` (default: ``prometheus_client.REGISTRY``, the
    one ``prometheus_client``'s own exporters serve) and return it. Metrics must be on
    (`enable`) for calls and bytes to be counted.

    Raises:
        ModuleNotFoundError: ``prometheus-client`` is not installed.
        ValueError: `registry` has pbfast's metrics already.
    """
    _require_prometheus()
    from prometheus_client import REGISTRY

    collector = MetricsCollector()
    (registry if registry is not None else REGISTRY).register(collector)
    return collector


def prometheus_text() -> bytes:
    """pbfast's metrics (alone) in Prometheus' text format.

    Raises:
        ModuleNotFoundError: ``prometheus-client`` is not installed.
    """
    _require_prometheus()
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=True)
    registry.register(MetricsCollector())
    return generate_latest(registry)


async def serve(endpoint: str, *, registry: CollectorRegistry | None = None) -> endpoints.Listener:
    """Serve `registry` in Prometheus' text format at ``/metrics`` over HTTP, on the server
    endpoint `endpoint` (like ``"tcp:9464"``; see `pbfast.endpoints`), on the running loop.
    The default is a registry of pbfast's metrics alone. Close the returned listener to stop.

    Raises:
        ModuleNotFoundError: ``prometheus-client`` is not installed.
        ValueError: a malformed endpoint.
        OSError: the endpoint cannot be listened on.
    """
    _require_prometheus()
    from prometheus_client import CollectorRegistry

    if registry is None:
        registry = CollectorRegistry(auto_describe=True)
        registry.register(MetricsCollector())
    served = registry
    return await endpoints.listen(endpoint, lambda: _Exposition(served))


def _require_prometheus() -> None:
    """Raise ModuleNotFoundError, saying how to install it, unless prometheus-client is there."""
    try:
        import prometheus_client  # noqa: F401
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(_MISSING, name=e.name) from None


# Requests larger than this, or slower than `_REQUEST_TIMEOUT` seconds, are refused.
_MAX_REQUEST = 16 << 10
_REQUEST_TIMEOUT = 10.0


class _Exposition(asyncio.Protocol):
    """One HTTP connection to the metrics endpoint: one request, one response, then closed."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._request = bytearray()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._timer = asyncio.get_running_loop().call_later(_REQUEST_TIMEOUT, transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def data_received(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        self._request += data
        end = self._request.find(b"\r\n\r\n")
        if end < 0:
            if len(self._request) > _MAX_REQUEST:
                self._respond(431, "Request Header Fields Too Large", b"request too large\n")
            return
        head = bytes(self._request[:end]).split(b"\r\n")
        parts = head[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            self._respond(400, "Bad Request", b"bad request\n")
        elif parts[0] not in (b"GET", b"HEAD"):
            self._respond(405, "Method Not Allowed", b"only GET and HEAD\n", [("Allow", "GET, HEAD")])
        elif parts[1].split(b"?", 1)[0] != b"/metrics":
            self._respond(404, "Not Found", b"the metrics are at /metrics\n")
        else:
            from prometheus_client.exposition import choose_encoder

            # The format the scraper asks for, as prometheus_client's own server chooses it.
            accept = b",".join(
                v for k, _, v in (line.partition(b":") for line in head[1:]) if k.strip().lower() == b"accept"
            )
            encode, content_type = choose_encoder(accept.decode("latin-1"))
            body = encode(self._registry)
            self._respond(200, "OK", body, [("Content-Type", content_type)], head=parts[0] == b"HEAD")

    def _respond(
        self,
        status: int,
        reason: str,
        body: bytes,
        headers: list[tuple[str, str]] | None = None,
        head: bool = False,
    ) -> None:
        assert self._transport is not None
        lines = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}", "Connection: close"]
        if not headers or all(name != "Content-Type" for name, _ in headers):
            lines.append("Content-Type: text/plain; charset=utf-8")
        lines += [f"{name}: {value}" for name, value in headers or ()]
        self._transport.write("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + (b"" if head else body))
        self._transport.close()
