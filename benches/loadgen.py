"""How fast ``pbfast bench`` can drive a server: the load generator against ``pbfast serve``'s
built-in echo, each in its own process on 127.0.0.1, as a user would run them.

    python benches/loadgen.py [--seconds 10] [--warmup 1] [--json PATH]

Runs the closed model at a few concurrencies and the open model at a few rates, on Twisted PB's
wire (an endpoint) and in a Tub (a FURL), and prints a Markdown table: calls/s, latency
percentiles, late sends and the generator's own CPU time per call (its process time over the measured window),
which shows how much headroom it has (in the open model it also spins while a call is due
within a millisecond, so its CPU share is high whatever the rate). See benches/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = (
    ("pb", "closed", ["--concurrency", "16"]),
    ("pb", "closed", ["--concurrency", "64"]),
    ("pb", "closed", ["--concurrency", "256"]),
    ("pb", "open", ["--rate", "50000"]),
    ("pb", "open", ["--rate", "100000"]),
    ("tub", "closed", ["--concurrency", "64"]),
    ("tub", "open", ["--rate", "50000"]),
)


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


def bench(target: str, args: list[str], seconds: float, warmup: float) -> dict:
    command = [sys.executable, "-m", "pbfast", "bench", target, "echo", "1", *args]
    command += ["--duration", f"{seconds}s", "--warmup", f"{warmup}s", "--json"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"pbfast bench failed: {result.stderr.strip()}")
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each run (default 10)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each run (default 1)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    options = parser.parse_args()

    import pbfast._core

    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for kind in ("pb", "tub"):
            server, target = start_server(kind, Path(workdir))
            try:
                for run_kind, model, args in RUNS:
                    if run_kind == kind:
                        rows.append(
                            (
                                kind,
                                model,
                                " ".join(args),
                                bench(target, args, options.seconds, options.warmup),
                            )
                        )
            finally:
                server.terminate()
                server.wait()

    print(
        f"pbfast bench against `pbfast serve`'s echo(1), {options.seconds:g} s a run "
        f"after a {options.warmup:g} s warm-up"
    )
    print(
        f"({os.cpu_count()} CPUs, Python {platform.python_version()}, {pbfast._core.build_profile} build, "
        f"{time.strftime('%Y-%m-%d')})"
    )
    print()
    print("| wire | load | calls/s | p50 µs | p99 µs | p99.9 µs | late sends | generator CPU µs/call |")
    print("|---|---|--:|--:|--:|--:|--:|--:|")
    for kind, model, args, data in rows:
        latency = data["latency_us"]
        late = "" if data["late_sends"] is None else f"{data['late_sends']:,}"
        cpu = data["generator_cpu_s"] / data["completed"] * 1e6
        wire = "PB (endpoint)" if kind == "pb" else "Tub (FURL, TLS)"
        print(
            f"| {wire} | {model}, {args} | {data['throughput']:,.0f} | {latency['p50']:,.0f} | "
            f"{latency['p99']:,.0f} | {latency['p99.9']:,.0f} | {late} | {cpu:.1f} |"
        )
    if options.json:
        Path(options.json).write_text(
            json.dumps([dict(zip(("wire", "model", "args", "result"), r, strict=True)) for r in rows])
        )


if __name__ == "__main__":
    main()
