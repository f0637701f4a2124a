"""``pbfast bench --scenario module:function``: an async function, given the root reference, is one
user iteration, and every ``callRemote`` made in it is timed under its method name.

The timing needs nothing of pbfast but its public API: the function is given a
`RecordingReference`, a stand-in for the root reference whose ``callRemote`` notes when the call
started and adds a done-callback to the call's future that counts its answer. References that
come back in answers are wrapped the same way, so calls on them are recorded too; references
passed as arguments are unwrapped before they are sent. The calls of iterations started during
the warm-up are not counted, as those iterations are not.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from typing import Any

from ..errors import RemoteError
from ..referenceable import RemoteReference
from .common import EXIT_USAGE, CommandError, import_attribute
from .results import Tally, error_name

__all__ = ["load_scenario", "RecordingReference", "MethodRecorder"]

_NEVER = 1 << 62
_perf_counter_ns = time.perf_counter_ns


def load_scenario(spec: str) -> Any:
    """The async function ``module:function`` names, checked: it must be ``async def`` and take
    the root reference as its one argument.

    Raises:
        CommandError: (usage) it cannot be imported or found, or is not such a function.
    """
    function = import_attribute(spec, "loadtest:checkout")
    if not inspect.iscoroutinefunction(function):
        what = "a class" if isinstance(function, type) else f"a {type(function).__name__}"
        if inspect.isfunction(function) or inspect.ismethod(function):
            what = "a plain function"
        raise CommandError(
            f"{spec!r} is {what}, not an async function (async def {spec.rpartition(':')[2]}(root): ...)",
            EXIT_USAGE,
        )
    try:
        inspect.signature(function).bind(None)
    except TypeError:
        raise CommandError(
            f"{spec!r} must take one argument, the root reference (async def "
            f"{spec.rpartition(':')[2]}(root): ...)",
            EXIT_USAGE,
        ) from None
    except ValueError:  # no signature to inspect (a builtin): let the call say
        pass
    return function


class MethodRecorder:
    """Each method's calls, for the current interval of a run (`cut` hands them over)."""

    def __init__(self) -> None:
        #: Iterations started before this (perf_counter_ns) are warm-up: their calls are not counted.
        self.measure_from = _NEVER
        self.methods: dict[str, Tally] = {}

    def reference(self, reference: Any) -> RecordingReference:
        """`reference` for an iteration starting now."""
        return RecordingReference(reference, self, _perf_counter_ns() >= self.measure_from)

    def cut(self) -> dict[str, Tally]:
        methods, self.methods = self.methods, {}
        return methods

    def _tally(self, name: str) -> Tally:
        tally = self.methods.get(name)
        if tally is None:
            tally = self.methods[name] = Tally()
        return tally

    def track(self, name: str, started: int, counted: bool, call: asyncio.Future[Any]) -> asyncio.Future[Any]:
        """`call`'s answer, counted under `name` if `counted`, as a future of its own (whose
        result wraps the references in the answer; cancelling it cancels `call`)."""
        if counted:
            self._tally(name).sent += 1
        answer: asyncio.Future[Any] = call.get_loop().create_future()
        call.add_done_callback(functools.partial(self._answered, name, started, counted, answer))
        answer.add_done_callback(functools.partial(_cancel_with, call))
        return answer

    def _answered(
        self, name: str, started: int, counted: bool, answer: asyncio.Future[Any], call: asyncio.Future[Any]
    ) -> None:
        now = _perf_counter_ns()
        if call.cancelled():
            answer.cancel()
            return
        error = call.exception()
        if counted:
            tally = self._tally(name)
            if error is None:
                tally.ok += 1
                tally.latency.record(now - started)
            else:
                tally.errors[error_name(error)] += 1
                if isinstance(error, RemoteError):  # an answer: its round trip counts
                    tally.latency.record(now - started)
        if answer.done():  # the caller gave up on it
            return
        if error is not None:
            answer.set_exception(error)
        else:
            answer.set_result(self.wrap(call.result(), counted))

    def failed_to_send(self, name: str, counted: bool, error: BaseException) -> None:
        if counted:
            tally = self._tally(name)
            tally.sent += 1
            tally.errors[error_name(error)] += 1

    def wrap(self, value: Any, counted: bool) -> Any:
        """`value` with the references in it (itself, or directly in a list, tuple or dict)
        wrapped to record their calls."""
        kind = type(value)
        if kind in _PLAIN:
            return value

        def wrapped(item: Any) -> Any:
            return RecordingReference(item, self, counted) if isinstance(item, RemoteReference) else item

        if isinstance(value, RemoteReference):
            return wrapped(value)
        if kind is list or kind is tuple:
            if any(isinstance(item, RemoteReference) for item in value):
                return kind(wrapped(item) for item in value)
        elif kind is dict and any(isinstance(item, RemoteReference) for item in value.values()):
            return {key: wrapped(item) for key, item in value.items()}
        return value


_PLAIN = frozenset({int, float, str, bytes, bool, type(None)})


def _cancel_with(call: asyncio.Future[Any], answer: asyncio.Future[Any]) -> None:
    if answer.cancelled():
        call.cancel()


def _unwrap(value: Any) -> Any:
    """`value` with the recording references in it (itself, or directly in a list, tuple or
    dict) replaced by the references they stand for."""
    kind = type(value)
    if kind is RecordingReference:
        return value.reference
    if kind is list or kind is tuple:
        if any(type(item) is RecordingReference for item in value):
            return kind(_unwrap(item) for item in value)
    elif kind is dict and any(type(item) is RecordingReference for item in value.values()):
        return {key: _unwrap(item) for key, item in value.items()}
    return value


class RecordingReference:
    """Stands for a remote reference in a scenario: `callRemote` is the reference's, timed and
    counted under the method's name (unless the iteration it was given to started during the
    warm-up); everything else is the reference's own."""

    __slots__ = ("reference", "_recorder", "_counted")

    def __init__(self, reference: Any, recorder: MethodRecorder, counted: bool) -> None:
        self.reference = reference
        self._recorder = recorder
        self._counted = counted

    def callRemote(self, _name: str, /, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        """Call ``remote_<_name>(*args, **kwargs)``, recording the call (see the module)."""
        started = _perf_counter_ns()
        if args:
            args = tuple(_unwrap(arg) for arg in args)
        if kwargs:
            kwargs = {key: _unwrap(value) for key, value in kwargs.items()}
        try:
            call = self.reference.callRemote(_name, *args, **kwargs)
        except Exception as e:
            self._recorder.failed_to_send(_name, self._counted, e)
            raise
        return self._recorder.track(_name, started, self._counted, call)

    def callRemoteOnly(self, _name: str, /, *args: Any, **kwargs: Any) -> None:
        """Call without asking for an answer; not recorded (there is no answer to time)."""
        args = tuple(_unwrap(arg) for arg in args)
        kwargs = {key: _unwrap(value) for key, value in kwargs.items()}
        self.reference.callRemoteOnly(_name, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name == "reference":  # not set yet (a copy being made)
            raise AttributeError(name)
        return getattr(self.reference, name)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RecordingReference):
            other = other.reference
        return bool(self.reference == other)

    def __hash__(self) -> int:
        return hash(self.reference)

    def __repr__(self) -> str:
        return f"<recording {self.reference!r}>"
