"""The engine of ``pbfast bench``, in process and on each event loop: the latency histogram, the
closed and open models, coordinated-omission correction, warm-up, runs that end early, the
one-second intervals, stages, scenarios, and the HdrHistogram encoding of the interval log."""

from __future__ import annotations

import asyncio
import base64
import math
import random
import re
import zlib
from pathlib import Path

import pytest
from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader
from pbfast import Error, Referenceable, RemoteError, Root
from pbfast._cli.bench import parse_threshold
from pbfast._cli.common import CommandError
from pbfast._cli.histogram import HIGHEST, Histogram
from pbfast._cli.hlog import IntervalLogWriter, encode_histogram
from pbfast._cli.loadgen import LoadPlan, run_load
from pbfast._cli.processes import split_plan
from pbfast._cli.results import Interval, Tally, merge_intervals, merge_results
from pbfast._cli.scenario import load_scenario
from pbfast._cli.stages import Stage, parse_stages
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


# ---------------------------------------------------------------------------------- intervals, stages


def test_intervals_add_up_to_the_run(run) -> None:
    async def main() -> None:
        ref, _ = await connected_pair(Service())
        intervals: list[Interval] = []
        plan = LoadPlan("echo", args=(1,), concurrency=8, duration=1.3, warmup=0.1)
        result = await run_load([ref], plan, on_interval=intervals.append)
        # A second, then the rest of the run with its last answers.
        assert [i.index for i in intervals] == [0, 1]
        assert intervals[0].length == pytest.approx(1.0, abs=0.2)
        assert sum(i.length for i in intervals) == pytest.approx(result.elapsed, abs=0.01)
        assert intervals[1].start == pytest.approx(intervals[0].end)
        total = Tally.sum(i.tally for i in intervals)
        assert total.latency == result.latency and total.ok == result.ok == result.sent > 0
        assert intervals[-1].in_flight == 0 and intervals[0].in_flight == 8

    run(main())


def test_stages_follow_the_schedule(run) -> None:
    """Each stage holds its rate for its duration (a rate of 0 pauses); its calls are counted
    apart, and the stages add up to the run."""

    async def main() -> None:
        ref, _ = await connected_pair(Service())
        stages = (Stage(0.5, 400), Stage(0.3, 0), Stage(0.5, 1000))
        intervals: list[Interval] = []
        plan = LoadPlan("echo", stages=stages, duration=None, warmup=0.1)
        result = await run_load([ref], plan, on_interval=intervals.append)
        assert [s.tally.sent for s in result.stages] == [200, 0, 500]
        for stage in result.stages:
            expected = stage.stage.rate * stage.stage.duration
            assert stage.elapsed == pytest.approx(stage.stage.duration, rel=0.15)
            assert stage.tally.completed == pytest.approx(expected, rel=0.15, abs=2)
            assert stage.throughput == pytest.approx(stage.stage.rate, rel=0.15, abs=10)
            assert stage.tally.latency.total == stage.tally.ok == stage.tally.completed
        assert result.sent == 700 and result.ok == 700
        # Intervals end where stages end, and belong to one stage each.
        assert [i.stage for i in intervals] == [0, 1, 2]
        assert Tally.sum(s.tally for s in result.stages).latency == result.latency

    run(main())


def test_stages_parse() -> None:
    assert parse_stages("10s:1000, 30s:5_000,500ms:0,2:1.5") == (
        Stage(10, 1000),
        Stage(30, 5000),
        Stage(0.5, 0),
        Stage(2, 1.5),
    )
    for text, fragment in [
        ("10s", "stage 1 '10s' is not DURATION:RATE"),
        ("10s:100,fast:1", "stage 2 'fast:1': 'fast' is not a duration"),
        ("0s:100", "the duration must be more than 0"),
        ("1s:-5", "the rate must be 0"),
        ("1s:lots", "the rate 'lots' is not a number"),
    ]:
        with pytest.raises(ValueError, match=re.escape(fragment)):
            parse_stages(text)


def test_a_plan_splits_among_processes() -> None:
    plan = LoadPlan("echo", concurrency=10, calls=7, duration=None, max_in_flight=5, stages=(Stage(1, 300),))
    shares = split_plan(plan, 3)
    assert [p.concurrency for p in shares] == [4, 3, 3]
    assert [p.calls for p in shares] == [3, 2, 2]
    assert [p.max_in_flight for p in shares] == [2, 2, 2]
    assert [p.stages for p in shares] == [(Stage(1, 100),)] * 3
    assert split_plan(LoadPlan("echo", rate=1000), 4)[0].rate == 250


def test_results_merge_exactly(run) -> None:
    """Two runs merged: counts summed, histograms added bucket by bucket (so the merged
    percentiles are those of all the calls, not an average of percentiles)."""

    async def main() -> None:
        ref, _ = await connected_pair(Service())
        fast = await run_load([ref], LoadPlan("echo", calls=300, duration=None, warmup=0, concurrency=4))
        slow = await run_load([ref], LoadPlan("slow", args=(0.02,), calls=30, duration=None, warmup=0))
        failing = await run_load([ref], LoadPlan("fail", calls=20, duration=None, warmup=0))
        merged = merge_results(fast.plan, [fast, slow, failing])
        assert merged.sent == 350 and merged.ok == 330 and merged.completed == 350
        assert merged.errors == {"remote pbfast.errors.Error": 20}
        assert merged.latency.total == 350 and merged.latency.max == slow.latency.max
        assert merged.latency.counts == [
            a + b + c
            for a, b, c in zip(fast.latency.counts, slow.latency.counts, failing.latency.counts, strict=True)
        ]
        # The slow calls are the top 8.6 % (20 ms sleeps: uvloop's timers may fire early).
        assert merged.latency.percentile(95) >= 18_000_000
        assert merged.processes == [fast, slow, failing]
        halves = merge_intervals(
            [
                Interval(0, 0.0, 1.0, 0, fast.total, 3, {"a": Tally(sent=1)}),
                Interval(0, 0.01, 1.0, 0, slow.total, 4, {"a": Tally(sent=2)}),
            ]
        )
        assert halves.tally.sent == 330 and halves.in_flight == 7 and halves.methods["a"].sent == 3
        assert halves.length == pytest.approx(1.01)

    run(main())


# ---------------------------------------------------------------------------------- scenarios


class Cart(Referenceable):
    def __init__(self) -> None:
        self.items: list[str] = []

    def remote_add(self, item: str) -> int:
        self.items.append(item)
        return len(self.items)


class Shop(Root):
    def __init__(self) -> None:
        self.paid: list[Cart] = []

    def remote_browse(self) -> list[str]:
        return ["a", "b", "c"]

    def remote_cart(self) -> Cart:
        return Cart()

    def remote_pay(self, cart: Cart) -> int:
        assert isinstance(cart, Cart)  # our own object came back, not a stand-in
        self.paid.append(cart)
        return len(cart.items)

    def remote_fail(self) -> None:
        raise Error("out of stock")


async def shop_visit(root) -> None:
    items = await root.callRemote("browse")
    cart = await root.callRemote("cart")
    for item in items:
        await cart.callRemote("add", item)
    assert await root.callRemote("pay", cart) == 3
    try:
        await root.callRemote("fail")
    except RemoteError:
        pass


def test_scenario_records_calls_by_method(run) -> None:
    """Each iteration's calls are counted under their method names, those on a reference that
    came back in an answer too; a reference passed back arrives as the original object."""

    async def main() -> None:
        shop = Shop()
        ref, _ = await connected_pair(shop)
        plan = LoadPlan("", concurrency=4, calls=40, duration=None, warmup=0, scenario="test:shop_visit")
        intervals: list[Interval] = []
        result = await run_load([ref], plan, scenario=shop_visit, on_interval=intervals.append)
        assert result.sent == result.ok == result.latency.total == 40
        assert len(shop.paid) == 40
        methods = result.methods
        assert list(methods) == ["add", "browse", "cart", "fail", "pay"]
        assert {name: t.sent for name, t in methods.items()} == {
            "add": 120,
            "browse": 40,
            "cart": 40,
            "fail": 40,
            "pay": 40,
        }
        assert methods["add"].ok == methods["add"].latency.total == 120
        assert methods["fail"].ok == 0 and methods["fail"].errors == {"remote pbfast.errors.Error": 40}
        assert methods["fail"].latency.total == 40  # a remote error is an answer
        # An iteration takes at least as long as its slowest call.
        assert result.latency.max >= max(t.latency.max for t in methods.values())
        assert sum(i.methods["add"].sent for i in intervals if "add" in i.methods) == 120

        # Open model: each arrival starts an iteration; a failing iteration counts by its error.
        async def failing_visit(root) -> None:
            await root.callRemote("browse")
            await root.callRemote("fail")

        plan = LoadPlan("", rate=200, duration=0.4, warmup=0.1, scenario="test:failing_visit")
        result = await run_load([ref], plan, scenario=failing_visit)
        assert result.sent == pytest.approx(80, abs=2)
        assert result.errors == {"remote pbfast.errors.Error": result.sent} and result.ok == 0
        assert result.methods["browse"].ok == result.methods["fail"].failed == result.sent

    run(main())


def test_scenario_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "plays.py").write_text(
        "async def visit(root): pass\ndef plain(root): pass\nasync def no_argument(): pass\nvisitor = 3\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_scenario("plays:visit").__name__ == "visit"
    for spec, fragment in [
        ("plays", "name it as module:attribute"),
        ("no_such_module:visit", "cannot import 'no_such_module'"),
        ("plays:missing", "plays has no attribute 'missing'"),
        ("plays:plain", "'plays:plain' is a plain function, not an async function"),
        ("plays:visitor", "'plays:visitor' is a int, not an async function"),
        ("plays:no_argument", "must take one argument, the root reference"),
    ]:
        with pytest.raises(CommandError, match=re.escape(fragment)):
            load_scenario(spec)


# ---------------------------------------------------------------------------------- interval log


def test_histograms_encode_as_hdrhistogram_does() -> None:
    """HdrHistogram's own decoder reads the V2 encoding back to the same counts: the buckets are
    HdrHistogram's for (1 ns, an hour, 3 digits)."""
    rng = random.Random(11)
    ours = Histogram()
    theirs = HdrHistogram(1, HIGHEST, 3)
    for _ in range(20_000):
        value = min(int(rng.lognormvariate(11, 2.5)), HIGHEST - 1)
        ours.record(value)
        theirs.record_value(value)
    decoded = HdrHistogram.decode(encode_histogram(ours))
    assert decoded.get_total_count() == 20_000
    assert decoded.get_max_value() == theirs.get_max_value()
    for percent in (0.1, 1, 10, 50, 90, 99, 99.9, 99.99):
        assert decoded.get_value_at_percentile(percent) == theirs.get_value_at_percentile(percent)
    # Byte for byte HdrHistogram's payload, but for a lone empty bucket, which Java writes as 0 and
    # the C library (behind the Python package) as a run of one.
    ours_payload = zlib.decompress(base64.b64decode(encode_histogram(ours))[8:])
    assert ours_payload[:40] == zlib.decompress(base64.b64decode(theirs.encode())[8:])[:40]
    assert HdrHistogram.decode(encode_histogram(Histogram())).get_total_count() == 0
    huge = Histogram()
    huge.record(10 * HIGHEST)  # beyond an hour: written as an hour
    assert HdrHistogram.decode(encode_histogram(huge)).get_total_count() == 1


def test_interval_log_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "run.hlog"
    first, second = Histogram(), Histogram()
    for value in (1_000, 2_000, 3_000_000):
        first.record(value)
    second.record(5_000)
    with path.open("w") as out:
        log = IntervalLogWriter(out, 1_700_000_000.25, comment="Logged with a test")
        log.interval(0.0, 1.0, first)
        log.interval(0.0, 1.0, second, tag="method:echo, twice")
        log.interval(1.0, 0.5, second)
    text = path.read_text()
    assert text.startswith(
        "#[Logged with a test]\n#[Histogram log format version 1.3]\n#[StartTime: 1700000000.250"
    )
    assert "\n#[BaseTime: 1700000000.250 (seconds since epoch)]\n" in text
    assert '"StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram"' in text
    assert "\n0.000,1.000,3.000,HISTF" in text  # MAX in milliseconds
    reader = HistogramLogReader(str(path), HdrHistogram(1, HIGHEST, 3))
    read = []
    while (histogram := reader.get_next_interval_histogram()) is not None:
        read.append((histogram.get_tag(), histogram.get_total_count(), histogram.get_start_time_stamp()))
    reader.close()
    assert read == [
        (None, 3, 1_700_000_000_250.0),
        ("method:echo__twice", 1, 1_700_000_000_250.0),
        (None, 1, 1_700_000_001_250.0),
    ]


def test_users_move_off_a_lost_connection(run) -> None:
    """One of two connections lost: its users go on over the other, and the run goes on."""

    async def main() -> None:
        services = [Service(), Service()]
        pairs = [await connected_pair(s) for s in services]
        plan = LoadPlan("echo", concurrency=8, duration=0.6, warmup=0)
        asyncio.get_running_loop().call_later(0.2, pairs[0][1].transport.abort)
        result = await run_load([ref for ref, _ in pairs], plan)
        assert result.stopped_early is None
        assert set(result.errors) <= {"PBConnectionLost"} and result.errors["PBConnectionLost"] <= 8
        calls_then = services[1].calls
        assert calls_then > services[0].calls and result.ok > 0
        assert result.latency.total == result.ok

    run(main())
