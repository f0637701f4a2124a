"""How long a cancellation and a deadline take to reach the remote method, between two pbfast
peers on both wires (PB over TCP, a Tub over TLS).

    python benches/cancel_latency.py [--trials 100] [--wires pb,tub] [--deadline 0.02] [--json PATH]

For each wire a server runs in its own process on 127.0.0.1; this process is the client. Each
trial starts a call whose remote method waits (for a minute), makes sure it runs there (a
second call is answered after it), then

* *cancel*: cancels the task awaiting the call, or
* *deadline*: has made the call inside ``pbfast.deadline(D)`` and lets D pass,

and the server notes (``time.monotonic``, the same clock in both processes on Linux) when the
method sees ``CancelledError``. The latency is that moment minus the cancel (or the deadline).
The round trip is the median of ``ping()`` calls between the trials. Prints, per wire: the round
trip, the median and maximum latency of each kind, and whether the maximum is within one round
trip + 10 ms (the target of issue 18).

The same file is also the servers it starts (internal):

    python benches/cancel_latency.py --serve pb|tub     # prints "ADDRESS a", stops on stdin EOF
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

HOST = "127.0.0.1"
TARGET_SLACK = 0.010  # seconds over one round trip


# ------------------------------------------------------------------ the server


def serve(wire: str) -> None:
    import pbfast

    class Waiter(pbfast.Root):
        def __init__(self) -> None:
            self.observed: dict[int, float] = {}
            self.seen: dict[int, asyncio.Event] = {}

        def _event(self, trial: int) -> asyncio.Event:
            return self.seen.setdefault(trial, asyncio.Event())

        async def remote_wait(self, trial: int) -> None:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                self.observed[trial] = time.monotonic()
                self._event(trial).set()
                raise

        def remote_ping(self) -> None:
            return None

        async def remote_observed(self, trial: int) -> float:
            """When the call of `trial` saw its cancellation (waits for it, 10 s at most)."""
            await asyncio.wait_for(self._event(trial).wait(), 10)
            self.seen.pop(trial)
            return self.observed.pop(trial)

    async def main() -> None:
        root = Waiter()
        if wire == "pb":
            server = await pbfast.serve(root, f"tcp:port=0:interface={HOST}")
            print(f"ADDRESS tcp:host={HOST}:port={server.port}", flush=True)
            await asyncio.Event().wait()
        async with pbfast.Tub() as tub:
            listener = await tub.listenOn(f"tcp:0:interface={HOST}")
            tub.setLocation(f"tcp:{HOST}:{listener.port}")
            print(f"ADDRESS {tub.registerReference(root)}", flush=True)
            await asyncio.Event().wait()

    def stop_on_eof() -> None:
        while sys.stdin.buffer.read(4096):
            pass
        os._exit(0)

    threading.Thread(target=stop_on_eof, daemon=True).start()
    pbfast.run(main())


# ------------------------------------------------------------------ the client


async def measure(wire: str, address: str, trials: int, deadline: float) -> dict[str, Any]:
    import pbfast

    if wire == "pb":
        root = await pbfast.connect(address)
        close = root.broker.close
    else:
        tub = pbfast.Tub()
        await tub.__aenter__()
        root = await tub.getReference(address)

        async def close() -> None:
            await tub.__aexit__(None, None, None)

    assert "cancel" in root.broker.peer_extensions and "options" in root.broker.peer_extensions
    try:
        for _ in range(50):  # warm up
            await root.callRemote("ping")
        round_trips: list[float] = []
        cancelled: list[float] = []
        expired: list[float] = []
        for trial in range(2 * trials):
            start = time.monotonic()
            await root.callRemote("ping")
            round_trips.append(time.monotonic() - start)
            if trial % 2 == 0:
                task = asyncio.ensure_future(root.callRemote("wait", trial))
                await root.callRemote("ping")  # calls run in order: `wait` runs there now
                at = time.monotonic()
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                cancelled.append(await root.callRemote("observed", trial) - at)
            else:
                try:
                    async with pbfast.deadline(deadline):
                        at = time.monotonic() + deadline
                        await root.callRemote("wait", trial)
                except TimeoutError:
                    pass
                expired.append(await root.callRemote("observed", trial) - at)
        assert root.broker.statistics()["pending"] == 0
    finally:
        await close()
    rtt = statistics.median(round_trips)
    report: dict[str, Any] = {"round_trip_median_ms": rtt * 1e3, "trials": trials}
    for kind, samples in (("cancel", cancelled), ("deadline", expired)):
        report[kind] = {
            "median_ms": statistics.median(samples) * 1e3,
            "max_ms": max(samples) * 1e3,
            "within_target": max(samples) <= rtt + TARGET_SLACK,
        }
    return report


def run_wire(wire: str, args: argparse.Namespace) -> dict[str, Any]:
    import pbfast

    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve", wire],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("ADDRESS "):
            raise RuntimeError(f"the {wire} server did not start (it printed {line!r})")
        result: dict[str, Any] = pbfast.run(measure(wire, line.split()[1], args.trials, args.deadline))
        return result
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100, help="trials of each kind per wire (default: 100)")
    parser.add_argument(
        "--wires", default="pb,tub", help="wires to measure, comma-separated (default: pb,tub)"
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=0.02,
        help="seconds of each deadline trial's deadline (default: 0.02)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    parser.add_argument("--serve", choices=("pb", "tub"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    import pbfast

    results = {wire: run_wire(wire, args) for wire in args.wires.split(",")}
    print(f"# cancellation and deadline latency ({args.trials} trials of each kind per wire)\n")
    print(f"pbfast {pbfast.__version__} ({pbfast.build_profile}), Python {sys.version.split()[0]}\n")
    print("| wire | round trip ms | cancel median ms | cancel max ms | deadline median ms | deadline max ms "
          "| max within round trip + 10 ms |")  # fmt: skip
    print("|---|--:|--:|--:|--:|--:|---|")
    for wire, r in results.items():
        within = "yes" if r["cancel"]["within_target"] and r["deadline"]["within_target"] else "NO"
        cancel, expired = r["cancel"], r["deadline"]
        print(
            f"| {wire} | {r['round_trip_median_ms']:.3f} | {cancel['median_ms']:.3f} "
            f"| {cancel['max_ms']:.3f} | {expired['median_ms']:.3f} | {expired['max_ms']:.3f} | {within} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
