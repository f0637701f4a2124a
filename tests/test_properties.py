"""Properties of pbfast's serialization: round trips, chunking independence, robustness against
arbitrary bytes, and the decoder limits (depth, element size, message size, header length)."""

from __future__ import annotations

import time
import tracemalloc

import pbfast
import pytest
from helpers import SPECIAL_WORDS, assert_deep_equal, jellyable
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pbfast import BananaError, InsecureJelly, JellyError, banana

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SIZE_LIMIT = 640 * 1024


def int_header(n: int) -> bytes:
    """Banana's base-128 header, least significant group first."""
    out = bytearray()
    while True:
        out.append(n & 0x7F)
        n >>= 7
        if not n:
            return bytes(out)


def string_token(body: bytes) -> bytes:
    return int_header(len(body)) + b"\x82" + body


# ------------------------------------------------------------------------------------------------
# Round trips
# ------------------------------------------------------------------------------------------------


@PROPERTY
@given(jellyable())
def test_round_trip(value):
    data = pbfast.dumps(value)
    assert_deep_equal(pbfast.loads(data), value)
    assert_deep_equal(pbfast.loads(bytearray(data)), value)
    assert_deep_equal(pbfast.loads(memoryview(data)), value)
    assert_deep_equal(pbfast.loads(pbfast.dumps(value, dialect="none"), dialect="none"), value)
    assert_deep_equal(pbfast.unjelly(pbfast.jelly(value)), value)
    # jelly() is the s-expression dumps() encodes.
    assert banana.encode(pbfast.jelly(value)) == data


# ------------------------------------------------------------------------------------------------
# Chunking does not matter
# ------------------------------------------------------------------------------------------------


@PROPERTY
@given(st.lists(jellyable(max_leaves=12), min_size=1, max_size=5), st.data())
def test_any_split_gives_the_same_values(values, data):
    encoded = [pbfast.dumps(v) for v in values]
    stream = b"".join(encoded)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12), label="cuts"))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]

    decoder = banana.Decoder(jelly=True)
    got = []
    for piece in pieces:
        got.extend(decoder.feed(piece))
    assert decoder.buffered == 0
    assert decoder.offset == len(stream)
    assert len(got) == len(values)
    for g, v in zip(got, values, strict=True):  # each value is its own reference id space
        assert_deep_equal(g, v)

    # One byte at a time, the values come out exactly when their last byte arrives.
    decoder = banana.Decoder(jelly=True)
    ends = {sum(len(e) for e in encoded[: i + 1]) for i in range(len(encoded))}
    got = []
    for i in range(len(stream)):
        out = decoder.feed(stream[i : i + 1])
        assert len(out) == (1 if i + 1 in ends else 0)
        got.extend(out)
    assert len(got) == len(values)
    for g, v in zip(got, values, strict=True):
        assert_deep_equal(g, v)


@PROPERTY
@given(st.lists(jellyable(max_leaves=12), min_size=1, max_size=4), st.data())
def test_raw_decoder_split_matches_whole(values, data):
    stream = b"".join(pbfast.dumps(v) for v in values)
    whole = banana.Decoder().feed(stream)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    decoder = banana.Decoder()
    got = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got.extend(decoder.feed(stream[a:b]))
    assert_deep_equal(got, whole)
    assert [banana.encode(v) for v in got] == [pbfast.dumps(v) for v in values]


# ------------------------------------------------------------------------------------------------
# Arbitrary input never crashes and raises only pbfast's decode errors
# ------------------------------------------------------------------------------------------------

DECODE_ERRORS = (BananaError, JellyError)  # InsecureJelly is a JellyError

_tags = st.sampled_from(
    SPECIAL_WORDS
    + (b"reference", b"dereference", b"boolean", b"unicode", b"set", b"frozenset", b"tuple", b"dictionary")
    + (b"foo.Bar", b"copy", b"persistent", b"unpersistable", b"\xff")
)
_ids = st.integers(-2, 4)


def _jellyish_extend(children):
    return st.one_of(
        st.tuples(_tags, st.lists(children, max_size=4)).map(lambda t: [t[0], *t[1]]),
        st.tuples(st.sampled_from([b"reference"]), _ids, children).map(list),
        st.tuples(st.sampled_from([b"dereference"]), _ids).map(list),
        st.lists(st.tuples(children, children).map(list), max_size=3).map(
            lambda items: [b"dictionary", *items]
        ),
        st.lists(children, max_size=3),
    )


#: S-expressions that look like jelly: real tags, references with colliding ids, bad arities.
jellyish = st.recursive(
    st.one_of(st.integers(-3, 3), st.sampled_from(SPECIAL_WORDS), st.floats(), st.binary(max_size=6)),
    _jellyish_extend,
    max_leaves=20,
)

_fragment = st.tuples(
    st.binary(max_size=3).map(lambda h: bytes(b & 0x7F for b in h)),
    st.integers(0x80, 0xFF),
    st.binary(max_size=9),
).map(lambda t: t[0] + bytes([t[1]]) + t[2])
arbitrary_bytes = st.one_of(
    st.binary(max_size=300),
    st.lists(st.one_of(_fragment, st.binary(max_size=3)), max_size=15).map(b"".join),
    jellyish.map(banana.encode).flatmap(lambda b: st.integers(0, len(b)).map(lambda n: b[:n] + b[n + 1 :])),
)


def _no_unresolved(value, seen=None) -> bool:
    from pbfast._core import UnresolvedReference

    seen = set() if seen is None else seen
    if id(value) in seen:
        return True
    seen.add(id(value))
    if isinstance(value, UnresolvedReference):
        return False
    if isinstance(value, dict):
        return all(_no_unresolved(k, seen) and _no_unresolved(v, seen) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return all(_no_unresolved(v, seen) for v in value)
    return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arbitrary_bytes)
def test_arbitrary_bytes_raise_only_decode_errors(data):
    for call in (
        lambda: pbfast.loads(data),
        lambda: pbfast.loads(data, dialect="none"),
        lambda: banana.decode(data),
        lambda: banana.Decoder().feed(data),
        lambda: banana.Decoder(jelly=True).feed(data),
    ):
        try:
            result = call()
        except DECODE_ERRORS:
            continue
        assert _no_unresolved(result)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(jellyish)
def test_jellyish_sexps_unjelly_or_raise_jelly_errors(sexp):
    try:
        data = banana.encode(sexp)
    except BananaError:
        return
    for call in (
        lambda: pbfast.loads(data),
        lambda: pbfast.unjelly(sexp),
        lambda: banana.Decoder(jelly=True).feed(data),
    ):
        try:
            result = call()
        except JellyError as e:  # includes InsecureJelly
            assert e.offset is not None and 0 <= e.offset < len(data), e
            continue
        assert _no_unresolved(result), result


def test_decode_errors_are_pbfast_errors():
    assert issubclass(InsecureJelly, JellyError)
    assert issubclass(BananaError, pbfast.PbfastError) and issubclass(JellyError, pbfast.PbfastError)


# ------------------------------------------------------------------------------------------------
# Limits
# ------------------------------------------------------------------------------------------------


DEEP_RAW = b"\x01\x80" * 10**6  # [[[[...
DEEP_JELLY = b"\x02\x80\x08\x87" * 10**6  # ["list", ["list", ...  (valid jelly as far as it goes)


@pytest.mark.parametrize("data", [DEEP_RAW, DEEP_JELLY], ids=["raw-lists", "jelly-lists"])
@pytest.mark.parametrize(
    "call",
    [
        lambda d: banana.Decoder().feed(d),
        lambda d: banana.Decoder(jelly=True).feed(d),
        lambda d: banana.decode(d),
        lambda d: pbfast.loads(d),
    ],
    ids=["Decoder", "Decoder-jelly", "banana.decode", "loads"],
)
def test_deep_nesting_is_refused_quickly(data, call):
    step = 2 if data is DEEP_RAW else 4
    start = time.perf_counter()
    with pytest.raises(BananaError) as info:
        call(data)
    assert time.perf_counter() - start < 2.0
    assert info.value.limit == "max_depth"
    assert info.value.offset == step * 1000  # the 1001st list header


def test_deep_nesting_fed_in_pieces():
    decoder = banana.Decoder()
    with pytest.raises(BananaError) as info:
        for _ in range(2000):
            assert decoder.feed(b"\x01\x80") == []
    assert info.value.limit == "max_depth"
    assert decoder.buffered < 10_000


def test_depth_limit_boundary():
    ok = b"\x01\x80" * 1000 + b"\x00\x81"
    value = banana.decode(ok)
    for _ in range(1000):
        assert type(value) is list and len(value) == 1
        value = value[0]
    assert value == 0
    with pytest.raises(BananaError) as info:
        banana.decode(b"\x01\x80" * 1001 + b"\x00\x81")
    assert info.value.limit == "max_depth"
    # A custom limit.
    assert banana.decode(b"\x01\x80" * 3 + b"\x00\x81", max_depth=3) == [[[0]]]
    with pytest.raises(BananaError) as info:
        banana.Decoder(max_depth=3).feed(b"\x01\x80" * 4 + b"\x00\x81")
    assert (info.value.limit, info.value.offset) == ("max_depth", 6)


@pytest.mark.parametrize("depth", [998, 999, 1000, 1001, 1200])
@pytest.mark.parametrize("leaf", [0, None, "s", []])
def test_dumps_never_writes_what_loads_refuses(depth, leaf):
    value = leaf
    for _ in range(depth):
        value = [value]
    # Every jelly list counts: ["list", ...] per level, plus ["None"]/["unicode", ...]/["list"]
    # for a leaf that is not a bare int.
    lists = depth + (0 if isinstance(leaf, int) else 1)
    if lists > 1000:
        with pytest.raises(JellyError):
            pbfast.dumps(value)
        # Bytes nested that deep are refused by a default decoder too.
        with pytest.raises(BananaError) as info:
            pbfast.loads(_nested_jelly_bytes(lists))
        assert info.value.limit == "max_depth"
    else:
        assert_deep_equal(pbfast.loads(pbfast.dumps(value)), value)


def _nested_jelly_bytes(lists: int) -> bytes:
    """``["list", ["list", ... ["None"]]]`` with ``lists`` jelly lists in all."""
    return b"\x02\x80\x08\x87" * (lists - 1) + b"\x01\x80\x01\x87"


@pytest.mark.parametrize(
    "header, kind",
    [
        (int_header(2**60) + b"\x82", "STRING"),
        (int_header(10**9) + b"\x80", "LIST"),
        (int_header(655361) + b"\x82", "STRING"),
        (int_header(655361) + b"\x80", "LIST"),
        (b"\x7f" * 64 + b"\x82", "STRING"),  # the largest header there is
    ],
    ids=["string-2**60", "list-10**9", "string-655361", "list-655361", "string-2**448-1"],
)
def test_huge_declared_lengths_are_refused_from_the_header(header, kind):
    tracemalloc.start()
    try:
        for dialect in ("pb", "none"):
            decoder = banana.Decoder(dialect)
            start = time.perf_counter()
            with pytest.raises(BananaError) as info:
                decoder.feed(header)
            assert time.perf_counter() - start < 0.5
            assert info.value.limit == "max_element_size"
            assert info.value.offset == 0
            assert decoder.buffered <= len(header)
            # Inside a list, and after a complete expression: the offset is the header's.
            decoder = banana.Decoder(dialect)
            assert decoder.feed(b"\x01\x81") == [1]
            with pytest.raises(BananaError) as info:
                decoder.feed(b"\x02\x80\x01\x81" + header)
            assert (info.value.limit, info.value.offset) == ("max_element_size", 6)
        for call in (banana.decode, pbfast.loads):
            with pytest.raises(BananaError) as info:
                call(header + b"\x00" * 16)
            assert info.value.limit == "max_element_size"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Only Python-level allocations are traced; nothing near the declared size is made there.
    assert peak < 1_000_000


def test_header_of_huge_string_then_partial_body_buffers_only_what_arrived():
    decoder = banana.Decoder()
    assert decoder.feed(int_header(SIZE_LIMIT) + b"\x82") == []
    assert decoder.feed(b"x" * 1000) == []
    assert decoder.buffered == len(int_header(SIZE_LIMIT)) + 1 + 1000


def test_element_size_limit_is_655360():
    body = b"x" * SIZE_LIMIT
    data = string_token(body)
    assert banana.encode(body) == data
    assert banana.decode(data) == body
    assert banana.Decoder().feed(data) == [body]
    assert pbfast.loads(data) == body
    assert pbfast.dumps(body) == data
    too_long = string_token(body + b"x")
    with pytest.raises(BananaError) as info:
        banana.Decoder().feed(too_long)
    assert (info.value.limit, info.value.offset) == ("max_element_size", 0)
    with pytest.raises(BananaError):
        banana.encode(body + b"x")
    with pytest.raises(BananaError):
        pbfast.dumps(body + b"x")

    items = [0] * SIZE_LIMIT
    data = int_header(SIZE_LIMIT) + b"\x80" + b"\x00\x81" * SIZE_LIMIT
    assert banana.encode(items) == data
    assert banana.decode(data) == items
    with pytest.raises(BananaError) as info:
        banana.decode(int_header(SIZE_LIMIT + 1) + b"\x80" + b"\x00\x81" * (SIZE_LIMIT + 1))
    assert info.value.limit == "max_element_size"
    with pytest.raises(BananaError):
        banana.encode(items + [0])


def test_custom_element_size_limit():
    assert banana.decode(string_token(b"abcd"), max_element_size=4) == b"abcd"
    with pytest.raises(BananaError) as info:
        banana.Decoder(max_element_size=4).feed(string_token(b"abcde"))
    assert info.value.limit == "max_element_size"
    with pytest.raises(BananaError) as info:
        banana.decode(banana.encode([1, 2, 3, 4, 5]), max_element_size=4)
    assert info.value.limit == "max_element_size"


def test_custom_max_message_size():
    limit = 100
    exact = string_token(b"y" * 98)  # 2 + 98 = 100 bytes
    assert len(exact) == limit
    over = string_token(b"y" * 99)
    assert banana.decode(exact, max_message_size=limit) == b"y" * 98
    assert pbfast.loads(exact, max_message_size=limit) == b"y" * 98
    decoder = banana.Decoder(max_message_size=limit)
    # Many expressions each within the limit are fine, whatever their total.
    assert decoder.feed(exact * 5) == [b"y" * 98] * 5
    # A string header that declares too much is refused before its body arrives.
    with pytest.raises(BananaError) as info:
        decoder.feed(over[:2])
    assert (info.value.limit, info.value.offset) == ("max_message_size", 500)
    for call in (banana.decode, pbfast.loads):
        with pytest.raises(BananaError) as info:
            call(over, max_message_size=limit)
        assert info.value.limit == "max_message_size"

    # A list whose small elements add up past the limit.
    many = banana.encode(list(range(60)))
    assert len(many) > limit
    decoder = banana.Decoder(max_message_size=limit)
    with pytest.raises(BananaError) as info:
        for i in range(len(many)):
            decoder.feed(many[i : i + 1])
    assert (info.value.limit, info.value.offset) == ("max_message_size", 0)
    assert decoder.buffered <= limit + 2  # nothing beyond the token that crossed the limit
    with pytest.raises(BananaError) as info:
        pbfast.loads(pbfast.dumps(list(range(60))), max_message_size=limit)
    assert info.value.limit == "max_message_size"


def test_header_length_limit():
    ok = b"\x00" * 63 + b"\x01\x81"  # 64 header bytes: 2**441
    assert banana.decode(ok) == 2**441
    assert banana.Decoder().feed(ok) == [2**441]
    too_long = b"\x00" * 64 + b"\x01\x81"  # 65 header bytes
    with pytest.raises(BananaError) as info:
        banana.Decoder().feed(too_long)
    assert (info.value.limit, info.value.offset) == ("max_header_length", 0)
    # 64 header bytes without a type byte are buffered; the 65th is refused at once.
    decoder = banana.Decoder()
    assert decoder.feed(b"\x00" * 64) == []
    assert decoder.buffered == 64
    with pytest.raises(BananaError) as info:
        decoder.feed(b"\x00")
    assert info.value.limit == "max_header_length"
    # Custom.
    assert banana.decode(b"\x00\x00\x00\x01\x81", max_header_length=4) == 2**21
    with pytest.raises(BananaError) as info:
        banana.decode(b"\x00\x00\x00\x00\x01\x81", max_header_length=4)
    assert info.value.limit == "max_header_length"


@pytest.mark.parametrize("limit", ["max_element_size", "max_message_size", "max_depth", "max_header_length"])
def test_limits_must_be_sane(limit):
    # A zero limit makes no sense for these (max_element_size=0 still allows empty strings).
    if limit == "max_element_size":
        assert banana.decode(b"\x82", max_element_size=0) == b""
        return
    with pytest.raises(ValueError):
        banana.Decoder(**{limit: 0})


# ------------------------------------------------------------------------------------------------
# Linear time on large values
# ------------------------------------------------------------------------------------------------


def _stream_in_chunks(data: bytes, chunk: int = 1024) -> tuple[list, float]:
    decoder = banana.Decoder(jelly=True)
    got = []
    start = time.perf_counter()
    for i in range(0, len(data), chunk):
        got.extend(decoder.feed(data[i : i + chunk]))
    return got, time.perf_counter() - start


def test_large_value_in_small_chunks_is_linear():
    """5 MB in 1 KB chunks. Not a speed test: a generous bound that only quadratic re-scanning
    (what Twisted's decoder does: minutes for this input) would break."""
    big_strings = [bytes([i]) * 500_000 for i in range(10)]  # few long tokens
    data = pbfast.dumps(big_strings)
    assert len(data) > 5_000_000
    got, elapsed = _stream_in_chunks(data)
    assert got == [big_strings]
    assert elapsed < 5.0

    small_items = [f"item {i}".encode() for i in range(400_000)]  # many short tokens
    value = [small_items[i : i + 50_000] for i in range(0, len(small_items), 50_000)]
    data = pbfast.dumps(value)
    assert len(data) > 5_000_000
    got, elapsed = _stream_in_chunks(data)
    assert got == [value]
    assert elapsed < 5.0
