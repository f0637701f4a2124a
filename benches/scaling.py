"""Scale-out on one machine: `pbfast serve --workers W` driven by `pbfast bench --processes P`, for
every W and P from 1 to the CPU count, each in its own processes on 127.0.0.1, as a user runs them.

    python benches/scaling.py [--seconds 5] [--warmup 1] [--concurrency 64] [--tub]
                              [--max N] [--out DIR] [--json PATH]

Prints a Markdown table (calls/s and p99 latency for each pair, and the machine it ran on) and,
with matplotlib, draws calls/s against load processes, one line per worker count, into
``DIR/scaling.png``. On a machine with as many CPUs as the largest W + P, the figures show how
throughput grows with cores; with fewer, the server's workers and the load processes share
CPUs, and the table shows what sharing costs rather than what more cores would give (the report
says which). See benches/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rpc  # noqa: E402  (the machine's description, shared with the other benchmarks)

CHART_HINT = "pip install matplotlib (or pip install -e '.[bench]')"


def free_port() -> int:
    """A port free now (the workers must share a given port: `--workers` refuses port 0)."""
    with socket.socket() as s:
        s.bind((rpc.HOST, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(workers: int, tub: bool, workdir: Path) -> Iterator[str]:
    """`pbfast serve --workers` on a free port; yields the target to bench (endpoint or FURL)."""
    port = free_port()
    command = [sys.executable, "-m", "pbfast", "serve", f"tcp:port={port}:interface={rpc.HOST}"]
    command += ["--workers", str(workers)]
    if tub:
        command += ["--tub", "--cert-file", str(workdir / "tub.pem")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        target = None
        assert proc.stdout is not None
        # A server that says nothing for 30 s is killed, which ends the reading below.
        watchdog = threading.Timer(30, proc.kill)
        watchdog.start()
        for line in proc.stdout:
            if line.startswith("call it at: "):  # the PB wire's endpoint
                target = line.split(": ", 1)[1].strip()
                break
            if line.startswith("pb://"):  # a Tub's FURL
                target = line.strip()
                break
        watchdog.cancel()
        if target is None:
            proc.kill()
            raise RuntimeError(f"pbfast serve --workers {workers} did not start: {proc.stderr.read()}")
        yield target
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def bench(target: str, workers: int, processes: int, args: argparse.Namespace) -> dict[str, Any]:
    """One `pbfast bench` run: `processes` load processes with `--concurrency` calls in flight in
    all, each on enough connections that the kernel spreads them over every worker."""
    connections = max(2, 2 * workers)
    command = [
        sys.executable, "-m", "pbfast", "bench", target, "echo", "1",
        "--processes", str(processes), "--concurrency", str(args.concurrency),
        "--connections", str(connections), "--duration", f"{args.seconds}s",
        "--warmup", f"{args.warmup}s", "--json",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120 + 4 * args.seconds)
    if done.returncode != 0:
        raise RuntimeError(f"pbfast bench failed ({done.returncode}): {done.stderr.strip()}")
    result = json.loads(done.stdout)
    return {
        "workers": workers,
        "processes": processes,
        "connections_per_process": connections,
        "calls_per_s": result["throughput"],
        "completed": result["completed"],
        "failed": result["failed"],
        "latency_us": result["latency_us"],
        "generator_cpu_s": result["generator_cpu_s"],
    }


def run(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    runs = []
    for workers in range(1, args.max + 1):
        with server(workers, args.tub, workdir) as target:
            for processes in range(1, args.max + 1):
                figures = bench(target, workers, processes, args)
                runs.append(figures)
                print(
                    f"workers {workers}, load processes {processes}: {figures['calls_per_s']:,.0f} calls/s",
                    file=sys.stderr,
                )
    return runs


def p99_ms(run: dict[str, Any]) -> str:
    p99 = run["latency_us"].get("p99")
    return "–" if p99 is None else f"{p99 / 1000:.2f}"


def report(runs: list[dict[str, Any]], env: dict[str, Any], args: argparse.Namespace) -> str:
    top = args.max
    wire = "in a Tub (foolscap over TLS)" if args.tub else "on the PB wire (TCP)"
    header = "| server workers | " + " | ".join(
        f"{p} load process{'es' if p > 1 else ''}" for p in range(1, top + 1)
    )
    lines = [
        "# pbfast scale-out: server workers × load processes",
        "",
        f"`echo(1)` {wire}; calls/s (p99 ms).",
        "",
    ]
    lines += [header + " |", "|--:|" + "--:|" * top]
    for workers in range(1, top + 1):
        cells = [f"{r['calls_per_s']:,.0f} ({p99_ms(r)})" for r in runs if r["workers"] == workers]
        lines.append(f"| {workers} | " + " | ".join(cells) + " |")
    cpus = env.get("cpus_usable") or env.get("cpu_count") or 0
    lines += ["", f"- Machine: {cpus} CPUs usable, {env['machine']}, {env['platform']}"]
    lines.append(
        f"- Python {env['python']}; pbfast {env['pbfast_version']} ({env['pbfast_build_profile']} build)"
    )
    lines.append(
        f"- Each run: `pbfast bench` with {args.concurrency} calls in flight in all, {args.seconds} s "
        f"after a {args.warmup} s warm-up; each load process on 2 connections per worker"
    )
    if cpus < 2 * top:
        lines.append(
            f"- With {cpus} CPUs, W workers and P load processes share them whenever W + P > {cpus}: "
            "beyond that the table shows the cost of sharing CPUs, not what more cores would give."
        )
    lines.append(
        f"- Command: `python benches/scaling.py --seconds {args.seconds} --warmup {args.warmup} "
        f"--concurrency {args.concurrency}{' --tub' if args.tub else ''} --max {top}`"
    )
    return "\n".join(lines) + "\n"


def chart(runs: list[dict[str, Any]], args: argparse.Namespace, out: Path) -> str:
    try:
        import matplotlib
    except ImportError:
        return f"no chart: matplotlib is not installed; for the chart, {CHART_HINT}"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for workers in range(1, args.max + 1):
        mine = [r for r in runs if r["workers"] == workers]
        ax.plot(
            [r["processes"] for r in mine],
            [r["calls_per_s"] for r in mine],
            marker="o",
            label=f"{workers} worker{'s' if workers > 1 else ''}",
        )
    ax.set_xlabel("load processes (pbfast bench --processes)")
    ax.set_ylabel("calls/s")
    ax.set_xticks(range(1, args.max + 1))
    ax.set_ylim(bottom=0)
    ax.set_title("pbfast serve --workers: echo(1) calls/s")
    ax.legend()
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "scaling.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"chart written to {path}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run (default: 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per run (default: 1)")
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight in all (default: 64)")
    parser.add_argument("--tub", action="store_true", help="serve and call in a Tub (foolscap, TLS)")
    parser.add_argument(
        "--max",
        type=int,
        default=os.cpu_count() or 1,
        help="the most workers and load processes (default: the CPU count)",
    )
    parser.add_argument(
        "--out", default="benches/results", help="where the chart goes (default: benches/results)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = parser.parse_args(argv)
    if args.max < 1 or args.seconds <= 0 or args.warmup < 0 or args.concurrency < args.max:
        parser.error("--max must be at least 1, --seconds positive, --concurrency at least --max")
    import tempfile

    env = rpc.machine_environment()
    with tempfile.TemporaryDirectory(prefix="pbfast-scaling-") as tmp:
        runs = run(args, Path(tmp))
    print(report(runs, env, args))
    print(chart(runs, args, Path(args.out)), file=sys.stderr)
    if args.json:
        rpc.write_json(args.json, {"environment": env, "runs": runs, "options": vars(args)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
