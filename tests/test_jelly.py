"""Focused unit tests of jelly: shared and cyclic references, unpersistables, refused types,
malformed jelly, decimals, dates, ints, input types, dialect switching, and the hook of
``pbfast._core.dumps``/``loads``."""

from __future__ import annotations

import collections
import datetime
import decimal
import enum

import pbfast
import pytest
from helpers import (
    MAX_BANANA_INT,
    assert_deep_equal,
    twisted_dumps,
    twisted_loads,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from pbfast import BananaError, InsecureJelly, JellyError, Unpersistable, _core, banana
from pbfast._core import UnresolvedReference


def twisted_sexp(value):
    from twisted.spread import jelly

    return jelly.jelly(value, taster=jelly.globalSecurity)


def walk(value, seen=None):
    """Every object reachable from ``value`` (each once)."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return
    seen.add(id(value))
    yield value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from walk(k, seen)
            yield from walk(v, seen)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for v in value:
            yield from walk(v, seen)
    elif isinstance(value, Point):
        yield from walk(value.x, seen)
        yield from walk(value.y, seen)


def assert_no_unresolved(value):
    leaks = [v for v in walk(value) if isinstance(v, UnresolvedReference)]
    assert not leaks, f"UnresolvedReference leaked: {leaks!r}"


def same_as_twisted(value):
    data = pbfast.dumps(value)
    assert data == twisted_dumps(value), f"pbfast {data.hex()}\ntwisted {twisted_dumps(value).hex()}"
    return data


# ------------------------------------------------------------------------------------------------
# Shared references and cycles
# ------------------------------------------------------------------------------------------------


def test_self_containing_list():
    lst = []
    lst.append(lst)
    out = pbfast.loads(same_as_twisted(lst))
    assert type(out) is list and len(out) == 1 and out[0] is out
    assert pbfast.jelly(lst) == [b"reference", 1, [b"list", [b"dereference", 1]]]


def test_self_containing_dict():
    d = {}
    d["me"] = d
    out = pbfast.loads(same_as_twisted(d))
    assert type(out) is dict and list(out) == ["me"] and out["me"] is out


def test_tuple_cycle_through_a_list():
    lst = []
    t = (lst,)
    lst.append(t)
    for root in (t, lst, [t, lst], {"t": t}):
        out = pbfast.loads(same_as_twisted(root))
        assert_no_unresolved(out)
        assert_deep_equal(out, root)
    out = pbfast.loads(pbfast.dumps(t))
    assert type(out) is tuple and type(out[0]) is list and out[0][0] is out


def test_tuple_cycle_through_a_dict_value():
    d = {}
    t = (1, d)
    d["t"] = t
    out = pbfast.loads(same_as_twisted([t, d]))
    assert_no_unresolved(out)
    assert out[0][1] is out[1] and out[1]["t"] is out[0]


def test_shared_dict_inside_tuple():
    d = {"k": 1}
    out = pbfast.loads(same_as_twisted((d, d)))
    assert type(out) is tuple and out[0] is out[1] and out[0] == {"k": 1}


def test_reference_ids_follow_second_sighting_like_twisted():
    a, b = [1], [2]
    value = [a, b, b, a]
    expected = [
        b"list",
        [b"reference", 2, [b"list", 1]],
        [b"reference", 1, [b"list", 2]],
        [b"dereference", 1],
        [b"dereference", 2],
    ]
    assert twisted_sexp(value) == expected
    assert pbfast.jelly(value) == expected
    out = pbfast.loads(same_as_twisted(value))
    assert out == [[1], [2], [2], [1]]
    assert out[0] is out[3] and out[1] is out[2] and out[0] is not out[1]


def test_identity_of_every_shared_container_type():
    shared = {
        "list": [1],
        "tuple": (1, 2),
        "dict": {"a": 1},
        "set": {1},
        "frozenset": frozenset({2}),
    }
    for name, obj in shared.items():
        out = pbfast.loads(same_as_twisted([obj, [obj], {"k": obj}]))
        assert type(out[0]) is type(obj), name
        assert out[0] is out[1][0] is out[2]["k"], name


def test_shared_hashable_in_set_and_dict_key():
    t = (1, "x")
    value = [t, {t}, {t: t}, frozenset({t})]
    out = pbfast.loads(same_as_twisted(value))
    assert_deep_equal(out, value)
    (member,) = out[1]
    (key,) = out[2]
    assert out[0] is member is key is out[2][key] is next(iter(out[3]))


def test_dict_keys_by_their_place():
    # The decoder finds a dict's key by what the last dict had at the same place, the encoder by
    # the key object it last wrote there: keys that move, change length or text, come after the
    # eighth pair, are long, not ASCII, vocabulary words or equal but other objects all come back
    # (and the bytes are Twisted's); short lists and tuples of scalars as values, shared or not.
    long_key = "k" * 30
    shared = ["a", 1]
    shapes = [
        {"id": 1, "name": "a"},
        {"name": "b", "id": 2},
        {"id": 3, "nam": "c"},
        {"ie": 4, "name": "d"},
        {f"key{i}": i for i in range(12)},
        {f"key{11 - i}": i for i in range(12)},
        {long_key: 1, "é": 2, "": 3},
        {"é": 4, long_key: 5, "": 6},
        {1: "int key", "id": 7},
        {"".join(["i", "d"]): 8, "list": ["x", 2.5, None, True, b"y"], "None": (1, "z")},
        {"id": shared, "name": shared, "tags": [shared, (shared,)]},
    ]
    value = shapes * 2
    out = pbfast.loads(same_as_twisted(value))
    assert out == value
    assert [list(d) for d in out] == [list(d) for d in value]
    # A key that repeats is one object.
    assert out[0].keys() & out[1].keys() == {"id", "name"}
    assert next(iter(out[0])) is list(out[1])[1] is next(iter(out[9]))


def test_equal_atoms_are_not_shared():
    # Strings, bytes, ints, datetimes and decimals are never referenced, as in Twisted.
    for atom in ("abc", b"abc", 2**100, 1.5, datetime.date(2020, 1, 2), decimal.Decimal("1.5"), None, True):
        same_as_twisted([atom, atom])
        single = pbfast.jelly(atom)
        assert pbfast.jelly([atom, atom]) == [b"list", single, single]


# Cyclic object graphs: lists and dicts (mutable, can close cycles) and tuples over them.
@st.composite
def cyclic_graphs(draw):
    n_mutable = draw(st.integers(1, 4))
    nodes = [draw(st.sampled_from([list, dict]))() for _ in range(n_mutable)]
    for _ in range(draw(st.integers(0, 3))):
        members = draw(st.lists(st.sampled_from(nodes), min_size=1, max_size=3))
        nodes.append(tuple(members))
    for node in nodes[:n_mutable]:
        targets = draw(st.lists(st.sampled_from(nodes), max_size=3))
        if isinstance(node, list):
            node.extend(targets)
        else:
            for i, target in enumerate(targets):
                node[f"k{i}"] = target
    root = draw(st.sampled_from(nodes))
    return root if draw(st.booleans()) else [root, *nodes]


@settings(max_examples=150, deadline=None)
@given(cyclic_graphs())
def test_cyclic_graphs_match_twisted_and_round_trip(graph):
    data = same_as_twisted(graph)
    out = pbfast.loads(data)
    assert_no_unresolved(out)
    assert_deep_equal(out, graph)
    assert_deep_equal(pbfast.loads(twisted_dumps(graph)), graph)
    # (Twisted's own unjelly is not checked here: with tuples in cycles it can leave its
    # placeholder ``_Tuple`` objects in the result or trip an assertion.)


def test_unresolved_references_never_leak_from_valid_streams():
    """Forward dereferences to objects still being built are patched in place."""
    cases = [
        # A dereference before its reference (lists, tuples, dict values).
        [b"list", [b"dereference", 1], [b"reference", 1, [b"tuple", 1]]],
        [b"list", [b"tuple", [b"dereference", 1]], [b"reference", 1, [b"tuple", 1]]],
        [b"list", [b"dictionary", [2, [b"dereference", 1]]], [b"reference", 1, [b"tuple", 1]]],
        [b"list", [b"tuple", [b"tuple", [b"dereference", 1]]], [b"reference", 1, [b"frozenset", 1]]],
        # A tuple that contains itself through a list or a dict (what Twisted writes).
        [b"reference", 1, [b"tuple", [b"list", [b"dereference", 1]]]],
        [b"reference", 1, [b"tuple", [b"tuple", [b"tuple", [b"list", [b"dereference", 1]]]]]],
        [b"reference", 1, [b"tuple", 5, [b"dictionary", [b"me", [b"dereference", 1]]]]],
    ]
    for sexp in cases:
        out = pbfast.unjelly(sexp)
        assert_no_unresolved(out)
        assert_no_unresolved(pbfast.loads(banana.encode(sexp)))
    out = pbfast.unjelly(cases[0])
    assert out[0] is out[1] and out[0] == (1,)
    out = pbfast.unjelly(cases[4])
    assert type(out) is tuple and out[0][0] is out
    out = pbfast.unjelly(cases[6])
    assert out[1][b"me"] is out


# ------------------------------------------------------------------------------------------------
# Unpersistable and refused values
# ------------------------------------------------------------------------------------------------


class MyInt(int):
    pass


class MyStr(str):
    pass


class MyList(list):
    pass


class Color(enum.IntEnum):
    RED = 1


class Plain:
    def method(self):
        return 1


class Outer:
    class Inner:
        pass


def qual(t: type) -> str:
    """Twisted's ``reflect.qual``: module and ``__name__`` (not ``__qualname__``)."""
    from twisted.python import reflect

    assert reflect.qual(t) == f"{t.__module__}.{t.__name__}"
    return reflect.qual(t)


@pytest.mark.parametrize(
    "value",
    [
        object(),
        range(3),
        bytearray(b"ab"),
        MyInt(5),
        MyStr("s"),
        MyList([1]),
        Color.RED,
        collections.OrderedDict(a=1),
        Plain(),
        len,
        [].append,
        complex(1, 2),
        Ellipsis,
        Outer.Inner(),
    ],
    ids=lambda v: type(v).__name__,
)
def test_unpersistable_like_twisted(value):
    data = same_as_twisted(value)
    reason = f"instance of class {qual(type(value))} deemed insecure"
    assert pbfast.jelly(value) == [b"unpersistable", reason.encode()]
    out = pbfast.loads(data)
    assert type(out) is Unpersistable
    assert out == Unpersistable(reason) and out.reason == reason
    assert hash(out) == hash(Unpersistable(reason))
    assert out != Unpersistable("other") and out != reason
    assert reason in repr(out)


def test_shared_unpersistable_stays_shared():
    o = object()
    out = pbfast.loads(same_as_twisted([o, o, [o]]))
    assert type(out[0]) is Unpersistable and out[0] is out[1] is out[2][0]


class Stamp(datetime.datetime):
    pass


def test_datetime_subclass_is_unpersistable():
    value = Stamp(2020, 1, 1)
    out = pbfast.loads(same_as_twisted(value))
    assert out == Unpersistable(f"instance of class {qual(Stamp)} deemed insecure")


def test_local_class_instance_is_named_like_twisted():
    # Twisted names the class by __module__ + "." + __name__, also for nested/local classes.
    class Local:
        pass

    for value in (Local(), Outer.Inner(), [Local(), Outer.Inner()]):
        same_as_twisted(value)


def test_nested_class_object_is_named_like_twisted():
    for cls in (Outer.Inner, Outer):
        assert pbfast.jelly(cls) == [b"class", qual(cls).encode()]
        same_as_twisted(cls)


def _lambda():
    return 0


@pytest.mark.parametrize(
    "value",
    [_lambda, lambda: 0, Plain().method, datetime, [1, datetime], {"f": _lambda}],
    ids=["function", "lambda", "bound-method", "module", "module-in-list", "function-in-dict"],
)
def test_code_objects_raise_jelly_error(value):
    with pytest.raises(JellyError) as info:
        pbfast.dumps(value)
    assert type(info.value) is JellyError
    assert info.value.offset is None


def test_class_objects_encode_but_refuse_to_decode():
    for cls, name in ((int, b"builtins.int"), (type, b"builtins.type"), (Plain, qual(Plain).encode())):
        assert pbfast.jelly(cls) == [b"class", name]
        data = same_as_twisted(cls)
        with pytest.raises(InsecureJelly) as info:
            pbfast.loads(data)
        assert "'class'" in str(info.value) and info.value.offset == 0
        assert "at byte 0" in str(info.value)
    data = same_as_twisted([1, int])
    with pytest.raises(InsecureJelly) as info:
        pbfast.loads(data)
    assert info.value.offset == 6 and "at byte 6" in str(info.value)


@pytest.mark.parametrize(
    "sexp, tag",
    [
        ([b"class", b"builtins.int"], "class"),
        ([b"module", b"os"], "module"),
        ([b"function", b"os.system"], "function"),
        ([b"method", b"m", [b"None"], [b"class", b"x.Y"]], "method"),
        ([b"instance", [b"class", b"x.Y"], [b"dictionary"]], "instance"),
        ([b"classobj", b"x.Y"], "classobj"),
        ([b"foo.Bar", [b"dictionary"]], "foo.Bar"),
        ([b"os.system", b"rm -rf /"], "os.system"),
        ([b"copy", b"x.Y", [b"dictionary"]], "copy"),
        ([b"nosuchtag"], "nosuchtag"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_insecure_jelly_is_refused_with_offset_and_tag(sexp, tag):
    for prefix in ([b"list"], [b"list", 1, [b"unicode", b"x"]]):
        whole = prefix + [sexp]
        data = banana.encode(whole)
        start = len(data) - len(banana.encode(sexp))
        with pytest.raises(InsecureJelly) as info:
            pbfast.loads(data)
        error = info.value
        assert error.offset == start
        assert f"at byte {start}" in str(error)
        assert tag in str(error)
        with pytest.raises(InsecureJelly):
            pbfast.unjelly(whole)
        with pytest.raises(InsecureJelly):
            banana.Decoder(jelly=True).feed(data)


MALFORMED = {
    "empty list": [],
    "no tag (int)": [1],
    "no tag (float)": [1.5],
    "no tag (list)": [[b"list"]],
    "dictionary item not a pair": [b"dictionary", [b"a"]],
    "dictionary item a triple": [b"dictionary", [1, 2, 3]],
    "dictionary item not a list": [b"dictionary", 5],
    "dictionary key unhashable": [b"dictionary", [[b"list"], 1]],
    "unicode without item": [b"unicode"],
    "unicode with two items": [b"unicode", b"a", b"b"],
    "unicode item not bytes": [b"unicode", 5],
    "unicode invalid UTF-8": [b"unicode", b"\xff\xfe"],
    "unicode lone surrogate": [b"unicode", b"\xed\xa0\x80"],
    "boolean without item": [b"boolean"],
    "boolean with two items": [b"boolean", b"true", b"true"],
    "boolean not true/false": [b"boolean", b"yes"],
    "None with an item": [b"None", 1],
    "datetime without item": [b"datetime"],
    "datetime two items": [b"datetime", b"2020 1 1", b"x"],
    "datetime bad month": [b"datetime", b"2020 13 1"],
    "datetime too many fields": [b"datetime", b"2020 1 1 0 0 0 0 0"],
    "date not numbers": [b"date", b"x y z"],
    "date two fields": [b"date", b"2020 1"],
    "time hour 25": [b"time", b"25 0 0 0"],
    "timedelta two fields": [b"timedelta", b"1 2"],
    "timedelta not bytes": [b"timedelta", 1],
    "decimal one item": [b"decimal", 1],
    "decimal exponent not int": [b"decimal", 1, b"x"],
    "decimal value not int": [b"decimal", b"1", 2],
    "set member unhashable": [b"set", [b"list"]],
    "unpersistable without reason": [b"unpersistable"],
    "dereference undefined": [b"dereference", 5],
    "dereference undefined in list": [b"list", [b"dereference", 1]],
    "dereference id not int": [b"dereference", b"x"],
    "reference without value": [b"reference", 1],
    "reference to a bare int": [b"reference", 1, 5],
    "reference id not int": [b"reference", b"x", [b"list"]],
    "reference defined twice": [b"list", [b"reference", 1, [b"list"]], [b"reference", 1, [b"list"]]],
    "tuple containing only itself": [b"reference", 1, [b"tuple", [b"dereference", 1]]],
    "frozenset containing itself": [b"reference", 1, [b"frozenset", [b"dereference", 1]]],
    "set containing itself": [b"reference", 1, [b"set", [b"dereference", 1]]],
    "cycle through a set member": [b"reference", 1, [b"tuple", [b"set", [b"dereference", 1]]]],
    "cycle through a dict key": [b"reference", 1, [b"tuple", [b"dictionary", [[b"dereference", 1], 1]]]],
    "forward dereference as set member": [
        b"list",
        [b"set", [b"dereference", 1]],
        [b"reference", 1, [b"tuple", 1]],
    ],
    "forward dereference as dict key": [
        b"list",
        [b"dictionary", [[b"dereference", 1], 2]],
        [b"reference", 1, [b"tuple", 1]],
    ],
}


@pytest.mark.parametrize("sexp", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_jelly_raises_jelly_error(sexp):
    data = banana.encode(sexp)
    for call in (
        lambda: pbfast.loads(data),
        lambda: pbfast.unjelly(sexp),
        lambda: banana.Decoder(jelly=True).feed(data),
        lambda: pbfast.loads(banana.encode([b"list", 1, sexp])),
    ):
        with pytest.raises(JellyError) as info:
            call()
        # Malformed, not a policy refusal.
        assert type(info.value) is JellyError, f"{type(info.value).__name__}: {info.value}"
        assert info.value.offset is not None
        assert f"at byte {info.value.offset}" in str(info.value)


# A dereference to an id that is never defined is only known to be bad once the whole expression
# has been read (forward references are legal); its offset may be the expression's.
DANGLING = {"dereference undefined", "dereference undefined in list"}


@pytest.mark.parametrize("sexp", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_jelly_offset_points_into_the_bad_list(sexp, request):
    whole = [b"list", [b"unicode", b"padding"], sexp]
    data = banana.encode(whole)
    start = len(data) - len(banana.encode(sexp))
    with pytest.raises(JellyError) as info:
        pbfast.loads(data)
    offset = info.value.offset
    if request.node.callspec.id in DANGLING:
        assert 0 <= offset < len(data)
    else:
        assert start <= offset < len(data), f"offset {offset}, bad list at {start}..{len(data)}"


def test_jelly_error_on_a_stream_fails_the_decoder_with_the_offset():
    good = pbfast.dumps([1, 2])
    bad = banana.encode([b"unicode", 5])
    decoder = banana.Decoder(jelly=True)
    assert decoder.feed(good) == [[1, 2]]
    with pytest.raises(JellyError) as info:
        decoder.feed(bad)
    assert info.value.offset >= len(good)


# ------------------------------------------------------------------------------------------------
# Decimals, dates, bools, ints
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["9.95", "0", "1E+10", "-123.456", "0.000001", "1.000", "1E-1000000", "-5E+999", "0E+7", "0.00"]
)
def test_decimal_round_trip_keeps_exponent(text):
    value = decimal.Decimal(text)
    out = pbfast.loads(same_as_twisted(value))
    assert type(out) is decimal.Decimal
    assert out.as_tuple() == value.as_tuple()


@pytest.mark.parametrize("text", ["-0", "-0.00", "-0E+5"])
def test_decimal_negative_zero_loses_its_sign(text):
    value = decimal.Decimal(text)
    data = same_as_twisted(value)
    out = pbfast.loads(data)
    assert out.as_tuple() == (0, (0,), value.as_tuple().exponent)
    assert out.as_tuple() == twisted_loads(data).as_tuple()


def test_decimal_coefficient_limits():
    largest = decimal.Decimal((1, tuple(int(d) for d in str(MAX_BANANA_INT)), -3))
    assert pbfast.loads(same_as_twisted(largest)).as_tuple() == largest.as_tuple()
    too_big = decimal.Decimal(10**135)  # > 2**448
    with pytest.raises(BananaError):
        pbfast.dumps(too_big)


@pytest.mark.parametrize("text", ["NaN", "sNaN", "Infinity", "-Infinity", "-NaN"])
def test_non_finite_decimal_raises_jelly_error(text):
    with pytest.raises(JellyError) as info:
        pbfast.dumps([decimal.Decimal(text)])
    assert type(info.value) is JellyError


@pytest.mark.parametrize(
    "value",
    [
        datetime.datetime(2020, 7, 11, 1, 16, 5, 344),
        datetime.datetime.min,
        datetime.datetime.max,
        datetime.date.min,
        datetime.date.max,
        datetime.time.max,
        datetime.time(0, 0),
        datetime.timedelta(days=-1, seconds=5, microseconds=7),
        datetime.timedelta(hours=-1),
        datetime.timedelta(microseconds=-1),
        datetime.timedelta.min,
        datetime.timedelta.max,
        datetime.timedelta(0),
    ],
    ids=repr,
)
def test_dates_and_timedeltas(value):
    out = pbfast.loads(same_as_twisted(value))
    assert_deep_equal(out, value)


@pytest.mark.parametrize(
    "value",
    [
        datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC),
        datetime.time(1, 2, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
        [datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)],
    ],
    ids=["datetime", "time", "datetime-in-list"],
)
def test_tz_aware_raises_jelly_error(value):
    with pytest.raises(JellyError):
        pbfast.dumps(value)


def test_bools_are_not_ints():
    value = [True, False, 1, 0, {True: 1, 0: False}, (False,), {True}]
    out = pbfast.loads(same_as_twisted(value))
    assert_deep_equal(out, value)
    assert [type(v) for v in out[:4]] == [bool, bool, int, int]
    assert [type(k) for k in out[4]] == [bool, int]
    assert out[0] is True and out[1] is False


INT_BOUNDARIES = [
    0,
    1,
    -1,
    2**31 - 1,
    2**31,
    -(2**31),
    -(2**31) - 1,
    2**32,
    2**63 - 1,
    2**63,
    -(2**63),
    -(2**63) - 1,
    2**64 - 1,
    2**64,
    -(2**64),
    2**441,
    MAX_BANANA_INT,
    -MAX_BANANA_INT,
]


@pytest.mark.parametrize("value", INT_BOUNDARIES, ids=str)
def test_ints_at_boundaries(value):
    data = same_as_twisted(value)
    # INT/NEG up to 2**31 in magnitude (-2**31 is NEG), LONGINT/LONGNEG beyond.
    small = -(2**31) <= value <= 2**31 - 1
    assert data[-1] == (0x81 if small and value >= 0 else 0x83 if small else 0x85 if value > 0 else 0x86)
    out = pbfast.loads(data)
    assert type(out) is int and out == value
    assert banana.decode(banana.encode(value)) == value


@pytest.mark.parametrize("value", [2**448, -(2**448), [1, 2**500]], ids=["2**448", "-2**448", "in-list"])
def test_ints_beyond_banana_raise_banana_error(value):
    with pytest.raises(BananaError) as info:
        pbfast.dumps(value)
    assert info.value.offset is None
    with pytest.raises(BananaError):
        banana.encode(value)


def test_lone_surrogate_str_raises_jelly_error():
    # A str that has no UTF-8 form cannot be expressed as jelly: the documented JellyError.
    with pytest.raises(JellyError):
        pbfast.dumps("a\ud800b")


def test_str_round_trip_non_ascii():
    value = ["", "h\xe9llo", "\u65e5\u672c", "\U0001f600", "a\x00b", "list", "None", "x" * 10_000]
    out = pbfast.loads(same_as_twisted(value))
    assert_deep_equal(out, value)


# ------------------------------------------------------------------------------------------------
# Input types, dialects
# ------------------------------------------------------------------------------------------------


def test_memoryview_and_bytearray_input():
    value = {"a": [1, 2.5, b"x", None]}
    data = pbfast.dumps(value)
    for buf in (data, bytearray(data), memoryview(data), memoryview(bytearray(data))):
        assert_deep_equal(pbfast.loads(buf), value)
        assert_deep_equal(banana.Decoder(jelly=True).feed(buf), [value])
        assert banana.decode(buf) == pbfast.jelly(value)
    # A slice of a larger buffer, and a non-contiguous view.
    big = b"\xff" * 7 + data + b"\xff" * 3
    assert_deep_equal(pbfast.loads(memoryview(big)[7 : 7 + len(data)]), value)
    strided = bytes(b for pair in zip(data, b"\x00" * len(data), strict=True) for b in pair)
    assert_deep_equal(pbfast.loads(memoryview(strided)[::2]), value)
    with pytest.raises(TypeError):
        pbfast.loads("not bytes")
    with pytest.raises(TypeError):
        banana.Decoder().feed([1, 2])


def test_loads_wants_exactly_one_expression():
    one = pbfast.dumps([1])
    with pytest.raises(BananaError) as info:
        pbfast.loads(one + one)
    assert info.value.offset == len(one)
    with pytest.raises(BananaError) as info:
        pbfast.loads(one[:-1])
    assert info.value.offset is not None
    with pytest.raises(BananaError):
        pbfast.loads(b"")


def test_decoder_dialect_switch_from_none_to_pb():
    """Twisted negotiates in dialect 'none' ([b"pb", b"none"] offer, b"pb" answer) and then
    switches both directions to the chosen dialect between expressions."""
    decoder = banana.Decoder("none")
    assert decoder.dialect == "none"
    offer = banana.encode([b"pb", b"none"], "none")
    assert decoder.feed(offer) == [[b"pb", b"none"]]
    # In 'none' a VOCAB token is an error; in 'pb' it is a word.
    with pytest.raises(BananaError):
        banana.Decoder("none").feed(b"\x08\x87")
    decoder.dialect = "pb"
    assert decoder.dialect == "pb"
    value = [b"message", {"list": None}]
    assert_deep_equal(decoder.feed(pbfast.dumps(value)), [pbfast.jelly(value)])

    jd = banana.Decoder("none", jelly=True)
    assert jd.feed(pbfast.dumps(value, dialect="none")) == [value]
    jd.dialect = "pb"
    assert jd.feed(pbfast.dumps(value)) == [value]
    assert jd.offset == len(pbfast.dumps(value, dialect="none")) + len(pbfast.dumps(value))
    for bad in ("foolscap", "PB", ""):
        with pytest.raises(ValueError):
            jd.dialect = bad
        with pytest.raises(ValueError):
            pbfast.dumps(1, dialect=bad)
        with pytest.raises(ValueError):
            pbfast.loads(b"\x01\x81", dialect=bad)


# ------------------------------------------------------------------------------------------------
# The hook of pbfast._core.dumps/loads
# ------------------------------------------------------------------------------------------------


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __repr__(self):
        return f"Point({self.x!r}, {self.y!r})"


def encode_hook(track: bool, calls: list):
    def hook(obj):
        calls.append(obj)
        if type(obj) is Point:
            return ((b"point", obj.x, obj.y), track)
        return None

    return hook


def decode_hook(calls: list):
    def hook(tag, items):
        calls.append((tag, list(items)))
        assert tag == b"point"
        return Point(*items)

    return hook


def test_hook_that_changes_the_value_being_written():
    # The hook drops containers written before it (the last references to them) and puts new
    # ones in; a new container must never be taken for a dropped one at the same address (a
    # dereference where a list is), and the writer must not read what it no longer holds.
    for round_ in range(50):
        value = [[round_], {"k": [1]}, (2, [3]), Point(0, 0), None, None, None]

        def hook(obj, value=value, round_=round_):
            value[0] = value[1] = value[2] = None
            value[4], value[5], value[6] = [round_], {"k": [1]}, (2, [3])
            return None

        back = pbfast.loads(_core.dumps(value, hook=hook))
        want_tail = [[round_], {"k": [1]}, (2, [3])]
        assert back[:3] == [[round_], {"k": [1]}, (2, [3])] and back[4:] == want_tail, back
    # A hook that shrinks a list being written: a clean error, not a read past its end.
    shrinking = [[1], Point(0, 0), [2], [3]]
    with pytest.raises(RuntimeError, match="changed size"):
        _core.dumps(shrinking, hook=lambda obj: shrinking.clear())


def test_hook_tracked_objects_are_referenced():
    calls = []
    p = Point(1, [2])
    o = object()
    data = _core.dumps([p, p, o, "s", {"k": p}], hook=encode_hook(True, calls))
    # The hook sees each non-builtin object once; builtins never reach it.
    assert calls == [p, o]
    assert banana.decode(data) == [
        b"list",
        [b"reference", 1, [b"point", 1, [b"list", 2]]],
        [b"dereference", 1],
        [b"unpersistable", b"instance of class builtins.object deemed insecure"],
        [b"unicode", b"s"],
        [b"dictionary", [[b"unicode", b"k"], [b"dereference", 1]]],
    ]
    decoded_calls = []
    out = _core.loads(data, hook=decode_hook(decoded_calls))
    assert len(decoded_calls) == 1
    assert type(out[0]) is Point and out[0] is out[1] is out[4]["k"]
    assert out[0].x == 1 and out[0].y == [2]
    assert type(out[2]) is Unpersistable
    # The same through an incremental decoder.
    (again,) = banana.Decoder(jelly=True, hook=decode_hook([])).feed(data)
    assert again[0] is again[1]


def test_hook_untracked_objects_are_emitted_each_time():
    calls = []
    p = Point(1, [2])
    data = _core.dumps([p, p], hook=encode_hook(False, calls))
    assert calls == [p, p]
    # Their items still share references (the same list object inside both).
    assert banana.decode(data) == [
        b"list",
        [b"point", 1, [b"reference", 1, [b"list", 2]]],
        [b"point", 1, [b"dereference", 1]],
    ]
    decoded_calls = []
    out = _core.loads(data, hook=decode_hook(decoded_calls))
    assert len(decoded_calls) == 2
    assert out[0] is not out[1]
    assert out[0].y is out[1].y


def test_hook_object_in_a_cycle():
    p = Point(1, None)
    p.y = [p]
    data = _core.dumps(p, hook=encode_hook(True, []))
    assert banana.decode(data) == [b"reference", 1, [b"point", 1, [b"list", [b"dereference", 1]]]]
    out = _core.loads(data, hook=decode_hook([]))
    assert type(out) is Point and out.y[0] is out
    assert_no_unresolved(out)


def test_hook_object_forward_dereference_is_patched():
    sexp = [
        b"list",
        [b"dereference", 1],
        [b"reference", 1, [b"point", 1, 2]],
        [b"tuple", [b"dereference", 1]],
    ]
    out = _core.loads(banana.encode(sexp), hook=decode_hook([]))
    assert_no_unresolved(out)
    assert type(out[0]) is Point and out[0] is out[1] is out[2][0]


def test_hook_returning_none_falls_back_to_twisted_behaviour():
    p = Point(1, 2)
    assert _core.dumps(p, hook=lambda obj: None) == pbfast.dumps(p) == twisted_dumps(p)


def test_without_a_hook_unknown_tags_are_insecure():
    data = _core.dumps(Point(1, 2), hook=encode_hook(True, []))
    with pytest.raises(InsecureJelly) as info:
        pbfast.loads(data)
    assert "point" in str(info.value)
    with pytest.raises(InsecureJelly):
        banana.Decoder(jelly=True).feed(data)


def test_hook_items_are_jellied_normally():
    p = Point("text", {"d": (1, None)})
    inner = Point(p, decimal.Decimal("1.5"))
    data = _core.dumps([inner], hook=encode_hook(True, []))
    out = _core.loads(data, hook=decode_hook([]))
    assert type(out[0]) is Point and type(out[0].x) is Point
    assert out[0].x.x == "text" and out[0].x.y == {"d": (1, None)}
    assert out[0].y == decimal.Decimal("1.5")
