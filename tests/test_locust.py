"""`pbfast.locust`: Locust itself runs `PbUser` and `TubUser` (tests/locust_users.py) against real
``pbfast serve`` processes (tests/locust_target.py's service), headless and as a master with two
workers, and the statistics it writes (``--csv``) are checked: each call reported under its
method's name and type PB or TUB, references returned by calls reported too, remote errors
reported as failures with their text and raised in the task, no other failure; and when the
server stops answering, dies and comes back, the calls time out, fail and reconnect, and Locust
ends on time.

Nothing here imports Locust or `pbfast.locust`: importing Locust monkey-patches the process for
gevent. Every Locust and server process runs on 127.0.0.1 and is bounded in time.
"""

from __future__ import annotations

import csv
import importlib.util
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from servers import ServeProcess
from servers import tests_env as locust_env  # (a name pytest would collect)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("locust") is None, reason="Locust is in the locust and test extras"
    ),
]

TESTS = Path(__file__).resolve().parent
LOCUSTFILE = TESTS / "locust_users.py"
SERVE = ("tcp:port=0:interface=127.0.0.1", "--object", "locust_target:Service")
# How long Locust may take beyond its run time (start-up and shut-down) before the test fails.
SLACK = 30.0
# What asyncio or the interpreter print for a mistake that does not fail the program.
BUG_SIGNS = ("was never retrieved", "was never awaited", "Exception ignored", "Task was destroyed")


def assert_clean(stderr: str) -> None:
    for sign in BUG_SIGNS:
        assert sign not in stderr, stderr


def locust_command(csv_prefix: Path | None, *args: str) -> list[str]:
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--loglevel", "WARNING", *args]
    if csv_prefix is not None:
        command += ["--csv", str(csv_prefix), "--exit-code-on-error", "0", "--stop-timeout", "1"]
    return command


def run_locust(csv_prefix: Path, env: dict[str, str], *args: str, run_time: float) -> str:
    """Run Locust headless to the end: its stderr."""
    result = subprocess.run(
        locust_command(csv_prefix, "--headless", "-t", f"{run_time:g}s", *args),
        env=env,
        capture_output=True,
        text=True,
        timeout=run_time + SLACK,
    )
    assert result.returncode == 0, result.stderr
    assert_clean(result.stderr)
    return result.stderr


def stats(csv_prefix: Path) -> dict[tuple[str, str], tuple[int, int]]:
    """(type, name) -> (requests, failures), from Locust's ``*_stats.csv``."""
    with open(f"{csv_prefix}_stats.csv", newline="") as f:
        return {
            (row["Type"], row["Name"]): (int(row["Request Count"]), int(row["Failure Count"]))
            for row in csv.DictReader(f)
            if row["Type"]
        }


def failures(csv_prefix: Path) -> dict[tuple[str, str, str], int]:
    """(type, name, error) -> occurrences, from Locust's ``*_failures.csv``."""
    with open(f"{csv_prefix}_failures.csv", newline="") as f:
        return {
            (row["Method"], row["Name"], row["Error"]): int(row["Occurrences"]) for row in csv.DictReader(f)
        }


def exceptions(csv_prefix: Path) -> dict[str, int]:
    """What the tasks raised: message -> count, from Locust's ``*_exceptions.csv``."""
    with open(f"{csv_prefix}_exceptions.csv", newline="") as f:
        return {row["Message"]: int(row["Count"]) for row in csv.DictReader(f)}


def check_calls(table: dict[tuple[str, str], tuple[int, int]], kind: str, users: int) -> None:
    """The rows of one request type after a clean run of tests/locust_users.py's tasks."""
    assert table[(kind, "(connect)")] == (users, 0), table
    for name in ("echo", "child", "name", "same", "children"):
        requests, failed = table[(kind, name)]
        assert requests > 0 and failed == 0, (kind, name, table)
    requests, failed = table[(kind, "fail")]
    assert requests == failed > 0, table
    assert {name for k, name in table if k == kind} == {
        "(connect)",
        "echo",
        "child",
        "name",
        "same",
        "children",
        "fail",
    }


def check_remote_errors(prefix: Path, users: int) -> None:
    """Every failure is a `fail` call's remote error, with its text; each user let the first
    one escape its task, and Locust recorded what the task raised."""
    found = failures(prefix)
    assert found, "no failures reported"
    for (_kind, name, error), _count in found.items():
        assert name == "fail" and "RemoteError" in error and "failed on purpose" in error, found
    assert exceptions(prefix) == {"pbfast.errors.Error: failed on purpose, raised": users}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def started(command: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def test_headless_pb_and_tub(tmp_path: Path) -> None:
    with ServeProcess(*SERVE) as pb_server, ServeProcess("--tub", *SERVE) as tub_server:
        env = locust_env(PB_HOST=pb_server.address, TUB_HOST=tub_server.address)
        run_locust(tmp_path / "run", env, "-u", "4", "-r", "100", run_time=2)
    table = stats(tmp_path / "run")
    check_calls(table, "PB", 2)
    check_calls(table, "TUB", 2)
    assert table[("LOOP", "uvloop")] == (4, 0)  # the default, uvloop being installed
    check_remote_errors(tmp_path / "run", 4)


def test_the_example(tmp_path: Path) -> None:
    """examples/locustfile.py's PB class against ``pbfast serve``'s own test service."""
    example = str(TESTS.parent / "examples" / "locustfile.py")
    with ServeProcess("tcp:port=0:interface=127.0.0.1") as server:
        command = [sys.executable, "-m", "locust", "-f", example, "EchoPb", "--headless", "-u", "2"]
        command += ["-r", "100", "-t", "2s", "--host", server.address, "--csv", str(tmp_path / "run")]
        command += ["--exit-code-on-error", "0", "--stop-timeout", "1", "--loglevel", "WARNING"]
        result = subprocess.run(command, env=locust_env(), capture_output=True, text=True, timeout=2 + SLACK)
    assert result.returncode == 0, result.stderr
    assert_clean(result.stderr)
    table = stats(tmp_path / "run")
    assert table[("PB", "(connect)")] == (2, 0), table
    assert table[("PB", "echo")][0] > 0 and table[("PB", "echo")][1] == 0, table
    assert {name for _, name in table} <= {"(connect)", "echo", "payload", "fail"}, table
    assert all(error.startswith("RemoteError(") for _, name, error in failures(tmp_path / "run")), table
    assert not exceptions(tmp_path / "run"), "the example's tasks raised"


def test_master_and_two_workers(tmp_path: Path) -> None:
    """One worker on uvloop, the other on asyncio's loop; both wires on each."""
    port = free_port()
    with ServeProcess(*SERVE) as pb_server, ServeProcess("--tub", *SERVE) as tub_server:
        env = locust_env(PB_HOST=pb_server.address, TUB_HOST=tub_server.address)
        worker = locust_command(None, "--worker", "--master-host", "127.0.0.1", "--master-port", str(port))
        master = locust_command(
            tmp_path / "run",
            "--master",
            "--master-bind-host",
            "127.0.0.1",
            "--master-bind-port",
            str(port),
            "--expect-workers",
            "2",
            "--headless",
            "-u",
            "4",
            "-r",
            "100",
            "-t",
            "2s",
        )
        with (
            started(master, env) as master_process,
            started(worker, {**env, "PBFAST_LOOP": "uvloop"}) as worker_1,
            started(worker, {**env, "PBFAST_LOOP": "asyncio"}) as worker_2,
        ):
            _, master_err = master_process.communicate(timeout=2 + SLACK)
            assert master_process.returncode == 0, master_err
            assert_clean(master_err)
            for worker_process in (worker_1, worker_2):  # they stop when the master quits
                _, worker_err = worker_process.communicate(timeout=SLACK)
                assert worker_process.returncode == 0, worker_err
                assert_clean(worker_err)
    table = stats(tmp_path / "run")
    check_calls(table, "PB", 2)
    check_calls(table, "TUB", 2)
    # each worker ran one user of each class, on its own loop
    assert table[("LOOP", "uvloop")] == (2, 0) and table[("LOOP", "pbfast.locust")] == (2, 0), table
    check_remote_errors(tmp_path / "run", 4)


def test_a_server_that_hangs_dies_and_comes_back(tmp_path: Path) -> None:
    """Calls time out while the server is stopped (SIGSTOP), fail when it dies (the running
    ones with the connection lost, the reconnections refused), and the users connect again
    when it is back on the same port; all reported, and Locust ends on time. On asyncio's
    loop, with a 0.3 s timeout."""
    prefix = tmp_path / "run"
    run_time = 6.0
    server = ServeProcess(*SERVE)
    try:
        port = server.address.rsplit("=", 1)[1]
        env = locust_env(PB_HOST=server.address, PBFAST_LOOP="asyncio", PBFAST_TIMEOUT="0.3")
        command = locust_command(prefix, "Pb", "--headless", "-u", "2", "-r", "100", "-t", f"{run_time:g}s")
        with started(command, env) as locust:
            deadline = time.monotonic() + SLACK
            while not _echoes(prefix):  # Locust writes its statistics every second
                assert locust.poll() is None and time.monotonic() < deadline, "no calls reported"
                time.sleep(0.1)
            server.process.send_signal(signal.SIGSTOP)
            time.sleep(0.8)
            server.process.kill()
            server.process.send_signal(signal.SIGCONT)
            server.kill()
            time.sleep(0.5)
            server = ServeProcess(f"tcp:port={port}:interface=127.0.0.1", "--object", "locust_target:Service")
            _, err = locust.communicate(timeout=run_time + SLACK)
            assert locust.returncode == 0, err
            assert_clean(err)
    finally:
        server.kill()
    table = stats(prefix)
    found = failures(prefix)
    errors = {(name, error.split("(")[0]) for _kind, name, error in found}
    assert ("echo", "TimeoutError") in errors, found
    assert ("(connect)", "ConnectionRefusedError") in errors, found
    assert {"PBConnectionLost", "ConnectionRefusedError", "DeadReferenceError"} & {
        kind for name, kind in errors if name == "echo"
    }, found
    assert any("no answer within 0.3 s" in error for _k, _n, error in found), found
    # reconnected: more successful connections than users
    requests, failed = table[("PB", "(connect)")]
    assert requests - failed > 2 and failed > 0, table
    assert table[("LOOP", "pbfast.locust")] == (2, 0), table


def _echoes(prefix: Path) -> int:
    try:
        return stats(prefix).get(("PB", "echo"), (0, 0))[0]
    except (OSError, KeyError, ValueError):
        return 0


def test_the_module_checks_its_input() -> None:
    """Bad hosts and loop names are refused with errors that say what is wrong, and references
    inside arguments and results are found in nested and cyclic containers. (A subprocess:
    importing Locust monkey-patches.)"""
    code = """
import pbfast.locust as pl
from pbfast import RemoteReference
from locust.env import Environment

def refused(call, *words):
    try:
        call()
    except (ValueError, RuntimeError) as e:
        assert all(w in str(e) for w in words), (str(e), words)
    else:
        raise AssertionError(f"no error: {words}")

env = Environment()
class P(pl.PbUser):
    pass
class T(pl.TubUser):
    pass
refused(lambda: P(env), "needs a host", "PB client endpoint")
P.host = "pb://" + "a" * 32 + "@tcp:127.0.0.1:1/x"
refused(lambda: P(env), "not a PB client endpoint", "TubUser")
T.host = "tcp:host=127.0.0.1:port=1"
refused(lambda: T(env), "not a FURL")
refused(lambda: pl.use_event_loop("trio"), "'uvloop' or 'asyncio'", "trio")
pl.use_event_loop("asyncio")

P.host = "tcp:host=127.0.0.1:port=1"
client = P(env).client
ref = RemoteReference(None, 1)
cyclic = [ref, {"r": ref}]
cyclic.append(cyclic)
wrapped = pl._wrap((cyclic, cyclic), client, {})
assert wrapped[0] is wrapped[1] and wrapped[0][2] is wrapped[0]
assert isinstance(wrapped[0][0], pl.Reference) and wrapped[0][0].reference is ref
assert wrapped[0][1]["r"].reference is ref
back = pl._unwrap(wrapped, {})
assert back[0][0] is ref and back[0][1]["r"] is ref and back[0][2] is back[0]
# Connecting to a closed port fails, is reported, and the thread it started runs asyncio's loop.
reports = []
def report(request_type, name, exception, **_):
    reports.append((request_type, name, exception))
env.events.request.add_listener(report)
try:
    client.connect()
except ConnectionRefusedError:
    pass
else:
    raise AssertionError("connected to a closed port")
assert [(t, n, type(e).__name__) for t, n, e in reports] == [("PB", "(connect)", "ConnectionRefusedError")]
refused(lambda: pl.use_event_loop("uvloop"), "already started", "asyncio")
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", code], env=locust_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr
