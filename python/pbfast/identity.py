"""A Tub's identity: its certificate and private key, and the TubID they give.

Made with `cryptography` as foolscap makes them (RSA 2048, SHA-256, self-signed,
``CN=newpb_thingy``, serial 1) and stored as foolscap stores them: one PEM text holding the
``CERTIFICATE`` block and then the ``PRIVATE KEY`` (PKCS#8) block, so a pbfast Tub and a stock
foolscap Tub can use each other's files. The TubID is computed in Rust (`pbfast.furl.tub_id`).

`cryptography` is imported when an identity is first made or loaded, not with `pbfast`: a program
that only speaks PB never pays for it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .furl import tub_id

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

__all__ = ["TubIdentity"]


class TubIdentity:
    """A certificate and its private key. ``tubID`` is the hash of the certificate."""

    __slots__ = ("certificate", "private_key", "tubID")

    def __init__(self, certificate: x509.Certificate, private_key: PrivateKeyTypes) -> None:
        self.certificate: x509.Certificate = certificate
        self.private_key: PrivateKeyTypes = private_key
        self.tubID: str = tub_id(self.certificate_der)

    @classmethod
    def generate(cls) -> TubIdentity:
        """A new self-signed identity, as foolscap makes them."""
        from ._certificates import tub_certificate

        return cls(*tub_certificate())

    @classmethod
    def from_pem(cls, data: str | bytes) -> TubIdentity:
        """Load foolscap's PEM layout: a certificate and its private key, in either order.

        Raises:
            ValueError: the text lacks one of the two, or they do not belong together.
        """
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        raw = data.encode("ascii") if isinstance(data, str) else data
        try:
            certificate = x509.load_pem_x509_certificate(raw)
        except ValueError as e:
            raise ValueError(f"no certificate in the Tub's PEM data: {e}") from None
        try:
            key = serialization.load_pem_private_key(raw, password=None)
        except (ValueError, TypeError) as e:
            raise ValueError(f"no unencrypted private key in the Tub's PEM data: {e}") from None
        public = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        if key.public_key().public_bytes(der, public) != certificate.public_key().public_bytes(der, public):
            raise ValueError("the private key in the Tub's PEM data does not match its certificate")
        return cls(certificate, key)

    @classmethod
    def load_or_create(cls, certFile: str | os.PathLike[str]) -> TubIdentity:
        """The identity stored in `certFile`; if the file does not exist, a new one, written
        there (readable by its owner only) so the Tub keeps its TubID across restarts."""
        path = Path(certFile)
        try:
            return cls.from_pem(path.read_bytes())
        except FileNotFoundError:
            pass
        identity = cls.generate()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(identity.to_pem())
        return identity

    @property
    def certificate_der(self) -> bytes:
        """The certificate in DER, the bytes the TubID hashes and TLS sends."""
        from cryptography.hazmat.primitives import serialization

        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def private_key_der(self) -> bytes:
        """The private key as unencrypted PKCS#8 DER, as `pbfast._core.TlsSession` takes it."""
        from cryptography.hazmat.primitives import serialization

        return self.private_key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def to_pem(self) -> bytes:
        """The certificate, then the private key (PKCS#8), as foolscap stores them."""
        from cryptography.hazmat.primitives import serialization

        certificate = self.certificate.public_bytes(serialization.Encoding.PEM)
        key = self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return certificate + key

    def __repr__(self) -> str:
        return f"<TubIdentity {self.tubID}>"
