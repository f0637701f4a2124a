"""What a load run measured, and how measurements add up: a run's one-second intervals add up to
its stages and its total, and the runs of several load processes add up to one (histograms
bucket by bucket, counts summed: exactly, not by averaging percentiles)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import RemoteError
from .histogram import Histogram
from .stages import Stage

__all__ = [
    "LoadPlan",
    "Tally",
    "Interval",
    "StageResult",
    "LoadResult",
    "error_name",
    "merge_intervals",
    "merge_results",
]

_NS = 1_000_000_000


def error_name(error: BaseException) -> str:
    """How a failed call is counted: ``remote <type>`` for a remote error, else the local
    exception's type."""
    if isinstance(error, RemoteError):
        return f"remote {error.remoteType}"
    return type(error).__name__


@dataclass(frozen=True)
class LoadPlan:
    """What to send, and how. Exactly one of `duration` and `calls` is set, unless `stages` is
    (the stages' durations add up to the run's).

    The closed model (`rate` None, no `stages`) keeps `concurrency` calls (or scenario
    iterations) in flight; the open model starts them at `rate` per second, or at each stage's
    rate in turn. `scenario` names the scenario function (``module:function``) when there is
    one; `method`, `args` and `kwargs` are the call otherwise."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    concurrency: int = 64
    rate: float | None = None
    duration: float | None = 10.0
    calls: int | None = None
    warmup: float = 1.0
    timeout: float = 10.0
    max_in_flight: int = 10_000
    stages: tuple[Stage, ...] = ()
    scenario: str | None = None

    @property
    def model(self) -> str:
        return "open" if self.rate is not None or self.stages else "closed"

    @property
    def schedule(self) -> tuple[Stage, ...]:
        """The open model's measured stages (one for a plain --rate; empty when closed)."""
        if self.stages:
            return self.stages
        if self.rate is None:
            return ()
        return (Stage(self.duration if self.duration is not None else float("inf"), self.rate),)


@dataclass
class Tally:
    """What a span of a run counted (an interval, a stage, the run, one method of a scenario).

    Latencies are nanoseconds; in the open model from each call's intended start (`uncorrected`:
    from its actual send)."""

    #: Calls (or scenario iterations) started.
    sent: int = 0
    #: Answered with a result.
    ok: int = 0
    #: Failed, by kind: ``remote <type>`` for remote errors, else the local exception's type.
    errors: Counter[str] = field(default_factory=Counter)
    #: Every answer (a result or a remote error): a remote error is an answer, its round trip counts.
    latency: Histogram = field(default_factory=Histogram)
    uncorrected: Histogram | None = None
    #: Open model: calls sent more than LATE_AFTER behind their schedule, and the worst lag (ns).
    late: int = 0
    max_lag: int = 0

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    @property
    def completed(self) -> int:
        return self.ok + self.failed

    def add(self, other: Tally) -> None:
        self.sent += other.sent
        self.ok += other.ok
        self.errors.update(other.errors)
        self.latency.add(other.latency)
        if other.uncorrected is not None:
            if self.uncorrected is None:
                self.uncorrected = Histogram()
            self.uncorrected.add(other.uncorrected)
        self.late += other.late
        self.max_lag = max(self.max_lag, other.max_lag)

    @classmethod
    def sum(cls, tallies: Iterable[Tally]) -> Tally:
        total = cls()
        for tally in tallies:
            total.add(tally)
        return total


@dataclass
class Interval:
    """About a second of a run (shorter where a stage ends, or at the end): what was sent and
    what was answered in it."""

    #: 0 for the first second after the warm-up.
    index: int
    #: Seconds from the end of the warm-up to the start of this interval, and its length.
    start: float
    length: float
    #: Index in the plan's schedule (0 when there are no stages).
    stage: int
    tally: Tally
    #: Calls in flight at its end.
    in_flight: int
    #: With a scenario: each method's calls.
    methods: dict[str, Tally] = field(default_factory=dict)
    #: When the run's measurement started (seconds since the epoch).
    began_at: float = 0.0

    @property
    def end(self) -> float:
        return self.start + self.length


def merge_intervals(intervals: list[Interval]) -> Interval:
    """The same interval of several processes as one."""
    first = intervals[0]
    methods: dict[str, Tally] = {}
    for interval in intervals:
        for name, tally in interval.methods.items():
            methods.setdefault(name, Tally()).add(tally)
    start = min(i.start for i in intervals)
    return Interval(
        index=first.index,
        start=start,
        length=max(i.end for i in intervals) - start,
        stage=max(i.stage for i in intervals),
        tally=Tally.sum(i.tally for i in intervals),
        in_flight=sum(i.in_flight for i in intervals),
        methods=methods,
        began_at=min(i.began_at for i in intervals),
    )


@dataclass
class StageResult:
    """One stage of the schedule: its calls are those sent and answered while it lasted."""

    number: int
    stage: Stage
    #: Seconds it lasted (its answers may come up to the timeout after the last stage).
    elapsed: float = 0.0
    tally: Tally = field(default_factory=Tally)

    @property
    def throughput(self) -> float:
        return self.tally.completed / self.elapsed if self.elapsed > 0 else 0.0


@dataclass
class LoadResult:
    plan: LoadPlan
    connections: int
    #: Seconds from the end of the warm-up to the last answer.
    elapsed: float
    total: Tally
    #: CPU time used from the end of the warm-up to the last answer, in seconds (all processes).
    cpu: float = 0.0
    #: Why the run ended before its plan did (all connections lost, interrupted, ...), if it did.
    stopped_early: str | None = None
    #: Open model with --stages: each stage's figures.
    stages: list[StageResult] = field(default_factory=list)
    #: With a scenario: each method's calls.
    methods: dict[str, Tally] = field(default_factory=dict)
    #: With --processes: each process's own result (the figures above are their sum).
    processes: list[LoadResult] = field(default_factory=list)
    #: When the measurement started (seconds since the epoch).
    began_at: float = 0.0

    # The run's totals, by their names.
    @property
    def sent(self) -> int:
        return self.total.sent

    @property
    def ok(self) -> int:
        return self.total.ok

    @property
    def errors(self) -> Counter[str]:
        return self.total.errors

    @property
    def latency(self) -> Histogram:
        return self.total.latency

    @property
    def uncorrected(self) -> Histogram | None:
        return self.total.uncorrected

    @property
    def late(self) -> int:
        return self.total.late

    @property
    def max_lag(self) -> float:
        """The worst lag behind the schedule, in seconds."""
        return self.total.max_lag / _NS

    @property
    def completed(self) -> int:
        return self.total.completed

    @property
    def throughput(self) -> float:
        """Completed calls (answers and failures) per second."""
        return self.completed / self.elapsed if self.elapsed > 0 else 0.0


def merge_results(plan: LoadPlan, results: list[LoadResult]) -> LoadResult:
    """The results of several processes run side by side (`plan` is the whole run's) as one: the
    counts and histograms added, the longest elapsed time, the CPU time of all."""
    stages = [StageResult(number, stage) for number, stage in enumerate(plan.stages, 1)]
    methods: dict[str, Tally] = {}
    for result in results:
        for mine, theirs in zip(stages, result.stages, strict=True):
            mine.elapsed = max(mine.elapsed, theirs.elapsed)
            mine.tally.add(theirs.tally)
        for name, tally in result.methods.items():
            methods.setdefault(name, Tally()).add(tally)
    return LoadResult(
        plan=plan,
        connections=sum(r.connections for r in results),
        elapsed=max(r.elapsed for r in results),
        total=Tally.sum(r.total for r in results),
        cpu=sum(r.cpu for r in results),
        stopped_early=next((r.stopped_early for r in results if r.stopped_early), None),
        stages=stages,
        methods=dict(sorted(methods.items())),
        processes=results,
        began_at=min(r.began_at for r in results),
    )
