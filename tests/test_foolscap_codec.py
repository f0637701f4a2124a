"""foolscap's PB messages (call / answer / error) with Python values: ``FoolscapDecoder`` and
``FoolscapEncoder``, byte for byte against stock foolscap 24.9 (tests/vectors/foolscap_messages.json
and a differential test against foolscap's own slicers), round trips, every kind of refused
message, fatal stream errors and the hooks."""

from __future__ import annotations

import collections
import decimal
import gc
import math

import pytest
from foolscap import broker as fs_broker
from foolscap import call as fs_call
from helpers import any_bytes, any_text, assert_deep_equal, case_id, load_vectors
from hypothesis import given, settings
from hypothesis import strategies as st
from pbfast import BananaError, _core
from pbfast._core import (
    FS_ANSWER,
    FS_CALL,
    FS_CALL_ABORTED,
    FS_ERROR,
    FS_PEER_ERROR,
    FS_PING,
    FS_PONG,
    FS_VIOLATION,
    FoolscapDecoder,
    FoolscapEncoder,
)

VECTORS = load_vectors("foolscap_messages.json")

# The vectors' markers for what the hooks make and read (see tests/vectors/README.md).
MyRef = collections.namedtuple("MyRef", "clid iface furl")
YourRef = collections.namedtuple("YourRef", "clid")
TheirRef = collections.namedtuple("TheirRef", "giftid furl")
Copy = collections.namedtuple("Copy", "typename state")

FAILURE = "twisted.python.failure.Failure"


def decode_hook(kind, *args):
    if kind == "copyable":
        typename, state = args
        if typename.startswith("no.such."):
            return NotImplemented
        return Copy(typename, tuple(state.items()))
    if kind == "my-reference":
        return MyRef(*args)
    if kind == "your-reference":
        return YourRef(*args)
    if kind == "their-reference":
        return TheirRef(*args)
    raise AssertionError(kind)


def encode_hook(obj):
    if isinstance(obj, MyRef):
        if obj.iface is None and obj.furl is None:
            return ("my-reference", obj.clid)
        return ("my-reference", obj.clid, obj.iface, obj.furl)
    if isinstance(obj, YourRef):
        return ("your-reference", obj.clid)
    if isinstance(obj, TheirRef):
        return ("their-reference", obj.giftid, obj.furl)
    if isinstance(obj, Copy):
        return ("copyable", obj.typename, obj.state)
    return None


def namespace():
    return {"decimal": decimal, "MyRef": MyRef, "YourRef": YourRef, "TheirRef": TheirRef, "Copy": Copy}


def arguments(message):
    """A call's (args, kwargs), evaluated in one namespace (they may share objects)."""
    ns = namespace()
    args = eval(message["args"], ns)
    return args, eval(message["kwargs"], ns)


def expected_event(message):
    kind = message["kind"]
    if kind == "call":
        args, kwargs = arguments(message)
        return (FS_CALL, message["reqid"], message["clid"], message["method"], args, kwargs)
    if kind == "answer":
        return (FS_ANSWER, message["reqid"], eval(message["value"], namespace()))
    if kind == "error":
        return (FS_ERROR, message["reqid"], eval(message["failure"], namespace()))
    if kind == "call_aborted":
        return (FS_CALL_ABORTED, message["reqid"])
    if kind == "ping":
        return (FS_PING, message["n"])
    if kind == "pong":
        return (FS_PONG, message["n"])
    raise AssertionError(kind)


def encode(encoder: FoolscapEncoder, message) -> bytes:
    kind = message["kind"]
    if kind == "call":
        args, kwargs = arguments(message)
        return encoder.call(message["reqid"], message["clid"], message["method"], args, kwargs)
    if kind == "answer":
        return encoder.answer(message["reqid"], eval(message["value"], namespace()))
    if kind == "error":
        failure = eval(message["failure"], namespace())
        assert failure.typename == FAILURE
        return encoder.error(message["reqid"], failure.state)
    if kind == "ping":
        return encoder.ping(message["n"])
    if kind == "pong":
        return encoder.pong(message["n"])
    raise AssertionError(kind)


def same_events(got, expected) -> None:
    # foolscap sends dict keys sorted and each frozenset in full: compare dicts by key, and
    # frozensets by value.
    assert_deep_equal(list(got), list(expected), ordered_dicts=False, shared_frozensets=False)


def feed_all(decoder: FoolscapDecoder, chunks) -> list:
    out = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out


def by_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def params(cases):
    return pytest.mark.parametrize("case", cases, ids=[case_id(c) for c in cases])


# ------------------------------------------------------------------------------------------------
# Byte-exact against stock foolscap: captured streams and generated messages
# ------------------------------------------------------------------------------------------------

STREAMS = VECTORS["streams"]
STEPS = [
    dict(step, name=f"{stream['capture']}: {step['step']}") for stream in STREAMS for step in stream["steps"]
]
GENERATED = VECTORS["generated"]


def test_the_vectors_cover_every_message_kind():
    kinds = {m["kind"] for step in STEPS for m in step["messages"]}
    assert kinds == {"call", "answer", "error", "call_aborted", "ping", "pong"}
    assert len(STREAMS) == 6 and len(GENERATED) >= 30


@params(STREAMS)
def test_a_captured_stream_decodes_whole_and_byte_by_byte(case):
    data = b"".join(bytes.fromhex(step["hex"]) for step in case["steps"])
    expected = [expected_event(m) for step in case["steps"] for m in step["messages"]]
    for chunks in ([data], by_byte(data)):
        decoder = FoolscapDecoder(decode_hook)
        same_events(feed_all(decoder, chunks), expected)
        assert decoder.buffered == 0
        assert decoder.offset == len(data)


@params(STEPS)
def test_a_captured_step_decodes(case):
    decoder = FoolscapDecoder(decode_hook)
    decoder.next_open_id = case["first_open_id"]
    same_events(decoder.feed(bytes.fromhex(case["hex"])), [expected_event(m) for m in case["messages"]])


@params([s for s in STEPS if all(m["kind"] != "call_aborted" for m in s["messages"])])
def test_a_captured_step_encodes_to_the_same_bytes(case):
    encoder = FoolscapEncoder(encode_hook, next_open_id=case["first_open_id"])
    data = b"".join(encode(encoder, m) for m in case["messages"])
    assert data.hex() == case["hex"]
    opens = sum(1 for _, kind, _ in _core.Tokenizer("foolscap").feed(data) if kind == "OPEN")
    assert encoder.next_open_id == case["first_open_id"] + opens


def test_the_aborted_call_is_reported_without_a_reply_due():
    (step,) = [s for s in STEPS if s["messages"][0]["kind"] == "call_aborted"]
    decoder = FoolscapDecoder(decode_hook)
    decoder.next_open_id = step["first_open_id"]
    assert decoder.feed(bytes.fromhex(step["hex"])) == [(FS_CALL_ABORTED, 11)]


@params(GENERATED)
def test_a_generated_message_decodes(case):
    data = bytes.fromhex(case["hex"])
    for chunks in ([data], by_byte(data)):
        decoder = FoolscapDecoder(decode_hook)
        decoder.next_open_id = case["first_open_id"]
        same_events(feed_all(decoder, chunks), [expected_event(case["message"])])


@params(GENERATED)
def test_a_generated_message_encodes_to_foolscaps_bytes(case):
    encoder = FoolscapEncoder(encode_hook, next_open_id=case["first_open_id"])
    assert encode(encoder, case["message"]).hex() == case["hex"]


# ------------------------------------------------------------------------------------------------
# Differential: random values through stock foolscap's slicers and unslicers
# ------------------------------------------------------------------------------------------------


def atoms():
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(-(2**70), 2**70),
        st.integers(-(2**600), 2**600),
        st.sampled_from([0, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**63, -(2**63) - 1, 2**64]),
        st.floats(),
        any_bytes(),
        any_text(),
        st.decimals(allow_nan=True, allow_infinity=True),
    )


def hashables():
    return st.recursive(
        st.one_of(
            st.none(), st.booleans(), st.integers(), any_bytes(), any_text(), st.floats(allow_nan=False)
        ),
        lambda children: st.one_of(
            st.lists(children, max_size=4).map(tuple), st.frozensets(children, max_size=4)
        ),
        max_leaves=6,
    )


def sortable_dicts(values):
    """Dicts foolscap can send: keys of one kind, so they sort."""
    return st.one_of(
        st.dictionaries(st.integers(), values, max_size=5),
        st.dictionaries(st.floats(allow_nan=False), values, max_size=5),
        st.dictionaries(any_text(), values, max_size=5),
        st.dictionaries(any_bytes(), values, max_size=5),
        st.dictionaries(st.tuples(st.integers(), st.integers()), values, max_size=5),
    )


def values(max_leaves=25):
    def extend(children):
        containers = st.one_of(
            st.lists(children, max_size=5),
            st.lists(children, max_size=5).map(tuple),
            sortable_dicts(children),
            st.sets(hashables(), max_size=5),
            st.frozensets(hashables(), max_size=5),
        )
        return st.one_of(
            containers,
            # the same container twice: sent once, then (reference N)
            st.tuples(containers, children).map(lambda p: [p[0], p[1], p[0]]),
            st.tuples(containers, children).map(lambda p: (p[0], {"a": p[0], "b": p[1]})),
        )

    return st.recursive(atoms() | hashables(), extend, max_leaves=max_leaves)


def cyclic(values_strategy):
    """A list or dict that holds itself, somewhere inside other values."""

    def build(pair):
        kind, inner = pair
        if kind == "list":
            outer = [inner]
            outer.append(outer)
        else:
            outer = {"inner": inner}
            outer["self"] = outer
        return outer

    return st.tuples(st.sampled_from(["list", "dict"]), values_strategy).map(build)


class _StockSender(fs_broker.Broker):
    """A stock foolscap Broker writing to memory, its OPEN counter where ours is."""

    def __init__(self, first_open_id: int) -> None:
        from twisted.internet.testing import StringTransport

        fs_broker.Broker.__init__(self, None, {"initial-vocab-table-index": 1})
        self.makeConnection(StringTransport())
        self.openCount = first_open_id

    def sent(self, slicer) -> bytes:
        self.send(slicer)
        return self.transport.value()


@settings(max_examples=300)
@given(value=values(), first=st.sampled_from([0, 5, 127, 128, 20000]))
def test_answers_are_foolscaps_bytes(value, first):
    ours = FoolscapEncoder(next_open_id=first).answer(7, value)
    assert ours == _StockSender(first).sent(fs_call.AnswerSlicer(7, value))


@settings(max_examples=200)
@given(
    args=st.lists(values(10), max_size=4).map(tuple),
    kwargs=st.dictionaries(any_text(), values(10), max_size=4),
    clid=st.integers(-5, 5),
    method=any_text(),
)
def test_calls_are_foolscaps_bytes(args, kwargs, clid, method):
    ours = FoolscapEncoder().call(3, clid, method, args, kwargs)
    assert ours == _StockSender(0).sent(fs_call.CallSlicer(3, clid, method, args, kwargs))


@settings(max_examples=50)
@given(value=cyclic(values(8)))
def test_cycles_are_foolscaps_bytes(value):
    assert FoolscapEncoder().answer(1, value) == _StockSender(0).sent(fs_call.AnswerSlicer(1, value))


# ------------------------------------------------------------------------------------------------
# Round trips
# ------------------------------------------------------------------------------------------------


@settings(max_examples=300)
@given(value=values() | cyclic(values(8)))
def test_answers_round_trip(value):
    data = FoolscapEncoder().answer(1, value)
    for chunks in ([data], by_byte(data) if len(data) < 400 else [data[:7], data[7:]]):
        events = feed_all(FoolscapDecoder(), chunks)
        same_events(events, [(FS_ANSWER, 1, value)])


@settings(max_examples=200)
@given(
    args=st.lists(values(10), max_size=4).map(tuple),
    kwargs=st.dictionaries(any_text(), values(10), max_size=4),
    reqid=st.integers(0, 2**31 - 1),
    clid=st.integers(-(2**31), 2**31 - 1),
)
def test_calls_round_trip(args, kwargs, reqid, clid):
    data = FoolscapEncoder().call(reqid, clid, "method", args, kwargs)
    same_events(FoolscapDecoder().feed(data), [(FS_CALL, reqid, clid, "method", args, kwargs)])


@settings(max_examples=100)
@given(messages=st.lists(values(8), min_size=1, max_size=5), cut=st.integers(0, 10**6))
def test_a_stream_of_messages_in_two_chunks(messages, cut):
    encoder = FoolscapEncoder()
    data = b"".join(encoder.answer(i + 1, v) for i, v in enumerate(messages)) + encoder.ping()
    cut %= len(data) + 1
    decoder = FoolscapDecoder()
    events = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
    same_events(events, [(FS_ANSWER, i + 1, v) for i, v in enumerate(messages)] + [(FS_PING, 0)])


def test_sharing_and_cycles_survive():
    shared = [1]
    d = {"k": shared}
    value = [shared, d, shared, d, (shared,)]
    (event,) = FoolscapDecoder().feed(FoolscapEncoder().answer(1, value))
    got = event[2]
    assert got[0] is got[2] and got[1] is got[3] and got[4][0] is got[0] and got[1]["k"] is got[0]
    cycle = []
    cycle.append({"back": cycle})
    (event,) = FoolscapDecoder().feed(FoolscapEncoder().answer(1, cycle))
    assert event[2][0]["back"] is event[2]


def test_nan_and_negative_zero_survive():
    (event,) = FoolscapDecoder().feed(FoolscapEncoder().answer(1, [math.nan, -0.0, decimal.Decimal("-0")]))
    nan, zero, dzero = event[2]
    assert math.isnan(nan) and math.copysign(1, zero) == -1 and str(dzero) == "-0"


def test_references_are_scoped_to_one_message():
    shared = [1]
    encoder = FoolscapEncoder()
    first = encoder.answer(1, [shared, shared])
    second = encoder.answer(2, [shared, shared])
    # the second message sends the list in full again, under new open-IDs
    assert second != first
    events = FoolscapDecoder().feed(first + second)
    assert events[0][2][0] is events[0][2][1] and events[1][2][0] is not events[0][2][0]


# ------------------------------------------------------------------------------------------------
# Refused messages: a violation discards one message, and the next one decodes
# ------------------------------------------------------------------------------------------------

NEXT = FoolscapEncoder(next_open_id=50).answer(99, "next")


def tokens(*items) -> bytes:
    return _core.encode_tokens(list(items), "foolscap")


def answer_of(*body, reqid=1):
    """(answer reqid body...) as tokens, opened as 0."""
    return tokens(("OPEN", 0), ("VOCAB", 13), ("INT", reqid), *body, ("CLOSE", 0))


def refused(data: bytes, **limits) -> tuple:
    """The one violation `data` gives, checking that a good message after it still decodes."""
    decoder = FoolscapDecoder(decode_hook, **limits)
    events = decoder.feed(data)
    decoder.next_open_id = 50
    events += decoder.feed(NEXT)
    assert len(events) == 2 and events[1] == (FS_ANSWER, 99, "next"), events
    return events[0]


def seq(n, word, *body):
    return [("OPEN", n), ("STRING", word), *body, ("CLOSE", n)]


VIOLATIONS = [
    ("unknown sequence type", answer_of(*seq(1, b"frobble")), "unknown OPEN type 'frobble'"),
    (
        "unknown copyable type",
        answer_of(*seq(1, b"copyable", ("STRING", b"no.such.Type"))),
        "unknown copyable type 'no.such.Type'",
    ),
    (
        "boolean of a string",
        answer_of(*seq(1, b"boolean", ("STRING", b"yes"))),
        "boolean takes an INT, not STRING",
    ),
    ("empty boolean", answer_of(*seq(1, b"boolean")), "boolean ended too early"),
    (
        "unicode that is not UTF-8",
        answer_of(*seq(1, b"unicode", ("STRING", b"\xff"))),
        "unicode: UnicodeDecodeError",
    ),
    ("bad decimal", answer_of(*seq(1, b"decimal", ("STRING", b"one"))), "decimal: InvalidOperation"),
    (
        "duplicate dict key",
        answer_of(*seq(1, b"dict", ("INT", 1), ("INT", 2), ("INT", 1), ("INT", 3))),
        "dict: duplicate key 1",
    ),
    (
        "unhashable dict key",
        answer_of(*seq(1, b"dict", *seq(2, b"list"), ("INT", 1))),
        "dict: TypeError: unhashable type: 'list'",
    ),
    ("dict with a key and no value", answer_of(*seq(1, b"dict", ("INT", 1))), "dict ended after a key"),
    (
        "unhashable set member",
        answer_of(*seq(1, b"set", *seq(2, b"dict"))),
        "set: TypeError: unhashable type",
    ),
    ("reference to nothing", answer_of(*seq(1, b"reference", ("INT", 9))), "reference to unknown object 9"),
    (
        "reference to an incomplete tuple",
        answer_of(*seq(1, b"tuple", *seq(2, b"reference", ("INT", 1)))),
        "reference to object 1, a tuple not complete yet",
    ),
    (
        "reference to something that cannot be referred to",
        answer_of(*seq(1, b"list", *seq(2, b"none"), *seq(3, b"reference", ("INT", 2)))),
        "reference to object 2, which cannot be referred to",
    ),
    (
        "reference to an object of an earlier message",
        answer_of(*seq(1, b"reference", ("INT", 0))),
        "reference to object 0, which cannot be referred to",
    ),
    ("too many items in none", answer_of(*seq(1, b"none", ("INT", 1))), "too many items in none"),
    ("index token too long", answer_of(*seq(1, b"x" * 16)), "first index token is too long, 16>15"),
    (
        "index token not a string",
        answer_of(("OPEN", 1), ("INT", 4), ("CLOSE", 1)),
        "first index token is INT",
    ),
    ("sequence with no type", answer_of(("OPEN", 1), ("CLOSE", 1)), "a sequence with no type"),
    (
        "copyable name over the limit",
        answer_of(*seq(1, b"copyable", ("STRING", b"n" * 201))),
        "copyable type name is too long, 201>200",
    ),
    (
        "duplicate copyable attribute",
        answer_of(
            *seq(
                1, b"copyable", ("STRING", b"t.T"), ("STRING", b"a"), ("INT", 1), ("STRING", b"a"), ("INT", 2)
            )
        ),
        "duplicate attribute name 'a'",
    ),
    ("answer with no value", answer_of(), "reply ended too early"),
    ("answer with two values", answer_of(("INT", 1), ("INT", 2)), "too many items in reply"),
    ("an aborted answer", answer_of(*seq(1, b"list", ("INT", 1), ("ABORT", 1))), "ABORT received"),
    ("nested arguments outside a call", answer_of(*seq(1, b"arguments")), "unknown OPEN type 'arguments'"),
    (
        "my-reference with too many fields",
        answer_of(*seq(1, b"my-reference", ("INT", 1), ("STRING", b""), ("STRING", b"f"), ("STRING", b"x"))),
        "too many items in my-reference",
    ),
    (
        "your-reference with a STRING clid",
        answer_of(*seq(1, b"your-reference", ("STRING", b"1"))),
        "your-reference clid must be an INT or NEG (in 64 bits), not STRING",
    ),
    ("their-reference without a FURL", answer_of(*seq(1, b"their-reference", ("INT", 1))), "ended too early"),
]


@pytest.mark.parametrize("data, why", [(d, w) for _, d, w in VIOLATIONS], ids=[n for n, _, _ in VIOLATIONS])
def test_a_bad_answer_is_a_violation(data, why):
    kind, what, reqid, message = refused(data)
    assert (kind, what, reqid) == (FS_VIOLATION, "answer", 1)
    assert why in message, message
    assert " at byte " in message


def test_a_message_is_refused_the_same_however_its_bytes_arrive():
    # Messages are read as their tokens arrive, and one given up on part-way is read again whole.
    for _, data, _ in VIOLATIONS:
        decoder = FoolscapDecoder(decode_hook)
        assert feed_all(decoder, by_byte(data)) == FoolscapDecoder(decode_hook).feed(data)


def test_a_message_waiting_for_its_next_chunk_holds_no_containers():
    def value():
        return [{"n": i, "tags": ["waiting", str(i)]} for i in range(200)]

    data = FoolscapEncoder().answer(1, value())
    decoder = FoolscapDecoder()
    assert decoder.feed(data[: len(data) // 2]) == []
    # Only its leaves are made: a collection meanwhile has none of its lists or dicts to walk.
    assert not [o for o in gc.get_objects() if type(o) is list and o[:1] == ["waiting"]]
    (event,) = decoder.feed(data[len(data) // 2 :])
    same_events([event], [(FS_ANSWER, 1, value())])
    # A message given up on at its end (a shared list) is read again whole, in any chunking.
    shared = ["s"]
    data = FoolscapEncoder().answer(2, [*range(500), shared, shared])
    (event,) = feed_all(FoolscapDecoder(), [data[i : i + 100] for i in range(0, len(data), 100)])
    assert event[2][:500] == list(range(500)) and event[2][-1] is event[2][-2] == shared


def call_of(*body, head=(("INT", 4), ("INT", 1), ("STRING", b"m"))):
    """(call 4 1 "m" body...) as tokens, opened as 0."""
    return tokens(("OPEN", 0), ("VOCAB", 11), *head, *body, ("CLOSE", 0))


def arguments_of(*body):
    return seq(1, b"arguments", *body)


CALL_VIOLATIONS = [
    ("no arguments sequence", call_of(), 4, "call ended too early"),
    (
        "arguments not a sequence",
        call_of(("INT", 1)),
        4,
        "call arguments must be an 'arguments' sequence, not INT",
    ),
    ("arguments of another type", call_of(*seq(1, b"list")), 4, "not 'list'"),
    ("positional count missing", call_of(*arguments_of()), 4, "arguments ended too early"),
    ("positional count a string", call_of(*arguments_of(("STRING", b"1"))), 4, "arguments must be an INT"),
    (
        "fewer positionals than counted",
        call_of(*arguments_of(("INT", 2), ("INT", 7))),
        4,
        "arguments ended too early",
    ),
    (
        "keyword name not a string",
        call_of(*arguments_of(("INT", 0), ("INT", 5), ("INT", 6))),
        4,
        "names must be STRINGs",
    ),
    (
        "keyword without a value",
        call_of(*arguments_of(("INT", 0), ("STRING", b"k"))),
        4,
        "arguments ended too early",
    ),
    (
        "duplicate keyword",
        call_of(*arguments_of(("INT", 0), ("STRING", b"k"), ("INT", 1), ("STRING", b"k"), ("INT", 2))),
        4,
        "duplicate keyword argument 'k'",
    ),
    (
        "keyword name not UTF-8",
        call_of(*arguments_of(("INT", 0), ("STRING", b"\xff"), ("INT", 1))),
        4,
        "UnicodeDecodeError",
    ),
    (
        "method name not a string",
        call_of(*arguments_of(("INT", 0)), head=(("INT", 4), ("INT", 1), ("INT", 9))),
        4,
        "method name must be a STRING, not INT",
    ),
    (
        "object ID not an integer",
        call_of(head=(("INT", 4), ("STRING", b"x"))),
        4,
        "call object ID must be an INT or NEG",
    ),
    (
        "request ID a NEG",
        tokens(("OPEN", 0), ("VOCAB", 11), ("NEG", -1), ("CLOSE", 0)),
        None,
        "request ID must be an INT",
    ),
    ("too many fields", call_of(*arguments_of(("INT", 0)), ("INT", 1)), 4, "too many items in call"),
]


@pytest.mark.parametrize(
    "data, reqid, why",
    [(d, r, w) for _, d, r, w in CALL_VIOLATIONS],
    ids=[n for n, _, _, _ in CALL_VIOLATIONS],
)
def test_a_bad_call_is_a_violation(data, reqid, why):
    kind, what, got_reqid, message = refused(data)
    assert (kind, what, got_reqid) == (FS_VIOLATION, "call", reqid)
    assert why in message, message


def test_an_aborted_call_owes_no_reply():
    # As the capture: every level up to the call aborted.
    data = tokens(
        ("OPEN", 0), ("VOCAB", 11), ("INT", 8), ("INT", 1), ("STRING", b"m"),
        ("OPEN", 1), ("VOCAB", 12), ("INT", 1), ("OPEN", 2), ("VOCAB", 4), ("INT", 1),
        ("ABORT", 2), ("CLOSE", 2), ("ABORT", 1), ("CLOSE", 1), ("ABORT", 0), ("CLOSE", 0),
    )  # fmt: skip
    assert refused(data) == (FS_CALL_ABORTED, 8)
    # aborted before the request ID was read
    assert refused(tokens(("OPEN", 0), ("VOCAB", 11), ("ABORT", 0), ("CLOSE", 0))) == (FS_CALL_ABORTED, None)


def test_an_unknown_top_level_type_is_a_violation():
    assert refused(tokens(*seq(0, b"list", ("INT", 1)))) == (
        FS_VIOLATION,
        "unknown",
        None,
        "unknown top-level OPEN type 'list' at byte 0",
    )
    assert refused(tokens(*seq(0, b"arguments")))[1:3] == ("unknown", None)


def test_an_error_that_is_not_a_failure_is_passed_on():
    data = tokens(("OPEN", 0), ("VOCAB", 14), ("INT", 3), ("STRING", b"plain"), ("CLOSE", 0))
    assert FoolscapDecoder().feed(data) == [(FS_ERROR, 3, b"plain")]


def test_a_ping_inside_a_message_is_answered_and_skipped():
    data = tokens(("OPEN", 0), ("VOCAB", 13), ("INT", 1), ("PING", 3), ("INT", 2), ("PONG", 0), ("CLOSE", 0))
    assert FoolscapDecoder().feed(data) == [(FS_PING, 3), (FS_PONG, 0), (FS_ANSWER, 1, 2)]


def test_index_and_copyable_limits_are_settings():
    data = answer_of(*seq(1, b"copyable", ("STRING", b"abcdef")))
    assert "copyable type name is too long, 6>5" in refused(data, max_copyable_name=5)[3]
    data = answer_of(*seq(1, b"decimal", ("STRING", b"1")))
    assert "first index token is too long, 7>6" in refused(data, max_index_length=6)[3]
    with pytest.raises(TypeError, match="unknown decoder limit"):
        FoolscapDecoder(max_speed=1)
    with pytest.raises(ValueError, match="must be positive"):
        FoolscapDecoder(max_index_length=0)


# ------------------------------------------------------------------------------------------------
# Fatal errors: the stream cannot go on
# ------------------------------------------------------------------------------------------------

GOOD = FoolscapEncoder().answer(1, [1, "two"])


def fatal(data: bytes, **limits) -> BananaError:
    decoder = FoolscapDecoder(**limits)
    with pytest.raises(BananaError) as info:
        decoder.feed(GOOD + data)
    # what came before the fault was still decoded
    assert info.value.events == [(FS_ANSWER, 1, [1, "two"])]
    # and the decoder stays failed
    with pytest.raises(BananaError):
        decoder.feed(NEXT)
    return info.value


def test_a_top_level_token_that_is_not_a_sequence_is_fatal():
    e = fatal(tokens(("INT", 5)))
    assert e.offset == len(GOOD) and "INT token at the top level" in str(e)
    e = fatal(bytes([0x7F, 0x7F, 0x82]))  # a top-level STRING, refused from its header
    assert e.offset == len(GOOD) and "STRING" in str(e)
    e = fatal(tokens(("VOCAB", 4)))
    assert "VOCAB token at the top level" in str(e)


def test_lost_sync_is_fatal():
    e = fatal(tokens(("OPEN", 0), ("VOCAB", 13), ("CLOSE", 1)))
    assert e.offset == len(GOOD) + 4 and "CLOSE(1) does not match the innermost OPEN(0)" in str(e)
    e = fatal(tokens(("CLOSE", 3)))
    assert e.offset == len(GOOD) and "with no open sequence" in str(e)
    e = fatal(tokens(("ABORT", 0)))
    assert e.offset == len(GOOD)


def test_bad_tokens_are_fatal():
    e = fatal(bytes(65))
    assert (e.offset, e.limit) == (len(GOOD), "max_header_length")
    e = fatal(bytes([0x80]))
    assert "LIST token on a foolscap stream" in str(e)
    e = fatal(bytes([0x00, 0x88, 0x99]))
    assert "invalid type byte 0x99" in str(e) and e.offset == len(GOOD) + 2
    e = fatal(bytes([0x19, 0x87]))  # VOCAB 25: beyond table 1
    assert "unknown VOCAB index 25" in str(e)
    e = fatal(bytes([0x7F, 0x7F, 0x8D]))  # ERROR longer than 1000 bytes
    assert "exceeds" in str(e)


def test_limits_are_fatal_and_named():
    e = fatal(answer_of(("STRING", b"x" * 11)), max_element_size=10)
    assert e.limit == "max_element_size" and e.offset == len(GOOD) + 6
    e = fatal(answer_of(("STRING", b"x" * 100)), max_message_size=64)
    assert e.limit == "max_message_size"
    e = fatal(answer_of(*[t for i in range(1, 6) for t in (("OPEN", i), ("VOCAB", 4))]), max_depth=5)
    assert e.limit == "max_depth" and e.offset == len(GOOD) + 22


def test_the_default_depth_limit():
    nested = []
    for _ in range(497):  # answer + 498 lists = 499 sequences: within 500
        nested = [nested]
    data = FoolscapEncoder().answer(1, nested)
    assert FoolscapDecoder().feed(data)[0][0] == FS_ANSWER
    with pytest.raises(ValueError, match="max_depth=500"):
        FoolscapEncoder().answer(1, [[nested]])
    deeper = FoolscapEncoder(max_depth=600).answer(1, [[nested]])
    with pytest.raises(BananaError) as info:
        FoolscapDecoder().feed(deeper)
    assert info.value.limit == "max_depth"
    assert FoolscapDecoder(max_depth=600).feed(deeper)[0][0] == FS_ANSWER


def test_truncated_input_waits():
    data = FoolscapEncoder().answer(3, {"a": [b"x" * 300, 2**100]})
    decoder = FoolscapDecoder()
    for end in range(len(data)):
        assert decoder.feed(data[end : end + 1]) == [] or end == len(data) - 1
    assert decoder.buffered == 0 and decoder.offset == len(data)
    decoder = FoolscapDecoder()
    assert decoder.feed(data[:-1]) == [] and decoder.buffered == len(data) - 1
    assert decoder.feed(data[-1:]) == [(FS_ANSWER, 3, {"a": [b"x" * 300, 2**100]})]


def test_the_peer_error_ends_the_stream():
    data = GOOD + tokens(("ERROR", "bad thing \u2603".encode())) + GOOD
    for chunks in ([data], by_byte(data)):
        decoder = FoolscapDecoder()
        events = feed_all(decoder, chunks)
        assert events == [(FS_ANSWER, 1, [1, "two"]), (FS_PEER_ERROR, "bad thing \u2603")]
        assert decoder.feed(b"\x05\x81 anything") == []


def test_next_open_id_can_only_be_set_between_messages():
    decoder = FoolscapDecoder()
    decoder.feed(GOOD[:3])
    with pytest.raises(ValueError, match="between messages"):
        decoder.next_open_id = 7
    decoder.feed(GOOD[3:])
    assert decoder.next_open_id == GOOD.count(0x88)
    decoder.next_open_id = 7
    assert decoder.next_open_id == 7


# ------------------------------------------------------------------------------------------------
# Decoder hook
# ------------------------------------------------------------------------------------------------


class Stop(BaseException):
    pass


def copyable_answer(typename=b"t.Thing", **state):
    body = [t for k, v in state.items() for t in (("STRING", k.encode()), ("INT", v))]
    return answer_of(*seq(1, b"copyable", ("STRING", typename), *body))


def test_the_hook_makes_copyables_and_references():
    calls = []

    def hook(*args):
        calls.append(args)
        return ("made",) + args

    data = copyable_answer(x=1, y=2) + tokens(
        ("OPEN", 3), ("VOCAB", 13), ("INT", 2),
        *seq(4, b"list",
             *seq(5, b"my-reference", ("INT", 3)),
             *seq(6, b"my-reference", ("INT", -4), ("STRING", b"")),
             *seq(7, b"my-reference", ("INT", 5), ("STRING", b"RIFoo"), ("STRING", b"pb://x@h:1/s")),
             *seq(8, b"your-reference", ("INT", 6)),
             *seq(9, b"their-reference", ("INT", 0), ("STRING", b"pb://y@h:1/t"))),
        ("CLOSE", 3),
    )  # fmt: skip
    events = FoolscapDecoder(hook).feed(data)
    assert calls == [
        ("copyable", "t.Thing", {"x": 1, "y": 2}),
        ("my-reference", 3, None, None),
        ("my-reference", -4, None, None),
        ("my-reference", 5, "RIFoo", "pb://x@h:1/s"),
        ("your-reference", 6),
        ("their-reference", 0, "pb://y@h:1/t"),
    ]
    assert events[0] == (FS_ANSWER, 1, ("made",) + calls[0])
    assert events[1] == (FS_ANSWER, 2, [("made",) + c for c in calls[1:]])


def test_a_copyable_can_be_referred_to_once_complete():
    data = answer_of(
        *seq(1, b"list", *seq(2, b"copyable", ("STRING", b"t.T")), *seq(3, b"reference", ("INT", 2)))
    )
    made = object()
    ((_, _, value),) = FoolscapDecoder(lambda *a: made).feed(data)
    assert value == [made, made]


def test_the_hook_may_refuse_or_raise():
    def refusing(*args):
        return NotImplemented

    kind, what, reqid, message = FoolscapDecoder(refusing).feed(copyable_answer(x=1))[0]
    assert (kind, what, reqid) == (FS_VIOLATION, "answer", 1)
    assert message == "unknown copyable type 't.Thing' at byte 6"
    data = answer_of(*seq(1, b"your-reference", ("INT", 6)))
    message = FoolscapDecoder(refusing).feed(data)[0][3]
    assert message == "your-reference: your-reference is not accepted here (the hook refuses it) at byte 6"

    def raising(*args):
        raise ValueError("no such clid")

    message = FoolscapDecoder(raising).feed(data)[0][3]
    assert message == "your-reference: ValueError: no such clid at byte 6"
    message = FoolscapDecoder(raising).feed(copyable_answer(x=1))[0][3]
    assert message == "copyable 't.Thing': ValueError: no such clid at byte 6"

    # Without a hook, nothing special is accepted.
    message = FoolscapDecoder().feed(data)[0][3]
    assert "is not accepted here (no hook)" in message
    assert "(no hook)" in FoolscapDecoder().feed(copyable_answer())[0][3]


def test_a_hook_that_raises_something_other_than_an_exception_stops_decoding():
    def stop(*args):
        raise Stop()

    decoder = FoolscapDecoder(stop)
    with pytest.raises(Stop) as info:
        decoder.feed(GOOD + copyable_answer(x=1))
    assert info.value.events == [(FS_ANSWER, 1, [1, "two"])]


def test_your_reference_keeps_identity():
    mine = object()
    data = answer_of(
        *seq(1, b"list", *seq(2, b"your-reference", ("INT", 6)), *seq(3, b"your-reference", ("INT", 6)))
    )
    ((_, _, value),) = FoolscapDecoder(lambda kind, clid: mine).feed(data)
    assert value[0] is mine and value[1] is mine


# ------------------------------------------------------------------------------------------------
# Encoder
# ------------------------------------------------------------------------------------------------


def test_keyword_arguments_go_sorted_and_method_names_through_the_vocabulary():
    encoder = FoolscapEncoder()
    data = encoder.call(1, 0, "list", (), {"b": 2, "a": 1, "B": 0})
    names = [v for _, kind, v in _core.Tokenizer("foolscap").feed(data) if kind in ("STRING", "VOCAB")]
    assert names == [(11, b"call"), (4, b"list"), (12, b"arguments"), b"B", b"a", b"b"]


def test_dicts_go_sorted_and_unsortable_keys_send_nothing():
    encoder = FoolscapEncoder(next_open_id=3)
    a = encoder.answer(1, {2: "b", 1: "a"})
    assert a == FoolscapEncoder(next_open_id=3).answer(1, {1: "a", 2: "b"})
    with pytest.raises(TypeError, match="not supported between"):
        encoder.answer(2, {"x": 1, b"y": 2})
    # nothing was sent: the counter is where it was
    assert encoder.next_open_id == 3 + a.count(0x88)
    assert encoder.answer(2, None) == FoolscapEncoder(next_open_id=encoder.next_open_id - 2).answer(2, None)


def test_a_failed_message_rolls_the_counter_back():
    encoder = FoolscapEncoder(next_open_id=10)
    with pytest.raises(TypeError, match="cannot send builtins.object objects"):
        encoder.answer(1, [1, [2, object()]])
    assert encoder.next_open_id == 10
    with pytest.raises(UnicodeEncodeError):
        encoder.call(1, 1, "m", ("\ud800",))
    assert encoder.next_open_id == 10
    assert encoder.answer(1, [1]) == FoolscapEncoder(next_open_id=10).answer(1, [1])
    assert encoder.next_open_id == 12


class MyList(list):
    pass


class MyStr(str):
    pass


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y


def test_the_encoder_hook():
    seen = []

    def hook(obj):
        seen.append(type(obj).__name__)
        if isinstance(obj, Point):
            return ("copyable", "example.pbfast/Point", {"x": obj.x, "y": obj.y})
        if isinstance(obj, MyStr):
            return ("my-reference", 3, None, "pb://a@b:1/c")
        return None

    encoder = FoolscapEncoder(hook, next_open_id=0x1F - 1)
    encoder.next_open_id = 0x1F
    # the capture's (answer 12 (copyable "example.pbfast/Point" "x" 3 "y" -4))
    assert encoder.answer(12, Point(3, -4)).hex() == (
        "1f880d870c812088128714826578616d706c652e7062666173742f506f696e740182780381018279048320891f89"
    )
    # builtin subclasses the hook leaves alone go as their base type
    assert FoolscapEncoder(hook).answer(1, MyList([1])) == FoolscapEncoder().answer(1, [1])
    assert FoolscapEncoder(hook).answer(1, [MyStr("x")]) == FoolscapEncoder(encode_hook).answer(
        1, [MyRef(3, None, "pb://a@b:1/c")]
    )
    assert seen == ["Point", "MyList", "MyStr"]
    # an object without any form
    with pytest.raises(TypeError, match="cannot send test_foolscap_codec.Point objects"):
        FoolscapEncoder().answer(1, Point(1, 2))
    # a hook that raises: its exception, nothing sent
    encoder = FoolscapEncoder(lambda obj: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        encoder.answer(1, Point(1, 2))
    assert encoder.next_open_id == 0


@pytest.mark.parametrize(
    "form",
    [
        "nope",
        ("copyable",),
        ("my-reference", 1, None),
        ("unknown", 1),
        ("copyable", "t.T", 5),
        ("copyable", "t.T", [("a",)]),
        ("copyable", "t.T", [(1, 2)]),
        ("their-reference", "x", "furl"),
    ],
)
def test_a_bad_hook_form_is_a_type_error(form):
    encoder = FoolscapEncoder(lambda obj: form)
    with pytest.raises(TypeError):
        encoder.answer(1, Point(1, 2))
    assert encoder.next_open_id == 0


class Form:
    """An object the hook gives a fixed form."""

    def __init__(self, *form):
        self.form = form


def form_hook(obj):
    return obj.form


def test_reference_forms_match_the_captures():
    encoder = FoolscapEncoder(form_hook, next_open_id=0x1A)
    # (answer 8 (my-reference 2)): a later send is the clid alone
    assert encoder.answer(8, Form("my-reference", 2)).hex() == "1a880d8708811b880f8702811b891a89"
    # first send without a FURL: clid and an empty interface name
    data = FoolscapEncoder(form_hook).answer(1, Form("my-reference", 5, None, None))
    assert data == tokens(("OPEN", 0), ("VOCAB", 13), ("INT", 1), ("OPEN", 1), ("VOCAB", 15), ("INT", 5),
                          ("STRING", b""), ("CLOSE", 1), ("CLOSE", 0))  # fmt: skip


def test_error_state_in_the_order_given():
    encoder = FoolscapEncoder()
    pairs = [("value", b"boom"), ("type", b"builtins.ValueError")]
    assert encoder.error(2, pairs) == FoolscapEncoder().error(2, dict(pairs))
    events = FoolscapDecoder(decode_hook).feed(encoder.error(3, pairs))
    assert events == [(FS_ERROR, 3, Copy(FAILURE, (("value", b"boom"), ("type", b"builtins.ValueError"))))]


def test_encoder_api_details():
    encoder = FoolscapEncoder()
    assert encoder.ping() == b"\x8e" and encoder.pong() == b"\x8f"
    assert encoder.ping(5) == b"\x05\x8e" and encoder.pong(300) == b"\x2c\x02\x8f"
    assert encoder.next_open_id == 0
    assert FoolscapEncoder().call(1, 1, "m", [1, 2]) == FoolscapEncoder().call(1, 1, "m", (1, 2), {})
    assert FoolscapEncoder().call(1, 1, "m") == FoolscapEncoder().call(1, 1, "m", ())
    with pytest.raises(ValueError, match="request ID must be an INT on the wire"):
        encoder.answer(-1, None)
    with pytest.raises(ValueError, match="request ID must be an INT on the wire"):
        encoder.answer(2**31, None)
    with pytest.raises(ValueError, match="clid must be an INT on the wire"):
        encoder.call(1, -(2**31) - 1, "m")
    encoder.call(2**31 - 1, -(2**31), "m")
    with pytest.raises(ValueError, match="gift ID must be an INT on the wire"):
        FoolscapEncoder(lambda obj: ("their-reference", -1, "f")).answer(1, Point(1, 2))
    with pytest.raises(TypeError, match="keyword argument names must be str"):
        encoder.call(1, 1, "m", (), {b"k": 1})
    with pytest.raises(TypeError, match="tuple or list"):
        encoder.call(1, 1, "m", "abc")
    assert (
        len({FS_CALL, FS_ANSWER, FS_ERROR, FS_PING, FS_PONG, FS_VIOLATION, FS_CALL_ABORTED, FS_PEER_ERROR})
        == 8
    )
