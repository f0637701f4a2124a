"""foolscap's connection negotiation (`pbfast._core.Negotiation`, the Rust core's), driven in
memory and checked against the bytes stock foolscap 24.9's own code writes and reads. The Rust
tests (`tests/negotiation.rs`) drive every phase, split and refusal; these check the binding and
the byte-for-byte agreement with foolscap."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from foolscap import vocab as fs_vocab
from foolscap.negotiate import Negotiation as StockNegotiation
from pbfast import _core
from pbfast.errors import NegotiationError, TLSError
from pbfast.identity import TubIdentity

HOST = "127.0.0.1"
UPGRADE_REPLY = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: TLS/1.0, PB/1.0\r\nConnection: Upgrade\r\n\r\n"


def upgrade_request(tub_id: str, host: str = HOST) -> bytes:
    """A client's first bytes (as the test below checks against foolscap's)."""
    request = f"GET /id/{tub_id} HTTP/1.1\r\nHost: {host}\r\nUpgrade: TLS/1.0\r\nConnection: Upgrade\r\n\r\n"
    return request.encode()


def hello_block(tub_id: str, incarnation: str, *, client: bool) -> bytes:
    """A hello as stock foolscap writes it."""
    block = {
        "banana-negotiation-range": "3 3",
        "initial-vocab-table-range": "0 1",
        "my-incarnation": incarnation,
        "my-tub-id": tub_id,
    }
    if client:
        block["last-connection"] = "none 0"
    return _foolscap_block(block)


class _Transport:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


def _stock(**attributes: object) -> StockNegotiation:
    """A stock foolscap Negotiation that writes into `.transport.data`, with only `attributes`."""
    negotiation = StockNegotiation.__new__(StockNegotiation)
    negotiation.transport = _Transport()
    negotiation.log = lambda *args, **kwargs: None
    negotiation.debug_doTimer = lambda *args: False
    vars(negotiation).update(attributes)
    return negotiation


def _foolscap_block(block: dict[str, str]) -> bytes:
    sender = _stock()
    StockNegotiation.sendBlock(sender, block)
    data: bytes = sender.transport.data
    return data


IDENTITIES: dict[str, TubIdentity] = {}


def identity(name: str) -> TubIdentity:
    if name not in IDENTITIES:
        IDENTITIES[name] = TubIdentity.generate()
    return IDENTITIES[name]


def master_and_slave() -> tuple[TubIdentity, TubIdentity]:
    a, b = identity("a"), identity("b")
    return (a, b) if a.tubID > b.tubID else (b, a)


def negotiation(
    who: TubIdentity,
    incarnation: str,
    target: str | None = None,
    last_connection: tuple[str, int] | None = None,
) -> _core.Negotiation:
    """A pbfast Tub's negotiation: a client's if it has a `target`."""
    return _core.Negotiation(
        who.certificate_der,
        who.private_key_der,
        incarnation,
        ["cacheable"],
        target=target,
        host=HOST,
        last_connection=last_connection,
    )


def test_the_plaintext_phase_is_foolscaps() -> None:
    master, slave = master_and_slave()
    client = negotiation(slave, "1" * 16, target=master.tubID)
    stock_client = _stock(target=SimpleNamespace(tubID=master.tubID), targetHost=HOST)
    StockNegotiation.sendPlaintextClient(stock_client)
    assert client.take() == stock_client.transport.data == upgrade_request(master.tubID)

    server = negotiation(master, "2" * 16)
    assert server.receive(upgrade_request(master.tubID)) == "pending"
    stock_server = _stock(startENCRYPTED=lambda: None)
    StockNegotiation.sendPlaintextServerAndStartENCRYPTED(stock_server)
    assert server.take() == stock_server.transport.data == UPGRADE_REPLY
    assert server.phase == "hello"

    refusing = negotiation(master, "2" * 16)
    with pytest.raises(NegotiationError, match=f"^unknown TubID {slave.tubID}$"):
        refusing.receive(upgrade_request(slave.tubID))
    assert (
        refusing.take() == f"HTTP/1.1 500 Internal Server Error: unknown TubID {slave.tubID}\r\n\r\n".encode()
    )
    assert refusing.phase == "failed"


class Scripted:
    """A hand-driven TLS peer of a `_core.Negotiation` past its upgrade."""

    def __init__(self, tls: _core.TlsSession) -> None:
        self.tls = tls
        self.heard = b""

    def talk(self, ours: _core.Negotiation) -> str:
        step = "pending"
        while True:
            to_peer = ours.take()
            self.heard += self.tls.feed(to_peer)
            to_us = self.tls.take()
            if not to_peer and not to_us:
                return step
            if to_us:
                step = ours.receive(to_us)


def test_hello_and_decision_blocks_are_foolscaps() -> None:
    master, slave = master_and_slave()
    server = negotiation(master, "c267f56a414a6c65")
    server.receive(upgrade_request(master.tubID))
    assert server.take() == UPGRADE_REPLY
    peer = Scripted(_core.TlsSession(False, slave.certificate_der, slave.private_key_der))
    assert peer.talk(server) == "pending"
    hello = {
        "banana-negotiation-range": "3 3",
        "initial-vocab-table-range": "0 1",
        "my-incarnation": "c267f56a414a6c65",
        "my-tub-id": master.tubID,
        "pbfast-extensions": "cacheable",
    }
    assert peer.heard == _foolscap_block(hello)
    assert StockNegotiation.parseLines(None, peer.heard[:-4]) == hello

    peer.tls.write(hello_block(slave.tubID, "32134df1ff561a08", client=True))
    assert peer.talk(server) == "decide"
    assert (server.peer_tub_id, server.peer_incarnation) == (slave.tubID, "32134df1ff561a08")
    assert server.peer_is_client is True and server.peer_last_connection is None
    assert server.peer_extensions is None  # a stock Tub's hello
    assert server.decide(5) == "negotiated"
    assert server.seqnum == 5 and server.master_connection is None
    before = len(peer.heard)
    peer.talk(server)
    decision = {
        "banana-decision-version": "3",
        "current-connection": "c267f56a414a6c65 5",
        "initial-vocab-table-index": f"1 {fs_vocab.hashVocabTable(1)}",
    }
    assert peer.heard[before:] == _foolscap_block(decision)


def test_two_negotiations_hand_over_to_banana() -> None:
    master, slave = master_and_slave()
    client = negotiation(master, "1" * 16, target=slave.tubID, last_connection=("2" * 16, 3))
    server = negotiation(slave, "2" * 16)
    steps = {"client": "pending", "server": "pending"}
    while True:
        to_server, to_client = client.take(), server.take()
        if not to_server and not to_client:
            break
        if to_server:
            steps["server"] = server.receive(to_server)
        if to_client:
            steps["client"] = client.receive(to_client)
            if steps["client"] == "decide":  # the client has the greater TubID here
                assert client.peer_tub_id == slave.tubID and client.peer_is_client is False
                steps["client"] = client.decide(9)
    assert steps == {"client": "negotiated", "server": "negotiated"}
    assert server.peer_last_connection == ("2" * 16, 3)
    assert server.peer_extensions == ["cacheable"]
    assert (server.seqnum, server.master_connection) == (9, ("1" * 16, 9))
    client_tls, client_rest = client.finish()
    server_tls, server_rest = server.finish()
    assert client_rest == server_rest == b""
    assert client_tls.peer_tub_id == slave.tubID and server_tls.peer_tub_id == master.tubID
    client_tls.write(b"banana")
    assert server_tls.feed(client_tls.take()) == b"banana"
    with pytest.raises(ValueError, match="cannot finish in the done phase"):
        client.finish()


def test_failures_are_clear_errors() -> None:
    master, slave = master_and_slave()
    client = negotiation(slave, "1" * 16, target=master.tubID)
    with pytest.raises(NegotiationError, match="no decision is awaited in the upgrade phase"):
        client.decide(1)
    with pytest.raises(ValueError, match="cannot finish in the upgrade phase"):
        client.finish()
    with pytest.raises(NegotiationError, match="the server refused the connection: go away"):
        client.receive(b"HTTP/1.1 500 Internal Server Error: go away\r\n\r\n")

    server = negotiation(master, "2" * 16)
    with pytest.raises(TLSError):
        server.receive(upgrade_request(master.tubID) + b"not TLS at all\r\n" * 4)
    assert server.phase == "failed"
    assert server.take()[len(UPGRADE_REPLY)] == 0x15  # the alert after the reply
    with pytest.raises(ValueError, match="private key"):
        _core.Negotiation(master.certificate_der, slave.private_key_der, "", [])
