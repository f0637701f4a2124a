"""foolscap's connection negotiation pieces, checked against foolscap's own code and the bytes
it sends (the constants below are foolscap 24.9's)."""

from __future__ import annotations

import pytest
from foolscap import vocab as fs_vocab
from foolscap.negotiate import Negotiation
from pbfast import _negotiate as n
from pbfast.errors import NegotiationError

A = "p3n3laqzc6zqyn7t6mxkckhqjq4whutl"
B = "772weplexoyv5p5vwal4hdzyd7o5yuu4"


def test_plaintext_phase_bytes() -> None:
    assert n.upgrade_request(A, "127.0.0.1") == (
        b"GET /id/p3n3laqzc6zqyn7t6mxkckhqjq4whutl HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Upgrade: TLS/1.0\r\nConnection: Upgrade\r\n\r\n"
    )
    assert n.UPGRADE_REPLY == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: TLS/1.0, PB/1.0\r\nConnection: Upgrade\r\n\r\n"
    )
    assert n.refusal(f"unknown TubID {'a' * 32}") == (
        b"HTTP/1.1 500 Internal Server Error: unknown TubID aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n"
    )


def test_the_server_reads_the_request() -> None:
    reader = n.HeaderReader()
    request = n.upgrade_request(A, "example.org")
    assert reader.feed(request[:10]) is None
    header, rest = reader.feed(request[10:] + b"\x16\x03\x01")
    assert rest == b"\x16\x03\x01"  # a TLS ClientHello may follow in the same read
    assert n.parse_request(header) == A
    for bad, reason in [
        (b"GET /id/ HTTP/1.1", "secure Tubs require encryption"),
        (b"GET / HTTP/1.1", "internal server error, see logs"),
        (b"POST /id/x HTTP/1.1", "internal server error, see logs"),
        (b"GET /id/x", "internal server error, see logs"),
    ]:
        with pytest.raises(NegotiationError, match=reason):
            n.parse_request(bad)


def test_headers_are_limited() -> None:
    reader = n.HeaderReader()
    with pytest.raises(NegotiationError, match="4096"):
        reader.feed(b"x" * 5000)


def test_the_client_reads_the_reply() -> None:
    n.check_upgrade_reply(n.UPGRADE_REPLY[:-4])
    with pytest.raises(NegotiationError, match="unknown TubID"):
        n.check_upgrade_reply(n.refusal(f"unknown TubID {A}")[:-4])
    with pytest.raises(NegotiationError, match="TLS"):
        n.check_upgrade_reply(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: PB/1.0")


class _Transport:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


def _foolscap_block(block: dict) -> bytes:
    sender = Negotiation.__new__(Negotiation)
    sender.transport = _Transport()
    Negotiation.sendBlock(sender, block)
    return sender.transport.data


def test_blocks_are_foolscaps() -> None:
    hello = n.Hello(A, "c267f56a414a6c65").block()
    wire = n.encode_block(hello)
    assert wire == (
        b"banana-negotiation-range: 3 3\r\ninitial-vocab-table-range: 0 1\r\n"
        b"my-incarnation: c267f56a414a6c65\r\nmy-tub-id: p3n3laqzc6zqyn7t6mxkckhqjq4whutl\r\n\r\n"
    )
    assert wire == _foolscap_block(hello)
    client = n.Hello(B, "32134df1ff561a08", client=True).block()
    assert b"last-connection: none 0\r\n" in n.encode_block(client)
    assert n.decode_block(wire[:-4]) == Negotiation.parseLines(None, wire[:-4])


def test_hello_round_trip_and_errors() -> None:
    mine = n.Hello(B, "32134df1ff561a08", last_connection=("c267f56a414a6c65", 3), client=True)
    back = n.Hello.parse(n.decode_block(n.encode_block(mine.block())[:-4]))
    assert back == mine
    with pytest.raises(NegotiationError, match="my-tub-id"):
        n.Hello.parse({"banana-negotiation-range": "3 3"})
    with pytest.raises(NegotiationError, match="remote negotiation error: Duplicate connection"):
        n.decode_block(n.error_block("Duplicate\nconnection")[:-4])
    with pytest.raises(NegotiationError, match="malformed"):
        n.decode_block(b"no colon here")


def test_master_election_and_decision() -> None:
    assert n.is_master(A, B) and not n.is_master(B, A)
    a, b = n.Hello(A, "c267f56a414a6c65"), n.Hello(B, "32134df1ff561a08", client=True)
    block, table = n.decide(a, b, seqnum=1)
    assert n.encode_block(block) == (
        b"banana-decision-version: 3\r\ncurrent-connection: c267f56a414a6c65 1\r\n"
        b"initial-vocab-table-index: 1 bb33\r\n\r\n"
    )
    assert table == 1
    assert n.accept_decision(n.decode_block(n.encode_block(block)[:-4])) == 1
    with pytest.raises(NegotiationError, match="differs"):
        n.accept_decision({"banana-decision-version": "3", "initial-vocab-table-index": "1 0000"})
    with pytest.raises(NegotiationError, match="banana version"):
        n.decide(a, n.Hello(B, "x", versions=(4, 5)), seqnum=1)


def test_vocab_hashes_are_foolscaps() -> None:
    for index in (0, 1):
        assert n.vocab_hash4(index) == fs_vocab.hashVocabTable(index)
