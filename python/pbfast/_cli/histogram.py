"""An HDR-style latency histogram: fixed memory, ~0.1 % resolution from 1 ns to an hour.

Values (nanoseconds) below 2048 get a bucket each; above, each power of two is split into 1024
equal buckets, so a value is known to within 1/1024 of itself. Recording is a handful of integer
operations, cheap enough for every call of a load run.

The buckets are HdrHistogram's for a lowest discernible value of 1, a highest trackable value of
an hour and 3 significant digits: the counts array is laid out as HdrHistogram's is, so it can be
written in HdrHistogram's formats (see ``hlog.py``) and merged exactly, bucket by bucket.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

__all__ = ["Histogram", "SUB_BITS", "HALF_BITS", "HIGHEST", "SIGNIFICANT_DIGITS", "bucket_index"]

#: Values below ``1 << SUB_BITS`` have a bucket each; the power of two above is split in
#: ``1 << HALF_BITS`` buckets.
SUB_BITS = 11
HALF_BITS = SUB_BITS - 1
_HALF = 1 << HALF_BITS
#: One hour in nanoseconds: larger values are counted in the top bucket (`max` stays exact).
HIGHEST = 3600 * 10**9
#: HdrHistogram's precision parameter for this layout.
SIGNIFICANT_DIGITS = 3
# Buckets up to HIGHEST, and one more for everything above it.
_SIZE = (HIGHEST.bit_length() - SUB_BITS) * _HALF + (1 << SUB_BITS) + 1


def bucket_index(value: int) -> int:
    """The index of `value`'s bucket in `Histogram.counts` (values above an hour share the last
    one; negative values count as 0)."""
    if value < 1 << SUB_BITS:
        return value if value > 0 else 0
    if value >= HIGHEST:
        return _SIZE - 1
    shift = value.bit_length() - SUB_BITS
    return (shift << HALF_BITS) + (value >> shift)


def _bounds(index: int) -> tuple[int, int]:
    """The lowest and highest value of a bucket (the top one holds everything above)."""
    if index == _SIZE - 1:
        return _bounds(index - 1)[1] + 1, 1 << 64
    if index < 2 * _HALF:
        return index, index
    shift = index // _HALF - 1
    low = (index - shift * _HALF) << shift
    return low, low + (1 << shift) - 1


class Histogram:
    """Counts of latencies in nanoseconds. The maximum is exact; the minimum, mean and
    percentiles are known to the resolution of a bucket.

    The load generator's per-call path increments ``counts[bucket_index(value)]`` and keeps
    ``max`` itself (the same as `record`, without the call)."""

    __slots__ = ("counts", "max")

    def __init__(self) -> None:
        self.counts = [0] * _SIZE
        self.max = 0

    def record(self, value: int) -> None:
        self.counts[bucket_index(value)] += 1
        if value > self.max:
            self.max = value

    def add(self, other: Histogram) -> None:
        """Merge `other`'s counts into this histogram (exactly: bucket by bucket)."""
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.max = max(self.max, other.max)

    def copy(self) -> Histogram:
        twin = Histogram()
        twin.counts = self.counts.copy()
        twin.max = self.max
        return twin

    # Pickled (between the processes of a run) as its non-empty buckets only.
    def __getstate__(self) -> tuple[int, list[tuple[int, int]]]:
        return self.max, [(index, count) for index, count in enumerate(self.counts) if count]

    def __setstate__(self, state: tuple[int, list[tuple[int, int]]]) -> None:
        self.max, pairs = state
        self.counts = [0] * _SIZE
        for index, count in pairs:
            self.counts[index] = count

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, Histogram):
            return NotImplemented
        return self.max == other.max and self.counts == other.counts

    __hash__ = None  # type: ignore[assignment]

    @property
    def total(self) -> int:
        return sum(self.counts)

    @property
    def min(self) -> int:
        return next((low for low, _, _ in self.buckets()), 0)

    @property
    def mean(self) -> float:
        total = 0
        weighted = 0.0
        for low, high, count in self.buckets():
            total += count
            weighted += count * (low + high) / 2
        return weighted / total if total else 0.0

    @property
    def stdev(self) -> float:
        mean = self.mean
        total = 0
        square_sum = 0.0
        for low, high, count in self.buckets():
            total += count
            square_sum += count * ((low + high) / 2 - mean) ** 2
        return math.sqrt(square_sum / total) if total > 1 else 0.0

    def percentile(self, percent: float) -> int:
        """The value at or below which `percent` % of the values lie (the highest value of its
        bucket, never above the exact maximum); 0 when empty."""
        return self.percentiles((percent,))[percent]

    def percentiles(self, percents: tuple[float, ...]) -> dict[float, int]:
        """Several percentiles in one pass."""
        total = self.total
        result = dict.fromkeys(percents, 0)
        if not total:
            return result
        wanted = sorted((max(1, math.ceil(total * p / 100)), p) for p in percents)
        seen = 0
        next_wanted = 0
        for index, count in enumerate(self.counts):
            if not count:
                continue
            seen += count
            while next_wanted < len(wanted) and seen >= wanted[next_wanted][0]:
                result[wanted[next_wanted][1]] = min(_bounds(index)[1], self.max)
                next_wanted += 1
            if next_wanted == len(wanted):
                break
        return result

    def buckets(self) -> Iterator[tuple[int, int, int]]:
        """``(lowest, highest, count)`` of every non-empty bucket, in order."""
        for index, count in enumerate(self.counts):
            if count:
                low, high = _bounds(index)
                yield low, min(high, self.max), count
