"""Type stub for the Rust extension module ``pbfast._core`` (an implementation detail: use
``pbfast``, ``pbfast.banana`` and ``pbfast.serialization``)."""

from collections.abc import Callable, Iterable
from typing import Any, Final

_Buffer = bytes | bytearray | memoryview
_EncodeHook = Callable[[Any], tuple[tuple[Any, ...] | list[Any], bool] | None]
_DecodeHook = Callable[[bytes, list[Any]], Any]

SIZE_LIMIT: Final[int]
PREFIX_LIMIT: Final[int]
PB_VOCAB: Final[tuple[bytes, ...]]
FOOLSCAP_VOCAB: Final[tuple[bytes, ...]]
__version__: Final[str]
build_profile: Final[str]

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

class Decoder:
    def __init__(
        self,
        dialect: str = "pb",
        *,
        jelly: bool = False,
        hook: _DecodeHook | None = None,
        **limits: int,
    ) -> None: ...
    def feed(self, data: _Buffer) -> list[Any]: ...
    @property
    def buffered(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def dialect(self) -> str: ...
    @dialect.setter
    def dialect(self, name: str) -> None: ...

class Tokenizer:
    def __init__(self, dialect: str = "pb", **limits: int) -> None: ...
    def feed(self, data: _Buffer) -> list[tuple[int, str, Any]]: ...
    @property
    def buffered(self) -> int: ...
    @property
    def open_sequences(self) -> list[int]: ...

class UnresolvedReference:
    @property
    def id(self) -> int: ...

# --- Twisted PB broker layer (rust/py/pb.rs, rust/py/refs.rs) ---

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

class PbDecoder:
    def __init__(self, server: bool, *, hook: _DecodeHook | None = None, **limits: int) -> None: ...
    @staticmethod
    def offer() -> bytes: ...
    def attach(
        self,
        objects: dict[Any, Any],
        pending: dict[int, Any],
        encoder: PbEncoder,
        sender: Sender,
        sent: list[int],
        undo: Callable[[int], None],
        is_plain: Callable[[type], bool],
    ) -> None: ...
    fast: bool
    def feed(self, data: _Buffer) -> list[tuple[Any, ...]]: ...
    @property
    def dialect(self) -> str | None: ...
    @property
    def buffered(self) -> int: ...

class PbEncoder:
    def __init__(self, dialect: str = "pb", *, hook: _EncodeHook | None = None) -> None: ...
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

class RefTable:
    def __init__(self, limit: int = 65536) -> None: ...
    def send(self, key: int) -> tuple[int, bool]: ...
    def pin(self, luids: list[int]) -> None: ...
    def unpin(self, luids: list[int]) -> list[int]: ...
    def decref(self, luid: int, count: int = 1) -> bool: ...
    def luid_of(self, key: int) -> int | None: ...
    def count(self, luid: int) -> int: ...
    def __contains__(self, luid: int) -> bool: ...
    def __len__(self) -> int: ...
    @property
    def limit(self) -> int: ...
    def clear(self) -> None: ...

class Sender:
    def __init__(
        self,
        wake: Callable[[], None],
        create_future: Callable[[], Any],
        pending: dict[int, Any],
        refs: RefTable,
        sent: list[int],
        undo: Callable[[int], None],
        dead: Callable[[], BaseException],
    ) -> None: ...
    def start(self, encoder: PbEncoder) -> None: ...
    def write(self, data: bytes) -> int: ...
    def take(self) -> bytes | None: ...
    @property
    def size(self) -> int: ...
    def close(self) -> None: ...
    def call(
        self, object_id: int | bytes, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any: ...
    def call_only(
        self, object_id: int | bytes, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None: ...

# --- foolscap identities (rust/tubid.rs, rust/py/tubid.rs) ---

def tub_id(certificate_der: bytes) -> str: ...
def base32(data: bytes) -> str: ...
def parse_furl(furl: str) -> tuple[str, list[str], str]: ...
def format_furl(tub_id: str, hints: list[str], name: str) -> str: ...
def parse_hint(hint: str) -> tuple[str, str, int] | tuple[str, str]: ...

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

FS_CALL: Final[int]  # (FS_CALL, reqid, clid, method: str, args: tuple, kwargs: dict)
FS_ANSWER: Final[int]  # (FS_ANSWER, reqid, value)
FS_ERROR: Final[int]  # (FS_ERROR, reqid, failure)
FS_PING: Final[int]  # (FS_PING, n): answer with FoolscapEncoder.pong(n)
FS_PONG: Final[int]  # (FS_PONG, n)
FS_VIOLATION: Final[int]  # (FS_VIOLATION, what, reqid | None, message): a message discarded
FS_CALL_ABORTED: Final[int]  # (FS_CALL_ABORTED, reqid | None): the peer gave up; no reply is due
FS_PEER_ERROR: Final[int]  # (FS_PEER_ERROR, message: str): the peer hangs up; nothing more is read

class FoolscapDecoder:
    def __init__(self, hook: _FoolscapDecodeHook | None = None, **limits: int) -> None: ...
    def feed(self, data: _Buffer) -> list[tuple[Any, ...]]: ...
    @property
    def buffered(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def next_open_id(self) -> int: ...
    @next_open_id.setter
    def next_open_id(self, value: int) -> None: ...

class FoolscapEncoder:
    def __init__(
        self, hook: _FoolscapEncodeHook | None = None, *, next_open_id: int = 0, max_depth: int = 500
    ) -> None: ...
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
