"""``pbfast bench --stages 10s:1000,30s:5000``: an open-model rate held stage by stage."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .common import parse_duration

__all__ = ["Stage", "parse_stages", "MAX_STAGES"]

#: More stages than this is a mistake (a ramp is a few dozen).
MAX_STAGES = 1000


@dataclass(frozen=True)
class Stage:
    """Calls started at `rate` per second for `duration` seconds (a rate of 0 is a pause)."""

    duration: float
    rate: float

    def describe(self) -> str:
        return f"{self.duration:g} s at {self.rate:,.6g}/s"


def parse_stages(text: str) -> tuple[Stage, ...]:
    """``DURATION:RATE,DURATION:RATE,...`` (``10s:1000,30s:5000``; a bare duration is in
    seconds).

    Raises:
        ValueError: a malformed stage (the message names it), or more than MAX_STAGES.
    """
    parts = [part.strip() for part in text.split(",")]
    if len(parts) > MAX_STAGES:
        raise ValueError(f"{len(parts)} stages: at most {MAX_STAGES}")
    stages = []
    for number, part in enumerate(parts, 1):
        where = f"stage {number} {part!r}"
        duration_text, sep, rate_text = part.partition(":")
        if not sep:
            raise ValueError(f"{where} is not DURATION:RATE (like 30s:5000)")
        try:
            duration = parse_duration(duration_text)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        if not duration > 0 or math.isinf(duration):
            raise ValueError(f"{where}: the duration must be more than 0")
        try:
            rate = float(rate_text.replace("_", ""))
        except ValueError:
            raise ValueError(f"{where}: the rate {rate_text.strip()!r} is not a number") from None
        if not rate >= 0 or math.isinf(rate):
            raise ValueError(f"{where}: the rate must be 0 (a pause) or more calls a second")
        stages.append(Stage(duration, rate))
    return tuple(stages)
