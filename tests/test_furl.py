"""TubIDs and FURLs, checked against foolscap's own functions."""

from __future__ import annotations

import hashlib
import os

import pytest
from foolscap import base32 as fs_base32
from foolscap import furl as fs_furl
from foolscap.connections.tcp import NEW_STYLE_HINT_RE, convert_legacy_hint
from hypothesis import given
from hypothesis import strategies as st
from pbfast import _core
from pbfast.errors import BadFURLError
from pbfast.furl import FURL, new_swissnum, parse_hint, tub_id

TUB = "p3n3laqzc6zqyn7t6mxkckhqjq4whutl"


@given(st.binary(max_size=64))
def test_base32_is_foolscaps(data: bytes) -> None:
    assert _core.base32(data) == fs_base32.encode(data)


@given(st.binary(max_size=2000))
def test_tub_id_is_base32_of_sha1(der: bytes) -> None:
    assert tub_id(der) == fs_base32.encode(hashlib.sha1(der).digest())


def test_tub_id_of_the_captured_certificate_digest() -> None:
    digest = bytes.fromhex("7edbb5821917b30c37f3f32ea128f04c3963d26b")
    assert _core.base32(digest) == TUB


def test_swissnums_are_160_random_bits() -> None:
    names = {new_swissnum() for _ in range(100)}
    assert len(names) == 100
    assert all(len(n) == 32 and fs_base32.is_base32(n) for n in names)


@pytest.mark.parametrize(
    "text",
    [
        f"pb://{TUB}@tcp:127.0.0.1:1234/echo",
        f"pb://{TUB}@tcp:127.0.0.1:1234,example.org:99,tcp:[::1]:80/{'a' * 32}",
        f"pb://{TUB}@/unreachable",
        f"pb://{TUB}extension@host:1/name/with/slashes",
        f"pb://{TUB.upper()}@host:1/x",
        f"pb://{TUB}@tor:abcdef.onion:80,i2p:xyz.i2p/x",
    ],
)
def test_furls_parse_as_foolscap_parses_them(text: str) -> None:
    tub, hints, name = fs_furl.decode_furl(text)
    furl = FURL.parse(text)
    assert (furl.tubID, list(furl.locationHints), furl.name) == (tub.lower(), hints, name)
    assert FURL.parse(str(furl)) == furl
    assert str(furl) == fs_furl.encode_furl(furl.tubID, list(furl.locationHints), furl.name)


@pytest.mark.parametrize(
    "text, part",
    [
        ("http://x@y/z", "pb://"),
        ("pb://nohints", "'@'"),
        (f"pb://{TUB}@host:1", "'/'"),
        (f"pb://{TUB[:-1]}1@host:1/x", "TubID"),
        (f"pb://{TUB[:20]}@host:1/x", "TubID"),
        (f"pb://{TUB}@a:1,,b:2/x", "empty"),
        (f"pb://{TUB}@host:1/", "name"),
    ],
)
def test_bad_furls_name_the_part(text: str, part: str) -> None:
    with pytest.raises(BadFURLError, match=part) as info:
        FURL.parse(text)
    assert isinstance(info.value, ValueError)


def test_errors_do_not_reveal_a_long_swissnum() -> None:
    secret = new_swissnum() * 4
    with pytest.raises(BadFURLError) as info:
        FURL.parse(f"xpb://{TUB}@h:1/{secret}")
    assert secret not in str(info.value)


@pytest.mark.parametrize(
    "hint, expected",
    [
        ("tcp:example.org:80", ("tcp", "example.org", 80)),
        ("example.org:80", ("tcp", "example.org", 80)),
        ("127.0.0.1:8800", ("tcp", "127.0.0.1", 8800)),
        ("tcp:[::1]:80", ("tcp", "::1", 80)),
        ("tcp:[fe80::1%en0]:443", ("tcp", "fe80::1%en0", 443)),
        ("tcp:[::ffff:1.2.3.4]:1", ("tcp", "::ffff:1.2.3.4", 1)),
        ("tor:abc.onion:80", ("tor", "abc.onion:80")),
        ("systemd:fd=3", ("systemd", "fd=3")),
    ],
)
def test_hints(hint: str, expected: tuple) -> None:
    assert parse_hint(hint) == expected
    if expected[0] == "tcp":
        # foolscap's own TCP handler accepts the same hint, with the same host and port.
        match = NEW_STYLE_HINT_RE.search(convert_legacy_hint(hint))
        assert match is not None
        assert (match.group(1).strip("[]"), int(match.group(2))) == expected[1:]


@pytest.mark.parametrize(
    "hint", ["tcp:host:0", "tcp:host:70000", "tcp:[::1:80", "tcp:ho st:1", "nocolon", ""]
)
def test_bad_hints(hint: str) -> None:
    with pytest.raises(BadFURLError, match="hint"):
        parse_hint(hint)


def test_random_furls_round_trip() -> None:
    for _ in range(200):
        name = new_swissnum()
        tub = tub_id(os.urandom(100))
        furl = FURL(tub, ("tcp:127.0.0.1:1",), name)
        assert FURL.parse(str(furl)) == furl
