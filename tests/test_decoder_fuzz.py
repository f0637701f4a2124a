"""The connection decoders on hostile input: arbitrary bytes, and valid streams damaged and cut at
random points, fed to ``_core.PbDecoder`` and ``_core.FoolscapDecoder``. Whatever comes in, the
decoders give events or raise the errors of ``pbfast.errors`` (and then stay failed), nothing
else; deeply nested input is only a ``max_depth`` error.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pbfast import _core
from pbfast.errors import BananaError, NegotiationError, PbfastError, ProtocolError

FUZZ = settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])

# Values that exercise every container, sharing, and a copyable for the hook.
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.binary(max_size=8),
    st.text(max_size=8),
)
values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=4), inner, max_size=3),
        st.frozensets(st.integers(), max_size=3),
    ),
    max_leaves=20,
)


class Thing:
    """Sent as a foolscap copyable, or jelly's unpersistable."""


def pb_hook(tag: bytes, items: list) -> Any:
    return ("hooked", tag, len(items)) if tag in (b"remote", b"test.Copy") else NotImplemented


def fs_decode_hook(kind: str, *args: Any) -> Any:
    return (kind, *args[:1]) if kind != "copyable" or args[0] == "test.Thing" else NotImplemented


def fs_encode_hook(obj: Any) -> Any:
    return ("copyable", "test.Thing", {"a": 1}) if isinstance(obj, Thing) else None


def pb_stream(args: list) -> bytes:
    """What a PB client sends: its dialect choice and version, then calls and answers."""
    client = _core.PbDecoder(False)
    [(_, _, reply, _)] = client.feed(_core.PbDecoder(True).offer())
    encoder = _core.PbEncoder("pb")
    out = [reply]
    for i, arg in enumerate(args, 1):
        out.append(encoder.message(i, b"root", "method", True, (arg, Thing()), {"k": arg}))
        out.append(encoder.answer(i, [arg, arg]))
        out.append(encoder.command(b"decref", i))
    return b"".join(out)


def fs_stream(args: list) -> bytes:
    encoder = _core.FoolscapEncoder(fs_encode_hook)
    out = []
    for i, arg in enumerate(args, 1):
        out.append(encoder.call(i, 1, "method", (arg, Thing()), {"k": arg}))
        out.append(encoder.answer(i, [arg, arg]))
        out.append(encoder.ping(i))
    return b"".join(out)


def damaged(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    buf = bytearray(data)
    for kind, at, byte in edits:
        at %= len(buf) + 1
        if kind == 0 and at < len(buf):
            buf[at] ^= byte | 1
        elif kind == 1:
            buf.insert(at, byte)
        elif kind == 2 and at < len(buf):
            del buf[at]
        elif kind == 3:
            del buf[at:]
    return bytes(buf)


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)] or [b""]


def feed_all(decoder: Any, chunks: list[bytes], allowed: tuple[type[BaseException], ...]) -> None:
    """Feed every chunk: events, or an allowed error (after which another feed raises an
    allowed error again, or gives events), nothing else."""
    for chunk in chunks:
        try:
            events = decoder.feed(chunk)
        except allowed as e:
            assert isinstance(getattr(e, "events", []), list)
            try:
                assert isinstance(decoder.feed(b"\x00\x81"), list)
            except allowed:
                pass
            return
        assert isinstance(events, list) and all(isinstance(e, tuple) for e in events)


PB_ERRORS = (BananaError, ProtocolError, NegotiationError)
# The foolscap decoder's stream errors are BananaErrors; what is wrong inside a message only
# becomes an FS_VIOLATION event.
FS_ERRORS = (BananaError,)

edits = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10**6), st.integers(0, 255)), max_size=4)
cuts = st.lists(st.integers(0, 10**6), max_size=6)


@FUZZ
@given(data=st.binary(max_size=300), cuts=cuts, server=st.booleans())
def test_pb_decoder_on_arbitrary_bytes(data: bytes, cuts: list[int], server: bool) -> None:
    feed_all(_core.PbDecoder(server, hook=pb_hook), cut(data, cuts), PB_ERRORS)
    # After a good negotiation, so that the bytes reach the framer and the jelly decoder.
    decoder = _core.PbDecoder(True, hook=pb_hook, max_depth=8)
    decoder.feed(pb_stream([]))
    feed_all(decoder, cut(data, cuts), PB_ERRORS)


@FUZZ
@given(args=st.lists(values, max_size=3), edits=edits, cuts=cuts)
def test_pb_decoder_on_damaged_streams(args: list, edits: list, cuts: list[int]) -> None:
    data = pb_stream(args)
    if not edits:
        events = _core.PbDecoder(True, hook=pb_hook).feed(data)
        assert [e[0] for e in events].count(_core.EV_MESSAGE) == len(args), events
    for limits in ({}, {"max_depth": 3}):
        feed_all(_core.PbDecoder(True, hook=pb_hook, **limits), cut(damaged(data, edits), cuts), PB_ERRORS)


@FUZZ
@given(data=st.binary(max_size=300), cuts=cuts)
def test_foolscap_decoder_on_arbitrary_bytes(data: bytes, cuts: list[int]) -> None:
    feed_all(_core.FoolscapDecoder(fs_decode_hook), cut(data, cuts), FS_ERRORS)
    # Mostly OPENs of vocabulary words, so that messages get past the framer more often.
    opens = b"".join(bytes([0x88, b % 25, 0x87]) if b % 3 == 0 else bytes([b]) for b in data)
    feed_all(_core.FoolscapDecoder(fs_decode_hook), cut(opens, cuts), FS_ERRORS)


@FUZZ
@given(args=st.lists(values, max_size=3), edits=edits, cuts=cuts)
def test_foolscap_decoder_on_damaged_streams(args: list, edits: list, cuts: list[int]) -> None:
    data = fs_stream(args)
    if not edits:
        events = _core.FoolscapDecoder(fs_decode_hook).feed(data)
        assert [e[0] for e in events].count(_core.FS_CALL) == len(args), events
    for limits in ({}, {"max_depth": 3}):
        feed_all(_core.FoolscapDecoder(fs_decode_hook, **limits), cut(damaged(data, edits), cuts), FS_ERRORS)


@settings(max_examples=20)
@given(depth=st.integers(1, 20_000), extra=st.integers(0, 3), cuts=cuts)
def test_deep_input_is_a_max_depth_error_or_decodes(depth: int, extra: int, cuts: list[int]) -> None:
    fs = _core.FoolscapEncoder(max_depth=depth + extra + 1)
    nested: Any = 1
    for _ in range(depth + extra):
        nested = [nested]
    data = fs.answer(1, nested)
    decoder = _core.FoolscapDecoder(max_depth=depth + 1)
    try:
        for chunk in cut(data, cuts):
            decoder.feed(chunk)
    except BananaError as e:
        assert extra > 0 and e.limit == "max_depth", e
    else:
        assert extra == 0
    # The message and its arguments' tuple are two more lists.
    pb = _core.PbDecoder(True, max_depth=depth + 3)
    pb.feed(pb_stream([]))
    payload = b"\x02\x80\x08\x87" * (depth + extra) + b"\x01\x80\x01\x87"
    message = _core.PbEncoder("pb").message(1, b"root", "m", True, (b"@",), {}).replace(b"\x01\x82@", payload)
    try:
        for chunk in cut(message, cuts):
            pb.feed(chunk)
    except PbfastError as e:
        assert extra > 0 and isinstance(e, BananaError) and e.limit == "max_depth", e
    else:
        assert extra == 0
