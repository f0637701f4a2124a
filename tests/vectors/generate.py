#!/usr/bin/env python3
"""Regenerate the committed wire-format vectors in this directory.

Usage (from the repository root)::

    python tests/vectors/generate.py

Requires stock Twisted and stock foolscap to be importable.  The script runs
their real encoders/decoders and rewrites, next to itself:

* ``twisted_pb.json``          -- Twisted Perspective Broker banana + jelly
* ``foolscap_tokens.json``     -- foolscap's banana token layer
* ``twisted_pb_sessions.json`` -- whole PB exchanges between two stock
  Twisted brokers connected in memory

The output is deterministic: no timestamps, no random values, fixed case
order.  The script re-executes itself with ``PYTHONHASHSEED=0`` so that any
hash-order-dependent iteration is stable as well.  See README.md for the JSON
formats.

Nothing here is part of pbfast itself; this file only drives the reference
implementations.
"""

import os
import sys

if os.environ.get("PYTHONHASHSEED") != "0":
    _env = dict(os.environ)
    _env["PYTHONHASHSEED"] = "0"
    _script = os.path.abspath(__file__)
    os.execve(sys.executable, [sys.executable, _script] + sys.argv[1:], _env)

import datetime
import decimal
import gc
import hashlib
import json
import platform
import struct

import foolscap
import twisted
from foolscap import banana as fbanana
from foolscap import vocab as fvocab
from twisted.internet import defer as tdefer
from twisted.internet.testing import StringTransport
from twisted.spread import banana as tbanana
from twisted.spread import jelly as tjelly
from twisted.spread import pb as tpb

HERE = os.path.dirname(os.path.abspath(__file__))
GENERATOR = "tests/vectors/generate.py"

# The namespace "python" expressions are evaluated in.  Consumers of the
# vectors must use the same one: only these two module names (plus the
# builtins that eval() adds automatically).  Note there is deliberately no
# ``__name__`` in it, which matters for lambdas (their __module__ is None).


def eval_namespace():
    return {"datetime": datetime, "decimal": decimal}


def py_eval(src):
    return eval(src, eval_namespace())


# ---------------------------------------------------------------------------
# JSON tagging of banana-level values ("tagged sexp")

INT_JSON_LIMIT = 2**53


def tag_bytes(b):
    b = bytes(b)
    if all(0x20 <= c <= 0x7E for c in b):
        return {"b": b.decode("ascii")}
    return {"bhex": b.hex()}


def tag_int(v):
    if -INT_JSON_LIMIT < v < INT_JSON_LIMIT:
        return int(v)
    return {"int": str(int(v))}


def tag_float(v):
    return {"float": repr(float(v))}


def tag(v):
    """Tag a banana-level s-expression (bytes / int / float / list / tuple)."""
    t = type(v)
    if t is bytes:
        return tag_bytes(v)
    if t is int:
        return tag_int(v)
    if t is float:
        return tag_float(v)
    if t in (list, tuple):
        return [tag(x) for x in v]
    raise TypeError(f"not a banana-level value: {type(v)!r}")


def err_record(e):
    return {"class": type(e).__name__, "message": str(e)}


# ---------------------------------------------------------------------------
# Twisted banana drivers


def tw_encode(value, dialect):
    """Bytes written by a real twisted.spread.banana.Banana.sendEncoded."""
    transport = StringTransport()
    proto = tbanana.Banana(isClient=1)
    proto.makeConnection(transport)  # sets the 64-byte prefix limit
    proto.currentDialect = dialect
    assert transport.value() == b""
    proto.sendEncoded(value)
    return transport.value()


class TwCollector(tbanana.Banana):
    """A real Twisted Banana that records every top-level expression."""

    def __init__(self, dialect):
        tbanana.Banana.__init__(self, isClient=1)
        self.received = []
        self.makeConnection(StringTransport())
        self.currentDialect = dialect

    def expressionReceived(self, obj):
        self.received.append(obj)


def tw_decode(data, dialect, chunked=False):
    proto = TwCollector(dialect)
    error = None
    try:
        if chunked:
            for i in range(len(data)):
                proto.dataReceived(data[i : i + 1])
        else:
            proto.dataReceived(data)
    except Exception as e:  # recorded, not hidden
        error = e
    return proto, error


DIALECT_BYTES = {"pb": b"pb", "none": b"none"}


# ---------------------------------------------------------------------------
# twisted_pb.json: "banana"

PB_VOCAB = [w for w, _ in sorted(tbanana.Banana.outgoingVocabulary.items(), key=lambda kv: kv[1])]

INT_CASES = [
    "0",
    "1",
    "127",
    "128",
    "255",
    "300",
    "2**31 - 1",
    "2**31",
    "-1",
    "-127",
    "-128",
    "-2**31",
    "-2**31 - 1",
    "2**32",
    "2**63",
    "2**64",
    "-2**64",
    "2**200",
    "-(2**200)",
    "2**448 - 1",
    "-(2**448 - 1)",
]

FLOAT_CASES = [
    "0.0",
    "-0.0",
    "1.5",
    "-2.25",
    "1e300",
    "5e-324",
    "float('inf')",
    "float('-inf')",
    "float('nan')",
]

BYTES_CASES = [
    "b''",
    "b'x'",
    "b'abc'",
    "b'\\x00\\xff'",
    "b'a' * 127",
    "b'a' * 128",
    "b'x' * 200",
    "b'\\x80\\x81\\x82\\x87'",
]

NEAR_MISS_CASES = [
    "b'Non'",
    "b'messages'",
    "b'MESSAGE'",
    "b'unicode'",
    "b'None\\x00'",
    "b' list'",
    "b'boolean'",
]

LIST_CASES = [
    ("empty list", "[]"),
    ("list [1]", "[1]"),
    ("nested list", "[1, [2, [3, []]]]"),
    ("list of 200 ints", "list(range(200))"),
    ("tuple encodes like a list", "(1, b'two', (3,))"),
    ("empty tuple", "()"),
    (
        "list mixing all atom types",
        "[0, 1, -1, 2**31, -2**31 - 1, 2**100, 1.5, float('-inf'), b'', b'abc', b'\\x00', b'list', [], ()]",
    ),
    ("nested empty lists 20 deep", "[" * 20 + "]" * 20),
    ("list of vocab words", "[b'list', b'None', b'answer', b'not_logged_in']"),
    ("PB-style message list", "[b'message', 1, b'root', b'method', 1, [b'tuple', 2], [b'dictionary']]"),
    ("PB dialect offer", "[b'pb', b'none']"),
]


def build_banana():
    cases = []

    def add(name, src):
        value = py_eval(src)
        pb = tw_encode(value, b"pb")
        none = tw_encode(value, b"none")
        # self-check: Twisted decodes its own bytes back to the same sexp,
        # in one chunk and byte by byte
        for data, dialect in ((pb, b"pb"), (none, b"none")):
            for chunked in (False, True):
                proto, error = tw_decode(data, dialect, chunked)
                assert error is None, (name, error)
                assert [tag(v) for v in proto.received] == [tag(value)], name
                assert proto.buffer == b"" and proto.listStack == [], name
        cases.append(
            {
                "name": name,
                "python": src,
                "sexp": tag(value),
                "hex_pb": pb.hex(),
                "hex_none": none.hex(),
            }
        )

    for src in INT_CASES:
        add("int " + src, src)
    for src in FLOAT_CASES:
        add("float " + src, src)
    for src in BYTES_CASES:
        add("bytes " + src, src)
    for word in PB_VOCAB:
        add("vocab word {}".format(word.decode("ascii")), repr(word))
    for src in NEAR_MISS_CASES:
        add("near-miss word " + src, src)
    for name, src in LIST_CASES:
        add(name, src)
    return cases


# ---------------------------------------------------------------------------
# twisted_pb.json: "banana_decode" / "banana_invalid"

HDR_655360 = "000028"  # b128(655360)
HDR_655361 = "010028"  # b128(655361)

DECODE_CASES = [
    ("empty header INT is 0", "81", "pb"),
    ("empty header STRING is b''", "82", "pb"),
    ("empty header LIST is []", "80", "pb"),
    ("non-minimal header 01 00 INT is 1", "010081", "pb"),
    ("non-minimal header 00 00 00 INT is 0", "00000081", "none"),
    ("NEG zero", "0083", "pb"),
    ("NEG with empty header", "83", "pb"),
    ("INT header 2**31 (encoder would use LONGINT)", "0000000008" + "81", "pb"),
    ("INT header 2**63", "00000000000000000001" + "81", "pb"),
    ("NEG header 2**40 (encoder would use LONGNEG)", "000000000000" + "20" + "83", "pb"),
    ("LONGINT small value 1", "0185", "pb"),
    ("LONGINT 0", "0085", "pb"),
    ("LONGNEG small value -1", "0186", "pb"),
    ("FLOAT with a header before 0x84 (ignored)", "05" + "84" + "3ff8000000000000", "pb"),
    ("FLOAT with a 3-byte header", "7f7f7f" + "84" + "c002000000000000", "none"),
    ("VOCAB 8 decodes to b'list' in pb", "0887", "pb"),
    ("VOCAB 1 decodes to b'None' in pb", "0187", "pb"),
    ("VOCAB 31 decodes to b'uncache' in pb", "1f87", "pb"),
    ("VOCAB with non-minimal header", "1a0087", "pb"),
    ("list of VOCAB words", "0380" + "0887" + "1a87" + "0b87", "pb"),
    ("STRING equal to a vocab word also decodes in pb", "04826c697374", "pb"),
    (
        "several top-level expressions in one input",
        "0181" + "0283" + "0080" + "03826162630180" + "0081",
        "pb",
    ),
    ("top-level expression then partial INT header", "0181" + "7f7f", "pb"),
    ("truncated string body", "05826162", "pb"),
    ("truncated string header (no type byte yet)", "05", "pb"),
    ("truncated float", "843ff800", "pb"),
    ("truncated list", "0380" + "0181" + "0281", "pb"),
    ("truncated nested list with partial string", "0280" + "0280" + "0181" + "038261", "pb"),
    ("complete list then truncated list", "0180" + "0181" + "0280" + "0181", "none"),
    ("64-byte header INT (accepted)", "00" * 63 + "01" + "81", "pb"),
    ("64-byte header LONGINT 2**448-1 (accepted)", "7f" * 63 + "7f" + "85", "pb"),
    ("64 header bytes and no type byte yet (accepted, buffered)", "00" * 64, "pb"),
    ("LIST header 655360 then nothing (accepted, open list)", HDR_655360 + "80", "pb"),
    ("STRING header 655360 with partial body", HDR_655360 + "82" + "787878", "pb"),
    ("zero-length lists complete immediately inside a list", "0280" + "0080" + "0080", "pb"),
    ("list completes when last nested element completes", "0180" + "0180" + "0180" + "0181", "pb"),
]

INVALID_CASES = [
    ("type byte 0x88", "0188", "pb"),
    ("type byte 0x8f", "8f", "pb"),
    ("type byte 0xff", "ff", "none"),
    ("VOCAB index 0 in pb", "0087", "pb"),
    ("VOCAB with empty header (index 0) in pb", "87", "pb"),
    ("VOCAB index 32 in pb", "2087", "pb"),
    ("VOCAB index 8 in dialect none", "0887", "none"),
    ("VOCAB index 32 in dialect none (index checked first)", "2087", "none"),
    ("65-byte header followed by a type byte", "00" * 65 + "81", "pb"),
    ("65 header bytes with no type byte", "00" * 65, "pb"),
    ("LIST header 655361", HDR_655361 + "80", "pb"),
    ("STRING header 655361", HDR_655361 + "82", "pb"),
    ("garbage type byte after a valid expression", "0181" + "ff", "pb"),
    ("invalid type byte inside a list", "0280" + "0181" + "8a", "pb"),
    ("two expressions then bad VOCAB", "0181" + "0080" + "2187", "pb"),
]


def build_decode():
    cases = []
    for name, hexdata, dialect in DECODE_CASES:
        data = bytes.fromhex(hexdata)
        proto, error = tw_decode(data, DIALECT_BYTES[dialect])
        assert error is None, (name, error)
        # self-check: byte-at-a-time delivery gives the same values
        proto2, error2 = tw_decode(data, DIALECT_BYTES[dialect], chunked=True)
        assert error2 is None, (name, error2)
        assert [tag(v) for v in proto2.received] == [tag(v) for v in proto.received], name
        assert len(proto2.listStack) == len(proto.listStack), name
        cases.append(
            {
                "name": name,
                "hex": hexdata,
                "dialect": dialect,
                "values": [tag(v) for v in proto.received],
                "leftover_hex": proto.buffer.hex(),
                "open_lists": len(proto.listStack),
                "open_list_stack": [
                    {"expected": count, "items": [tag(v) for v in items]} for count, items in proto.listStack
                ],
            }
        )
    return cases


def build_invalid():
    cases = []
    for name, hexdata, dialect in INVALID_CASES:
        data = bytes.fromhex(hexdata)
        proto, error = tw_decode(data, DIALECT_BYTES[dialect])
        assert error is not None, name
        cases.append(
            {
                "name": name,
                "hex": hexdata,
                "dialect": dialect,
                "error": err_record(error),
                "values_before_error": [tag(v) for v in proto.received],
            }
        )
    return cases


# ---------------------------------------------------------------------------
# twisted_pb.json: "banana_encode_errors"

ENCODE_ERROR_CASES = [
    ("int 2**448 (one past LONGINT range)", "2**448"),
    ("int -(2**448)", "-(2**448)"),
    ("str", "'abc'"),
    ("None", "None"),
    ("dict", "{b'a': 1}"),
    ("set", "{1, 2}"),
    ("list of 655361 items", "[0] * 655361"),
    ("bytes of 655361 bytes", "b'x' * 655361"),
    ("nested list containing a str", "[1, [b'a', 'x']]"),
    ("bytearray", "bytearray(b'ab')"),
]


def build_encode_errors():
    cases = []
    for name, src in ENCODE_ERROR_CASES:
        errors = {}
        for dialect in ("pb", "none"):
            try:
                tw_encode(py_eval(src), DIALECT_BYTES[dialect])
            except Exception as e:
                errors[dialect] = err_record(e)
            else:
                raise AssertionError("expected sendEncoded to fail: " + name)
        assert errors["pb"] == errors["none"], name
        cases.append({"name": name, "python": src, "dialect": "pb", "error": errors["pb"]})
    return cases


# ---------------------------------------------------------------------------
# twisted_pb.json: "jelly" / "jelly_errors"

JELLY_CASES = [
    # atoms
    ("None", "None"),
    ("True", "True"),
    ("False", "False"),
    ("int 0", "0"),
    ("int 1", "1"),
    ("int -1", "-1"),
    ("int 2**31-1 (last INT)", "2**31 - 1"),
    ("int 2**31 (first LONGINT)", "2**31"),
    ("int -2**31 (last NEG)", "-2**31"),
    ("int -2**31-1 (first LONGNEG)", "-2**31 - 1"),
    ("int 2**63", "2**63"),
    ("int -2**64", "-2**64"),
    ("int 2**448-1 (largest sendable)", "2**448 - 1"),
    ("int -(2**448-1) (smallest sendable)", "-(2**448 - 1)"),
    ("float 1.5", "1.5"),
    ("float 0.0", "0.0"),
    ("float -0.0", "-0.0"),
    ("float inf", "float('inf')"),
    ("float -inf", "float('-inf')"),
    ("float nan", "float('nan')"),
    ("bytes empty", "b''"),
    ("bytes hello", "b'hello'"),
    ("bytes non-ascii", "b'\\x00\\xff'"),
    ("bytes equal to vocab word list", "b'list'"),
    ("bytes equal to vocab word None", "b'None'"),
    ("bytes equal to vocab word message", "b'message'"),
    ("bytes equal to jelly tag unicode (not a vocab word)", "b'unicode'"),
    ("str empty", "''"),
    ("str hello", "'hello'"),
    ("str non-ASCII latin", "'h\\xe9llo'"),
    ("str CJK", "'\\u65e5\\u672c'"),
    ("str astral (emoji)", "'\\U0001f600'"),
    ("str with NUL", "'a\\x00b'"),
    ("str equal to vocab word list", "'list'"),
    ("str equal to vocab word None", "'None'"),
    # containers
    ("empty list", "[]"),
    ("list of ints", "[1, 2, 3]"),
    ("nested lists", "[1, [2, [3, []]]]"),
    ("list mixing atoms", "[b'a', 'a', None, True, 1.5, 2**40]"),
    ("empty tuple", "()"),
    ("tuple of one", "(1,)"),
    ("tuple mixed", "(1, 'two', [3])"),
    ("nested containers", "{'a': [1, (2, 3)], 'b': {'c': None}, 'd': {1, 2}, 'e': frozenset({3})}"),
    ("empty dict", "{}"),
    ("dict str keys (insertion order)", "{'z': 1, 'a': 2}"),
    ("dict int keys", "{1: 'one', 2: 'two'}"),
    ("dict bytes keys", "{b'k': b'v', b'list': b'None'}"),
    ("dict None key", "{None: 0}"),
    ("dict tuple key", "{(1, 2): 'tuple key'}"),
    ("dict float key", "{1.5: 'x'}"),
    ("dict bool keys", "{True: 1, False: 0}"),
    ("dict mixed keys", "{'s': 1, 2: 2, b'b': 3, None: 4, (5,): 5, 6.5: 6, False: 7}"),
    ("empty set", "set()"),
    ("set of small ints", "{3, 1, 2}"),
    ("empty frozenset", "frozenset()"),
    ("frozenset of small ints", "frozenset({1, 2, 3})"),
    ("set of one str", "{'a'}"),
    ("frozenset of one str", "frozenset({'a'})"),
    ("set of one tuple", "{(1, 2)}"),
    ("list of 200 ints", "list(range(200))"),
    # datetime family
    ("datetime naive with microseconds", "datetime.datetime(2020, 7, 11, 1, 16, 5, 344)"),
    ("datetime midnight", "datetime.datetime(2020, 1, 1)"),
    ("date", "datetime.date(2020, 7, 11)"),
    ("time with microseconds", "datetime.time(1, 16, 5, 344)"),
    ("time midnight", "datetime.time(0, 0)"),
    ("timedelta positive", "datetime.timedelta(days=1, seconds=2, microseconds=3)"),
    ("timedelta negative days", "datetime.timedelta(days=-1, seconds=5, microseconds=7)"),
    ("timedelta minus one hour", "datetime.timedelta(hours=-1)"),
    ("timedelta zero", "datetime.timedelta(0)"),
    # decimal
    ("decimal 9.95", "decimal.Decimal('9.95')"),
    ("decimal -0 (sign lost)", "decimal.Decimal('-0')"),
    ("decimal 0", "decimal.Decimal('0')"),
    ("decimal 1E+10", "decimal.Decimal('1E+10')"),
    ("decimal -123.456", "decimal.Decimal('-123.456')"),
    ("decimal 0.000001", "decimal.Decimal('0.000001')"),
    ("decimal 1.000 (trailing zeros kept)", "decimal.Decimal('1.000')"),
    # sharing and cycles
    ("shared list", "(lambda l: [l, l])([1])"),
    ("reference ids by second sighting", "(lambda a, b: [a, b, b, a])([1], [2])"),
    ("self-containing list", "(lambda l: (l.append(l), l)[1])([])"),
    ("self-containing dict", "(lambda d: (d.__setitem__('me', d), d)[1])({})"),
    ("tuple cycle through a list", "(lambda l: (lambda t: (l.append(t), t)[1])((l,)))([])"),
    ("shared dict inside a tuple", "(lambda d: (d, d))({'k': 1})"),
    ("shared tuple", "(lambda t: [t, t])((1, 2))"),
    ("shared set", "(lambda s: [s, s])({1})"),
    ("same str twice (not shared)", "(lambda s: [s, s])('abc')"),
    ("same bytes twice (not shared)", "(lambda b: [b, b])(b'abc')"),
    ("same datetime twice (not shared)", "(lambda d: [d, d])(datetime.date(2020, 1, 2))"),
    # classes and unpersistable things
    ("class object int", "int"),
    ("class object type", "type"),
    ("object() is unpersistable", "object()"),
    ("range is unpersistable", "range(3)"),
    ("bytearray is unpersistable", "bytearray(b'ab')"),
    ("builtin function len is unpersistable", "len"),
    ("shared unpersistable", "[object()] * 2"),
]

JELLY_ERROR_CASES = [
    ("tz-aware datetime", "datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)"),
    ("tz-aware time", "datetime.time(1, 2, tzinfo=datetime.timezone.utc)"),
    ("decimal Infinity (str exponent)", "decimal.Decimal('Infinity')"),
    ("decimal -Infinity (str exponent)", "decimal.Decimal('-Infinity')"),
    ("decimal NaN", "decimal.Decimal('NaN')"),
    ("decimal sNaN", "decimal.Decimal('sNaN')"),
    ("int 2**448", "2**448"),
    ("int -(2**448) inside a list", "[-(2**448)]"),
    ("lambda without module name (eval namespace has no __name__)", "(lambda: 0)"),
    (
        "lambda with a __module__ (function name is a str)",
        "(lambda f: (setattr(f, '__module__', 'm'), f)[1])(lambda: 0)",
    ),
    ("module object (module name is a str)", "datetime"),
    ("list of 655360 items (655361 with the tag)", "[0] * 655360"),
    ("bytes of 655361 bytes", "b'x' * 655361"),
]


def pb_broker():
    broker = tpb.Broker(isClient=1)
    broker.makeConnection(StringTransport())
    broker.currentDialect = b"pb"  # skip negotiation / version exchange
    broker.transport.clear()
    return broker


def build_jelly():
    cases = []
    for name, src in JELLY_CASES:
        sexp = tjelly.jelly(py_eval(src), taster=tjelly.globalSecurity)
        hex_pb = tw_encode(sexp, b"pb")
        hex_none = tw_encode(sexp, b"none")

        # Cross-check against the real PB send path: Broker.serialize()
        # followed by an ["answer", 1, result] command.
        broker = pb_broker()
        net = broker.serialize(py_eval(src))
        assert tag(net) == tag(sexp), name
        broker._sendAnswer(net, 1)
        wire = broker.transport.value()
        assert wire == bytes.fromhex("03801b870181") + hex_pb, name

        # Self-check: Twisted decodes the bytes back to the same sexp.
        for data, dialect in ((hex_pb, b"pb"), (hex_none, b"none")):
            proto, error = tw_decode(data, dialect)
            assert error is None and [tag(v) for v in proto.received] == [tag(sexp)], name

        entry = {
            "name": name,
            "python": src,
            "sexp": tag(sexp),
            "hex_pb": hex_pb.hex(),
            "hex_none": hex_none.hex(),
        }
        # Round trip through Twisted's unjelly with PB's default security,
        # starting from the *decoded* sexp (what a receiving broker sees).
        proto, _ = tw_decode(hex_pb, b"pb")
        try:
            obj = tjelly.unjelly(proto.received[0], taster=tjelly.globalSecurity)
        except Exception as e:
            entry["unjelly_ok"] = False
            entry["unjelly_error"] = err_record(e)
        else:
            entry["unjelly_ok"] = True
            again = tjelly.jelly(obj, taster=tjelly.globalSecurity)
            entry["rejelly_same"] = tag(again) == tag(sexp)
        cases.append(entry)
    return cases


def build_jelly_errors():
    cases = []
    for name, src in JELLY_ERROR_CASES:
        try:
            sexp = tjelly.jelly(py_eval(src), taster=tjelly.globalSecurity)
        except Exception as e:
            cases.append({"name": name, "python": src, "stage": "jelly", "error": err_record(e)})
            continue
        errors = []
        for dialect in (b"pb", b"none"):
            try:
                tw_encode(sexp, dialect)
            except Exception as e:
                errors.append(err_record(e))
        assert len(errors) == 2 and errors[0] == errors[1], name
        cases.append({"name": name, "python": src, "stage": "banana", "error": errors[0]})
    return cases


def build_twisted():
    return {
        "generator": GENERATOR,
        "twisted_version": twisted.__version__,
        "python_version": platform.python_version(),
        "banana": build_banana(),
        "banana_decode": build_decode(),
        "banana_invalid": build_invalid(),
        "banana_encode_errors": build_encode_errors(),
        "jelly": build_jelly(),
        "jelly_errors": build_jelly_errors(),
    }


# ---------------------------------------------------------------------------
# twisted_pb_sessions.json: whole PB exchanges between two stock brokers
#
# A real pb.PBServerFactory broker and a real pb.PBClientFactory broker, each
# on a StringTransport, with the bytes shuttled between them by hand (no
# sockets, no reactor).  Every chunk one side writes is recorded with its
# direction.


class PBVectorError(tpb.Error):
    """A pb.Error subclass with a stable qualified name on the wire."""

    __module__ = "pbvectors"


class SessionChild(tpb.Referenceable):
    def __init__(self):
        self.n = 0

    def remote_inc(self):
        self.n += 1
        return self.n


class SessionClientObject(tpb.Referenceable):
    """A client-side Referenceable the client passes as an argument."""

    def remote_hello(self):
        return "hello"


class SessionRoot(tpb.Root):
    def __init__(self):
        self.children = []

    def remote_echo(self, *args):
        return list(args)

    def remote_echo_args(self, *args, **kwargs):
        return [list(args), kwargs]

    def remote_fail_value(self):
        raise ValueError("boom")

    def remote_fail_key(self):
        raise KeyError("missing")

    def remote_fail_pb(self):
        raise PBVectorError("expected failure")

    def remote_child(self):
        child = SessionChild()
        self.children.append(child)
        return child

    def remote_twins(self):
        child = SessionChild()
        return [child, child]

    def remote_take(self, ref):
        # the RemoteReference to the client's object dies when this returns
        return isinstance(ref, tpb.RemoteReference)

    def remote_identify(self, obj):
        # a "local" reference unjellies to the server's own object
        return [obj is self.children[0], obj.n]


def tw_split(chunk):
    """Split a chunk into its expressions with Twisted's own decoder.

    Returns [(sexp, bytes)]; the bytes of each expression are Twisted's own
    re-encoding of it, and together they must give back the chunk."""
    proto, error = tw_decode(chunk, b"pb")
    assert error is None and proto.buffer == b"" and proto.listStack == [], chunk
    parts = [(sexp, tw_encode(sexp, b"pb")) for sexp in proto.received]
    assert b"".join(p for _, p in parts) == chunk, chunk
    return parts


class PBSession:
    """A stock Twisted PB server broker and client broker wired back to back."""

    def __init__(self, root):
        self.server_factory = tpb.PBServerFactory(root)
        self.server = self.server_factory.buildProtocol(None)
        self.client_factory = tpb.PBClientFactory()
        self.client = self.client_factory.buildProtocol(None)
        self.server_transport = StringTransport()
        self.client_transport = StringTransport()
        self.steps = []
        self.note = None
        self.server.makeConnection(self.server_transport)  # writes the dialect offer
        self.client.makeConnection(self.client_transport)

    def pump(self, note):
        """Deliver bytes both ways until neither side has anything to send."""
        moved = True
        while moved:
            moved = False
            for direction, transport, peer in (
                ("c2s", self.client_transport, self.server),
                ("s2c", self.server_transport, self.client),
            ):
                data = transport.value()
                if not data:
                    continue
                transport.clear()
                parts = tw_split(data)
                self.steps.append(
                    {
                        "dir": direction,
                        "note": note,
                        "hex": data.hex(),
                        "decoded": [tag(sexp) for sexp, _ in parts],
                        "parts": [p.hex() for _, p in parts],
                    }
                )
                peer.dataReceived(data)
                moved = True

    def handshake(self):
        self.pump("handshake")
        assert self.client.currentDialect == b"pb" == self.server.currentDialect
        roots = []
        self.client_factory.getRootObject().addCallback(roots.append)
        assert len(roots) == 1
        return roots[0]

    def call(self, note, ref, method, *args, **kwargs):
        """ref.callRemote(...) then pump; returns ("ok", result),
        ("error", failure) or None (no answer wanted)."""
        outcome = []
        d = ref.callRemote(method, *args, **kwargs)
        if d is not None:
            d.addCallbacks(
                lambda r: outcome.append(("ok", r)),
                lambda f: outcome.append(("error", f)),
            )
        self.pump(note)
        if d is None:
            return None
        assert len(outcome) == 1, (note, outcome)
        return outcome[0]


def failure_record(f):
    """What the Twisted client saw for an error reply: a CopiedFailure."""
    return {
        "type": f.type.decode("utf-8") if isinstance(f.type, bytes) else str(f.type),
        "value": str(f.value),
        "parents": [p.decode("utf-8") if isinstance(p, bytes) else p for p in f.parents],
    }


def session_handshake():
    s = PBSession(SessionRoot())
    s.handshake()
    return s, {"dialect": "pb", "version": tpb.Broker.version}


def session_echo():
    s = PBSession(SessionRoot())
    root = s.handshake()
    kind, result = s.call("call echo(1, 'two', [3])", root, "echo", 1, "two", [3])
    assert kind == "ok" and result == [1, "two", [3]], result
    return s, {"request_id": 1, "object_id": "root", "method": "echo", "result": repr(result)}


def session_kwargs():
    s = PBSession(SessionRoot())
    root = s.handshake()
    kind, result = s.call("call echo_args(1, x='y')", root, "echo_args", 1, x="y")
    assert kind == "ok" and result == [[1], {"x": "y"}], result
    return s, {"request_id": 1, "object_id": "root", "method": "echo_args", "result": repr(result)}


def session_errors():
    s = PBSession(SessionRoot())
    root = s.handshake()
    calls = []
    for method, note in (
        ("fail_value", "remote_fail_value raises ValueError('boom')"),
        ("fail_key", "remote_fail_key raises KeyError('missing')"),
        ("fail_pb", "remote_fail_pb raises pbvectors.PBVectorError (a pb.Error)"),
        ("no_such_method", "unknown method: NoSuchMethod"),
    ):
        kind, f = s.call(note, root, method)
        assert kind == "error", (method, f)
        calls.append({"request_id": len(calls) + 1, "method": method, "error": failure_record(f)})

    # Unknown object id: a raw message the client broker would never build
    # itself, sent with its own sendCall and answered like any other call.
    outcome = []
    request_id = s.client.newRequestID()
    d = tdefer.Deferred()
    d.addCallbacks(lambda r: outcome.append(("ok", r)), lambda f: outcome.append(("error", f)))
    s.client.waitingForAnswers[request_id] = d
    s.client.sendCall(b"message", request_id, 99, b"x", 1, [b"tuple"], [b"dictionary"])
    s.pump("message to unknown object id 99: pb.Error('Invalid Object ID')")
    assert len(outcome) == 1 and outcome[0][0] == "error", outcome
    calls.append(
        {"request_id": request_id, "object_id": 99, "method": "x", "error": failure_record(outcome[0][1])}
    )
    return s, {"calls": calls}


def session_references():
    s = PBSession(SessionRoot())
    root = s.handshake()
    kind, child = s.call("call child(): answer is a new remote reference", root, "child")
    assert kind == "ok" and isinstance(child, tpb.RemoteReference), child
    child_luid = child.luid
    assert s.call("child.inc()", child, "inc") == ("ok", 1)
    assert s.call("child.inc() again", child, "inc") == ("ok", 2)

    kind, twins = s.call("call twins(): the same new child twice in one answer", root, "twins")
    assert kind == "ok" and len(twins) == 2, twins
    twins_luid = twins[0].luid
    assert twins[1].luid == twins_luid and twins[0] is not twins[1]
    server_local = s.server.localObjects[twins_luid]
    assert server_local.refcount == 2, server_local
    del twins, kind
    gc.collect()
    s.pump("client drops both twin references: decref x2")
    assert twins_luid not in s.server.localObjects

    mine = SessionClientObject()
    kind, result = s.call(
        "call take(client Referenceable): remote arg; server drops it: decref", root, "take", mine
    )
    assert (kind, result) == ("ok", True), (kind, result)
    gc.collect()
    s.pump("after gc (nothing left to send)")
    assert not s.client.localObjects, s.client.localObjects

    kind, result = s.call("call identify(server's own child): local arg", root, "identify", child)
    assert (kind, result) == ("ok", [True, 2]), (kind, result)

    del child
    gc.collect()
    s.pump("client drops the child reference: decref")
    assert child_luid not in s.server.localObjects
    return s, {"child_luid": child_luid, "twins_luid": twins_luid}


def session_fire_and_forget():
    s = PBSession(SessionRoot())
    root = s.handshake()
    assert s.call("call echo(5, pbanswer=False): no answer", root, "echo", 5, pbanswer=False) is None
    assert s.steps[-1]["dir"] == "c2s"
    # a normal call afterwards gets request id 2
    kind, result = s.call("call echo(6): request id 2", root, "echo", 6)
    assert (kind, result) == ("ok", [6])
    return s, {"request_id": 1, "object_id": "root", "method": "echo", "answer_required": False}


SESSIONS = [
    ("handshake", session_handshake),
    ("echo", session_echo),
    ("kwargs", session_kwargs),
    ("errors", session_errors),
    ("references", session_references),
    ("fire_and_forget", session_fire_and_forget),
]


# Everything Twisted logs while the sessions run (the "Peer will receive
# following PB traceback" errors), instead of its default of printing
# critical events to stderr.
TW_LOG_EVENTS = []


def build_sessions():
    from twisted.logger import globalLogBeginner

    globalLogBeginner.beginLoggingTo([TW_LOG_EVENTS.append], discardBuffer=True, redirectStandardIO=False)
    sessions = []
    for name, build in SESSIONS:
        gc.collect()
        session, expect = build()
        gc.collect()
        session.pump("end")
        assert session.steps[-1]["note"] != "end", name  # nothing left unsent
        # Self-check: replaying each direction's bytes into a fresh stock
        # decoder, byte by byte, gives the same expressions.
        for direction in ("c2s", "s2c"):
            data = b"".join(bytes.fromhex(st["hex"]) for st in session.steps if st["dir"] == direction)
            proto, error = tw_decode(data, b"pb", chunked=True)
            assert error is None and proto.buffer == b"", name
            expected = [e for st in session.steps if st["dir"] == direction for e in st["decoded"]]
            assert [tag(v) for v in proto.received] == expected, name
        sessions.append({"name": name, "expect": expect, "steps": session.steps})
    return {
        "generator": GENERATOR,
        "twisted_version": twisted.__version__,
        "python_version": platform.python_version(),
        "sessions": sessions,
    }


# ---------------------------------------------------------------------------
# foolscap_tokens.json

FS_TYPE_NAMES = {
    0x80: "LIST",
    0x81: "INT",
    0x82: "STRING",
    0x83: "NEG",
    0x84: "FLOAT",
    0x85: "LONGINT",
    0x86: "LONGNEG",
    0x87: "VOCAB",
    0x88: "OPEN",
    0x89: "CLOSE",
    0x8A: "ABORT",
    0x8D: "ERROR",
    0x8E: "PING",
    0x8F: "PONG",
}


def fs_tokenize(data):
    """Independent tokenizer for foolscap banana bytes.

    Returns a list of (KIND, value) with raw Python values: ints for
    OPEN/CLOSE/ABORT/PING/PONG/VOCAB and the signed integer kinds, bytes
    for STRING/ERROR, float for FLOAT.  Raises ValueError on truncation.
    """
    out = []
    i = 0
    n = len(data)
    while i < n:
        j = i
        while j < n and data[j] < 0x80:
            j += 1
        if j - i > 64:
            raise ValueError(f"header longer than 64 bytes at {i}")
        if j == n:
            raise ValueError(f"truncated header at {i}")
        header = 0
        for k, byte in enumerate(data[i:j]):
            header |= byte << (7 * k)
        typebyte = data[j]
        i = j + 1
        kind = FS_TYPE_NAMES.get(typebyte)
        if kind is None or kind == "LIST":
            raise ValueError(f"bad type byte 0x{typebyte:02x}")
        if kind in ("STRING", "ERROR", "LONGINT", "LONGNEG"):
            body = data[i : i + header]
            if len(body) != header:
                raise ValueError(f"truncated body at {i}")
            i += header
            if kind == "LONGINT":
                value = int.from_bytes(body, "big")
            elif kind == "LONGNEG":
                value = -int.from_bytes(body, "big")
            else:
                value = bytes(body)
        elif kind == "FLOAT":
            body = data[i : i + 8]
            if len(body) != 8:
                raise ValueError(f"truncated float at {i}")
            i += 8
            value = struct.unpack("!d", body)[0]
        elif kind == "NEG":
            value = -header
        else:
            value = header
        out.append((kind, value))
    return out


def fs_tag_token(kind, value):
    if kind in ("STRING", "ERROR"):
        return [kind, tag_bytes(value)]
    if kind == "FLOAT":
        return [kind, tag_float(value)]
    return [kind, tag_int(value)]


def fs_table(index):
    return [bytes(w) for w in fvocab.INITIAL_VOCAB_TABLES[index]]


def fs_sender(table_index):
    proto = fbanana.Banana()
    proto.transport = StringTransport()
    proto.populateVocabTable(fs_table(table_index))
    return proto


def fs_send_tokens(tokens, table_index=1):
    """Write tokens with foolscap's own token writers; return the bytes."""
    words = fs_table(table_index)
    proto = fs_sender(table_index)
    for kind, value in tokens:
        if kind == "OPEN":
            proto.openCount = value
            assert proto.sendOpen() == value
        elif kind == "CLOSE":
            proto.sendClose(value)
        elif kind == "ABORT":
            proto.sendAbort(value)
        elif kind in ("INT", "NEG", "LONGINT", "LONGNEG", "FLOAT", "STRING"):
            proto.sendToken(value)
        elif kind == "VOCAB":
            proto.sendToken(words[value])
        elif kind == "ERROR":
            proto.sendError(value)
        elif kind == "PING":
            proto.sendPING(value)
        elif kind == "PONG":
            proto.sendPONG(value)
        else:
            raise ValueError(kind)
    return proto.transport.value()


class _PermissiveUnslicer:
    def checkToken(self, typebyte, header):
        pass

    def openerCheckToken(self, typebyte, header, opentype):
        pass


class FsRecorder(fbanana.Banana):
    """foolscap's real token parser (Banana.handleData) with the unslicer
    layer replaced by a recorder.  What is observable from there: OPEN ids
    (when the first index token arrives), every token value (STRING and
    VOCAB both as bytes; all integer kinds as int), CLOSE ids, ABORT (without
    its id), PING numbers (via the PONG reply), ERROR messages.  PONG is
    silently dropped by foolscap and so is invisible here."""

    def __init__(self, table_index):
        fbanana.Banana.__init__(self)
        self.transport = StringTransport()
        self.populateVocabTable(fs_table(table_index))
        self.receiveStack = [_PermissiveUnslicer()]
        self.objectCounter = 0
        self.events = []

    def handleOpen(self, openCount, objectCount, indexToken):
        self.events.append(("OPEN", openCount))
        self.events.append(("VAL", indexToken))
        self.inOpen = False

    def handleToken(self, token, ready_deferred=None):
        self.events.append(("VAL", token))

    def handleClose(self, closeCount):
        self.events.append(("CLOSE", closeCount))

    def handleViolation(self, f, methname, inOpen=False, inClose=False):
        self.events.append(("ABORT",))

    def sendPONG(self, number):
        self.events.append(("PING", number))

    def handleError(self, msg):
        self.events.append(("ERROR", bytes(msg)))


def _val(v):
    if isinstance(v, float):
        return ("VAL", "float", struct.pack("!d", v))
    return ("VAL", v)


def fs_projection(tokens, table_index):
    words = fs_table(table_index)
    out = []
    for kind, value in tokens:
        if kind in ("OPEN", "CLOSE", "PING"):
            out.append((kind, value))
        elif kind == "ABORT":
            out.append(("ABORT",))
        elif kind == "VOCAB":
            out.append(_val(words[value]))
        elif kind == "PONG":
            continue
        elif kind == "ERROR":
            out.append(("ERROR", value))
            break
        else:
            out.append(_val(value))
    return out


def fs_crosscheck_decode(data, tokens, table_index, name):
    for chunked in (False, True):
        rec = FsRecorder(table_index)
        if chunked:
            for i in range(len(data)):
                rec.handleData(data[i : i + 1])
        else:
            rec.handleData(data)
        if rec.inOpen:  # an OPEN still waiting for its index token
            rec.events.append(("OPEN", rec.inboundOpenCount))
        got = [_val(e[1]) if e[0] == "VAL" else e for e in rec.events]
        assert got == fs_projection(tokens, table_index), (name, got)


FS_TOKEN_CASES = [
    ("INT 0", [("INT", 0)]),
    ("INT 1", [("INT", 1)]),
    ("INT 127", [("INT", 127)]),
    ("INT 128", [("INT", 128)]),
    ("INT 2**31-1 (largest INT)", [("INT", 2**31 - 1)]),
    ("NEG -1", [("NEG", -1)]),
    ("NEG -2**31 (smallest NEG)", [("NEG", -(2**31))]),
    ("LONGINT 2**31 (smallest LONGINT)", [("LONGINT", 2**31)]),
    ("LONGINT 2**40", [("LONGINT", 2**40)]),
    ("LONGINT 2**64", [("LONGINT", 2**64)]),
    ("LONGINT 2**448 (no 448-bit limit in foolscap)", [("LONGINT", 2**448)]),
    ("LONGNEG -2**31-1 (largest LONGNEG)", [("LONGNEG", -(2**31) - 1)]),
    ("LONGNEG -2**64", [("LONGNEG", -(2**64))]),
    ("FLOAT 1.5", [("FLOAT", 1.5)]),
    ("FLOAT -0.0", [("FLOAT", -0.0)]),
    ("FLOAT inf", [("FLOAT", float("inf"))]),
    ("FLOAT nan", [("FLOAT", float("nan"))]),
    ("STRING empty", [("STRING", b"")]),
    ("STRING hello", [("STRING", b"hello")]),
    ("STRING non-ascii", [("STRING", b"\x00\xff")]),
    ("STRING 200 bytes", [("STRING", b"x" * 200)]),
    ("STRING equal to vocab word list (sent as VOCAB 4)", [("STRING", b"list")]),
    ("STRING equal to vocab word none (sent as VOCAB 0)", [("STRING", b"none")]),
    ("STRING 'list' with the empty vocab table 0", [("STRING", b"list")], 0),
    ("STRING near-miss word 'List'", [("STRING", b"List")]),
    ("VOCAB 0 none", [("VOCAB", 0)]),
    ("VOCAB 4 list", [("VOCAB", 4)]),
    ("VOCAB 24 attrdict", [("VOCAB", 24)]),
    ("OPEN 0", [("OPEN", 0)]),
    ("OPEN 200", [("OPEN", 200)]),
    ("CLOSE 0", [("CLOSE", 0)]),
    ("CLOSE 200", [("CLOSE", 200)]),
    ("ABORT 0", [("ABORT", 0)]),
    ("ABORT 7", [("ABORT", 7)]),
    ("ERROR message", [("ERROR", b"boom")]),
    ("PING 0 (no header)", [("PING", 0)]),
    ("PING 5", [("PING", 5)]),
    ("PONG 0 (no header)", [("PONG", 0)]),
    ("PONG 300", [("PONG", 300)]),
    ("sequence OPEN(0) list 1 2 CLOSE(0)", [("OPEN", 0), ("VOCAB", 4), ("INT", 1), ("INT", 2), ("CLOSE", 0)]),
    (
        "sequence OPEN(3) unicode 'h\\xc3\\xa9' CLOSE(3)",
        [("OPEN", 3), ("VOCAB", 8), ("STRING", "h\u00e9".encode("utf-8")), ("CLOSE", 3)],
    ),
    (
        "nested sequence with ABORT",
        [
            ("OPEN", 0),
            ("VOCAB", 4),
            ("INT", 1),
            ("OPEN", 1),
            ("VOCAB", 4),
            ("ABORT", 1),
            ("CLOSE", 1),
            ("ABORT", 0),
            ("CLOSE", 0),
        ],
    ),
]

# Post-negotiation plaintext banana bytes captured between stock foolscap
# 24.9.0 Tubs (TLS plaintext, one scenario step each).  Tub ids / swissnums in
# these particular steps do not occur, so they are stable literal data.
FS_CAPTURES = [
    ("B->A call add(1, 2)", "02880b8702810181038261646403880c8702810181028103890289"),
    (
        "B->A call add(a=-5, b=2**40): kwargs and LONGINT",
        "04880b8703810181038261646405880c8700810182610583018262068501000000000005890489",
    ),
    (
        "A->B answer to echo(value mix): none/boolean/ints/LONGNEG/LONGINT/float/"
        "unicode/tuple/dict/set/immutable-set",
        "04880d870481058804870688008706890788018701810789088801870081088900817f81"
        "00018101830486800000010985010000000000000000843ff80000000000000582627974"
        "6573098808870882756e69636f64c3a909890a880587018102810a890b88038701826102"
        "8101826b01810b890c8803870d8808870182750d890e88048701810e890c890f88068703"
        "810f89108807870481108905890489",
    ),
    (
        "A->B answer to echo(shared list): reference to an open-id",
        "11880d870581128804871388048701811389148802871381148912891189",
    ),
    (
        "B->A call echo(...) aborted mid-stream by an unserialisable object: ABORT/CLOSE pairs",
        "24880b870b81018104826563686f25880c870181268804870181278804870281278a2789268a2689258a2589248a2489",
    ),
    (
        "A->B answer get_point(): copyable with two index tokens",
        "1f880d870c812088128714826578616d706c652e7062666173742f506f696e740182780381018279048320891f89",
    ),
]

# Real foolscap object serialisation (Banana.send through the plain
# RootSlicer, no PB broker) of plain values, a fresh connection each (open
# ids start at 0).
FS_SLICE_CASES = [
    ("None", "None"),
    ("True", "True"),
    ("False", "False"),
    ("int 0", "0"),
    ("int -5", "-5"),
    ("int 2**40", "2**40"),
    ("int -(2**40)", "-(2**40)"),
    ("float 1.5", "1.5"),
    ("bytes hello", "b'hello'"),
    ("bytes equal to vocab word list", "b'list'"),
    ("str non-ASCII", "'h\\xe9llo'"),
    ("empty list", "[]"),
    ("list [1, 2]", "[1, 2]"),
    ("tuple (1, 2)", "(1, 2)"),
    ("nested list", "[[1, [2]], 3]"),
    ("dict bytes keys (sender sorts keys)", "{b'b': 2, b'a': 1}"),
    ("dict str keys (sender sorts keys)", "{'z': 1, 'a': 2}"),
    ("set of small ints", "{3, 1, 2}"),
    ("frozenset", "frozenset({1})"),
    # A plain Banana's RootSlicer does not track references (only PB's
    # call/answer scopes do), so a shared list is simply sent twice here, and
    # a cyclic list recurses without bound; neither is what a PB Tub sends,
    # so those cases are not recorded (see the captures for a real
    # "reference" sequence).
]


def fs_slice(value):
    proto = fbanana.Banana()
    transport = StringTransport()
    proto.populateVocabTable(fs_table(1))
    proto.makeConnection(transport)
    assert transport.value() == b""
    results = []
    d = proto.send(value)
    d.addBoth(results.append)
    assert results and not hasattr(results[0], "getTraceback"), results
    return transport.value()


def build_foolscap():
    words = fs_table(1)
    digest = hashlib.sha1(b"\x00".join(words)).hexdigest()[:4]
    assert digest == fvocab.hashVocabTable(1), digest

    tokens_out = []
    for case in FS_TOKEN_CASES:
        name, tokens = case[0], case[1]
        table_index = case[2] if len(case) > 2 else 1
        data = fs_send_tokens(tokens, table_index)
        wire = fs_tokenize(data)
        # wire tokens equal the requested ones except where foolscap swapped
        # a STRING for a VOCAB token
        assert len(wire) == len(tokens), name
        for (k1, v1), (k2, v2) in zip(tokens, wire, strict=False):
            if k1 == "STRING" and k2 == "VOCAB":
                assert fs_table(table_index)[v2] == v1, name
            else:
                assert k1 == k2, name
                assert fs_tag_token(k1, v1) == fs_tag_token(k2, v2), name
        fs_crosscheck_decode(data, wire, table_index, name)
        tokens_out.append(
            {
                "name": name,
                "vocab_table": table_index,
                "tokens": [fs_tag_token(k, v) for k, v in tokens],
                "hex": data.hex(),
                "wire_tokens": [fs_tag_token(k, v) for k, v in wire],
            }
        )

    captures_out = []
    for name, hexdata in FS_CAPTURES:
        data = bytes.fromhex(hexdata)
        wire = fs_tokenize(data)
        fs_crosscheck_decode(data, wire, 1, name)
        # foolscap's own token writers reproduce the captured bytes exactly
        assert fs_send_tokens(wire, 1) == data, name
        captures_out.append(
            {
                "name": name,
                "hex": hexdata,
                "tokens": [fs_tag_token(k, v) for k, v in wire],
            }
        )

    slices_out = []
    for name, src in FS_SLICE_CASES:
        data = fs_slice(py_eval(src))
        wire = fs_tokenize(data)
        fs_crosscheck_decode(data, wire, 1, name)
        assert fs_send_tokens(wire, 1) == data, name
        slices_out.append(
            {
                "name": name,
                "python": src,
                "hex": data.hex(),
                "tokens": [fs_tag_token(k, v) for k, v in wire],
            }
        )

    return {
        "generator": GENERATOR,
        "foolscap_version": foolscap.__version__,
        "twisted_version": twisted.__version__,
        "python_version": platform.python_version(),
        "vocab_table_index": 1,
        "vocab": [w.decode("ascii") for w in words],
        "vocab_hash4": digest,
        "tokens": tokens_out,
        "captures": captures_out,
        "slices": slices_out,
    }


# ---------------------------------------------------------------------------


def write_json(filename, obj):
    text = json.dumps(obj, indent=1, sort_keys=False, allow_nan=False) + "\n"
    path = os.path.join(HERE, filename)
    with open(path, "w", encoding="ascii", newline="\n") as f:
        f.write(text)
    print(f"wrote {os.path.join('tests', 'vectors', filename)} ({len(text)} bytes)")


def main():
    write_json("twisted_pb.json", build_twisted())
    write_json("foolscap_tokens.json", build_foolscap())
    write_json("twisted_pb_sessions.json", build_sessions())


if __name__ == "__main__":
    main()
