"""The ``pbfast`` command line (also ``python -m pbfast``)."""

from __future__ import annotations

import argparse
import datetime
import decimal
import sys
import time

from . import _core, banana
from .serialization import dumps, jelly, loads

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    """Show what pbfast puts on the wire, and how fast it gets there."""
    out = args.out
    value = {
        "id": 7,
        "name": "Ada",
        "tags": ("a", "b"),
        "joined": datetime.date(2024, 5, 17),
        "balance": decimal.Decimal("12.50"),
        "flags": {1, 2, 3},
        "note": None,
    }
    shared = [1, 2]
    value["twice"] = [shared, shared]

    wire = dumps(value)
    print("pbfast demo: jelly + banana, byte-identical to stock Twisted PB", file=out)
    print(f"  value        {value!r}", file=out)
    print(f"  s-expression {jelly({'twice': value['twice']})!r}  (shared list sent once)", file=out)
    print(f"  wire         {len(wire)} bytes: {wire[:32].hex(' ')} ...", file=out)
    back = loads(wire)
    assert back == value and back["twice"][0] is back["twice"][1]
    print("  decoded      equal, and the shared list is one object again", file=out)

    decoder = banana.Decoder(jelly=True)
    got = [v for byte in (wire[i : i + 1] for i in range(len(wire))) for v in decoder.feed(byte)]
    print(f"  streaming    fed one byte at a time: {len(got)} value, equal: {got == [value]}", file=out)

    data = [{"id": i, "name": f"user{i}", "tags": ["a", "b", "c"], "score": i * 1.5} for i in range(1000)]
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        loads(dumps(data))
        n += 1
    rate = n / (time.perf_counter() - start)
    print(f"  speed        {rate:,.0f} round trips/s of a 1000-record list ({_core.build_profile} build)", file=out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pbfast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="show pbfast's serialization and its speed")
    demo.add_argument("--seconds", type=float, default=1.0, help="length of the speed run (default 1)")
    demo.set_defaults(func=_demo, out=sys.stdout)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
