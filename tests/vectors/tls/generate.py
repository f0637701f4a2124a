#!/usr/bin/env python3
"""Write the TLS identities in this directory (certificate + PKCS#8 key, one PEM file each).

Usage (from the repository root)::

    python tests/vectors/tls/generate.py

The two ``foolscap_v1*`` identities come from stock foolscap's own
``foolscap.crypto.createCertificate()`` (X.509 version 1, RSA 2048, sha256WithRSA, no
extensions) and are written with ``dumpPEM()``, exactly as a Tub stores its ``certFile``. The
EC P-256 and Ed25519 ones are X.509 v3 certificates made with ``cryptography``, the kinds of key
foolscap also accepts from a peer. ``identities.json`` records each file's TubID as foolscap
computes it (``digest32`` of the certificate's SHA-1).

Keys are random, so every run gives new files: commit them together.
"""

import datetime
import json
from pathlib import Path

import foolscap
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from foolscap.crypto import createCertificate, digest32, loadCertificate

HERE = Path(__file__).resolve().parent


def v3_identity(key) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "newpb_thingy")])
    now = datetime.datetime.now(datetime.UTC)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=365))
        .sign(key, algorithm)
    )
    pkcs8 = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return certificate.public_bytes(serialization.Encoding.PEM) + pkcs8


def main() -> None:
    identities = {
        "foolscap_v1.pem": createCertificate().dumpPEM(),
        "foolscap_v1_other.pem": createCertificate().dumpPEM(),
        "ec_p256.pem": v3_identity(ec.generate_private_key(ec.SECP256R1())),
        "ed25519.pem": v3_identity(ed25519.Ed25519PrivateKey.generate()),
    }
    records = []
    for file, pem in identities.items():
        (HERE / file).write_bytes(pem)
        certificate = x509.load_pem_x509_certificate(pem)
        records.append(
            {
                "file": file,
                "tub_id": digest32(loadCertificate(pem).digest("sha1")),
                "x509_version": certificate.version.value + 1,
                "der_length": len(certificate.public_bytes(serialization.Encoding.DER)),
            }
        )
    document = {"generator": "tests/vectors/tls/generate.py", "foolscap_version": foolscap.__version__}
    document["identities"] = records
    (HERE / "identities.json").write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
