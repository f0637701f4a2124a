"""Every certificate pbfast makes, in one place: a Tub's identity (as foolscap makes them) and
a self-signed TLS server certificate for ``ssl:``/``tls:`` endpoints in tests and private setups.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["tls_certificate", "tub_certificate"]

# The subject foolscap gives every Tub certificate.
TUB_COMMON_NAME = "newpb_thingy"


def tub_certificate() -> tuple[x509.Certificate, Any]:
    """A new Tub identity as foolscap makes one: RSA 2048, SHA-256, self-signed,
    ``CN=newpb_thingy``, serial 1, valid for a year. ``(certificate, private_key)``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.UTC)
    return _self_signed(key, TUB_COMMON_NAME, serial=1, not_before=now), key


def tls_certificate(hostname: str = "localhost") -> tuple[bytes, bytes]:
    """A self-signed EC P-256 server certificate for `hostname`, valid for one year (see
    `pbfast.endpoints.self_signed_certificate`). ``(cert_pem, key_pem)``."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(hostname)))
    except ValueError:
        names.append(x509.DNSName(hostname))
    if hostname == "localhost":
        names += [
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    extensions: list[tuple[x509.ExtensionType, bool]] = [
        (x509.SubjectAlternativeName(names), False),
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (usage, True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), False),
        (ski, False),
        (x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False),
    ]
    # Valid from a little before now, to tolerate small clock skew.
    not_before = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    cert = _self_signed(
        key, hostname, serial=x509.random_serial_number(), not_before=not_before, extensions=extensions
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert_pem, key_pem


def _self_signed(
    key: Any,
    common_name: str,
    *,
    serial: int,
    not_before: datetime.datetime,
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> x509.Certificate:
    """A certificate for `key` signed by itself (SHA-256), valid for a year from `not_before`."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_before + datetime.timedelta(days=365))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(key, hashes.SHA256())
