"""``pbfast demo``: a server and a client on loopback in one process, showing what pbfast does."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import decimal
import sys
import time

from .. import _core, banana
from ..errors import Error, RemoteError
from ..pb import connect, run, serve
from ..referenceable import Referenceable, Root
from ..serialization import dumps, jelly, loads

__all__ = ["add_parser"]


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
    print(
        f"  speed        {rate:,.0f} round trips/s of a 1000-record list ({_core.build_profile} build)",
        file=out,
    )
    print(file=out)
    return run(_rpc_demo(args))


class _Counter(Referenceable):
    def __init__(self) -> None:
        self.n = 0

    def remote_inc(self) -> int:
        self.n += 1
        return self.n


class _DemoRoot(Root):
    def remote_echo(self, x: object) -> object:
        return x

    async def remote_slow_echo(self, x: object) -> object:
        await asyncio.sleep(0.01)
        return x

    def remote_counter(self) -> _Counter:
        return _Counter()

    def remote_withdraw(self, amount: int) -> int:
        # A pbfast.Error is an expected failure: the caller gets it, the server logs nothing.
        raise Error(f"cannot withdraw {amount}: the balance is 0")


async def _rpc_demo(args: argparse.Namespace) -> int:
    """A PB server and a client over TCP on 127.0.0.1, in this process."""
    out = args.out
    async with await serve(_DemoRoot(), "tcp:port=0:interface=127.0.0.1") as server:
        print(f"pbfast demo: a PB server on 127.0.0.1:{server.port}, and a client calling it", file=out)
        async with connect(f"tcp:host=127.0.0.1:port={server.port}") as root:
            print(f"  echo         {await root.callRemote('echo', [1, 'two', 3.0])!r}", file=out)
            print(f"  async method {await root.callRemote('slow_echo', 'awaited')!r}", file=out)
            counter = await root.callRemote("counter")
            counts = [await counter.callRemote("inc") for _ in range(3)]
            print(f"  reference    {counter!r} counted {counts}", file=out)
            try:
                await root.callRemote("withdraw", 10)
            except RemoteError as e:
                print(f"  remote error {e.remoteType}: {e.remoteValue}", file=out)
            del counter
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < args.seconds:
                await asyncio.gather(*[root.callRemote("echo", i) for i in range(100)])
                n += 100
            rate = n / (time.perf_counter() - start)
            print(
                f"  speed        {rate:,.0f} echo calls/s, 100 in flight, client and server in one process",
                file=out,
            )
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="show pbfast's serialization and remote calls, and their speed")
    demo.add_argument("--seconds", type=float, default=1.0, help="length of the speed run (default 1)")
    demo.set_defaults(run=_demo, out=sys.stdout)
