"""The object the hostile-peer tests serve from a real ``pbfast serve`` process:
``pbfast serve --object hostile_target:Target`` (with ``tests/`` on PYTHONPATH).

With ``PBFAST_TEST_NO_GC=1`` in the environment the server runs with the cyclic garbage
collector off, so what a closed connection leaves behind shows in its memory at once. With
``PBFAST_TEST_LOOP=asyncio`` it runs on asyncio's own event loop even where uvloop is installed
(``pbfast serve`` imports this module before it starts its loop).
"""

from __future__ import annotations

import asyncio
import collections
import gc
import os
import sys
import weakref
from typing import Any

import pbfast
from pbfast._connection import Connection

if os.environ.get("PBFAST_TEST_NO_GC") == "1":
    gc.disable()

if os.environ.get("PBFAST_TEST_LOOP") == "asyncio":
    sys.modules["uvloop"] = None  # type: ignore[assignment]  # `import uvloop` now fails


class Child(pbfast.Referenceable):
    def remote_ping(self) -> str:
        return "pong"


class Target(pbfast.Root):
    """echo, slow, payload, new_ref, children, running, served, connections, rss, collect and
    garbage, for the hostile tests."""

    def __init__(self) -> None:
        self._children: weakref.WeakSet[Child] = weakref.WeakSet()
        self.running = 0
        self.most_running = 0
        self.finished = 0
        self.served: collections.Counter[str] = collections.Counter()

    def remote_echo(self, value: Any = None) -> Any:
        self.served["echo"] += 1
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
        self.served["payload"] += 1
        return b"x" * size

    def remote_new_ref(self) -> Child:
        self.served["new_ref"] += 1
        child = Child()
        self._children.add(child)
        return child

    def remote_children(self) -> int:
        """How many of the children handed out are still alive (held for some peer)."""
        return len(self._children)

    def remote_running(self) -> dict[str, int]:
        return {"running": self.running, "most": self.most_running, "finished": self.finished}

    def remote_served(self) -> dict[str, int]:
        """How many calls of echo, payload and new_ref have run (over all connections)."""
        return dict(self.served)

    def remote_connections(self) -> dict[str, dict[str, Any]]:
        """The open connections of this process, by their peer's address (``host:port``): for
        each, whether it is reading from its peer and its ``statistics()``. (Found among the
        objects the garbage collector tracks, which does not run a collection.)"""
        found = {}
        for obj in gc.get_objects():
            if isinstance(obj, Connection) and not obj.disconnected and obj.transport is not None:
                found[obj.peer] = {"reading": obj.transport.is_reading(), **obj.statistics()}
        return found

    def remote_rss(self) -> int:
        """This process's resident memory, in bytes."""
        return rss(os.getpid())

    def remote_collect(self) -> int:
        """Run the cyclic garbage collector: how many unreachable objects it found (a server
        whose connections leave no cycles behind finds next to none)."""
        return gc.collect()

    def remote_garbage(self) -> dict[str, int]:
        """Run the cyclic garbage collector and say what it found unreachable: how many objects
        of each type (``module.qualname``)."""
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
        finally:
            gc.set_debug(0)
        found = collections.Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage)
        gc.garbage.clear()
        gc.collect()  # what was kept for the count goes now
        return dict(found)


def rss(pid: int) -> int:
    """A process's resident memory (Linux), in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")
