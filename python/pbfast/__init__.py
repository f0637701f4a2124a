"""pbfast: fast, safe Perspective Broker and foolscap RPC for asyncio.

Layers, bottom up: ``pbfast._core`` (Rust: banana, jelly, framing, PB envelopes, reference
counts, TubIDs and FURLs; never imported by users), ``pbfast.errors``, ``pbfast.banana`` (raw
tokens), ``pbfast.serialization`` (jelly + banana), ``pbfast.referenceable`` (objects by
reference), ``pbfast.copyable`` and ``pbfast.cacheable`` (objects by copy), ``pbfast.schema``
(remote interfaces and the constraints they check), ``pbfast.metrics`` (call metrics, for
Prometheus), ``pbfast.util`` (paging large values, as Twisted's ``twisted.spread.util``),
``pbfast.streams`` (streams between pbfast peers, with flow control), ``pbfast.cred`` (logins),
``pbfast.furl`` (foolscap TubIDs
and FURLs), ``pbfast.endpoints`` (Twisted-style endpoint strings), ``pbfast._connection`` (what
every connection of either wire shares: back-pressure, limits, timeouts, shutdown;
`configure`), ``pbfast._calls`` (cancellation and deadlines between pbfast peers: `deadline`,
`current_deadline`), ``pbfast.pb`` (serve, connect, login, run) and ``pbfast.tub`` (Tubs).
Nothing starts at import time and no event-loop policy is installed.
"""

from . import _core, banana, endpoints, metrics, schema, streams, util
from ._calls import current_deadline, deadline
from ._connection import configure
from .cacheable import Cacheable, RemoteCache, RemoteCacheObserver
from .copyable import (
    Copyable,
    RemoteCopy,
    setUnjellyableFactoryForClass,
    setUnjellyableForClass,
    setUnjellyableForClassTree,
)
from .cred import AllowAnonymousAccess, Anonymous, InMemoryUsernamePasswordDatabase, Portal, UsernamePassword
from .errors import (
    BadFURLError,
    BananaError,
    DeadReferenceError,
    Error,
    InsecureJelly,
    JellyError,
    LimitExceeded,
    NegotiationError,
    NoSuchMethod,
    PBConnectionLost,
    PbfastError,
    ProtocolError,
    RemoteError,
    TLSError,
    UnauthorizedLogin,
    Violation,
)
from .pb import Server, connect, login, run, serve
from .referenceable import Avatar, Referenceable, RemoteReference, Root, Viewable, ViewPoint
from .schema import RemoteInterface
from .serialization import Unpersistable, dumps, jelly, loads, unjelly
from .streams import RemoteStream, Stream, stream
from .tub import Reconnector, Tub, TubReference

__version__: str = _core.__version__
"""The version, from Cargo.toml (one source: the extension is built with it and maturin writes it
into the package metadata)."""
build_profile: str = _core.build_profile
"""How the native extension was compiled: ``"release"``, or ``"debug"`` (far slower: benchmarks
and load tests say so when they run on it)."""

__all__ = [
    "build_profile",
    "AllowAnonymousAccess",
    "Anonymous",
    "Avatar",
    "BadFURLError",
    "BananaError",
    "Cacheable",
    "Copyable",
    "DeadReferenceError",
    "Error",
    "InMemoryUsernamePasswordDatabase",
    "InsecureJelly",
    "JellyError",
    "LimitExceeded",
    "NegotiationError",
    "NoSuchMethod",
    "PBConnectionLost",
    "PbfastError",
    "Portal",
    "ProtocolError",
    "Referenceable",
    "RemoteInterface",
    "RemoteCache",
    "RemoteCacheObserver",
    "RemoteCopy",
    "RemoteError",
    "RemoteReference",
    "RemoteStream",
    "Root",
    "Server",
    "TLSError",
    "UnauthorizedLogin",
    "Violation",
    "Tub",
    "Reconnector",
    "TubReference",
    "Unpersistable",
    "UsernamePassword",
    "ViewPoint",
    "Viewable",
    "banana",
    "configure",
    "connect",
    "current_deadline",
    "deadline",
    "dumps",
    "endpoints",
    "jelly",
    "loads",
    "login",
    "metrics",
    "run",
    "schema",
    "serve",
    "setUnjellyableFactoryForClass",
    "setUnjellyableForClass",
    "setUnjellyableForClassTree",
    "stream",
    "Stream",
    "streams",
    "unjelly",
    "util",
]
