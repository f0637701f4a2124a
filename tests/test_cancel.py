"""Cancellation and deadlines across the wire between two pbfast peers (the ``cancel`` and
``options`` extensions, docs/extensions.md), on every wire and transport of `wires.VARIANTS`.
With stock peers a cancelled call is only abandoned locally (tests/interop/)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

import pbfast
import pytest
from pbfast._calls import DEADLINE_PASSED, CallFuture
from wires import VARIANTS, connector

pytestmark = pytest.mark.event_loop


@pytest.fixture(params=VARIANTS)
def wire(request: pytest.FixtureRequest) -> Any:
    with connector(request.param) as connect:
        yield connect


class Sleeper(pbfast.Referenceable):
    """Remote methods that wait, noting how each call ended."""

    def __init__(self) -> None:
        self.started: list[Any] = []
        self.ended: list[tuple[Any, str]] = []
        self.marked = asyncio.Event()

    async def remote_sleep(self, tag: Any, seconds: float) -> str:
        self.started.append(tag)
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self.ended.append((tag, "cancelled"))
            raise
        self.ended.append((tag, "slept"))
        return "slept"

    def remote_left(self) -> float | None:
        return pbfast.current_deadline()

    def remote_mark(self) -> None:
        self.marked.set()

    async def remote_relay(self, other: pbfast.RemoteReference, tag: Any) -> Any:
        """Sleep on `other` (an object of the caller's) for the caller."""
        self.started.append(tag)
        return await other.callRemote("sleep", tag, 30)

    async def remote_expire(self, after: float) -> None:
        """Answer as a call whose deadline passed would be answered, `after` seconds from now."""
        await asyncio.sleep(after)
        raise TimeoutError(DEADLINE_PASSED)

    async def remote_left_later(self) -> float | None:
        await asyncio.sleep(0)
        return pbfast.current_deadline()

    async def remote_forward(self, ref: pbfast.RemoteReference) -> list[float | None]:
        """What is left of the deadline here, and what the caller's `ref` sees of it when
        called from here."""
        here = pbfast.current_deadline()
        return [here, await ref.callRemote("left")]


class Probe(pbfast.Referenceable):
    def remote_left(self) -> float | None:
        return pbfast.current_deadline()


def assert_nothing_left(w: Any) -> None:
    """Both ends hold no call: none pending, running, held, or waiting for its deadline."""
    for end in (w.client, w.server):
        stats = end.statistics()
        assert stats["pending"] == stats["in_flight"] == stats["backlog"] == 0, stats
        assert end._tasks == {} and end._deadlines == {} and end._cancelled == []


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `predicate` until it holds, or fail after `timeout` s (no garbage collection between
    polls: nothing here waits for it)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.002)


async def started(root: Sleeper, tag: Any) -> None:
    await eventually(lambda: tag in root.started)


def test_cancelling_a_call_cancels_the_remote_method(run, wire) -> None:
    """Cancelling the awaiting task, an asyncio.timeout around the call, or the future itself
    cancels the remote method's task (it sees CancelledError); calls held back by the peer
    (max_in_flight) are taken out of its backlog unrun. Nothing is left on either side, and the
    connection goes on."""

    async def main() -> None:
        root = Sleeper()
        async with wire(root, max_in_flight=1) as w:
            assert isinstance(w.root.callRemote("left"), CallFuture)

            task = asyncio.ensure_future(w.root.callRemote("sleep", "task", 30))
            await started(root, "task")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await eventually(lambda: ("task", "cancelled") in root.ended)

            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await w.root.callRemote("sleep", "timeout", 30)
            await eventually(lambda: ("timeout", "cancelled") in root.ended)

            future = w.root.callRemote("sleep", "future", 30)
            await started(root, "future")
            assert future.cancel()
            await eventually(lambda: ("future", "cancelled") in root.ended)

            # One runs, two wait in the server's backlog (max_in_flight=1); a timeout over the
            # three cancels the one and takes the others out unrun.
            calls = [w.root.callRemote("sleep", n, 30) for n in range(3)]
            await started(root, 0)
            await eventually(lambda: w.server_stats()["backlog"] == 2)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await asyncio.gather(*calls)
            await eventually(lambda: w.server_stats()["backlog"] == 0 and (0, "cancelled") in root.ended)

            # Cancelling goes down a chain of calls: the server's method awaits a call back to
            # an object of the client's, which is cancelled in turn.
            back = Sleeper()
            relayed = w.root.callRemote("relay", back, "relayed")
            await started(back, "relayed")
            relayed.cancel()
            await eventually(lambda: ("relayed", "cancelled") in back.ended)

            # Made and cancelled in one turn: the call and its cancel reach the server in one
            # chunk, and the session runs the cancel before it hands the call over. The method
            # never runs, and its coroutine is closed rather than collected unawaited (a
            # warning, an error here).
            unstarted = w.root.callRemote("sleep", "unstarted", 30)
            assert unstarted.cancel()
            w.client._send_cancels()  # (now rather than next turn: one write takes both)
            assert await w.root.callRemote("sleep", "next", 0) == "slept"
            assert "unstarted" not in root.started

            # A call that has answered cannot be cancelled any more: nothing is sent.
            done = w.root.callRemote("sleep", "done", 0)
            assert await done == "slept"
            assert not done.cancel()

            await eventually(lambda: w.client_stats()["pending"] == 0)
            assert_nothing_left(w)
            assert 1 not in root.started and 2 not in root.started
            assert await w.root.callRemote("sleep", "after", 0) == "slept"

    run(main())


def test_calls_cut_off_before_they_start(run, wire) -> None:
    """The connection is cut off between a coroutine method's call arriving and its task's
    first step (a shutdown without grace, woken by a call read in the same chunk): the method
    never runs, and its coroutine is closed rather than collected unawaited (a warning, an
    error here)."""

    async def main() -> None:
        root = Sleeper()
        async with wire(root) as w:
            # One write takes both; the server runs `mark` as it reads it, which wakes us
            # before the task of `sleep` takes its first step.
            marked = w.root.callRemote("mark")
            late = w.root.callRemote("sleep", "late", 30)
            await root.marked.wait()
            assert len(w.server._tasks) == 1
            w.server.cut_off("a test cuts it off")
            assert await marked is None  # (answered as it ran, before the cut)
            with pytest.raises((pbfast.PBConnectionLost, pbfast.DeadReferenceError)):
                await late
            assert root.started == []

    run(main())


def test_deadlines_travel_with_calls(run, wire) -> None:
    """A deadline set with pbfast.deadline reaches the remote method (sync or async), which
    passes what is left of it on to the calls it makes; it cancels the remote method when it
    passes, even when the caller no longer waits; calls without one carry none, and nothing of
    a deadline leaks into the calls of the peer."""

    async def main() -> None:
        root = Sleeper()
        async with wire(root) as w:
            assert await w.root.callRemote("left") is None
            async with pbfast.deadline(5):
                left = await w.root.callRemote("left")
                assert 4 < left <= 5
                assert 4 < await w.root.callRemote("left_later") <= 5
                here, there = await w.root.callRemote("forward", Probe())
                assert 0 < there <= here <= left
                async with pbfast.deadline(1):
                    assert 0 < await w.root.callRemote("left") <= 1
                    async with pbfast.deadline(None):
                        assert 0 < await w.root.callRemote("left") <= 1
                async with pbfast.deadline(60):
                    assert 4 < await w.root.callRemote("left") <= 5
                # A plain call (below callRemote) carries none, and none leaks into the peer.
                assert await w.client.call(w.root.luid, "left", (), {}) is None
            assert await w.root.callRemote("left") is None

            # The local timeout and the remote cancellation.
            with pytest.raises(TimeoutError):
                async with pbfast.deadline(0.05):
                    await w.root.callRemote("sleep", "local", 30)
            await eventually(lambda: ("local", "cancelled") in root.ended)

            # The remote side enforces the deadline itself: the call made in the block goes on
            # after it, and is answered with a TimeoutError when its deadline passes.
            async with pbfast.deadline(0.1):
                late = w.root.callRemote("sleep", "remote", 30)
            with pytest.raises(pbfast.RemoteError) as failed:
                await asyncio.wait_for(late, 10)
            assert failed.value.remoteType == "builtins.TimeoutError"
            assert ("remote", "cancelled") in root.ended

            # The peer's word that the deadline passed, when it comes just before the local
            # timeout fires (the two timers tick apart), is a TimeoutError too; long before, it
            # is what it is.
            with pytest.raises(TimeoutError):
                async with pbfast.deadline(0.2):
                    await w.root.callRemote("expire", 0.18)
            with pytest.raises(pbfast.RemoteError):
                async with pbfast.deadline(30):
                    await w.root.callRemote("expire", 0)

            assert_nothing_left(w)

    run(main())


def test_deadline_arguments_and_refused_options(run, wire) -> None:
    """pbfast.deadline checks its argument; a peer's ``call`` with options we refuse fails with
    an error naming what is wrong, and options we do not know are ignored."""

    async def main() -> None:
        with pytest.raises(TypeError):
            pbfast.deadline("soon")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            pbfast.deadline(True)
        with pytest.raises(ValueError):
            pbfast.deadline(math.nan)
        assert pbfast.current_deadline() is None
        async with pbfast.deadline(-1):
            assert pbfast.current_deadline() == 0.0
            with pytest.raises(asyncio.CancelledError):
                await asyncio.sleep(1)

        root = Sleeper()
        async with wire(root) as w:
            luid = w.root.luid
            assert await w.client.call_control("call", luid, "left", [], {}, {"unknown": 1}) is None
            left = await w.client.call_control("call", luid, "left", [], {}, {"deadline": 3})
            assert 2 < left <= 3
            for options, message in (
                ({"deadline": "soon"}, "the call option 'deadline' must be a number"),
                ({"deadline": -1}, "the call option 'deadline' must be a number"),
                ({"deadline": math.inf}, "the call option 'deadline' must be a number"),
                ([], "the options must be a dict"),
            ):
                with pytest.raises(pbfast.RemoteError, match=message):
                    await w.client.call_control("call", luid, "left", [], {}, options)
            with pytest.raises(pbfast.RemoteError, match="is not an object id"):
                await w.client.call_control("call", 1.5, "left", [], {}, {})
            with pytest.raises(pbfast.RemoteError, match="the method name must be a string"):
                await w.client.call_control("call", luid, 7, [], {}, {})
            with pytest.raises(pbfast.RemoteError, match="cancel takes a list of request ids"):
                await w.client.call_control("cancel", "all")
            assert_nothing_left(w)

    run(main())
