"""What travels with a call between pbfast peers, besides its arguments: its cancellation, its
deadline, and the call options that carry the deadline (docs/extensions.md).

- Cancellation (the ``cancel`` extension): the future of a call to a peer that speaks it is a
  `CallFuture`, whose ``cancel()`` tells the connection; the connection sends the peer the
  request ids cancelled in one control call, and the peer cancels those calls' tasks.
- Call options (the ``options`` extension): a call made while options apply (a deadline, or what
  a feature registers with `register_option`) goes as the control call ``call``, which carries
  them; calls without options keep the plain call and its fast path.
- Deadlines: `deadline` sets one for the code it wraps (also a local timeout), and a remote method
  called with one runs under it (`current_deadline`; its task is cancelled when it passes), so the
  calls it makes in turn carry what is left of it.

Options are gathered on the caller's side by `gather_options` (each registered option's
``gather()`` says what to send, from the caller's context variables) and applied on the callee's
by `apply_options` (each option's ``apply(value)`` sets the context variables the remote method
sees, for the time the call is started; tasks it starts copy them).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import math
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any, ClassVar, Protocol

from .errors import Error, RemoteError

__all__ = [
    "CANCEL",
    "CANCELLED",
    "CallFuture",
    "DEADLINE",
    "DEADLINE_PASSED",
    "OPTIONS",
    "OptionsCall",
    "apply_options",
    "current_deadline",
    "deadline",
    "future_class",
    "gather_options",
    "options_in_use",
    "register_option",
]

# The extensions (see docs/extensions.md).
CANCEL = "cancel"
OPTIONS = "options"

# How far before our own deadline a peer's answer that it passed is taken for ours passing (the
# peer's timer may fire first: timers tick in milliseconds on some loops).
_CLOCKS_APART = 0.05

# Why a connection cancels one of the peer's calls (the message of the task's cancellation).
CANCELLED = "cancelled by the caller"
DEADLINE_PASSED = "the deadline of the call passed"

# The deadline of the code running now, in the running loop's time, or None. A connection
# cancels the task of a call it starts under one when it passes.
DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("pbfast_deadline", default=None)

# Whether a call may have options to send: False until something could give it some (a deadline
# entered or received, an option registered), so that until then `callRemote` asks nothing.
options_in_use = False


# name -> (gather, apply): `gather()` gives the value to send with a call made now (None: none),
# `apply(value)` sets what the remote method sees and returns what undoes it.
_options: dict[str, tuple[Callable[[], Any], Callable[[Any], Callable[[], None]]]] = {}


def register_option(name: str, gather: Callable[[], Any], apply: Callable[[Any], Callable[[], None]]) -> None:
    """Send the call option `name` with every call to a pbfast peer made while ``gather()``
    gives a value (not None), and on receiving it, run the call with ``apply(value)`` in force
    (it returns what undoes it). ``apply`` raises `Error` for a value it refuses: the call then
    fails with it. Options a side does not know are ignored."""
    global options_in_use
    _options[name] = (gather, apply)
    options_in_use = True


def gather_options() -> dict[str, Any] | None:
    """The options of a call made now, or None (the caller's side)."""
    options = None
    for name, (gather, _) in _options.items():
        value = gather()
        if value is not None:
            if options is None:
                options = {}
            options[name] = value
    return options


def apply_options(options: dict[str, Any]) -> Callable[[], None]:
    """Put the received `options` in force (the callee's side, while the call starts); returns
    what undoes them.

    Raises:
        Error: an option's value is refused.
    """
    global options_in_use
    undo: list[Callable[[], None]] = []
    try:
        for name, value in options.items():
            known = _options.get(name)
            if known is not None:
                undo.append(known[1](value))
    except BaseException:
        for step in reversed(undo):
            step()
        raise
    if undo:
        options_in_use = True  # the calls the method makes carry them on

    def restore() -> None:
        for step in reversed(undo):
            step()

    return restore


# ------------------------------------------------------------------ deadlines


def current_deadline() -> float | None:
    """The seconds left before the deadline of the code running now (0.0 once it has passed),
    or None without a deadline.

    Inside a remote method called by a pbfast peer, that is the caller's deadline (see
    `deadline`): the method is cancelled when it passes, and the calls it makes carry what is
    left of it. Elsewhere, the innermost `deadline` block's.
    """
    when = DEADLINE.get()
    if when is None:
        return None
    return max(0.0, when - asyncio.get_running_loop().time())


def deadline(seconds: float | None) -> contextlib.AbstractAsyncContextManager[None]:
    """A deadline `seconds` from now for the code in ``async with pbfast.deadline(seconds):``.

    It is a local timeout (as ``asyncio.timeout``: the block is cancelled when it passes and
    `TimeoutError` raised), and it travels with the calls made inside to pbfast peers: the
    remote method sees it (`current_deadline`), is cancelled when it passes, and passes what is
    left of it on to the calls it makes. Nested deadlines keep the earliest. `seconds` None adds
    none (an outer one still applies). Stock peers get plain calls: for them it is only a
    local timeout.

    Should a peer's answer that the deadline passed arrive just before the local timeout fires
    (the two timers tick apart by a millisecond or so), the block raises `TimeoutError` all the
    same, with that `RemoteError` as its cause.

    Raises:
        TypeError: `seconds` is not a number or None.
        ValueError: `seconds` is NaN.
    """
    if seconds is not None:
        if not isinstance(seconds, int | float) or isinstance(seconds, bool):
            raise TypeError(f"deadline(seconds): seconds must be a number or None, not {seconds!r}")
        if math.isnan(seconds):
            raise ValueError("deadline(seconds): seconds must be a number, not NaN")
    return _Deadline(seconds)


class _Deadline:
    """What `deadline` returns: ``asyncio.timeout`` plus the deadline the calls made inside carry."""

    __slots__ = ("_seconds", "_timeout", "_token", "_in_force", "_when")

    def __init__(self, seconds: float | None) -> None:
        self._seconds = seconds
        self._timeout: asyncio.Timeout | None = None
        self._token: contextvars.Token[float | None] | None = None
        self._in_force = False  # this deadline is the earliest, the one calls carry
        self._when = 0.0

    async def __aenter__(self) -> None:
        global options_in_use
        if self._timeout is not None:
            raise RuntimeError("a pbfast.deadline has already been entered")
        loop = asyncio.get_running_loop()
        when = None if self._seconds is None else loop.time() + self._seconds
        self._timeout = asyncio.timeout_at(when)
        await self._timeout.__aenter__()
        outer = DEADLINE.get()
        self._in_force = when is not None and (outer is None or when <= outer)
        self._when = when or 0.0
        self._token = DEADLINE.set(when if self._in_force else outer)
        options_in_use = True

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._timeout is not None and self._token is not None, "not entered"
        DEADLINE.reset(self._token)
        await self._timeout.__aexit__(kind, exc, tb)
        if self._in_force and isinstance(exc, RemoteError) and _passed(exc):
            if asyncio.get_running_loop().time() >= self._when - _CLOCKS_APART:
                raise TimeoutError(DEADLINE_PASSED) from exc
        return None


def _passed(exc: RemoteError) -> bool:
    """Whether `exc` is a peer's answer that a call's deadline passed."""
    return exc.remoteType == "builtins.TimeoutError" and str(exc.remoteValue) == DEADLINE_PASSED


def _gather_deadline() -> float | None:
    when = DEADLINE.get()
    if when is None:
        return None
    return max(0.0, when - asyncio.get_running_loop().time())


def _apply_deadline(seconds: Any) -> Callable[[], None]:
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not 0 <= seconds < math.inf:
        raise Error(f"the call option 'deadline' must be a number of seconds (0 or more), not {seconds!r}")
    when = asyncio.get_running_loop().time() + seconds
    outer = DEADLINE.get()
    token = DEADLINE.set(when if outer is None else min(outer, when))
    return functools.partial(DEADLINE.reset, token)


# (Registered without `register_option`: calls have a deadline to send only once one is set,
# which sets `options_in_use`.)
_options["deadline"] = (_gather_deadline, _apply_deadline)


# ------------------------------------------------------------------ the callee's side of `call`


class OptionsCall:
    """What the control method ``call`` returns: a call with its options, which the connection
    runs as if it had arrived as a plain call, with the control call's request id. (It counts as
    awaitable, so that the session hands it over with that request id; it is never awaited.)"""

    __slots__ = ("object_id", "method", "args", "kwargs", "options")

    def __init__(
        self,
        object_id: Any,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: dict[str, Any],
    ) -> None:
        self.object_id = object_id
        self.method = method
        self.args = args
        self.kwargs = kwargs
        self.options = options

    @classmethod
    def checked(cls, object_id: Any, method: Any, args: Any, kwargs: Any, options: Any) -> OptionsCall:
        """The call the peer's ``call`` describes.

        Raises:
            Error: a part of it is not what it should be.
        """
        if type(method) is not str:
            raise Error(f"call: the method name must be a string, not {type(method).__name__}")
        if type(args) not in (list, tuple):
            raise Error(f"call: the arguments must be a list, not {type(args).__name__}")
        if type(kwargs) is not dict or not all(type(k) is str for k in kwargs):
            raise Error("call: the keyword arguments must be a dict with string keys")
        if type(options) is not dict or not all(type(k) is str for k in options):
            raise Error("call: the options must be a dict with string keys")
        return cls(object_id, method, tuple(args), kwargs, options)

    def __await__(self) -> Any:
        raise RuntimeError("an OptionsCall is run by its connection, not awaited")


# ------------------------------------------------------------------ the caller's side of `cancel`


class _Cancelling(Protocol):
    def _call_cancelled(self, future: asyncio.Future[Any]) -> None: ...


class CallFuture(asyncio.Future[Any]):
    """The future of a call to a peer that speaks ``cancel``: cancelling it (directly, or by
    cancelling the task awaiting it) also cancels the call on the peer. Each connection has its
    own subclass (`future_class`), which names it: a future carries nothing more than a plain
    one."""

    __slots__ = ()
    _connection: ClassVar[weakref.ReferenceType[_Cancelling]]

    def cancel(self, msg: Any = None) -> bool:
        if not super().cancel(msg):
            return False
        connection = self._connection()
        if connection is not None:
            connection._call_cancelled(self)
        return True


def future_class(connection: _Cancelling) -> type[CallFuture]:
    """The class of `connection`'s call futures once the peer speaks ``cancel``. (Make them with
    their loop given: a future made without one asks for the running loop, which costs a
    ``getpid()`` system call each time.)"""
    return type("CallFuture", (CallFuture,), {"__slots__": (), "_connection": weakref.ref(connection)})
