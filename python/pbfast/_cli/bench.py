"""``pbfast bench TARGET METHOD [ARGS...]``: load-test a remote method."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import operator
import re
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from .. import __version__, build_profile
from ..pb import run as run_loop
from .call import ARGS_HELP, TARGET_HELP
from .common import (
    EXIT_THRESHOLD,
    EXIT_USAGE,
    CommandError,
    format_duration,
    open_references,
    parse_arguments,
    parse_duration,
)
from .histogram import Histogram
from .loadgen import LATE_AFTER, LoadPlan, LoadResult, Snapshot, run_load

__all__ = ["add_parser", "run", "Threshold", "parse_threshold", "report", "PERCENTS"]

PERCENTS = (50.0, 90.0, 99.0, 99.9)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "bench",
        help="load-test a remote method: latency percentiles, throughput, errors",
        description="Call METHOD on TARGET over and over and report latency percentiles (from a "
        "full-resolution histogram), throughput and errors by type. Closed model by default: "
        "--concurrency calls in flight, each answer sending the next. Open model with --rate: "
        "calls start on schedule whether or not answers have come, and latency counts from each "
        "call's intended start (correcting coordinated omission; the uncorrected figures are shown "
        "too). Exit codes: 0 done, 1 failed to run, 2 bad usage, 3 a --fail-if threshold crossed.",
        epilog="example: pbfast bench tcp:host=127.0.0.1:port=8787 echo 1 --concurrency 64 "
        "--duration 10s --fail-if 'p99>5ms' --fail-if 'errors>0'",
    )
    parser.add_argument("target", metavar="TARGET", help=TARGET_HELP)
    parser.add_argument("method", metavar="METHOD", help="the method's name, without remote_")
    parser.add_argument("arguments", metavar="ARGS", nargs="*", help=ARGS_HELP)
    model = parser.add_argument_group("load")
    model.add_argument(
        "-c",
        "--concurrency",
        type=_positive_int,
        metavar="N",
        help="closed model: calls in flight (default 64)",
    )
    model.add_argument(
        "-r", "--rate", type=_positive_float, metavar="R", help="open model: calls started per second"
    )
    model.add_argument(
        "--connections",
        type=_positive_int,
        default=1,
        metavar="C",
        help="connections to spread calls over (default 1)",
    )
    model.add_argument(
        "--max-in-flight",
        type=_positive_int,
        default=10_000,
        metavar="N",
        help="open model: calls in flight at most; calls due beyond it wait (and count as late) "
        "(default 10000)",
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
    how_long.add_argument("-n", "--calls", type=_positive_int, metavar="N", help="how many calls to measure")
    length.add_argument(
        "--warmup",
        type=parse_duration,
        default=1.0,
        metavar="DURATION",
        help="run this long first without measuring (default 1s)",
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
        "--fail-if",
        type=parse_threshold,
        action="append",
        default=[],
        metavar="EXPR",
        help="exit with code 3 if EXPR holds; repeatable. EXPR is METRIC OP VALUE with OP one of "
        "> >= < <=; METRIC one of p50 p90 p99 p99.9 max mean (VALUE a duration: 5ms, 250us), "
        "throughput (calls/s), errors, error_rate (VALUE like 1%%), late. Examples: 'p99>5ms', "
        "'errors>0', 'throughput<50000'",
    )
    parser.set_defaults(run=run)


# ---------------------------------------------------------------------------------- thresholds

_LATENCY_METRICS = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99.9": 99.9, "max": 100.0, "mean": None}
_OTHER_METRICS = ("throughput", "errors", "error_rate", "late")
_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}
_THRESHOLD = re.compile(r"\s*([a-z_]+[0-9.]*)\s*(>=|<=|>|<)\s*(\S+)\s*")


@dataclass(frozen=True)
class Threshold:
    """``metric op value``: the run fails if it holds. Latencies are in seconds."""

    text: str
    metric: str
    op: str
    value: float

    def measure(self, result: LoadResult) -> float:
        if self.metric in _LATENCY_METRICS:
            percent = _LATENCY_METRICS[self.metric]
            ns = result.latency.mean if percent is None else result.latency.percentile(percent)
            return ns / 1e9
        if self.metric == "throughput":
            return result.throughput
        if self.metric == "errors":
            return float(sum(result.errors.values()))
        if self.metric == "error_rate":
            return sum(result.errors.values()) / result.completed if result.completed else 0.0
        return float(result.late)

    def crossed(self, result: LoadResult) -> bool:
        return _OPERATORS[self.op](self.measure(result), self.value)

    def show(self, value: float) -> str:
        if self.metric in _LATENCY_METRICS:
            return format_duration(value)
        if self.metric == "error_rate":
            return f"{value:.3%}"
        if self.metric == "throughput":
            return f"{value:,.0f} calls/s"
        return f"{value:,.0f}"


def parse_threshold(text: str) -> Threshold:
    """Parse a ``--fail-if`` expression.

    Raises:
        argparse.ArgumentTypeError: (a usage error) a malformed expression.
    """
    m = _THRESHOLD.fullmatch(text)
    if m is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not METRIC OP VALUE, like 'p99>5ms' or 'errors>0'")
    metric, op, raw = m.groups()
    try:
        if metric in _LATENCY_METRICS:
            value = parse_duration(raw, default_unit="ms")
        elif metric == "error_rate":
            value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
        elif metric in _OTHER_METRICS:
            value = float(raw.replace("_", "").replace(",", ""))
        else:
            known = ", ".join([*_LATENCY_METRICS, *_OTHER_METRICS])
            raise argparse.ArgumentTypeError(f"{text!r}: unknown metric {metric!r} (one of {known})")
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: bad value {raw!r}: {e}") from None
    if math.isnan(value):
        raise argparse.ArgumentTypeError(f"{text!r}: bad value {raw!r}")
    return Threshold(text.strip(), metric, op, value)


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


# ---------------------------------------------------------------------------------- running


def run(args: argparse.Namespace) -> int:
    if args.rate is not None and args.concurrency is not None:
        raise CommandError(
            "--concurrency is for the closed model; with --rate, calls in flight follow from the rate "
            "(capped by --max-in-flight)",
            EXIT_USAGE,
        )
    call_args, call_kwargs = parse_arguments(args.arguments)
    plan = LoadPlan(
        method=args.method,
        args=call_args,
        kwargs=call_kwargs,
        concurrency=args.concurrency or 64,
        rate=args.rate,
        duration=None if args.calls else (args.duration or 10.0),
        calls=args.calls,
        warmup=args.warmup,
        timeout=args.timeout,
        max_in_flight=args.max_in_flight,
    )
    if plan.rate is None and args.connections > plan.concurrency:
        raise CommandError(
            f"--connections {args.connections} is more than the {plan.concurrency} calls in flight",
            EXIT_USAGE,
        )
    live = sys.stdout.isatty() and not args.json

    result = run_loop(_bench(args.target, plan, args.connections, live))
    if live:
        _clear_progress(sys.stdout)
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


async def _bench(target: str, plan: LoadPlan, connections: int, live: bool) -> LoadResult:
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGINT, interrupted.set)
    try:
        async with open_references(target, connections=connections, timeout=plan.timeout) as refs:
            progress = _progress_printer(plan, sys.stdout) if live else None
            return await run_load(refs, plan, progress=progress, interrupted=interrupted)
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGINT)


def _progress_printer(plan: LoadPlan, out: TextIO) -> Callable[[Snapshot], None]:
    last = Snapshot(warming_up=True, elapsed=0.0, completed=0, errors=0, in_flight=0, p99=0)

    def show(snapshot: Snapshot) -> None:
        nonlocal last
        if snapshot.warming_up:
            line = f"warming up for {plan.warmup:g} s, {snapshot.in_flight:,} calls in flight"
        else:
            if last.warming_up:
                last = Snapshot(False, 0.0, 0, 0, 0, 0)
            rate = (snapshot.completed - last.completed) / max(snapshot.elapsed - last.elapsed, 1e-9)
            done = (
                f" / {plan.duration:g}s"
                if plan.duration
                else f", {snapshot.completed:,}/{plan.calls:,} calls"
            )
            p99 = format_duration(snapshot.p99 / 1e9)
            line = (
                f"{snapshot.elapsed:5.1f}s{done}  {rate:,.0f} calls/s  p99 {p99}"
                f"  errors {snapshot.errors:,}  in flight {snapshot.in_flight:,}"
            )
        last = snapshot
        out.write("\r\x1b[K" + line)
        out.flush()

    return show


def _clear_progress(out: TextIO) -> None:
    out.write("\r\x1b[K")
    out.flush()


# ---------------------------------------------------------------------------------- reporting


def describe_plan(plan: LoadPlan, connections: int) -> str:
    over = f"over {connections} connection{'s' if connections != 1 else ''}"
    if plan.rate is None:
        load = f"closed model, {plan.concurrency} call{'s' if plan.concurrency != 1 else ''} in flight {over}"
    else:
        load = f"open model, {plan.rate:,.6g} calls/s {over} (at most {plan.max_in_flight:,} in flight)"
    length = f"{plan.duration:g} s" if plan.duration else f"{plan.calls:,} calls"
    warmup = f" after a {plan.warmup:g} s warm-up" if plan.warmup > 0 else ""
    return f"{load}; {length}{warmup}"


def report(result: LoadResult, target: str, thresholds: list[Threshold], out: TextIO) -> None:
    """The human-readable summary of a run."""
    plan = result.plan
    shown = ", ".join([*map(repr, plan.args), *(f"{k}={v!r}" for k, v in plan.kwargs.items())])
    if len(shown) > 60:
        shown = shown[:57] + "..."
    failed = sum(result.errors.values())
    print(f"pbfast bench: {plan.method}({shown}) on {target}", file=out)
    print(f"  {describe_plan(plan, result.connections)}", file=out)
    if result.stopped_early:
        print(f"  stopped early: {result.stopped_early}", file=out)
    print(file=out)
    print(
        f"  calls       {result.completed:,} in {result.elapsed:.2f} s: {result.ok:,} ok, {failed:,} failed",
        file=out,
    )
    print(f"  throughput  {result.throughput:,.0f} calls/s", file=out)
    print(f"  generator   {_generator_load(result)}", file=out)
    if plan.rate is not None:
        print(
            f"  schedule    {result.late:,} of {result.sent:,} calls sent late (more than "
            f"{format_duration(LATE_AFTER)} behind); worst {format_duration(result.max_lag)}",
            file=out,
        )
    print(file=out)
    label = "latency (from intended start)" if plan.rate is not None else "latency"
    _latency_lines(label, result.latency, out)
    if result.uncorrected is not None:
        _latency_lines("uncorrected (from actual send)", result.uncorrected, out)
    if result.latency.total:
        print(file=out)
        print("  distribution", file=out)
        for line in _distribution(result.latency):
            print(f"    {line}", file=out)
    if result.errors:
        print(file=out)
        print("  errors", file=out)
        for name, count in result.errors.most_common():
            print(f"    {count:>10,}  {name}", file=out)
    if thresholds:
        print(file=out)
        print("  thresholds", file=out)
        for threshold in thresholds:
            verdict = "CROSSED" if threshold.crossed(result) else "ok"
            value = threshold.show(threshold.measure(result))
            print(f"    {verdict:<8} {threshold.text}  ({threshold.metric} = {value})", file=out)


def _generator_load(result: LoadResult) -> str:
    """How busy this process was: near 100 % in the closed model, it may be what limits the run."""
    share = result.cpu / result.elapsed if result.elapsed else 0.0
    per_call = f", {result.cpu / result.completed * 1e6:.1f} µs a call" if result.completed else ""
    text = f"{result.cpu:.2f} s of CPU ({share:.0%} of one core){per_call}"
    if result.plan.rate is not None:
        return text + "; it goes round the loop while a call is due within a millisecond"
    if share > 0.9:
        return text + "; busy throughout, so it may be what limits this run"
    return text


def _latency_lines(label: str, histogram: Histogram, out: TextIO) -> None:
    if not histogram.total:
        print(f"  {label}: no answers", file=out)
        return
    marks = histogram.percentiles((*PERCENTS, 100.0))
    cells = [f"p{p:g} {format_duration(marks[p] / 1e9)}" for p in PERCENTS]
    cells.append(f"max {format_duration(histogram.max / 1e9)}")
    print(f"  {label}", file=out)
    print(f"    {'   '.join(cells)}", file=out)
    print(
        f"    min {format_duration(histogram.min / 1e9)}   mean {format_duration(histogram.mean / 1e9)}"
        f"   stdev {format_duration(histogram.stdev / 1e9)}",
        file=out,
    )


def _distribution(histogram: Histogram, rows: int = 12, width: int = 40) -> list[str]:
    """The histogram folded into `rows` log-spaced ranges, as bars."""
    low, high = max(histogram.min, 1), max(histogram.max, 1)
    ratio = (high / low) ** (1 / rows) if high > low else 2.0
    edges = [low * ratio**i for i in range(1, rows + 1)]
    edges[-1] = high
    counts = [0] * rows
    row = 0
    for _, top, count in histogram.buckets():
        while row < rows - 1 and top > edges[row]:
            row += 1
        counts[row] += count
    most = max(counts) or 1
    total = sum(counts)
    lines = []
    for edge, count in zip(edges, counts, strict=True):
        bar = "■" * max(1, round(width * count / most)) if count else ""
        lines.append(f"≤ {format_duration(edge / 1e9):>9}  {count:>10,}  {count / total:6.2%}  {bar}")
    return lines


def to_json(result: LoadResult, target: str, thresholds: list[Threshold]) -> dict[str, Any]:
    """The run as one JSON object (latencies in microseconds)."""
    plan = result.plan

    def latency(histogram: Histogram | None) -> dict[str, Any] | None:
        if histogram is None:
            return None
        marks = histogram.percentiles((*PERCENTS, 100.0))
        figures = {f"p{p:g}": marks[p] / 1e3 for p in PERCENTS}
        figures.update(
            min=histogram.min / 1e3,
            mean=histogram.mean / 1e3,
            stdev=histogram.stdev / 1e3,
            max=histogram.max / 1e3,
        )
        figures["count"] = histogram.total
        return figures

    return {
        "pbfast": __version__,
        "build": build_profile,
        "target": target,
        "method": plan.method,
        "args": [repr(a) for a in plan.args],
        "kwargs": {k: repr(v) for k, v in plan.kwargs.items()},
        "model": plan.model,
        "concurrency": plan.concurrency if plan.rate is None else None,
        "rate": plan.rate,
        "connections": result.connections,
        "max_in_flight": plan.max_in_flight if plan.rate is not None else None,
        "duration_s": plan.duration,
        "calls_planned": plan.calls,
        "warmup_s": plan.warmup,
        "elapsed_s": result.elapsed,
        "sent": result.sent,
        "completed": result.completed,
        "ok": result.ok,
        "failed": sum(result.errors.values()),
        "errors": dict(result.errors.most_common()),
        "throughput": result.throughput,
        "latency_us": latency(result.latency),
        "uncorrected_latency_us": latency(result.uncorrected),
        "late_sends": result.late if plan.rate is not None else None,
        "late_after_us": LATE_AFTER * 1e6 if plan.rate is not None else None,
        "max_send_lag_us": result.max_lag * 1e6 if plan.rate is not None else None,
        "generator_cpu_s": result.cpu,
        "histogram_us": [[low / 1e3, high / 1e3, count] for low, high, count in result.latency.buckets()],
        "stopped_early": result.stopped_early,
        "thresholds": [
            {"expr": t.text, "metric": t.metric, "value": t.measure(result), "crossed": t.crossed(result)}
            for t in thresholds
        ],
        "passed": not any(t.crossed(result) for t in thresholds),
    }
