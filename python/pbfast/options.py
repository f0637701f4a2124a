"""The keyword options of `pbfast.serve`, `pbfast.connect`, `pbfast.login` and `pbfast.Tub`, as
`TypedDict`s: a type checker knows each name and its type (``serve(root, "tcp:0",
max_refs=10)`` checks; a misspelt option is an error before it runs).

The same connection options have the same names on both wires; see the README's "limits,
timeouts and shutdown" for what each does.
"""

from __future__ import annotations

from typing import TypedDict

__all__ = ["Options", "ReceiveLimits", "TubOptions"]


class ReceiveLimits(TypedDict, total=False):
    """What one incoming message may be: the decoder refuses more, naming the limit."""

    max_element_size: int
    max_message_size: int
    max_depth: int
    max_header_length: int


class _SharedOptions(ReceiveLimits, total=False):
    """The connection options a Tub takes under the same names as PB."""

    unsafeTracebacks: bool
    max_in_flight: int
    backlog: int
    max_refs: int
    max_proxies: int


class Options(_SharedOptions, total=False):
    """The options of `pbfast.serve`, `pbfast.connect` and `pbfast.login`."""

    handshake_timeout: float | None
    idle_timeout: float | None


# foolscap's own spellings (not identifiers, so passed as ``**{"accept-gifts": False}`` or to
# `setOption`); see `pbfast.Tub` for what each does here.
_FoolscapSpellings = TypedDict(
    "_FoolscapSpellings",
    {
        "accept-gifts": bool,
        "expose-remote-exception-types": bool,
        "handle-old-duplicate-connections": bool | int,
        "logport-furlfile": str,
        "log-gatherer-furl": str,
        "log-gatherer-furlfile": str,
        "bridge-twisted-logs": bool,
    },
    total=False,
)


class TubOptions(_SharedOptions, _FoolscapSpellings, total=False):
    """The options of `pbfast.Tub` (also `tub.setOption(name, value)`), foolscap's names for
    the Tub's own settings and for its connections' timeouts."""

    keepaliveTimeout: float | None
    disconnectTimeout: float | None
    negotiationTimeout: float | None
    connectTimeout: float
    logLocalFailures: bool
    logRemoteFailures: bool
    acceptGifts: bool
    reconnectInitialDelay: float
    reconnectFactor: float
    reconnectMaxDelay: float
    reconnectJitter: float
