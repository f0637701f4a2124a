"""The load generator behind ``pbfast bench`` and the demo's load run.

Two models, as load generators for other RPC systems have them:

* closed: a fixed number of calls in flight; each answer sends the next call. Latency is from
  send to answer.
* open: calls start on a fixed schedule (``rate`` per second) whether or not answers have come.
  Latency is measured from each call's *intended* start, so a server (or a generator) that falls
  behind shows in the figures instead of quietly slowing the schedule (coordinated omission);
  the uncorrected figures, from the actual send, are kept beside them.

Each call costs a few microseconds here: the future's done-callback does the bookkeeping and
sends the next call, without a task per call.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import DeadReferenceError, PBConnectionLost, RemoteError
from .histogram import Histogram

__all__ = ["LoadPlan", "LoadResult", "Snapshot", "run_load", "LATE_AFTER"]

#: A call of the open model sent more than this after its intended start counts as late (the
#: generator could not keep the schedule: it was busy, or --max-in-flight was reached).
LATE_AFTER = 0.002
#: The open model sends at most this many due calls before letting the loop read answers.
_BATCH = 512
#: The event loops' timers count in milliseconds (ns).
_TIMER_RESOLUTION = 1_000_000
_NS = 1_000_000_000


@dataclass(frozen=True)
class LoadPlan:
    """What to send, and how. Exactly one of `duration` and `calls` is set."""

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

    @property
    def model(self) -> str:
        return "open" if self.rate is not None else "closed"


@dataclass
class LoadResult:
    plan: LoadPlan
    connections: int
    #: Seconds from the end of the warm-up to the last answer.
    elapsed: float
    #: Calls sent after the warm-up.
    sent: int
    #: Calls answered with a result.
    ok: int
    #: Failed calls by kind: ``remote <type>`` for remote errors, else the local exception.
    errors: Counter[str]
    #: Latency of every answered call (result or remote error), in nanoseconds; in the open
    #: model from the intended start.
    latency: Histogram
    #: Open model: the same from the actual send. None in the closed model.
    uncorrected: Histogram | None
    #: Open model: calls sent more than LATE_AFTER after their intended start, and the worst lag.
    late: int = 0
    max_lag: float = 0.0
    #: CPU time this process used from the end of the warm-up to the last answer, in seconds.
    cpu: float = 0.0
    #: Why the run ended before its plan did (all connections lost, interrupted, ...), if it did.
    stopped_early: str | None = None

    @property
    def completed(self) -> int:
        return self.ok + sum(self.errors.values())

    @property
    def throughput(self) -> float:
        """Completed calls (answers and failures) per second."""
        return self.completed / self.elapsed if self.elapsed > 0 else 0.0


@dataclass(frozen=True)
class Snapshot:
    """Progress so far, for a live display."""

    warming_up: bool
    elapsed: float
    completed: int
    errors: int
    in_flight: int
    p99: int


class _Load:
    """The bookkeeping of one run; its methods are the hot path."""

    def __init__(self, refs: Sequence[Any], plan: LoadPlan) -> None:
        self.plan = plan
        self.refs = list(refs)
        self.turn = 0
        self.closed = plan.rate is None
        self.latency = Histogram()
        self.uncorrected = None if self.closed else Histogram()
        self.ok = 0
        self.errors: Counter[str] = Counter()
        self.sent = 0
        self.in_flight = 0
        self.late = 0
        self.max_lag = 0
        # Calls started before this (perf_counter_ns) are warm-up and not counted.
        self.measure_from = 1 << 62
        self.last_done = 0
        self.left = plan.calls  # measured calls still to send, with --calls
        self.sending = True
        self.stopped_early: str | None = None
        self.all_sent = asyncio.Event()
        self.drained = asyncio.Event()
        # Open model schedule.
        self.start = 0
        self.index = 0
        self.next_due = 0
        self.interval = _NS / plan.rate if plan.rate else 0.0
        self.loop = asyncio.get_running_loop()

    # ------------------------------------------------------------------ sending

    def _next_ref(self) -> Any:
        refs = self.refs
        self.turn = (self.turn + 1) % len(refs)
        return refs[self.turn]

    def _send(self, intended: int, now: int) -> None:
        """Send one call; `intended` is when the schedule wanted it (== `now` when closed)."""
        plan = self.plan
        ref = self._next_ref()
        try:
            future = ref.callRemote(plan.method, *plan.args, **plan.kwargs)
        except Exception as e:  # the arguments cannot be sent: every call would fail alike
            self.stop(f"cannot send the call: {e}")
            return
        self.in_flight += 1
        future.add_done_callback(functools.partial(self._done, ref, intended, now))
        if intended >= self.measure_from:
            self.sent += 1
            if self.left is not None:
                self.left -= 1
                if self.left <= 0:
                    self.stop_sending()

    def _done(self, ref: Any, intended: int, sent_at: int, future: asyncio.Future[Any]) -> None:
        now = time.perf_counter_ns()
        self.in_flight -= 1
        if not future.cancelled():
            error = future.exception()
            if intended >= self.measure_from:
                self.last_done = now
                if error is None:
                    self.ok += 1
                    self.latency.record(now - intended)
                    if self.uncorrected is not None:
                        self.uncorrected.record(now - sent_at)
                else:
                    self._failed(error, intended, sent_at, now)
            if error is not None and isinstance(error, (DeadReferenceError, PBConnectionLost)):
                self._lost(ref, error)
        if not self.sending:
            if not self.in_flight:
                self.drained.set()
        elif self.closed:
            self._send(now, now)  # an answer makes room for the next call

    def _failed(self, error: BaseException, intended: int, sent_at: int, now: int) -> None:
        if isinstance(error, RemoteError):
            self.errors[f"remote {error.remoteType}"] += 1
            # A remote error is an answer: its round trip counts.
            self.latency.record(now - intended)
            if self.uncorrected is not None:
                self.uncorrected.record(now - sent_at)
        else:
            self.errors[type(error).__name__] += 1

    def _lost(self, ref: Any, error: BaseException) -> None:
        if ref in self.refs:
            self.refs.remove(ref)
            if not self.refs:
                self.stop(f"lost the connection: {error}")

    def _send_due(self, now: int) -> None:
        """Open model: send the calls due by `now`, a batch at most (then answers are read)."""
        limit = self.plan.max_in_flight
        for _ in range(_BATCH):
            due = self.next_due
            if due > now or self.in_flight >= limit or not self.sending:
                break
            lag = now - due
            if due >= self.measure_from:
                if lag > LATE_AFTER * _NS:
                    self.late += 1
                if lag > self.max_lag:
                    self.max_lag = lag
            self._send(due, now)
            self.index += 1
            self.next_due = self.start + int(self.index * self.interval)

    def _tick(self) -> None:
        """Open model: send what is due, then wake for the next call. Timers are no finer than
        a millisecond (both loops count in milliseconds), so the last millisecond before a
        call is due is spent going round the loop, reading answers meanwhile: the schedule is
        kept to microseconds, at the price of a busy core at rates above 1000 calls/s."""
        if not self.sending:
            return
        now = time.perf_counter_ns()
        self._send_due(now)
        if not self.sending:
            return
        wait = self.next_due - time.perf_counter_ns()
        if wait < _TIMER_RESOLUTION:
            self.loop.call_soon(self._tick)
        else:
            self.loop.call_later((wait - _TIMER_RESOLUTION) / _NS, self._tick)

    # ------------------------------------------------------------------ phases

    def begin(self) -> None:
        now = time.perf_counter_ns()
        if self.closed:
            for _ in range(self.plan.concurrency):
                if self.sending:
                    self._send(now, now)
        else:
            self.start = self.next_due = now
            self._tick()

    def begin_measuring(self) -> int:
        now = time.perf_counter_ns()
        self.measure_from = now
        return now

    def stop_sending(self) -> None:
        self.sending = False
        self.all_sent.set()
        if not self.in_flight:
            self.drained.set()

    def stop(self, reason: str) -> None:
        """End the run early (the results so far are kept)."""
        if self.stopped_early is None:
            self.stopped_early = reason
        self.stop_sending()

    def snapshot(self, started: int) -> Snapshot:
        now = time.perf_counter_ns()
        warming_up = now < self.measure_from
        return Snapshot(
            warming_up=warming_up,
            elapsed=(now - (started if warming_up else self.measure_from)) / _NS,
            completed=self.ok + sum(self.errors.values()),
            errors=sum(self.errors.values()),
            in_flight=self.in_flight,
            p99=self.latency.percentile(99),
        )


async def run_load(
    refs: Sequence[Any],
    plan: LoadPlan,
    *,
    progress: Callable[[Snapshot], None] | None = None,
    interrupted: asyncio.Event | None = None,
) -> LoadResult:
    """Run `plan` against `refs` (references to the same remote object, one per connection;
    calls go round-robin). `progress` is called about once a second; setting `interrupted`
    ends the run early with the results so far."""
    if not refs:
        raise ValueError("no references to call")
    load = _Load(refs, plan)
    interrupted = interrupted or asyncio.Event()
    started = time.perf_counter_ns()
    reporter = asyncio.create_task(_report_progress(load, progress, started)) if progress else None
    try:
        if plan.warmup > 0:
            load.begin()
            await _wait_any(load.all_sent, interrupted, timeout=plan.warmup)
            measure_start = load.begin_measuring()
        else:
            measure_start = load.begin_measuring()
            load.begin()
        cpu_start = time.process_time()
        await _wait_any(load.all_sent, interrupted, timeout=plan.duration)
        if interrupted.is_set():
            load.stop("interrupted")
        load.stop_sending()
        stopped_at = time.perf_counter_ns()
        try:
            async with asyncio.timeout(plan.timeout):
                await load.drained.wait()
        except TimeoutError:
            load.errors[f"no answer within {plan.timeout:g} s"] += load.in_flight
        cpu = time.process_time() - cpu_start
    finally:
        if reporter is not None:
            reporter.cancel()
    return LoadResult(
        plan=plan,
        connections=len(refs),
        elapsed=max(max(load.last_done, stopped_at) - measure_start, 1) / _NS,
        sent=load.sent,
        ok=load.ok,
        errors=load.errors,
        latency=load.latency,
        uncorrected=load.uncorrected,
        late=load.late,
        max_lag=load.max_lag / _NS,
        cpu=cpu,
        stopped_early=load.stopped_early,
    )


async def _wait_any(event: asyncio.Event, other: asyncio.Event, *, timeout: float | None) -> None:
    """Until either event is set, or `timeout` seconds (None: no limit) have passed."""
    waits = {asyncio.ensure_future(event.wait()), asyncio.ensure_future(other.wait())}
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


async def _report_progress(load: _Load, progress: Callable[[Snapshot], None], started: int) -> None:
    while True:
        await asyncio.sleep(1.0)
        progress(load.snapshot(started))
