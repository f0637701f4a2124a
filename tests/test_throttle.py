"""Login throttling per source address (`pbfast.Portal(..., throttle=True)`).

`LoginThrottle`'s arithmetic on a clock the tests move by hand; its per-connection queues on a
real loop; then sustained password guessing from 127.0.0.1 over several TCP connections, against
a portal served in this process and against a ``pbfast serve`` subprocess: the attempts checked
per second, how long a right password takes to get in meanwhile, and the call latency of a
client already logged in. The figures are printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pbfast
import pbfast.cred
import pbfast.testing
import pytest
from connections import eventually, pbfast_records, settle
from pbfast._throttle import LoginQueue, LoginThrottle
from servers import ServeProcess
from throttle_portal import portal as make_portal

ADDRESS = "192.0.2.1"
OTHER = "198.51.100.7"
TESTS = Path(__file__).resolve().parent
LISTEN = "tcp:port=0:interface=127.0.0.1"

# The attack: this many connections, each with this many guesses in flight, for this long.
CONNECTIONS, IN_FLIGHT, SECONDS = 4, 2, 3.0


def attempt_at(throttle: LoginThrottle, address: str, now: float) -> float:
    """Charge one attempt from `address` at `now`; the time it may be checked at."""
    source = throttle.enter(address, now)
    try:
        return throttle.reserve(source, now)
    finally:
        throttle.leave(source)


def throttled_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in pbfast_records(caplog, logging.WARNING) if "throttled" in r.getMessage()]


# --------------------------------------------------------------------------------------------
# The arithmetic, on a hand-moved clock
# --------------------------------------------------------------------------------------------


def test_a_burst_then_one_slot_per_interval(caplog) -> None:
    throttle = LoginThrottle(rate=5, burst=5)
    with caplog.at_level(logging.DEBUG, logger="pbfast"):
        starts = [attempt_at(throttle, ADDRESS, 0.0) for _ in range(8)]
    assert starts == pytest.approx([0, 0, 0, 0, 0, 0.2, 0.4, 0.6])
    # Logged once, when the address first had to wait.
    assert throttled_warnings(caplog) == [f"login attempts from {ADDRESS} throttled to 5/s after 5 failures"]


def test_sustained_attempts_stay_at_the_rate() -> None:
    """An address that tries again the moment it may, for 100 s: burst + 100 s × rate."""
    throttle = LoginThrottle(rate=5, burst=5)
    now, checked = 0.0, 0
    while now < 100.0:
        now = attempt_at(throttle, ADDRESS, now)
        checked += now < 100.0
    assert checked == pytest.approx(5 + 100 * 5, abs=1)


def test_an_address_that_stops_failing_is_soon_free_again() -> None:
    throttle = LoginThrottle(rate=5, burst=5)
    starts = [attempt_at(throttle, ADDRESS, 0.0) for _ in range(7)]
    assert starts[-1] == pytest.approx(0.4)  # it owes slots until 1.4
    # Part way through its debt, a shorter wait.
    assert attempt_at(throttle, ADDRESS, 0.5) == pytest.approx(0.6)
    # burst / rate seconds after its last slot, the full burst again.
    free_at = 0.6 + 5 / 5
    starts = [attempt_at(throttle, ADDRESS, free_at) for _ in range(6)]
    assert starts == pytest.approx([free_at] * 5 + [free_at + 0.2])


def test_successes_give_their_slot_back() -> None:
    throttle = LoginThrottle(rate=5, burst=5)
    for _ in range(100):  # an address that only ever logs in is never throttled
        source = throttle.enter(ADDRESS, 0.0)
        assert throttle.reserve(source, 0.0) == 0.0
        throttle.leave(source)
        throttle.refund(source, 0.0)
    assert len(throttle) == 0  # and leaves nothing behind
    # Four failures and a success leave one free attempt.
    for _ in range(4):
        attempt_at(throttle, ADDRESS, 0.0)
    source = throttle.enter(ADDRESS, 0.0)
    throttle.reserve(source, 0.0)
    throttle.leave(source)
    throttle.refund(source, 0.0)
    assert attempt_at(throttle, ADDRESS, 0.0) == 0.0
    assert attempt_at(throttle, ADDRESS, 0.0) == pytest.approx(0.2)


def test_addresses_are_throttled_apart() -> None:
    throttle = LoginThrottle(rate=5, burst=5)
    for _ in range(20):
        attempt_at(throttle, ADDRESS, 0.0)
    assert attempt_at(throttle, ADDRESS, 0.0) == pytest.approx(3.2)
    assert [attempt_at(throttle, OTHER, 0.0) for _ in range(5)] == [0.0] * 5


def test_the_table_of_addresses_is_bounded() -> None:
    throttle = LoginThrottle(rate=5, burst=1, max_addresses=3, forget_after=60)
    for n in range(10):
        attempt_at(throttle, f"10.0.0.{n}", 0.0)
        attempt_at(throttle, f"10.0.0.{n}", 0.0)  # waits: each address is throttled
    assert len(throttle) == 3
    assert attempt_at(throttle, "10.0.0.9", 0.0) == pytest.approx(0.4)  # the newest are kept
    assert attempt_at(throttle, "10.0.0.0", 0.0) == 0.0  # the oldest forgotten
    # An address is remembered `forget_after` seconds past its last slot (so its throttling
    # is logged once), then forgotten.
    throttle = LoginThrottle(rate=5, burst=1, forget_after=60)
    attempt_at(throttle, ADDRESS, 0.0)
    attempt_at(throttle, ADDRESS, 0.0)  # owes slots until 0.4
    attempt_at(throttle, OTHER, 0.0)  # owes a slot until 0.2
    attempt_at(throttle, "10.0.0.1", 30.0)
    assert len(throttle) == 3
    attempt_at(throttle, "10.0.0.2", 61.0)
    assert len(throttle) == 2  # 10.0.0.1 and 10.0.0.2


def test_waiting_attempts_are_bounded_per_address() -> None:
    throttle = LoginThrottle(rate=5, burst=1, max_waiting=3)
    waiting = [throttle.enter(ADDRESS, 0.0) for _ in range(3)]
    due = waiting[0].due
    with pytest.raises(pbfast.UnauthorizedLogin, match=f"too many login attempts are waiting from {ADDRESS}"):
        throttle.enter(ADDRESS, 0.0)
    assert waiting[0].due == due  # refused unchecked: not charged
    throttle.enter(OTHER, 0.0)  # other addresses are not affected
    throttle.leave(waiting[0])
    throttle.enter(ADDRESS, 0.0)


def test_bad_settings() -> None:
    for settings in ({"rate": 0}, {"burst": 0}, {"max_waiting": 0}, {"max_addresses": 0}):
        with pytest.raises(ValueError):
            LoginThrottle(**settings)


@pytest.mark.parametrize(
    "peer, address",
    [
        (("127.0.0.1", 50000), "127.0.0.1"),
        (("::1", 50000, 0, 0), "::1"),
        (("fe80::1%eth0", 50000, 0, 2), "fe80::1"),
        (("::ffff:192.0.2.1", 50000, 0, 0), "192.0.2.1"),  # one client, whichever socket it used
        ("", "local"),  # an unnamed unix socket
        (None, "local"),
        ("memory:server", "memory:server"),
    ],
)
def test_the_source_address_of_a_connection(peer: Any, address: str) -> None:
    class Transport:
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return peer if name == "peername" else default

    class Broker:
        transport = Transport()

    assert pbfast.cred._source_address(Broker()) == address


# --------------------------------------------------------------------------------------------
# Queues of attempts, on a real loop
# --------------------------------------------------------------------------------------------


def refusal(name: str, order: list[str]) -> Any:
    async def check() -> None:
        order.append(name)
        raise pbfast.UnauthorizedLogin("wrong username or password")

    return check


def test_connections_take_turns(run) -> None:
    """A connection's attempts seek slots one at a time, so another connection's attempt is
    checked after at most one of theirs; past its bound a connection's attempt is refused."""

    async def main() -> None:
        throttle = LoginThrottle(rate=20, burst=1, max_waiting_per_connection=3)
        first, second = LoginQueue(), LoginQueue()
        order: list[str] = []
        tasks = [
            asyncio.ensure_future(throttle.attempt(ADDRESS, first, refusal(f"a{n}", order))) for n in range(4)
        ]
        await asyncio.sleep(0)
        assert order == ["a0"]  # in the burst: checked at once; a1..a3 wait
        with pytest.raises(pbfast.UnauthorizedLogin, match="waiting on this connection"):
            await throttle.attempt(ADDRESS, first, refusal("a4", order))
        tasks.append(asyncio.ensure_future(throttle.attempt(ADDRESS, second, refusal("b0", order))))
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, pbfast.UnauthorizedLogin) for r in results)
        assert order == ["a0", "a1", "b0", "a2", "a3"]
        # A success is answered, and gives its slot back.
        due = throttle._sources[ADDRESS].due

        async def success() -> str:
            return "avatar"

        assert await throttle.attempt(ADDRESS, second, success) == "avatar"
        assert throttle._sources[ADDRESS].due == pytest.approx(due)

    run(main())


def test_a_lost_connection_ends_its_waits(run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        throttle = LoginThrottle(rate=1, burst=1)
        queue = LoginQueue()
        order: list[str] = []
        tasks = [
            asyncio.ensure_future(throttle.attempt(ADDRESS, queue, refusal(f"a{n}", order))) for n in range(3)
        ]
        await asyncio.sleep(0.01)
        started = loop.time()
        queue.close()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert loop.time() - started < 0.5  # not the 1 s and 2 s the slots were
        assert order == ["a0"]
        assert [str(r) for r in results[1:]] == ["the connection was lost while the login attempt waited"] * 2
        assert throttle._sources[ADDRESS].waiting == 0
        with pytest.raises(pbfast.UnauthorizedLogin, match="connection was lost"):
            await throttle.attempt(ADDRESS, queue, refusal("late", order))

    run(main())


# --------------------------------------------------------------------------------------------
# Logins over a connection
# --------------------------------------------------------------------------------------------


def test_anonymous_refusals_are_throttled_and_a_password_still_gets_in(run, caplog) -> None:
    """Over the in-memory pair (whose connections share one key): anonymous logins a portal
    refuses count as failures; once throttled, a right password waits its turn, then gets in."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        portal = make_portal()
        checker = portal.checkers[0]
        root, _ = await pbfast.testing.connected_pair(portal)
        for _ in range(7):
            with pytest.raises(pbfast.RemoteError) as info:
                await root.callRemote("loginAnonymous", None)
            assert info.value.check(pbfast.UnauthorizedLogin)
        gaps = [b - a for a, b in zip(checker.checked, checker.checked[1:], strict=False)]
        assert max(gaps[:4]) < 0.1 and min(gaps[4:]) > 0.15
        challenge, challenger = await root.callRemote("login", b"alice")
        started = loop.time()
        avatar = await challenger.callRemote("respond", pbfast.cred.respond(challenge, "secret"), None)
        assert 0.15 < loop.time() - started < 2
        assert await avatar.callRemote("whoami") == "alice"
        await root.broker.close()

    with caplog.at_level(logging.DEBUG, logger="pbfast"):
        run(main())
    assert throttled_warnings(caplog) == [
        "login attempts from memory:server throttled to 5/s after 5 failures"
    ]


def test_without_throttle_attempts_are_checked_at_once(run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        portal = make_portal(throttle=False)
        checker = portal.checkers[0]
        async with await pbfast.serve(portal, LISTEN) as server:
            async with pbfast.connect(f"tcp:host=127.0.0.1:port={server.port}", timeout=5) as root:
                started = loop.time()
                for n in range(50):
                    challenge, challenger = await root.callRemote("login", b"alice")
                    with pytest.raises(pbfast.RemoteError):
                        await challenger.callRemote("respond", pbfast.cred.respond(challenge, str(n)), None)
                elapsed = loop.time() - started
        assert len(checker.checked) == 50
        print(f"\nthrottle=False: 50 wrong passwords over one connection in {elapsed * 1000:.0f} ms")
        assert 50 / elapsed > 25, elapsed  # far above the throttle's 5/s

    run(main())


class Guessing:
    """Password guessing for alice: `connections` connections to `endpoint`, each keeping
    `in_flight` attempts under way all the time."""

    def __init__(self, endpoint: str, connections: int, in_flight: int) -> None:
        self.endpoint = endpoint
        self.connections = connections
        self.in_flight = in_flight
        self.checked: list[float] = []  # when each refusal of a wrong password came back
        self.turned_away: list[str] = []  # refusals of attempts that were not checked
        self._roots: list[pbfast.RemoteReference] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for _ in range(self.connections):
            self._roots.append(await pbfast.connect(self.endpoint, timeout=5))
        for root in self._roots:
            for _ in range(self.in_flight):
                self._tasks.append(asyncio.ensure_future(self._guess(root)))

    async def _guess(self, root: pbfast.RemoteReference) -> None:
        loop = asyncio.get_running_loop()
        n = 0
        while True:
            n += 1
            try:
                challenge, challenger = await root.callRemote("login", b"alice")
                await challenger.callRemote("respond", pbfast.cred.respond(challenge, f"guess {n}"), None)
            except pbfast.RemoteError as e:
                assert e.check(pbfast.UnauthorizedLogin), e
                if "wrong username or password" in str(e.remoteValue):
                    self.checked.append(loop.time())
                else:
                    self.turned_away.append(str(e.remoteValue))
            except (pbfast.PBConnectionLost, pbfast.DeadReferenceError):
                return
            else:
                raise AssertionError("a guess got in")

    async def stop(self) -> None:
        for root in self._roots:
            await root.broker.close()
        await asyncio.gather(*self._tasks)


async def under_attack(endpoint: str) -> dict[str, Any]:
    """Guess alice's password from 127.0.0.1 over `CONNECTIONS` connections for `SECONDS`,
    while bob (logged in before) calls his avatar's echo, and alice logs in with her password
    one second in. Figures: checked attempts a second, alice's login time, bob's latencies."""
    loop = asyncio.get_running_loop()
    bob = await pbfast.login(endpoint, pbfast.UsernamePassword("bob", "hunter2"), timeout=5)
    guessing = Guessing(endpoint, CONNECTIONS, IN_FLIGHT)
    await guessing.start()
    started = loop.time()
    latencies: list[float] = []

    async def echo() -> None:
        n = 0
        while loop.time() < started + SECONDS:
            n += 1
            sent = time.perf_counter()
            assert await bob.callRemote("echo", n) == n
            latencies.append(time.perf_counter() - sent)
            await asyncio.sleep(0.002)

    echoing = asyncio.ensure_future(echo())
    try:
        await asyncio.sleep(1.0)
        asked = loop.time()
        alice = await pbfast.login(endpoint, pbfast.UsernamePassword("alice", "secret"), timeout=10)
        login_time = loop.time() - asked
        assert await alice.callRemote("whoami") == "alice"
        await echoing
        await alice.broker.close()
    finally:
        echoing.cancel()
        await guessing.stop()
        await bob.broker.close()
    latencies.sort()
    checked = [t for t in guessing.checked if started <= t < started + SECONDS]
    return {
        "checked_per_second": len(checked) / SECONDS,
        "turned_away": guessing.turned_away,
        "login_time": login_time,
        "echo_calls": len(latencies),
        "echo_p50": latencies[len(latencies) // 2],
        "echo_p99": latencies[int(len(latencies) * 0.99)],
    }


def check_figures(figures: dict[str, Any], where: str) -> None:
    print(
        f"\n{where}: {CONNECTIONS} connections x {IN_FLIGHT} guesses in flight for {SECONDS:g} s: "
        f"{figures['checked_per_second']:.1f} checked attempts/s; the right password got in after "
        f"{figures['login_time'] * 1000:.0f} ms; {figures['echo_calls']} echo calls meanwhile, "
        f"p50 {figures['echo_p50'] * 1000:.2f} ms, p99 {figures['echo_p99'] * 1000:.2f} ms"
    )
    assert figures["checked_per_second"] < 10
    assert figures["checked_per_second"] > 3  # throttled, not stopped
    assert figures["turned_away"] == []  # within the bounds: every attempt waited its turn
    assert figures["login_time"] < 3
    assert figures["echo_calls"] > 100
    assert figures["echo_p99"] < 0.05


@pytest.mark.slow  # a guessing attack: run once, not again on uvloop
def test_guessing_over_several_connections_is_throttled(run, caplog) -> None:
    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        portal = make_portal()
        checker = portal.checkers[0]
        async with await pbfast.serve(portal, LISTEN) as server:
            started = loop.time()
            figures = await under_attack(f"tcp:host=127.0.0.1:port={server.port}")
            # The server's own count agrees (the attack starts after bob's login and the connections).
            in_window = [t for t in checker.checked if started <= t < started + SECONDS + 0.5]
            assert len(in_window) / SECONDS < 10 + 5 / SECONDS
            await eventually(lambda: not server.brokers)
            await settle()
        return figures

    with caplog.at_level(logging.DEBUG, logger="pbfast"):
        figures = run(main())
    check_figures(figures, "in-process")
    assert throttled_warnings(caplog) == ["login attempts from 127.0.0.1 throttled to 5/s after 5 failures"]


@pytest.mark.slow  # a guessing attack: run once, not again on uvloop
def test_guessing_against_a_server_process(run) -> None:
    with ServeProcess("--object", "throttle_portal:portal", LISTEN) as server:
        figures = run(under_attack(server.address))
        code, stderr = server.stop()
    assert code == 0, stderr
    check_figures(figures, "pbfast serve process")
    assert "Traceback" not in stderr
    warnings = [line for line in stderr.splitlines() if "throttled" in line]
    assert warnings == ["login attempts from 127.0.0.1 throttled to 5/s after 5 failures"]
