"""Running the stock peer scripts of the interop tests as subprocesses.

``twisted_peer.py`` (test_twisted_pb.py), ``twisted_flavors_peer.py`` (test_twisted_flavors.py)
and ``foolscap_peer.py`` (test_foolscap_peer.py) speak the same protocol on stdio (see README.md
here): ``SCRIPT server ...`` prints one line (``PORT <n>`` for the Twisted peers, ``FURL <furl>``
for the foolscap one) and serves on 127.0.0.1 until its stdin hits EOF; the other modes print one
line ``RESULT <json>`` and exit 0, or ``ERROR <json string>`` and exit 1.

``peer_server`` (PORT) and ``peer_tub`` (FURL) run a server; ``peer_run`` runs any other mode to
its end, ``peer_result`` returns its parsed RESULT, and ``peer_client`` is ``peer_result`` for the
Twisted peers' ``client PORT SCENARIO``.

``tests/interop/`` has no ``__init__.py``: pytest's default ("prepend") import mode puts it on
``sys.path`` when collecting its test modules, so they import this with ``from peers import ...``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pbfast
import pytest

HOST = "127.0.0.1"
# A broker's statistics once it holds nothing.
EMPTY_STATISTICS = {
    "objects": 0,
    "proxies": 0,
    "caches": 0,
    "cached": 0,
    "pending": 0,
    "in_flight": 0,
    "streams": 0,
    "backlog": 0,
    "buffered": 0,
}


def record_writes(broker: Any) -> list[bytes]:
    """The bytes `broker` writes from now on, each write appended to the list returned."""
    written: list[bytes] = []
    take = broker._take_output

    def recording() -> bytes | None:
        data: bytes | None = take()
        if data:
            written.append(data)
        return data

    broker._take_output = recording
    return written


async def check_cancels_stay_local(root: Any, slow: str, fast: str, *, args: tuple[Any, ...]) -> None:
    """With a stock peer, a cancelled call is abandoned locally and a deadline is a local
    timeout: nothing is sent for either, the peer's late answers are dropped quietly, and the
    connection goes on. `slow` is a method that waits ``args[-1]`` seconds, `fast` one that
    echoes its argument."""
    from pbfast._calls import CallFuture

    broker = root.broker
    assert "cancel" not in broker.peer_extensions
    call = root.callRemote(slow, *args)
    assert not isinstance(call, CallFuture)
    await asyncio.sleep(0.05)  # the call is written
    written = record_writes(broker)
    call.cancel()
    await asyncio.sleep(0.05)
    assert written == []
    with pytest.raises(TimeoutError):
        async with pbfast.deadline(0.05):
            await root.callRemote(slow, *args)
    # A call made under a deadline goes as a plain call.
    async with pbfast.deadline(5):
        assert await root.callRemote(fast, 1) == 1
    await asyncio.sleep(args[-1] + 0.1)  # the late answers come, and are dropped
    assert broker.statistics()["pending"] == 0
    assert await root.callRemote(fast, 2) == 2


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
async def _serving(
    script: Path, args: tuple[str, ...], word: str, env: dict[str, str] | None, stderr: Path | None
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """``script server ARGS`` in a subprocess: yields the process and the rest of its first line,
    which must start with `word`; stops the process on the way out."""
    with contextlib.ExitStack() as files:
        err = files.enter_context(open(stderr, "ab")) if stderr is not None else None
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            "server",
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            env={**os.environ, **env} if env else None,
        )
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            assert line.startswith(word.encode() + b" "), f"{script.name} server printed {line!r}"
            yield proc, line.decode().split(None, 1)[1].strip()
        finally:
            await _finish(proc)


@contextlib.asynccontextmanager
async def peer_server(script: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """``script server`` in a subprocess: yields ``(process, port)``, and stops the process on
    the way out."""
    async with _serving(script, (), "PORT", None, None) as (proc, port):
        yield proc, int(port)


@contextlib.asynccontextmanager
async def peer_tub(
    script: Path, *args: str, env: dict[str, str] | None = None, stderr: Path | None = None
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """``script server ARGS`` of a foolscap peer in a subprocess: yields ``(process, furl)``,
    and stops the process on the way out. `env` adds environment variables (e.g. the one that
    turns the peer's log on), `stderr` appends the peer's stderr to a file."""
    async with _serving(script, args, "FURL", env, stderr) as (proc, furl):
        yield proc, furl


@dataclass
class PeerRun:
    """A finished run of a peer script: its exit code and what it printed."""

    returncode: int
    stdout: str

    def line(self, word: str) -> str:
        """The rest of the only stdout line starting with `word` and a space."""
        found = [line for line in self.stdout.splitlines() if line.startswith(word + " ")]
        assert len(found) == 1, f"expected one {word} line, got:\n{self.stdout}"
        return found[0][len(word) + 1 :]


async def peer_run(script: Path, *args: str, timeout: float = 25.0) -> PeerRun:
    """Run ``script ARGS`` to its end, killing it after `timeout` seconds (the peers give up on
    their own after 30 s, but a test's own limit is 30 s too)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        out = await asyncio.wait_for(proc.stdout.read(), timeout)
        await asyncio.wait_for(proc.wait(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.stdout.read()
            await proc.wait()
    return PeerRun(proc.returncode, out.decode("utf-8", "replace"))


async def peer_result(script: Path, *args: str) -> Any:
    """Run ``script ARGS``, which must exit 0 after one ``RESULT <json>`` line; the parsed
    JSON."""
    run = await peer_run(script, *args)
    lines = [line for line in run.stdout.splitlines() if line.startswith(("RESULT ", "ERROR "))]
    assert run.returncode == 0 and len(lines) == 1 and lines[0].startswith("RESULT "), (
        f"{script.name} {' '.join(args)} exited {run.returncode}:\n{run.stdout}"
    )
    return json.loads(lines[0][len("RESULT ") :])


async def peer_client(script: Path, port: int, scenario: str) -> dict[str, Any]:
    """Run one client scenario of a Twisted peer `script` against 127.0.0.1:`port`; its
    RESULT."""
    return await peer_result(script, "client", str(port), scenario)
