"""``pbfast demo``: a server and a client on loopback in this one process, showing remote calls,
references both ways, a copy, a kept-up-to-date cache, a remote error, the same over a Tub, and
a short load run."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any, TextIO

from ..cacheable import Cacheable, RemoteCache
from ..copyable import Copyable, RemoteCopy, setUnjellyableForClass
from ..errors import Error, RemoteError
from ..pb import connect, serve
from ..pb import run as run_loop
from ..referenceable import Referenceable, Root
from ..tub import Tub
from .loadgen import LoadPlan, run_load
from .report import report

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "demo",
        help="a server and a client in this process: calls, references, copies, caches, errors, load",
        description="Start a PB server and a client on 127.0.0.1 in this process and show a remote "
        "call, a reference returned and passed back, a Copyable, a Cacheable kept up to date, a "
        "remote error, the same object called by FURL through a Tub (TLS), and a short load run.",
    )
    parser.add_argument(
        "--seconds", type=float, default=3.0, metavar="S", help="length of the load run (default 3)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not args.seconds > 0:
        raise ValueError("--seconds must be more than 0")
    return run_loop(_demo(args.seconds, sys.stdout))


# ---------------------------------------------------------------------------------- the objects


class Counter(Referenceable):
    """Travels by reference: the client gets a RemoteReference to this very object."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0

    def remote_increment(self) -> int:
        self.count += 1
        return self.count


class Pond(Copyable):
    """Travels by copy: its state (its __dict__) is sent, and a LocalPond built from it."""

    def __init__(self, color: str, frogs: int) -> None:
        self.color = color
        self.frogs = frogs


class LocalPond(RemoteCopy):
    color: str
    frogs: int

    def __repr__(self) -> str:
        return f"LocalPond(color={self.color!r}, frogs={self.frogs})"


class Scoreboard(Cacheable):
    """Travels as a cache: the holder's copy is told of every change."""

    def __init__(self) -> None:
        self.scores = {"home": 0, "away": 0}
        self.observers: list[Any] = []

    def getStateToCacheAndObserveFor(self, perspective: Any, observer: Any) -> dict[str, int]:
        self.observers.append(observer)
        return dict(self.scores)

    def stoppedObserving(self, perspective: Any, observer: Any) -> None:
        self.observers.remove(observer)

    def goal(self, team: str) -> None:
        self.scores[team] += 1
        for observer in self.observers:
            observer.callRemote("goal", team)


class LocalScoreboard(RemoteCache):
    def setCopyableState(self, state: dict[str, int]) -> None:
        self.scores = state

    def observe_goal(self, team: str) -> None:
        self.scores[team] += 1


class DemoRoot(Root):
    def __init__(self) -> None:
        self.scoreboard = Scoreboard()

    def remote_echo(self, value: Any) -> Any:
        return value

    async def remote_slow_echo(self, value: Any) -> Any:
        await asyncio.sleep(0.01)
        return value

    def remote_counter(self, name: str) -> Counter:
        return Counter(name)

    def remote_inspect(self, counter: Any) -> str:
        # A reference sent back to its owner arrives as the original object.
        if not isinstance(counter, Counter):
            raise Error(f"that is a {type(counter).__name__}, not one of my counters")
        return f"my own Counter {counter.name!r}, at {counter.count}"

    def remote_pond(self) -> Pond:
        return Pond("green", 7)

    def remote_scoreboard(self) -> Scoreboard:
        return self.scoreboard

    def remote_goal(self, team: str) -> None:
        # The observers hear of it before this call's answer goes, on the same connection.
        self.scoreboard.goal(team)

    def remote_withdraw(self, amount: int) -> int:
        # A pbfast.Error is an expected failure: the caller gets it, the server logs nothing.
        raise Error(f"cannot withdraw {amount}: the balance is 0")


# ---------------------------------------------------------------------------------- the show


async def _demo(seconds: float, out: TextIO) -> int:
    # Registered here, not on import: other subcommands serve other objects, and should not
    # accept these copies.
    setUnjellyableForClass(Pond, LocalPond)
    setUnjellyableForClass(Scoreboard, LocalScoreboard)

    def show(label: str, text: str) -> None:
        print(f"  {label:<12}{text}", file=out)

    root_object = DemoRoot()
    async with await serve(root_object, "tcp:port=0:interface=127.0.0.1") as server:
        endpoint = f"tcp:host=127.0.0.1:port={server.port}"
        print(f"pbfast demo: a server on Twisted PB's wire at {endpoint}, and a client", file=out)
        async with connect(endpoint) as root:
            show("call", f"echo([1, 'two', 3.0]) -> {await root.callRemote('echo', [1, 'two', 3.0])!r}")
            show("async", f"slow_echo('awaited') -> {await root.callRemote('slow_echo', 'awaited')!r}")

            counter = await root.callRemote("counter", "clicks")
            counts = [await counter.callRemote("increment") for _ in range(3)]
            show("reference", f"counter('clicks') -> a {type(counter).__name__}; increment() x3 -> {counts}")
            show("passed back", f"inspect(counter) -> {await root.callRemote('inspect', counter)!r}")

            show("copy", f"pond() -> {await root.callRemote('pond')!r}")

            board = await root.callRemote("scoreboard")
            before = dict(board.scores)
            await root.callRemote("goal", "home")
            show(
                "cache",
                f"scoreboard() -> {type(board).__name__} {before}; after goal('home'): {board.scores}",
            )

            try:
                await root.callRemote("withdraw", 10)
            except RemoteError as e:
                show("error", f"withdraw(10) raised {e.remoteType}: {e.remoteValue}")
            del counter, board

            print(file=out)
            await _tub_demo(root_object, show, out)

            print(file=out)
            print(
                f"pbfast demo: {seconds:g} s of load on the same connection (pbfast bench's engine)", file=out
            )
            plan = LoadPlan(method="echo", args=(1,), concurrency=64, duration=seconds, warmup=0.5)
            result = await run_load([root], plan)
        print(file=out)
        report(result, endpoint, [], out)
        print(file=out)
        print("Client and server shared one process (and so one CPU) here; `pbfast serve` and", file=out)
        print("`pbfast bench` in two processes measure them apart.", file=out)
    return 0


async def _tub_demo(obj: Root, show: Any, out: TextIO) -> None:
    async with Tub() as server_tub, Tub() as client_tub:
        listener = await server_tub.listenOn("tcp:port=0:interface=127.0.0.1")
        server_tub.setLocation(f"tcp:127.0.0.1:{listener.port}")
        furl = server_tub.registerReference(obj)
        print("pbfast demo: the same object in a Tub (foolscap's wire, over TLS), called by FURL", file=out)
        show("FURL", furl)
        ref = await client_tub.getReference(furl)
        show("call", f"echo('over TLS') -> {await ref.callRemote('echo', 'over TLS')!r}")
        show("copy", f"pond() -> {await ref.callRemote('pond')!r}")
        show("TubIDs", f"client {client_tub.tubID[:8]}... checked server {ref.getRemoteTubID()[:8]}...")
