"""What a stream to a slow consumer costs in memory, on both sides, both ways, on both wires.

    python benches/stream_memory.py [--total 1GiB] [--item 256KiB] [--delay 0.002]
                                    [--wires pb,tub] [--json [PATH]]

A server runs in its own process (this file, ``--serve WIRE``); this process connects to it and,
for each wire, streams `--total` bytes in items of `--item` bytes through a consumer that sleeps
`--delay` seconds after each item (so it is slower than the producer):

* down: ``async for chunk in root.callRemoteStream("produce", total, item)``: the server's async
  generator produces, this process consumes;
* up: ``root.callRemote("consume", pbfast.stream(chunks), delay)``: this process's async
  generator produces, the server consumes.

For each run it reports, for both processes, how much the resident set grew at its peak over
what it was when the run started (the peak is reset then through ``/proc/self/clear_refs``, and
read as ``VmHWM`` from ``/proc/self/status``), and the MB/s. The target (issue 18): neither side
grows by more than 64 MB while streaming 1 GiB. The streams use their default windows
(``pbfast.streams.DEFAULT_MAX_ITEMS``, ``DEFAULT_MAX_BYTES``). Linux only.

The server (internal):

    python benches/stream_memory.py --serve pb|tub     # prints "ADDRESS a", stops on stdin EOF
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pbfast

# `python benches/stream_memory.py` puts benches/ on sys.path already; importing this file from
# elsewhere (a test) needs it too.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rpc import exit_on_stdin_eof  # noqa: E402

TARGET_MB = 64.0
MB = 1_000_000
_SIZE = re.compile(r"^(\d+)\s*(|k|ki|m|mi|g|gi)b?$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1000, "ki": 1 << 10, "m": 10**6, "mi": 1 << 20, "g": 10**9, "gi": 1 << 30}


def size(text: str) -> int:
    """``1GiB``, ``256KiB``, ``4096``... as a number of bytes."""
    match = _SIZE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1GiB, 256KiB, 4096)")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


# ---------------------------------------------------------------------- memory


def memory() -> dict[str, int]:
    """This process's resident set now and at its peak (bytes)."""
    found = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0]) * 1024
    return found


def reset_peak() -> dict[str, int]:
    """Start measuring the peak afresh; the resident set now."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets VmHWM to the current VmRSS
    return memory()


def growth(start: dict[str, int]) -> float:
    """MB the resident set grew at its peak since `start`."""
    return (memory()["VmHWM"] - start["VmRSS"]) / MB


# ---------------------------------------------------------------------- both sides


async def chunks(total: int, item: int) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        n = min(item, total - sent)
        yield b"\0" * n  # a new object each time, as real data would be
        sent += n


class Root(pbfast.Referenceable):
    def remote_produce(self, total: int, item: int) -> AsyncIterator[bytes]:
        return chunks(total, item)

    async def remote_consume(self, stream: pbfast.RemoteStream, delay: float) -> int:
        received = 0
        async for chunk in stream:
            received += len(chunk)
            await asyncio.sleep(delay)
        return received

    def remote_reset_peak(self) -> None:
        reset_peak()
        self.start = memory()

    def remote_growth(self) -> float:
        return growth(self.start)


async def serve(wire: str) -> None:
    exit_on_stdin_eof()
    if wire == "pb":
        server = await pbfast.serve(Root(), "tcp:port=0:interface=127.0.0.1")
        address = f"tcp:host=127.0.0.1:port={server.port}"
        print("ADDRESS", address, flush=True)
        await asyncio.Event().wait()
    async with pbfast.Tub() as tub:
        listener = await tub.listenOn("tcp:0:interface=127.0.0.1")
        tub.setLocation(f"tcp:127.0.0.1:{listener.port}")
        print("ADDRESS", tub.registerReference(Root(), "root"), flush=True)
        await asyncio.Event().wait()


# ---------------------------------------------------------------------- the runs


async def measure(
    root: Any, wire: str, direction: str, total: int, item: int, delay: float
) -> dict[str, Any]:
    await root.callRemote("reset_peak")
    start = reset_peak()
    began = time.perf_counter()
    if direction == "down":
        received = 0
        async for chunk in root.callRemoteStream("produce", total, item):
            received += len(chunk)
            await asyncio.sleep(delay)
    else:
        received = await root.callRemote("consume", pbfast.stream(chunks(total, item)), delay)
    seconds = time.perf_counter() - began
    assert received == total, (received, total)
    client, server = growth(start), await root.callRemote("growth")
    return {
        "wire": wire,
        "direction": direction,
        "producer": "server" if direction == "down" else "client",
        "bytes": total,
        "seconds": round(seconds, 3),
        "mb_per_s": round(total / MB / seconds, 1),
        "client_growth_mb": round(client, 1),
        "server_growth_mb": round(server, 1),
        "pass": max(client, server) <= TARGET_MB,
    }


async def run_wire(wire: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve", wire],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
        if not line.startswith("ADDRESS "):
            raise RuntimeError(f"the {wire} server printed {line!r}")
        address = line.split(None, 1)[1].strip()
        results = []
        if wire == "pb":
            async with pbfast.connect(address) as root:
                for direction in ("down", "up"):
                    results.append(await measure(root, wire, direction, args.total, args.item, args.delay))
        else:
            async with pbfast.Tub() as tub:
                root = await tub.getReference(address)
                for direction in ("down", "up"):
                    results.append(await measure(root, wire, direction, args.total, args.item, args.delay))
        return results
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"Streaming {args.total / (1 << 20):.0f} MiB in items of {args.item / 1024:.0f} KiB to a consumer "
        f"sleeping {args.delay * 1000:g} ms per item (default windows: "
        f"{pbfast.streams.DEFAULT_MAX_ITEMS} items, {pbfast.streams.DEFAULT_MAX_BYTES >> 20} MiB)",
        "",
        "| wire | direction | producer | MB/s | client peak growth (MB) | server peak growth (MB) | "
        f"target ≤ {TARGET_MB:g} MB |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['wire']} | {r['direction']} | {r['producer']} | {r['mb_per_s']} | "
            f"{r['client_growth_mb']} | {r['server_growth_mb']} | {'PASS' if r['pass'] else 'MISS'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--total", type=size, default=1 << 30, help="bytes streamed each run (default 1GiB)")
    parser.add_argument("--item", type=size, default=256 << 10, help="bytes per item (default 256KiB)")
    parser.add_argument("--delay", type=float, default=0.002, help="seconds the consumer sleeps per item")
    parser.add_argument("--wires", default="pb,tub", help="comma-separated: pb, tub (default both)")
    parser.add_argument("--json", nargs="?", const="-", metavar="PATH", help="write JSON (to stdout: -)")
    parser.add_argument("--serve", choices=("pb", "tub"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        pbfast.run(serve(args.serve))
        return
    wires = [w.strip() for w in args.wires.split(",") if w.strip()]
    if not wires or set(wires) - {"pb", "tub"}:
        parser.error(f"--wires takes pb and/or tub, not {args.wires!r}")
    if pbfast.build_profile != "release":
        print(f"warning: pbfast is a {pbfast.build_profile} build: figures mean little", file=sys.stderr)

    async def everything() -> list[dict[str, Any]]:
        results = []
        for wire in wires:
            results += await run_wire(wire, args)
        return results

    results = pbfast.run(everything())
    data = {
        "benchmark": "stream_memory",
        "settings": {"total": args.total, "item": args.item, "delay": args.delay, "wires": wires},
        "windows": {
            "max_items": pbfast.streams.DEFAULT_MAX_ITEMS,
            "max_bytes": pbfast.streams.DEFAULT_MAX_BYTES,
        },
        "target_mb": TARGET_MB,
        "runs": results,
        "pass": all(r["pass"] for r in results),
    }
    if args.json == "-":
        print(json.dumps(data, indent=2))
    else:
        print(report(results, args))
        if args.json:
            with open(args.json, "w") as out:
                json.dump(data, out, indent=2)


if __name__ == "__main__":
    main()
