"""How many calls one Locust worker process drives with `pbfast.locust`, against ``pbfast serve``'s
echo, each in its own process on 127.0.0.1, as a user would run them.

    python benches/locust_rate.py [--seconds 10] [--users 50] [--rows ROW,...] [--json PATH]

Each row runs ``locust --headless`` (one process) for the given time with users calling
``echo(1)`` in a loop (``wait_time = constant(0)``) and reads Locust's own statistics
(``--json``): calls/s is the echo row's request count over its time span, after all users have
started (``--reset-stats``). Rows:

- ``pb``: `PbUser`, each user its own connection, on uvloop (the default loop);
- ``pb-asyncio``: the same on asyncio's own loop (``use_event_loop("asyncio")``);
- ``tub``: `TubUser`, a FURL: the process's users share one TLS connection;
- ``locust-noop``: a user whose task only reports a request to Locust, without any I/O: the
  most any client can report from one Locust process here (Locust's own cost per request);
- ``bench-pb``, ``bench-tub``: pbfast's own load generator, ``pbfast bench``, without Locust,
  in the same shape: as many calls in flight as there are users, on as many PB connections
  (``--connections``), or on the one connection a Tub makes.

The CPU column is the load process's CPU time (user + system, all its threads) per call (for
Locust, from when all users run, like the statistics; for ``pbfast bench``, over its measured
window); the
last column is a Locust row's calls/s over its ``pbfast bench`` peer's, run in the same go.
See benches/README.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS = ("pb", "pb-asyncio", "tub", "locust-noop", "bench-pb", "bench-tub")
# Each Locust row and the `pbfast bench` row with the same load shape.
PEERS = {"pb": "bench-pb", "pb-asyncio": "bench-pb", "tub": "bench-tub"}

LOCUSTFILE = """
import json
import os
import time

from locust import User, constant, events, task

from pbfast.locust import PbUser, TubUser, use_event_loop

if os.environ.get("BENCH_LOOP"):
    use_event_loop(os.environ["BENCH_LOOP"])

# The process's CPU time (all threads) from when every user runs (and the statistics restart)
# to the end of the test.
cpu_at_start = None


@events.spawning_complete.add_listener
def measure_from_here(**kwargs):
    global cpu_at_start
    cpu_at_start = time.process_time()


@events.test_stop.add_listener
def write_cpu(**kwargs):
    with open(os.environ["BENCH_CPU_FILE"], "w") as f:
        json.dump({"cpu_s": time.process_time() - cpu_at_start}, f)


class EchoPb(PbUser):
    wait_time = constant(0)

    @task
    def echo(self):
        self.client.callRemote("echo", 1)


class EchoTub(TubUser):
    wait_time = constant(0)

    @task
    def echo(self):
        self.client.callRemote("echo", 1)


class Noop(User):
    wait_time = constant(0)

    @task
    def echo(self):
        started = time.perf_counter()
        self.environment.events.request.fire(
            request_type="NOOP", name="echo", response_time=(time.perf_counter() - started) * 1000,
            response_length=0, exception=None, context={},
        )
"""


def start_server(kind: str, workdir: Path) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "pbfast", "serve", "tcp:port=0:interface=127.0.0.1"]
    if kind == "tub":
        command += ["--tub", "--furl-file", str(workdir / "echo.furl")]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    for line in server.stdout:
        if line.startswith(("pb://", "call it at: ")):
            return server, line.strip().removeprefix("call it at: ")
    raise SystemExit(f"pbfast serve ({kind}) did not start: exit {server.wait()}")


def run_locust(locustfile: Path, user_class: str, host: str, loop: str, options: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", "locust", "-f", str(locustfile), user_class, "--headless"]
    command += ["-u", str(options.users), "-r", str(options.users * 100), "-t", f"{options.seconds:g}s"]
    command += ["--host", host, "--reset-stats", "--json", "--loglevel", "WARNING", "--stop-timeout", "1"]
    cpu_file = locustfile.with_name("cpu.json")
    env = {**os.environ, "BENCH_LOOP": loop, "BENCH_CPU_FILE": str(cpu_file)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=options.seconds + 60)
    if result.returncode != 0:
        raise SystemExit(f"locust ({user_class}) failed: exit {result.returncode}\n{result.stderr}")
    (stats,) = [entry for entry in json.loads(result.stdout) if entry["name"] == "echo"]
    span = stats["last_request_timestamp"] - stats["start_time"]
    times = sorted((float(ms), count) for ms, count in stats["response_times"].items())
    return {
        "calls": stats["num_requests"],
        "failures": stats["num_failures"],
        "calls_per_s": stats["num_requests"] / span,
        "p50_ms": percentile(times, stats["num_requests"], 0.50),
        "p99_ms": percentile(times, stats["num_requests"], 0.99),
        "cpu_us_per_call": json.loads(cpu_file.read_text())["cpu_s"] / stats["num_requests"] * 1e6,
    }


def percentile(times: list[tuple[float, int]], total: int, fraction: float) -> float:
    """From Locust's histogram of rounded response times (ms -> count)."""
    seen = 0
    for ms, count in times:
        seen += count
        if seen >= fraction * total:
            return ms
    return times[-1][0]


def run_pbfast_bench(target: str, connections: int, options: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        "-m",
        "pbfast",
        "bench",
        target,
        "echo",
        "1",
        "--concurrency",
        str(options.users),
    ]
    command += ["--connections", str(connections), "--duration", f"{options.seconds:g}s", "--json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=options.seconds + 60)
    if result.returncode != 0:
        raise SystemExit(f"pbfast bench failed: {result.stderr.strip()}")
    data = json.loads(result.stdout)
    return {
        "calls": data["completed"],
        "failures": data["failed"],
        "calls_per_s": data["throughput"],
        "p50_ms": data["latency_us"]["p50"] / 1000,
        "p99_ms": data["latency_us"]["p99"] / 1000,
        "cpu_us_per_call": data["generator_cpu_s"] / data["completed"] * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each run (default 10)")
    parser.add_argument("--users", type=int, default=50, help="Locust users (default 50)")
    parser.add_argument(
        "--rows", default=",".join(ROWS), help=f"which rows, comma-separated (default all: {','.join(ROWS)})"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    options = parser.parse_args()
    wanted = [row.strip() for row in options.rows.split(",") if row.strip()]
    unknown = sorted(set(wanted) - set(ROWS))
    if unknown:
        parser.error(f"unknown rows {unknown}; known: {', '.join(ROWS)}")

    # Only looked for: importing Locust would monkey-patch this process for gevent.
    if importlib.util.find_spec("locust") is None:
        raise SystemExit("Locust is not installed: pip install 'pbfast[locust]'")
    import pbfast._core

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as workdir:
        locustfile = Path(workdir, "locustfile.py")
        locustfile.write_text(LOCUSTFILE)
        servers = []
        try:
            pb_server, endpoint = start_server("pb", Path(workdir))
            servers.append(pb_server)
            furl = ""
            if {"tub", "bench-tub"} & set(wanted):
                tub_server, furl = start_server("tub", Path(workdir))
                servers.append(tub_server)
            for row in wanted:
                if row == "pb":
                    results[row] = run_locust(locustfile, "EchoPb", endpoint, "uvloop", options)
                elif row == "pb-asyncio":
                    results[row] = run_locust(locustfile, "EchoPb", endpoint, "asyncio", options)
                elif row == "tub":
                    results[row] = run_locust(locustfile, "EchoTub", furl, "uvloop", options)
                elif row == "locust-noop":
                    results[row] = run_locust(locustfile, "Noop", endpoint, "", options)
                elif row == "bench-pb":
                    results[row] = run_pbfast_bench(endpoint, options.users, options)
                else:
                    results[row] = run_pbfast_bench(furl, 1, options)
        finally:
            for server in servers:
                server.terminate()
                server.wait()

    print(
        f"One Locust process, {options.users} users calling `pbfast serve`'s echo(1) in a loop, "
        f"{options.seconds:g} s a run"
    )
    print(
        f"({os.cpu_count()} CPUs, Python {platform.python_version()}, {pbfast._core.build_profile} build, "
        f"Locust {version('locust')}, gevent {version('gevent')}, {time.strftime('%Y-%m-%d')})"
    )
    print()
    print("| row | calls/s | failures | p50 ms | p99 ms | CPU µs/call | vs pbfast bench |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for row, data in results.items():
        peer = results.get(PEERS.get(row, ""))
        ratio = f"{data['calls_per_s'] / peer['calls_per_s']:.2f}×" if peer else ""
        print(
            f"| {row} | {data['calls_per_s']:,.0f} | {data['failures']:,} | {data['p50_ms']:.3g} | "
            f"{data['p99_ms']:.3g} | {data['cpu_us_per_call']:.1f} | {ratio} |"
        )
    if options.json:
        Path(options.json).write_text(json.dumps(results, indent=2))


def version(package: str) -> str:
    from importlib.metadata import version as installed

    return installed(package)


if __name__ == "__main__":
    main()
