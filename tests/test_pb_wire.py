"""Whole PB exchanges captured between two stock Twisted brokers (tests/vectors/
twisted_pb_sessions.json), replayed through pbfast's sans-IO PB codec: `PbDecoder` must turn
Twisted's bytes into the events they mean, and `PbEncoder` must write Twisted's bytes again.

No sockets and no event loop. The expected events are derived here from the s-expressions stock
Twisted decoded (the ``decoded`` field of each step), with a small jelly reader of our own, so
pbfast's decoder is not used to check itself. See tests/vectors/README.md for the format.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pbfast
import pytest
from helpers import assert_deep_equal, deep_equal, from_tagged, load_vectors
from pbfast import _core
from pbfast._core import (
    EV_ANSWER,
    EV_DECREF,
    EV_ERROR,
    EV_MESSAGE,
    EV_READY,
    PbDecoder,
    PbEncoder,
)
from pbfast._failure import CopyableFailure

VECTORS = load_vectors("twisted_pb_sessions.json")
SESSIONS = {s["name"]: s for s in VECTORS["sessions"]}
FAILURE_TAG = b"twisted.spread.pb.CopyableFailure"
# Which side's decoder reads the bytes of a step.
RECEIVER_IS_SERVER = {"c2s": True, "s2c": False}


# ------------------------------------------------------------------------------------------------
# Values of the PB jelly tags, on both sides of the codec
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Ref:
    """A ``remote`` or ``local`` reference: ``Ref("remote", 1)``."""

    tag: str
    luid: Any


@dataclasses.dataclass(eq=False)
class Failure:
    """A CopyableFailure as its state dict (compared type-exactly: ``False`` is not ``0``)."""

    state: dict

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Failure) and deep_equal(self.state, other.state)

    __hash__ = None


def decode_hook(tag: bytes, items: list) -> Any:
    if tag in (b"remote", b"local"):
        assert len(items) == 1, (tag, items)
        return Ref(tag.decode(), items[0])
    if tag == FAILURE_TAG:
        assert len(items) == 1, items
        return Failure(items[0])
    return NotImplemented


def encode_hook(obj: Any) -> tuple[tuple, bool] | None:
    if isinstance(obj, Ref):
        return (obj.tag.encode(), obj.luid), False
    if isinstance(obj, (Failure, CopyableFailure)):
        return (FAILURE_TAG, obj.state), True
    return None


def unjelly(sexp: Any) -> Any:
    """The value of a jelly s-expression, for the tags these sessions use (not pbfast code)."""
    if not isinstance(sexp, list):
        return sexp  # int, float, bytes
    tag, items = sexp[0], sexp[1:]
    if tag == b"list":
        return [unjelly(x) for x in items]
    if tag == b"tuple":
        return tuple(unjelly(x) for x in items)
    if tag == b"dictionary":
        return {unjelly(k): unjelly(v) for k, v in items}
    if tag == b"unicode":
        (text,) = items
        return text.decode("utf-8")
    if tag == b"None":
        return None
    if tag == b"boolean":
        (word,) = items
        return {b"true": True, b"false": False}[word]
    if tag in (b"remote", b"local"):
        (luid,) = items
        return Ref(tag.decode(), luid)
    if tag == FAILURE_TAG:
        (state,) = items
        return Failure(unjelly(state))
    raise AssertionError(f"jelly tag {tag!r} is not used by the sessions")


# ------------------------------------------------------------------------------------------------
# What each step means
# ------------------------------------------------------------------------------------------------


def sexps(step: dict) -> list:
    return [from_tagged(x) for x in step["decoded"]]


def parts(step: dict) -> list[bytes]:
    return [bytes.fromhex(h) for h in step["parts"]]


def step_bytes(step: dict) -> bytes:
    return bytes.fromhex(step["hex"])


def handshake_bytes(session: dict) -> tuple[bytes, bytes, bytes]:
    """Twisted's (offer, client's choice + version, server's version)."""
    steps = [s for s in session["steps"] if s["note"] == "handshake"]
    assert [s["dir"] for s in steps] == ["s2c", "c2s", "s2c"], session["name"]
    offer, reply, version = (step_bytes(s) for s in steps)
    return offer, reply, version


def expected_event(sexp: Any, session: dict, server: bool) -> tuple | None:
    """The event a PbDecoder on the receiving side must emit for one expression (None: none)."""
    if isinstance(sexp, list) and sexp == [b"pb", b"none"]:  # the server's dialect offer
        assert not server
        return (EV_READY, "pb", handshake_bytes(session)[1], None)
    if sexp == b"pb":  # the client's dialect choice
        assert server
        return (EV_READY, "pb", handshake_bytes(session)[2], None)
    command, args = sexp[0], sexp[1:]
    if command == b"version":
        assert args == [_core.PB_VERSION]
        return None
    if command == b"message":
        reqid, objid, method, answer, netargs, netkw = args
        return (EV_MESSAGE, reqid, objid, method.decode(), bool(answer), unjelly(netargs), unjelly(netkw))
    if command == b"answer":
        reqid, value = args
        return (EV_ANSWER, reqid, unjelly(value))
    if command == b"error":
        reqid, value = args
        return (EV_ERROR, reqid, unjelly(value))
    if command == b"decref":
        (luid,) = args
        return (EV_DECREF, luid)
    raise AssertionError(f"command {command!r} is not used by the sessions")


def expected_events(session: dict, step: dict) -> list[tuple]:
    server = RECEIVER_IS_SERVER[step["dir"]]
    events = [expected_event(sexp, session, server) for sexp in sexps(step)]
    # The server is ready once it has the client's choice; the client's version follows in the
    # same chunk and yields nothing.
    return [e for e in events if e is not None]


def decoders() -> dict[str, PbDecoder]:
    return {
        "c2s": PbDecoder(True, hook=decode_hook),
        "s2c": PbDecoder(False, hook=decode_hook),
    }


def session_params(names=None):
    chosen = [SESSIONS[n] for n in names] if names else list(SESSIONS.values())
    return pytest.mark.parametrize("session", chosen, ids=[s["name"] for s in chosen])


# ------------------------------------------------------------------------------------------------
# The vectors themselves
# ------------------------------------------------------------------------------------------------


def test_vectors_have_every_session():
    assert list(SESSIONS) == ["handshake", "echo", "kwargs", "errors", "references", "fire_and_forget"]
    for session in SESSIONS.values():
        for step in session["steps"]:
            assert step["dir"] in ("c2s", "s2c")
            assert b"".join(parts(step)) == step_bytes(step)
            assert len(step["parts"]) == len(step["decoded"])
    assert VECTORS["generator"] == "tests/vectors/generate.py"


def test_parts_are_single_banana_expressions():
    # The split the generator made with Twisted's decoder agrees with pbfast's banana decoder.
    for session in SESSIONS.values():
        for step in session["steps"]:
            for part, sexp in zip(parts(step), sexps(step), strict=True):
                assert_deep_equal(pbfast.banana.decode(part), sexp)


# ------------------------------------------------------------------------------------------------
# (a) the handshake
# ------------------------------------------------------------------------------------------------


@session_params()
def test_handshake(session):
    offer, reply, version = handshake_bytes(session)
    assert PbDecoder(True).offer() == offer

    client = PbDecoder(False)
    assert client.feed(offer) == [(EV_READY, "pb", reply, None)]
    assert client.dialect == "pb"
    assert client.feed(version) == []

    server = PbDecoder(True)
    assert server.feed(reply) == [(EV_READY, "pb", version, None)]
    assert server.dialect == "pb"


def test_pbfast_sides_recognise_each_other_and_stock_sides_see_twisted():
    # A pbfast server adds "pbfast <extensions>" after Twisted's dialects; a pbfast client
    # answers with it and the extensions both speak; the dialect is still "pb".
    server = PbDecoder(True, extensions=["cancel", "stream"])
    offer = server.offer()
    assert offer == b"\x03\x80\x02\x82pb\x04\x82none\x14\x82pbfast cancel stream"
    client = PbDecoder(False, extensions=["stream", "trace"])
    [(kind, dialect, reply, extensions)] = client.feed(offer)
    assert (kind, dialect, extensions) == (EV_READY, "pb", ["stream"])
    assert reply.startswith(b"\x0d\x82pbfast stream")
    [(_, _, _, extensions)] = server.feed(reply)
    assert extensions == server.peer_extensions == client.peer_extensions == ["stream"]
    # Stock Twisted's offer, and its choice of "pb" from a pbfast offer: plain PB, no extensions.
    offer, reply, version = handshake_bytes(SESSIONS["handshake"])
    assert PbDecoder(False, extensions=["stream"]).feed(offer) == [(EV_READY, "pb", reply, None)]
    pbfast_server = PbDecoder(True, extensions=["stream"])
    assert pbfast_server.feed(reply) == [(EV_READY, "pb", version, None)]
    assert pbfast_server.peer_extensions is None


def test_handshake_byte_by_byte():
    offer, reply, version = handshake_bytes(SESSIONS["handshake"])
    client, server = PbDecoder(False), PbDecoder(True)
    got_client = [e for i in range(len(offer)) for e in client.feed(offer[i : i + 1])]
    got_server = [e for i in range(len(reply)) for e in server.feed(reply[i : i + 1])]
    assert got_client == [(EV_READY, "pb", reply, None)]
    assert got_server == [(EV_READY, "pb", version, None)]


# ------------------------------------------------------------------------------------------------
# (b) every message / answer / error / decref: decoded to the right event, encoded byte-identically
# ------------------------------------------------------------------------------------------------


@session_params()
def test_decode_session(session):
    decs = decoders()
    for index, step in enumerate(session["steps"]):
        got = decs[step["dir"]].feed(step_bytes(step))
        want = expected_events(session, step)
        try:
            assert_deep_equal(got, want)
        except AssertionError as e:
            raise AssertionError(f"step {index} ({step['dir']}, {step['note']}): {e}") from None
    for dec in decs.values():
        assert dec.buffered == 0


def encode_expression(encoder: PbEncoder, sexp: list) -> bytes | None:
    """pbfast's bytes for one post-handshake PB command, from its decoded fields."""
    command, args = sexp[0], sexp[1:]
    if command == b"message":
        reqid, objid, method, answer, netargs, netkw = args
        return encoder.message(reqid, objid, method.decode(), bool(answer), unjelly(netargs), unjelly(netkw))
    if command == b"answer":
        reqid, value = args
        return encoder.answer(reqid, unjelly(value))
    if command == b"error":
        reqid, value = args
        return encoder.error(reqid, unjelly(value))
    if command == b"decref":
        (luid,) = args
        return encoder.command(b"decref", luid)
    return None  # handshake


@session_params()
def test_encode_session(session):
    encoder = PbEncoder("pb", hook=encode_hook)
    encoded = 0
    for index, step in enumerate(session["steps"]):
        if step["note"] == "handshake":
            continue
        for part, sexp in zip(parts(step), sexps(step), strict=True):
            ours = encode_expression(encoder, sexp)
            assert ours is not None, (index, sexp)
            assert ours.hex() == part.hex(), f"step {index} ({step['note']}): {sexp!r}"
            encoded += 1
    assert encoded or session["name"] == "handshake"


def test_decref_count_is_repeated_decrefs():
    # Twisted decrefs one at a time (`["decref", luid]` per dropped RemoteReference); the twins
    # step holds two of them in one chunk.
    step = next(s for s in SESSIONS["references"]["steps"] if s["note"].startswith("client drops both"))
    assert len(step["parts"]) == 2
    encoder = PbEncoder("pb")
    assert encoder.command(b"decref", 2, 2) == step_bytes(step)


def test_fire_and_forget_message():
    session = SESSIONS["fire_and_forget"]
    step = next(s for s in session["steps"] if "pbanswer=False" in s["note"])
    (sexp,) = sexps(step)
    assert sexp[:5] == [b"message", 1, b"root", b"echo", 0]
    assert PbEncoder("pb").message(1, b"root", "echo", False, (5,), {}) == step_bytes(step)
    dec = PbDecoder(True)
    dec.feed(handshake_bytes(session)[1])
    assert dec.feed(step_bytes(step)) == [(EV_MESSAGE, 1, b"root", "echo", False, (5,), {})]
    # no reply was sent for it: the next s2c step answers request 2
    later = session["steps"][session["steps"].index(step) + 1 :]
    assert [sexps(s)[0][:2] for s in later if s["dir"] == "s2c"] == [[b"answer", 2]]


# ------------------------------------------------------------------------------------------------
# (c) error replies built by pbfast's CopyableFailure
# ------------------------------------------------------------------------------------------------


def twisted_errors() -> dict[str, tuple[int, dict, bytes]]:
    """method -> (request id, Twisted's failure state, Twisted's bytes) for the errors session."""
    session = SESSIONS["errors"]
    methods = {}
    out = {}
    for step in session["steps"]:
        for part, sexp in zip(parts(step), sexps(step), strict=True):
            if step["dir"] == "c2s" and isinstance(sexp, list) and sexp[0] == b"message":
                methods[sexp[1]] = sexp[3].decode()
            elif step["dir"] == "s2c" and sexp[0] == b"error":
                failure = unjelly(sexp[2])
                assert isinstance(failure, Failure)
                out[methods[sexp[1]]] = (sexp[1], failure.state, part)
    return out


TWISTED_ERRORS = twisted_errors()


def twisted_named(name: str, module: str, base: type) -> type:
    return type(name, (base,), {"__module__": module})


# An exception class whose MRO has the same qualified names as Twisted's pb.Error subclass.
TwistedPbError = twisted_named("Error", "twisted.spread.pb", Exception)
PBVectorErrorTwistedMRO = twisted_named("PBVectorError", "pbvectors", TwistedPbError)
# The same error as a pbfast user writes it: a subclass of pbfast.Error.
PBVectorErrorPbfast = twisted_named("PBVectorError", "pbvectors", pbfast.Error)


def without_count(state: dict) -> dict:
    state = dict(state)
    del state["count"]
    return state


ERROR_CASES = [
    ("fail_value", lambda: ValueError("boom")),
    ("fail_key", lambda: KeyError("missing")),
    ("fail_pb", lambda: PBVectorErrorTwistedMRO("expected failure")),
    (
        "no_such_method",
        lambda: twisted_named("NoSuchMethod", "twisted.spread.flavors", AttributeError)(
            "No such method: remote_no_such_method"
        ),
    ),
    ("x", lambda: TwistedPbError("Invalid Object ID")),
]


@pytest.mark.parametrize("method,make", ERROR_CASES, ids=[m for m, _ in ERROR_CASES])
def test_copyable_failure_matches_twisted(method, make):
    reqid, twisted_state, twisted_bytes = TWISTED_ERRORS[method]
    failure = CopyableFailure(make())
    assert type(failure.state["count"]) is int
    # The state, Twisted's count aside, is the same, key order included.
    assert list(failure.state) == list(twisted_state)
    assert_deep_equal(without_count(failure.state), without_count(twisted_state))
    encoder = PbEncoder("pb", hook=encode_hook)
    ours = encoder.error(reqid, failure)
    # Compared after decoding, count removed ...
    dec = PbDecoder(False, hook=decode_hook)
    dec.feed(handshake_bytes(SESSIONS["errors"])[0])
    ((kind, got_reqid, got),) = dec.feed(ours)
    assert (kind, got_reqid) == (EV_ERROR, reqid)
    assert_deep_equal(without_count(got.state), without_count(twisted_state))
    # ... and byte for byte once the count is Twisted's.
    failure.state["count"] = twisted_state["count"]
    assert encoder.error(reqid, failure).hex() == twisted_bytes.hex()


def test_pbfast_error_subclass_shares_fields_with_twisted():
    # A pbfast.Error subclass has pbfast's classes in its MRO where Twisted has pb.Error: every
    # other field is Twisted's.
    _, twisted_state, _ = TWISTED_ERRORS["fail_pb"]
    state = CopyableFailure(PBVectorErrorPbfast("expected failure")).state
    assert list(state) == list(twisted_state)
    for key in twisted_state:
        if key not in ("count", "parents"):
            assert_deep_equal(state[key], twisted_state[key])
    assert state["parents"][0] == twisted_state["parents"][0] == "pbvectors.PBVectorError"
    assert state["parents"][-3:] == twisted_state["parents"][-3:]


@pytest.mark.parametrize(
    "method,exc",
    [
        ("no_such_method", pbfast.NoSuchMethod("No such method: remote_no_such_method")),
        ("x", pbfast.Error("Invalid Object ID")),
        ("fail_pb", PBVectorErrorPbfast("expected failure")),
    ],
    ids=["NoSuchMethod", "Invalid Object ID", "pb.Error subclass"],
)
def test_pbfast_failures_trap_like_twisted(method, exc):
    """A Twisted caller tells these failures apart with ``f.check(pb.NoSuchMethod)`` /
    ``f.trap(pb.Error)``, which look for Twisted's qualified class names in ``parents``; pbfast's
    own errors must list them too (besides pbfast's names), or those checks never match."""
    _, twisted_state, _ = TWISTED_ERRORS[method]
    state = CopyableFailure(exc).state
    assert state["value"] == twisted_state["value"]
    missing = [p for p in twisted_state["parents"] if p not in state["parents"]]
    assert not missing, f"{state['parents']} lacks Twisted's {missing}"


# ------------------------------------------------------------------------------------------------
# (d) chunking does not matter
# ------------------------------------------------------------------------------------------------


@session_params()
def test_one_byte_chunks_give_the_same_events(session):
    whole, single = decoders(), decoders()
    for direction in ("c2s", "s2c"):
        data = b"".join(step_bytes(s) for s in session["steps"] if s["dir"] == direction)
        want = [
            e for s in session["steps"] if s["dir"] == direction for e in whole[direction].feed(step_bytes(s))
        ]
        got = [e for i in range(len(data)) for e in single[direction].feed(data[i : i + 1])]
        assert_deep_equal(got, want)
        assert single[direction].buffered == 0


@session_params()
def test_whole_direction_in_one_chunk(session):
    for direction in ("c2s", "s2c"):
        steps = [s for s in session["steps"] if s["dir"] == direction]
        data = b"".join(step_bytes(s) for s in steps)
        want = [e for s in steps for e in expected_events(session, s)]
        got = decoders()[direction].feed(data)
        assert_deep_equal(got, want)
