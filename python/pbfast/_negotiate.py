"""foolscap's connection negotiation, without I/O: the plaintext upgrade request and reply, the
header blocks exchanged inside TLS (hello, decision, error), and the rules each side applies.

The phases, as foolscap runs them: the client sends ``GET /id/<tubid>``; the server answers
``101 Switching Protocols`` and both start TLS; each sends a hello block; the side with the
greater TubID (the master) sends a decision block, and banana starts. Each phase's header ends
with an empty line and may be at most `HEADER_LIMIT` bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from . import _core
from .errors import NegotiationError

__all__ = [
    "BANANA_VERSION",
    "HEADER_LIMIT",
    "HeaderReader",
    "Hello",
    "accept_decision",
    "decide",
    "decode_block",
    "encode_block",
    "error_block",
    "check_upgrade_reply",
    "is_master",
    "parse_request",
    "refusal",
    "upgrade_request",
    "vocab_hash4",
]

HEADER_LIMIT = 4096
BANANA_VERSION = 3
# The vocabulary tables foolscap knows: 0 (empty) and 1.
VOCAB_TABLES = {0: (), 1: _core.FOOLSCAP_VOCAB}

UPGRADE_REPLY = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: TLS/1.0, PB/1.0\r\nConnection: Upgrade\r\n\r\n"


class HeaderReader:
    """Gathers one phase's header: bytes up to the first empty line."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> tuple[bytes, bytes] | None:
        """The header (without its final empty line) and the bytes after it, once complete.

        Raises:
            NegotiationError: the header is longer than `HEADER_LIMIT` bytes.
        """
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end == -1:
            if len(self._buffer) > HEADER_LIMIT:
                raise NegotiationError(f"negotiation header longer than {HEADER_LIMIT} bytes")
            return None
        if end > HEADER_LIMIT:
            raise NegotiationError(f"negotiation header longer than {HEADER_LIMIT} bytes")
        header, rest = self._buffer[:end], self._buffer[end + 4 :]
        self._buffer = b""
        return header, rest


def upgrade_request(target_tub_id: str, host: str) -> bytes:
    """The client's first bytes, asking for the Tub `target_tub_id` at `host`."""
    return (
        f"GET /id/{target_tub_id} HTTP/1.1\r\nHost: {host}\r\nUpgrade: TLS/1.0\r\nConnection: Upgrade\r\n\r\n"
    ).encode("ascii")


def parse_request(header: bytes) -> str:
    """The TubID a client's upgrade request asks for.

    Raises:
        NegotiationError: not a foolscap request, or one asking for no TubID (the message is
            what `refusal` should tell the client).
    """
    first = header.split(b"\r\n", 1)[0]
    words = first.split()
    if not first.startswith(b"GET ") or len(words) != 3 or not words[1].startswith(b"/id/"):
        raise NegotiationError("internal server error, see logs")
    tub_id = words[1][4:].decode("ascii", "replace")
    if not tub_id:
        raise NegotiationError("secure Tubs require encryption")
    return tub_id


def refusal(reason: str) -> bytes:
    """The server's plaintext refusal (the connection is closed after it)."""
    return f"HTTP/1.1 500 Internal Server Error: {_one_line(reason)}\r\n\r\n".encode("utf-8", "replace")


def check_upgrade_reply(header: bytes) -> None:
    """Accept the server's ``101`` reply.

    Raises:
        NegotiationError: a refusal (with the server's reason) or anything else.
    """
    first = header.split(b"\r\n", 1)[0]
    words = first.split()
    if len(words) < 2 or words[1] != b"101":
        text = first.decode("utf-8", "replace")
        reason = text.split(": ", 1)[1] if text.startswith("HTTP/1.1 500") and ": " in text else text
        raise NegotiationError(f"the server refused the connection: {reason}")
    if b"Upgrade: TLS/1.0" not in header:
        raise NegotiationError("the server's reply does not upgrade to TLS")


def encode_block(block: dict[str, object]) -> bytes:
    """``key: value`` lines in sorted key order, then an empty line."""
    lines = [f"{key.lower()}: {_one_line(str(block[key]))}\r\n" for key in sorted(block)]
    return ("".join(lines) + "\r\n").encode("utf-8")


def decode_block(header: bytes) -> dict[str, str]:
    """Parse a block (without its final empty line).

    Raises:
        NegotiationError: a line without a colon; or the block is the peer's error block.
    """
    block: dict[str, str] = {}
    for line in header.split(b"\r\n"):
        key, colon, value = line.partition(b":")
        if not colon:
            raise NegotiationError(f"malformed negotiation line {line[:80]!r}")
        block[key.decode("utf-8", "replace").lower()] = value.lstrip().decode("utf-8", "replace")
    if "error" in block:
        raise NegotiationError(f"remote negotiation error: {block['error']}")
    return block


def error_block(reason: str) -> bytes:
    """What a side writes inside TLS when negotiation fails, before closing."""
    return encode_block({"banana-decision-version": 1, "error": reason})


@dataclass(frozen=True, slots=True)
class Hello:
    """A hello block's contents."""

    tub_id: str
    incarnation: str
    versions: tuple[int, int] = (BANANA_VERSION, BANANA_VERSION)
    vocab_tables: tuple[int, int] = (0, 1)
    # Client only: (master incarnation, seqnum) of our last connection to that Tub, or None.
    last_connection: tuple[str, int] | None = None
    client: bool = False

    def block(self) -> dict[str, object]:
        block: dict[str, object] = {
            "banana-negotiation-range": f"{self.versions[0]} {self.versions[1]}",
            "initial-vocab-table-range": f"{self.vocab_tables[0]} {self.vocab_tables[1]}",
            "my-incarnation": self.incarnation,
            "my-tub-id": self.tub_id,
        }
        if self.client:
            last = self.last_connection
            block["last-connection"] = f"{last[0]} {last[1]}" if last else "none 0"
        return block

    @classmethod
    def parse(cls, block: dict[str, str]) -> Hello:
        """Read a peer's hello.

        Raises:
            NegotiationError: a required key is missing or malformed.
        """
        try:
            versions = _pair(block["banana-negotiation-range"])
            tables = _pair(block.get("initial-vocab-table-range", "0 0"))
            tub_id = block["my-tub-id"]
        except KeyError as e:
            raise NegotiationError(f"the peer's hello has no {e.args[0]}") from None
        last = block.get("last-connection")
        last_connection = None
        if last is not None and not last.startswith("none"):
            incarnation, _, seqnum = last.partition(" ")
            last_connection = (incarnation, _int(seqnum, "last-connection"))
        return cls(
            tub_id=tub_id,
            incarnation=block.get("my-incarnation", ""),
            versions=versions,
            vocab_tables=tables,
            last_connection=last_connection,
            client="last-connection" in block,
        )


def is_master(my_tub_id: str, their_tub_id: str) -> bool:
    """Whether this side decides: the greater TubID does, whoever dialled."""
    return my_tub_id > their_tub_id


def vocab_hash4(index: int) -> str:
    """The first 4 hex characters of SHA-1 over a vocab table's words joined with NUL bytes."""
    return hashlib.sha1(b"\0".join(VOCAB_TABLES[index])).hexdigest()[:4]


def decide(mine: Hello, theirs: Hello, seqnum: int) -> tuple[dict[str, object], int]:
    """The master's decision block for `theirs`, and the vocab table both will use.

    Raises:
        NegotiationError: no banana version or vocab table in common.
    """
    low, high = max(mine.versions[0], theirs.versions[0]), min(mine.versions[1], theirs.versions[1])
    if low > high or high != BANANA_VERSION:
        raise NegotiationError(f"no banana version in common: ours {mine.versions}, theirs {theirs.versions}")
    table = min(mine.vocab_tables[1], theirs.vocab_tables[1])
    if table < max(mine.vocab_tables[0], theirs.vocab_tables[0]):
        raise NegotiationError("no vocabulary table in common")
    block = {
        "banana-decision-version": high,
        "initial-vocab-table-index": f"{table} {vocab_hash4(table)}",
        "current-connection": f"{mine.incarnation} {seqnum}",
    }
    return block, table


def accept_decision(block: dict[str, str]) -> int:
    """The non-master's check of the master's decision; the vocab table to use.

    Raises:
        NegotiationError: an unknown version or vocabulary table, or a table whose hash differs.
    """
    if block.get("banana-decision-version") != str(BANANA_VERSION):
        raise NegotiationError(f"the peer decided on banana version {block.get('banana-decision-version')!r}")
    index_text, _, hash4 = block.get("initial-vocab-table-index", "").partition(" ")
    index = _int(index_text, "initial-vocab-table-index")
    if index not in VOCAB_TABLES:
        raise NegotiationError(f"the peer chose unknown vocabulary table {index}")
    if index > 0 and hash4 != vocab_hash4(index):
        raise NegotiationError(f"the peer's vocabulary table {index} differs from ours (hash {hash4})")
    return index


def _pair(text: str) -> tuple[int, int]:
    low, _, high = text.partition(" ")
    return _int(low, text), _int(high, text)


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise NegotiationError(f"malformed negotiation value {what!r}") from None


def _one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")
