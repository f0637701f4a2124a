"""What `pbfast.metrics` costs: pipelined throughput with metrics on against off, in one run.

    python benches/metrics_cost.py [--seconds 12] [--rounds 6] [--only pb,tub] [--pin split|same|none]
                                   [--json [PATH]]

For each wire (PB, a Tub), round after round, a fresh server process and client process run
``echo(1)`` pipelined with 100 calls outstanding (``rpc.py``'s measurement), once with metrics off in
both processes and once with them on in both (``pbfast.metrics.enable()`` before anything else),
the order of the two alternating from round to round. Each round's calls/s with metrics on divided by
its calls/s off is that round's ratio; the report gives the median ratio, the median calls/s each
way and the CPU each process spent per call, and whether the cost (1 - ratio) is within the target
of 3 %.

The same file is also the servers and clients it starts (internal):

    python benches/metrics_cost.py --serve WIRE [--metrics]             # prints "PORT n" or "FURL f"
    python benches/metrics_cost.py --client WIRE --at ADDRESS [--metrics] ...
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Any

# `python benches/metrics_cost.py` puts benches/ on sys.path already; importing this file from
# elsewhere needs it too.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import rpc  # noqa: E402
import tub  # noqa: E402

WIRES = ("pb", "tub")
TITLES = {"pb": "PB", "tub": "Tub"}
#: The most metrics may cost: this fraction of the pipelined calls/s.
TARGET = 0.03


def client(wire: str, args: argparse.Namespace) -> dict[str, Any]:
    """The pipelined part of `rpc.py`'s measurement, against the server at `args.at`."""
    import pbfast

    async def main() -> dict[str, Any]:
        if wire == "pb":
            root = await pbfast.connect(f"tcp:host={rpc.HOST}:port={args.at}")
            try:
                call = functools.partial(root.callRemote, "echo", 1)
                return await rpc.measure_asyncio(call, 1, args, sequential=False)
            finally:
                await root.broker.close()
        async with pbfast.Tub() as t:
            ref = await t.getReference(args.at)
            return await rpc.measure_asyncio(
                functools.partial(ref.callRemote, "echo", 1), 1, args, sequential=False
            )

    return pbfast.run(main())


def internal(args: argparse.Namespace) -> bool:
    """Run this process as a server or a client if asked to."""
    if not (args.serve or args.client):
        return False
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    if args.metrics:
        import pbfast.metrics

        pbfast.metrics.enable()
    if args.serve:
        # `rpc.py`'s PB echo server or `tub.py`'s Tub one: each prints where it is ("PORT n",
        # "FURL f") and stops when its stdin closes.
        (rpc.serve_pbfast if args.serve == "pb" else tub.serve_pbfast)()
        return True
    result = client(args.client, args)
    if args.metrics:
        import pbfast.metrics

        # The calls were counted (a client that counted nothing would make the figure meaningless).
        result["counted"] = pbfast.metrics.snapshot().calls(side="client", method="echo")
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f)
    return True


def one_run(wire: str, metrics: bool, args: argparse.Namespace, budget: float) -> dict[str, Any]:
    """A fresh server and client, `budget` seconds of pipelined calls: the client's result."""
    server_cpu, client_cpu = rpc.placement(args.pin)
    flag = ["--metrics"] if metrics else []
    this = os.path.abspath(__file__)
    proc = subprocess.Popen(
        [sys.executable, this, "--serve", wire, *flag, *rpc.pin_args(server_cpu)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        if not line.startswith(("PORT ", "FURL ")):
            raise RuntimeError(f"the {wire} server did not start (it printed {line!r})")
        with tempfile.TemporaryDirectory(prefix="pbfast-metrics-") as tmp:
            out = os.path.join(tmp, "result.json")
            command = [
                sys.executable, this, "--client", wire, "--at", line.split()[1], *flag,
                "--seconds", repr(budget), "--warmup", repr(args.warmup),
                "--outstanding", str(args.outstanding), "--server-pid", str(proc.pid), "--out", out,
                *rpc.pin_args(client_cpu),
            ]  # fmt: skip
            done = subprocess.run(command, stdin=subprocess.DEVNULL, timeout=60 + 10 * (budget + args.warmup))
            if done.returncode != 0:
                raise RuntimeError(f"the {wire} client failed (exit status {done.returncode})")
            with open(out, encoding="utf-8") as f:
                result: dict[str, Any] = json.load(f)
    finally:
        rpc.stop_server(proc)
    if result["bad_replies"]:
        raise AssertionError(f"{wire}: {result['bad_replies']} calls did not echo their argument")
    if metrics and not result.get("counted"):
        raise AssertionError(f"{wire}: metrics were on, but the client counted no calls")
    return result


def measure(args: argparse.Namespace, wires: list[str]) -> dict[str, Any]:
    """Alternating rounds: per wire, its rounds' figures with metrics off and on."""
    budget = args.seconds / args.rounds
    rounds: dict[str, list[dict[str, Any]]] = {wire: [] for wire in wires}
    for rnd in range(args.rounds):
        for wire in wires:
            order = (False, True) if rnd % 2 == 0 else (True, False)
            figures: dict[str, Any] = {}
            for metrics in order:
                pipe = one_run(wire, metrics, args, budget)["pipelined"]
                figures["on" if metrics else "off"] = {
                    "calls_per_second": pipe["calls"] / pipe["elapsed_s"],
                    "client_cpu_us_per_call": 1e6 * pipe["client_cpu_s"] / pipe["calls"],
                    "server_cpu_us_per_call": None
                    if pipe["server_cpu_s"] is None
                    else 1e6 * pipe["server_cpu_s"] / pipe["calls"],
                }
            figures["ratio"] = figures["on"]["calls_per_second"] / figures["off"]["calls_per_second"]
            rounds[wire].append(figures)
            off, on = figures["off"]["calls_per_second"], figures["on"]["calls_per_second"]
            print(
                f"  round {rnd + 1}/{args.rounds} {TITLES[wire]:<4} off {off:>10,.0f}  on {on:>10,.0f}"
                f" calls/s  on/off {figures['ratio']:.3f}",
                file=sys.stderr,
            )
    return {wire: summary(rounds[wire]) for wire in wires}


def summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def median(way: str, key: str) -> float | None:
        values = [r[way][key] for r in rounds if r[way][key] is not None]
        return statistics.median(values) if values else None

    ratio = statistics.median(r["ratio"] for r in rounds)
    return {
        "rounds": rounds,
        "ratio_median": ratio,
        "cost": 1 - ratio,
        "verdict": "PASS" if 1 - ratio < TARGET else "MISS",
        **{f"{way}_{key}": median(way, key) for way in ("off", "on") for key in rounds[0][way]},
    }


def cpu(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def report(results: dict[str, Any], env: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        "# What metrics cost: pipelined echo(1), metrics on against off",
        "",
        f"- Machine: Python {env['python']}, pbfast {env['pbfast_version']} "
        f"({env['pbfast_build_profile']} build), {env['cpu_count']} CPUs"
        f"{rpc.busy_note(env.get('cpu_busy_before_percent'))}, {env['platform']}",
        f"- {args.rounds} rounds of {args.seconds / args.rounds:.1f} s per wire and setting (fresh processes "
        f"each), the order of off and on alternating; {args.outstanding} calls outstanding; "
        f"CPU placement `--pin {args.pin}`: {rpc.describe_pin(args.pin)}",
        "",
        "| wire | off calls/s | on calls/s | on/off (median of rounds) | cost | target | verdict "
        "| client CPU µs/call off → on | server CPU µs/call off → on |",
        "|---|--:|--:|--:|--:|--:|---|--:|--:|",
    ]
    for wire, r in results.items():
        lines.append(
            f"| {TITLES[wire]} | {r['off_calls_per_second']:,.0f} | {r['on_calls_per_second']:,.0f} "
            f"| {r['ratio_median']:.3f} | {100 * r['cost']:.1f} % | < {100 * TARGET:.0f} % | {r['verdict']} "
            f"| {cpu(r['off_client_cpu_us_per_call'])} → {cpu(r['on_client_cpu_us_per_call'])} "
            f"| {cpu(r['off_server_cpu_us_per_call'])} → {cpu(r['on_server_cpu_us_per_call'])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    rpc.add_timing_options(parser)
    parser.set_defaults(seconds=12.0, rounds=6, pin="split")
    parser.add_argument("--only", default=",".join(WIRES), help="wires, comma-separated (default: pb,tub)")
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="PATH",
        help="print JSON instead; with PATH, also write it there",
    )
    # Internal: the server and client processes.
    parser.add_argument("--serve", choices=WIRES, help=argparse.SUPPRESS)
    parser.add_argument("--client", choices=WIRES, help=argparse.SUPPRESS)
    parser.add_argument("--metrics", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--at", help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    rpc.check_timing_options(parser, args)
    if internal(args):
        return 0
    wires = [w.strip() for w in args.only.split(",") if w.strip()]
    if not wires or set(wires) - set(WIRES):
        parser.error("--only takes a comma-separated subset of pb,tub")
    env = rpc.machine_environment()
    rpc.preflight(env)
    results = measure(args, wires)
    data = {
        "env": env,
        "args": {"seconds": args.seconds, "rounds": args.rounds, "pin": args.pin},
        "results": results,
    }
    if args.json == "-":
        print(json.dumps(data, indent=2))
    else:
        print(report(results, env, args), end="")
    if args.json and args.json != "-":
        rpc.write_json(args.json, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
