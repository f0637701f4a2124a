"""How fast ``pbfast bench`` can drive a server: the load generator against ``pbfast serve``'s
built-in echo, each in its own process on 127.0.0.1, as a user would run them.

    python benches/loadgen.py [--seconds 10] [--warmup 1] [--json PATH]
    python benches/loadgen.py --floor [--concurrency 100] [--rounds 3] [--pin split|same|none]

Runs the closed model at a few concurrencies and the open model at a few rates, on Twisted PB's
wire (an endpoint) and in a Tub (a FURL), and prints a Markdown table: calls/s, latency
percentiles, late sends and the generator's own CPU time per call (its process time over the measured window),
which shows how much headroom it has (in the open model it also spins while a call is due
within a millisecond, so its CPU share is high whatever the rate).

With ``--floor``, the same-run comparison of the closed-model engine with the least a client
can do: round after round, ``pbfast bench --concurrency C`` against ``pbfast serve``,
``rpc.py``'s least pbfast client (a future and a done-callback a call, nothing timed, C calls
outstanding) against its pbfast server, and ``rpc.py``'s raw uvloop callback client (no futures,
one write per read, C requests outstanding) against its raw echo server, each pair in fresh
processes placed alike (``--pin``); it prints each round's calls/s, the ratios and their medians.
See benches/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# `python benches/loadgen.py` puts benches/ on sys.path already; importing this file from elsewhere
# needs it too.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import rpc  # noqa: E402

RUNS = (
    ("pb", "closed", ["--concurrency", "16"]),
    ("pb", "closed", ["--concurrency", "64"]),
    ("pb", "closed", ["--concurrency", "256"]),
    ("pb", "open", ["--rate", "50000"]),
    ("pb", "open", ["--rate", "100000"]),
    ("tub", "closed", ["--concurrency", "64"]),
    ("tub", "open", ["--rate", "50000"]),
)


#: The floor comparison's target: the engine at least this fraction of the callback floor's calls/s.
FLOOR_TARGET = 0.5


def pinned(cpu: int | None) -> dict:
    """Popen's arguments to run a process on `cpu` (None: where the OS puts it)."""
    return {} if cpu is None else {"preexec_fn": lambda: os.sched_setaffinity(0, {cpu})}


def start_server(kind: str, workdir: Path, cpu: int | None = None) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "pbfast", "serve", "tcp:port=0:interface=127.0.0.1"]
    if kind == "tub":
        command += ["--tub", "--furl-file", str(workdir / "echo.furl")]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, **pinned(cpu))
    assert server.stdout is not None
    for line in server.stdout:
        if line.startswith(("pb://", "call it at: ")):
            return server, line.strip().removeprefix("call it at: ")
    raise SystemExit(f"pbfast serve ({kind}) did not start: exit {server.wait()}")


def bench(target: str, args: list[str], seconds: float, warmup: float, cpu: int | None = None) -> dict:
    command = [sys.executable, "-m", "pbfast", "bench", target, "echo", "1", *args]
    command += ["--duration", f"{seconds}s", "--warmup", f"{warmup}s", "--json"]
    result = subprocess.run(command, capture_output=True, text=True, check=False, **pinned(cpu))
    if result.returncode != 0:
        raise SystemExit(f"pbfast bench failed: {result.stderr.strip()}")
    return json.loads(result.stdout)


SIDES = ("bench", "least", "floor")
SIDE_TITLES = {
    "bench": "pbfast bench",
    "least": "least pbfast client",
    "floor": "callback floor",
}


def floor_comparison(options: argparse.Namespace) -> list[dict]:
    """`--rounds` rounds of the engine, the least pbfast client and the callback floor, side by
    side; which goes first rotates from round to round."""
    size = rpc.request_size()
    server_cpu, client_cpu = rpc.placement(options.pin)
    client_args = argparse.Namespace(
        warmup=options.warmup, outstanding=options.concurrency, dicts=False, bulk=False
    )
    rounds = []
    with tempfile.TemporaryDirectory() as workdir:
        for number in range(options.rounds):
            figures: dict = {}
            for side in SIDES[number % 3 :] + SIDES[: number % 3]:
                if side == "bench":
                    server, target = start_server("pb", Path(workdir), server_cpu)
                    try:
                        args = ["--concurrency", str(options.concurrency)]
                        data = bench(target, args, options.seconds, options.warmup, client_cpu)
                    finally:
                        server.terminate()
                        server.wait()
                    figures[side] = {
                        "calls_per_s": data["throughput"],
                        "client_cpu_us": data["generator_cpu_s"] / data["completed"] * 1e6,
                    }
                else:
                    system = rpc.PBFAST if side == "least" else rpc.FLOOR
                    proc, port = rpc.start_server(system, server_cpu)
                    try:
                        out = rpc.run_client(
                            system, port, proc.pid, options.seconds, client_args, size, client_cpu
                        )
                    finally:
                        rpc.stop_server(proc)
                    pipe = out["pipelined"]
                    figures[side] = {
                        "calls_per_s": pipe["calls"] / pipe["elapsed_s"],
                        "client_cpu_us": pipe["client_cpu_s"] / pipe["calls"] * 1e6,
                    }
            floor = figures["floor"]["calls_per_s"]
            figures["ratio"] = figures["bench"]["calls_per_s"] / floor
            figures["least_ratio"] = figures["least"]["calls_per_s"] / floor
            figures["bench_to_least"] = figures["bench"]["calls_per_s"] / figures["least"]["calls_per_s"]
            print(
                f"  round {number + 1}/{options.rounds}: "
                + ", ".join(f"{SIDE_TITLES[k]} {figures[k]['calls_per_s']:,.0f} calls/s" for k in SIDES)
                + f"; pbfast bench / floor {figures['ratio']:.3f}",
                file=sys.stderr,
            )
            rounds.append(figures)
    return rounds


def print_floor(options: argparse.Namespace, rounds: list[dict]) -> None:
    import pbfast._core

    c = options.concurrency
    print(
        f"`pbfast bench --concurrency {c}` against `pbfast serve`'s echo(1); the least pbfast client "
        f"(rpc.py's: a future and a done-callback a call, nothing timed) against rpc.py's pbfast "
        f"server; the raw uvloop callback client ({c} requests outstanding, one write per read) "
        f"against the raw echo server. {options.seconds:g} s a run after a {options.warmup:g} s "
        f"warm-up, {options.rounds} rounds, {rpc.describe_pin(options.pin)}"
    )
    print(
        f"({os.cpu_count()} CPUs, Python {platform.python_version()}, {pbfast._core.build_profile} build, "
        f"{time.strftime('%Y-%m-%d')})"
    )
    print()
    print(
        "| round | pbfast bench calls/s | least pbfast client calls/s | callback floor calls/s "
        "| bench / floor | least / floor | bench / least | client CPU µs/call: bench, least, floor |"
    )
    print("|--:|--:|--:|--:|--:|--:|--:|--:|")
    for number, r in enumerate(rounds, 1):
        cpu = ", ".join(f"{r[k]['client_cpu_us']:.2f}" for k in SIDES)
        print(
            f"| {number} | {r['bench']['calls_per_s']:,.0f} | {r['least']['calls_per_s']:,.0f} | "
            f"{r['floor']['calls_per_s']:,.0f} | {r['ratio']:.3f}× | {r['least_ratio']:.3f}× | "
            f"{r['bench_to_least']:.3f}× | {cpu} |"
        )
    print()
    for key, label in (
        ("ratio", "pbfast bench / callback floor"),
        ("least_ratio", "least pbfast client / callback floor"),
        ("bench_to_least", "pbfast bench / least pbfast client"),
    ):
        median = statistics.median(r[key] for r in rounds)
        target = (
            f" (target ≥ {FLOOR_TARGET}×: {'PASS' if median >= FLOOR_TARGET else 'MISS'})"
            if key == "ratio"
            else ""
        )
        print(f"- median {label}: {median:.3f}×{target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each run (default 10)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each run (default 1)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--floor", action="store_true", help="compare the closed-model engine with the callback floor instead"
    )
    parser.add_argument(
        "--concurrency", type=int, default=100, help="--floor: calls in flight on each side (default 100)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="--floor: rounds of both (default 3)")
    parser.add_argument(
        "--pin",
        choices=("same", "split", "none"),
        default="split",
        help="--floor: server and client on the same CPU, on two CPUs, or where the OS puts them "
        "(default split)",
    )
    options = parser.parse_args()
    if options.floor:
        rounds = floor_comparison(options)
        print_floor(options, rounds)
        if options.json:
            Path(options.json).write_text(json.dumps({"pin": options.pin, "rounds": rounds}))
        return

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
