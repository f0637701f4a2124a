"""Throttling failed logins per source address, for `pbfast.Portal`.

Each address has a schedule of *checked* attempts, kept with the generic cell rate algorithm:
every attempt is charged one slot (``1 / rate`` seconds) when it is given its turn, and one
that does not fail gets its slot back. An address may run `burst` slots ahead of the clock; past
that, each further attempt from it, right or wrong, waits for the next free slot before its
credentials are looked at (so how long an answer takes does not tell a wrong password from a
right one). Failed attempts from one address are thus checked at no more than `rate` a
second in the long run, however many connections they come over, and an address that stops
failing has its whole burst back ``burst / rate`` seconds after its last slot.

Fairness between connections: each connection seeks one slot at a time (its other attempts
queue behind that one), so an attempt on a new connection waits behind at most one attempt of
every other connection from its address, not behind all of their queued attempts.

Everything a client controls is bounded: the attempts waiting per connection and per address
(past either bound an attempt is refused at once, unchecked) and the addresses tracked (an
address is forgotten a while after it stops owing slots, or sooner, least recently used first,
when too many are tracked).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .errors import UnauthorizedLogin

__all__ = ["LoginQueue", "LoginThrottle"]

log = logging.getLogger("pbfast")
T = TypeVar("T")


class _Source:
    """The schedule of one source address."""

    __slots__ = ("address", "due", "waiting", "warned")

    def __init__(self, address: str, now: float) -> None:
        self.address = address
        # The theoretical arrival time: when the slots charged so far are all used up. The
        # address owes nothing while ``due <= now``.
        self.due = now
        self.waiting = 0  # attempts entered, not yet checked
        self.warned = False  # the throttling of this address has been logged


class LoginQueue:
    """The login attempts waiting on one connection: one of them at a time seeks a slot in its
    address's schedule, the others wait behind it. `close` (when the connection is lost) ends
    their waits at once, unchecked."""

    __slots__ = ("turn", "waiting", "closed", "_sleepers")

    def __init__(self) -> None:
        self.turn = asyncio.Lock()
        self.waiting = 0
        self.closed = False
        self._sleepers: set[asyncio.Future[None]] = set()

    async def sleep(self, delay: float) -> None:
        """Wait `delay` seconds.

        Raises:
            UnauthorizedLogin: the queue is closed, or is closed meanwhile.
        """
        if self.closed:
            raise _lost()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(delay, _wake, waiter)
        self._sleepers.add(waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._sleepers.discard(waiter)

    def close(self) -> None:
        """End every wait: the attempts are refused unchecked, and so is any later one."""
        self.closed = True
        for waiter in self._sleepers:
            if not waiter.done():
                waiter.set_exception(_lost())


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _lost() -> UnauthorizedLogin:
    return UnauthorizedLogin("the connection was lost while the login attempt waited")


class LoginThrottle:
    """Paces the checking of login attempts per source address (see the module's docstring).

    Args:
        rate: checked failures a second an address is held to, once throttled.
        burst: failures an address may make at once before it is throttled.
        max_waiting: attempts that may wait per address; more are refused at once.
        max_waiting_per_connection: attempts that may wait per connection; more are refused
            at once.
        max_addresses: addresses tracked at most; past it the least recently used is forgotten.
        forget_after: seconds an address is remembered after it has stopped owing slots (its
            throttling is logged once while it is remembered).
    """

    def __init__(
        self,
        *,
        rate: float = 5.0,
        burst: int = 5,
        max_waiting: int = 32,
        max_waiting_per_connection: int = 4,
        max_addresses: int = 10_000,
        forget_after: float = 60.0,
    ) -> None:
        if rate <= 0 or burst < 1 or max_waiting < 1 or max_waiting_per_connection < 1 or max_addresses < 1:
            raise ValueError("rate, burst and the bounds of a LoginThrottle must be positive")
        self.rate = rate
        self.burst = burst
        self.interval = 1.0 / rate
        self.max_waiting = max_waiting
        self.max_waiting_per_connection = max_waiting_per_connection
        self.max_addresses = max_addresses
        self.forget_after = forget_after
        # How far ahead of the clock an address's schedule may run before it waits.
        self._tolerance = (burst - 1) * self.interval
        self._sources: OrderedDict[str, _Source] = OrderedDict()  # least recently used first

    def __len__(self) -> int:
        """How many addresses are tracked."""
        return len(self._sources)

    async def attempt(self, address: str, queue: LoginQueue, check: Callable[[], Awaitable[T]]) -> T:
        """Run `check` (a login attempt from `address`, on the connection `queue` belongs to)
        once its address's schedule has a slot for it.

        The attempt is charged a slot, given back unless `check` raises `UnauthorizedLogin`.
        Waiting is asynchronous: nothing else waits for it.

        Raises:
            UnauthorizedLogin: from `check`; or, unchecked, when too many attempts are waiting
                from `address` or on the connection (at once), or when the connection is lost
                while the attempt waits (`LoginQueue.close`).
        """
        loop = asyncio.get_running_loop()
        if queue.waiting >= self.max_waiting_per_connection:
            raise UnauthorizedLogin("too many login attempts are waiting on this connection")
        source = self.enter(address, loop.time())
        queue.waiting += 1
        try:
            async with queue.turn:
                if queue.closed:
                    raise _lost()
                start = self.reserve(source, loop.time())
                delay = start - loop.time()
                if delay > 0:
                    await queue.sleep(delay)
        finally:
            queue.waiting -= 1
            self.leave(source)
        try:
            result = await check()
        except UnauthorizedLogin:
            raise
        except BaseException:
            self.refund(source, loop.time())
            raise
        self.refund(source, loop.time())
        return result

    # The arithmetic, with the time passed in (`attempt` passes the loop's clock).

    def enter(self, address: str, now: float) -> _Source:
        """Count an attempt from `address` as waiting; its schedule.

        Raises:
            UnauthorizedLogin: too many attempts are waiting from `address` already.
        """
        self._forget(now)
        source = self._sources.get(address)
        if source is None:
            while len(self._sources) >= self.max_addresses:
                self._sources.popitem(last=False)
            source = self._sources[address] = _Source(address, now)
        else:
            self._sources.move_to_end(address)
        if source.waiting >= self.max_waiting:
            raise UnauthorizedLogin(f"too many login attempts are waiting from {address}")
        source.waiting += 1
        return source

    def reserve(self, source: _Source, now: float) -> float:
        """Charge `source` one slot; the time the attempt may be checked at (`now` or later).
        The first time an address has to wait, a warning is logged."""
        start = max(now, source.due - self._tolerance)
        source.due = max(source.due, now) + self.interval
        if start > now and not source.warned:
            source.warned = True
            log.warning(
                "login attempts from %s throttled to %g/s after %d failures",
                source.address,
                self.rate,
                self.burst,
            )
        return start

    def leave(self, source: _Source) -> None:
        """The attempt is no longer waiting (it is being checked, or it was given up)."""
        source.waiting -= 1

    def refund(self, source: _Source, now: float) -> None:
        """Give back the slot of an attempt that did not fail; an address that then owes
        nothing, waits for nothing and was never throttled is forgotten at once."""
        source.due -= self.interval
        if (
            source.due <= now
            and not source.waiting
            and not source.warned
            and self._sources.get(source.address) is source
        ):
            del self._sources[source.address]

    def _forget(self, now: float) -> None:
        """Forget the least recently used addresses that have owed nothing for `forget_after`."""
        sources = self._sources
        while sources:
            source = next(iter(sources.values()))
            if source.waiting or now < source.due + self.forget_after:
                break
            sources.popitem(last=False)
