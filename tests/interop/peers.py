"""Running the stock-Twisted peer scripts of the interop tests as subprocesses.

Both ``twisted_peer.py`` (test_twisted_pb.py) and ``twisted_flavors_peer.py``
(test_twisted_flavors.py) speak the same protocol on stdio (see README.md here): ``SCRIPT
server`` prints one line ``PORT <n>`` and serves on 127.0.0.1 until its stdin hits EOF;
``SCRIPT client PORT SCENARIO`` prints one line ``RESULT <json>`` and exits 0, or ``ERROR
<json string>`` and exits 1. ``peer_server`` and ``peer_client`` drive either script.

``tests/interop/`` has no ``__init__.py``: pytest's default ("prepend") import mode puts it on
``sys.path`` when collecting its test modules, so they import this with ``from peers import ...``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
# A broker's statistics once it holds nothing.
EMPTY_STATISTICS = {
    "objects": 0,
    "proxies": 0,
    "caches": 0,
    "cached": 0,
    "pending": 0,
    "backlog": 0,
    "buffered": 0,
}


async def _finish(proc: asyncio.subprocess.Process) -> None:
    """Stop `proc` (EOF on its stdin, then a kill if it lingers), reap it, close its pipes."""
    if proc.stdin is not None and not proc.stdin.is_closing():
        proc.stdin.close()
    try:
        await asyncio.wait_for(proc.stdout.read(), 10)
        await asyncio.wait_for(proc.wait(), 10)
    except TimeoutError:
        proc.kill()
        await proc.stdout.read()
        await proc.wait()
    if proc.stdin is not None:
        with contextlib.suppress(ConnectionError):
            await proc.stdin.wait_closed()


@contextlib.asynccontextmanager
async def peer_server(script: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """``script server`` in a subprocess: yields ``(process, port)``, and stops the process on
    the way out."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        "server",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line.startswith(b"PORT "), f"{script.name} server printed {line!r}"
        yield proc, int(line.split()[1])
    finally:
        await _finish(proc)


async def peer_client(script: Path, port: int, scenario: str) -> dict[str, Any]:
    """Run one client scenario of `script` against 127.0.0.1:`port`; its RESULT."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        "client",
        str(port),
        scenario,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        out = await asyncio.wait_for(proc.stdout.read(), 25)  # the peer gives up after 30 s
        await asyncio.wait_for(proc.wait(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.stdout.read()
            await proc.wait()
    text = out.decode("utf-8", "replace")
    lines = [line for line in text.splitlines() if line.startswith(("RESULT ", "ERROR "))]
    assert proc.returncode == 0 and len(lines) == 1 and lines[0].startswith("RESULT "), (
        f"{script.name} client {scenario} exited {proc.returncode}:\n{text}"
    )
    return json.loads(lines[0][len("RESULT ") :])
