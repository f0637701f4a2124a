"""Differential tests: pbfast against stock Twisted on generated values.

Both sides see the very same Python objects in the same process, so sets (whose iteration order
depends on string hashing) iterate identically and the bytes still have to match exactly.
"""

from __future__ import annotations

import pbfast
from helpers import (
    as_lists,
    assert_deep_equal,
    hashables,
    jellyable,
    raw_banana,
    twisted_banana_decode,
    twisted_banana_encode,
    twisted_dumps,
    twisted_loads,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pbfast import BananaError, banana

DIFFERENTIAL = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@DIFFERENTIAL
@given(jellyable())
def test_dumps_and_loads_match_twisted(value):
    ours = pbfast.dumps(value)
    theirs = twisted_dumps(value)
    assert ours == theirs, f"pbfast {ours.hex()}\ntwisted {theirs.hex()}"
    # Twisted reads what pbfast writes, and pbfast reads what Twisted writes.
    assert_deep_equal(twisted_loads(ours), value)
    assert_deep_equal(pbfast.loads(theirs), value)


class Opaque:
    """A class nobody registered: Twisted PB sends its instances as unpersistable."""


_opaque = st.one_of(
    st.builds(object),
    st.builds(Opaque),
    st.builds(range, st.integers(0, 5)),
    st.binary(max_size=4).map(bytearray),
    st.integers().map(lambda i: complex(i, 1)),
)


@settings(max_examples=100, deadline=None)
@given(
    st.recursive(
        st.one_of(_opaque, hashables()),
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.lists(children, max_size=4).map(tuple),
            st.dictionaries(hashables(), children, max_size=3),
            st.tuples(children, children).map(lambda p: [p[0], p[1], p[0]]),
        ),
        max_leaves=12,
    )
)
def test_unpersistables_match_twisted(value):
    """Objects jelly has no form for go out exactly as Twisted sends them, shared ones shared."""
    assert pbfast.dumps(value) == twisted_dumps(value)
    pbfast.loads(pbfast.dumps(value))  # and they decode (to Unpersistable)


@settings(max_examples=150, deadline=None)
@given(jellyable())
def test_dumps_none_dialect_matches_twisted(value):
    assert pbfast.dumps(value, dialect="none") == twisted_dumps(value, b"none")


@settings(max_examples=200, deadline=None)
@given(raw_banana())
def test_banana_encode_matches_twisted(value):
    for dialect in ("pb", "none"):
        ours = banana.encode(value, dialect)
        assert ours == twisted_banana_encode(value, dialect.encode())
        assert_deep_equal(twisted_banana_decode(ours, dialect.encode()), [as_lists(value)])
        assert_deep_equal(banana.decode(ours, dialect), as_lists(value))


# Byte streams built from banana-like fragments: a short header, a type byte (mostly a valid one)
# and a few body bytes. They exercise every token type, truncation and bad bytes.
_fragment = st.tuples(
    st.binary(max_size=3).map(lambda h: bytes(b & 0x7F for b in h)),
    st.one_of(st.sampled_from(range(0x80, 0x88)), st.integers(0x80, 0xFF)),
    st.binary(max_size=9),
).map(lambda t: t[0] + bytes([t[1]]) + t[2])
_streams = st.lists(st.one_of(_fragment, st.binary(max_size=4)), max_size=12).map(b"".join)


def twisted_feed(data: bytes, dialect: bytes):
    """Values Twisted delivers for ``data`` and whether it raised."""
    from twisted.internet.testing import StringTransport
    from twisted.spread import banana as tbanana

    got = []

    class Recorder(tbanana.Banana):
        def expressionReceived(self, lst):
            got.append(lst)

    proto = Recorder(isClient=1)
    proto.makeConnection(StringTransport())
    proto.currentDialect = dialect
    try:
        proto.dataReceived(data)
    except Exception:
        return got, True
    return got, False


@settings(max_examples=300, deadline=None)
@given(_streams, st.sampled_from(["pb", "none"]))
def test_decoder_matches_twisted_on_arbitrary_streams(data, dialect):
    """Whatever Twisted delivers, pbfast delivers; where Twisted raises, pbfast raises
    BananaError after delivering the same expressions."""
    expected, twisted_failed = twisted_feed(data, dialect.encode())
    decoder = banana.Decoder(dialect)
    got = []
    failed = False
    try:
        for i in range(len(data)):
            got.extend(decoder.feed(data[i : i + 1]))
    except BananaError as e:
        failed = True
        assert e.offset is not None and 0 <= e.offset < len(data)
    assert failed == twisted_failed, (data.hex(), got, expected)
    assert_deep_equal(got, expected)
