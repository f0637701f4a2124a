"""``pbfast bench``'s report of a run: for people (`report`) and as one JSON object (`to_json`)."""

from __future__ import annotations

from typing import Any, TextIO

from .. import __version__, build_profile
from .common import format_duration
from .histogram import Histogram
from .loadgen import LATE_AFTER
from .results import LoadPlan, LoadResult, Tally
from .thresholds import Threshold

__all__ = ["report", "to_json", "describe_plan", "PERCENTS"]

PERCENTS = (50.0, 90.0, 99.0, 99.9)


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'s' if count != 1 else ''}"


def describe_plan(plan: LoadPlan, connections: int, processes: int = 1) -> str:
    what = "iterations" if plan.scenario else "calls"
    each = " each" if processes > 1 else ""
    over = f"over {_plural(connections // processes, 'connection')}{each}"
    if plan.stages:
        load = f"open model, {_plural(len(plan.stages), 'stage')} of {what}/s {over}"
    elif plan.rate is None and plan.scenario:
        load = f"closed model, {_plural(plan.concurrency, 'user')} {over}"
    elif plan.rate is None:
        load = f"closed model, {_plural(plan.concurrency, 'call')} in flight {over}"
    else:
        load = f"open model, {plan.rate:,.6g} {what}/s {over}"
    if plan.rate is not None or plan.stages:
        load += f" (at most {plan.max_in_flight:,} in flight)"
    if processes > 1:
        load += f", in {processes} processes"
    if plan.stages:
        length = f"{sum(s.duration for s in plan.stages):g} s"
    else:
        length = f"{plan.duration:g} s" if plan.duration else f"{plan.calls:,} {what}"
    warmup = f" after a {plan.warmup:g} s warm-up" if plan.warmup > 0 else ""
    return f"{load}; {length}{warmup}"


def _what(plan: LoadPlan) -> str:
    if plan.scenario:
        return f"scenario {plan.scenario}"
    shown = ", ".join([*map(repr, plan.args), *(f"{k}={v!r}" for k, v in plan.kwargs.items())])
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{plan.method}({shown})"


def report(result: LoadResult, target: str, thresholds: list[Threshold], out: TextIO) -> None:
    """The human-readable summary of a run."""
    plan = result.plan
    processes = max(len(result.processes), 1)
    unit = "iterations" if plan.scenario else "calls"
    print(f"pbfast bench: {_what(plan)} on {target}", file=out)
    print(f"  {describe_plan(plan, result.connections, processes)}", file=out)
    if result.stopped_early:
        print(f"  stopped early: {result.stopped_early}", file=out)
    print(file=out)
    print(
        f"  {unit:<11} {result.completed:,} in {result.elapsed:.2f} s: {result.ok:,} ok, "
        f"{result.total.failed:,} failed",
        file=out,
    )
    print(f"  throughput  {result.throughput:,.0f} {unit}/s", file=out)
    print(f"  generator   {_generator_load(result, processes)}", file=out)
    if plan.model == "open":
        print(
            f"  schedule    {result.late:,} of {result.sent:,} {unit} sent late (more than "
            f"{format_duration(LATE_AFTER)} behind); worst {format_duration(result.max_lag)}",
            file=out,
        )
    print(file=out)
    label = "latency (from intended start)" if plan.model == "open" else "latency"
    if plan.scenario:
        label = f"iteration {label}"
    _latency_lines(label, result.latency, out)
    if result.uncorrected is not None:
        _latency_lines("uncorrected (from actual send)", result.uncorrected, out)
    if result.latency.total:
        print(file=out)
        print("  distribution", file=out)
        for line in _distribution(result.latency):
            print(f"    {line}", file=out)
    if result.stages:
        print(file=out)
        print("  stages (latency from intended start)", file=out)
        _table(
            ["stage", "planned", "sent", "answered", f"{unit}/s", "p50", "p99", "p99.9", "errors"],
            [
                [
                    str(s.number),
                    s.stage.describe(),
                    f"{s.tally.sent:,}",
                    f"{s.tally.completed:,}",
                    f"{s.throughput:,.0f}",
                    *_marks(s.tally.latency, (50.0, 99.0, 99.9)),
                    f"{s.tally.failed:,}",
                ]
                for s in result.stages
            ],
            out,
        )
    if result.methods:
        print(file=out)
        print("  calls by method (each callRemote in the scenario, from send to answer)", file=out)
        _table(
            ["method", "calls", "calls/s", "errors", "p50", "p90", "p99", "p99.9", "max"],
            [
                [
                    name,
                    f"{t.sent:,}",
                    f"{t.completed / result.elapsed if result.elapsed else 0:,.0f}",
                    f"{t.failed:,}",
                    *_marks(t.latency, (50.0, 90.0, 99.0, 99.9)),
                    format_duration(t.latency.max / 1e9) if t.latency.total else "-",
                ]
                for name, t in result.methods.items()
            ],
            out,
        )
    if result.processes:
        print(file=out)
        print("  processes", file=out)
        _table(
            ["process", unit, f"{unit}/s", "p50", "p99", "p99.9", "errors", "CPU s"],
            [
                [
                    str(number),
                    f"{p.completed:,}",
                    f"{p.throughput:,.0f}",
                    *_marks(p.latency, (50.0, 99.0, 99.9)),
                    f"{p.total.failed:,}",
                    f"{p.cpu:.2f}",
                ]
                for number, p in enumerate(result.processes, 1)
            ],
            out,
        )
    errors = result.errors
    if errors:
        print(file=out)
        print("  errors", file=out)
        for name, count in errors.most_common():
            print(f"    {count:>10,}  {name}", file=out)
    if thresholds:
        print(file=out)
        print("  thresholds", file=out)
        for threshold in thresholds:
            verdict = "CROSSED" if threshold.crossed(result) else "ok"
            value = threshold.show(threshold.measure(result))
            print(f"    {verdict:<8} {threshold.text}  ({threshold.metric} = {value})", file=out)


def _marks(histogram: Histogram, percents: tuple[float, ...]) -> list[str]:
    if not histogram.total:
        return ["-"] * len(percents)
    marks = histogram.percentiles(percents)
    return [format_duration(marks[p] / 1e9) for p in percents]


def _table(header: list[str], rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        cells = [
            cell.ljust(w) if i < 2 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        print(f"    {'  '.join(cells).rstrip()}", file=out)


def _generator_load(result: LoadResult, processes: int) -> str:
    """How busy the load processes were: near 100 % of a core each in the closed model, they may
    be what limits the run."""
    share = result.cpu / result.elapsed if result.elapsed else 0.0
    per_call = f", {result.cpu / result.completed * 1e6:.1f} µs a call" if result.completed else ""
    cores = "one core" if processes == 1 else f"one core; {processes} processes"
    text = f"{result.cpu:.2f} s of CPU ({share:.0%} of {cores}){per_call}"
    if result.plan.model == "open":
        return text + "; it goes round the loop while a call is due within a millisecond"
    if share > 0.9 * processes:
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


# ---------------------------------------------------------------------------------- JSON


def _latency_json(histogram: Histogram | None) -> dict[str, Any] | None:
    if histogram is None:
        return None
    marks = histogram.percentiles((*PERCENTS, 100.0))
    figures: dict[str, Any] = {f"p{p:g}": marks[p] / 1e3 for p in PERCENTS}
    figures.update(
        min=histogram.min / 1e3,
        mean=histogram.mean / 1e3,
        stdev=histogram.stdev / 1e3,
        max=histogram.max / 1e3,
    )
    figures["count"] = histogram.total
    return figures


def _tally_json(tally: Tally, open_model: bool) -> dict[str, Any]:
    return {
        "sent": tally.sent,
        "completed": tally.completed,
        "ok": tally.ok,
        "failed": tally.failed,
        "errors": dict(tally.errors.most_common()),
        "latency_us": _latency_json(tally.latency),
        "uncorrected_latency_us": _latency_json(tally.uncorrected),
        "late_sends": tally.late if open_model else None,
        "max_send_lag_us": tally.max_lag / 1e3 if open_model else None,
    }


def _figures(result: LoadResult) -> dict[str, Any]:
    """What one run (or one process of it) measured."""
    open_model = result.plan.model == "open"
    return {
        "connections": result.connections,
        "elapsed_s": result.elapsed,
        **_tally_json(result.total, open_model),
        "throughput": result.throughput,
        "generator_cpu_s": result.cpu,
        "histogram_us": [[low / 1e3, high / 1e3, count] for low, high, count in result.latency.buckets()],
        "stages": [
            {
                "stage": s.number,
                "duration_s": s.stage.duration,
                "rate": s.stage.rate,
                "elapsed_s": s.elapsed,
                **_tally_json(s.tally, open_model),
                "throughput": s.throughput,
            }
            for s in result.stages
        ],
        "methods": {
            name: {
                "calls": t.sent,
                "completed": t.completed,
                "ok": t.ok,
                "failed": t.failed,
                "errors": dict(t.errors.most_common()),
                "throughput": t.completed / result.elapsed if result.elapsed else 0.0,
                "latency_us": _latency_json(t.latency),
            }
            for name, t in result.methods.items()
        },
        "stopped_early": result.stopped_early,
    }


def to_json(result: LoadResult, target: str, thresholds: list[Threshold]) -> dict[str, Any]:
    """The run as one JSON object (latencies in microseconds). With --processes, the figures are
    the processes' added up, and ``per_process`` has each one's."""
    plan = result.plan
    open_model = plan.model == "open"
    return {
        "pbfast": __version__,
        "build": build_profile,
        "target": target,
        "method": None if plan.scenario else plan.method,
        "args": [repr(a) for a in plan.args],
        "kwargs": {k: repr(v) for k, v in plan.kwargs.items()},
        "scenario": plan.scenario,
        "model": plan.model,
        "concurrency": None if open_model else plan.concurrency,
        "rate": plan.rate,
        "max_in_flight": plan.max_in_flight if open_model else None,
        "duration_s": sum(s.duration for s in plan.stages) if plan.stages else plan.duration,
        "calls_planned": plan.calls,
        "warmup_s": plan.warmup,
        "processes": max(len(result.processes), 1),
        **_figures(result),
        "late_after_us": LATE_AFTER * 1e6 if open_model else None,
        "per_process": [_figures(p) for p in result.processes],
        "thresholds": [
            {"expr": t.text, "metric": t.metric, "value": t.measure(result), "crossed": t.crossed(result)}
            for t in thresholds
        ],
        "passed": not any(t.crossed(result) for t in thresholds),
    }
