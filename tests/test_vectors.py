"""Replay the byte-exact vectors of stock Twisted PB and foolscap (tests/vectors/) through pbfast,
in both directions. See tests/vectors/README.md for the formats."""

from __future__ import annotations

import hashlib
import re

import pbfast
import pytest
from helpers import (
    assert_deep_equal,
    case_id,
    deep_equal,
    eval_python,
    from_tagged,
    load_vectors,
)
from pbfast import BananaError, InsecureJelly, JellyError, Unpersistable, banana

TWISTED = load_vectors("twisted_pb.json")
FOOLSCAP = load_vectors("foolscap_tokens.json")


def params(cases):
    return pytest.mark.parametrize("case", cases, ids=[case_id(c) for c in cases])


def feed_all(decoder, chunks) -> list:
    out = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out


def one_byte_at_a_time(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def test_vector_files_have_every_section():
    for section in (
        "banana",
        "banana_decode",
        "banana_invalid",
        "banana_encode_errors",
        "jelly",
        "jelly_errors",
    ):
        assert TWISTED[section], section
    for section in ("tokens", "captures", "slices"):
        assert FOOLSCAP[section], section


# ------------------------------------------------------------------------------------------------
# banana: encode == Twisted's bytes in both dialects, and decode back
# ------------------------------------------------------------------------------------------------


@params(TWISTED["banana"])
def test_banana_encode(case):
    value = eval_python(case["python"])
    assert banana.encode(value, "pb").hex() == case["hex_pb"]
    assert banana.encode(value).hex() == case["hex_pb"]  # pb is the default
    assert banana.encode(value, "none").hex() == case["hex_none"]


@params(TWISTED["banana"])
@pytest.mark.parametrize("dialect", ["pb", "none"])
def test_banana_decode(case, dialect):
    data = bytes.fromhex(case[f"hex_{dialect}"])
    expected = from_tagged(case["sexp"])
    assert_deep_equal(banana.decode(data, dialect), expected)
    # Incrementally, whole and one byte at a time.
    for chunks in ([data], one_byte_at_a_time(data)):
        decoder = banana.Decoder(dialect)
        assert_deep_equal(feed_all(decoder, chunks), [expected])
        assert decoder.buffered == 0
        assert decoder.offset == len(data)


def test_banana_none_differs_from_pb_only_on_vocab_words():
    vocab = set(banana.PB_VOCAB[1:])

    def words(value):
        if isinstance(value, bytes):
            yield value
        elif isinstance(value, (list, tuple)):
            for item in value:
                yield from words(item)

    for case in TWISTED["banana"]:
        has_word = any(w in vocab for w in words(eval_python(case["python"])))
        assert (case["hex_pb"] != case["hex_none"]) == has_word, case["name"]


# ------------------------------------------------------------------------------------------------
# banana_decode: inputs Twisted accepts, possibly leaving a partial expression
# ------------------------------------------------------------------------------------------------


def completion(stack: list[dict]) -> tuple[bytes, object]:
    """Bytes that complete the open lists of ``open_list_stack`` (INT 0 for every missing
    element) and the value that is then delivered."""
    filler = b""
    inner = None
    for level in reversed(stack):
        items = from_tagged(level["items"])
        if inner is not None:
            items.append(inner)
        missing = level["expected"] - len(items)
        assert missing >= 0
        filler += b"\x00\x81" * missing
        items.extend([0] * missing)
        inner = items
    return filler, inner


@params(TWISTED["banana_decode"])
def test_banana_decode_vectors(case):
    """Values are delivered as Twisted delivers them, whatever the chunking.

    ``Decoder.buffered`` counts every byte of the incomplete expression: Twisted's leftover
    ``buffer`` *plus* the bytes of elements it already moved into partial lists (pbfast builds
    nothing until an expression is complete). So with no open list it equals
    ``len(leftover_hex)``; with open lists it is larger, and the bytes before it are exactly the
    complete expressions.
    """
    data = bytes.fromhex(case["hex"])
    dialect = case["dialect"]
    expected = [from_tagged(v) for v in case["values"]]
    leftover = bytes.fromhex(case["leftover_hex"])
    for chunks in ([data], one_byte_at_a_time(data)):
        decoder = banana.Decoder(dialect)
        assert decoder.dialect == dialect
        assert_deep_equal(feed_all(decoder, chunks), expected)
        assert decoder.offset == len(data)
        if case["open_lists"] == 0:
            assert decoder.buffered == len(leftover)
        else:
            assert decoder.buffered > len(leftover)
        assert data.endswith(leftover)
        consumed = len(data) - decoder.buffered
        fresh = banana.Decoder(dialect)
        assert_deep_equal(fresh.feed(data[:consumed]), expected)
        assert fresh.buffered == 0

    # Complete the open lists (when no token is cut) and check what Twisted had collected.
    if case["open_list_stack"] and not leftover:
        filler, value = completion(case["open_list_stack"])
        decoder = banana.Decoder(dialect)
        assert feed_all(decoder, [data]) == expected
        got = decoder.feed(filler)
        assert len(got) == 1 and decoder.buffered == 0
        if len(filler) > 10_000:  # the 655360-element list: plain == is enough and fast
            assert type(got[0]) is list and got[0] == value
        else:
            assert_deep_equal(got[0], value)

    # One-shot decoding wants exactly one complete expression.
    if len(expected) == 1 and not leftover and case["open_lists"] == 0:
        assert_deep_equal(banana.decode(data, dialect), expected[0])
    else:
        with pytest.raises(BananaError) as info:
            banana.decode(data, dialect)
        assert info.value.offset is not None
        assert 0 <= info.value.offset <= len(data)


def expected_limit(twisted_message: str) -> str | None:
    if "prefix" in twisted_message:
        return "max_header_length"
    if "too long" in twisted_message:
        return "max_element_size"
    return None


@params(TWISTED["banana_invalid"])
def test_banana_invalid(case):
    data = bytes.fromhex(case["hex"])
    dialect = case["dialect"]
    before = [from_tagged(v) for v in case["values_before_error"]]
    limit = expected_limit(case["error"]["message"])

    decoder = banana.Decoder(dialect)
    with pytest.raises(BananaError) as info:
        decoder.feed(data)
    error = info.value
    assert error.offset is not None
    assert 0 <= error.offset < len(data)
    assert error.limit == limit
    assert f"at byte {error.offset}" in str(error)
    # The decoder stays failed: a stream cannot be resynchronised.
    with pytest.raises(BananaError):
        decoder.feed(b"\x01\x81")

    # Fed one byte at a time, the expressions before the bad bytes are delivered first, and the
    # error is found at the same offset.
    decoder = banana.Decoder(dialect)
    got = []
    with pytest.raises(BananaError) as info:
        for chunk in one_byte_at_a_time(data):
            got.extend(decoder.feed(chunk))
    assert_deep_equal(got, before)
    assert info.value.offset == error.offset
    assert info.value.limit == limit

    with pytest.raises(BananaError) as info:
        banana.decode(data, dialect)
    assert info.value.offset is not None


@params(TWISTED["banana_encode_errors"])
@pytest.mark.parametrize("dialect", ["pb", "none"])
def test_banana_encode_errors(case, dialect):
    value = eval_python(case["python"])
    with pytest.raises(BananaError) as info:
        banana.encode(value, dialect)
    assert info.value.offset is None  # an encoding error has no stream offset


# ------------------------------------------------------------------------------------------------
# jelly: dumps/loads/jelly/unjelly against Twisted's jelly() + sendEncoded
# ------------------------------------------------------------------------------------------------

_JELLY_TYPES = (
    type(None),
    bool,
    int,
    float,
    bytes,
    str,
    list,
    tuple,
    dict,
    set,
    frozenset,
)


def as_received(value, memo=None):
    """``value`` as the receiver sees it: each object jelly has no form for becomes
    ``Unpersistable("instance of class <qualname> deemed insecure")`` (shared ones shared), and
    a negative-zero Decimal loses its sign (jelly sends the coefficient as a signed int)."""
    import datetime
    import decimal

    if memo is None:
        if not _changes_on_receipt(value, set()):
            return value  # the common case, and the only one with cycles in the vectors
        memo = {}
    if id(value) in memo:
        return memo[id(value)]
    t = type(value)
    if t is list:
        out = memo[id(value)] = []  # registered first: cycles come back to it
        out.extend(as_received(v, memo) for v in value)
    elif t is dict:
        out = memo[id(value)] = {}
        for k, v in value.items():
            out[as_received(k, memo)] = as_received(v, memo)
    elif t is tuple:
        out = tuple(as_received(v, memo) for v in value)
    elif t in (set, frozenset):
        out = t(as_received(v, memo) for v in value)
    elif t is decimal.Decimal and value.is_zero() and value.is_signed():
        out = abs(value)
    elif t in _JELLY_TYPES or t in (
        datetime.datetime,
        datetime.date,
        datetime.time,
        datetime.timedelta,
        decimal.Decimal,
    ):
        out = value
    else:
        out = Unpersistable(f"instance of class {t.__module__}.{t.__qualname__} deemed insecure")
    memo[id(value)] = out
    return out


def _changes_on_receipt(value, seen) -> bool:
    import datetime
    import decimal

    if id(value) in seen:
        return False
    seen.add(id(value))
    t = type(value)
    if t is dict:
        return any(_changes_on_receipt(k, seen) or _changes_on_receipt(v, seen) for k, v in value.items())
    if t in (list, tuple, set, frozenset):
        return any(_changes_on_receipt(v, seen) for v in value)
    if t is decimal.Decimal:
        return value.is_zero() and value.is_signed()
    return t not in _JELLY_TYPES and t not in (
        datetime.datetime,
        datetime.date,
        datetime.time,
        datetime.timedelta,
    )


@params(TWISTED["jelly"])
def test_jelly_dumps(case):
    value = eval_python(case["python"])
    assert pbfast.dumps(value).hex() == case["hex_pb"]
    assert pbfast.dumps(value, dialect="pb").hex() == case["hex_pb"]
    assert pbfast.dumps(value, dialect="none").hex() == case["hex_none"]
    assert_deep_equal(pbfast.jelly(value), from_tagged(case["sexp"]))


@params(TWISTED["jelly"])
def test_jelly_loads(case):
    pb_bytes = bytes.fromhex(case["hex_pb"])
    none_bytes = bytes.fromhex(case["hex_none"])
    sexp = from_tagged(case["sexp"])
    if not case["unjelly_ok"]:
        assert case["unjelly_error"]["class"] == "InsecureJelly"
        tag = sexp[0].decode()
        for call in (
            lambda: pbfast.loads(pb_bytes),
            lambda: pbfast.loads(none_bytes, dialect="none"),
            lambda: pbfast.unjelly(sexp),
            lambda: banana.Decoder(jelly=True).feed(pb_bytes),
        ):
            with pytest.raises(InsecureJelly) as info:
                call()
            assert tag in str(info.value)
        return

    value = eval_python(case["python"])
    expected = as_received(value)
    assert_deep_equal(pbfast.loads(pb_bytes), expected)
    assert_deep_equal(pbfast.loads(none_bytes, dialect="none"), expected)
    assert_deep_equal(pbfast.unjelly(sexp), expected)
    for chunks in ([pb_bytes], one_byte_at_a_time(pb_bytes)):
        decoder = banana.Decoder(jelly=True)
        got = feed_all(decoder, chunks)
        assert len(got) == 1
        assert_deep_equal(got[0], expected)
    if case["rejelly_same"]:
        # Re-jellying what was decoded gives the same bytes again.
        assert pbfast.dumps(pbfast.loads(pb_bytes)).hex() == case["hex_pb"]


def expected_dumps_error(twisted_error: dict) -> type:
    """pbfast's documented exception for a value Twisted refuses to jelly or send: BananaError
    for ints and lengths banana cannot carry, JellyError for values jelly cannot express
    (functions, modules, tz-aware times, non-finite Decimals)."""
    message = twisted_error["message"]
    if twisted_error["class"] == "BananaError" and re.match(
        r"(int is too large|.* is too long to send)", message
    ):
        return BananaError
    return JellyError


@params(TWISTED["jelly_errors"])
@pytest.mark.parametrize("dialect", ["pb", "none"])
def test_jelly_errors(case, dialect):
    value = eval_python(case["python"])
    expected = expected_dumps_error(case["error"])
    with pytest.raises((BananaError, JellyError)) as info:
        pbfast.dumps(value, dialect=dialect)
    assert type(info.value) is expected, f"{type(info.value).__name__}: {info.value}"
    with pytest.raises(expected):
        pbfast.jelly(value)


# ------------------------------------------------------------------------------------------------
# foolscap tokens
# ------------------------------------------------------------------------------------------------

FOOLSCAP_VOCAB = FOOLSCAP["vocab"]


def test_foolscap_vocab_table():
    assert [w.decode() for w in banana.FOOLSCAP_VOCAB] == FOOLSCAP_VOCAB
    digest = hashlib.sha1(b"\x00".join(w.encode() for w in FOOLSCAP_VOCAB)).hexdigest()[:4]
    assert digest == FOOLSCAP["vocab_hash4"]


def test_pb_vocab_table_matches_twisted():
    from twisted.spread.banana import Banana

    assert len(banana.PB_VOCAB) == 32  # index 0 is unused
    for word, index in Banana.outgoingVocabulary.items():
        assert banana.PB_VOCAB[index] == word


def expected_tokens(pairs) -> list[tuple]:
    """Vector tokens as ``Tokenizer`` reports them (VOCAB value = ``(index, word)``)."""
    out = []
    for kind, value in pairs:
        if kind == "VOCAB":
            out.append((kind, (value, FOOLSCAP_VOCAB[value].encode())))
        else:
            out.append((kind, from_tagged(value)))
    return out


def encodable(pairs) -> list[tuple]:
    """Vector tokens as ``encode_tokens`` takes them (VOCAB value = index)."""
    return [(kind, value if kind == "VOCAB" else from_tagged(value)) for kind, value in pairs]


def lone_closers(pairs) -> tuple[list[int], list[int]]:
    """Open-ids that a CLOSE/ABORT refers to without an OPEN in the vector (a token writer may
    write them; a receiver refuses them), outermost first, and the ids still open at the end."""
    prefix: list[int] = []
    stack: list[int] = []
    for kind, value in pairs:
        if kind == "OPEN":
            stack.append(value)
        elif kind in ("CLOSE", "ABORT"):
            if not stack:
                prefix.insert(0, value)
                stack.append(value)
            assert stack[-1] == value, "vector closes a sequence that is not innermost"
            if kind == "CLOSE":
                stack.pop()
    return prefix, stack


def check_tokenize(data: bytes, pairs, canonical: bool) -> None:
    """Tokenizer("foolscap") over ``data`` gives ``pairs``, fed whole or one byte at a time.

    Vectors that CLOSE/ABORT a sequence they never OPEN (single-token writer outputs) are
    preceded by the OPEN tokens they need; those are checked and stripped.
    """
    expected = expected_tokens(pairs)
    prefix_ids, still_open = lone_closers(pairs)
    prefix = banana.encode_tokens([("OPEN", i) for i in prefix_ids], "foolscap")
    stream = prefix + data
    for chunks in ([stream], one_byte_at_a_time(stream)):
        tokenizer = banana.Tokenizer("foolscap")
        got = []
        for chunk in chunks:
            got.extend(tokenizer.feed(chunk))
        assert [t[1:] for t in got[: len(prefix_ids)]] == [("OPEN", i) for i in prefix_ids]
        got = [(offset - len(prefix), kind, value) for offset, kind, value in got[len(prefix_ids) :]]
        assert_deep_equal([(kind, value) for _, kind, value in got], expected)
        assert tokenizer.buffered == 0
        assert tokenizer.open_sequences == still_open
        offsets = [offset for offset, _, _ in got]
        assert offsets[0] == 0
        assert offsets == sorted(set(offsets))
        if canonical:
            # Each token occupies exactly the bytes its canonical encoding takes.
            ends = offsets[1:] + [len(data)]
            for (offset, kind, value), end in zip(got, ends, strict=True):
                token = (kind, value[0] if kind == "VOCAB" else value)
                assert data[offset:end] == banana.encode_tokens([token], "foolscap"), (offset, kind)


@params(FOOLSCAP["tokens"])
def test_foolscap_tokens(case):
    data = bytes.fromhex(case["hex"])
    table1 = case["vocab_table"] == 1
    check_tokenize(data, case["wire_tokens"], canonical=table1)
    if table1:
        assert banana.encode_tokens(encodable(case["wire_tokens"]), "foolscap").hex() == case["hex"]
        # foolscap's writer turns a STRING equal to a vocab word into VOCAB; so does pbfast.
        assert banana.encode_tokens(encodable(case["tokens"]), "foolscap").hex() == case["hex"]
    else:
        # pbfast's foolscap dialect always uses vocab table 1 (what every modern foolscap
        # negotiates), so encoding is only compared for table-1 vectors. A STRING token is still
        # read back as a STRING even when it equals a table-1 word.
        assert case["wire_tokens"] == case["tokens"]


@params(FOOLSCAP["captures"])
def test_foolscap_captures(case):
    data = bytes.fromhex(case["hex"])
    check_tokenize(data, case["tokens"], canonical=True)
    assert banana.encode_tokens(encodable(case["tokens"]), "foolscap").hex() == case["hex"]


@params(FOOLSCAP["slices"])
def test_foolscap_slices(case):
    data = bytes.fromhex(case["hex"])
    check_tokenize(data, case["tokens"], canonical=True)
    assert banana.encode_tokens(encodable(case["tokens"]), "foolscap").hex() == case["hex"]


def test_foolscap_lone_close_is_refused():
    for data in (bytes.fromhex("0089"), bytes.fromhex("078a"), bytes.fromhex("008801890089")):
        with pytest.raises(BananaError) as info:
            banana.Tokenizer("foolscap").feed(data)
        assert info.value.offset is not None


def test_deep_equal_sanity():
    # The comparison every test relies on must itself be strict.
    import decimal

    nan = float("nan")
    assert deep_equal([nan], [float("nan")])
    assert deep_equal({nan, 1.0}, {float("nan"), 1.0})
    assert not deep_equal(0.0, -0.0)
    assert not deep_equal(1, True) and not deep_equal(1, 1.0)
    assert not deep_equal((1,), [1])
    assert not deep_equal(frozenset({1}), {1})
    assert not deep_equal(decimal.Decimal("1.0"), decimal.Decimal("1"))
    assert not deep_equal({"a": 1, "b": 2}, {"b": 2, "a": 1})  # jelly keeps dict order
    a = [1]
    assert deep_equal([a, a], [[1], [1]][:1] * 2)
    assert not deep_equal([a, a], [[1], [1]])  # shared vs merely equal
    assert not deep_equal([[1], [1]], [a, a])
    c1, c2 = [], []
    c1.append(c1)
    c2.append(c2)
    assert deep_equal(c1, c2)
    assert not deep_equal(c1, [[[]]])
    assert deep_equal({(1, "x"), (2, "y")}, {(2, "y"), (1, "x")})
    assert not deep_equal({(1, "x")}, {(1, b"x")})
