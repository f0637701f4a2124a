"""The engine of ``pbfast bench``, in process and on each event loop: the latency histogram, the
closed and open models, coordinated-omission correction, warm-up, and runs that end early."""

from __future__ import annotations

import asyncio
import math
import random

import pytest
from pbfast import Error, Root
from pbfast._cli.bench import parse_threshold
from pbfast._cli.histogram import Histogram
from pbfast._cli.loadgen import LoadPlan, run_load
from pbfast.testing import connected_pair

# ---------------------------------------------------------------------------------- histogram


def test_histogram_percentiles_within_a_thousandth() -> None:
    rng = random.Random(7)
    values = [int(rng.lognormvariate(13, 1.5)) for _ in range(50_000)]
    histogram = Histogram()
    for value in values:
        histogram.record(value)
    values.sort()
    assert histogram.total == len(values)
    assert histogram.max == values[-1]
    for percent in (0.1, 1, 50, 90, 99, 99.9, 99.99, 100):
        exact = values[max(0, math.ceil(len(values) * percent / 100) - 1)]
        got = histogram.percentile(percent)
        assert exact <= got <= exact * (1 + 1 / 1024) + 1, (percent, exact, got)
    marks = histogram.percentiles((50, 99, 99.9))
    assert marks == {p: histogram.percentile(p) for p in (50, 99, 99.9)}
    assert histogram.mean == pytest.approx(sum(values) / len(values), rel=1e-3)
    assert values[0] <= histogram.min <= values[0] * (1 + 1 / 1024)


def test_histogram_small_values_are_exact() -> None:
    histogram = Histogram()
    for value in (0, 1, 1, 2, 2047):
        histogram.record(value)
    assert [histogram.percentile(p) for p in (20, 60, 100)] == [0, 1, 2047]
    assert list(histogram.buckets()) == [(0, 0, 1), (1, 1, 2), (2, 2, 1), (2047, 2047, 1)]


def test_histogram_edges() -> None:
    empty = Histogram()
    assert empty.total == 0 and empty.percentile(99) == 0 and empty.mean == 0 and empty.stdev == 0
    huge = Histogram()
    huge.record(10**15)  # beyond an hour: counted in the top bucket, the maximum kept exactly
    assert huge.total == 1 and huge.max == 10**15 and huge.percentile(100) == 10**15
    merged = Histogram()
    merged.record(5)
    merged.add(huge)
    assert merged.total == 2 and merged.max == 10**15 and merged.min == 5


@pytest.mark.parametrize(
    ("text", "metric", "op", "value"),
    [
        ("p99>5ms", "p99", ">", 0.005),
        (" p99.9 >= 250us ", "p99.9", ">=", 0.00025),
        ("max>2", "max", ">", 0.002),  # a bare latency is in milliseconds
        ("errors>0", "errors", ">", 0),
        ("error_rate>1%", "error_rate", ">", 0.01),
        ("throughput<50_000", "throughput", "<", 50_000),
        ("late<=10", "late", "<=", 10),
    ],
)
def test_thresholds(text: str, metric: str, op: str, value: float) -> None:
    threshold = parse_threshold(text)
    assert (threshold.metric, threshold.op) == (metric, op)
    assert threshold.value == pytest.approx(value)


# ---------------------------------------------------------------------------------- runs


class Service(Root):
    def __init__(self) -> None:
        self.calls = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.open = asyncio.Event()
        self.open.set()

    def remote_echo(self, value: object = None) -> object:
        self.calls += 1
        return value

    async def remote_slow(self, seconds: float) -> None:
        self.calls += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(seconds)
        self.in_flight -= 1

    async def remote_gated(self) -> None:
        await self.open.wait()

    def remote_fail(self) -> None:
        raise Error("no")


def test_closed_model_keeps_concurrency_calls_in_flight(run) -> None:
    async def main() -> None:
        service = Service()
        ref, _ = await connected_pair(service)
        plan = LoadPlan("slow", args=(0.01,), concurrency=12, calls=120, duration=None, warmup=0)
        result = await run_load([ref], plan)
        assert result.sent == result.ok == result.completed == 120
        assert service.calls == 120
        assert service.most_in_flight == 12
        assert result.latency.total == 120
        # Every call slept 10 ms (uvloop's timers are to the millisecond, and may fire early).
        assert result.latency.min >= 8_000_000
        assert result.uncorrected is None and result.stopped_early is None

    run(main())


def test_warm_up_calls_are_not_counted(run) -> None:
    async def main() -> None:
        service = Service()
        ref, _ = await connected_pair(service)
        plan = LoadPlan("echo", args=(1,), concurrency=4, calls=200, duration=None, warmup=0.1)
        result = await run_load([ref], plan)
        assert result.ok == result.sent == result.latency.total == 200
        assert service.calls > 200  # the warm-up's calls reached the server too

    run(main())


def test_calls_spread_over_connections(run) -> None:
    async def main() -> None:
        services = [Service(), Service()]
        refs = [(await connected_pair(s))[0] for s in services]
        plan = LoadPlan("echo", concurrency=8, calls=400, duration=None, warmup=0)
        result = await run_load(refs, plan)
        assert result.ok == 400 and result.connections == 2
        assert all(s.calls >= 150 for s in services)

    run(main())


def test_errors_by_type(run) -> None:
    async def main() -> None:
        ref, _ = await connected_pair(Service())
        result = await run_load([ref], LoadPlan("fail", calls=50, duration=None, warmup=0))
        assert result.ok == 0 and dict(result.errors) == {"remote pbfast.errors.Error": 50}
        assert result.latency.total == 50  # a remote error is an answer: its round trip counts
        missing = await run_load([ref], LoadPlan("nothing_here", calls=5, duration=None, warmup=0))
        assert dict(missing.errors) == {"remote pbfast.errors.NoSuchMethod": 5}

    run(main())


def test_open_model_keeps_the_schedule(run) -> None:
    async def main() -> None:
        ref, _ = await connected_pair(Service())
        plan = LoadPlan("echo", rate=500, duration=0.5, warmup=0.1)
        result = await run_load([ref], plan)
        assert 230 <= result.sent <= 270
        assert result.ok == result.sent and result.uncorrected is not None
        assert result.uncorrected.total == result.latency.total == result.ok

    run(main())


def test_open_model_corrects_coordinated_omission(run) -> None:
    """The server stalls for 300 ms while at most one call may be in flight: the calls due
    meanwhile cannot be sent. Counted from their intended start they waited, and the corrected
    figures say so; the uncorrected ones, from the late send, do not."""

    async def main() -> None:
        service = Service()
        ref, _ = await connected_pair(service)
        plan = LoadPlan("gated", rate=200, duration=0.8, warmup=0, max_in_flight=1)

        async def stall() -> None:
            await asyncio.sleep(0.2)
            service.open.clear()
            await asyncio.sleep(0.3)
            service.open.set()

        staller = asyncio.create_task(stall())
        result = await run_load([ref], plan)
        await staller
        assert result.late >= 40  # ~60 calls were due during the stall
        assert result.max_lag >= 0.2
        corrected, uncorrected = result.latency, result.uncorrected
        assert uncorrected is not None
        assert corrected.percentile(90) >= 100_000_000  # a tenth of the calls waited 100 ms or more
        assert uncorrected.percentile(90) < 50_000_000  # sent late, each was then answered at once
        assert corrected.max >= 250_000_000 and uncorrected.max >= 250_000_000  # the stalled call itself

    run(main())


def test_a_lost_connection_ends_the_run(run) -> None:
    async def main() -> None:
        ref, server_broker = await connected_pair(Service())
        plan = LoadPlan("echo", concurrency=8, duration=5.0, warmup=0)
        asyncio.get_running_loop().call_later(0.1, server_broker.transport.abort)
        result = await run_load([ref], plan)
        assert result.stopped_early is not None and "lost the connection" in result.stopped_early
        assert result.elapsed < 2
        assert result.ok > 0

    run(main())


def test_an_interrupted_run_keeps_its_results(run) -> None:
    async def main() -> None:
        ref, _ = await connected_pair(Service())
        interrupted = asyncio.Event()
        asyncio.get_running_loop().call_later(0.2, interrupted.set)
        result = await run_load([ref], LoadPlan("echo", duration=10.0, warmup=0), interrupted=interrupted)
        assert result.stopped_early == "interrupted"
        assert result.ok > 0 and result.elapsed < 2

    run(main())


def test_unanswered_calls_count_as_errors(run) -> None:
    async def main() -> None:
        service = Service()
        service.open.clear()  # never answers
        ref, server_broker = await connected_pair(service)
        plan = LoadPlan("gated", concurrency=3, duration=0.1, warmup=0, timeout=0.2)
        result = await run_load([ref], plan)
        assert dict(result.errors) == {"no answer within 0.2 s": 3}
        service.open.set()  # let the server's calls finish before the test ends
        await asyncio.sleep(0.01)

    run(main())
