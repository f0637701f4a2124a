"""The object `pbfast serve` offers when given none: something to call and load-test."""

from __future__ import annotations

import asyncio
from typing import Any

from ..errors import Error
from ..referenceable import Root

__all__ = ["TestService", "MAX_PAYLOAD", "MAX_SLEEP"]

#: The largest payload asked for: Twisted's limit on one byte string.
MAX_PAYLOAD = 640 * 1024
#: The longest sleep asked for, in seconds.
MAX_SLEEP = 3600.0


class TestService(Root):
    """``echo(value=None)``, ``sleep(seconds, value=None)``, ``payload(size)``,
    ``fail(message)``: served on the PB wire (as every connection's root) or in a Tub."""

    __test__ = False  # not a pytest test class, despite the name

    def remote_echo(self, value: Any = None) -> Any:
        return value

    async def remote_sleep(self, seconds: float, value: Any = None) -> Any:
        if not isinstance(seconds, int | float) or not 0 <= seconds <= MAX_SLEEP:
            raise Error(f"sleep takes 0 to {MAX_SLEEP:g} seconds, not {seconds!r}")
        await asyncio.sleep(seconds)
        return value

    def remote_payload(self, size: int) -> bytes:
        if not isinstance(size, int) or not 0 <= size <= MAX_PAYLOAD:
            raise Error(f"payload takes a size of 0 to {MAX_PAYLOAD} bytes, not {size!r}")
        return b"x" * size

    def remote_fail(self, message: str = "failed as asked") -> None:
        raise Error(message)

    def __repr__(self) -> str:
        return "<pbfast test service: echo, sleep, payload, fail>"
