"""Helpers shared by pbfast's test modules.

``tests/`` has no ``__init__.py``, so pytest (default "prepend" import mode) puts this directory
on ``sys.path`` and every test module can ``from helpers import ...``.

* :func:`from_tagged` turns the vectors' tagged-JSON s-expressions into Python values.
* :func:`load_vectors` reads a file of ``tests/vectors/``.
* :func:`deep_equal` / :func:`assert_deep_equal` compare values type-exactly, with NaN equal to
  NaN, ``-0.0`` different from ``0.0``, and the same sharing/cycle structure on both sides.
* :func:`twisted_dumps` / :func:`twisted_loads` (and the banana-only variants) drive stock
  Twisted exactly the way a PB broker does: ``jelly(..., taster=globalSecurity)`` and a
  :class:`twisted.spread.banana.Banana` protocol with ``currentDialect = b"pb"``.
"""

from __future__ import annotations

import datetime
import decimal
import functools
import json
import math
import reprlib
import sys
from pathlib import Path
from typing import Any

TESTS_DIR = Path(__file__).resolve().parent
VECTORS_DIR = TESTS_DIR / "vectors"

__all__ = [
    "TESTS_DIR",
    "VECTORS_DIR",
    "load_vectors",
    "from_tagged",
    "eval_python",
    "deep_equal",
    "assert_deep_equal",
    "explain_difference",
    "twisted_banana_encode",
    "twisted_banana_decode",
    "twisted_dumps",
    "twisted_loads",
    "case_id",
]


# --------------------------------------------------------------------------------------------
# Vectors
# --------------------------------------------------------------------------------------------


@functools.cache
def _load_vectors_cached(name: str) -> str:
    return (VECTORS_DIR / name).read_text(encoding="utf-8")


def load_vectors(name: str) -> dict:
    """The parsed JSON of ``tests/vectors/<name>`` (a fresh copy each call)."""
    return json.loads(_load_vectors_cached(name))


def from_tagged(obj: Any) -> Any:
    """A tagged-JSON s-expression (see tests/vectors/README.md) as a Python value.

    ``{"b": text}`` / ``{"bhex": hex}`` -> bytes, a JSON number or ``{"int": decimal}`` -> int,
    ``{"float": repr}`` -> float, a JSON array -> list (recursively).
    """
    if isinstance(obj, bool):  # JSON true/false never appear in sexps
        raise ValueError(f"unexpected JSON boolean in a tagged sexp: {obj!r}")
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        raise ValueError(f"floats must be tagged in the vectors, got a bare {obj!r}")
    if isinstance(obj, list):
        return [from_tagged(x) for x in obj]
    if isinstance(obj, dict):
        if len(obj) != 1:
            raise ValueError(f"bad tagged value {obj!r}")
        ((tag, text),) = obj.items()
        if tag == "b":
            return text.encode("ascii")
        if tag == "bhex":
            return bytes.fromhex(text)
        if tag == "int":
            return int(text)
        if tag == "float":
            return float(text)
        raise ValueError(f"unknown tag {tag!r} in {obj!r}")
    raise ValueError(f"bad tagged value {obj!r}")


def eval_python(src: str) -> Any:
    """Evaluate a vector's ``python`` field in the namespace the generator used."""
    return eval(src, {"datetime": datetime, "decimal": decimal})  # noqa: S307 (trusted vectors)


def case_id(case: dict) -> str:
    """A pytest id for a vector case: its name, made printable."""
    return case["name"].encode("ascii", "backslashreplace").decode("ascii")


# --------------------------------------------------------------------------------------------
# deep_equal
# --------------------------------------------------------------------------------------------

_CONTAINERS = (list, tuple, dict, set, frozenset)

_short = reprlib.Repr()
_short.maxlevel = 4
_short.maxstring = 60
_short.maxother = 60
short_repr = _short.repr


def _float_eq(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


class _Comparer:
    """One comparison: keeps the object pairing so shared and cyclic structure must match.

    Each container of ``a`` is paired with exactly one container of ``b`` and vice versa: if
    ``a`` holds the same list twice, ``b`` must hold one list twice (not two equal lists), and a
    cycle in ``a`` must be the same cycle in ``b``. Empty tuples and frozensets are exempt from
    the pairing, since CPython may share those behind anybody's back.

    ``ordered_dicts=False`` pairs dict items by key instead of by position (foolscap sends keys
    sorted); ``shared_frozensets=False`` exempts all frozensets from the pairing (foolscap sends
    each one in full).
    """

    def __init__(self, ordered_dicts: bool = True, shared_frozensets: bool = True) -> None:
        self.a2b: dict[int, Any] = {}
        self.b2a: dict[int, Any] = {}
        self.path: list[str] = []
        self.why = ""
        self.ordered_dicts = ordered_dicts
        self.shared_frozensets = shared_frozensets

    def fail(self, why: str) -> bool:
        if not self.why:
            self.why = f"at {''.join(self.path) or '<top>'}: {why}"
        return False

    def eq(self, a: Any, b: Any) -> bool:
        ta, tb = type(a), type(b)
        if ta is not tb:
            return self.fail(
                f"type {ta.__qualname__} != {tb.__qualname__} ({short_repr(a)} vs {short_repr(b)})"
            )
        if ta is float:
            return _float_eq(a, b) or self.fail(f"{a!r} != {b!r}")
        if ta in _CONTAINERS:
            return self.container(a, b)
        if ta is decimal.Decimal:
            # Exact representation: sign, digits and exponent (Decimal('1.0') != Decimal('1')).
            return a.as_tuple() == b.as_tuple() or self.fail(f"{a!r} != {b!r}")
        if ta in (datetime.datetime, datetime.time):
            same = a == b and a.tzinfo == b.tzinfo and a.fold == b.fold
            return same or self.fail(f"{a!r} != {b!r}")
        if ta is complex:
            return (_float_eq(a.real, b.real) and _float_eq(a.imag, b.imag)) or self.fail(f"{a!r} != {b!r}")
        try:
            same = bool(a == b)
        except Exception as e:  # pragma: no cover - defensive
            return self.fail(f"comparing {short_repr(a)} and {short_repr(b)} raised {e!r}")
        return same or self.fail(f"{short_repr(a)} != {short_repr(b)}")

    def container(self, a: Any, b: Any) -> bool:
        exempt = type(a) in (tuple, frozenset) and len(a) == 0 and len(b) == 0
        exempt = exempt or (type(a) is frozenset and not self.shared_frozensets)
        if not exempt:
            pa, pb = self.a2b.get(id(a)), self.b2a.get(id(b))
            if pa is not None or pb is not None:
                if pa is b and pb is a:
                    return True  # the same pair again (shared, or a cycle closing)
                return self.fail("sharing differs: an object is shared on one side but not the other")
            self.a2b[id(a)] = b
            self.b2a[id(b)] = a
        if len(a) != len(b):
            return self.fail(f"length {len(a)} != {len(b)}")
        if type(a) in (list, tuple):
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                self.path.append(f"[{i}]")
                ok = self.eq(x, y)
                self.path.pop()
                if not ok:
                    return False
            return True
        if type(a) is dict and not self.ordered_dicts:
            return self.unordered_items(a, b)
        if type(a) is dict:
            # Jelly keeps insertion order, so items are compared in order.
            for i, ((ka, va), (kb, vb)) in enumerate(zip(a.items(), b.items(), strict=True)):
                self.path.append(f".key#{i}")
                ok = self.eq(ka, kb)
                self.path.pop()
                if not ok:
                    return False
                self.path.append(f"[{short_repr(ka)}]")
                ok = self.eq(va, vb)
                self.path.pop()
                if not ok:
                    return False
            return True
        return self.unordered(a, b)

    def unordered_items(self, a: dict, b: dict) -> bool:
        """Dict items in any order: pair each key of ``a`` with a distinct deep-equal key of ``b``
        and compare their values."""
        remaining = list(b.items())
        used = [False] * len(remaining)
        for ka, va in a.items():
            for j, (kb, vb) in enumerate(remaining):
                if used[j]:
                    continue
                snapshot = (dict(self.a2b), dict(self.b2a), self.why)
                if self.eq(ka, kb):
                    used[j] = True
                    self.path.append(f"[{short_repr(ka)}]")
                    ok = self.eq(va, vb)
                    self.path.pop()
                    if not ok:
                        return False
                    break
                self.a2b, self.b2a, self.why = snapshot
            else:
                return self.fail(f"key {short_repr(ka)} has no deep-equal counterpart")
        return True

    def unordered(self, a: Any, b: Any) -> bool:
        """Set members: pair each member of ``a`` with a distinct deep-equal member of ``b``."""
        remaining = list(b)
        index: dict[Any, list[int]] = {}
        for j, y in enumerate(remaining):
            try:
                index.setdefault(y, []).append(j)
            except TypeError:  # pragma: no cover - set members are hashable
                pass
        used = [False] * len(remaining)
        for x in a:
            candidates = [j for j in index.get(x, []) if not used[j]]
            candidates += [j for j in range(len(remaining)) if not used[j] and j not in candidates]
            for j in candidates:
                snapshot = (dict(self.a2b), dict(self.b2a), self.why)
                if self.eq(x, remaining[j]):
                    used[j] = True
                    break
                self.a2b, self.b2a, self.why = snapshot
            else:
                return self.fail(f"set member {short_repr(x)} has no deep-equal counterpart")
        return True


def _compare(a: Any, b: Any, **options: bool) -> tuple[bool, str]:
    # Values may be nested ~1000 deep (the banana depth limit); the comparison recurses in
    # Python frames only, which CPython 3.11+ does not run on the C stack.
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 20_000))
    try:
        c = _Comparer(**options)
        ok = c.eq(a, b)
        return ok, ("" if ok else c.why or "values differ")
    finally:
        sys.setrecursionlimit(old)


def deep_equal(a: Any, b: Any, **options: bool) -> bool:
    """Type-exact structural equality with NaN == NaN, -0.0 != 0.0 and the same sharing
    (options: see :class:`_Comparer`)."""
    return _compare(a, b, **options)[0]


def explain_difference(a: Any, b: Any, **options: bool) -> str:
    """Why :func:`deep_equal` is false (empty string if it is true)."""
    return _compare(a, b, **options)[1]


def assert_deep_equal(a: Any, b: Any, **options: bool) -> None:
    ok, why = _compare(a, b, **options)
    if not ok:
        raise AssertionError(f"values differ {why}\n  left:  {short_repr(a)}\n  right: {short_repr(b)}")


# --------------------------------------------------------------------------------------------
# Stock Twisted
# --------------------------------------------------------------------------------------------


def _twisted_protocol(dialect: bytes, received: list | None = None):
    from twisted.internet.testing import StringTransport
    from twisted.spread import banana

    class Recorder(banana.Banana):
        def expressionReceived(self, lst):
            received.append(lst)

    proto = Recorder(isClient=1) if received is not None else banana.Banana(isClient=1)
    transport = StringTransport()
    proto.makeConnection(transport)  # connectionMade: prefix limit 64, no dialect yet
    proto.currentDialect = dialect
    return proto, transport


def twisted_banana_encode(sexp: Any, dialect: bytes = b"pb") -> bytes:
    """Stock Twisted ``Banana.sendEncoded(sexp)``: the bytes it writes to its transport."""
    proto, transport = _twisted_protocol(dialect)
    proto.sendEncoded(sexp)
    return transport.value()


def twisted_banana_decode(data: bytes, dialect: bytes = b"pb") -> list:
    """Every expression stock Twisted ``Banana.dataReceived(data)`` delivers; it must consume
    everything (no partial token or open list left)."""
    received: list = []
    proto, _ = _twisted_protocol(dialect, received)
    proto.dataReceived(bytes(data))
    assert proto.buffer == b"" and proto.listStack == [], "Twisted left a partial expression"
    return received


def twisted_dumps(value: Any, dialect: bytes = b"pb") -> bytes:
    """What a stock Twisted PB broker puts on the wire for ``value``."""
    from twisted.spread import jelly

    return twisted_banana_encode(jelly.jelly(value, taster=jelly.globalSecurity), dialect)


def twisted_loads(data: bytes, dialect: bytes = b"pb") -> Any:
    """Decode exactly one expression with stock Twisted and unjelly it with ``globalSecurity``."""
    from twisted.spread import jelly

    expressions = twisted_banana_decode(data, dialect)
    assert len(expressions) == 1, f"expected one expression, Twisted delivered {len(expressions)}"
    return jelly.unjelly(expressions[0], taster=jelly.globalSecurity)


# --------------------------------------------------------------------------------------------
# Hypothesis strategies
# --------------------------------------------------------------------------------------------

MAX_BANANA_INT = 2**448 - 1

#: Byte strings that are PB vocabulary words or jelly tags (they go out as VOCAB in "pb").
SPECIAL_WORDS = (
    b"None",
    b"class",
    b"dereference",
    b"reference",
    b"dictionary",
    b"function",
    b"instance",
    b"list",
    b"module",
    b"persistent",
    b"tuple",
    b"unpersistable",
    b"copy",
    b"cache",
    b"cached",
    b"remote",
    b"local",
    b"lcache",
    b"version",
    b"login",
    b"password",
    b"challenge",
    b"logged_in",
    b"not_logged_in",
    b"cachemessage",
    b"message",
    b"answer",
    b"error",
    b"decref",
    b"decache",
    b"uncache",
    b"unicode",
    b"boolean",
    b"true",
    b"false",
    b"set",
    b"frozenset",
    b"datetime",
    b"date",
    b"time",
    b"timedelta",
    b"decimal",
    b"pb",
    b"none",
    b"",
)

_INT_EDGES = (
    0,
    1,
    -1,
    127,
    128,
    -128,
    2**31 - 1,
    2**31,
    -(2**31),
    -(2**31) - 1,
    2**32,
    2**53 + 1,
    2**63 - 1,
    2**63,
    -(2**63),
    -(2**63) - 1,
    2**64,
    -(2**64),
    MAX_BANANA_INT,
    -MAX_BANANA_INT,
)


def _strategies():
    from hypothesis import strategies as st

    return st


def banana_ints():
    st = _strategies()
    return st.one_of(
        st.integers(-(2**40), 2**40),
        st.integers(-MAX_BANANA_INT, MAX_BANANA_INT),
        st.sampled_from(_INT_EDGES),
    )


def any_floats():
    st = _strategies()
    return st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([0.0, -0.0, float("nan"), float("inf"), float("-inf"), 5e-324, 1.5]),
    )


def any_bytes():
    st = _strategies()
    return st.one_of(st.binary(max_size=40), st.sampled_from(SPECIAL_WORDS))


def any_text():
    st = _strategies()
    return st.one_of(
        st.text(max_size=20),
        st.sampled_from(
            [w.decode() for w in SPECIAL_WORDS] + ["h\xe9llo", "\u65e5\u672c", "\U0001f600", "a\x00b"]
        ),
    )


def finite_decimals():
    """Finite Decimals with a coefficient below 2**448 (no negative zero: jelly drops its sign)."""
    st = _strategies()

    def build(sign: int, coefficient: int, exponent: int) -> decimal.Decimal:
        if coefficient == 0:
            sign = 0
        return decimal.Decimal((sign, tuple(int(d) for d in str(coefficient)), exponent))

    return st.builds(
        build,
        st.integers(0, 1),
        st.one_of(st.integers(0, 10**6), st.integers(0, MAX_BANANA_INT)),
        st.one_of(st.integers(-30, 30), st.integers(-(10**6), 10**6)),
    )


def date_likes():
    st = _strategies()
    return st.one_of(
        st.datetimes().map(lambda d: d.replace(fold=0)),
        st.dates(),
        st.times().map(lambda t: t.replace(fold=0)),
        st.timedeltas(),
    )


def jelly_atoms():
    """Every hashable builtin jelly type."""
    st = _strategies()
    return st.one_of(
        st.none(),
        st.booleans(),
        banana_ints(),
        any_floats(),
        any_bytes(),
        any_text(),
        date_likes(),
        finite_decimals(),
    )


def hashables():
    """Hashable jelly values: atoms, and tuples/frozensets of them."""
    st = _strategies()
    return st.recursive(
        jelly_atoms(),
        lambda children: st.one_of(
            st.lists(children, max_size=4).map(tuple),
            st.frozensets(children, max_size=4),
        ),
        max_leaves=8,
    )


def _share(pair):
    """Place the same object twice (and its partner once) so jelly must reference it."""
    shared, other = pair
    return [shared, other, shared]


def jellyable(max_leaves: int = 25):
    """Nested values of every builtin jelly type, with occasional shared sub-objects."""
    st = _strategies()

    def extend(children):
        containers = st.one_of(
            st.lists(children, max_size=5),
            st.lists(children, max_size=5).map(tuple),
            st.dictionaries(hashables(), children, max_size=5),
            st.sets(hashables(), max_size=5),
            st.frozensets(hashables(), max_size=5),
        )
        return st.one_of(
            containers,
            st.tuples(containers, children).map(_share),
            st.tuples(containers, children).map(lambda p: (p[0], {"a": p[0], "b": p[1]})),
            hashables().map(lambda h: [h, {h}, {h: h}]),
        )

    return st.recursive(jelly_atoms() | hashables(), extend, max_leaves=max_leaves)


def raw_banana(max_leaves: int = 30):
    """Raw banana values: nested lists/tuples of ints, floats and bytes."""
    st = _strategies()
    return st.recursive(
        st.one_of(banana_ints(), any_floats(), any_bytes()),
        lambda children: st.one_of(st.lists(children, max_size=6), st.lists(children, max_size=6).map(tuple)),
        max_leaves=max_leaves,
    )


def as_lists(value: Any) -> Any:
    """A raw banana value as it decodes: tuples become lists."""
    if isinstance(value, (list, tuple)):
        return [as_lists(v) for v in value]
    return value
