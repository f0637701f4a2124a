"""``pbfast bench --processes N``: N load processes side by side, one report.

Each process is spawned afresh, connects on its own and runs the same engine against the target
with its share of the load (the concurrency, the rate or each stage's rate, the call count and
the in-flight cap are divided among them). Once all have connected they start together; each
sends its intervals as they end and its result at the end, through a pipe. The intervals of the
same second are merged for the progress lines and the interval log, and the results into the
report: histograms bucket by bucket and counts summed, so the merged figures are exactly those
of all the calls made.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

from ..pb import run as run_loop
from .common import EXIT_ERROR, EXPECTED_ERRORS, CommandError, describe, open_references
from .loadgen import run_load
from .results import Interval, LoadPlan, LoadResult, merge_intervals, merge_results
from .scenario import load_scenario
from .stages import Stage

__all__ = ["split_plan", "run_processes"]

#: How long a process may take to start (a fresh interpreter importing pbfast), beyond the
#: connection timeout.
_START_TIME = 30.0


def split_plan(plan: LoadPlan, processes: int) -> list[LoadPlan]:
    """Each process's share of `plan`: the users, calls and in-flight cap divided as evenly as
    whole numbers allow, the rates divided exactly."""

    def share(total: int, number: int) -> int:
        return total // processes + (1 if number < total % processes else 0)

    return [
        dataclasses.replace(
            plan,
            concurrency=share(plan.concurrency, number),
            rate=None if plan.rate is None else plan.rate / processes,
            calls=None if plan.calls is None else share(plan.calls, number),
            max_in_flight=max(1, -(-plan.max_in_flight // processes)),
            stages=tuple(Stage(s.duration, s.rate / processes) for s in plan.stages),
        )
        for number in range(processes)
    ]


@dataclasses.dataclass
class _Child:
    number: int
    process: Any
    control: Connection
    data: Connection


def run_processes(
    target: str,
    plan: LoadPlan,
    connections: int,
    processes: int,
    *,
    on_start: Callable[[], None] | None = None,
    on_interval: Callable[[Interval], None] | None = None,
    stop: threading.Event,
) -> LoadResult:
    """Run `plan` in `processes` processes with `connections` connections each. `on_start` is
    called when they start, `on_interval` with each interval of them all; setting `stop` (from
    a signal handler) ends the run early with the results so far.

    Raises:
        CommandError: a process could not connect, failed, or died.
    """
    context = multiprocessing.get_context("spawn")
    children: list[_Child] = []
    try:
        for number, share in enumerate(split_plan(plan, processes), 1):
            control_out, control_in = context.Pipe(duplex=False)
            data_out, data_in = context.Pipe(duplex=False)
            process = context.Process(
                target=_child_main,
                args=(target, share, connections, control_out, data_in),
                name=f"pbfast bench load process {number}",
                daemon=True,
            )
            process.start()
            control_out.close()
            data_in.close()
            children.append(_Child(number, process, control_in, data_out))
        _wait_ready(children, time.monotonic() + plan.timeout + _START_TIME, stop)
        for child in children:
            child.control.send("go")
        if on_start is not None:
            on_start()
        results = _collect(children, on_interval, stop)
    finally:
        # Those still running (the run failed) are told to stop, and ended if they do not.
        for child in children:
            if child.process.is_alive():
                with contextlib.suppress(OSError):
                    child.control.send("stop")
        for child in children:
            child.process.join(timeout=5)
            if child.process.is_alive():
                child.process.terminate()
                child.process.join()
            child.control.close()
            child.data.close()
    return merge_results(plan, results)


def _receive(child: _Child) -> tuple[Any, ...]:
    try:
        message: tuple[Any, ...] = child.data.recv()
    except (EOFError, OSError):
        child.process.join(timeout=5)
        raise CommandError(
            f"load process {child.number} ended unexpectedly (exit code {child.process.exitcode})"
        ) from None
    if message[0] == "error":
        raise CommandError(f"load process {child.number}: {message[1]}", message[2])
    return message


def _wait_ready(children: list[_Child], deadline: float, stop: threading.Event) -> None:
    waiting = {child.data: child for child in children}
    while waiting:
        if stop.is_set():
            raise KeyboardInterrupt
        left = deadline - time.monotonic()
        if left <= 0:
            raise CommandError(f"load process {next(iter(waiting.values())).number} did not start in time")
        for conn in wait(list(waiting), timeout=min(left, 0.2)):
            child = waiting.pop(conn)  # type: ignore[call-overload]
            _receive(child)  # "ready"


def _collect(
    children: list[_Child], on_interval: Callable[[Interval], None] | None, stop: threading.Event
) -> list[LoadResult]:
    """The processes' intervals (merged, in order, once every process has sent each) and results."""
    live = {child.data: child for child in children}
    results: dict[int, LoadResult] = {}
    pending: dict[int, dict[int, Interval]] = {}
    next_index = 0
    stopping = False

    def emit(index: int) -> None:
        intervals = list(pending.pop(index).values())
        if on_interval is not None:
            on_interval(merge_intervals(intervals))

    while live:
        if stop.is_set() and not stopping:
            stopping = True
            for child in live.values():
                child.control.send("stop")
        for conn in wait(list(live), timeout=0.2):
            child = live[conn]  # type: ignore[index]
            message = _receive(child)
            if message[0] == "interval":
                interval: Interval = message[1]
                pending.setdefault(interval.index, {})[child.number] = interval
            else:  # its result: nothing more comes from it
                results[child.number] = message[1]
                del live[conn]  # type: ignore[arg-type]
        while next_index in pending and all(
            c.number in pending[next_index] or c.number in results for c in children
        ):
            emit(next_index)
            next_index += 1
    for index in sorted(pending):
        emit(index)
    return [results[child.number] for child in children]


# ---------------------------------------------------------------------------------- in a process


def _child_main(target: str, plan: LoadPlan, connections: int, control: Connection, data: Connection) -> None:
    """A load process: connect, say so, start on "go", stop on "stop" (or if the parent goes)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent says when to stop
    try:
        run_loop(_run_child(target, plan, connections, control, data))
    except CommandError as e:
        data.send(("error", str(e), e.code))
    except EXPECTED_ERRORS as e:
        data.send(("error", describe(e), EXIT_ERROR))
    except Exception as e:  # a bug: say what it was rather than only dying
        data.send(("error", f"{type(e).__name__}: {e}", EXIT_ERROR))
        raise
    finally:
        data.close()


async def _run_child(
    target: str, plan: LoadPlan, connections: int, control: Connection, data: Connection
) -> None:
    loop = asyncio.get_running_loop()
    go, stop = asyncio.Event(), asyncio.Event()

    def listen() -> None:
        while True:
            try:
                message = control.recv()
            except (EOFError, OSError):  # the parent has gone
                message = "stop"
            try:
                loop.call_soon_threadsafe((go if message == "go" else stop).set)
            except RuntimeError:  # the loop is closed: the run is over
                return
            if message != "go":
                return

    threading.Thread(target=listen, name="pbfast bench control", daemon=True).start()
    scenario = load_scenario(plan.scenario) if plan.scenario else None
    async with open_references(target, connections=connections, timeout=plan.timeout) as refs:
        data.send(("ready",))
        starting = asyncio.ensure_future(go.wait())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        starting.cancel()
        stopping.cancel()
        if not go.is_set():
            return
        result = await run_load(
            refs,
            plan,
            scenario=scenario,
            on_interval=lambda interval: data.send(("interval", interval)),
            interrupted=stop,
        )
    data.send(("result", result))
