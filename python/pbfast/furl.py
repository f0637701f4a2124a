"""FURLs, foolscap's object addresses: ``pb://TUBID@HINT,HINT/NAME``.

The TubID names the Tub (the hash of its certificate: see `tub_id`), the hints say where to
connect (``tcp:HOST:PORT``, legacy ``HOST:PORT``, IPv6 in brackets, or other types such as
``tor:`` kept for handlers that know them), and the name ("swissnum") is the object's secret.
Parsing and formatting are done in Rust, as foolscap does them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from . import _core
from .errors import BadFURLError

__all__ = ["FURL", "BadFURLError", "new_swissnum", "parse_hint", "tub_id"]


def tub_id(certificate_der: bytes) -> str:
    """The TubID of a certificate: lowercase unpadded base32 of SHA-1 over its DER bytes."""
    return _core.tub_id(certificate_der)


def new_swissnum() -> str:
    """A fresh object name: 160 random bits as 32 base32 characters."""
    return _core.base32(os.urandom(20))


def parse_hint(hint: str) -> tuple[str, str, int] | tuple[str, str]:
    """``("tcp", host, port)`` for a TCP hint (brackets removed from an IPv6 host), or
    ``(type, rest)`` for a hint of another type.

    Raises:
        BadFURLError: the hint is malformed.
    """
    return _core.parse_hint(hint)


@dataclass(frozen=True, slots=True)
class FURL:
    """A parsed FURL; ``str(furl)`` gives it back."""

    tubID: str
    locationHints: tuple[str, ...]
    name: str

    @classmethod
    def parse(cls, furl: str) -> FURL:
        """Parse `furl` as foolscap does (only the TubID's first 32 characters count).

        Raises:
            BadFURLError: the FURL is malformed; the message names the part.
        """
        if not isinstance(furl, str):
            raise BadFURLError(f"a FURL is a str, not {type(furl).__name__}")
        tub, hints, name = _core.parse_furl(furl)
        return cls(tub, tuple(hints), name)

    def __str__(self) -> str:
        return _core.format_furl(self.tubID, list(self.locationHints), self.name)
