"""Serialization throughput: pbfast against stock Twisted jelly+banana, pickle and msgpack.

    python benches/serialization.py [--seconds 2] [--rounds 5] [--json results.json]

Prints a Markdown report: encode+decode round trips per second, encode-only and decode-only
operations per second, payload sizes, and the ratios pbfast/pickle and pbfast/Twisted, for one
list of 1000 small records. See benches/README.md for what each number means.

Only the standard library and the systems measured are used. msgpack is optional.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pbfast
import pbfast._core

MODES = ("roundtrip", "encode", "decode")
PBFAST, TWISTED, PICKLE, MSGPACK = "pbfast", "Twisted jelly+banana", "pickle (protocol 5)", "msgpack"
# (label in the table, key in the JSON, the system pbfast is compared with)
RATIOS = (("pbfast / pickle", "pbfast/pickle", PICKLE), ("pbfast / Twisted", "pbfast/twisted", TWISTED))
MODE_TITLES = {"roundtrip": "round trip", "encode": "encode", "decode": "decode"}


def make_data() -> list[dict[str, Any]]:
    # Exactly the structure named in the report (DATA_SOURCE), so keep the %-format.
    return [{"id": i, "name": "user%d" % i, "tags": ["a", "b", "c"], "score": i * 1.5} for i in range(1000)]  # noqa: UP031


DATA_SOURCE = (
    'data = [{"id": i, "name": "user%d" % i, "tags": ["a", "b", "c"], "score": i * 1.5} for i in range(1000)]'
)


# --------------------------------------------------------------------------------------------
# The systems


@dataclass
class System:
    name: str
    encode: Callable[[Any], bytes] | None
    decode: Callable[[bytes], Any] | None
    version: str = ""
    # Set when the system cannot run here (e.g. msgpack not installed).
    unavailable: str | None = None
    payload: bytes = b""
    # mode -> list of ops/s, one per round
    rates: dict[str, list[float]] = field(default_factory=dict)
    iterations: dict[str, int] = field(default_factory=dict)

    def roundtrip(self, obj: Any) -> Any:
        return self.decode(self.encode(obj))

    def median(self, mode: str) -> float | None:
        rates = self.rates.get(mode)
        return statistics.median(rates) if rates else None


def pbfast_system() -> System:
    return System(PBFAST, pbfast.dumps, pbfast.loads, version=pbfast.__version__)


class _CollectingTransport:
    """The minimum of a transport that Banana writes to: keeps every write."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def writeSequence(self, seq: list[bytes]) -> None:
        self.chunks.extend(seq)

    def take(self) -> bytes:
        data = b"".join(self.chunks)
        self.chunks.clear()
        return data


def twisted_system() -> System:
    """The path a PB Broker takes: jelly with globalSecurity, then a real Banana protocol in the
    "pb" dialect; on receipt dataReceived -> expressionReceived, then unjelly with globalSecurity."""
    try:
        import twisted
        from twisted.spread import banana, jelly
    except ImportError:
        return System(TWISTED, None, None, unavailable="not installed")

    sender_transport = _CollectingTransport()
    sender = banana.Banana(isClient=1)
    sender.makeConnection(sender_transport)  # sets Twisted's prefix limit
    sender.currentDialect = b"pb"  # what dialect negotiation settles on for PB

    received: list[Any] = []
    receiver = banana.Banana(isClient=1)
    receiver.makeConnection(_CollectingTransport())
    receiver.currentDialect = b"pb"
    receiver.expressionReceived = received.append

    taster = jelly.globalSecurity

    def encode(obj: Any) -> bytes:
        sender.sendEncoded(jelly.jelly(obj, taster=taster))
        return sender_transport.take()

    def decode(data: bytes) -> Any:
        receiver.dataReceived(data)
        if len(received) != 1:
            raise AssertionError(f"expected one expression, Banana delivered {len(received)}")
        return jelly.unjelly(received.pop(), taster=taster)

    return System(TWISTED, encode, decode, version=twisted.__version__)


def pickle_system() -> System:
    return System(
        PICKLE,
        lambda obj: pickle.dumps(obj, protocol=5),
        pickle.loads,
        version=f"Python {platform.python_version()}",
    )


def msgpack_system() -> System:
    try:
        import msgpack
    except ImportError:
        return System(MSGPACK, None, None, unavailable="not installed")
    return System(MSGPACK, msgpack.packb, msgpack.unpackb, version=".".join(map(str, msgpack.version)))


# --------------------------------------------------------------------------------------------
# Measurement


def run_for(fn: Callable[[], Any], budget: float) -> tuple[int, float]:
    """Call ``fn`` repeatedly for at least ``budget`` seconds, whole calls only (at least one).
    Returns (calls, elapsed seconds)."""
    clock = time.perf_counter
    n = 0
    start = clock()
    deadline = start + budget
    while True:
        fn()
        n += 1
        now = clock()
        if now >= deadline:
            return n, now - start


def operation(system: System, mode: str, data: Any) -> Callable[[], Any]:
    if mode == "roundtrip":
        encode, decode = system.encode, system.decode
        return lambda: decode(encode(data))
    if mode == "encode":
        encode = system.encode
        return lambda: encode(data)
    decode, payload = system.decode, system.payload
    return lambda: decode(payload)


def check(system: System, data: Any) -> None:
    """Every system must give the data back, equal, before it is timed."""
    payload = system.encode(data)
    if not isinstance(payload, bytes):
        raise AssertionError(f"{system.name}: encode returned {type(payload).__name__}, not bytes")
    back = system.decode(payload)
    if back != data:
        raise AssertionError(f"{system.name}: the decoded value differs from the original")
    if system.encode(data) != payload:
        raise AssertionError(f"{system.name}: encoding is not deterministic")
    system.payload = payload


def measure(
    systems: list[System],
    data: Any,
    seconds: float,
    rounds: int,
    warmup: float,
    modes: tuple[str, ...] = MODES,
) -> None:
    """For each mode, ``rounds`` rounds; in each round every system runs for seconds/rounds,
    the order rotating from round to round so that no system always goes first or last."""
    budget = seconds / rounds
    for system in systems:
        run_for(operation(system, "roundtrip", data), warmup)
    for mode in modes:
        for system in systems:
            system.rates[mode] = []
            system.iterations[mode] = 0
        for r in range(rounds):
            order = systems[r % len(systems) :] + systems[: r % len(systems)]
            for system in order:
                n, elapsed = run_for(operation(system, mode, data), budget)
                system.rates[mode].append(n / elapsed)
                system.iterations[mode] += n
            print(f"  {MODE_TITLES[mode]:<10} round {r + 1}/{rounds} done", file=sys.stderr)


# --------------------------------------------------------------------------------------------
# Report


def fmt_rate(rate: float | None) -> str:
    if rate is None:
        return "–"
    if rate >= 100:
        return f"{rate:,.0f}"
    if rate >= 10:
        return f"{rate:.1f}"
    return f"{rate:.2f}"


def fmt_ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "–"
    ratio = a / b
    if ratio >= 100:
        return f"{ratio:,.0f}×"
    return f"{ratio:.1f}×" if ratio >= 10 else f"{ratio:.2f}×"


def spread(system: System, mode: str) -> float:
    rates = system.rates.get(mode) or [0.0]
    med = statistics.median(rates)
    return (max(rates) - min(rates)) / med * 100 if med else 0.0


def environment() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = None
    return {
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "pbfast_version": pbfast.__version__,
        "pbfast_build_profile": pbfast._core.build_profile,
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
    }


def debug_warning() -> str:
    return (
        f"**WARNING: pbfast._core is a `{pbfast._core.build_profile}` build, not `release`. Its numbers "
        "are meaningless. Rebuild with `maturin develop --release` or `pip install .`.**"
    )


def report(systems: list[System], env: dict[str, Any], args: argparse.Namespace, gc_enabled: bool) -> str:
    lines = ["# Serialization benchmark", ""]
    if env["pbfast_build_profile"] != "release":
        lines += [debug_warning(), ""]
    cpus = f"{env['cpu_count']}" + (
        f" ({env['cpus_usable']} usable)" if env["cpus_usable"] not in (None, env["cpu_count"]) else ""
    )
    lines += [
        f"- Python {env['python']} ({env['python_implementation']})",
        f"- pbfast {env['pbfast_version']}, `pbfast._core.build_profile` = `{env['pbfast_build_profile']}`",
        f"- CPUs: {cpus}",
        f"- Platform: {env['platform']}",
        f"- Data: `{DATA_SOURCE}`",
        f"- Timing: {args.seconds:g} s per system per column in {args.rounds} alternating rounds, median "
        f"of the rounds; warm-up {args.warmup:g} s; garbage collector {'on' if gc_enabled else 'off'}",
        "",
        "| system | version | round trips/s | encodes/s | decodes/s | payload bytes | round-trip spread |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for s in systems:
        if s.unavailable:
            lines.append(f"| {s.name} | {s.unavailable} | – | – | – | – | – |")
            continue
        rates = " | ".join(fmt_rate(s.median(m)) for m in MODES)
        rt_spread = spread(s, "roundtrip") / 2
        lines.append(f"| {s.name} | {s.version} | {rates} | {len(s.payload):,} | ±{rt_spread:.0f}% |")
    by_name = {s.name: s for s in systems}
    pb = by_name[PBFAST]
    lines += ["", "| ratio (higher: pbfast faster) | round trip | encode | decode |", "|---|--:|--:|--:|"]
    for label, _, other in RATIOS:
        o = by_name.get(other)
        cells = [fmt_ratio(pb.median(m), o.median(m) if o and not o.unavailable else None) for m in MODES]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    tw = by_name.get(TWISTED)
    if tw and not tw.unavailable:
        same = "yes" if tw.payload == pb.payload else "NO"
        lines += ["", f"pbfast's bytes are identical to Twisted's: **{same}**."]
    return "\n".join(lines) + "\n"


def results_json(systems: list[System], env: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    by_name = {s.name: s for s in systems}
    pb = by_name[PBFAST]
    out: dict[str, Any] = {
        "benchmark": "serialization",
        "data": DATA_SOURCE,
        "environment": env,
        "settings": {
            "seconds": args.seconds,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "gc": not args.no_gc,
        },
        "systems": {},
        "ratios": {},
    }
    for s in systems:
        if s.unavailable:
            out["systems"][s.name] = {"unavailable": s.unavailable}
            continue
        out["systems"][s.name] = {
            "version": s.version,
            "payload_bytes": len(s.payload),
            **{
                mode: {
                    "ops_per_second_median": s.median(mode),
                    "ops_per_second_rounds": s.rates[mode],
                    "iterations": s.iterations[mode],
                }
                for mode in MODES
                if mode in s.rates  # every mode, unless measure() was given fewer
            },
        }
    for _, key, other in RATIOS:
        o = by_name.get(other)
        if o and not o.unavailable:
            out["ratios"][key] = {
                mode: pb.median(mode) / o.median(mode) for mode in MODES if mode in pb.rates
            }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="seconds per system per column (default: 2)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per column (default: 5)")
    parser.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds per system (default: 0.5)")
    parser.add_argument("--no-gc", action="store_true", help="disable the garbage collector while timing")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.rounds < 1 or args.warmup < 0:
        parser.error("--seconds must be > 0, --rounds >= 1, --warmup >= 0")

    env = environment()
    if env["pbfast_build_profile"] != "release":
        banner = "!" * 78
        print(f"{banner}\n{debug_warning()}\n{banner}", file=sys.stderr)

    data = make_data()
    systems = [pbfast_system(), twisted_system(), pickle_system(), msgpack_system()]
    runnable = [s for s in systems if not s.unavailable]
    for s in runnable:
        check(s, data)
    print(f"all {len(runnable)} systems round-trip the data; timing...", file=sys.stderr)

    gc_enabled = not args.no_gc
    if not gc_enabled:
        gc.disable()
    try:
        measure(runnable, data, args.seconds, args.rounds, args.warmup)
    finally:
        gc.enable()

    print(report(systems, env, args, gc_enabled), end="")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results_json(systems, env, args), f, indent=2)
            f.write("\n")
        print(f"results written to {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
