"""The pbfast exception hierarchy.

The Rust core raises these classes too, so ``isinstance`` checks, docs and pickling all live here::

    PbfastError
      ProtocolError
        BananaError          malformed or over-limit banana bytes (.offset, .limit)
      JellyError             malformed jelly, or a value jelly cannot express (.offset)
        InsecureJelly        jelly the receiver's policy refuses
"""

from __future__ import annotations

__all__ = ["PbfastError", "ProtocolError", "BananaError", "JellyError", "InsecureJelly"]


class PbfastError(Exception):
    """Base class of every exception pbfast raises on purpose."""


class ProtocolError(PbfastError):
    """A byte stream broke the wire protocol."""


class BananaError(ProtocolError):
    """Malformed banana bytes, a value banana cannot carry, or a limit exceeded.

    Attributes:
        offset: the byte offset in the stream (or input) where the problem was found, or None
            when the error happened while encoding.
        limit: the name of the decoder limit that was hit (``"max_element_size"``,
            ``"max_message_size"``, ``"max_depth"``, ``"max_header_length"``), or None.
    """

    def __init__(self, message: str, offset: int | None = None, limit: str | None = None) -> None:
        super().__init__(message)
        self.offset = offset
        self.limit = limit

    def __reduce__(self):  # keep offset and limit through pickling
        return (type(self), (str(self), self.offset, self.limit))


class JellyError(PbfastError):
    """A jelly s-expression is malformed, or a value cannot be expressed as jelly.

    Attributes:
        offset: the byte offset of the offending list in the stream, when known.
    """

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset

    def __reduce__(self):
        return (type(self), (str(self), self.offset))


class InsecureJelly(JellyError):
    """The jelly names a type the receiver has not allowed (an unregistered class, a module, a
    function, ...). On a connection this fails the one call it arrived in."""
