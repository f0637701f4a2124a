"""``pbfast serve --workers N``: N processes sharing one port, run as a user runs them (on
127.0.0.1, bounded in time). The workers serve `worker_target.Target`, whose ``pid()`` says which
process answered a connection. (``reuse_port=True`` in the API is tested in test_reuse_port.py.)"""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pbfast
import pytest
from pbfast._cli.workers import MAX_WORKERS, worker_count
from servers import ServeProcess as Server
from servers import tests_env as environment

T = TypeVar("T")

# Connections made to see every one of two workers answer: the kernel picks a listener per
# connection from a hash of its addresses, so missing one has odds of 2**-ATTEMPTS.
ATTEMPTS = 24
TARGET = ("--object", "worker_target:Target", "--grace", "1s")


def unused_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_pids(server: Server) -> list[int]:
    """The workers' PIDs, as the command printed them."""
    (line,) = [line for line in server.lines if " sharing port " in line]
    return [int(pid) for pid in line.split(": pids ")[1].split(", ")]


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (one left to a parent that does not reap)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def wait_for(condition: Callable[[], T], timeout: float = 15.0) -> T:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return result


async def answering(address: str, expected: int) -> set[int]:
    """The PIDs that answer connections to `address` (an endpoint or a FURL), one call per
    connection, until `expected` of them have (or `ATTEMPTS` connections were made)."""
    pids: set[int] = set()
    for _ in range(ATTEMPTS):
        if address.startswith("pb://"):
            async with pbfast.Tub() as tub:  # a new Tub: a new connection
                pids.add(await (await tub.getReference(address)).callRemote("pid"))
        else:
            async with pbfast.connect(address) as root:
                pids.add(await root.callRemote("pid"))
        if len(pids) >= expected:
            break
    return pids


@pytest.mark.slow
def test_workers_share_the_port_and_the_dead_are_replaced(run) -> None:
    port = unused_port()
    with Server(f"tcp:port={port}:interface=127.0.0.1", "--workers", "2", *TARGET) as server:
        first, second = pids = worker_pids(server)
        assert len(set(pids)) == 2 and server.pid not in pids
        assert server.address == f"tcp:host=127.0.0.1:port={port}"
        assert run(answering(server.address, 2)) == {first, second}

        # A worker killed is started again; killed again soon after, it waits longer.
        os.kill(first, signal.SIGKILL)
        restarted = wait_for(lambda: re.search(r"worker 1 restarted: pid (\d+)", server.stderr()))
        os.kill(int(restarted[1]), signal.SIGKILL)
        again = wait_for(lambda: re.findall(r"worker 1 restarted: pid (\d+)", server.stderr())[1:])
        log = server.stderr()
        assert f"worker 1 (pid {first}) was killed by SIGKILL; restarting in 0.5 s" in log
        assert f"worker 1 (pid {restarted[1]}) was killed by SIGKILL; restarting in 1 s" in log
        newest = int(again[0])
        assert run(answering(server.address, 2)) == {newest, second}

        # The supervisor killed outright: the workers see their stdin close, and stop.
        code, _ = server.stop(signal.SIGKILL)
        assert code == -signal.SIGKILL
        wait_for(lambda: not alive(newest) and not alive(second), timeout=10)
        assert not alive(first)


@pytest.mark.slow
def test_workers_serve_one_furl_and_stop_together(run, tmp_path: Path) -> None:
    port, furl_file, temporary = unused_port(), tmp_path / "target.furl", tmp_path / "tmp"
    temporary.mkdir()
    env = environment(TMPDIR=str(temporary))  # where the workers' shared identity is kept
    args = ["--tub", f"tcp:port={port}:interface=127.0.0.1", "--workers", "2", "--furl-file", str(furl_file)]
    with Server(*args, *TARGET, env=env) as server:
        pids = worker_pids(server)
        assert server.address.startswith("pb://") and f"@tcp:127.0.0.1:{port}/" in server.address
        assert furl_file.read_text().strip() == server.address
        (identity,) = temporary.iterdir()
        assert stat.S_IMODE(identity.stat().st_mode) == 0o700
        assert [path.name for path in identity.iterdir()] == ["tub.pem"]
        assert run(answering(server.address, 2)) == set(pids)

        code, stderr = server.stop()
    assert code == 0, stderr
    assert "stopping 2 workers" in stderr
    assert "Traceback" not in stderr and " serves " not in stderr
    assert not any(alive(pid) for pid in pids)
    assert list(temporary.iterdir()) == []


@pytest.mark.slow
def test_workers_usage_errors(tmp_path: Path) -> None:
    port = unused_port()
    cases = [
        (["tcp:port=0:interface=127.0.0.1"], ["--workers needs the port given", "'tcp:port=0:"]),
        ([f"unix:{tmp_path / 'pb.sock'}"], ["--workers: reuse_port applies to", "tcp, tcp6, ssl", "unix:"]),
        ([f"tcp:{port}", "--workers", "0"], [f"--workers takes 1 to {MAX_WORKERS} or auto, not '0'"]),
        ([f"tcp:{port}", "--workers", "many"], ["--workers takes", "not 'many'"]),
        # Worker 1 reports it, as `pbfast serve` does without --workers; the command stops.
        ([f"tcp:{port}", "--object", "no_such_module_here:Thing"], ["cannot import", "no_such_module_here"]),
    ]
    commands = [[sys.executable, "-m", "pbfast", "serve", "--workers", "2", *args] for args, _ in cases]
    running = [
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment()
        )
        for command in commands
    ]
    try:
        results = [process.communicate(timeout=60) for process in running]
    finally:
        for process in running:
            process.kill()
            process.wait()
    for (args, fragments), process, (stdout, stderr) in zip(cases, running, results, strict=True):
        assert process.returncode == 2, (args, stderr)
        (line,) = stderr.splitlines()
        assert line.startswith("pbfast serve: ")
        for fragment in fragments:
            assert fragment in line, (fragment, line)
        assert stdout == ""


def test_worker_count() -> None:
    assert worker_count("auto") == min(os.cpu_count() or 1, MAX_WORKERS)
    assert worker_count("3") == 3
    assert worker_count(str(MAX_WORKERS)) == MAX_WORKERS
