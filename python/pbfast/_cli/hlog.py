"""HdrHistogram's interval log (``pbfast bench --hlog FILE``), as HdrHistogram's
``HistogramLogWriter`` writes it: comment lines with the format version, the start time and the
base time, a legend, then one line per interval::

    [Tag=NAME,]START,LENGTH,MAX,HISTOGRAM

START is seconds after the base time, LENGTH seconds, MAX the interval's largest value divided by
1,000,000 (values are nanoseconds, so MAX is in milliseconds, the unit HdrHistogram's log
processor shows by default), and HISTOGRAM the interval's histogram in HdrHistogram's compressed
V2 encoding, in base64. HdrHistogram's tools (``HistogramLogProcessor``, the ``hdrhistogram``
package's ``HistogramLogReader``, HdrHistogram's web plotter) read it.
"""

from __future__ import annotations

import base64
import re
import struct
import time
import zlib
from typing import TextIO

from .histogram import HIGHEST, SIGNIFICANT_DIGITS, Histogram

__all__ = ["encode_histogram", "IntervalLogWriter", "MAX_VALUE_DIVISOR"]

_V2_ENCODING_COOKIE = 0x1C849303 | 0x10
_V2_COMPRESSED_COOKIE = 0x1C849304 | 0x10
# cookie, payload length, normalizing index offset, significant digits, lowest discernible value,
# highest trackable value, integer-to-double conversion ratio
_HEADER = struct.Struct(">iiiiqqd")
_COMPRESSED_HEADER = struct.Struct(">ii")
_LOWEST = 1
#: What an interval line's MAX is divided by: nanoseconds to milliseconds.
MAX_VALUE_DIVISOR = 1e6
_LOG_FORMAT_VERSION = "1.3"
# A tag ends at a comma, and the line at a newline.
_NOT_IN_TAG = re.compile(r"[,\s]")


def _zigzag_leb128(value: int, out: bytearray) -> None:
    """One 64-bit value as HdrHistogram's ZigZag LEB128: seven bits a byte, low bits first, the
    high bit set on every byte but the last; a ninth byte, if needed, carries eight bits."""
    value = (value << 1) if value >= 0 else ((-value << 1) - 1)
    for _ in range(8):
        if value < 0x80:
            out.append(value)
            return
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value & 0xFF)


def encode_histogram(histogram: Histogram) -> str:
    """`histogram` in HdrHistogram's compressed V2 encoding, in base64 (values in nanoseconds;
    those above an hour are counted as an hour, the highest trackable value)."""
    counts = histogram.counts[:-1]
    counts[-1] += histogram.counts[-1]
    limit = len(counts)
    while limit and not counts[limit - 1]:
        limit -= 1
    payload = bytearray()
    index = 0
    while index < limit:
        count = counts[index]
        index += 1
        if count:
            _zigzag_leb128(count, payload)
            continue
        zeros = 1
        while index < limit and not counts[index]:
            zeros += 1
            index += 1
        # A run of zeros is written as its negated length (a single zero as itself).
        _zigzag_leb128(-zeros if zeros > 1 else 0, payload)
    header = _HEADER.pack(_V2_ENCODING_COOKIE, len(payload), 0, SIGNIFICANT_DIGITS, _LOWEST, HIGHEST, 1.0)
    compressed = zlib.compress(header + payload)
    return base64.b64encode(
        _COMPRESSED_HEADER.pack(_V2_COMPRESSED_COOKIE, len(compressed)) + compressed
    ).decode()


class IntervalLogWriter:
    """Writes an interval log to `out`: the header at once, then `interval` lines. Timestamps
    in the lines are seconds after `start` (epoch seconds), which is both the log's start time
    and its base time."""

    def __init__(self, out: TextIO, start: float, comment: str | None = None) -> None:
        self.out = out
        if comment:
            out.write(f"#[{comment}]\n")
        out.write(f"#[Histogram log format version {_LOG_FORMAT_VERSION}]\n")
        when = time.strftime("%a %b %d %H:%M:%S %Z %Y", time.localtime(start))
        out.write(f"#[StartTime: {start:.3f} (seconds since epoch), {when}]\n")
        out.write(f"#[BaseTime: {start:.3f} (seconds since epoch)]\n")
        out.write('"StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram"\n')

    def interval(self, start: float, length: float, histogram: Histogram, tag: str | None = None) -> None:
        """One interval: `start` seconds after the base time, `length` seconds long."""
        prefix = f"Tag={_NOT_IN_TAG.sub('_', tag)}," if tag else ""
        self.out.write(
            f"{prefix}{start:.3f},{length:.3f},{histogram.max / MAX_VALUE_DIVISOR:.3f},"
            f"{encode_histogram(histogram)}\n"
        )
