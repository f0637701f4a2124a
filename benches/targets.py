"""The project's speed targets: one list, read by ``compare.py``'s report and, for the ratios they
can work out alone, by ``rpc.py``'s and ``tub.py``'s own reports. Change a target here.

Each target divides one figure of one system (a row of ``compare.py``'s table) by the same figure of
another, and compares the ratio with the target. The rows are

* ``pb``: pbfast on the PB wire; ``tub``: a pbfast Tub (foolscap over TLS);
* ``twisted``: stock Twisted PB; ``foolscap``: a stock foolscap Tub;
* ``raw``: the raw uvloop client with a future per call and batched writes (the ceiling for an
  asyncio RPC library); ``floor``: the raw callback floor (no futures, one write per read);
  ``raw_tls``: the raw client with futures over TLS (uvloop and the ``ssl`` module);
* ``codec``: ``pbfast.dumps`` + ``pbfast.loads``; ``pickle``: ``pickle.dumps`` + ``pickle.loads``.

and the figures

* ``calls_per_second``: pipelined ``echo(1)``, 100 calls outstanding (higher is better);
* ``median_us``: sequential ``echo(1)``, median latency (lower is better);
* ``dicts_calls_per_second``: pipelined echo of the 1,000 small dicts, 8 calls outstanding;
* ``bulk_mb_per_second``: pipelined echo of a 1 MiB byte string, 4 calls outstanding, in MB of
  payload per second each way;
* ``setup_median_ms``: a fresh client Tub's connection, to its first answer (lower is better);
* ``round_trips_per_second``: dumps + loads of the 1,000 small dicts, in process.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Target(NamedTuple):
    label: str
    key: str  # the ratio's key in the JSON
    numerator: str  # a row
    denominator: str  # a row
    figure: str
    comparison: str | None  # ">=" or "<="; None: the ratio is shown, nothing is aimed at
    target: float | None


TARGETS = (
    Target(
        "pbfast PB / raw uvloop with futures, 1 MiB echo MB/s",
        "pbfast/raw bulk",
        "pb",
        "raw",
        "bulk_mb_per_second",
        ">=",
        0.8,
    ),
    Target(
        "pbfast Tub / raw uvloop with futures, 1 MiB echo MB/s",
        "tub/raw bulk",
        "tub",
        "raw",
        "bulk_mb_per_second",
        ">=",
        0.8,
    ),
    Target(
        "pbfast Tub / raw uvloop over TLS, 1 MiB echo MB/s",
        "tub/raw-tls bulk",
        "tub",
        "raw_tls",
        "bulk_mb_per_second",
        None,
        None,
    ),
    Target(
        "raw uvloop over TLS / raw uvloop, 1 MiB echo MB/s (what TLS costs)",
        "raw-tls/raw bulk",
        "raw_tls",
        "raw",
        "bulk_mb_per_second",
        None,
        None,
    ),
    Target(
        "pbfast Tub / pbfast PB, pipelined calls/s",
        "tub/pb throughput",
        "tub",
        "pb",
        "calls_per_second",
        ">=",
        0.8,
    ),
    Target(
        "pbfast Tub / pbfast PB, sequential median latency",
        "tub/pb median latency",
        "tub",
        "pb",
        "median_us",
        "<=",
        1.25,
    ),
    Target(
        "pbfast Tub / pbfast PB, 1,000-dict echo calls/s",
        "tub/pb dicts throughput",
        "tub",
        "pb",
        "dicts_calls_per_second",
        ">=",
        0.8,
    ),
    Target(
        "pbfast codec / pickle, dumps+loads of 1,000 dicts",
        "codec/pickle round trip",
        "codec",
        "pickle",
        "round_trips_per_second",
        ">=",
        2.0,
    ),
    Target(
        "pbfast PB / raw uvloop with futures, pipelined calls/s",
        "pbfast/raw throughput",
        "pb",
        "raw",
        "calls_per_second",
        ">=",
        1.0,
    ),
    Target(
        "pbfast PB / raw uvloop with futures, sequential median latency",
        "pbfast/raw median latency",
        "pb",
        "raw",
        "median_us",
        "<=",
        1.25,
    ),
    Target(
        "pbfast PB / raw callback floor, sequential median latency",
        "pbfast/floor median latency",
        "pb",
        "floor",
        "median_us",
        "<=",
        1.25,
    ),
    Target(
        "pbfast PB / raw callback floor, pipelined calls/s",
        "pbfast/floor throughput",
        "pb",
        "floor",
        "calls_per_second",
        None,
        None,
    ),
    Target(
        "pbfast PB / Twisted PB, pipelined calls/s",
        "pbfast/twisted throughput",
        "pb",
        "twisted",
        "calls_per_second",
        ">=",
        7.0,
    ),
    Target(
        "pbfast Tub / foolscap Tub, pipelined calls/s",
        "pbfast/foolscap throughput",
        "tub",
        "foolscap",
        "calls_per_second",
        ">=",
        10.0,
    ),
    Target(
        "pbfast Tub / foolscap Tub, sequential median latency",
        "pbfast/foolscap median latency",
        "tub",
        "foolscap",
        "median_us",
        "<=",
        1 / 3,
    ),
    Target(
        "pbfast Tub / foolscap Tub, connection setup median",
        "pbfast/foolscap connection setup",
        "tub",
        "foolscap",
        "setup_median_ms",
        None,
        None,
    ),
)

# The figures rpc.py and tub.py work out themselves, by the names their results use (with --bulk,
# the ratio of MB/s is that of calls/s).
MEASURES = {
    "calls_per_second": "throughput",
    "median_us": "median",
    "setup_median_ms": "setup",
    "bulk_mb_per_second": "throughput",
}


def verdict(ratio: float | None, comparison: str | None, target: float | None) -> str | None:
    """PASS or MISS; None where a side did not run or nothing is aimed at."""
    if ratio is None or comparison is None or target is None:
        return None
    return "PASS" if (ratio >= target if comparison == ">=" else ratio <= target) else "MISS"


def fmt_target(comparison: str | None, target: float | None) -> str:
    if comparison is None or target is None:
        return "–"
    return f"{comparison.replace('>=', '≥').replace('<=', '≤')} {target:.3g}×"


def for_script(rows: dict[str, str], bulk: bool = False) -> tuple[tuple[Any, ...], ...]:
    """The targets between two of `rows` (a row -> that script's name of the system) on a figure
    the script measures (with `bulk`, those of ``--bulk``; else the others), in the form of
    ``rpc.TARGETS``: (label, key, numerator, denominator, measure, comparison, target)."""
    return tuple(
        (t.label, t.key, rows[t.numerator], rows[t.denominator], MEASURES[t.figure], t.comparison, t.target)
        for t in TARGETS
        if t.numerator in rows
        and t.denominator in rows
        and t.figure in MEASURES
        and (t.figure == "bulk_mb_per_second") == bulk
    )
