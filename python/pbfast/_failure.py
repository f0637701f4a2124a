"""Remote exceptions in the forms the two wires send and understand.

On Twisted's wire an exception leaving a remote method travels as a Copyable tagged
``twisted.spread.pb.CopyableFailure`` whose state is a dict with str keys, in the key order and
value types stock Twisted emits (its ``parents`` list is what ``Failure.check``/``trap`` match
against, so it holds the qualified name of every class in the exception's MRO). On foolscap's
it is a copyable ``twisted.python.failure.Failure`` whose attributes foolscap bounds in length
(`failure_state`). The receiving side turns either into a `RemoteError`.
"""

from __future__ import annotations

import itertools
import traceback
from typing import Any

from .errors import TWISTED_EQUIVALENTS, RemoteError, RemoteViolation, Violation, qualified_name

FAILURE_TAG = b"twisted.spread.pb.CopyableFailure"
UNAVAILABLE = "Traceback unavailable\n"
# foolscap's type name for a failure, and for its own Violation.
FOOLSCAP_FAILURE_TYPE = "twisted.python.failure.Failure"
VIOLATION_TYPE = "foolscap.tokens.Violation"
# foolscap's receive limits on a failure's fields; longer ones are cut when sending.
_TYPE_LIMIT, _VALUE_LIMIT, _PARENT_LIMIT, _TRACEBACK_LIMIT = 200, 1000, 200, 2000

# Twisted numbers every Failure it makes; peers never look at the number.
_counter = itertools.count(1)


class CopyableFailure:
    """An outgoing failure: the jelly hook sends ``state`` under `FAILURE_TAG`."""

    __slots__ = ("state",)

    def __init__(self, exc: BaseException, unsafe_tracebacks: bool = False) -> None:
        cls = type(exc)
        value, text = failure_text(exc, unsafe_tracebacks)
        self.state = {
            "count": next(_counter),
            "type": qualified_name(cls).encode(),
            "value": value,
            "captureVars": False,
            "tb": None,
            "unsafeTracebacks": unsafe_tracebacks,
            "parents": parents_of(cls),
            "frames": [],
            "stack": [],
            "traceback": text,
        }


def failure_text(exc: BaseException, unsafe_tracebacks: bool) -> tuple[str, str]:
    """The value and traceback texts a failure of `exc` carries (the traceback only with
    `unsafe_tracebacks`: it shows the server's files and code)."""
    try:
        value = str(exc)
    except Exception as e:  # a broken __str__ must not turn into a second failure
        value = f"<str() of {qualified_name(type(exc))} failed: {e!r}>"
    text = "".join(traceback.format_exception(exc)) if unsafe_tracebacks else UNAVAILABLE
    return value, text


def failure_state(exc: BaseException, unsafe_tracebacks: bool) -> list[tuple[str, Any]]:
    """The attributes of foolscap's failure copyable for `exc`, cut to foolscap's limits. A
    `RemoteError` passed on keeps its remote type; a `Violation` goes as foolscap's own class,
    so its callers can trap it."""
    if isinstance(exc, RemoteError):
        value, type_name, text = str(exc.remoteValue), exc.remoteType, exc.remoteTraceback or UNAVAILABLE
        parents = list(exc.parents)
    else:
        value, text = failure_text(exc, unsafe_tracebacks)
        if len(text) > 1900:
            text = text[:700] + "\n\n-- TRACEBACK ELIDED --\n\n" + text[-1200:]
        if isinstance(exc, Violation):
            type_name = VIOLATION_TYPE
            parents = [VIOLATION_TYPE, *(qualified_name(c) for c in Exception.__mro__)]
        else:
            type_name = qualified_name(type(exc))
            parents = parents_of(type(exc))
    return [
        ("value", _cut(value, _VALUE_LIMIT)),
        ("type", _cut(type_name, _TYPE_LIMIT)),
        ("traceback", _cut(text, _TRACEBACK_LIMIT)),
        ("parents", [_cut(name, _PARENT_LIMIT) for name in parents]),
    ]


def _cut(text: str, limit: int) -> bytes:
    return text.encode("utf-8", "replace")[:limit]


def parents_of(cls: type) -> list[str]:
    names = []
    for c in cls.__mro__:
        names.append(qualified_name(c))
        names.extend(TWISTED_EQUIVALENTS.get(names[-1], ()))
    return names


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def remote_error(state: object) -> RemoteError:
    """The `RemoteError` for a received CopyableFailure state (str or, from Python 2 peers,
    bytes keys)."""
    if not isinstance(state, dict):
        return RemoteError("builtins.object", state, UNAVAILABLE)
    fields = {_text(k): v for k, v in state.items()}
    remote_type = _text(fields.get("type", "builtins.Exception"))
    value = fields.get("value", "")
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    tb = fields.get("traceback", UNAVAILABLE)
    parents = fields.get("parents") or [remote_type]
    if not isinstance(parents, (list, tuple)):
        parents = [remote_type]
    names = tuple(_text(p) for p in parents)
    cls = RemoteViolation if _VIOLATIONS.intersection(names) else RemoteError
    return cls(remote_type, value, _text(tb), names)


# The remote types that are Violations: ours, and foolscap's.
_VIOLATIONS = frozenset({qualified_name(Violation), VIOLATION_TYPE})
