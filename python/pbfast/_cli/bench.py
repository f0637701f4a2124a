"""``pbfast bench TARGET METHOD [ARGS...]``: load-test a remote method (or a scenario of calls)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import signal
import sys
import threading
from pathlib import Path
from typing import TextIO

from .. import __version__
from ..pb import run as run_loop
from .call import ARGS_HELP, TARGET_HELP
from .common import (
    EXIT_THRESHOLD,
    EXIT_USAGE,
    CommandError,
    describe,
    open_references,
    parse_arguments,
    parse_duration,
)
from .hlog import IntervalLogWriter
from .loadgen import Scenario, run_load
from .processes import run_processes
from .progress import ProgressPrinter
from .report import PERCENTS, report, to_json
from .results import Interval, LoadPlan, LoadResult
from .scenario import load_scenario
from .stages import Stage, parse_stages
from .thresholds import THRESHOLD_HELP, Threshold, parse_threshold

__all__ = ["add_parser", "run", "Threshold", "parse_threshold", "report", "PERCENTS"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "bench",
        help="load-test a remote method: latency percentiles, throughput, errors",
        description="Call METHOD on TARGET over and over (or run a --scenario of calls) and report "
        "latency percentiles (from a full-resolution histogram), throughput and errors by type. "
        "Closed model by default: --concurrency calls in flight, each answer sending the next. "
        "Open model with --rate or --stages: calls start on schedule whether or not answers have "
        "come, and latency counts from each call's intended start (correcting coordinated "
        "omission; the uncorrected figures are shown too). Progress goes to stderr once a second "
        "when it is a terminal. Exit codes: 0 done, 1 failed to run, 2 bad usage, 3 a --fail-if "
        "threshold crossed.",
        epilog="example: pbfast bench tcp:host=127.0.0.1:port=8787 echo 1 --concurrency 64 "
        "--duration 10s --fail-if 'p99>5ms' --fail-if 'errors>0'",
    )
    parser.add_argument("target", metavar="TARGET", help=TARGET_HELP)
    parser.add_argument(
        "method", metavar="METHOD", nargs="?", help="the method's name, without remote_ (not with --scenario)"
    )
    parser.add_argument("arguments", metavar="ARGS", nargs="*", help=ARGS_HELP)
    model = parser.add_argument_group("load")
    model.add_argument(
        "-c",
        "--concurrency",
        type=_positive_int,
        metavar="N",
        help="closed model: calls (or scenario users) in flight (default 64)",
    )
    model.add_argument(
        "-r", "--rate", type=_positive_float, metavar="R", help="open model: calls started per second"
    )
    model.add_argument(
        "--stages",
        type=_stages,
        metavar="STAGES",
        help="open model, stage by stage: DURATION:RATE pairs, comma-separated, each rate held "
        "for its duration (10s:1000,30s:5000: 1000 calls/s for 10 s, then 5000 calls/s for "
        "30 s; a rate of 0 pauses); each stage is reported on its own. Not with --rate, "
        "--concurrency, --duration or --calls",
    )
    model.add_argument(
        "--scenario",
        metavar="MODULE:FUNCTION",
        help="instead of METHOD: an async function, given the root reference, run as one user "
        "iteration (closed model: each user loops over iterations; open model: each arrival "
        "starts one). Every callRemote made in it is also reported by method name. The module "
        "is imported from the current directory first",
    )
    model.add_argument(
        "--connections",
        type=_positive_int,
        default=1,
        metavar="C",
        help="connections to spread calls over, in each process (default 1)",
    )
    model.add_argument(
        "--max-in-flight",
        type=_positive_int,
        default=10_000,
        metavar="N",
        help="open model: calls in flight at most; calls due beyond it wait (and count as late) "
        "(default 10000)",
    )
    model.add_argument(
        "--processes",
        type=_positive_int,
        default=1,
        metavar="N",
        help="run the load in N processes, the concurrency or rate (and --calls, --max-in-flight) "
        "divided among them; their histograms are merged exactly into one report (default 1)",
    )
    length = parser.add_argument_group("length")
    how_long = length.add_mutually_exclusive_group()
    how_long.add_argument(
        "-d",
        "--duration",
        type=_positive_duration,
        metavar="DURATION",
        help="how long to measure (default 10s)",
    )
    how_long.add_argument(
        "-n",
        "--calls",
        type=_positive_int,
        metavar="N",
        help="how many calls (or scenario iterations) to measure",
    )
    length.add_argument(
        "--warmup",
        type=parse_duration,
        default=1.0,
        metavar="DURATION",
        help="run this long first without measuring (default 1s; with --stages, at the first stage's rate)",
    )
    length.add_argument(
        "--timeout",
        type=_positive_duration,
        default=10.0,
        metavar="DURATION",
        help="how long to wait to connect, and for the last answers at the end (default 10s)",
    )
    output = parser.add_argument_group("output")
    output.add_argument("--json", action="store_true", help="write one JSON object to stdout, nothing else")
    output.add_argument(
        "--hlog",
        type=Path,
        metavar="FILE",
        help="write HdrHistogram's interval log to FILE: one compressed histogram a second (and "
        "one where a stage ends), latencies in nanoseconds; tagged lines for the uncorrected "
        "latencies (open model) and each method of a scenario",
    )
    output.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        help="print a progress line a second on stderr (default: when stderr is a terminal, "
        "and not with --json)",
    )
    output.add_argument(
        "--fail-if",
        type=parse_threshold,
        action="append",
        default=[],
        metavar="EXPR",
        help=THRESHOLD_HELP,
    )
    parser.set_defaults(run=run)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a positive number")
    return value


def _positive_duration(text: str) -> float:
    try:
        value = parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be more than 0")
    return value


def _stages(text: str) -> tuple[Stage, ...]:
    try:
        return parse_stages(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# ---------------------------------------------------------------------------------- running


def _plan(args: argparse.Namespace) -> LoadPlan:
    """The run the arguments ask for, checked."""
    if args.scenario is not None and (args.method is not None or args.arguments):
        raise CommandError("give either METHOD [ARGS...] or --scenario, not both", EXIT_USAGE)
    if args.scenario is None and args.method is None:
        raise CommandError("name the METHOD to call (or give a --scenario)", EXIT_USAGE)
    if args.stages is not None:
        for flag in ("rate", "concurrency", "duration", "calls"):
            if getattr(args, flag) is not None:
                raise CommandError(
                    f"--stages sets the rate and the length; it cannot go with --{flag}", EXIT_USAGE
                )
    if args.rate is not None and args.concurrency is not None:
        raise CommandError(
            "--concurrency is for the closed model; with --rate, calls in flight follow from the rate "
            "(capped by --max-in-flight)",
            EXIT_USAGE,
        )
    call_args, call_kwargs = parse_arguments(args.arguments)
    plan = LoadPlan(
        method=args.method or "",
        args=call_args,
        kwargs=call_kwargs,
        concurrency=args.concurrency or 64,
        rate=args.rate,
        duration=None if args.calls or args.stages else (args.duration or 10.0),
        calls=args.calls,
        warmup=args.warmup,
        timeout=args.timeout,
        max_in_flight=args.max_in_flight,
        stages=args.stages or (),
        scenario=args.scenario,
    )
    processes = args.processes
    if plan.model == "closed":
        if processes > plan.concurrency:
            raise CommandError(
                f"--processes {processes} is more than the {plan.concurrency} calls in flight", EXIT_USAGE
            )
        per_process = plan.concurrency // processes
        if args.connections > per_process:
            each = " in each process" if processes > 1 else ""
            raise CommandError(
                f"--connections {args.connections} is more than the {per_process} calls in flight{each}",
                EXIT_USAGE,
            )
    if plan.calls is not None and processes > plan.calls:
        raise CommandError(f"--processes {processes} is more than the {plan.calls} calls to make", EXIT_USAGE)
    return plan


class _Intervals:
    """Where each interval of the run goes: the progress lines, the interval log."""

    def __init__(self, progress: ProgressPrinter | None, hlog: TextIO | None) -> None:
        self.progress = progress
        self.hlog = hlog
        self.writer: IntervalLogWriter | None = None

    def _writer(self, began_at: float) -> IntervalLogWriter:
        if self.writer is None:
            assert self.hlog is not None
            self.writer = IntervalLogWriter(
                self.hlog, began_at, comment=f"Logged with pbfast bench {__version__}"
            )
        return self.writer

    def interval(self, interval: Interval) -> None:
        if self.progress is not None:
            self.progress.interval(interval)
        if self.hlog is not None:
            writer = self._writer(interval.began_at)
            start, length, tally = interval.start, interval.length, interval.tally
            writer.interval(start, length, tally.latency)
            if tally.uncorrected is not None:
                writer.interval(start, length, tally.uncorrected, tag="uncorrected")
            for name, method in interval.methods.items():
                writer.interval(start, length, method.latency, tag=f"method:{name}")

    def close(self, result: LoadResult | None) -> None:
        if self.hlog is not None:
            if result is not None:
                self._writer(result.began_at)
            self.hlog.close()


def run(args: argparse.Namespace) -> int:
    plan = _plan(args)
    scenario = load_scenario(plan.scenario) if plan.scenario else None
    show_progress = args.progress if args.progress is not None else (sys.stderr.isatty() and not args.json)
    progress = ProgressPrinter(plan, sys.stderr) if show_progress else None
    hlog = None
    if args.hlog is not None:
        try:
            hlog = args.hlog.open("w", encoding="utf-8")
        except OSError as e:
            raise CommandError(f"cannot write --hlog {args.hlog}: {describe(e)}", EXIT_USAGE) from None
    intervals = _Intervals(progress, hlog)
    result = None
    try:
        if args.processes == 1:
            result = run_loop(_bench(args.target, plan, args.connections, scenario, intervals, progress))
        else:
            result = _bench_processes(
                args.target, plan, args.connections, args.processes, intervals, progress
            )
    finally:
        intervals.close(result)
    crossed = [t for t in args.fail_if if t.crossed(result)]
    if args.json:
        json.dump(to_json(result, args.target, args.fail_if), sys.stdout)
        sys.stdout.write("\n")
    else:
        report(result, args.target, args.fail_if, sys.stdout)
    for threshold in crossed:
        value = threshold.show(threshold.measure(result))
        print(
            f"pbfast bench: threshold crossed: {threshold.text} ({threshold.metric} = {value})",
            file=sys.stderr,
        )
    if result.stopped_early and result.stopped_early != "interrupted":
        raise CommandError(f"the run stopped early: {result.stopped_early}")
    if result.stopped_early == "interrupted":
        return 130
    return EXIT_THRESHOLD if crossed else 0


async def _bench(
    target: str,
    plan: LoadPlan,
    connections: int,
    scenario: Scenario | None,
    intervals: _Intervals,
    progress: ProgressPrinter | None,
) -> LoadResult:
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGINT, interrupted.set)
    try:
        async with open_references(target, connections=connections, timeout=plan.timeout) as refs:
            if progress is not None:
                progress.warming_up()
            return await run_load(
                refs, plan, scenario=scenario, on_interval=intervals.interval, interrupted=interrupted
            )
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGINT)


def _bench_processes(
    target: str,
    plan: LoadPlan,
    connections: int,
    processes: int,
    intervals: _Intervals,
    progress: ProgressPrinter | None,
) -> LoadResult:
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda number, frame: stop.set())
    try:
        return run_processes(
            target,
            plan,
            connections,
            processes,
            on_start=progress.warming_up if progress is not None else None,
            on_interval=intervals.interval,
            stop=stop,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
