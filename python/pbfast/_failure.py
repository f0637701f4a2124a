"""Remote exceptions in the form Twisted sends and understands: a ``CopyableFailure``.

An exception leaving a remote method travels as a Copyable tagged
``twisted.spread.pb.CopyableFailure`` whose state is a dict with str keys, in the key order and
value types stock Twisted emits (its ``parents`` list is what ``Failure.check``/``trap`` match
against, so it holds the qualified name of every class in the exception's MRO). The receiving
side turns that state into a `RemoteError`.
"""

from __future__ import annotations

import itertools
import traceback

from .errors import TWISTED_EQUIVALENTS, RemoteError, qualified_name

FAILURE_TAG = b"twisted.spread.pb.CopyableFailure"
UNAVAILABLE = "Traceback unavailable\n"

# Twisted numbers every Failure it makes; peers never look at the number.
_counter = itertools.count(1)


class CopyableFailure:
    """An outgoing failure: the jelly hook sends ``state`` under `FAILURE_TAG`."""

    __slots__ = ("state",)

    def __init__(self, exc: BaseException, unsafe_tracebacks: bool = False) -> None:
        cls = type(exc)
        try:
            value = str(exc)
        except Exception as e:  # a broken __str__ must not turn into a second failure
            value = f"<str() of {qualified_name(cls)} failed: {e!r}>"
        if unsafe_tracebacks:
            text = "".join(traceback.format_exception(exc))
        else:
            text = UNAVAILABLE
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
    return RemoteError(remote_type, value, _text(tb), tuple(_text(p) for p in parents))
