"""The broker behaviours both wires share, in one matrix: every test here runs on PB (in memory,
over TCP and over a unix socket) and on the Tub (two Tubs over TLS on 127.0.0.1, and a Tub
calling its own FURL through its in-memory loopback), through the one API of ``wires.py``.

Where the wires legitimately differ (the error a missing method gives, whether the server logs
a failure, what cannot be sent, the root's own table entry), the test reads the difference from
``w.expect`` (`wires.Expect`) instead of weakening an assertion. What only one wire has stays in
test_broker.py (PB: login, options, servers) or test_tub.py (FURLs, gifts, negotiation).
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import gc
import logging
from collections.abc import Callable
from typing import Annotated, Any

import pbfast
import pytest
from connections import CountingSession, eventually, pbfast_records, settle
from helpers import assert_deep_equal
from pbfast import _core
from pbfast.schema import AttributeDictConstraint, MaxLength
from wires import VARIANTS, connector

# --------------------------------------------------------------------------------------------
# The matrix
# --------------------------------------------------------------------------------------------


@pytest.fixture(params=VARIANTS)
def wire(request: pytest.FixtureRequest) -> Any:
    """``async with wire(root, client_options={...}, **server_options) as w`` gives a connected
    `wires.Wired` on each wire and transport of `wires.VARIANTS`."""
    with connector(request.param) as connect:
        yield connect


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


def module_level_function() -> None:  # a function: PB cannot send it (a Tub sends a reference)
    pass


# What a wire cannot send: PB has no form for code (functions, modules), a Tub none for
# instances of classes it does not know, datetimes or dictionaries whose keys do not sort.
UNSENDABLE: dict[str, list[tuple[str, Any]]] = {
    "pb": [
        ("lambda", lambda: 1),
        ("function", module_level_function),
        ("nested", [1, {"deep": (module_level_function,)}]),
        ("module", asyncio),
    ],
    "tub": [
        ("object", object()),
        ("nested", [1, {"deep": (object(),)}]),
        ("unsortable keys", {b"k": 1, "u": 2}),
        ("date", datetime.date(2024, 2, 29)),
        ("module", asyncio),
    ],
}


class RIShelf(pbfast.RemoteInterface):
    __remote_name__ = "RIShelf.wires-test.pbfast.example"

    def put(self, key: Annotated[bytes, MaxLength(8)], value: int = 0) -> bool: ...

    def broken(self) -> int: ...

    async def broken_later(self) -> int: ...

    def missing(self) -> None: ...


class Shelf(pbfast.Referenceable):
    """Declares `RIShelf`: every call is checked against it."""

    remote_interface = RIShelf

    def __init__(self) -> None:
        self.ran: list[str] = []

    def remote_put(self, key: bytes, value: int = 0) -> bool:
        self.ran.append("put")
        return True

    def remote_broken(self) -> str:
        self.ran.append("broken")
        return "not an int"

    async def remote_broken_later(self) -> str:
        self.ran.append("broken_later")
        return "not an int"

    def remote_undeclared(self) -> str:  # not in the interface: cannot be called
        self.ran.append("undeclared")
        return "ran"


class StatePoint(pbfast.Copyable):
    typeToCopy = "example.pbfast/wires-test/StatePoint"

    def __init__(self, x: Any) -> None:
        self.x = x


class RemoteStatePoint(pbfast.RemoteCopy):
    copytype = "example.pbfast/wires-test/StatePoint"
    stateSchema = AttributeDictConstraint(("x", int))


class Served(pbfast.Root):
    """The root both wires serve."""

    def __init__(self, wire: str = "pb") -> None:
        self.wire = wire
        self.log: list[Any] = []
        self.kept: list[Any] = []
        self.child = Counter()
        self.gate = asyncio.Event()
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

    def remote_keep(self, x: Any) -> None:
        self.kept.append(x)

    def remote_forget(self) -> None:
        self.kept.clear()

    # ---- errors

    def remote_fail(self, message: str = "boom") -> None:
        raise ValueError(message)

    async def remote_async_fail(self, message: str = "boom") -> None:
        await asyncio.sleep(0)
        raise ValueError(message)

    def remote_expected(self) -> None:
        raise Expected("on purpose")

    def remote_unsendable(self, i: int) -> Any:
        return UNSENDABLE[self.wire][i][1]

    async def remote_async_unsendable(self, i: int) -> Any:
        await asyncio.sleep(0)
        return UNSENDABLE[self.wire][i][1]

    # ---- references

    def remote_point(self, x: Any) -> StatePoint:
        return StatePoint(x)

    def remote_point_x(self, point: Any) -> tuple[str, Any]:
        return (type(point).__name__, point.x)

    def remote_shelf(self) -> Shelf:
        self.shelf = Shelf()
        return self.shelf

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
        """A class (which neither wire lets through) before a Referenceable."""
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


# --------------------------------------------------------------------------------------------
# Calls
# --------------------------------------------------------------------------------------------

# Values both wires carry, each keeping its type (and sharing, and NaN, and -0.0).
COMMON: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    2**31 - 1,
    2**31,
    -(2**31),
    -(2**31) - 1,
    2**64,
    -(2**63) - 1,
    -(2**70),
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
    b"list",  # a foolscap vocabulary word
    "",
    "h\u00e9llo \u2603 \U0001f600",
    [],
    [1, [2, [3]]],
    (),
    (1, ("a", b"b")),
    (1, "two", b"three"),
    {},
    {"a": 1, "b": [2]},
    {b"k": b"v", b"j": None},
    set(),
    {1, 2, 3},
    {1, "two", b"three"},
    frozenset({3, (4, 5)}),
    frozenset({b"x", b"y"}),
    {"nested": [(1, {2: frozenset({3})})]},
    decimal.Decimal("1.25"),
    decimal.Decimal("-0.001"),
    decimal.Decimal("3.14159"),
    decimal.Decimal("12345678901234567890.123456789"),
]
# Jelly carries dates and times, and dicts whose keys do not sort; foolscap has no form for
# dates and times and sends dict keys sorted (the Tub refuses both).
PB_ONLY: list[Any] = [
    {"a": 1, 2: b"x", (1, 2): None, b"k": [1.5]},
    datetime.datetime(2024, 1, 2, 3, 4, 5, 6),
    datetime.date(2024, 2, 29),
    datetime.time(23, 59, 58, 999999),
    datetime.timedelta(days=-1, seconds=2, microseconds=3),
]


def _shared() -> list:
    inner = [1, 2]
    return [inner, inner, {"again": inner}]


def _cyclic() -> list:
    cycle: list = []
    cycle.append(cycle)
    return cycle


def test_positional_and_keyword_arguments(run, wire) -> None:
    async def main() -> None:
        async with wire(Served()) as w:
            root = w.root
            assert await root.callRemote("echo", 5) == 5
            assert await root.callRemote("echo", x="kw") == "kw"
            assert await root.callRemote("describe", 1) == (1, 2, 3)
            assert await root.callRemote("describe", 1, 5, c=9) == (1, 5, 9)
            assert await root.callRemote("describe", a=7, c=8) == (7, 2, 8)
            assert await root.callRemote("describe", a=-5, b=2**40) == (-5, 2**40, 3)
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


def test_every_builtin_type_round_trips(run, wire) -> None:
    async def main() -> None:
        async with wire(Served()) as w:
            root = w.root
            builtins = COMMON + PB_ONLY if w.wire == "pb" else COMMON
            values = [*builtins, builtins, tuple(builtins[:10]), _shared(), _cyclic()]
            for value in values:
                assert_deep_equal(await root.callRemote("echo", value), value, **w.expect.compare)
                assert_deep_equal(await root.callRemote("async_echo", x=value), value, **w.expect.compare)
            # All at once, as one argument list and as keywords.
            # (args and kwargs are sent separately, as in Twisted: nothing is shared between them.)
            kwargs = {f"k{i}": v for i, v in enumerate(builtins)}
            got_args, got_kwargs = await root.callRemote("args", *builtins, **kwargs)
            assert_deep_equal(got_args, builtins, **w.expect.compare)
            assert_deep_equal(got_kwargs, kwargs, **w.expect.compare)
            if w.wire == "tub":
                for value in PB_ONLY:
                    with pytest.raises(TypeError):
                        await root.callRemote("echo", value)
            assert w.client_stats()["pending"] == 0

    run(main())


def test_plain_and_async_methods(run, wire) -> None:
    async def main() -> None:
        async with wire(Served()) as w:
            assert await w.root.callRemote("echo", "plain") == "plain"
            assert await w.root.callRemote("async_echo", "async") == "async"
            assert await w.root.callRemote("slow", "slow", delay=0.001) == "slow"

    run(main())


def test_results_arrive_out_of_order(run, wire) -> None:
    async def main() -> None:
        async with wire(Served()) as w:
            root = w.root
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


def test_pipelined_calls(run, wire) -> None:
    async def main() -> None:
        async with wire(Served()) as w:
            root = w.root
            calls = [root.callRemote("echo" if i % 2 else "async_echo", i) for i in range(100)]
            assert w.client_stats()["pending"] == 100
            assert await asyncio.gather(*calls) == list(range(100))
            assert w.client_stats()["pending"] == 0
            # Async methods of varying delays, pipelined: each answer goes to its own call.
            slow = [root.callRemote("slow", i, delay=0.001 * (i % 3)) for i in range(50)]
            assert await asyncio.gather(*slow) == list(range(50))

    run(main())


def test_a_burst_of_calls_goes_out_in_one_write(run, wire) -> None:
    """Calls made in one go wait for the end of the loop iteration and go out together (the
    server's answers to them are written every `_core.EARLY_WRITE` while the rest run: the
    session's Rust tests check that rule)."""

    async def main() -> None:
        async with wire(Served()) as w:
            await w.root.callRemote("echo", 0)
            count = 3 * _core.EARLY_WRITE
            calls = [w.root.callRemote("echo", i) for i in range(count)]
            assert w.client._session.size > 0  # nothing written early
            assert await asyncio.gather(*calls) == list(range(count))
            assert w.client._session.size == 0

    run(main())


def test_call_remote_only_runs_and_sends_nothing_back(run, wire, caplog) -> None:
    logs_failures: list[bool] = []

    async def main() -> None:
        served = Served()
        async with wire(served) as w:
            logs_failures.append(w.expect.logs_failures)
            root = w.root
            # Let the handshake bytes settle before measuring what the server writes.
            assert await root.callRemote("echo", 0) == 0
            await settle()
            written = getattr(w.server.transport, "written", None)
            assert root.callRemoteOnly("record", "one") is None
            assert root.callRemoteOnly("record_and_fail", "two") is None
            assert root.callRemoteOnly("no_such_method") is None
            assert root.callRemoteOnly("record", "three") is None
            await eventually(lambda: served.log == ["one", "two", "three"])
            await settle()
            if written is not None:  # the in-memory transport counts bytes: none went back
                assert w.server.transport.written == written
            assert w.client_stats()["pending"] == 0
            # A round trip after them: any stray reply would have come first.
            assert await root.callRemote("echo", 1) == 1

    with caplog.at_level(logging.WARNING, logger="pbfast"):
        run(main())
    # The client saw no reply it was not waiting for; the server logged the failure if its
    # wire logs failures (PB does; a Tub only with logLocalFailures).
    assert not [r for r in pbfast_records(caplog, logging.WARNING) if "not waiting" in r.getMessage()]
    logged = [r for r in pbfast_records(caplog, logging.ERROR) if "record_and_fail" in r.getMessage()]
    if logs_failures[0]:
        assert logged
    else:
        assert not pbfast_records(caplog, logging.ERROR)


def test_unknown_method(run, wire) -> None:
    async def main() -> None:
        async with wire(Served()) as w:
            with pytest.raises(pbfast.RemoteError) as info:
                await w.root.callRemote("x")
            assert info.value.remoteType == w.expect.no_method_type
            assert info.value.remoteValue == w.expect.no_method_value("Served", "x")
            assert info.value.check(AttributeError)
            assert await w.root.callRemote("echo", 1) == 1

    run(main())


def test_unknown_object(run, wire) -> None:
    async def main() -> None:
        async with wire(Served()) as w:
            ghost = type(w.root)(w.client, 4242)
            with pytest.raises(pbfast.RemoteError) as info:
                await ghost.callRemote("anything")
            assert info.value.remoteType == w.expect.no_object_type
            assert info.value.remoteValue == w.expect.no_object_value(4242)
            assert await w.root.callRemote("echo", 1) == 1

    run(main())


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["fail", "async_fail"])
def test_remote_exception(run, wire, method) -> None:
    async def main() -> None:
        async with wire(Served()) as w:
            with pytest.raises(pbfast.RemoteError) as info:
                await w.root.callRemote(method)
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
            with pytest.raises(pbfast.RemoteError) as info:
                await w.root.callRemote(method, message="other")
            assert info.value.remoteValue == "other"
            assert await w.root.callRemote("echo", 1) == 1

    run(main())


@pytest.mark.parametrize("method", ["fail", "async_fail"])
def test_unsafe_tracebacks(run, wire, method) -> None:
    async def main() -> None:
        async with wire(Served(), unsafeTracebacks=True) as w:
            with pytest.raises(pbfast.RemoteError) as info:
                await w.root.callRemote(method)
            assert info.value.remoteType == "builtins.ValueError"
            assert f"remote_{method}" in info.value.remoteTraceback
            assert "ValueError: boom" in info.value.remoteTraceback

    run(main())


def test_expected_errors_are_not_logged(run, wire, caplog) -> None:
    async def main() -> None:
        async with wire(Served()) as w:
            with pytest.raises(pbfast.RemoteError) as info:
                await w.root.callRemote("expected")
            assert info.value.remoteValue == "on purpose"
            assert info.value.check(pbfast.Error)
            assert info.value.remoteType.endswith("Expected")
            assert not pbfast_records(caplog, logging.ERROR)
            with pytest.raises(pbfast.RemoteError):
                await w.root.callRemote("fail")
            errors = pbfast_records(caplog, logging.ERROR)
            if w.expect.logs_failures:
                assert len(errors) == 1
                assert errors[0].exc_info is not None and isinstance(errors[0].exc_info[1], ValueError)
            else:
                assert errors == []

    with caplog.at_level(logging.DEBUG, logger="pbfast"):
        run(main())


def test_unsendable_result_is_a_remote_error(run, wire, caplog) -> None:
    async def main() -> None:
        served = Served()
        async with wire(served) as w:
            served.wire = w.wire
            for method in ("unsendable", "async_unsendable"):
                for i, (name, _) in enumerate(UNSENDABLE[w.wire]):
                    with pytest.raises(pbfast.RemoteError) as info:
                        await asyncio.wait_for(w.root.callRemote(method, i), 5)
                    assert info.value.check(w.expect.unsendable), (method, name)
                    assert w.client_stats()["pending"] == 0
                    assert await w.root.callRemote("echo", 1) == 1

    with caplog.at_level(logging.CRITICAL, logger="pbfast"):
        run(main())


def test_unsendable_argument_fails_locally(run, wire) -> None:
    async def main() -> None:
        async with wire(Served()) as w:
            root = w.root
            for name, bad in UNSENDABLE[w.wire]:
                with pytest.raises(w.expect.unsendable):
                    await root.callRemote("echo", bad)
                with pytest.raises(w.expect.unsendable):
                    await root.callRemote("echo", x=bad)
                with pytest.raises(w.expect.unsendable):
                    root.callRemoteOnly("record", bad)
                # A Referenceable sent alongside the bad value is taken back too.
                with pytest.raises(w.expect.unsendable):
                    await root.callRemote("args", Listener(), bad)
                stats = w.client_stats()
                assert stats["pending"] == 0, name
                assert stats["objects"] == 0, name
                assert await root.callRemote("echo", 1) == 1
                assert w.server_stats()["pending"] == 0

    run(main())


# --------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------


def test_referenceable_travels_by_reference(run, wire) -> None:
    async def main() -> None:
        served = Served()
        async with wire(served) as w:
            child = await w.root.callRemote("child")
            assert isinstance(child, pbfast.RemoteReference)
            assert child.broker is w.client
            assert await child.callRemote("inc") == 1
            assert await child.callRemote("inc", by=5) == 6
            assert served.child.value == 6
            # The same object gives the same proxy, within one answer and across answers.
            again = await w.root.callRemote("child")
            assert again is child
            a, b = await w.root.callRemote("child_twice")
            assert a is b is child
            # Sent back to its owner, it is the original object.
            assert await w.root.callRemote("is_child", child) is True
            assert await w.root.callRemote("is_child", x=[child][0]) is True
            assert await w.root.callRemote("is_child", w.root) is False
            # ... and echoed back to us, the same proxy.
            assert await w.root.callRemote("identity", child) is child
            assert w.objects() == 1
            assert w.proxies() == 1

    run(main())


def test_client_referenceable_is_called_back(run, wire) -> None:
    async def main() -> None:
        async with wire(Served()) as w:
            listener = Listener()
            assert await w.root.callRemote("call_back", listener, [1, 2]) == "heard [1, 2]"
            assert await w.root.callRemote("call_back", listener=listener, x="b") == "heard 'b'"
            assert listener.heard == [[1, 2], "b"]
            # The server let go of its proxy: our table empties.
            await eventually(lambda: w.client_stats()["objects"] == 0)
            await eventually(lambda: w.server_stats()["proxies"] == 0)

    run(main())


def test_reference_tables_empty_when_references_are_dropped(run, wire) -> None:
    async def main() -> None:
        served = Served()
        async with wire(served) as w:
            counters = await w.root.callRemote("make", 5)
            assert len({id(c) for c in counters}) == 5
            assert w.objects() == 5
            assert w.proxies() == 5
            assert await counters[3].callRemote("value") == 3
            child = await w.root.callRemote("child")
            await w.root.callRemote("child")
            assert w.objects() == 6
            del counters
            await eventually(lambda: w.objects() == 1)
            assert w.proxies() == 1
            del child
            await eventually(lambda: w.objects() == 0)
            assert w.proxies() == 0
            # The root is not counted and still works; a new child gets a new entry.
            child = await w.root.callRemote("child")
            assert await child.callRemote("value") == 0
            assert w.objects() == 1
            # The other way: the server keeps our object, then lets go of it.
            await w.root.callRemote("keep", Listener())
            assert w.client_stats()["objects"] == 1
            assert w.server_stats()["proxies"] == 1
            await w.root.callRemote("forget")
            await eventually(lambda: w.client_stats()["objects"] == 0)
            assert w.server_stats()["proxies"] == 0

    run(main())


def test_own_object_comes_back_as_itself(run, wire) -> None:
    """The pin rule: our object sent as an argument and echoed back resolves to itself, though
    the server keeps no reference of its own (its proxy dies as soon as the call returns)."""

    async def main() -> None:
        async with wire(Served()) as w:
            root = w.root
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
            await eventually(lambda: w.client_stats()["objects"] == 0)
            await eventually(lambda: w.server_stats()["proxies"] == 0)

    run(main())


def test_own_object_comes_back_after_the_server_proxy_died(run, wire) -> None:
    """The server lets go of its proxy (decref on the way) while its echoing answer is written:
    the answer still names our object, which the pin keeps."""

    class Forgetful(Served):
        async def remote_forget_then_echo(self, x: Any) -> Any:
            luid = x.luid
            broker = x.broker
            kind = type(x)
            del x
            gc.collect()  # the proxy is gone: a decref is queued before our answer
            await asyncio.sleep(0.02)  # ... and sent
            return kind(broker, luid)  # names our object again, by its id

    async def main() -> None:
        async with wire(Forgetful()) as w:
            listener = Listener()
            # A call pins the objects it sent until its answer has been read, on both wires.
            assert await w.root.callRemote("forget_then_echo", listener) is listener
            del listener
            await eventually(lambda: w.client_stats()["objects"] == 0)

    run(main())


def test_max_refs(run, wire) -> None:
    async def main() -> None:
        async with wire(Served(), max_refs=2) as w:
            base = w.expect.root_objects  # a Tub's root takes one of the places
            with pytest.raises(pbfast.RemoteError) as info:
                await w.root.callRemote("make", 3 - base)
            assert "Maximum PB reference count" in info.value.remoteValue
            assert info.value.check(pbfast.LimitExceeded)
            # Nothing was kept from the failed answer, and the connection works.
            assert w.objects() == 0
            two = await w.root.callRemote("make", 2 - base)
            assert [await c.callRemote("value") for c in two] == list(range(2 - base))
            with pytest.raises(pbfast.RemoteError) as info:
                await w.root.callRemote("child")
            assert "Maximum PB reference count" in info.value.remoteValue
            # Already-held objects can be sent again.
            assert await w.root.callRemote("identity", two[0]) is two[0]
            del two
            await eventually(lambda: w.objects() == 0)
            assert await (await w.root.callRemote("child")).callRemote("inc") == 1

    run(main())


@pytest.mark.parametrize("method", ["refused_before", "refused_after"])
def test_failed_reply_releases_the_references_it_carried(run, wire, method, caplog) -> None:
    """A reply that cannot travel (PB: the receiver's jelly policy refuses the class in it; a
    Tub: the sender has no form for it) still gives back every reference it named, wherever in
    the value the failure happened; otherwise the sender keeps those objects for the whole life
    of the connection."""

    async def main() -> None:
        async with wire(Served()) as w:
            if w.wire == "pb":
                with pytest.raises(pbfast.InsecureJelly):
                    await w.root.callRemote(method)
            else:
                with pytest.raises(pbfast.RemoteError) as info:
                    await w.root.callRemote(method)
                assert info.value.check(TypeError)
            assert await w.root.callRemote("echo", 1) == 1
            await eventually(lambda: w.objects() == 0, timeout=0.5)
            assert w.proxies() == 0

    with caplog.at_level(logging.CRITICAL, logger="pbfast"):
        run(main())


@pytest.mark.parametrize("order", ["before", "after"])
def test_failed_arguments_release_the_references_they_carried(run, wire, order, caplog) -> None:
    """The same for a call's arguments (PB: the server refuses them; a Tub: the client cannot
    send them): the client's objects sent among them are released."""

    async def main() -> None:
        async with wire(Served()) as w:
            args = (Listener(), int) if order == "before" else (int, Listener())
            if w.wire == "pb":
                with pytest.raises(pbfast.RemoteError) as info:
                    await w.root.callRemote("args", *args)
                assert info.value.check(pbfast.InsecureJelly)
            else:
                with pytest.raises(TypeError):
                    await w.root.callRemote("args", *args)
            await eventually(lambda: w.client_stats()["objects"] == 0, timeout=0.5)
            assert w.server_stats()["proxies"] == 0

    with caplog.at_level(logging.CRITICAL, logger="pbfast"):
        run(main())


# --------------------------------------------------------------------------------------------
# Lifecycle
# --------------------------------------------------------------------------------------------


def test_close_fails_pending_calls_and_later_calls(run, wire) -> None:
    async def main() -> None:
        served = Served()
        async with wire(served) as w:
            root = w.root
            pending = root.callRemote("wait")
            await eventually(lambda: served.started == 1)
            await w.close_client()
            assert w.client.disconnected
            with pytest.raises(pbfast.PBConnectionLost):
                await pending
            later = root.callRemote("echo", 1)
            with pytest.raises(pbfast.DeadReferenceError):
                await later
            with pytest.raises(pbfast.DeadReferenceError):
                root.callRemoteOnly("echo", 1)
            assert w.client_stats()["pending"] == 0
            await asyncio.wait_for(asyncio.shield(w.server.closed), 5)
            assert w.server.disconnected
            served.gate.set()  # the abandoned remote method finishes; its answer goes nowhere
            await settle()

    run(main())


def test_peer_close_fails_pending_calls(run, wire) -> None:
    async def main() -> None:
        served = Served()
        async with wire(served) as w:
            pending = w.root.callRemote("wait")
            await eventually(lambda: served.started == 1)
            await w.close_server()
            with pytest.raises(pbfast.PBConnectionLost):
                await asyncio.wait_for(pending, 5)
            await asyncio.wait_for(asyncio.shield(w.client.closed), 5)
            assert w.client.disconnected
            with pytest.raises(pbfast.DeadReferenceError):
                await w.root.callRemote("echo", 1)
            served.gate.set()
            await settle()

    run(main())


def test_notify_on_disconnect(run, wire) -> None:
    """Each wire's reference API: PB's (Twisted's) runs ``callback(ref)`` and refuses to undo an
    unknown callback; a Tub's (foolscap's) runs ``callback(*args, **kwargs)``, returns a marker
    that undoes it, and ignores an unknown marker. A connection's own callbacks are the same on
    both."""

    async def main() -> None:
        async with wire(Served()) as w:
            child = await w.root.callRemote("child")
            seen: list[Any] = []
            foolscap = w.expect.foolscap_disconnect_notices

            def notify(ref: Any, callback: Callable[[Any], None]) -> Any:
                """Register ``callback(ref)`` in the wire's own way; what undoes it."""
                if foolscap:
                    return ref.notifyOnDisconnect(callback, ref)
                assert ref.notifyOnDisconnect(callback) is None
                return callback

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

            child_handle = notify(child, on_child)
            removed_handle = notify(child, removed)
            notify(w.root, on_root)
            w.client.notifyOnDisconnect(on_broker)
            w.client.notifyOnDisconnect(never)
            child.dontNotifyOnDisconnect(removed_handle)
            if foolscap:
                child.dontNotifyOnDisconnect(removed_handle)  # already undone: ignored
                w.root.dontNotifyOnDisconnect(child_handle)  # another reference's: ignored
            else:
                with pytest.raises(ValueError):
                    child.dontNotifyOnDisconnect(removed_handle)
                with pytest.raises(ValueError):
                    w.root.dontNotifyOnDisconnect(child_handle)
            w.client.dontNotifyOnDisconnect(never)
            with pytest.raises(ValueError):
                w.client.dontNotifyOnDisconnect(never)
            # notifyOnDisconnect keeps the reference alive until the end.
            child_id = id(child)
            del child
            gc.collect()
            assert seen == []
            await w.close_client()
            assert sorted(s[0] for s in seen) == ["broker", "child", "root"]
            refs = {s[0]: s[1] for s in seen if len(s) == 2}
            assert id(refs["child"]) == child_id
            assert refs["root"] is w.root
            if foolscap:
                # After the end, foolscap runs a new callback soon rather than never.
                late = asyncio.get_running_loop().create_future()
                w.root.notifyOnDisconnect(late.set_result, "late")
                assert await asyncio.wait_for(late, 5) == "late"

    run(main())


def test_cancelled_call_is_abandoned(run, wire, caplog) -> None:
    async def main() -> None:
        served = Served()
        async with wire(served) as w:
            root = w.root
            task = asyncio.ensure_future(root.callRemote("wait"))
            await eventually(lambda: served.started == 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # wait_for's timeout cancels the call the same way.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(root.callRemote("wait"), 0.01)
            served.gate.set()  # both answers now arrive, late
            await eventually(lambda: w.client_stats()["pending"] == 0)
            assert await root.callRemote("echo", "still fine") == "still fine"

    with caplog.at_level(logging.WARNING, logger="pbfast"):
        run(main())
    assert not pbfast_records(caplog, logging.WARNING)


def test_cancelled_call_answer_carrying_references_is_released(run, wire) -> None:
    async def main() -> None:
        served = Served()
        async with wire(served) as w:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(w.root.callRemote("wait_then_make", 3), 0.01)
            served.gate.set()
            await eventually(lambda: w.client_stats()["pending"] == 0)
            # The late answer named three objects; nobody took them: the server forgets them.
            await eventually(lambda: w.objects() == 0)
            assert w.proxies() == 0

    run(main())


def test_remote_method_ending_in_cancelled_error_still_answers(run, wire, caplog) -> None:
    """A remote coroutine that ends with CancelledError (it awaited something that was cancelled)
    must still answer the call: otherwise the caller waits until the connection closes."""

    async def main() -> None:
        async with wire(Served()) as w:
            call = w.root.callRemote("inner_cancelled")
            try:
                with pytest.raises(pbfast.RemoteError) as info:
                    await asyncio.wait_for(asyncio.shield(call), 0.5)
                assert info.value.check("asyncio.exceptions.CancelledError")
            finally:
                call.cancel()
            assert await w.root.callRemote("echo", 1) == 1

    with caplog.at_level(logging.CRITICAL, logger="pbfast"):
        run(main())


def test_options_are_accepted(run, wire) -> None:
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
        async with wire(Served(), **options) as w:
            assert await w.root.callRemote("echo", [1, 2, 3]) == [1, 2, 3]

    run(main())


def test_statistics_have_the_same_names(run, wire) -> None:
    shared = {"objects", "proxies", "cached", "pending", "in_flight", "streams", "backlog", "buffered"}

    async def main() -> None:
        async with wire(Served()) as w:
            assert await w.root.callRemote("echo", 1) == 1
            for stats in (w.client_stats(), w.server_stats()):
                assert set(stats) == shared | w.expect.extra_statistics
                assert all(type(v) is int for v in stats.values())
            assert w.client_stats()["proxies"] == w.expect.root_proxies
            assert w.server_stats()["objects"] == w.expect.root_objects

    run(main())


# --------------------------------------------------------------------------------------------
# What the session's hot path must leave to the broker
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

    def remote_stats(self) -> dict:
        return self.broker.statistics()

    def remote_later(self, x: Any) -> Later:
        return Later(x)

    def remote_call_back(self, ref: Any) -> Any:
        return ref.callRemote("hello", "server")


class Hello(pbfast.Referenceable):
    def remote_hello(self, who: str) -> str:
        return f"hello {who}"


def test_overridden_dispatch_is_respected(run, wire) -> None:
    async def main() -> None:
        root = Dispatching()
        async with wire(root) as w:
            assert await w.root.callRemote("echo", 1) == "echo via dispatch"
            assert await w.root.callRemote("anything") == "anything via dispatch"
            assert root.seen == ["echo", "anything"]

    run(main())


def test_remote_methods_may_use_the_broker_while_it_decodes(run, wire) -> None:
    async def main() -> None:
        root = Reentrant()
        async with wire(root) as w:
            root.broker = w.server
            stats = await w.root.callRemote("stats")
            assert stats["pending"] == 0 and stats["backlog"] == 0
            assert await w.root.callRemote("later", 7) == 7
            assert await w.root.callRemote("call_back", Hello()) == "hello server"

    run(main())


class Gate(Dispatching):
    """One slow call holds the others back (with max_in_flight=1); its own dispatch runs the
    rest."""

    def __init__(self) -> None:
        super().__init__()
        self.open = asyncio.Event()

    def remoteMessageReceived(self, broker: Any, message: str, args: tuple, kw: dict) -> Any:
        if message == "wait":
            return self.open.wait()
        if message == "fail":
            raise Expected("refused by the dispatch")
        return super().remoteMessageReceived(broker, message, args, kw)


def test_held_calls_run_as_they_would_have(run, wire) -> None:
    """Calls that arrive while max_in_flight calls run wait in the backlog; when their turn
    comes they are dispatched exactly as they would have been at once."""

    async def main() -> None:
        gate = Gate()
        async with wire(gate, max_in_flight=1) as w:
            waiting = asyncio.ensure_future(w.root.callRemote("wait"))
            await asyncio.sleep(0.05)
            held = [
                w.root.callRemote("echo", 1),
                w.root.callRemote("fail"),
                w.root.callRemote("other", k=2),
            ]
            await asyncio.sleep(0.05)
            assert w.server_stats()["backlog"] >= 1
            assert not any(h.done() for h in held)
            gate.open.set()
            assert await waiting is True
            results = await asyncio.gather(*held, return_exceptions=True)
            assert results[0] == "echo via dispatch"
            assert isinstance(results[1], pbfast.RemoteError) and "refused by the dispatch" in str(results[1])
            assert results[2] == "other via dispatch"
            assert gate.seen == ["echo", "other"]

    run(main())


class Recorder(pbfast.Referenceable):
    """Plain remote methods (run by the decoder itself) beside one that is not plain."""

    def __init__(self, order: list) -> None:
        self.order = order

    def remote_plain(self, n: int) -> int:
        self.order.append(("plain", n))
        return n

    def remote_later(self, n: int) -> Any:
        self.order.append(("later", n))  # when the call runs, not when its answer is awaited
        return self._later(n)

    async def _later(self, n: int) -> int:
        await asyncio.sleep(0)
        return n

    def remote_raise(self, n: int) -> None:
        self.order.append(("raise", n))
        raise ValueError(n)


class Custom(pbfast.Referenceable):
    """A custom dispatch: the broker runs these calls, not the decoder."""

    def __init__(self, order: list) -> None:
        self.order = order

    def remoteMessageReceived(self, broker: Any, message: str, args: tuple, kw: dict) -> Any:
        self.order.append(("custom", args[0]))
        return args[0]


def test_calls_run_in_order_on_both_paths(run, wire, monkeypatch, caplog) -> None:
    """Plain calls run inside the decoder (the broker's own dispatch never sees them), calls on
    other objects there too (PB) or through the broker (a Tub); pipelined together, they still
    run in the order sent, and each gets its own answer or error."""

    async def main() -> None:
        order: list = []
        served = Served()
        async with wire(served) as w:
            broker_calls: list[str] = []
            handlers = type(w.server)._HANDLERS
            original = handlers[w.expect.call_event]

            def counting(self: Any, event: tuple) -> None:
                broker_calls.append(event[3])
                return original(self, event)

            monkeypatch.setitem(handlers, w.expect.call_event, counting)
            # The server holds references to two objects of ours and calls them: the server
            # side of the connection is our client's end.
            await w.root.callRemote("keep", Recorder(order))
            await w.root.callRemote("keep", Custom(order))
            recorder, custom = served.kept
            broker_calls.clear()
            calls = []
            for n in range(30):
                if n % 10 == 7:
                    calls.append(custom.callRemote("any", n))
                elif n % 10 == 3:
                    calls.append(recorder.callRemote("later", n))
                elif n % 10 == 5:
                    calls.append(recorder.callRemote("raise", n))
                else:
                    calls.append(recorder.callRemote("plain", n))
            results = await asyncio.gather(*calls, return_exceptions=True)
            for n, result in enumerate(results):
                if n % 10 == 5:
                    assert isinstance(result, pbfast.RemoteError) and result.check(ValueError), result
                else:
                    assert result == n
            assert [n for _, n in order] == list(range(30))
            if w.expect.decoder_runs_every_call:
                assert broker_calls == []
            else:
                # Only the custom calls (and plain ones behind one in the same chunk) reached
                # the broker's dispatch; most plain ones never did.
                assert "any" in broker_calls and broker_calls.count("plain") < 18, broker_calls
            recorder.callRemoteOnly("plain", 99)
            assert await recorder.callRemote("plain", 100) == 100
            assert order[-2:] == [("plain", 99), ("plain", 100)]

    with caplog.at_level(logging.CRITICAL, logger="pbfast"):
        run(main())


class OwnDispatch(pbfast.Referenceable):
    """Dispatches its calls itself, and notes the broker it is given."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, str]] = []

    def remoteMessageReceived(self, broker: Any, message: str, args: tuple, kw: dict) -> Any:
        self.seen.append((broker, message))
        if message == "fail":
            raise Expected("refused by its own dispatch")
        return [message, *args]


class ItsOwnPerspective(pbfast.Referenceable):
    """The default dispatch, but a perspective of its own (which only PB has)."""

    def remote_echo(self, x: Any) -> Any:
        return x

    def serializingPerspective(self) -> Any:
        return None


def doubled(x: int) -> int:
    return 2 * x


class DispatchCases(pbfast.Root):
    """The root of `test_every_call_is_dispatched_by_the_decoder`: every kind of target."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.own = OwnDispatch()
        self.perspective = ItsOwnPerspective()

    def remote_wait(self) -> Any:
        return self.gate.wait()

    def remote_echo(self, x: Any) -> Any:
        return x

    def remote_fail(self) -> None:
        raise Expected("plain failure")

    def remote_targets(self, wire: str) -> list:
        # A Tub sends a function as a callable reference (PB cannot send one).
        return [self.own, self.perspective, doubled if wire == "tub" else None]


def test_copies_are_checked_against_their_state_schema(run, wire) -> None:
    """A `RemoteCopy` with a ``stateSchema`` is made only from a state that meets it: a copy
    that violates it fails the message that carried it (an argument: that call, at the caller;
    an answer: that call's result), and nothing else."""

    async def main() -> None:
        async with wire(Served()) as w:
            assert list(await w.root.callRemote("point_x", StatePoint(1))) == ["RemoteStatePoint", 1]
            why = "the state of a example.pbfast/wires-test/StatePoint copy.x: 'a' is not an integer"
            with pytest.raises(pbfast.errors.RemoteViolation) as info:
                await w.root.callRemote("point_x", StatePoint("a"))
            assert info.value.check(pbfast.Violation) and why in str(info.value)
            with pytest.raises(pbfast.Violation, match=why):
                await w.root.callRemote("point", "a")
            assert (await w.root.callRemote("point", 2)).x == 2

    run(main())


def test_calls_are_checked_against_the_remote_interface(run, wire) -> None:
    """An object that declares a `RemoteInterface` has each call checked before its method runs
    (violating arguments, or a method the interface lacks, fail that call with a Violation and
    the connection goes on), and its results before they are sent. On a Tub, which names the
    interface with the reference, a client that defines it too checks its own calls before
    sending them."""

    async def main() -> None:
        root = Served()
        async with wire(root) as w:
            shelf = await w.root.callRemote("shelf")
            served = root.shelf
            assert await shelf.callRemote("put", b"k", 1) is True
            assert shelf.remote_interface_name == (RIShelf.__remote_name__ if w.wire == "tub" else None)

            def refused_here(e: BaseException) -> bool:
                """A Violation at the caller either way: its own check's (a Tub, which knows the
                interface), or the server's refusal (PB), which is a RemoteError too."""
                if not isinstance(e, pbfast.Violation):
                    return False
                return isinstance(e, pbfast.RemoteError) is (w.wire == "pb")

            for args, kwargs, why in [
                ((b"123456789",), {}, "too long: 9 bytes, at most 8 allowed"),
                (("text",), {}, "is not a byte string"),
                ((b"k",), {"value": "x"}, "'x' is not an integer"),
                ((b"k",), {"colour": 1}, "unknown argument 'colour'"),
                ((), {}, "missing required argument 'key'"),
            ]:
                with pytest.raises(pbfast.PbfastError) as info:
                    await shelf.callRemote("put", *args, **kwargs)
                assert refused_here(info.value), info.value
                assert why in str(info.value)
                assert "RIShelf.wires-test.pbfast.example.put" in str(info.value)
            with pytest.raises(pbfast.PbfastError) as info:
                await shelf.callRemote("undeclared")
            assert refused_here(info.value) and "has no method 'undeclared'" in str(info.value)
            assert served.ran == ["put"]  # none of the refused calls ran

            # The server checks too, whoever calls: past the client's checks, straight to the
            # object, the same calls are refused by the server (foolscap's Violation on a Tub).
            with pytest.raises(pbfast.errors.RemoteViolation) as info:
                await w.client.call(shelf.luid, "put", (b"123456789",), {})
            assert info.value.check(pbfast.Violation) and "too long: 9 bytes" in str(info.value)
            with pytest.raises(pbfast.errors.RemoteViolation) as info:
                await w.client.call(shelf.luid, "undeclared", (), {})
            assert info.value.check(pbfast.Violation)
            # Results are checked before they are sent, awaited ones too.
            for method in ("broken", "broken_later"):
                with pytest.raises(pbfast.errors.RemoteViolation) as info:
                    await w.client.call(shelf.luid, method, (), {})
                assert info.value.check(pbfast.Violation), info.value
                assert f"the result of RIShelf.wires-test.pbfast.example.{method}" in str(info.value)
            assert served.ran == ["put", "broken", "broken_later"]
            assert await shelf.callRemote("put", b"again") is True  # the connection goes on

    run(main())


@pytest.mark.parametrize("held", [False, True], ids=["at-once", "held"])
def test_every_call_is_dispatched_by_the_decoder(run, wire, monkeypatch, held) -> None:
    """Every kind of call — a plain method, a missing one, an object's own dispatch, an unknown
    object, and on a Tub its own methods (clid 0) and a callable (a negative clid) — runs in
    the decoder: at once as it is read (the broker never sees the call), or, held back while a
    call runs (max_in_flight=1), later through the decoder's `run`, in order. Either way the
    results and errors are the same, the wire's own."""

    async def main() -> None:
        root = DispatchCases()
        async with wire(root, max_in_flight=1) as w:
            own, perspective, function = await w.root.callRemote("targets", w.wire)
            ghost = type(w.root)(w.client, 4242)
            seen: list[str] = []
            handlers = type(w.server)._HANDLERS
            original = handlers[w.expect.call_event]

            def counting(self: Any, event: tuple) -> None:
                if self is w.server:
                    seen.append(event[3])
                return original(self, event)

            monkeypatch.setitem(handlers, w.expect.call_event, counting)
            decoder = w.server._session = CountingSession(w.server._session)

            waiting = None
            if held:
                waiting = asyncio.ensure_future(w.root.callRemote("wait"))
                await eventually(lambda: w.server_stats()["in_flight"] == 1)
            cases = {
                "echo": w.root.callRemote("echo", 1),
                "fail": w.root.callRemote("fail"),
                "missing": w.root.callRemote("missing", 2),
                "own": own.callRemote("anything", 3),
                "own-fail": own.callRemote("fail"),
                "perspective": perspective.callRemote("echo", 4),
                "perspective-missing": perspective.callRemote("missing"),
                "unknown-object": ghost.callRemote("anything"),
            }
            if w.wire == "tub":
                cases["callable"] = function.callRemote("ignored", 5)
                cases["tub-method"] = w.client.call(0, "getReferenceByName", (), {"name": b"root"})
                cases["tub-missing"] = w.client.call(0, "missing", (), {})
            names = {
                "missing": "missing",
                "own": "anything",
                "own-fail": "fail",
                "perspective": "echo",
                "perspective-missing": "missing",
                "unknown-object": "anything",
                "callable": "ignored",
                "tub-method": "getReferenceByName",
                "tub-missing": "missing",
            }
            sent = [names.get(case, case) for case in cases]
            if held:
                await eventually(lambda: w.server_stats()["backlog"] == len(cases))
                assert not any(call.done() for call in cases.values())
                root.gate.set()
                assert await waiting is True
            answers = await asyncio.gather(*cases.values(), return_exceptions=True)
            results = dict(zip(cases, answers, strict=True))

            assert results["echo"] == 1
            assert isinstance(results["fail"], pbfast.RemoteError)
            assert results["fail"].remoteValue == "plain failure"
            for case, cls in [("missing", "DispatchCases"), ("perspective-missing", "ItsOwnPerspective")]:
                error = results[case]
                assert isinstance(error, pbfast.RemoteError), (case, error)
                assert error.remoteType == w.expect.no_method_type
                assert error.remoteValue == w.expect.no_method_value(cls, "missing")
            assert results["own"] == ["anything", 3]
            assert isinstance(results["own-fail"], pbfast.RemoteError)
            assert results["own-fail"].remoteValue == "refused by its own dispatch"
            assert [(broker is w.server, name) for broker, name in root.own.seen] == [
                (True, "anything"),
                (True, "fail"),
            ]
            assert results["perspective"] == 4
            error = results["unknown-object"]
            assert isinstance(error, pbfast.RemoteError)
            assert error.remoteType == w.expect.no_object_type
            assert error.remoteValue == w.expect.no_object_value(4242)
            if w.wire == "tub":
                assert results["callable"] == 10
                assert results["tub-method"] is w.root
                error = results["tub-missing"]
                assert isinstance(error, pbfast.RemoteError) and error.check(AttributeError)
                assert error.remoteValue == "the Tub has no method 'missing'"

            if held:
                # Held back, each call came to the broker as an event, and ran in the decoder.
                assert seen == sent
                assert decoder.ran == sent
            elif w.expect.decoder_runs_every_call:
                assert seen == [] and decoder.ran == []
            w.server._session = decoder.real

    run(main())
