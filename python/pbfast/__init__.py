"""pbfast: fast, safe Perspective Broker and foolscap RPC for asyncio.

Layers, bottom up: ``pbfast._core`` (Rust: banana, jelly, framing, PB envelopes, reference
counts; never imported by users), ``pbfast.errors``, ``pbfast.banana`` (raw tokens),
``pbfast.serialization`` (jelly + banana), ``pbfast.referenceable`` (objects by reference),
``pbfast.endpoints`` (Twisted-style endpoint strings), ``pbfast.pb`` (serve, connect, run).
Nothing starts at import time and no event-loop policy is installed.
"""

from . import banana, endpoints
from .errors import (
    BananaError,
    DeadReferenceError,
    Error,
    InsecureJelly,
    JellyError,
    NegotiationError,
    NoSuchMethod,
    PBConnectionLost,
    PbfastError,
    ProtocolError,
    RemoteError,
)
from .pb import Server, connect, run, serve
from .referenceable import Referenceable, RemoteReference, Root
from .serialization import Unpersistable, dumps, jelly, loads, unjelly

__version__ = "0.1.0"

__all__ = [
    "BananaError",
    "DeadReferenceError",
    "Error",
    "InsecureJelly",
    "JellyError",
    "NegotiationError",
    "NoSuchMethod",
    "PBConnectionLost",
    "PbfastError",
    "ProtocolError",
    "Referenceable",
    "RemoteError",
    "RemoteReference",
    "Root",
    "Server",
    "Unpersistable",
    "banana",
    "connect",
    "dumps",
    "endpoints",
    "jelly",
    "loads",
    "run",
    "serve",
    "unjelly",
]
