"""The ``pbfast`` command line, driven as a user would: each subcommand as a subprocess against
real servers (``pbfast serve``) on 127.0.0.1, checking output and exit codes. Expected failures
must be one line on stderr, a non-zero exit, and no traceback."""

from __future__ import annotations

import importlib.metadata
import json
import os
import pty
import re
import select
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.version import Version
from pbfast import __version__ as pbfast_version
from pbfast import _core
from servers import ServeProcess as Server

ROOT = Path(__file__).resolve().parent.parent
TUBID = re.compile(r"[a-z2-7]{32}")


def pbfast(*args: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pbfast", *args], capture_output=True, text=True, timeout=timeout, **kwargs
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    """The command failed with `code`, saying so in one line on stderr that contains `fragments`."""
    assert result.returncode == code, (
        f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def pb_server() -> Iterator[Server]:
    server = Server("tcp:port=0:interface=127.0.0.1")
    yield server
    code, stderr = server.stop()
    assert code == 0, stderr
    assert "Traceback" not in stderr


@pytest.fixture(scope="module")
def tub_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    furl_file = tmp_path_factory.mktemp("tub") / "echo.furl"
    server = Server("--tub", "tcp:port=0:interface=127.0.0.1", "--furl-file", str(furl_file))
    assert furl_file.read_text().strip() == server.address
    yield server
    code, stderr = server.stop()
    assert code == 0, stderr
    assert "Traceback" not in stderr


def unused_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------- help, usage


@pytest.mark.parametrize(
    ("command", "mentions"),
    [
        ("demo", ["--seconds"]),
        (
            "serve",
            ["--tub", "--furl-file", "--object", "MODULE:ATTR", "ENDPOINT", "--workers", "SO_REUSEPORT"],
        ),
        ("call", ["TARGET", "METHOD", "ARGS", "--timeout"]),
        (
            "bench",
            [
                "--concurrency",
                "--connections",
                "--rate",
                "--duration",
                "--calls",
                "--warmup",
                "--json",
                "--fail-if",
                "coordinated omission",
                "--processes",
                "--stages",
                "--scenario MODULE:FUNCTION",
                "--hlog FILE",
                "--progress",
                "--no-progress",
            ],
        ),
        ("create-tub", ["FILE", "TubID"]),
        ("decode", ["--dialect"]),
    ],
)
def test_help(command: str, mentions: list[str]) -> None:
    result = pbfast(command, "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    for mention in mentions:
        assert mention in text, mention


def test_top_level_help_lists_every_command() -> None:
    result = pbfast("--help")
    assert result.returncode == 0
    for command in ("demo", "serve", "call", "bench", "create-tub", "decode"):
        assert command in result.stdout


def test_no_command_is_a_usage_error() -> None:
    result = pbfast()
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_version() -> None:
    """`pbfast --version` names the one version there is: Cargo.toml's, built into the extension
    and written into the package metadata."""
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["version"]
    assert pbfast_version == _core.__version__ == cargo
    # The metadata spells a pre-release the Python way (Cargo's 1.0.0-beta.1 is 1.0.0b1).
    assert Version(importlib.metadata.version("pbfast")) == Version(cargo)
    result = pbfast("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"pbfast {cargo}\n"


def test_console_script_is_installed() -> None:
    # pip puts the `pbfast` script beside the interpreter it installs for (a virtual env's bin/).
    script = Path(sysconfig.get_path("scripts")) / "pbfast"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "bench" in result.stdout


# ---------------------------------------------------------------------------------- demo


def test_demo() -> None:
    result = pbfast("demo", "--seconds", "0.5")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "echo([1, 'two', 3.0]) -> [1, 'two', 3.0]" in out
    assert "increment() x3 -> [1, 2, 3]" in out
    assert "inspect(counter) -> \"my own Counter 'clicks', at 3\"" in out
    assert "pond() -> LocalPond(color='green', frogs=7)" in out
    assert "after goal('home'): {'home': 1, 'away': 0}" in out
    assert "withdraw(10) raised pbfast.errors.Error: cannot withdraw 10: the balance is 0" in out
    assert re.search(r"FURL +pb://[a-z2-7]{32}@tcp:127\.0\.0\.1:\d+/", out)
    assert "echo('over TLS') -> 'over TLS'" in out
    assert re.search(r"throughput +[\d,]+ calls/s", out)
    assert re.search(r"p50 .* p90 .* p99 .* p99\.9 .* max ", out)
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------- call


def test_call_pb(pb_server: Server) -> None:
    result = pbfast("call", pb_server.address, "echo", "[1, 'two', {'x': b'y'}, (3.5, None)]")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[1, 'two', {'x': b'y'}, (3.5, None)]"


def test_call_keyword_arguments(pb_server: Server) -> None:
    result = pbfast("call", pb_server.address, "sleep", "0", "value={'a': 1}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "{'a': 1}"


def test_call_furl(tub_server: Server) -> None:
    result = pbfast("call", tub_server.address, "payload", "5")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "b'xxxxx'"


@pytest.mark.parametrize("server", ["pb_server", "tub_server"])
def test_call_remote_error(server: str, request: pytest.FixtureRequest) -> None:
    address = request.getfixturevalue(server).address
    result = pbfast("call", address, "fail", "'out of cheese'")
    assert_one_line_error(result, 1, "remote error", "pbfast.errors.Error", "out of cheese")
    assert result.stdout == ""


def test_call_missing_method(pb_server: Server) -> None:
    result = pbfast("call", pb_server.address, "no_such_method")
    assert_one_line_error(result, 1, "remote error", "NoSuchMethod", "no_such_method")


@pytest.mark.parametrize(
    ("literal", "why"),
    [
        ("foo(", "was never closed"),
        ("hello", "'hello' is a name (quote strings"),
        ("[1, 2", "was never closed"),
        ("os.system('x')", "\"os.system('x')\" is a call"),
        ("[1, x.y]", "'x.y' is an attribute"),
        ("1 +* 2", "invalid syntax"),
    ],
)
def test_call_malformed_literal(pb_server: Server, literal: str, why: str) -> None:
    result = pbfast("call", pb_server.address, "echo", literal)
    line = assert_one_line_error(result, 2, "argument 1", "is not a Python literal", why)
    assert "<ast." not in line


def test_call_unreachable_endpoint() -> None:
    port = unused_port()
    result = pbfast("call", f"tcp:host=127.0.0.1:port={port}", "echo", "1")
    assert_one_line_error(result, 1, "cannot connect", str(port), "refused")


def test_call_malformed_endpoint() -> None:
    result = pbfast("call", "tcp:host=127.0.0.1:port=seventy", "echo", "1")
    assert_one_line_error(result, 2, "bad endpoint", "port")


@pytest.mark.parametrize("furl", ["pb://notatubid@tcp:127.0.0.1:1/x", "pb://", "pb:/" + "a" * 32 + "@x/y"])
def test_call_bad_furl(furl: str) -> None:
    result = pbfast("call", furl, "echo", "1")
    assert_one_line_error(result, 2, "bad FURL")


def test_call_furl_with_the_wrong_tubid(tub_server: Server) -> None:
    # A well-formed FURL whose TubID is not the server's: the server cannot prove it is that Tub.
    tub_id = tub_server.address[len("pb://") :].split("@")[0]
    wrong = tub_server.address.replace(tub_id, "a" * 32)
    result = pbfast("call", wrong, "echo", "1", "--timeout", "10s")
    assert_one_line_error(result, 1, "a" * 32)


def test_call_timeout(pb_server: Server) -> None:
    result = pbfast("call", pb_server.address, "sleep", "5", "--timeout", "0.3s")
    assert_one_line_error(result, 1, "no answer", "0.3 s")


# ---------------------------------------------------------------------------------- serve


def test_serve_an_object_from_a_module(tmp_path: Path) -> None:
    (tmp_path / "greeter.py").write_text(
        "import pbfast\n"
        "class Greeter(pbfast.Root):\n"
        "    def remote_greet(self, name):\n"
        "        return f'hello, {name}'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    server = Server("tcp:port=0:interface=127.0.0.1", "--object", "greeter:Greeter", env=env)
    try:
        result = pbfast("call", server.address, "greet", "'Ada'")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "'hello, Ada'"
    finally:
        code, stderr = server.stop()
    assert code == 0, stderr


def test_serve_finds_modules_in_the_current_directory(tmp_path: Path) -> None:
    """As ``python -m`` does: the installed script, run from the directory holding a package."""
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "myapp" / "service.py").write_text("import pbfast\nAnswer = 42\n")
    script = Path(sysconfig.get_path("scripts")) / "pbfast"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [str(script), "serve", "--object", "myapp.service:Answer"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    # Imported and found: refused only for what it is.
    assert_one_line_error(result, 2, "'myapp.service:Answer' is an int, not a pbfast.Referenceable")


def test_serve_a_factory_that_makes_the_wrong_thing(tmp_path: Path) -> None:
    (tmp_path / "factory.py").write_text("def make():\n    return 'not an object'\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = pbfast("serve", "--object", "factory:make", env=env)
    assert_one_line_error(result, 2, "'factory:make' made a str, not a pbfast.Referenceable or pbfast.Portal")


def test_serve_in_a_tub_keeps_its_identity(tmp_path: Path) -> None:
    cert = tmp_path / "server.pem"
    created = pbfast("create-tub", str(cert))
    assert created.returncode == 0, created.stderr
    tub_id = created.stdout.strip()
    furls = []
    for _ in range(2):  # the same certificate and name give the same FURL after a restart
        server = Server("--tub", "tcp:port=0:interface=127.0.0.1", "--cert-file", str(cert), "--name", "echo")
        try:
            assert server.address.startswith(f"pb://{tub_id}@tcp:127.0.0.1:")
            assert server.address.endswith("/echo")
            result = pbfast("call", server.address, "echo", "'again'")
            assert result.stdout.strip() == "'again'", result.stderr
            furls.append(server.address.rsplit("@", 1)[0] + server.address.rsplit("/", 1)[1])
        finally:
            server.stop()
    assert furls[0] == furls[1]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--object", "no_such_module_here:Thing"], ["cannot import", "no_such_module_here"]),
        (["--object", "json:no_such_attribute"], ["no attribute", "no_such_attribute"]),
        (["--object", "json"], ["module:attribute"]),
        (["--object", "json:JSONDecoder"], ["the class JSONDecoder, not a pbfast.Referenceable"]),
        (["--object", "json:dumps"], ["'json:dumps': calling it with no arguments failed", "TypeError"]),
        (["--object", "json:decoder"], ["is a module, not a pbfast.Referenceable or pbfast.Portal"]),
        (["--object", "json:JSONDecoder.decode"], ["calling it with no arguments failed"]),
        (["--object", "collections:OrderedDict"], ["the class OrderedDict"]),
        (["--object", "string:capwords"], ["failed"]),
        (["--furl-file", "x.furl"], ["--furl-file needs --tub"]),
        (["tcp:port=nope"], ["port"]),
    ],
)
def test_serve_usage_errors(args: list[str], fragments: list[str]) -> None:
    result = pbfast("serve", *args)
    assert_one_line_error(result, 2 if args[0].startswith("-") else 1, *fragments)


def test_serve_on_a_busy_port() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = pbfast("serve", f"tcp:port={port}:interface=127.0.0.1")
    assert_one_line_error(result, 1, str(port))


# ---------------------------------------------------------------------------------- bench


def start_bench(address: str, *args: str) -> subprocess.Popen[str]:
    """`pbfast bench ADDRESS echo 1 ARGS` running, without a warm-up."""
    command = [sys.executable, "-m", "pbfast", "bench", address, "echo", "1", "--warmup", "0", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def bench_json(*args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    result = pbfast("bench", *args, "--json")
    assert "Traceback" not in result.stderr, result.stderr
    return result, json.loads(result.stdout)


def test_bench_closed_model_json(pb_server: Server) -> None:
    result, data = bench_json(
        pb_server.address, "echo", "1", "--calls", "3000", "-c", "16", "--warmup", "0.2"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1  # one JSON object, nothing else
    assert data["model"] == "closed" and data["concurrency"] == 16 and data["connections"] == 1
    assert data["sent"] == data["completed"] == data["ok"] == 3000
    assert data["failed"] == 0 and data["errors"] == {}
    assert data["throughput"] > 0
    latency = data["latency_us"]
    assert 0 < latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["p99.9"]
    assert latency["p99.9"] <= latency["max"]
    assert latency["count"] == 3000
    assert sum(count for _, _, count in data["histogram_us"]) == 3000
    assert data["uncorrected_latency_us"] is None and data["late_sends"] is None
    assert data["passed"] is True


def test_bench_open_model_json(pb_server: Server) -> None:
    result, data = bench_json(pb_server.address, "echo", "1", "--rate", "2000", "-d", "1s", "--warmup", "0.2")
    assert result.returncode == 0, result.stderr
    assert data["model"] == "open" and data["rate"] == 2000
    assert 1800 <= data["sent"] <= 2200  # the schedule, not the server, sets how many are sent
    assert data["completed"] == data["sent"]
    assert data["late_sends"] >= 0 and data["max_send_lag_us"] >= 0
    corrected, uncorrected = data["latency_us"], data["uncorrected_latency_us"]
    assert uncorrected["count"] == corrected["count"] == data["completed"]
    # Counted from the intended start, a call's latency can only be longer.
    assert corrected["max"] >= uncorrected["max"]
    assert corrected["mean"] >= uncorrected["mean"]


def test_bench_furl_over_several_connections(tub_server: Server) -> None:
    result, data = bench_json(
        tub_server.address, "echo", "'x'", "-n", "1000", "-c", "8", "--connections", "2"
    )
    assert result.returncode == 0, result.stderr
    assert data["connections"] == 2 and data["ok"] == 1000


def test_bench_human_report(pb_server: Server) -> None:
    result = pbfast("bench", pb_server.address, "echo", "1", "-n", "2000", "--warmup", "0")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "\r" not in out and "\x1b" not in out  # no live progress line: stdout is not a terminal
    assert "closed model, 64 calls in flight over 1 connection; 2,000 calls" in out
    assert re.search(r"calls +2,000 in [\d.]+ s: 2,000 ok, 0 failed", out)
    assert re.search(r"p50 .+ +p90 .+ +p99 .+ +p99\.9 .+ +max ", out)
    assert "distribution" in out


def test_bench_errors_by_type_and_a_failing_threshold(pb_server: Server) -> None:
    result, data = bench_json(pb_server.address, "fail", "'no'", "-n", "500", "--fail-if", "errors>0")
    assert data["errors"] == {"remote pbfast.errors.Error": 500}
    assert data["ok"] == 0 and data["failed"] == 500
    assert data["thresholds"] == [{"expr": "errors>0", "metric": "errors", "value": 500.0, "crossed": True}]
    assert data["passed"] is False
    assert_one_line_error(result, 3, "threshold crossed", "errors>0", "500")


def test_bench_latency_threshold(pb_server: Server) -> None:
    crossed = pbfast("bench", pb_server.address, "echo", "1", "-n", "500", "--fail-if", "p99>1ns")
    assert_one_line_error(crossed, 3, "threshold crossed", "p99>1ns")
    assert "CROSSED  p99>1ns" in crossed.stdout
    held = pbfast(
        "bench", pb_server.address, "echo", "1", "-n", "500", "--fail-if", "p99>1h", "--fail-if", "errors>0"
    )
    assert held.returncode == 0, held.stderr
    assert "ok       p99>1h" in held.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--fail-if", "p99 5ms"], "METRIC OP VALUE"),
        (["--fail-if", "p42>5ms"], "unknown metric"),
        (["--fail-if", "p99>fast"], "bad value"),
        (["--rate", "100", "--concurrency", "4"], "--concurrency is for the closed model"),
        (["--concurrency", "0"], "at least 1"),
        (["--duration", "1s", "--calls", "5"], "not allowed with"),
        (["--connections", "8", "--concurrency", "4"], "more than the 4 calls in flight"),
        (["[1,"], "not a Python literal"),
        (["--scenario", "shop:visit"], "either METHOD [ARGS...] or --scenario, not both"),
        (["--stages", "1s:10", "--rate", "5"], "it cannot go with --rate"),
        (["--stages", "1s:10", "-n", "5"], "it cannot go with --calls"),
        (["--stages", "1s:10,2s"], "stage 2 '2s' is not DURATION:RATE"),
        (["--processes", "4", "-c", "2"], "--processes 4 is more than the 2 calls in flight"),
        (["--processes", "2", "-c", "4", "--connections", "3"], "more than the 2 calls in flight in each"),
        (["--hlog", "/no/such/directory/run.hlog"], "cannot write --hlog /no/such/directory/run.hlog"),
    ],
)
def test_bench_usage_errors(pb_server: Server, args: list[str], fragment: str) -> None:
    result = pbfast("bench", pb_server.address, "echo", *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert fragment in result.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ([], "name the METHOD to call (or give a --scenario)"),
        (["--scenario", "no_such_module:visit"], "cannot import 'no_such_module'"),
        (["--scenario", "shop_scenario:nothing"], "shop_scenario has no attribute 'nothing'"),
        (["--scenario", "shop_scenario:Shop"], "'shop_scenario:Shop' is a class, not an async function"),
    ],
)
def test_bench_scenario_usage_errors(args: list[str], fragment: str) -> None:
    """Found from the current directory, as `pbfast serve --object` finds objects; checked
    before connecting."""
    result = pbfast("bench", f"tcp:host=127.0.0.1:port={unused_port()}", *args, cwd=ROOT / "examples")
    assert_one_line_error(result, 2, fragment)


def test_bench_processes_merge_exactly(pb_server: Server, tmp_path: Path) -> None:
    """Two load processes: the report's totals and histogram are the sum of theirs, bucket by
    bucket, and the interval log (read back with the hdrhistogram package) counts every call."""
    from hdrh.histogram import HdrHistogram
    from hdrh.log import HistogramLogReader

    hlog = tmp_path / "run.hlog"
    result, data = bench_json(
        pb_server.address, "echo", "1", "-n", "3000", "-c", "16", "--processes", "2", "--warmup", "0.2",
        "--hlog", str(hlog),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    parts = data["per_process"]
    assert data["processes"] == 2 and len(parts) == 2 and data["connections"] == 2
    assert [p["sent"] for p in parts] == [1500, 1500]
    for key in ("sent", "completed", "ok", "failed", "generator_cpu_s"):
        assert data[key] == pytest.approx(sum(p[key] for p in parts)), key
    assert data["sent"] == data["ok"] == data["latency_us"]["count"] == 3000
    assert data["elapsed_s"] == max(p["elapsed_s"] for p in parts)

    def counts(histogram: list) -> dict[float, int]:
        return {low: count for low, _, count in histogram}

    merged, first, second = counts(data["histogram_us"]), *(counts(p["histogram_us"]) for p in parts)
    assert merged == {low: first.get(low, 0) + second.get(low, 0) for low in first.keys() | second.keys()}
    assert data["latency_us"]["max"] == max(p["latency_us"]["max"] for p in parts)

    reader = HistogramLogReader(str(hlog), HdrHistogram(1, 3600 * 10**9, 3))
    total = 0
    while (interval := reader.get_next_interval_histogram()) is not None:
        assert interval.get_tag() is None  # the closed model has no uncorrected figures
        total += interval.get_total_count()
    reader.close()
    assert total == 3000


def test_bench_stages_in_processes(pb_server: Server) -> None:
    """Each process takes its share of each stage's rate; the stages keep their schedule."""
    result, data = bench_json(
        pb_server.address, "echo", "1", "--stages", "0.6s:300,0.6s:900", "--processes", "2", "--warmup", "0.2"
    )
    assert result.returncode == 0, result.stderr
    assert data["model"] == "open" and data["duration_s"] == pytest.approx(1.2)
    stages = data["stages"]
    assert [(s["duration_s"], s["rate"]) for s in stages] == [(0.6, 300), (0.6, 900)]
    assert [s["sent"] for s in stages] == [180, 540]
    for stage, planned in zip(stages, (180, 540), strict=True):
        assert stage["completed"] == pytest.approx(planned, rel=0.15)
        assert stage["throughput"] == pytest.approx(stage["rate"], rel=0.15)
        assert stage["latency_us"]["count"] == stage["completed"]
    assert [[s["sent"] for s in p["stages"]] for p in data["per_process"]] == [[90, 270], [90, 270]]
    assert data["sent"] == 720


def test_bench_scenario(tmp_path: Path) -> None:
    """examples/shop_scenario.py against its own shop, in two processes: every call of every
    iteration is counted under its method, on the root and on the cart that came back."""
    from hdrh.histogram import HdrHistogram
    from hdrh.log import HistogramLogReader

    examples = ROOT / "examples"
    hlog = tmp_path / "shop.hlog"
    with Server(
        "--object", "shop_scenario:Shop", "tcp:port=0:interface=127.0.0.1",
        env={**os.environ, "PYTHONPATH": str(examples)},
    ) as server:  # fmt: skip
        result = pbfast(
            "bench", server.address, "--scenario", "shop_scenario:visit", "-n", "60", "-c", "4",
            "--processes", "2", "--warmup", "0", "--json", "--hlog", str(hlog),
            cwd=examples,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["scenario"] == "shop_scenario:visit" and data["method"] is None
    assert data["sent"] == data["ok"] == 60 and data["failed"] == 0
    methods = data["methods"]
    assert {name: m["calls"] for name, m in methods.items()} == {
        "add": 180,
        "browse": 60,
        "cart": 60,
        "checkout": 60,
    }
    assert all(m["ok"] == m["calls"] == m["latency_us"]["count"] for m in methods.values())
    assert [sum(p["methods"]["add"]["calls"] for p in data["per_process"])] == [180]
    reader = HistogramLogReader(str(hlog), HdrHistogram(1, 3600 * 10**9, 3))
    by_tag: dict[str | None, int] = {}
    while (interval := reader.get_next_interval_histogram()) is not None:
        by_tag[interval.get_tag()] = by_tag.get(interval.get_tag(), 0) + interval.get_total_count()
    reader.close()
    assert by_tag == {
        None: 60,
        "method:add": 180,
        "method:browse": 60,
        "method:cart": 60,
        "method:checkout": 60,
    }


def test_bench_unreachable_endpoint() -> None:
    result = pbfast("bench", f"tcp:host=127.0.0.1:port={unused_port()}", "echo", "-n", "10")
    assert_one_line_error(result, 1, "cannot connect", "refused")
    # With load processes, the first that cannot connect says so; the others are stopped.
    result = pbfast(
        "bench", f"tcp:host=127.0.0.1:port={unused_port()}", "echo", "-c", "2", "--processes", "2"
    )
    assert_one_line_error(result, 1, "load process", "cannot connect", "refused")


def test_bench_bad_furl() -> None:
    result = pbfast("bench", "pb://xyz@tcp:127.0.0.1:1/name", "echo", "-n", "10")
    assert_one_line_error(result, 2, "bad FURL")


def test_bench_server_going_away(tmp_path: Path) -> None:
    server = Server("tcp:port=0:interface=127.0.0.1")
    bench = start_bench(server.address, "-d", "30s")
    time.sleep(1.5)
    server.stop(signal.SIGKILL)
    stdout, stderr = bench.communicate(timeout=30)
    assert bench.returncode == 1, stderr
    assert "Traceback" not in stderr
    assert "stopped early" in stdout and "lost the connection" in stderr


def test_bench_shows_progress_on_a_terminal(pb_server: Server) -> None:
    """A line a second on stderr when it is a terminal; the report alone on stdout."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pbfast",
            "bench",
            pb_server.address,
            "echo",
            "1",
            "-d",
            "2.5s",
            "--warmup",
            "0.5",
        ],
        stdout=subprocess.PIPE,
        stderr=terminal,
        text=True,
    )
    os.close(terminal)
    output = b""
    try:
        while True:
            ready, _, _ = select.select([controller], [], [], 30)
            if not ready:
                break
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal closed
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(controller)
        stdout, _ = process.communicate(timeout=30)
        assert process.returncode == 0, output
    text = output.decode()
    assert "pbfast bench: warming up for 0.5 s" in text
    lines = re.findall(
        r"pbfast bench: +(\d\.\d)s/2\.5s +[\d,]+ calls/s +p50 \S+ \S+ +p99 \S+ \S+ +errors 0 \(0 in all\)"
        r" +in flight \d+",
        text,
    )
    # A line a second, the last one when the last answer came.
    assert len(lines) == 3 and 2.5 <= float(lines[2]) < 3, text
    assert "throughput" in stdout and "pbfast bench:" not in stdout.replace("pbfast bench: echo", "")


# ---------------------------------------------------------------------------------- create-tub


def test_create_tub(tmp_path: Path) -> None:
    from pbfast.identity import TubIdentity

    path = tmp_path / "tub.pem"
    result = pbfast("create-tub", str(path))
    assert result.returncode == 0, result.stderr
    tub_id = result.stdout.strip()
    assert TUBID.fullmatch(tub_id)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert TubIdentity.from_pem(path.read_bytes()).tubID == tub_id

    again = pbfast("create-tub", str(path))
    assert_one_line_error(again, 1, "already exists", tub_id)
    assert TubIdentity.from_pem(path.read_bytes()).tubID == tub_id  # untouched


def test_create_tub_in_a_missing_directory(tmp_path: Path) -> None:
    result = pbfast("create-tub", str(tmp_path / "no" / "such" / "dir.pem"))
    assert_one_line_error(result, 1, "cannot create")


@pytest.mark.parametrize("processes", ["1", "2"])
def test_bench_interrupted_reports_what_it_measured(pb_server: Server, processes: str) -> None:
    bench = start_bench(pb_server.address, "-d", "60s", "--processes", processes)
    time.sleep(2)
    bench.send_signal(signal.SIGINT)
    stdout, stderr = bench.communicate(timeout=30)
    assert bench.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "stopped early: interrupted" in stdout
    assert re.search(r"throughput +[\d,]+ calls/s", stdout)
