"""Type stub for the Rust extension module ``pbfast._core`` (an implementation detail: use
``pbfast``, ``pbfast.banana`` and ``pbfast.serialization``)."""

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, Literal, Self, TypeAlias, final

from typing_extensions import disjoint_base

from pbfast.errors import TLSError

__all__ = [
    "DUE_HANDSHAKE",
    "DUE_IDLE",
    "DUE_NOTHING",
    "DUE_PING",
    "Decoder",
    "EARLY_WRITE",
    "EV_ANSWER",
    "EV_AWAITING",
    "EV_BAD_CALL",
    "EV_BAD_REPLY",
    "EV_CACHEMESSAGE",
    "EV_DECACHE",
    "EV_DECREF",
    "EV_DID_NOT_UNDERSTAND",
    "EV_ERROR",
    "EV_FLUSH",
    "EV_MESSAGE",
    "EV_RAISED",
    "EV_READY",
    "EV_RETURNED",
    "EV_UNCACHE",
    "EV_UNKNOWN",
    "FLUSH_AT",
    "FOOLSCAP_VOCAB",
    "FS_ANSWER",
    "FS_AWAITING",
    "FS_CALL",
    "FS_CALL_ABORTED",
    "FS_DECIDE",
    "FS_ERROR",
    "FS_FLUSH",
    "FS_NEGOTIATED",
    "FS_PEER_ERROR",
    "FS_PING",
    "FS_PONG",
    "FS_RAISED",
    "FS_VIOLATION",
    "FoolscapDecoder",
    "FoolscapEncoder",
    "FoolscapSession",
    "Liveness",
    "Negotiation",
    "PB_VERSION",
    "PB_VOCAB",
    "PREFIX_LIMIT",
    "PbDecoder",
    "PbEncoder",
    "PbSession",
    "SIZE_LIMIT",
    "Session",
    "TlsError",
    "TlsSession",
    "Tokenizer",
    "UnresolvedReference",
    "__version__",
    "banana_decode",
    "banana_encode",
    "base32",
    "build_profile",
    "dumps",
    "encode_tokens",
    "format_furl",
    "loads",
    "metrics_collect",
    "metrics_enable",
    "metrics_enabled",
    "metrics_record",
    "parse_furl",
    "parse_hint",
    "tls_aes_gcm",
    "tub_id",
]

_Buffer = bytes | bytearray | memoryview
_EncodeHook = Callable[[Any], tuple[tuple[Any, ...] | list[Any], bool] | None]
_DecodeHook = Callable[[bytes, list[Any]], Any]

SIZE_LIMIT: Final[int]
PREFIX_LIMIT: Final[int]
PB_VOCAB: Final[tuple[bytes, ...]]
FOOLSCAP_VOCAB: Final[tuple[bytes, ...]]
__version__: Final[str]
build_profile: Final[str]
tls_aes_gcm: Final[str]  # whose AES-GCM protects a Tub's TLS 1.3 records on this CPU

def dumps(obj: Any, /, *, dialect: str = "pb", hook: _EncodeHook | None = None) -> bytes: ...
def loads(
    data: _Buffer,
    /,
    *,
    dialect: str = "pb",
    hook: _DecodeHook | None = None,
    **limits: int,
) -> Any: ...
def banana_encode(value: Any, /, dialect: str = "pb") -> bytes: ...
def banana_decode(data: _Buffer, /, dialect: str = "pb", **limits: int) -> Any: ...
def encode_tokens(tokens: Iterable[tuple[str, Any]], /, dialect: str = "pb") -> bytes: ...

# Call metrics (rust/py/metrics.rs), read through pbfast.metrics.
def metrics_enable(on: bool, max_methods: int | None = None) -> None: ...
def metrics_enabled() -> bool: ...
def metrics_record(
    wire: str, side: str, method: str, outcome: str, seconds: float | None, ran: bool = True
) -> None: ...

# (wire, side, method, outcome, calls, seconds, buckets)
_MetricsSeries: TypeAlias = tuple[str, str, str, str, int, float, list[int]]

def metrics_collect() -> tuple[list[float], list[_MetricsSeries], list[tuple[str, int, int]], int]: ...

@final
class Decoder:
    def __new__(
        cls,
        dialect: str = "pb",
        *,
        jelly: bool = False,
        hook: _DecodeHook | None = None,
        **limits: int,
    ) -> Self: ...
    def feed(self, data: _Buffer) -> list[Any]: ...
    @property
    def buffered(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def dialect(self) -> str: ...
    @dialect.setter
    def dialect(self, name: str) -> None: ...

@final
class Tokenizer:
    def __new__(cls, dialect: str = "pb", **limits: int) -> Self: ...
    def feed(self, data: _Buffer) -> list[tuple[int, str, Any]]: ...
    @property
    def buffered(self) -> int: ...
    @property
    def open_sequences(self) -> list[int]: ...

@final
class UnresolvedReference:
    @property
    def id(self) -> int: ...

# --- Twisted PB broker layer (rust/py/pb.rs, rust/py/pb_session.rs) ---

PB_VERSION: Final[int]
EV_MESSAGE: Final[int]
EV_CACHEMESSAGE: Final[int]
EV_ANSWER: Final[int]
EV_ERROR: Final[int]
EV_BAD_CALL: Final[int]
EV_BAD_REPLY: Final[int]
EV_DECREF: Final[int]
EV_DECACHE: Final[int]
EV_UNCACHE: Final[int]
EV_READY: Final[int]
EV_UNKNOWN: Final[int]
EV_DID_NOT_UNDERSTAND: Final[int]
EV_RAISED: Final[int]
EV_AWAITING: Final[int]
EV_FLUSH: Final[int]
EV_RETURNED: Final[int]

@final
class PbDecoder:
    """A PB stream's commands as events, as a plain codec (a connection's PbSession runs calls)."""

    def __new__(
        cls,
        server: bool,
        *,
        hook: _DecodeHook | None = None,
        extensions: list[str] | None = None,
        **limits: int,
    ) -> Self: ...
    def offer(self) -> bytes: ...
    def feed(self, data: _Buffer) -> list[tuple[Any, ...]]: ...
    @property
    def dialect(self) -> str | None: ...
    @property
    def peer_extensions(self) -> list[str] | None: ...
    @property
    def buffered(self) -> int: ...

@final
class PbEncoder:
    def __new__(cls, dialect: str = "pb", *, hook: _EncodeHook | None = None) -> Self: ...
    def message(
        self,
        request_id: int,
        object_id: int | bytes,
        method: str,
        answer_required: bool,
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None = None,
        *,
        cache: bool = False,
    ) -> bytes: ...
    def answer(self, request_id: int, value: Any) -> bytes: ...
    def error(self, request_id: int, failure: Any) -> bytes: ...
    def command(self, command: bytes, item: Any, count: int = 1) -> bytes: ...
    @property
    def dialect(self) -> str: ...

DUE_NOTHING: Final[int]
DUE_PING: Final[int]  # send a keepalive
DUE_HANDSHAKE: Final[int]  # the handshake timeout has passed
DUE_IDLE: Final[int]  # the idle timeout has passed

@final
class Liveness:
    """When a connection pings its peer or closes on time alone; given the time, never reads it."""

    def __new__(
        cls,
        now: float,
        handshake_timeout: float | None,
        idle_timeout: float | None,
        keepalive: float | None,
    ) -> Self: ...
    def handshake_done(self) -> None: ...
    @property
    def watches_silence(self) -> bool: ...
    def poll(self, now: float, last_received: float) -> tuple[int, float, float | None]: ...
    def next_poll(self, last_received: float) -> float | None: ...

EARLY_WRITE: Final[int]  # messages waiting after which a session writes them at once
FLUSH_AT: Final[int]  # bytes waiting after which a session writes them at once

@disjoint_base
class Session:
    """One connection's session, either wire (rust/py/session.rs): the bytes waiting to be
    written, our calls out, and the tables (our objects, the references the peer holds, our
    calls awaiting replies). Made as a `PbSession` or a `FoolscapSession`."""

    def write(self, data: bytes) -> None: ...
    def take(self) -> bytes | memoryview | None: ...
    holding: bool
    @property
    def buffered(self) -> int: ...
    @property
    def size(self) -> int: ...
    def discard(self) -> None: ...
    def close(self) -> None: ...
    def call(
        self,
        object_id: Any,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        cache: bool = False,
    ) -> asyncio.Future[Any]: ...
    def call_only(
        self, object_id: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None: ...
    def put(self, key: int | bytes, obj: Any) -> None: ...
    def get(self, key: object) -> Any | None: ...
    def pop(self, key: object) -> Any | None: ...
    checks_calls: bool
    def send(self, obj: object) -> tuple[int, bool]: ...
    def export(self, obj: object) -> int: ...
    def decref(self, luid: int, count: int = 1) -> bool: ...
    def luid_of(self, obj: object) -> int | None: ...
    def holds(self, luid: object) -> bool: ...
    @property
    def held(self) -> int: ...
    def settle(self, request_id: int, failed: bool = False) -> Any | None: ...
    def take_pending(self) -> list[Any]: ...
    @property
    def pending(self) -> int: ...
    def cancelled(self, futures: list[Any]) -> list[int]: ...
    def make_futures(
        self, create_future: Callable[..., Any], keywords: dict[str, Any] | None = None
    ) -> None: ...

@final
class PbSession(Session):
    """One Twisted PB connection: bytes in, events out; calls run and answers resolved as they
    are read, replies encoded and queued here (rust/py/pb_session.rs)."""

    def __new__(
        cls,
        server: bool,
        max_refs: int,
        limits: dict[str, int],
        /,
        *,
        wake: Callable[[], None],
        flush: Callable[[], None],
        create_future: Callable[[], Any],
        dead: Callable[[], BaseException],
        forget: Callable[[int, bool], None],
        broker: Any,
        unjelly: _DecodeHook,
        jelly: _EncodeHook,
        is_plain: Callable[[type], bool],
        extensions: list[str] | None = None,
    ) -> Self: ...
    def open(self) -> None: ...
    def feed(self, data: _Buffer) -> list[tuple[Any, ...]]: ...
    def run(
        self,
        request_id: int,
        object_id: int | bytes,
        method: str,
        answer: bool,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> list[tuple[Any, ...]]: ...
    def answer(self, request_id: int, value: Any) -> None: ...
    def error(self, request_id: int, failure: Any) -> None: ...
    def command(self, command: bytes, item: Any, count: int = 1) -> None: ...
    @property
    def dialect(self) -> str | None: ...

# --- foolscap identities (rust/tubid.rs, rust/py/tubid.rs) ---

def tub_id(certificate_der: bytes) -> str: ...
def base32(data: bytes) -> str: ...
def parse_furl(furl: str) -> tuple[str, list[str], str]: ...
def format_furl(tub_id: str, hints: list[str], name: str) -> str: ...
def parse_hint(hint: str) -> tuple[str, str, int] | tuple[str, str]: ...

# --- TLS for foolscap connections (rust/tls.rs, rust/py/tls.rs) ---

TlsError: TypeAlias = TLSError

@final
class TlsSession:
    def __new__(cls, server: bool, certificate: bytes | None, private_key: bytes | None) -> Self: ...
    def feed(self, data: _Buffer) -> bytes: ...
    def write(self, data: _Buffer) -> None: ...
    def take(self) -> bytes: ...
    def close(self) -> None: ...
    @property
    def handshaking(self) -> bool: ...
    @property
    def peer_certificate(self) -> bytes | None: ...
    @property
    def peer_tub_id(self) -> str | None: ...
    @property
    def closed(self) -> bool: ...
    @property
    def protocol_version(self) -> str | None: ...
    @property
    def cipher_suite(self) -> str | None: ...

# --- foolscap negotiation (rust/foolscap/negotiate.rs, rust/py/negotiate.rs) ---

_Step: TypeAlias = Literal["pending", "decide", "negotiated"]

@final
class Negotiation:
    def __new__(
        cls,
        certificate: bytes,
        private_key: bytes,
        incarnation: str,
        extensions: Sequence[str],
        target: str | None = None,
        host: str = "",
        last_connection: tuple[str, int] | None = None,
    ) -> Self: ...
    def receive(self, data: _Buffer) -> _Step: ...
    def decide(self, seqnum: int) -> _Step: ...
    def refuse(self, reason: str) -> None: ...
    def close(self) -> None: ...
    def take(self) -> bytes: ...
    def finish(self) -> tuple[TlsSession, bytes]: ...
    @property
    def phase(self) -> Literal["upgrade", "hello", "deciding", "decision", "done", "failed"]: ...
    @property
    def peer_closed(self) -> bool: ...
    @property
    def peer_tub_id(self) -> str | None: ...
    @property
    def peer_incarnation(self) -> str | None: ...
    @property
    def peer_is_client(self) -> bool | None: ...
    @property
    def peer_last_connection(self) -> tuple[str, int] | None: ...
    @property
    def peer_extensions(self) -> list[str] | None: ...
    @property
    def seqnum(self) -> int | None: ...
    @property
    def master_connection(self) -> tuple[str, int] | None: ...

# --- foolscap PB messages (rust/foolscap/, rust/py/foolscap.rs) ---

# Decoder hook: hook("copyable", typename, state), hook("my-reference", clid, iface, furl),
# hook("your-reference", clid), hook("their-reference", giftid, furl). It returns the value,
# or NotImplemented to refuse (the message becomes an FS_VIOLATION, as does an exception).
_FoolscapDecodeHook = Callable[..., Any]
# Encoder hook: hook(obj) for anything that is not a builtin value. It returns None (a builtin
# subclass then goes as its base type; anything else is a TypeError) or one of
# ("my-reference", clid), ("my-reference", clid, iface | None, furl | None),
# ("your-reference", clid), ("their-reference", giftid, furl),
# ("copyable", typename, state) with state a dict or (name, value) pairs.
_FoolscapEncodeHook = Callable[[Any], tuple[Any, ...] | None]

# (FS_CALL, reqid, clid, method: str, args: tuple, kwargs: dict); from a session, only a call
# held back (run later with FoolscapSession.run)
FS_CALL: Final[int]
FS_ANSWER: Final[int]  # (FS_ANSWER, reqid, value)
FS_ERROR: Final[int]  # (FS_ERROR, reqid, failure)
FS_PING: Final[int]  # (FS_PING, n): answer with a PONG of n
FS_PONG: Final[int]  # (FS_PONG, n)
FS_VIOLATION: Final[int]  # (FS_VIOLATION, what, reqid | None, message): a message discarded
FS_CALL_ABORTED: Final[int]  # (FS_CALL_ABORTED, reqid | None): the peer gave up; no reply is due
FS_PEER_ERROR: Final[int]  # (FS_PEER_ERROR, message: str): the peer hangs up; nothing more is read
# From a session:
# (FS_AWAITING, reqid, awaitable, method): a call ran and returned an awaitable
FS_AWAITING: Final[int]
FS_RAISED: Final[int]  # (FS_RAISED, reqid, exception): a call ran and raised (or its answer did not encode)
FS_FLUSH: Final[int]  # (FS_FLUSH,): (session) write what waits before going on
FS_DECIDE: Final[int]  # (FS_DECIDE,): (session) we are the master: decide on the connection
FS_NEGOTIATED: Final[int]  # (FS_NEGOTIATED,): (session) negotiation is over; banana from here on

@final
class FoolscapDecoder:
    """foolscap messages as events, as a plain codec (a connection's FoolscapSession runs calls)."""

    def __new__(cls, hook: _FoolscapDecodeHook | None = None, **limits: int) -> Self: ...
    def feed(self, data: _Buffer) -> list[tuple[Any, ...]]: ...
    @property
    def buffered(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def next_open_id(self) -> int: ...
    @next_open_id.setter
    def next_open_id(self, value: int) -> None: ...

@final
class FoolscapEncoder:
    def __new__(
        cls, hook: _FoolscapEncodeHook | None = None, *, next_open_id: int = 0, max_depth: int = ...
    ) -> Self: ...
    def call(
        self,
        reqid: int,
        clid: int,
        method: str,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> bytes: ...
    def answer(self, reqid: int, value: Any) -> bytes: ...
    def error(self, reqid: int, state: dict[str, Any] | Iterable[tuple[str, Any]]) -> bytes: ...
    def ping(self, n: int = 0) -> bytes: ...
    def pong(self, n: int = 0) -> bytes: ...
    @property
    def next_open_id(self) -> int: ...
    @next_open_id.setter
    def next_open_id(self, value: int) -> None: ...

@final
class FoolscapSession(Session):
    """One foolscap (Tub) connection: negotiation, then banana inside TLS; bytes in, events
    out; calls run and answers resolved as they are read (rust/py/fs_session.rs)."""

    def __new__(
        cls,
        max_refs: int,
        limits: dict[str, int],
        /,
        *,
        wake: Callable[[], None],
        flush: Callable[[], None],
        create_future: Callable[[], Any],
        dead: Callable[[], BaseException],
        forget: Callable[[int, bool], None],
        broker: Any,
        unslice: _FoolscapDecodeHook,
        slice: _FoolscapEncodeHook,
        is_plain: Callable[[type], bool],
        call_limits: Callable[[type], tuple[str, dict[str, int | None]] | None],
        identity: tuple[bytes, bytes] | None = None,
        incarnation: str = ...,
        extensions: Sequence[str] = ...,
        target: str | None = None,
        host: str = "",
        last_connection: tuple[str, int] | None = None,
    ) -> Self: ...
    def feed(self, data: _Buffer) -> list[tuple[Any, ...]]: ...
    def landing(self, room: int) -> memoryview | None: ...
    def decide(self, seqnum: int) -> list[tuple[Any, ...]]: ...
    def refuse(self, reason: str) -> None: ...
    def run(
        self, reqid: int, clid: int, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> list[tuple[Any, ...]]: ...
    def answer(self, reqid: int, value: Any) -> None: ...
    def error(self, reqid: int, state: dict[str, Any] | Iterable[tuple[str, Any]]) -> None: ...
    def ping(self, n: int = 0) -> None: ...
    def pong(self, n: int) -> None: ...
    def close_notify(self) -> bytes | memoryview | None: ...
    next_open_id: int
    @property
    def phase(
        self,
    ) -> Literal["upgrade", "hello", "deciding", "decision", "done", "failed", "banana", "closed"]: ...
    @property
    def peer_closed(self) -> bool: ...
    @property
    def peer_tub_id(self) -> str | None: ...
    @property
    def peer_incarnation(self) -> str | None: ...
    @property
    def peer_is_client(self) -> bool | None: ...
    @property
    def peer_last_connection(self) -> tuple[str, int] | None: ...
    @property
    def peer_extensions(self) -> list[str] | None: ...
    @property
    def seqnum(self) -> int | None: ...
    @property
    def master_connection(self) -> tuple[str, int] | None: ...
    @property
    def protocol_version(self) -> str | None: ...
    @property
    def cipher_suite(self) -> str | None: ...
