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
