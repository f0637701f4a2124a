"""PB connections end to end: calls, errors, references and connection lifecycle.

Most tests run over three transports (conftest's ``transport`` fixture, built on
``connections.py``): the in-memory pair of ``pbfast.testing``, real TCP on 127.0.0.1, and a unix
socket in a short temporary directory. Every test that runs a loop uses conftest's ``run``
fixture, so it honours ``--loop``.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import gc
import logging
import shutil
import socket
import tempfile
from typing import Any

import pbfast
import pbfast.testing
import pytest
from connections import _endpoints, eventually, pbfast_records, settle
from helpers import assert_deep_equal

# --------------------------------------------------------------------------------------------
# Helper objects
# --------------------------------------------------------------------------------------------


class Counter(pbfast.Referenceable):
    def __init__(self, start: int = 0) -> None:
        self.value = start

    def remote_inc(self, by: int = 1) -> int:
        self.value += by
        return self.value

    def remote_value(self) -> int:
        return self.value


class Listener(pbfast.Referenceable):
    """A client-side object the server calls back."""

    def __init__(self) -> None:
        self.heard: list[Any] = []

    def remote_notify(self, x: Any) -> str:
        self.heard.append(x)
        return f"heard {x!r}"


class Expected(pbfast.Error):
    """An expected error: sent to the caller, not logged."""


class Echo(pbfast.Root):
    def __init__(self) -> None:
        self.log: list[Any] = []
        self.child = Counter()
        self.gate = asyncio.Event()  # created lazily per loop: see `_gate`
        self.started = 0

    # ---- calls

    def remote_echo(self, x: Any) -> Any:
        return x

    def remote_args(self, *args: Any, **kwargs: Any) -> list:
        return [list(args), kwargs]

    def remote_describe(self, a: int, b: int = 2, *, c: int = 3) -> tuple:
        return (a, b, c)

    async def remote_slow(self, x: Any, delay: float = 0.05) -> Any:
        await asyncio.sleep(delay)
        return x

    async def remote_async_echo(self, x: Any) -> Any:
        await asyncio.sleep(0)
        return x

    def remote_record(self, x: Any) -> None:
        self.log.append(x)

    def remote_record_and_fail(self, x: Any) -> None:
        self.log.append(x)
        raise ValueError("fire-and-forget failure")

    async def remote_wait(self) -> str:
        """Blocks until the test opens the gate."""
        self.started += 1
        await self.gate.wait()
        return "opened"

    # ---- errors

    def remote_fail(self) -> None:
        raise ValueError("boom")

    async def remote_async_fail(self) -> None:
        await asyncio.sleep(0)
        raise ValueError("boom")

    def remote_expected(self) -> None:
        raise Expected("on purpose")

    def remote_function(self) -> Any:
        return lambda: 1

    async def remote_async_function(self) -> Any:
        return remote_module_level_function

    def remote_nested_function(self) -> Any:
        return {"ok": [1, 2, remote_module_level_function]}

    # ---- references

    def remote_child(self) -> Counter:
        return self.child

    def remote_child_twice(self) -> list:
        return [self.child, self.child]

    def remote_is_child(self, x: Any) -> bool:
        return x is self.child

    def remote_make(self, n: int) -> list:
        return [Counter(i) for i in range(n)]

    def remote_identity(self, x: Any) -> Any:
        return x

    async def remote_async_identity(self, x: Any) -> Any:
        await asyncio.sleep(0.01)
        return x

    async def remote_wait_then_make(self, n: int) -> list:
        self.started += 1
        await self.gate.wait()
        return [Counter(i) for i in range(n)]

    def remote_refused_after(self) -> list:
        """A class (refused by the receiver's jelly policy) before a Referenceable."""
        return [int, Counter()]

    def remote_refused_before(self) -> list:
        return [Counter(), int]

    async def remote_inner_cancelled(self) -> None:
        """Awaits something that gets cancelled: CancelledError escapes the method."""
        inner = asyncio.ensure_future(asyncio.sleep(10))
        asyncio.get_running_loop().call_soon(inner.cancel)
        await inner

    async def remote_call_back(self, listener: pbfast.RemoteReference, x: Any) -> Any:
        return await listener.callRemote("notify", x)


def remote_module_level_function() -> None:  # a value jelly cannot send
    pass


# --------------------------------------------------------------------------------------------
# Transports (the `transport` and `socket_kind` fixtures are conftest's; see connections.py)
# --------------------------------------------------------------------------------------------


@pytest.fixture
def sockdir() -> Any:
    """A short temporary directory for unix socket paths (test_endpoints.py has its own)."""
    path = tempfile.mkdtemp(dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Calls
# --------------------------------------------------------------------------------------------

BUILTINS: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    2**31,
    -(2**63) - 1,
    2**447,
    -(2**447),
    0.0,
    -0.0,
    1.5,
    -2.25e300,
    float("inf"),
    float("-inf"),
    float("nan"),
    b"",
    b"\x00\xffbytes",
    "",
    "h\u00e9llo \u2603 \U0001f600",
    [],
    [1, [2, [3]]],
    (),
    (1, ("a", b"b")),
    {},
    {"a": 1, 2: b"x", (1, 2): None, b"k": [1.5]},
    set(),
    {1, "two", b"three"},
    frozenset({3, (4, 5)}),
    datetime.datetime(2024, 1, 2, 3, 4, 5, 6),
    datetime.date(2024, 2, 29),
    datetime.time(23, 59, 58, 999999),
    datetime.timedelta(days=-1, seconds=2, microseconds=3),
    decimal.Decimal("1.25"),
    decimal.Decimal("-0.001"),
    decimal.Decimal("12345678901234567890.123456789"),
]


def _shared() -> list:
    inner = [1, 2]
    return [inner, inner, {"again": inner}]


def _cyclic() -> list:
    cycle: list = []
    cycle.append(cycle)
    return cycle


def test_positional_and_keyword_arguments(run, transport) -> None:
    async def main() -> None:
        async with transport(Echo()) as conn:
            root = conn.root
            assert await root.callRemote("echo", 5) == 5
            assert await root.callRemote("echo", x="kw") == "kw"
            assert await root.callRemote("describe", 1) == (1, 2, 3)
            assert await root.callRemote("describe", 1, 5, c=9) == (1, 5, 9)
            assert await root.callRemote("describe", a=7, c=8) == (7, 2, 8)
            assert await root.callRemote("args") == [[], {}]
            assert await root.callRemote("args", 1, "two", k=b"v", other=[None]) == [
                [1, "two"],
                {"k": b"v", "other": [None]},
            ]
            # A signature mismatch is the remote method's TypeError.
            with pytest.raises(pbfast.RemoteError) as info:
                await root.callRemote("describe")
            assert info.value.remoteType == "builtins.TypeError"

    run(main())


def test_every_builtin_type_round_trips(run, transport) -> None:
    async def main() -> None:
        async with transport(Echo()) as conn:
            root = conn.root
            values = [*BUILTINS, BUILTINS, tuple(BUILTINS[:10]), _shared(), _cyclic()]
            for value in values:
                assert_deep_equal(await root.callRemote("echo", value), value)
                assert_deep_equal(await root.callRemote("async_echo", x=value), value)
            # All at once, as one argument list and as keywords.
            # (args and kwargs are jellied separately, as in Twisted: nothing is shared between them.)
            kwargs = {f"k{i}": v for i, v in enumerate(BUILTINS)}
            got_args, got_kwargs = await root.callRemote("args", *BUILTINS, **kwargs)
            assert_deep_equal(got_args, BUILTINS)
            assert_deep_equal(got_kwargs, kwargs)

    run(main())


def test_plain_and_async_methods(run, transport) -> None:
    async def main() -> None:
        async with transport(Echo()) as conn:
            assert await conn.root.callRemote("echo", "plain") == "plain"
            assert await conn.root.callRemote("async_echo", "async") == "async"
            assert await conn.root.callRemote("slow", "slow", delay=0.001) == "slow"

    run(main())


def test_results_arrive_out_of_order(run, transport) -> None:
    async def main() -> None:
        async with transport(Echo()) as conn:
            root = conn.root
            done: list[str] = []
            slow = root.callRemote("slow", "slow", delay=0.1)
            slow.add_done_callback(lambda f: done.append(f.result()))
            fast = []
            for i in range(5):
                f = root.callRemote("echo", f"fast{i}")
                f.add_done_callback(lambda f: done.append(f.result()))
                fast.append(f)
            assert await asyncio.gather(*fast) == [f"fast{i}" for i in range(5)]
            assert not slow.done()
            assert await slow == "slow"
            assert done == [f"fast{i}" for i in range(5)] + ["slow"]

    run(main())


def test_pipelined_calls(run, transport) -> None:
    async def main() -> None:
        async with transport(Echo()) as conn:
            root = conn.root
            calls = [root.callRemote("echo" if i % 2 else "async_echo", i) for i in range(100)]
            assert conn.client_broker.statistics()["pending"] == 100
            assert await asyncio.gather(*calls) == list(range(100))
            assert conn.client_broker.statistics()["pending"] == 0

    run(main())


def test_call_remote_only_runs_and_sends_nothing_back(run, transport, caplog) -> None:
    async def main() -> None:
        echo = Echo()
        async with transport(echo) as conn:
            root = conn.root
            # Let the handshake bytes settle before measuring what the server writes.
            assert await root.callRemote("echo", 0) == 0
            await settle()
            written = getattr(conn.server_broker.transport, "written", None)
            assert root.callRemoteOnly("record", "one") is None
            assert root.callRemoteOnly("record_and_fail", "two") is None
            assert root.callRemoteOnly("no_such_method") is None
            await eventually(lambda: echo.log == ["one", "two"])
            await settle()
            if written is not None:  # the in-memory transport counts bytes: none went back
                assert conn.server_broker.transport.written == written
            assert conn.client_broker.statistics()["pending"] == 0
            # A round trip after them: any stray reply would have come first.
            assert await root.callRemote("echo", 1) == 1

    with caplog.at_level(logging.WARNING, logger="pbfast"):
        run(main())
    # The client saw no reply it was not waiting for; the server logged the failure.
    assert not [r for r in pbfast_records(caplog, logging.WARNING) if "not waiting" in r.getMessage()]
    assert any("record_and_fail" in r.getMessage() for r in pbfast_records(caplog, logging.ERROR))


def test_unknown_method(run, transport) -> None:
    async def main() -> None:
        async with transport(Echo()) as conn:
            with pytest.raises(pbfast.RemoteError) as info:
                await conn.root.callRemote("x")
            assert info.value.remoteType.endswith("NoSuchMethod")
            assert info.value.remoteValue == "No such method: remote_x"
            assert await conn.root.callRemote("echo", 1) == 1

    run(main())


def test_unknown_object(run, transport) -> None:
    async def main() -> None:
        async with transport(Echo()) as conn:
            ghost = pbfast.RemoteReference(conn.client_broker, 4242)
            with pytest.raises(pbfast.RemoteError) as info:
                await ghost.callRemote("anything")
            assert info.value.remoteValue == "Invalid Object ID"
            assert await conn.root.callRemote("echo", 1) == 1

    run(main())


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["fail", "async_fail"])
def test_remote_exception(run, transport, method) -> None:
    async def main() -> None:
        async with transport(Echo()) as conn:
            with pytest.raises(pbfast.RemoteError) as info:
                await conn.root.callRemote(method)
            err = info.value
            assert err.remoteType == "builtins.ValueError"
            assert err.remoteValue == "boom"
            assert err.remoteTraceback == "Traceback unavailable\n"
            assert err.check(ValueError) is ValueError
            assert err.check("builtins.ValueError") == "builtins.ValueError"
            assert err.check(KeyError, Exception) is Exception
            assert err.check(KeyError, "builtins.TypeError") is None
            assert "builtins.ValueError" in err.parents
            assert "boom" in str(err)
            assert await conn.root.callRemote("echo", 1) == 1

    run(main())


@pytest.mark.parametrize("method", ["fail", "async_fail"])
def test_unsafe_tracebacks(run, transport, method) -> None:
    async def main() -> None:
        async with transport(Echo(), unsafeTracebacks=True) as conn:
            with pytest.raises(pbfast.RemoteError) as info:
                await conn.root.callRemote(method)
            assert info.value.remoteType == "builtins.ValueError"
            assert f"remote_{method}" in info.value.remoteTraceback
            assert "ValueError: boom" in info.value.remoteTraceback

    run(main())


def test_expected_errors_are_not_logged(run, transport, caplog) -> None:
    async def main() -> None:
        async with transport(Echo()) as conn:
            with pytest.raises(pbfast.RemoteError) as info:
                await conn.root.callRemote("expected")
            assert info.value.remoteValue == "on purpose"
            assert info.value.check(pbfast.Error)
            assert info.value.remoteType.endswith("Expected")
            assert not pbfast_records(caplog, logging.ERROR)
            with pytest.raises(pbfast.RemoteError):
                await conn.root.callRemote("fail")
            errors = pbfast_records(caplog, logging.ERROR)
            assert len(errors) == 1
            assert errors[0].exc_info is not None and isinstance(errors[0].exc_info[1], ValueError)

    with caplog.at_level(logging.DEBUG, logger="pbfast"):
        run(main())


@pytest.mark.parametrize("method", ["function", "async_function", "nested_function"])
def test_unserializable_result_is_a_remote_error(run, transport, method, caplog) -> None:
    async def main() -> None:
        async with transport(Echo()) as conn:
            with pytest.raises(pbfast.RemoteError) as info:
                await asyncio.wait_for(conn.root.callRemote(method), 5)
            assert info.value.check(pbfast.JellyError)
            assert conn.client_broker.statistics()["pending"] == 0
            assert await conn.root.callRemote("echo", 1) == 1

    with caplog.at_level(logging.CRITICAL, logger="pbfast"):
        run(main())


@pytest.mark.parametrize(
    "bad",
    [lambda: 1, remote_module_level_function, [1, {"deep": (remote_module_level_function,)}], asyncio],
    ids=["lambda", "function", "nested", "module"],
)
def test_unserializable_argument_fails_locally(run, transport, bad) -> None:
    async def main() -> None:
        async with transport(Echo()) as conn:
            root = conn.root
            with pytest.raises(pbfast.JellyError):
                await root.callRemote("echo", bad)
            with pytest.raises(pbfast.JellyError):
                await root.callRemote("echo", x=bad)
            with pytest.raises(pbfast.JellyError):
                root.callRemoteOnly("record", bad)
            # A Referenceable sent alongside the bad value is taken back too.
            with pytest.raises(pbfast.JellyError):
                await root.callRemote("args", Listener(), bad)
            stats = conn.client_broker.statistics()
            assert stats["pending"] == 0
            assert stats["objects"] == 0
            assert await root.callRemote("echo", 1) == 1
            assert conn.server_broker.statistics()["pending"] == 0

    run(main())


# --------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------


def test_referenceable_travels_by_reference(run, transport) -> None:
    async def main() -> None:
        echo = Echo()
        async with transport(echo) as conn:
            child = await conn.root.callRemote("child")
            assert isinstance(child, pbfast.RemoteReference)
            assert child.broker is conn.client_broker
            assert await child.callRemote("inc") == 1
            assert await child.callRemote("inc", by=5) == 6
            assert echo.child.value == 6
            # The same object gives the same proxy, within one answer and across answers.
            again = await conn.root.callRemote("child")
            assert again is child
            a, b = await conn.root.callRemote("child_twice")
            assert a is b is child
            # Sent back to its owner, it is the original object.
            assert await conn.root.callRemote("is_child", child) is True
            assert await conn.root.callRemote("is_child", x=[child][0]) is True
            assert await conn.root.callRemote("is_child", conn.root) is False
            assert conn.server_broker.statistics()["objects"] == 1
            assert conn.client_broker.statistics()["proxies"] == 1

    run(main())


def test_client_referenceable_is_called_back(run, transport) -> None:
    async def main() -> None:
        async with transport(Echo()) as conn:
            listener = Listener()
            assert await conn.root.callRemote("call_back", listener, [1, 2]) == "heard [1, 2]"
            assert await conn.root.callRemote("call_back", listener=listener, x="b") == "heard 'b'"
            assert listener.heard == [[1, 2], "b"]
            # The server let go of its proxy: our table empties.
            await eventually(lambda: conn.client_broker.statistics()["objects"] == 0)
            await eventually(lambda: conn.server_broker.statistics()["proxies"] == 0)

    run(main())


def test_reference_tables_empty_when_references_are_dropped(run, transport) -> None:
    async def main() -> None:
        async with transport(Echo()) as conn:
            server_stats = conn.server_broker.statistics
            client_stats = conn.client_broker.statistics
            counters = await conn.root.callRemote("make", 5)
            assert len({id(c) for c in counters}) == 5
            assert server_stats()["objects"] == 5
            assert client_stats()["proxies"] == 5
            assert await counters[3].callRemote("value") == 3
            child = await conn.root.callRemote("child")
            await conn.root.callRemote("child")
            assert server_stats()["objects"] == 6
            del counters
            await eventually(lambda: server_stats()["objects"] == 1)
            assert client_stats()["proxies"] == 1
            del child
            await eventually(lambda: server_stats()["objects"] == 0)
            assert client_stats()["proxies"] == 0
            # The root is not counted and still works; a new child gets a new entry.
            child = await conn.root.callRemote("child")
            assert await child.callRemote("value") == 0
            assert server_stats()["objects"] == 1

    run(main())


def test_own_object_comes_back_as_itself(run, transport) -> None:
    """The pin rule: our object sent as an argument and echoed back resolves to itself, though
    the server keeps no reference of its own (its proxy dies as soon as the call returns)."""

    async def main() -> None:
        async with transport(Echo()) as conn:
            root = conn.root
            listener = Listener()
            assert await root.callRemote("identity", listener) is listener
            assert await root.callRemote("async_identity", listener) is listener
            both = [listener, {"k": listener}]
            assert await root.callRemote("identity", both) == both
            # Nobody but the call holds it: it still comes back.
            back = await root.callRemote("identity", Listener())
            assert isinstance(back, Listener)
            back = await root.callRemote("async_identity", Listener())
            assert isinstance(back, Listener)
            # Pipelined: many echoes of the same object in flight at once.
            results = await asyncio.gather(*(root.callRemote("async_identity", listener) for _ in range(20)))
            assert all(r is listener for r in results)
            del back, results
            await eventually(lambda: conn.client_broker.statistics()["objects"] == 0)
            await eventually(lambda: conn.server_broker.statistics()["proxies"] == 0)

    run(main())


def test_own_object_comes_back_after_the_server_proxy_died(run, transport) -> None:
    """The server lets go of its proxy (decref on the way) while its echoing answer is written:
    the answer still names our object, which the pin keeps."""

    class Forgetful(Echo):
        async def remote_forget_then_echo(self, x: Any) -> Any:
            luid = x.luid
            broker = x.broker
            del x
            gc.collect()  # the proxy is gone: a decref is queued before our answer
            await asyncio.sleep(0.02)  # ... and sent
            return pbfast.RemoteReference(broker, luid)  # echoes `local luid`

    async def main() -> None:
        async with transport(Forgetful()) as conn:
            listener = Listener()
            assert await conn.root.callRemote("forget_then_echo", listener) is listener
            del listener
            await eventually(lambda: conn.client_broker.statistics()["objects"] == 0)

    run(main())


def test_max_refs(run, transport) -> None:
    async def main() -> None:
        async with transport(Echo(), max_refs=2) as conn:
            with pytest.raises(pbfast.RemoteError) as info:
                await conn.root.callRemote("make", 3)
            assert "Maximum PB reference count" in info.value.remoteValue
            # Nothing was kept from the failed answer, and the connection works.
            assert conn.server_broker.statistics()["objects"] == 0
            two = await conn.root.callRemote("make", 2)
            assert [await c.callRemote("value") for c in two] == [0, 1]
            with pytest.raises(pbfast.RemoteError) as info:
                await conn.root.callRemote("child")
            assert "Maximum PB reference count" in info.value.remoteValue
            # Already-held objects can be sent again.
            assert await conn.root.callRemote("identity", two[0]) is two[0]
            del two
            await eventually(lambda: conn.server_broker.statistics()["objects"] == 0)
            assert await (await conn.root.callRemote("child")).callRemote("inc") == 1

    run(main())


# --------------------------------------------------------------------------------------------
# Lifecycle
# --------------------------------------------------------------------------------------------


def test_close_fails_pending_calls_and_later_calls(run, transport) -> None:
    async def main() -> None:
        echo = Echo()
        async with transport(echo) as conn:
            root = conn.root
            pending = root.callRemote("wait")
            await eventually(lambda: echo.started == 1)
            await conn.client_broker.close()
            assert conn.client_broker.disconnected
            with pytest.raises(pbfast.PBConnectionLost):
                await pending
            later = root.callRemote("echo", 1)
            with pytest.raises(pbfast.DeadReferenceError):
                await later
            with pytest.raises(pbfast.DeadReferenceError):
                root.callRemoteOnly("echo", 1)
            assert conn.client_broker.statistics()["pending"] == 0
            await asyncio.wait_for(asyncio.shield(conn.server_broker.closed), 5)
            assert conn.server_broker.disconnected
            echo.gate.set()  # the abandoned remote method finishes; its answer goes nowhere
            await settle()

    run(main())


def test_peer_close_fails_pending_calls(run, transport) -> None:
    async def main() -> None:
        echo = Echo()
        async with transport(echo) as conn:
            pending = conn.root.callRemote("wait")
            await eventually(lambda: echo.started == 1)
            await conn.server_broker.close()
            with pytest.raises(pbfast.PBConnectionLost):
                await asyncio.wait_for(pending, 5)
            await asyncio.wait_for(asyncio.shield(conn.client_broker.closed), 5)
            echo.gate.set()
            await settle()

    run(main())


def test_notify_on_disconnect(run, transport) -> None:
    async def main() -> None:
        async with transport(Echo()) as conn:
            child = await conn.root.callRemote("child")
            seen: list[Any] = []

            def on_child(ref: Any) -> None:
                seen.append(("child", ref))

            def removed(ref: Any) -> None:
                seen.append(("removed", ref))

            def on_root(ref: Any) -> None:
                seen.append(("root", ref))

            def on_broker() -> None:
                seen.append(("broker",))

            def never() -> None:
                seen.append(("never",))

            child.notifyOnDisconnect(on_child)
            child.notifyOnDisconnect(removed)
            conn.root.notifyOnDisconnect(on_root)
            conn.client_broker.notifyOnDisconnect(on_broker)
            conn.client_broker.notifyOnDisconnect(never)
            child.dontNotifyOnDisconnect(removed)
            with pytest.raises(ValueError):
                child.dontNotifyOnDisconnect(removed)
            with pytest.raises(ValueError):
                conn.root.dontNotifyOnDisconnect(on_child)
            conn.client_broker.dontNotifyOnDisconnect(never)
            with pytest.raises(ValueError):
                conn.client_broker.dontNotifyOnDisconnect(never)
            # notifyOnDisconnect keeps the reference alive until the end.
            child_id = id(child)
            del child
            gc.collect()
            assert seen == []
            await conn.client_broker.close()
            assert sorted(s[0] for s in seen) == ["broker", "child", "root"]
            refs = {s[0]: s[1] for s in seen if len(s) == 2}
            assert id(refs["child"]) == child_id
            assert refs["root"] is conn.root

    run(main())


def test_cancelled_call_is_abandoned(run, transport, caplog) -> None:
    async def main() -> None:
        echo = Echo()
        async with transport(echo) as conn:
            root = conn.root
            task = asyncio.ensure_future(root.callRemote("wait"))
            await eventually(lambda: echo.started == 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # wait_for's timeout cancels the call the same way.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(root.callRemote("wait"), 0.01)
            echo.gate.set()  # both answers now arrive, late
            await eventually(lambda: conn.client_broker.statistics()["pending"] == 0)
            assert await root.callRemote("echo", "still fine") == "still fine"

    with caplog.at_level(logging.WARNING, logger="pbfast"):
        run(main())
    assert not pbfast_records(caplog, logging.WARNING)


def test_cancelled_call_answer_carrying_references_is_released(run, transport) -> None:
    async def main() -> None:
        echo = Echo()
        async with transport(echo) as conn:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(conn.root.callRemote("wait_then_make", 3), 0.01)
            echo.gate.set()
            await eventually(lambda: conn.client_broker.statistics()["pending"] == 0)
            # The late answer named three objects; nobody took them: the server forgets them.
            await eventually(lambda: conn.server_broker.statistics()["objects"] == 0)
            assert conn.client_broker.statistics()["proxies"] == 0

    run(main())


def test_remote_method_ending_in_cancelled_error_still_answers(run, transport, caplog) -> None:
    """A remote coroutine that ends with CancelledError (it awaited something that was cancelled)
    must still answer the call: otherwise the caller waits until the connection closes."""

    async def main() -> None:
        async with transport(Echo()) as conn:
            call = conn.root.callRemote("inner_cancelled")
            try:
                with pytest.raises(pbfast.RemoteError) as info:
                    await asyncio.wait_for(asyncio.shield(call), 0.5)
                assert info.value.check("asyncio.exceptions.CancelledError")
            finally:
                call.cancel()
            assert await conn.root.callRemote("echo", 1) == 1

    with caplog.at_level(logging.CRITICAL, logger="pbfast"):
        run(main())


@pytest.mark.parametrize("method", ["refused_before", "refused_after"])
def test_refused_reply_releases_the_references_it_carried(run, transport, method) -> None:
    """A reply the receiver refuses (InsecureJelly) still gives back every reference it named,
    wherever in the value the refusal happened; otherwise the sender keeps those objects for
    the whole life of the connection."""

    async def main() -> None:
        async with transport(Echo()) as conn:
            with pytest.raises(pbfast.InsecureJelly):
                await conn.root.callRemote(method)
            assert await conn.root.callRemote("echo", 1) == 1
            await eventually(lambda: conn.server_broker.statistics()["objects"] == 0, timeout=0.5)

    run(main())


@pytest.mark.parametrize("order", ["before", "after"])
def test_refused_arguments_release_the_references_they_carried(run, transport, order, caplog) -> None:
    """The same for a call's arguments: the server refuses them, and the client's objects sent
    among them are released."""

    async def main() -> None:
        async with transport(Echo()) as conn:
            args = (Listener(), int) if order == "before" else (int, Listener())
            with pytest.raises(pbfast.RemoteError) as info:
                await conn.root.callRemote("args", *args)
            assert info.value.check(pbfast.InsecureJelly)
            await eventually(lambda: conn.client_broker.statistics()["objects"] == 0, timeout=0.5)

    with caplog.at_level(logging.CRITICAL, logger="pbfast"):
        run(main())


def test_server_close_closes_connections(run, socket_kind) -> None:
    kind, tmpdir = socket_kind

    async def main() -> None:
        listen_on, connect_to = _endpoints(kind, tmpdir)
        echo = Echo()
        server = await pbfast.serve(echo, listen_on)
        roots = [await pbfast.connect(connect_to(server), timeout=5) for _ in range(2)]
        assert len(server.brokers) == 2
        pending = roots[0].callRemote("wait")
        await eventually(lambda: echo.started == 1)
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)
        with pytest.raises(pbfast.PBConnectionLost):
            await asyncio.wait_for(pending, 5)
        for root in roots:
            await asyncio.wait_for(asyncio.shield(root.broker.closed), 5)
            assert root.broker.disconnected
            with pytest.raises(pbfast.DeadReferenceError):
                await root.callRemote("echo", 1)
        # No longer listening.
        with pytest.raises(OSError):
            await pbfast.connect(connect_to(server), timeout=5)
        echo.gate.set()
        await settle()

    run(main())


def test_server_and_connect_as_context_managers(run, socket_kind) -> None:
    kind, tmpdir = socket_kind

    async def main() -> None:
        listen_on, connect_to = _endpoints(kind, tmpdir)
        async with await pbfast.serve(Echo(), listen_on) as server:
            async with pbfast.connect(connect_to(server), timeout=5) as root:
                assert await root.callRemote("echo", "hi") == "hi"
                broker = root.broker
                assert not broker.disconnected
            assert broker.disconnected
            await eventually(lambda: not server.brokers)
            async with pbfast.connect(connect_to(server)) as root2:
                assert await root2.callRemote("echo", 2) == 2
        assert root2.broker.disconnected

    run(main())


def test_connect_refused(run) -> None:
    async def main() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with pytest.raises(ConnectionRefusedError):
            await pbfast.connect(f"tcp:host=127.0.0.1:port={port}", timeout=5)

    run(main())


def test_connect_timeout_on_a_silent_server(run) -> None:
    class Silent(asyncio.Protocol):
        def __init__(self) -> None:
            self.lost = asyncio.get_running_loop().create_future()

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            accepted.append(self)

        def connection_lost(self, exc: Exception | None) -> None:
            if not self.lost.done():
                self.lost.set_result(None)

    accepted: list[Silent] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            started = loop.time()
            with pytest.raises(TimeoutError):
                await pbfast.connect(f"tcp:host=127.0.0.1:port={port}", timeout=0.5)
            assert 0.4 <= loop.time() - started < 3
            assert len(accepted) == 1
            # pbfast dropped its end: the silent server sees the connection go.
            await asyncio.wait_for(accepted[0].lost, 5)
        finally:
            for proto in accepted:
                proto.transport.close()
            server.close()
            await server.wait_closed()
        await settle()

    run(main())


def test_unknown_options_and_bad_roots(run, sockdir) -> None:
    async def main() -> None:
        with pytest.raises(TypeError, match="bogus"):
            pbfast.connect("tcp:host=127.0.0.1:port=1", bogus=1)
        with pytest.raises(TypeError, match="bogus"):
            await pbfast.serve(Echo(), "tcp:port=0:interface=127.0.0.1", bogus=1)
        with pytest.raises(TypeError, match="bogus"):
            await pbfast.testing.connected_pair(Echo(), bogus=1)
        with pytest.raises(TypeError):
            await pbfast.serve(object(), "tcp:port=0:interface=127.0.0.1")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await pbfast.serve(lambda: None, f"unix:address={sockdir}/s")  # type: ignore[arg-type]

    run(main())


def test_options_are_accepted(run, transport) -> None:
    async def main() -> None:
        options = dict(
            unsafeTracebacks=True,
            max_refs=10,
            backlog=10,
            max_element_size=1 << 20,
            max_message_size=1 << 22,
            max_depth=100,
            max_header_length=64,
        )
        async with transport(Echo(), **options) as conn:
            assert await conn.root.callRemote("echo", [1, 2, 3]) == [1, 2, 3]

    run(main())


# --------------------------------------------------------------------------------------------
# pbfast.run
# --------------------------------------------------------------------------------------------


def test_pbfast_run_returns_the_value() -> None:
    async def main() -> tuple[int, str]:
        await asyncio.sleep(0)
        return 42, type(asyncio.get_running_loop()).__module__

    value, loop_module = pbfast.run(main())
    assert value == 42
    try:
        import uvloop  # noqa: F401
    except ImportError:
        assert loop_module.startswith("asyncio")
    else:
        assert loop_module.startswith("uvloop")


def test_pbfast_run_serves_and_connects() -> None:
    async def main() -> Any:
        async with await pbfast.serve(Echo(), "tcp:port=0:interface=127.0.0.1") as server:
            async with pbfast.connect(f"tcp:host=127.0.0.1:port={server.port}", timeout=5) as root:
                return await root.callRemote("echo", {"ok": (1, 2)})

    assert pbfast.run(main()) == {"ok": (1, 2)}
    with pytest.raises(pbfast.RemoteError):
        pbfast.run(_fails())


async def _fails() -> None:
    root, server_broker = await pbfast.testing.connected_pair(Echo())
    try:
        await root.callRemote("fail")
    finally:
        await root.broker.close()
        await server_broker.close()


# --------------------------------------------------------------------------------------------
# What the decoder's fast path must leave to the broker
# --------------------------------------------------------------------------------------------


class Dispatching(pbfast.Root):
    """Overrides the dispatch: every call goes through it, not straight to remote_*."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def remoteMessageReceived(self, broker: Any, message: str, args: tuple, kw: dict) -> Any:
        self.seen.append(message)
        return f"{message} via dispatch"

    def remote_echo(self, x: Any) -> Any:
        return x


class Later:
    """An awaitable that is not a coroutine."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self):
        yield from asyncio.sleep(0).__await__()
        return self.value


class Reentrant(pbfast.Root):
    def __init__(self) -> None:
        self.broker: Any = None

    def rootObject(self, broker: Any) -> Any:
        self.broker = broker
        return self

    def remote_stats(self) -> dict:
        return self.broker.statistics()

    def remote_later(self, x: Any) -> Later:
        return Later(x)

    def remote_call_back(self, ref: Any) -> Any:
        return ref.callRemote("hello", "server")


class Hello(pbfast.Referenceable):
    def remote_hello(self, who: str) -> str:
        return f"hello {who}"


def test_overridden_dispatch_is_respected(run, transport) -> None:
    async def main() -> None:
        root = Dispatching()
        async with transport(root) as conn:
            assert await conn.root.callRemote("echo", 1) == "echo via dispatch"
            assert await conn.root.callRemote("anything") == "anything via dispatch"
            assert root.seen == ["echo", "anything"]

    run(main())


def test_remote_methods_may_use_the_broker_while_it_decodes(run, transport) -> None:
    async def main() -> None:
        async with transport(Reentrant()) as conn:
            stats = await conn.root.callRemote("stats")
            assert stats["pending"] == 0 and stats["backlog"] == 0
            assert await conn.root.callRemote("later", 7) == 7
            assert await conn.root.callRemote("call_back", Hello()) == "hello server"

    run(main())


class BothPaths(pbfast.Root):
    def remote_plain(self, x: Any) -> Any:  # answered inside the decoder's feed
        return x

    async def remote_later(self, x: Any) -> Any:  # answered by the broker, after the await
        return x


def test_fast_and_broker_answers_are_the_same_bytes(run) -> None:
    """Both paths encode answers with one function: the bytes match ``PbEncoder.answer``."""

    async def main() -> None:
        root, server = await pbfast.testing.connected_pair(BothPaths())
        written: list[bytes] = []
        write = server.transport.write
        server.transport.write = lambda data: (written.append(bytes(data)), write(data))  # type: ignore[method-assign]
        value = {"a": [1, 2.5, "x", b"y", None, (True, -(2**70))]}
        try:
            for request_id, method in enumerate(["plain", "later"], start=1):
                written.clear()
                assert await root.callRemote(method, value) == value
                assert b"".join(written) == server._encoder.answer(request_id, value), method
        finally:
            await root.broker.close()
            await server.close()

    run(main())


def test_calls_over_tls(run, tmp_path) -> None:
    cert, key = pbfast.endpoints.self_signed_certificate("localhost")
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    server_endpoint = (
        f"ssl:port=0:interface=127.0.0.1:privateKey={tmp_path / 'key.pem'}:certKey={tmp_path / 'cert.pem'}"
    )

    async def main() -> None:
        async with await pbfast.serve(Echo(), server_endpoint) as server:
            client = (
                f"ssl:host=127.0.0.1:port={server.port}:caCerts={tmp_path / 'cert.pem'}:hostname=localhost"
            )
            async with pbfast.connect(client) as root:
                assert await root.callRemote("echo", [1, "two"]) == [1, "two"]
                child = await root.callRemote("child")
                assert await child.callRemote("inc") == 1

    run(main())
