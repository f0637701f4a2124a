"""``pbfast bench --fail-if EXPR``: thresholds that fail a run."""

from __future__ import annotations

import argparse
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

from .common import format_duration, parse_duration
from .results import LoadResult

__all__ = ["Threshold", "parse_threshold", "THRESHOLD_HELP"]

_LATENCY_METRICS = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99.9": 99.9, "max": 100.0, "mean": None}
_OTHER_METRICS = ("throughput", "errors", "error_rate", "late")
_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}
_THRESHOLD = re.compile(r"\s*([a-z_]+[0-9.]*)\s*(>=|<=|>|<)\s*(\S+)\s*")

THRESHOLD_HELP = (
    "exit with code 3 if EXPR holds; repeatable. EXPR is METRIC OP VALUE with OP one of "
    "> >= < <=; METRIC one of p50 p90 p99 p99.9 max mean (VALUE a duration: 5ms, 250us), "
    "throughput (calls/s), errors, error_rate (VALUE like 1%%), late. Examples: 'p99>5ms', "
    "'errors>0', 'throughput<50000'"
)


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
