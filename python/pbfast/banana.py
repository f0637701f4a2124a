"""Raw banana: the token encoding under Twisted PB (``pb`` and ``none`` dialects) and foolscap.

Values at this level are nested lists (tuples encode as lists) of ``bytes``, ``int`` and
``float``. In the ``pb`` dialect a byte string equal to one of the 31 PB vocabulary words goes out
as a one-byte VOCAB reference; decoding gives the word back, so the vocabulary is invisible here.
"""

from __future__ import annotations

from typing import Any

from . import _core

__all__ = [
    "encode",
    "decode",
    "Decoder",
    "Tokenizer",
    "encode_tokens",
    "SIZE_LIMIT",
    "PREFIX_LIMIT",
    "PB_VOCAB",
    "FOOLSCAP_VOCAB",
]

SIZE_LIMIT: int = _core.SIZE_LIMIT
"""The longest list or byte string Twisted sends or accepts (640 KiB)."""
PREFIX_LIMIT: int = _core.PREFIX_LIMIT
"""The longest header in bytes (so integers stay below 2**448)."""
PB_VOCAB: tuple[bytes, ...] = _core.PB_VOCAB
"""Twisted's ``pb`` vocabulary; index 0 is unused."""
FOOLSCAP_VOCAB: tuple[bytes, ...] = _core.FOOLSCAP_VOCAB
"""foolscap's vocabulary table 1."""

Decoder = _core.Decoder
"""Incremental decoder: ``Decoder(dialect="pb", *, jelly=False, **limits).feed(chunk)`` returns
the list of values completed by ``chunk`` (unjellied ones with ``jelly=True``)."""
Tokenizer = _core.Tokenizer
"""Incremental token stream for any dialect: ``Tokenizer("foolscap").feed(chunk)`` returns
``(offset, kind, value)`` tuples."""


def encode(value: Any, dialect: str = "pb") -> bytes:
    """Encode a raw banana value (lists/tuples of bytes, ints and floats).

    Raises:
        BananaError: a value of another type, an int beyond ±(2**448 - 1), or a list or byte
            string longer than SIZE_LIMIT.
    """
    return _core.banana_encode(value, dialect)


def decode(data: bytes | bytearray | memoryview, dialect: str = "pb", **limits: int) -> Any:
    """Decode exactly one banana expression.

    Raises:
        BananaError: malformed, truncated or over-limit input, or bytes after the expression.
    """
    return _core.banana_decode(data, dialect, **limits)


def encode_tokens(tokens: Any, dialect: str = "pb") -> bytes:
    """Encode ``(kind, value)`` token pairs as `Tokenizer` produces them (without offsets)."""
    return _core.encode_tokens(tokens, dialect)
