"""An HDR-style latency histogram: fixed memory, ~0.1 % resolution from 1 ns to an hour.

Values (nanoseconds) below 2048 get a bucket each; above, each power of two is split into 1024
equal buckets, so a value is known to within 1/1024 of itself. Recording is a handful of integer
operations, cheap enough for every call of a load run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

__all__ = ["Histogram"]

_SUB_BITS = 11
_HALF = 1 << (_SUB_BITS - 1)
#: One hour in nanoseconds: larger values are counted in the top bucket (`max` stays exact).
_HIGHEST = 3600 * 10**9
# Buckets up to _HIGHEST, and one more for everything above it.
_SIZE = (_HIGHEST.bit_length() - _SUB_BITS) * _HALF + (1 << _SUB_BITS) + 1


def _index(value: int) -> int:
    shift = value.bit_length() - _SUB_BITS
    if shift <= 0:
        return value
    return shift * _HALF + (value >> shift)


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
    percentiles are known to the resolution of a bucket."""

    __slots__ = ("counts", "max")

    def __init__(self) -> None:
        self.counts = [0] * _SIZE
        self.max = 0

    def record(self, value: int) -> None:
        shift = value.bit_length() - _SUB_BITS
        if shift <= 0:
            self.counts[value if value > 0 else 0] += 1
        elif value < _HIGHEST:
            self.counts[shift * _HALF + (value >> shift)] += 1
        else:
            self.counts[-1] += 1
        if value > self.max:
            self.max = value

    def add(self, other: Histogram) -> None:
        """Merge `other`'s counts into this histogram."""
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.max = max(self.max, other.max)

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
