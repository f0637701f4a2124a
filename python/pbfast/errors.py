"""The pbfast exception hierarchy.

The Rust core raises these classes too, so ``isinstance`` checks, docs and pickling all live here:

    PbfastError
      ProtocolError          the peer broke the wire protocol: the connection ends
        BananaError          malformed or over-limit banana bytes (.offset, .limit)
        NegotiationError     no common dialect, or a different PB version; a refused Tub
                             connection
        TLSError             a TLS handshake or record failed (bad signature, alert, garbage)
      Violation              a foolscap message the receiver could not accept (that call
                             fails, the connection stays)
      JellyError             malformed jelly, or a value jelly cannot express (.offset)
        InsecureJelly        jelly the receiver's policy refuses
      Error                  raise it in a remote method: an expected error, sent without a
                             traceback in the server's log
        UnauthorizedLogin    a login was refused
        LimitExceeded        a connection limit was reached (.limit names it)
      NoSuchMethod           (also AttributeError) the object has no such remote method
      RemoteError            the remote method raised; the caller gets this
      DeadReferenceError     (also ConnectionError) a call on a connection that is gone
      PBConnectionLost       (also ConnectionError) the connection ended while a call waited
      BadFURLError           (also ValueError) a malformed FURL or connection hint
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BadFURLError",
    "BananaError",
    "DeadReferenceError",
    "Error",
    "InsecureJelly",
    "JellyError",
    "LimitExceeded",
    "NegotiationError",
    "NoSuchMethod",
    "PBConnectionLost",
    "PbfastError",
    "ProtocolError",
    "RemoteError",
    "RemoteViolation",
    "TLSError",
    "UnauthorizedLogin",
    "Violation",
]


# pbfast classes that play a Twisted class's part, with that class's Twisted-only ancestors. A
# failure we send names them too (so a Twisted caller's ``trap(pb.Error)`` matches), and
# `RemoteError.check` accepts the Twisted class for ours.
TWISTED_EQUIVALENTS: dict[str, tuple[str, ...]] = {
    "pbfast.errors.Error": ("twisted.spread.pb.Error",),
    "pbfast.errors.NoSuchMethod": ("twisted.spread.flavors.NoSuchMethod",),
    "pbfast.errors.UnauthorizedLogin": (
        "twisted.cred.error.UnauthorizedLogin",
        "twisted.cred.error.LoginFailed",
        "twisted.cred.error.Unauthorized",
    ),
    "pbfast.errors.InsecureJelly": ("twisted.spread.jelly.InsecureJelly",),
    "pbfast.errors.Violation": ("foolscap.tokens.Violation",),
}


def qualified_name(cls: type) -> str:
    """Twisted's name for a class: ``module.Name`` (``reflect.qual``: ``__name__``, not
    ``__qualname__``). It lives here, in the module every other one imports, so failures, copy
    type tags and `RemoteError.check` all name classes alike."""
    return f"{cls.__module__}.{cls.__name__}"


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

    def __reduce__(self) -> tuple[Any, ...]:  # keep offset and limit through pickling
        return (type(self), (str(self), self.offset, self.limit))


class JellyError(PbfastError):
    """A jelly s-expression is malformed, or a value cannot be expressed as jelly.

    Attributes:
        offset: the byte offset of the offending list in the stream, when known.
    """

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.offset))


class InsecureJelly(JellyError):
    """The jelly names a type the receiver has not allowed (an unregistered class, a module, a
    function, ...). On a connection this fails the one call it arrived in."""


class NegotiationError(ProtocolError):
    """The peers share no dialect, or speak different PB protocol versions."""


class Violation(PbfastError):
    """A foolscap message the receiver refused (an unregistered copyable type, an unknown
    object, a malformed sequence): only that call fails. Remote callers see foolscap's
    ``Violation``."""


class TLSError(ProtocolError):
    """The TLS layer of a foolscap connection failed: a malformed record, an alert from the peer,
    or a handshake signature that the peer's certificate does not vouch for (also: writing to a
    session after closing it). The message says which. The connection cannot go on; any alert
    for the peer is still to be sent.

    ``pbfast._core.TlsError`` is this class.
    """


class Error(PbfastError):
    """An error a remote method raises on purpose.

    The caller gets it as a `RemoteError`; the server does not log a traceback for it, as it
    does for any other exception escaping a remote method.
    """


class LimitExceeded(Error):
    """A connection limit was reached (see the limits in the README): the call that would have
    gone past it fails with this, or the connection closes for it.

    Attributes:
        limit: the limit's option name (``"max_refs"``, ``"memory_budget"``, ...).
    """

    def __init__(self, message: str, limit: str | None = None) -> None:
        super().__init__(message)
        self.limit = limit

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.limit))


class NoSuchMethod(PbfastError, AttributeError):
    """The remote object has no method of that name (``remote_<name>``)."""


class RemoteError(PbfastError):
    """The remote method raised (or the peer replied with an error).

    Attributes:
        remoteType: the qualified class name of the remote exception, e.g.
            ``"builtins.ValueError"`` (a str; Twisted sends it as bytes).
        remoteValue: ``str()`` of the remote exception (or the raw value of a non-failure error).
        remoteTraceback: the remote traceback text; ``"Traceback unavailable\n"`` unless the
            remote side was started with ``unsafeTracebacks=True``.
        parents: the qualified names of the remote exception's classes, most derived first.
    """

    def __init__(
        self,
        remoteType: str,
        remoteValue: object,
        remoteTraceback: str = "Traceback unavailable\n",
        parents: tuple[str, ...] = (),
    ) -> None:
        super().__init__(remoteType, remoteValue, remoteTraceback)
        self.remoteType = remoteType
        self.remoteValue = remoteValue
        self.remoteTraceback = remoteTraceback
        self.parents: tuple[str, ...] = tuple(parents) or (remoteType,)

    def check(self, *kinds: type | str) -> type | str | None:
        """The first of `kinds` (classes or qualified names) the remote exception was an
        instance of, by name, or None; like Twisted's ``Failure.check``."""
        for kind in kinds:
            name = kind if isinstance(kind, str) else qualified_name(kind)
            if name in self.parents or TWISTED_EQUIVALENTS.get(name, (name,))[0] in self.parents:
                return kind
        return None

    def __str__(self) -> str:
        return f"{self.remoteType}: {self.remoteValue}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.remoteType, self.remoteValue, self.remoteTraceback, self.parents))


class RemoteViolation(RemoteError, Violation):
    """The peer refused the call as a Violation (its schema, or a message it could not accept:
    pbfast's or foolscap's own): a `RemoteError` that is also caught as `Violation`, like the
    violation a caller's own check raises."""


class DeadReferenceError(PbfastError, ConnectionError):
    """A call on a reference whose connection is already gone."""


class PBConnectionLost(PbfastError, ConnectionError):
    """The connection ended while the call waited for its reply."""


class UnauthorizedLogin(Error):
    """A login was refused: unknown user, wrong password, or no checker for the credentials.
    (An `Error`: the server does not log a traceback for it.)"""


class BadFURLError(PbfastError, ValueError):
    """A FURL (``pb://TUBID@HINTS/NAME``) or connection hint is malformed; the message says
    which part."""
