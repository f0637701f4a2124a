"""The object the hostile-peer tests serve from a real ``pbfast serve`` process:
``pbfast serve --object hostile_target:Target`` (with ``tests/`` on PYTHONPATH).

With ``PBFAST_TEST_NO_GC=1`` in the environment the server runs with the cyclic garbage
collector off, so what a closed connection leaves behind shows in its memory at once.
"""

from __future__ import annotations

import asyncio
import gc
import os
import weakref
from typing import Any

import pbfast

if os.environ.get("PBFAST_TEST_NO_GC") == "1":
    gc.disable()


class Child(pbfast.Referenceable):
    def remote_ping(self) -> str:
        return "pong"


class Target(pbfast.Root):
    """echo, slow, payload, new_ref, children, running and rss, for the hostile tests."""

    def __init__(self) -> None:
        self._children: weakref.WeakSet[Child] = weakref.WeakSet()
        self.running = 0
        self.most_running = 0
        self.finished = 0

    def remote_echo(self, value: Any = None) -> Any:
        return value

    async def remote_slow(self, seconds: float, value: Any = None) -> Any:
        """Sleep, counting how many run at once."""
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.running -= 1
        self.finished += 1
        return value

    def remote_payload(self, size: int) -> bytes:
        return b"x" * size

    def remote_new_ref(self) -> Child:
        child = Child()
        self._children.add(child)
        return child

    def remote_children(self) -> int:
        """How many of the children handed out are still alive (held for some peer)."""
        return len(self._children)

    def remote_running(self) -> dict[str, int]:
        return {"running": self.running, "most": self.most_running, "finished": self.finished}

    def remote_rss(self) -> int:
        """This process's resident memory, in bytes."""
        return rss(os.getpid())

    def remote_collect(self) -> int:
        """Run the cyclic garbage collector: how many unreachable objects it found (a server
        whose connections leave no cycles behind finds next to none)."""
        return gc.collect()


def rss(pid: int) -> int:
    """A process's resident memory (Linux), in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")
