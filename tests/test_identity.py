"""Tub identities: made, stored and loaded as stock foolscap does, with foolscap's TubIDs."""

from __future__ import annotations

import os
import warnings

import pytest
from cryptography.hazmat.primitives import serialization
from foolscap import crypto as fs_crypto
from pbfast.furl import tub_id
from pbfast.identity import TubIdentity


@pytest.fixture(scope="module")
def identity() -> TubIdentity:
    return TubIdentity.generate()


def test_a_new_identity_looks_like_foolscaps(identity: TubIdentity) -> None:
    cert = identity.certificate
    assert cert.subject == cert.issuer
    assert cert.subject.rfc4514_string() == "CN=newpb_thingy"
    assert cert.serial_number == 1
    assert identity.private_key.key_size == 2048
    assert len(identity.tubID) == 32


def test_foolscap_loads_ours_and_agrees_on_the_tubid(identity: TubIdentity) -> None:
    theirs = fs_crypto.loadCertificate(identity.to_pem())
    assert fs_crypto.digest32(theirs.digest("sha1")) == identity.tubID


def test_we_load_foolscaps_and_agree_on_the_tubid() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # foolscap's use of old pyOpenSSL APIs
        cert = fs_crypto.createCertificate()
        pem = cert.dumpPEM()
    ours = TubIdentity.from_pem(pem)
    assert ours.tubID == fs_crypto.digest32(cert.digest("sha1"))
    assert TubIdentity.from_pem(ours.to_pem()).tubID == ours.tubID


def test_load_or_create_keeps_the_identity(tmp_path) -> None:
    path = tmp_path / "tub.pem"
    first = TubIdentity.load_or_create(path)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    second = TubIdentity.load_or_create(path)
    assert first.tubID == second.tubID


def test_bad_pem_data_is_refused_clearly(identity: TubIdentity) -> None:
    pem = identity.to_pem()
    cert_only, key_only = (
        pem.split(b"-----BEGIN PRIVATE KEY-----")[0],
        pem[pem.index(b"-----BEGIN PRIVATE KEY") :],
    )
    with pytest.raises(ValueError, match="private key"):
        TubIdentity.from_pem(cert_only)
    with pytest.raises(ValueError, match="certificate"):
        TubIdentity.from_pem(key_only)
    other = TubIdentity.generate()
    with pytest.raises(ValueError, match="does not match"):
        TubIdentity.from_pem(cert_only + other.to_pem()[other.to_pem().index(b"-----BEGIN PRIVATE KEY") :])


def test_der_accessors_give_the_certificate_and_a_pkcs8_key(identity: TubIdentity) -> None:
    assert tub_id(identity.certificate_der) == identity.tubID
    assert identity.certificate_der == identity.certificate.public_bytes(serialization.Encoding.DER)
    key = serialization.load_der_private_key(identity.private_key_der, password=None)
    assert key.private_numbers() == identity.private_key.private_numbers()
    # PKCS#8 names the key's algorithm (rsaEncryption) in its header; PKCS#1 has no OID.
    assert bytes.fromhex("2a864886f70d010101") in identity.private_key_der[:30]
