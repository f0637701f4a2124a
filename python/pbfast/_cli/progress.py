"""``pbfast bench``'s progress while it runs: a line a second on stderr, from each interval."""

from __future__ import annotations

from typing import TextIO

from .common import format_duration
from .results import Interval, LoadPlan

__all__ = ["ProgressPrinter"]


class ProgressPrinter:
    """Prints each interval of a run as it ends: when, the stage, calls/s, p50/p99, errors and
    calls in flight (a line for people, not a format to parse)."""

    def __init__(self, plan: LoadPlan, out: TextIO) -> None:
        self.plan = plan
        self.out = out
        self.unit = "iterations" if plan.scenario else "calls"
        if plan.stages:
            self.length = f"/{sum(s.duration for s in plan.stages):g}s"
        else:
            self.length = f"/{plan.duration:g}s" if plan.duration else ""
        self.errors = 0

    def warming_up(self) -> None:
        if self.plan.warmup > 0:
            self._print(f"warming up for {self.plan.warmup:g} s")

    def interval(self, interval: Interval) -> None:
        tally = interval.tally
        self.errors += tally.failed
        rate = tally.completed / interval.length if interval.length > 0 else 0.0
        cells = [f"{interval.end:6.1f}s{self.length}"]
        if self.plan.stages:
            stage = self.plan.stages[interval.stage]
            cells.append(f"stage {interval.stage + 1}/{len(self.plan.stages)} ({stage.rate:,.6g}/s)")
        cells.append(f"{rate:,.0f} {self.unit}/s")
        if tally.latency.total:
            marks = tally.latency.percentiles((50.0, 99.0))
            cells.append(
                f"p50 {format_duration(marks[50.0] / 1e9)}  p99 {format_duration(marks[99.0] / 1e9)}"
            )
        else:
            cells.append("no answers")
        cells.append(f"errors {tally.failed:,} ({self.errors:,} in all)")
        cells.append(f"in flight {interval.in_flight:,}")
        self._print("  ".join(cells))

    def _print(self, line: str) -> None:
        self.out.write(f"pbfast bench: {line}\n")
        self.out.flush()
