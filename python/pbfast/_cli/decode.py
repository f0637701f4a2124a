"""``pbfast decode [--dialect pb|none|foolscap] FILE|-``: pretty-print a captured banana byte stream."""

from __future__ import annotations

import argparse
import io
import os
import re
import sys
from collections.abc import Iterator
from typing import Any

from ..banana import Tokenizer
from ..errors import BananaError
from .common import CommandError, describe

__all__ = ["add_parser", "run"]

#: Byte strings longer than this are cut, with their length shown.
MAX_SHOWN = 64
#: Indentation stops growing here (a stream can nest lists very deeply); deeper lines say their depth.
MAX_INDENT = 40

# A type name worth showing on its LIST or OPEN line: a jelly type, a class name, a foolscap type.
_TYPE_NAME = re.compile(rb"[A-Za-z_][A-Za-z0-9_.:-]{0,63}")

_EPILOG = """\
output: one line per token, its byte offset in the stream (decimal) first, indented by
nesting depth. pbfast.dumps({'a': [1, 2.5]}) decodes as:

   0  LIST 2 (dictionary)       a list of 2 elements, named by its first element
   2    VOCAB 5 b'dictionary'   a vocabulary index and the word it stands for
   4    LIST 2
   6      LIST 2 (unicode)
   8        STRING b'unicode'   a byte string (longer ones are cut after 64 bytes)
  17        STRING b'a'
  20      LIST 3 (list)
  22        VOCAB 8 b'list'
  24        INT 1               integers are INT, NEG, LONGINT or LONGNEG
  26        FLOAT 2.5

In the foolscap dialect a sequence is OPEN <open-id> (<type>) ... CLOSE <open-id>; ABORT,
ERROR, PING and PONG are shown as they come. Decoding stops at the first bad byte, which is
reported on stderr with exit code 1, as is a stream that ends inside a token or a list.
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "decode",
        help="pretty-print a captured banana byte stream",
        description="Print the banana tokens of a captured byte stream (one direction of a PB "
        "connection, or of a Tub connection after TLS and its negotiation), nested, with their offsets.",
        epilog=_EPILOG,
        formatter_class=_Formatter,
    )
    parser.add_argument("file", metavar="FILE", help="the captured bytes, or - to read standard input")
    parser.add_argument(
        "--dialect",
        choices=("pb", "none", "foolscap"),
        default="pb",
        help="pb: Twisted PB (the default); none: Twisted PB without its vocabulary; "
        "foolscap: a Tub connection",
    )
    parser.set_defaults(run=run)


class _Formatter(argparse.HelpFormatter):
    """Wraps the description as usual but keeps the epilog's layout."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text is _EPILOG:
            return text
        return super()._fill_text(text, width, indent)


def run(args: argparse.Namespace) -> int:
    data = _read(args.file)
    tokenizer = Tokenizer(args.dialect)
    error: BananaError | None = None
    try:
        tokens = tokenizer.feed(data)
    except BananaError as e:
        # A failed feed returns nothing: tokenize again up to the bad byte to show what came before.
        error = e
        tokenizer = Tokenizer(args.dialect)
        tokens = tokenizer.feed(data[: e.offset])
    printer = _Printer(args.dialect, offset_width=len(str(len(data))))
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")  # so "…" cannot fail where stdout is not UTF-8
    try:
        batch: list[str] = []
        for line in printer.lines(tokens):
            batch.append(line)
            if len(batch) == 1024:  # one write per line would cost more than the decoding
                sys.stdout.write("".join(batch))
                batch.clear()
        sys.stdout.write("".join(batch))
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (| head): stop quietly, and keep Python's exit flush from complaining.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if error is not None:
        message = re.sub(r" at byte \d+$", "", str(error))
        raise CommandError(f"byte {error.offset}: {message}")
    unfinished = printer.unfinished(len(data) - tokenizer.buffered if tokenizer.buffered else None)
    if unfinished:
        raise CommandError(f"the stream ends at byte {len(data)}, {unfinished}")
    return 0


def _read(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        with open(name, "rb") as f:
            return f.read()
    except OSError as e:
        raise CommandError(f"cannot read {name}: {describe(e)}") from None


class _Printer:
    """Turns tokens into indented lines, keeping track of the lists or sequences still open."""

    def __init__(self, dialect: str, offset_width: int) -> None:
        self.foolscap = dialect == "foolscap"
        self.width = offset_width
        # pb: elements still due in each open list; foolscap: (open-id, type) of each open sequence.
        self.remaining: list[int] = []
        self.sequences: list[tuple[int, str]] = []

    def lines(self, tokens: list[tuple[int, str, Any]]) -> Iterator[str]:
        for i, (offset, kind, value) in enumerate(tokens):
            following = tokens[i + 1] if i + 1 < len(tokens) else None
            if self.foolscap:
                depth, text = self._foolscap(kind, value, following)
            else:
                depth, text = self._pb(kind, value, following)
            yield f"{offset:>{self.width}}  {_indent(depth)}{text}\n"

    def _pb(self, kind: str, value: Any, following: tuple[int, str, Any] | None) -> tuple[int, str]:
        depth = len(self.remaining)
        if kind == "LIST" and value > 0:
            self.remaining.append(value)
            return depth, f"LIST {value}{_type_label(following)}"
        # A complete element: it may complete its list, and that list its own, and so on.
        while self.remaining:
            self.remaining[-1] -= 1
            if self.remaining[-1]:
                break
            self.remaining.pop()
        return depth, _show(kind, value)

    def _foolscap(self, kind: str, value: Any, following: tuple[int, str, Any] | None) -> tuple[int, str]:
        depth = len(self.sequences)
        if kind == "OPEN":
            label = _type_label(following)
            self.sequences.append((value, label))
            return depth, f"OPEN {value}{label}"
        if kind == "CLOSE":
            # The tokenizer has checked that it names the innermost sequence.
            _, label = self.sequences.pop()
            return depth - 1, f"CLOSE {value}{label}"
        return depth, _show(kind, value)

    def unfinished(self, partial_token_at: int | None) -> str:
        """How the stream ends unfinished ("" if it does not): inside a token, a list, a sequence."""
        parts = []
        if partial_token_at is not None:
            parts.append(f"in the middle of the token at byte {partial_token_at}")
        if self.remaining:
            n = len(self.remaining)
            parts.append(f"inside {n} open list{'s' if n > 1 else ''}")
        if self.sequences:
            n = len(self.sequences)
            opened = ", ".join(f"{open_id}{label}" for open_id, label in self.sequences)
            parts.append(f"inside {n} open sequence{'s' if n > 1 else ''}: {opened}")
        return ", ".join(parts)


def _indent(depth: int) -> str:
    if depth <= MAX_INDENT:
        return "  " * depth
    return "  " * MAX_INDENT + f"[depth {depth}] "


def _type_label(token: tuple[int, str, Any] | None) -> str:
    """`` (name)`` when `token` (the first one inside a list or sequence) is a type name."""
    if token is None:
        return ""
    _, kind, value = token
    if kind == "VOCAB":
        word = value[1]
    elif kind == "STRING":
        word = value
    else:
        return ""
    return f" ({word.decode('ascii')})" if _TYPE_NAME.fullmatch(word) else ""


def _show(kind: str, value: Any) -> str:
    if kind == "VOCAB":
        index, word = value
        return f"VOCAB {index} {_bytes(word)}"
    if isinstance(value, bytes):
        return f"{kind} {_bytes(value)}"
    if isinstance(value, float):
        return f"{kind} {value!r}"
    return f"{kind} {value}"


def _bytes(value: bytes) -> str:
    if len(value) <= MAX_SHOWN:
        return repr(value)
    return f"{value[:MAX_SHOWN]!r}…({len(value)} bytes)"
