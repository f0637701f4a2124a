"""pbfast._core.TlsSession: TLS for foolscap connections, driven in memory (no sockets, no loop).

The interop peers are pyOpenSSL connections over memory BIOs with the context stock foolscap
uses (`foolscap.crypto.FoolscapContextFactory`: VERIFY_PEER with a callback that accepts
self-signed and expired certificates), loaded with foolscap-made X.509 v1 certificates: the
checked-in ones under ``tests/vectors/tls/`` and fresh ones from ``createCertificate()``.
"""

from __future__ import annotations

import json
import platform
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from foolscap import crypto as fs_crypto
from OpenSSL import SSL
from pbfast import ProtocolError, TLSError, _core
from pbfast._core import TlsError, TlsSession
from pbfast.furl import tub_id
from pbfast.identity import TubIdentity

VECTORS = Path(__file__).parent / "vectors" / "tls"


@dataclass(frozen=True)
class Tub:
    """An identity as both pbfast (DER) and foolscap (its PrivateCertificate) use it."""

    pem: bytes
    certificate_der: bytes
    private_key_der: bytes
    foolscap_tub_id: str

    @classmethod
    def from_pem(cls, pem: bytes) -> Tub:
        certificate = x509.load_pem_x509_certificate(pem)
        key = serialization.load_pem_private_key(pem, password=None)
        pkcs8 = key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        foolscap_tub_id = fs_crypto.digest32(fs_crypto.loadCertificate(pem).digest("sha1"))
        return cls(pem, certificate.public_bytes(serialization.Encoding.DER), pkcs8, foolscap_tub_id)

    def session(self, server: bool) -> TlsSession:
        return TlsSession(server, self.certificate_der, self.private_key_der)


def vector_tub(file: str) -> Tub:
    return Tub.from_pem((VECTORS / file).read_bytes())


def recorded_tub_ids() -> dict[str, str]:
    document = json.loads((VECTORS / "identities.json").read_text())
    return {record["file"]: record["tub_id"] for record in document["identities"]}


@pytest.fixture(scope="module")
def fresh_foolscap_tubs() -> tuple[Tub, Tub]:
    """Two identities made just now by stock foolscap."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # foolscap's use of old pyOpenSSL APIs
        pems = [fs_crypto.createCertificate().dumpPEM() for _ in range(2)]
    return Tub.from_pem(pems[0]), Tub.from_pem(pems[1])


class OpenSSLPeer:
    """A pyOpenSSL connection over memory BIOs, set up as a foolscap Tub sets up its TLS."""

    def __init__(self, tub: Tub | None, server: bool, *, tls12_only: bool = False) -> None:
        kwargs = {}
        if tub is not None:
            certificate = fs_crypto.loadCertificate(tub.pem)
            kwargs = {"privateKey": certificate.privateKey.original, "certificate": certificate.original}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # Twisted's use of old pyOpenSSL APIs
            context = fs_crypto.FoolscapContextFactory(**kwargs).getContext()
        if tls12_only:
            context.set_max_proto_version(SSL.TLS1_2_VERSION)
        self.conn = SSL.Connection(context, None)
        if server:
            self.conn.set_accept_state()
        else:
            self.conn.set_connect_state()
        self.handshake_done = False
        self.closed = False

    def _handshake(self) -> None:
        if not self.handshake_done:
            try:
                self.conn.do_handshake()
                self.handshake_done = True
            except SSL.WantReadError:
                pass

    def feed(self, data: bytes) -> bytes:
        if data:
            self.conn.bio_write(data)
        self._handshake()
        received = b""
        while self.handshake_done and not self.closed:
            try:
                received += self.conn.recv(65536)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self.closed = True
        return received

    def take(self) -> bytes:
        self._handshake()
        out = b""
        while True:
            try:
                out += self.conn.bio_read(65536)
            except SSL.WantReadError:
                return out

    def write(self, data: bytes) -> None:
        assert self.handshake_done, "OpenSSL writes only once the handshake is done here"
        self.conn.sendall(data)

    def peer_tub_id(self) -> str | None:
        certificate = self.conn.get_peer_certificate()
        return None if certificate is None else fs_crypto.digest32(certificate.digest("sha1"))


def pump(a, b) -> tuple[bytes, bytes]:
    """Move bytes between two sessions until both are quiet; returns what each one received."""
    got_a = got_b = b""
    for _ in range(50):
        to_b, to_a = a.take(), b.take()
        if not to_a and not to_b:
            return got_a, got_b
        got_b += b.feed(to_b)
        got_a += a.feed(to_a)
    raise AssertionError("the sessions never went quiet")


# --- pbfast <-> pbfast ------------------------------------------------------------------------


def test_pbfast_client_and_server_see_each_others_tub_ids() -> None:
    client_id, server_id = TubIdentity.generate(), TubIdentity.generate()
    client = TlsSession(False, client_id.certificate_der, client_id.private_key_der)
    server = TlsSession(True, server_id.certificate_der, server_id.private_key_der)
    assert client.handshaking and server.handshaking
    assert client.peer_certificate is None and client.protocol_version is None
    pump(client, server)
    assert not client.handshaking and not server.handshaking
    assert client.peer_tub_id == server_id.tubID
    assert server.peer_tub_id == client_id.tubID
    assert client.peer_certificate == server_id.certificate_der
    assert server.peer_certificate == client_id.certificate_der
    assert client.protocol_version == server.protocol_version == "TLSv1_3"
    assert client.cipher_suite == server.cipher_suite == "TLS13_AES_128_GCM_SHA256"  # pbfast prefers it

    client.write(b"ping")
    server.write(bytearray(b"po"))
    server.write(memoryview(b"ng"))
    big = bytes(range(256)) * 4000
    server.write(big)
    got_client, got_server = pump(client, server)
    assert got_server == b"ping"
    assert got_client == b"pong" + big
    assert repr(client) == f"<TlsSession client open peer={server_id.tubID}>"


def test_the_checked_in_foolscap_identities_give_foolscaps_tub_ids() -> None:
    recorded = recorded_tub_ids()
    for file in ("foolscap_v1.pem", "foolscap_v1_other.pem", "ec_p256.pem", "ed25519.pem"):
        tub = vector_tub(file)
        assert tub.foolscap_tub_id == recorded[file] == tub_id(tub.certificate_der)
    foolscap_made = x509.load_der_x509_certificate(vector_tub("foolscap_v1.pem").certificate_der)
    assert foolscap_made.version == x509.Version.v1


def test_writes_before_the_handshake_are_delivered_after_it() -> None:
    client, server = vector_tub("foolscap_v1.pem").session(False), vector_tub("ed25519.pem").session(True)
    client.write(b"sent ")
    server.write(b"early reply")
    client.write(b"early")
    assert client.handshaking
    got_client, got_server = pump(client, server)
    assert (got_client, got_server) == (b"early reply", b"sent early")


def test_close_notify_both_ways() -> None:
    client, server = vector_tub("foolscap_v1.pem").session(False), vector_tub("ec_p256.pem").session(True)
    pump(client, server)
    client.write(b"bye")
    client.close()
    with pytest.raises(TlsError, match="after close"):
        client.write(b"more")
    assert server.feed(client.take()) == b"bye"
    assert server.closed and not client.closed
    server.close()
    assert client.feed(server.take()) == b""
    assert client.closed


def test_an_anonymous_client_gets_in_without_a_tub_id() -> None:
    client, server = TlsSession(False, None, None), vector_tub("foolscap_v1.pem").session(True)
    client.write(b"hello")
    _, got_server = pump(client, server)
    assert got_server == b"hello" and not server.handshaking
    assert server.peer_certificate is None and server.peer_tub_id is None
    assert client.peer_tub_id == recorded_tub_ids()["foolscap_v1.pem"]


# --- interop with OpenSSL set up as foolscap sets it up ----------------------------------------


def _interop(ours: Tub, theirs: Tub | None, pbfast_is_server: bool, tls12_only: bool) -> None:
    session = ours.session(pbfast_is_server)
    peer = OpenSSLPeer(theirs, not pbfast_is_server, tls12_only=tls12_only)
    if pbfast_is_server:
        pump(peer, session)
    else:
        pump(session, peer)
    assert not session.handshaking and peer.handshake_done
    expected = "TLSv1_2" if tls12_only else "TLSv1_3"
    assert session.protocol_version == expected
    assert peer.conn.get_protocol_version_name() == expected.replace("_", ".")
    if theirs is None:
        assert session.peer_tub_id is None
    else:
        assert session.peer_tub_id == theirs.foolscap_tub_id
    assert peer.peer_tub_id() == ours.foolscap_tub_id

    session.write(b"from pbfast " * 1000)
    peer.write(b"from openssl " * 1000)
    got_pbfast, got_openssl = pump(session, peer)
    assert got_pbfast == b"from openssl " * 1000
    assert got_openssl == b"from pbfast " * 1000

    session.close()
    peer.feed(session.take())
    assert peer.closed
    peer.conn.shutdown()
    session.feed(peer.take())
    assert session.closed


@pytest.mark.parametrize("tls12_only", [False, True], ids=["tls13", "tls12"])
@pytest.mark.parametrize("pbfast_is_server", [False, True], ids=["pbfast-client", "pbfast-server"])
def test_interop_with_checked_in_foolscap_v1_certificates(pbfast_is_server: bool, tls12_only: bool) -> None:
    _interop(vector_tub("foolscap_v1.pem"), vector_tub("foolscap_v1_other.pem"), pbfast_is_server, tls12_only)


@pytest.mark.parametrize("tls12_only", [False, True], ids=["tls13", "tls12"])
@pytest.mark.parametrize("pbfast_is_server", [False, True], ids=["pbfast-client", "pbfast-server"])
def test_interop_with_fresh_foolscap_certificates(
    fresh_foolscap_tubs: tuple[Tub, Tub], pbfast_is_server: bool, tls12_only: bool
) -> None:
    ours, theirs = fresh_foolscap_tubs
    _interop(ours, theirs, pbfast_is_server, tls12_only)


@pytest.mark.parametrize("file", ["ec_p256.pem", "ed25519.pem"])
@pytest.mark.parametrize("tls12_only", [False, True], ids=["tls13", "tls12"])
@pytest.mark.parametrize("pbfast_is_server", [False, True], ids=["pbfast-client", "pbfast-server"])
def test_interop_with_ec_and_ed25519_identities(pbfast_is_server: bool, tls12_only: bool, file: str) -> None:
    _interop(vector_tub(file), vector_tub("foolscap_v1.pem"), pbfast_is_server, tls12_only)


def test_interop_with_an_openssl_client_without_a_certificate() -> None:
    _interop(vector_tub("foolscap_v1.pem"), None, pbfast_is_server=True, tls12_only=False)


def test_an_openssl_server_lets_a_pbfast_client_without_a_certificate_in() -> None:
    session = TlsSession(False, None, None)
    peer = OpenSSLPeer(vector_tub("foolscap_v1.pem"), server=True)
    pump(session, peer)
    assert not session.handshaking and peer.handshake_done
    assert peer.peer_tub_id() is None
    assert session.peer_tub_id == recorded_tub_ids()["foolscap_v1.pem"]


# --- failures --------------------------------------------------------------------------------


def _swap_certificate(flight: bytes, real: bytes, claimed: bytes) -> bytes:
    """TLS 1.2 sends certificates in the clear: show another Tub's (same-length) certificate in
    place of the real one, as an attacker claiming that TubID without its key would."""
    assert len(real) == len(claimed) and real in flight
    return flight.replace(real, claimed)


def test_a_server_whose_key_does_not_match_its_certificate_fails_the_handshake() -> None:
    real, claimed = vector_tub("foolscap_v1.pem"), vector_tub("foolscap_v1_other.pem")
    session = vector_tub("ed25519.pem").session(False)
    peer = OpenSSLPeer(real, server=True, tls12_only=True)
    peer.feed(session.take())
    flight = _swap_certificate(peer.take(), real.certificate_der, claimed.certificate_der)
    expected = "TLS handshake failed: the peer's ServerKeyExchange signature is invalid"
    with pytest.raises(TlsError, match=expected):
        session.feed(flight)
    assert session.peer_tub_id is None
    alert = session.take()
    assert alert, "the alert is left for the caller to send"
    with pytest.raises(SSL.Error, match="decrypt error"):
        peer.feed(alert)
    # The session stays failed.
    with pytest.raises(TlsError, match="ServerKeyExchange"):
        session.feed(b"")
    with pytest.raises(TlsError, match="ServerKeyExchange"):
        session.write(b"data")


def test_a_client_whose_key_does_not_match_its_certificate_fails_the_handshake() -> None:
    real, claimed = vector_tub("foolscap_v1.pem"), vector_tub("foolscap_v1_other.pem")
    session = vector_tub("ec_p256.pem").session(True)
    peer = OpenSSLPeer(real, server=False, tls12_only=True)
    session.feed(peer.take())
    peer.feed(session.take())
    flight = _swap_certificate(peer.take(), real.certificate_der, claimed.certificate_der)
    expected = "TLS handshake failed: the peer's CertificateVerify signature is invalid"
    with pytest.raises(TLSError, match=expected):
        session.feed(flight)
    assert session.peer_tub_id is None
    with pytest.raises(SSL.Error, match="decrypt error"):
        peer.feed(session.take())


def test_a_key_that_does_not_match_the_certificate_is_refused_up_front() -> None:
    ours, other = vector_tub("foolscap_v1.pem"), vector_tub("foolscap_v1_other.pem")
    for server in (False, True):
        with pytest.raises(ValueError, match="does not belong to the certificate"):
            TlsSession(server, ours.certificate_der, other.private_key_der)


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET /id/abc HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x00" * 100,
        bytes(range(256)),
        b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00",  # a ClientHello far too short
        b"\x17\x03\x03\xff\xff" + b"x" * 20,  # an oversized application record before the handshake
    ],
)
@pytest.mark.parametrize("server", [False, True], ids=["client", "server"])
def test_garbage_raises_tls_error(server: bool, garbage: bytes) -> None:
    session = vector_tub("foolscap_v1.pem").session(server)
    session.take()  # a client's ClientHello
    with pytest.raises(TlsError) as caught:
        session.feed(garbage)
    assert isinstance(caught.value, ProtocolError)
    assert str(caught.value).startswith("TLS handshake failed: ")
    assert isinstance(session.take(), bytes)
    with pytest.raises(TlsError):
        session.feed(b"")
    assert "failed" in repr(session)


def test_garbage_after_the_handshake_raises_tls_error_and_leaves_an_alert() -> None:
    client = vector_tub("foolscap_v1.pem").session(False)
    server = vector_tub("foolscap_v1_other.pem").session(True)
    pump(client, server)
    client.write(b"x" * 100)
    record = bytearray(client.take())
    record[-1] ^= 1
    with pytest.raises(TlsError, match="TLS connection failed: "):
        server.feed(bytes(record))
    with pytest.raises(TlsError, match="the peer sent the alert bad_record_mac"):
        client.feed(server.take())


def test_bad_arguments_are_value_errors() -> None:
    tub = vector_tub("foolscap_v1.pem")
    with pytest.raises(ValueError, match="needs a certificate"):
        TlsSession(True, None, None)
    with pytest.raises(ValueError, match="or neither"):
        TlsSession(False, tub.certificate_der, None)
    with pytest.raises(ValueError, match="not a DER X.509 certificate"):
        TlsSession(False, tub.certificate_der[:-1], tub.private_key_der)
    with pytest.raises(ValueError, match="private key"):
        TlsSession(False, tub.certificate_der, b"\x30\x03\x02\x01\x05")
    with pytest.raises(TypeError):
        TlsSession(False, tub.certificate_der, tub.private_key_der).feed("text")  # type: ignore[arg-type]


def test_a_pkcs1_rsa_key_works_too() -> None:
    tub = vector_tub("foolscap_v1.pem")
    key = serialization.load_der_private_key(tub.private_key_der, password=None)
    pkcs1 = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert pkcs1 != tub.private_key_der
    client, server = TlsSession(False, tub.certificate_der, pkcs1), vector_tub("ec_p256.pem").session(True)
    pump(client, server)
    assert server.peer_tub_id == tub.foolscap_tub_id


# The CPU features graviola's AES-GCM needs (its own, then its 512-bit code's), as Linux names them.
WIDE_AES_GCM_FLAGS = {
    "aes", "pclmulqdq", "ssse3", "avx", "avx2", "bmi1", "bmi2", "adx",
    "vaes", "vpclmulqdq", "avx512f", "avx512bw", "avx512vl",
}  # fmt: skip


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="reads the CPU's features from Linux's /proc")
def test_tls_aes_gcm_names_the_implementation_this_cpu_gets() -> None:
    """Records are sealed by graviola's AES-GCM exactly where the CPU has what its 512-bit code
    needs (as the kernel reports the CPU's features), by ring's everywhere else."""
    flags: set[str] = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    wide = platform.machine() in ("x86_64", "AMD64") and WIDE_AES_GCM_FLAGS <= flags
    assert _core.tls_aes_gcm == ("graviola (AVX-512)" if wide else "ring")
