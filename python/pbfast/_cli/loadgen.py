"""The load generator behind ``pbfast bench`` and the demo's load run.

Two models, as load generators for other RPC systems have them:

* closed: a fixed number of users, each with one call (or scenario iteration) in flight; each
  answer sends that user's next call. Latency is from send to answer.
* open: calls start on a fixed schedule (``rate`` per second, or each stage's rate in turn)
  whether or not answers have come. Latency is measured from each call's *intended* start, so a
  server (or a generator) that falls behind shows in the figures instead of quietly slowing the
  schedule (coordinated omission); the uncorrected figures, from the actual send, are kept
  beside them.

The run is cut into intervals of a second (and at each stage's end); each interval's figures go
to ``on_interval`` as they are complete and add up to the stages' and the run's.

Each call costs little here: the future's done-callback does the bookkeeping and sends the
next call, without a task or a coroutine per call. In the closed model each user is one object
whose bound callback is reused from call to call, and the latency is counted into the
histogram's bucket inline.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..errors import DeadReferenceError, PBConnectionLost, RemoteError
from .common import describe
from .histogram import HALF_BITS, HIGHEST, SUB_BITS, Histogram, bucket_index
from .results import Interval, LoadPlan, LoadResult, StageResult, Tally, error_name
from .scenario import MethodRecorder
from .stages import Stage

__all__ = ["LoadPlan", "LoadResult", "run_load", "LATE_AFTER", "Scenario"]

#: A call of the open model sent more than this after its intended start counts as late (the
#: generator could not keep the schedule: it was busy, or --max-in-flight was reached).
LATE_AFTER = 0.002
#: A scenario: one user iteration, given the (recording) root reference.
Scenario = Callable[[Any], Awaitable[Any]]

#: The open model sends at most this many due calls before letting the loop read answers.
_BATCH = 512
#: The event loops' timers count in milliseconds (ns).
_TIMER_RESOLUTION = 1_000_000
_NS = 1_000_000_000
_LATE_NS = int(LATE_AFTER * _NS)
#: No end (a stage without a duration, a run without a call count).
_NEVER = 1 << 62
_EXACT = 1 << SUB_BITS
#: An interval that would end this close before a stage ends (or the sending does) is not cut:
#: the stage's end cuts it.
_CUT_MARGIN = 50_000_000
_perf_counter_ns = time.perf_counter_ns


class _User:
    """One user of the closed model: one call in flight at a time, the next sent from the
    answer's done-callback. This is the per-call path."""

    __slots__ = ("load", "ref", "start", "sent_at", "callback")

    def __init__(self, load: _Load, ref: Any) -> None:
        self.load = load
        self.ref = ref
        self.start: Callable[[], asyncio.Future[Any]] = load.starters[id(ref)]
        self.sent_at = 0
        self.callback = self.done  # one bound method for every call

    def send(self, now: int) -> None:
        load = self.load
        self.sent_at = now
        try:
            future = self.start()
        except Exception as e:  # the arguments cannot be sent: every call would fail alike
            load.cannot_send(e)
            load.user_finished(now)
            return
        future.add_done_callback(self.callback)
        load.budget -= 1
        if load.budget <= 0:
            load.stop_sending()

    def done(self, future: asyncio.Future[Any]) -> None:
        now = _perf_counter_ns()
        load = self.load
        sent_at = self.sent_at
        try:
            future.result()
        except BaseException as error:
            load.failed(self.ref, error, sent_at, sent_at, now)
            if load.refs and self.ref not in load.refs:  # its connection is gone: use another
                self.ref = load.next_ref()
                self.start = load.starters[id(self.ref)]
        else:
            if sent_at >= load.measure_from:
                value = now - sent_at
                latency = load.latency
                if value < _EXACT:
                    latency.counts[value] += 1
                elif value < HIGHEST:
                    shift = value.bit_length() - SUB_BITS
                    latency.counts[(shift << HALF_BITS) + (value >> shift)] += 1
                else:
                    latency.counts[-1] += 1
                if value > latency.max:
                    latency.max = value
        if load.sending:
            self.sent_at = now
            try:
                future = self.start()
            except Exception as e:
                load.cannot_send(e)
                load.user_finished(now)
                return
            future.add_done_callback(self.callback)
            load.budget -= 1
            if load.budget <= 0:
                load.stop_sending()
        else:
            load.user_finished(now)


class _Load:
    """The bookkeeping of one run."""

    def __init__(
        self,
        refs: Sequence[Any],
        plan: LoadPlan,
        scenario: Scenario | None,
        on_interval: Callable[[Interval], None] | None,
    ) -> None:
        self.plan = plan
        self.loop = asyncio.get_running_loop()
        self.refs = list(refs)
        self.closed = plan.model == "closed"
        self.recorder = MethodRecorder() if scenario is not None else None
        # What starts one call (or iteration) on each reference: a future for its end.
        self.starters: dict[int, Callable[[], asyncio.Future[Any]]] = {
            id(ref): self._starter(ref, scenario) for ref in self.refs
        }
        self.users: list[_User] = []
        self.turn = 0
        self.in_flight = 0
        self.sending = True
        self.stopped_early: str | None = None
        self.all_sent = asyncio.Event()
        self.drained = asyncio.Event()
        self.on_interval = on_interval
        # Calls started before this (perf_counter_ns) are warm-up and not counted.
        self.measure_from = _NEVER
        self.began_at = 0.0
        self.cpu_start = 0.0
        self.last_done = 0
        # Calls that may still be sent: --calls once measuring.
        self.budget = _NEVER
        # The current interval.
        self.latency = Histogram()
        self.uncorrected: Histogram | None = None if self.closed else Histogram()
        self.errors: Counter[str] = Counter()
        self.answered_errors = 0
        self.late = 0
        self.max_lag = 0
        self.budget_at_cut = _NEVER
        self.cut_at = 0
        self.next_cut = 0
        self.interval_index = 0
        self.cut_timer: asyncio.TimerHandle | None = None
        self.stage = 0
        # When the current measured stage ends, or the sending does (perf_counter_ns).
        self.boundary = _NEVER
        # The run so far.
        self.total = Tally(uncorrected=None if self.closed else Histogram())
        self.stage_results = [StageResult(n, s) for n, s in enumerate(plan.stages, 1)]
        self.methods: dict[str, Tally] = {}
        # Open model: the schedule, a warm-up stage at the first stage's rate before the rest.
        measured = plan.schedule
        self.warm_stages = 1 if plan.warmup > 0 and measured else 0
        warm = (Stage(plan.warmup, measured[0].rate),) if self.warm_stages else ()
        self.schedule: tuple[Stage, ...] = warm + measured
        self.stage_pos = 0
        self.stage_start = 0
        self.stage_end = 0
        self.step = 0.0
        self.index = 0
        self.next_due = 0
        self.tick_timer: asyncio.TimerHandle | None = None

    def _starter(self, ref: Any, scenario: Scenario | None) -> Callable[[], asyncio.Future[Any]]:
        plan = self.plan
        if scenario is None:
            return functools.partial(ref.callRemote, plan.method, *plan.args, **plan.kwargs)
        recorder = self.recorder
        assert recorder is not None
        create_task = self.loop.create_task
        return lambda: create_task(scenario(recorder.reference(ref)))  # type: ignore[arg-type]

    # ------------------------------------------------------------------ answers

    def failed(self, ref: Any, error: BaseException, intended: int, sent_at: int, now: int) -> None:
        if isinstance(error, asyncio.CancelledError):
            return
        if intended >= self.measure_from:
            self.errors[error_name(error)] += 1
            if isinstance(error, RemoteError):
                # A remote error is an answer: its round trip counts.
                self.answered_errors += 1
                self.latency.record(now - intended)
                if self.uncorrected is not None:
                    self.uncorrected.record(now - sent_at)
        if isinstance(error, (DeadReferenceError, PBConnectionLost)):
            self._lost(ref, error)

    def _lost(self, ref: Any, error: BaseException) -> None:
        if ref not in self.refs:
            return
        self.refs.remove(ref)
        if not self.refs:
            self.stop(f"lost the connection: {describe(error)}")

    def cannot_send(self, error: Exception) -> None:
        self.stop(f"cannot send the call: {describe(error)}")

    def user_finished(self, now: int) -> None:
        self.in_flight -= 1
        if now > self.last_done:
            self.last_done = now
        if not self.in_flight:
            self.drained.set()

    # ------------------------------------------------------------------ the open model

    def next_ref(self) -> Any:
        refs = self.refs
        self.turn = (self.turn + 1) % len(refs)
        return refs[self.turn]

    def _send_open(self, intended: int, now: int) -> None:
        ref = self.next_ref()
        try:
            future = self.starters[id(ref)]()
        except Exception as e:
            self.cannot_send(e)
            return
        self.in_flight += 1
        future.add_done_callback(functools.partial(self._done_open, ref, intended, now))
        self.budget -= 1
        if self.budget <= 0:
            self.stop_sending()

    def _done_open(self, ref: Any, intended: int, sent_at: int, future: asyncio.Future[Any]) -> None:
        now = _perf_counter_ns()
        self.in_flight -= 1
        try:
            future.result()
        except BaseException as error:
            self.failed(ref, error, intended, sent_at, now)
        else:
            if intended >= self.measure_from:
                latency = self.latency
                value = now - intended
                latency.counts[bucket_index(value)] += 1
                if value > latency.max:
                    latency.max = value
                uncorrected = self.uncorrected
                assert uncorrected is not None
                value = now - sent_at
                uncorrected.counts[bucket_index(value)] += 1
                if value > uncorrected.max:
                    uncorrected.max = value
        if not self.sending:
            if intended >= self.measure_from and now > self.last_done:
                self.last_done = now
            if not self.in_flight:
                self.drained.set()

    def _enter_stage(self, pos: int, at: int) -> None:
        stage = self.schedule[pos]
        self.stage_pos = pos
        self.stage_start = at
        self.stage_end = _NEVER if stage.duration == float("inf") else at + int(stage.duration * _NS)
        if pos >= self.warm_stages:
            self.boundary = self.stage_end
        self.index = 0
        if stage.rate > 0:
            self.step = _NS / stage.rate
            self.next_due = at
        else:  # a pause: nothing is due before the stage ends
            self.step = 0.0
            self.next_due = self.stage_end

    def _stage_over(self, boundary: int, now: int) -> None:
        pos = self.stage_pos + 1
        if pos >= len(self.schedule):
            self.stop_sending()  # the last interval goes on until the last answer
            return
        if pos == self.warm_stages:
            self.begin_measuring(boundary)
        else:
            self._cut(now)
        self.stage = pos - self.warm_stages
        self._enter_stage(pos, boundary)

    def _send_due(self, now: int) -> None:
        """Send the calls due by `now`, a batch at most (then answers are read)."""
        limit = self.plan.max_in_flight
        for _ in range(_BATCH):
            due = self.next_due
            if due > now or not self.sending:
                break
            if due >= self.stage_end:
                self._stage_over(due, now)
                continue
            if self.in_flight >= limit:
                break
            lag = now - due
            if lag > _LATE_NS:
                self.late += 1
            if lag > self.max_lag:
                self.max_lag = lag
            self._send_open(due, now)
            self.index += 1
            self.next_due = min(self.stage_start + int(self.index * self.step), self.stage_end)

    def _tick(self) -> None:
        """Send what is due, then wake for the next call. Timers are no finer than a millisecond
        (both loops count in milliseconds), so the last millisecond before a call is due is
        spent going round the loop, reading answers meanwhile: the schedule is kept to
        microseconds, at the price of a busy core at rates above 1000 calls/s."""
        self.tick_timer = None
        if not self.sending:
            return
        self._send_due(_perf_counter_ns())
        if not self.sending:
            return
        wait = self.next_due - _perf_counter_ns()
        if wait < _TIMER_RESOLUTION:
            self.loop.call_soon(self._tick)
        else:
            self.tick_timer = self.loop.call_later((wait - _TIMER_RESOLUTION) / _NS, self._tick)

    # ------------------------------------------------------------------ phases

    def begin(self) -> None:
        now = _perf_counter_ns()
        if self.closed:
            self.users = [_User(self, self.refs[n % len(self.refs)]) for n in range(self.plan.concurrency)]
            self.in_flight = len(self.users)
            for user in self.users:
                if self.sending:
                    user.send(now)
                else:
                    self.user_finished(now)
        else:
            if not self.warm_stages:
                self.begin_measuring(now)
            self._enter_stage(0, now)
            self._tick()

    def begin_measuring(self, at: int) -> None:
        """From `at` (perf_counter_ns) on, calls count."""
        self.measure_from = self.cut_at = at
        self.next_cut = at + _NS
        if self.closed and self.plan.duration is not None:
            self.boundary = at + int(self.plan.duration * _NS)
        self.began_at = time.time() - (_perf_counter_ns() - at) / _NS
        self.cpu_start = time.process_time()
        if self.recorder is not None:
            self.recorder.measure_from = at
        # Forget what the warm-up counted.
        self.budget = self.budget_at_cut = self.plan.calls if self.plan.calls is not None else _NEVER
        self.latency = Histogram()
        self.uncorrected = None if self.closed else Histogram()
        self.errors = Counter()
        self.answered_errors = self.late = self.max_lag = 0
        if self.recorder is not None:
            self.recorder.cut()
        self._schedule_cut()

    @property
    def measuring(self) -> bool:
        return self.measure_from != _NEVER

    def _schedule_cut(self) -> None:
        if self.cut_timer is not None:
            self.cut_timer.cancel()
        delay = max(self.next_cut - _perf_counter_ns(), 0) / _NS
        self.cut_timer = self.loop.call_later(delay, self._timed_cut)

    def _timed_cut(self) -> None:
        self.cut_timer = None
        now = _perf_counter_ns()
        if self.sending and now > self.boundary - _CUT_MARGIN:
            return  # the stage's end (or the sending's) is near: it cuts the interval
        self._cut(now)

    def _cut(self, now: int, *, last: bool = False) -> None:
        """End the current interval at `now`: count it, pass it on, start the next one."""
        tally = Tally(
            sent=self.budget_at_cut - self.budget,
            ok=self.latency.total - self.answered_errors,
            errors=self.errors,
            latency=self.latency,
            uncorrected=self.uncorrected,
            late=self.late,
            max_lag=self.max_lag,
        )
        interval = Interval(
            index=self.interval_index,
            start=(self.cut_at - self.measure_from) / _NS,
            length=(now - self.cut_at) / _NS,
            stage=self.stage,
            tally=tally,
            in_flight=self.in_flight,
            methods=self.recorder.cut() if self.recorder is not None else {},
            began_at=self.began_at,
        )
        self.latency = Histogram()
        self.uncorrected = None if self.closed else Histogram()
        self.errors = Counter()
        self.answered_errors = self.late = self.max_lag = 0
        self.budget_at_cut = self.budget
        self.cut_at = now
        self.interval_index += 1
        self._account(interval)
        if self.on_interval is not None:
            self.on_interval(interval)
        if last:
            if self.cut_timer is not None:
                self.cut_timer.cancel()
                self.cut_timer = None
        else:
            self.next_cut = now + _NS
            self._schedule_cut()

    def _account(self, interval: Interval) -> None:
        self.total.add(interval.tally)
        if self.stage_results:
            stage = self.stage_results[interval.stage]
            stage.elapsed += interval.length
            stage.tally.add(interval.tally)
        for name, tally in interval.methods.items():
            self.methods.setdefault(name, Tally()).add(tally)

    def stop_sending(self) -> None:
        if self.sending and self.measuring:  # the interval goes on while the last answers come
            self.next_cut = _perf_counter_ns() + _NS
            self._schedule_cut()
        self.sending = False
        self.all_sent.set()
        if self.tick_timer is not None:
            self.tick_timer.cancel()
            self.tick_timer = None
        if not self.in_flight:
            self.drained.set()

    def stop(self, reason: str) -> None:
        """End the run early (the results so far are kept)."""
        if self.stopped_early is None:
            self.stopped_early = reason
        self.stop_sending()

    def finish(self, stopped_at: int) -> LoadResult:
        end = _perf_counter_ns()
        cpu = time.process_time() - self.cpu_start
        self._cut(end, last=True)
        return LoadResult(
            plan=self.plan,
            connections=len(self.starters),
            elapsed=max(max(self.last_done, stopped_at) - self.measure_from, 1) / _NS,
            total=self.total,
            cpu=cpu,
            stopped_early=self.stopped_early,
            stages=self.stage_results,
            methods=dict(sorted(self.methods.items())),
            began_at=self.began_at,
        )

    def cancel_timers(self) -> None:
        for timer in (self.cut_timer, self.tick_timer):
            if timer is not None:
                timer.cancel()


async def run_load(
    refs: Sequence[Any],
    plan: LoadPlan,
    *,
    scenario: Scenario | None = None,
    on_interval: Callable[[Interval], None] | None = None,
    interrupted: asyncio.Event | None = None,
) -> LoadResult:
    """Run `plan` against `refs` (references to the same remote object, one per connection;
    the closed model's users are spread over them, the open model's calls go round-robin).

    With `scenario`, each call is one iteration of it, given a reference that records every
    ``callRemote`` made through it by method name. `on_interval` gets each interval's figures
    as it ends (about once a second); setting `interrupted` ends the run early with the results
    so far."""
    if not refs:
        raise ValueError("no references to call")
    load = _Load(refs, plan, scenario, on_interval)
    interrupted = interrupted or asyncio.Event()
    try:
        if load.closed:
            if plan.warmup > 0:
                load.begin()
                await _wait_any(load.all_sent, interrupted, timeout=plan.warmup)
                load.begin_measuring(_perf_counter_ns())
            else:
                load.begin_measuring(_perf_counter_ns())
                load.begin()
            await _wait_any(load.all_sent, interrupted, timeout=plan.duration)
        else:
            load.begin()  # the schedule starts measuring when its warm-up stage ends
            await _wait_any(load.all_sent, interrupted, timeout=None)
        if interrupted.is_set():
            load.stop("interrupted")
        load.stop_sending()
        stopped_at = _perf_counter_ns()
        if not load.measuring:  # stopped during the warm-up
            load.begin_measuring(stopped_at)
        try:
            async with asyncio.timeout(plan.timeout):
                await load.drained.wait()
        except TimeoutError:
            load.errors[f"no answer within {plan.timeout:g} s"] += load.in_flight
        return load.finish(stopped_at)
    finally:
        load.cancel_timers()


async def _wait_any(event: asyncio.Event, other: asyncio.Event, *, timeout: float | None) -> None:
    """Until either event is set, or `timeout` seconds (None: no limit) have passed."""
    waits = {asyncio.ensure_future(event.wait()), asyncio.ensure_future(other.wait())}
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
