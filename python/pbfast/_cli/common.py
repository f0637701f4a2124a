"""What the subcommands share: errors and exit codes, durations, argument literals, targets."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import importlib
import os
import re
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

from ..endpoints import parse_client
from ..errors import PbfastError
from ..furl import FURL
from ..pb import connect
from ..tub import Tub

__all__ = [
    "EXIT_ERROR",
    "EXIT_USAGE",
    "EXIT_THRESHOLD",
    "EXPECTED_ERRORS",
    "CommandError",
    "describe",
    "parse_duration",
    "format_duration",
    "parse_arguments",
    "import_attribute",
    "load_object",
    "is_furl",
    "open_references",
]

#: Exit codes: a failure while running, a bad command line, a `bench --fail-if` threshold crossed.
EXIT_ERROR, EXIT_USAGE, EXIT_THRESHOLD = 1, 2, 3

#: What a user can cause without a bug in pbfast: reported in one line, not as a traceback.
EXPECTED_ERRORS = (PbfastError, OSError, ValueError, TimeoutError, EOFError)


class CommandError(Exception):
    """A failure to report as one line, with the exit code to leave with."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def describe(exc: BaseException) -> str:
    """An exception as one line: its message, with its type where the message alone is unclear."""
    if isinstance(exc, OSError) and exc.strerror:
        text = " ".join(exc.strerror.split())  # without the "[Errno N]" prefix
    else:
        text = " ".join(str(exc).split())
    if not text:
        return type(exc).__name__
    if isinstance(exc, (PbfastError, OSError, TimeoutError, EOFError)) or type(exc) is ValueError:
        return text
    return f"{type(exc).__name__}: {text}"


# ---------------------------------------------------------------------------------- durations

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_DURATION = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zµ]*)\s*")


def parse_duration(text: str, *, default_unit: str = "s") -> float:
    """``"250ms"``, ``"1.5s"``, ``"2m"`` or a bare number in `default_unit`, as seconds.

    Raises:
        ValueError: anything else, or a negative duration.
    """
    m = _DURATION.fullmatch(text)
    unit = (m and m[2]) or default_unit
    if m is None or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a duration (like 500us, 250ms, 10s, 2m)")
    return float(m[1]) * _UNITS[unit]


def format_duration(seconds: float) -> str:
    """A latency for people: three significant digits in the unit that suits it."""
    if seconds >= 1:
        return f"{seconds:.3g} s" if seconds < 100 else f"{seconds:,.0f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    if seconds >= 1e-6:
        return f"{seconds * 1e6:.3g} µs"
    return f"{seconds * 1e9:.0f} ns"


# ---------------------------------------------------------------------------------- arguments

_KEYWORD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", re.S)


def parse_arguments(texts: Sequence[str]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Call arguments from the command line: each a Python literal (``1``, ``'text'``,
    ``[1, 2]``, ``{'a': b'x'}``), or ``name=literal`` for a keyword argument.

    Raises:
        CommandError: (usage) an argument that is not a literal, or a keyword given twice.
    """
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for position, text in enumerate(texts, 1):
        keyword = _KEYWORD.fullmatch(text)
        if keyword is not None:
            if keyword[1] in kwargs:
                raise CommandError(f"keyword argument {keyword[1]!r} given twice", EXIT_USAGE)
            kwargs[keyword[1]] = _literal(keyword[2], f"argument {position} ({keyword[1]}=)")
        else:
            args.append(_literal(text, f"argument {position}"))
    return tuple(args), kwargs


def _literal(text: str, where: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as e:
        reason = e.msg if isinstance(e, SyntaxError) else _not_literal(text)
        hint = " (quote strings, as in \"'text'\")" if text.isidentifier() else ""
        raise CommandError(f"{where} {text!r} is not a Python literal: {reason}{hint}", EXIT_USAGE) from None


# What ast.literal_eval refuses, in words (its own message shows the node's repr).
_NODE_WORDS = {
    ast.Name: "a name",
    ast.Attribute: "an attribute",
    ast.Call: "a call",
    ast.Subscript: "a subscript",
    ast.Lambda: "a lambda",
    ast.Compare: "a comparison",
    ast.BoolOp: "a boolean expression",
}


def _not_literal(text: str) -> str:
    """Why `text`, which parses, is not a literal: the first part of it that is not one."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return "it does not parse"
    for node in ast.walk(tree.body):
        if isinstance(node, ast.Constant | ast.List | ast.Tuple | ast.Set | ast.Dict | ast.expr_context):
            continue
        if isinstance(node, ast.UnaryOp | ast.BinOp | ast.operator | ast.unaryop):
            continue  # -1, 1+2j: allowed in their literal forms; literal_eval judges the rest
        what = _NODE_WORDS.get(type(node), "an expression")
        return f"{ast.get_source_segment(text.strip(), node) or text!r} is {what}"
    return "only numbers, strings, bytes, None, True, False and their lists, tuples, sets and dicts"


def import_attribute(spec: str, example: str) -> Any:
    """The attribute named by ``module:attribute`` (a dotted attribute path). Modules are found
    from the current directory first, as ``python -m`` finds them.

    Raises:
        CommandError: (usage) a malformed name (`example` shows a good one), a module that
            cannot be imported, or a missing attribute.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise CommandError(f"{spec!r}: name it as module:attribute (like {example})", EXIT_USAGE)
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise CommandError(f"cannot import {module_name!r}: {describe(e)}", EXIT_USAGE) from None
    except Exception as e:
        raise CommandError(f"importing {module_name!r} failed: {describe(e)}", EXIT_USAGE) from None
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CommandError(
                f"{spec!r}: {module_name} has no attribute {attribute!r}", EXIT_USAGE
            ) from None
    return obj


def load_object(spec: str, kinds: tuple[type, ...]) -> Any:
    """The object named by ``module:attribute`` (a dotted attribute path), which must be one of
    `kinds`; a class or a function found there is called with no arguments to make it. Modules
    are found from the current directory first, as ``python -m`` finds them.

    Raises:
        CommandError: (usage) a malformed name, one that cannot be imported or found, a factory
            that fails, or an object of another kind.
    """
    obj = import_attribute(spec, "myapp.service:Root")
    wanted = " or ".join(f"pbfast.{kind.__name__}" for kind in kinds)
    if isinstance(obj, kinds):
        return obj
    if not callable(obj) or (isinstance(obj, type) and not issubclass(obj, kinds)):
        what = f"the class {obj.__qualname__}" if isinstance(obj, type) else _a(type(obj).__name__)
        raise CommandError(f"{spec!r} is {what}, not a {wanted} or a factory of one", EXIT_USAGE)
    try:
        made = obj()
    except Exception as e:
        message = f"{spec!r}: calling it with no arguments failed: {describe(e)}"
        raise CommandError(message, EXIT_USAGE) from None
    if not isinstance(made, kinds):
        raise CommandError(f"{spec!r} made a {type(made).__name__}, not a {wanted}", EXIT_USAGE)
    return made


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


# ---------------------------------------------------------------------------------- targets


def is_furl(target: str) -> bool:
    """A FURL (served by a Tub, foolscap's wire) rather than an endpoint (Twisted PB's wire)."""
    return target.startswith(("pb:", "pbu:"))


@contextlib.asynccontextmanager
async def open_references(
    target: str, *, connections: int = 1, timeout: float = 30.0
) -> AsyncIterator[list[Any]]:
    """`connections` references to `target`, each over its own connection, closed on exit: the
    root object of a PB server at an endpoint string, or the object a FURL names (one client
    Tub per connection, as one Tub keeps one connection to another).

    Raises:
        CommandError: (usage) a malformed FURL or endpoint string; the connection failed or
            took longer than `timeout` seconds.
    """
    furl = is_furl(target)
    try:
        FURL.parse(target) if furl else parse_client(target)
    except ValueError as e:
        raise CommandError(f"bad {'FURL' if furl else 'endpoint'}: {describe(e)}", EXIT_USAGE) from None
    async with contextlib.AsyncExitStack() as stack:
        refs: list[Any] = []
        try:
            for _ in range(connections):
                if furl:
                    tub = await stack.enter_async_context(Tub())
                    async with asyncio.timeout(timeout):
                        refs.append(await tub.getReference(target))
                else:
                    refs.append(await stack.enter_async_context(connect(target, timeout=timeout)))
        except TimeoutError:
            raise CommandError(f"cannot connect to {target}: no answer within {timeout:g} s") from None
        except (OSError, PbfastError) as e:
            message = describe(e)
            if "cannot connect" not in message:  # the endpoints' errors say it already
                message = f"cannot connect to {target}: {message}"
            raise CommandError(message) from None
        yield refs
