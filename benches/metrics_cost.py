"""What `pbfast.metrics` costs: pipelined throughput with metrics on against off, in one run.

    python benches/metrics_cost.py [--seconds 12] [--rounds 6] [--only pb,tub] [--pin split|same|none]
                                   [--inprocess-calls 20000] [--inprocess-rounds 40] [--json [PATH]]

For each wire (PB, a Tub), round after round, a fresh server process and client process run
``echo(1)`` pipelined with 100 calls outstanding (``rpc.py``'s measurement), once with metrics off in
both processes and once with them on in both (``pbfast.metrics.enable()`` before anything else),
the order of the two alternating from round to round. Each round's calls/s with metrics on divided by
its calls/s off is that round's ratio; the report gives the median ratio, the median calls/s each
way and the CPU each process spent per call, and whether the cost (1 - ratio) is within the target
of 3 %.

Throughput on a machine busy with other work varies from run to run by more than 3 %, so the
report also gives a steadier figure: both ends in this process (PB's in-memory pair, a Tub calling
itself), ``--inprocess-calls`` calls pipelined per round (``--inprocess-rounds`` rounds) with
metrics off and on alternately, timed by the process's CPU time (other processes' work does not
count in it): the median CPU per call each way and the median of the rounds' ratios. Each call is
made and served here, so this is what metrics add to both ends of a call together.

The same file is also the servers and clients it starts (internal):

    python benches/metrics_cost.py --serve WIRE [--metrics]             # prints "PORT n" or "FURL f"
    python benches/metrics_cost.py --client WIRE --at ADDRESS [--metrics] ...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
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


async def pipelined(call: Any, calls: int, outstanding: int) -> None:
    """`calls` calls of `call()`, `outstanding` of them in flight, each answer starting the next."""
    done = asyncio.get_running_loop().create_future()
    left, in_flight = calls, 0

    def on_done(future: asyncio.Future[Any]) -> None:
        nonlocal left, in_flight
        future.result()
        in_flight -= 1
        if left:
            left -= 1
            in_flight += 1
            call().add_done_callback(on_done)
        elif not in_flight:
            done.set_result(None)

    for _ in range(min(outstanding, calls)):
        left -= 1
        in_flight += 1
        call().add_done_callback(on_done)
    await done


def inprocess(args: argparse.Namespace, wires: list[str]) -> dict[str, Any]:
    """Both ends in this process, metrics off and on alternately: CPU per call each way."""
    import pbfast
    import pbfast.metrics
    import pbfast.testing

    class Echo(pbfast.Root):
        def remote_echo(self, x: Any) -> Any:
            return x

    async def wire_rounds(wire: str) -> list[dict[str, float]]:
        async with contextlib.AsyncExitStack() as stack:
            if wire == "pb":
                root, _ = await pbfast.testing.connected_pair(Echo())
                stack.push_async_callback(root.broker.close)
            else:
                tub = await stack.enter_async_context(pbfast.Tub())
                tub.setLocation("tcp:127.0.0.1:1")  # never dialled: the Tub calls itself in memory
                root = await tub.getReference(tub.registerReference(Echo()))
            call = functools.partial(root.callRemote, "echo", 1)
            await pipelined(call, args.inprocess_calls // 10, args.outstanding)  # warm-up
            rounds = []
            for rnd in range(args.inprocess_rounds):
                figures: dict[str, float] = {}
                for on in (False, True) if rnd % 2 == 0 else (True, False):
                    pbfast.metrics.enable() if on else pbfast.metrics.disable()
                    start = time.process_time()
                    await pipelined(call, args.inprocess_calls, args.outstanding)
                    figures["on" if on else "off"] = (
                        1e6 * (time.process_time() - start) / args.inprocess_calls
                    )
                pbfast.metrics.disable()
                figures["ratio"] = figures["on"] / figures["off"]
                rounds.append(figures)
                print(
                    f"  in process, round {rnd + 1}/{args.inprocess_rounds} {TITLES[wire]:<4} CPU µs/call "
                    f"off {figures['off']:.2f}  on {figures['on']:.2f}  on/off {figures['ratio']:.3f}",
                    file=sys.stderr,
                )
            return rounds

    async def main() -> dict[str, Any]:
        results = {}
        for wire in wires:
            rounds = await wire_rounds(wire)
            ratio = statistics.median(r["ratio"] for r in rounds)
            results[wire] = {
                "rounds": rounds,
                "off_cpu_us_per_call": statistics.median(r["off"] for r in rounds),
                "on_cpu_us_per_call": statistics.median(r["on"] for r in rounds),
                "ratio_median": ratio,
                "cost": ratio - 1,
            }
        return results

    return pbfast.run(main())


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


def report(
    results: dict[str, Any], in_process: dict[str, Any], env: dict[str, Any], args: argparse.Namespace
) -> str:
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
    if in_process:
        lines += [
            "",
            f"Both ends in one process, {args.inprocess_calls:,} calls pipelined per round and setting, "
            f"{args.inprocess_rounds} rounds: the process's CPU per call (made and served)",
            "",
            "| wire | off CPU µs/call | on CPU µs/call | on/off (median of rounds) | cost |",
            "|---|--:|--:|--:|--:|",
        ]
    for wire, r in in_process.items():
        lines.append(
            f"| {TITLES[wire]} | {r['off_cpu_us_per_call']:.3f} | {r['on_cpu_us_per_call']:.3f} "
            f"| {r['ratio_median']:.3f} | {100 * r['cost']:.1f} % |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    rpc.add_timing_options(parser)
    parser.set_defaults(seconds=12.0, rounds=6, pin="split")
    parser.add_argument("--only", default=",".join(WIRES), help="wires, comma-separated (default: pb,tub)")
    parser.add_argument(
        "--inprocess-calls",
        type=int,
        default=20_000,
        help="calls per round and setting of the in-process measurement (default: 20000; 0: skip it)",
    )
    parser.add_argument(
        "--inprocess-rounds", type=int, default=40, help="rounds of the in-process measurement (default: 40)"
    )
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
    in_process = inprocess(args, wires) if args.inprocess_calls > 0 else {}
    settings = {"seconds": args.seconds, "rounds": args.rounds, "pin": args.pin}
    data = {
        "env": env,
        "args": {
            **settings,
            "inprocess_calls": args.inprocess_calls,
            "inprocess_rounds": args.inprocess_rounds,
        },
        "results": results,
        "in_process": in_process,
    }
    if args.json == "-":
        print(json.dumps(data, indent=2))
    else:
        print(report(results, in_process, env, args), end="")
    if args.json and args.json != "-":
        rpc.write_json(args.json, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
