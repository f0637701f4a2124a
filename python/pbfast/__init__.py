"""pbfast: fast, safe Perspective Broker and foolscap RPC for asyncio.

Layers, bottom up: ``pbfast._core`` (Rust: banana, jelly, framing; never imported by users),
``pbfast.errors``, ``pbfast.banana`` (raw tokens), ``pbfast.serialization`` (jelly + banana).
Nothing starts at import time and no event-loop policy is installed.
"""

from . import banana
from .errors import BananaError, InsecureJelly, JellyError, PbfastError, ProtocolError
from .serialization import Unpersistable, dumps, jelly, loads, unjelly

__version__ = "0.1.0"

__all__ = [
    "BananaError",
    "InsecureJelly",
    "JellyError",
    "PbfastError",
    "ProtocolError",
    "Unpersistable",
    "banana",
    "dumps",
    "jelly",
    "loads",
    "unjelly",
]
