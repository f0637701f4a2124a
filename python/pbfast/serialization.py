"""Jelly and banana without a connection.

``dumps``/``loads`` give the exact bytes stock Twisted PB puts on the wire for a value (the ``pb``
dialect), in one Rust pass each way. ``jelly``/``unjelly`` work on s-expressions: nested lists of
``bytes``, ``int`` and ``float`` as Twisted's ``jelly()`` returns them.
"""

from __future__ import annotations

from typing import Any

from . import _core
from .banana import decode as _banana_decode
from .banana import encode as _banana_encode

__all__ = ["dumps", "loads", "jelly", "unjelly", "Unpersistable"]


class Unpersistable:
    """Stands in for a value the sender could not serialize (Twisted sends any object it has no
    jelly form for as ``["unpersistable", reason]``)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason: str = reason

    def __repr__(self) -> str:
        return f"Unpersistable({self.reason!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Unpersistable) and other.reason == self.reason

    def __hash__(self) -> int:
        return hash(self.reason)


def dumps(obj: Any, *, dialect: str = "pb") -> bytes:
    """Serialize ``obj`` as jelly in banana: the bytes stock Twisted PB sends for it.

    Supported: None, bool, int (up to ±(2**448 - 1)), float, bytes, str, list, tuple, dict,
    set, frozenset, naive datetime/date/time, timedelta, finite Decimal, classes (by name), and
    shared or cyclic structures of these. Any other object goes out as ``Unpersistable``, as
    Twisted does.

    Raises:
        BananaError: an int, list or byte string too large for banana.
        JellyError: a value jelly cannot express (a function, a tz-aware datetime, a NaN
            Decimal, nesting deeper than 1000).
    """
    return _core.dumps(obj, dialect=dialect)


def loads(data: bytes | bytearray | memoryview, *, dialect: str = "pb", **limits: int) -> Any:
    """Decode exactly one banana expression and unjelly it.

    ``limits`` are the decoder limits (``max_element_size``, ``max_message_size``,
    ``max_depth``, ``max_header_length``); the defaults are Twisted's.

    Raises:
        BananaError: malformed, truncated or over-limit bytes, or bytes after the expression.
        InsecureJelly: a type the receiver has not allowed (classes, modules, unregistered
            copyable types).
        JellyError: malformed jelly.
    """
    return _core.loads(data, dialect=dialect, hook=None, **limits)


def jelly(obj: Any) -> Any:
    """Twisted's ``jelly(obj)``: the s-expression (nested lists of bytes/int/float) for ``obj``.

    Raises what `dumps` raises.
    """
    return _banana_decode(_core.dumps(obj))


def unjelly(sexp: Any) -> Any:
    """Twisted's ``unjelly(sexp)`` with PB's safe default policy: build the value an
    s-expression describes. Classes, modules and functions are refused (``InsecureJelly``).
    """
    return _core.loads(_banana_encode(sexp))
