"""``pbfast call TARGET METHOD [ARGS...]``: one remote call, its result or its error."""

from __future__ import annotations

import argparse
import asyncio
import pprint
from typing import Any

from ..errors import RemoteError
from ..pb import run as run_loop
from .common import CommandError, open_references, parse_arguments, parse_duration

__all__ = ["add_parser", "run", "TARGET_HELP", "ARGS_HELP"]

TARGET_HELP = (
    "a PB server's endpoint (like tcp:host=127.0.0.1:port=8787), whose root object is called, "
    "or a FURL (pb://TUBID@HINTS/NAME) served by a Tub"
)
ARGS_HELP = "arguments as Python literals (1, 'text', [1, 2], {'a': b'x'}); name=literal for keywords"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "call",
        help="call a remote method once and print its result",
        description="Call METHOD on TARGET with the given arguments and print the result. A "
        "remote error is printed on stderr, with exit code 1.",
    )
    parser.add_argument("target", metavar="TARGET", help=TARGET_HELP)
    parser.add_argument("method", metavar="METHOD", help="the method's name, without remote_")
    parser.add_argument("arguments", metavar="ARGS", nargs="*", help=ARGS_HELP)
    parser.add_argument(
        "--timeout",
        type=parse_duration,
        default=30.0,
        metavar="DURATION",
        help="how long to wait to connect, then for the answer (default 30s)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    call_args, call_kwargs = parse_arguments(args.arguments)

    result = run_loop(_call(args.target, args.method, call_args, call_kwargs, args.timeout))
    print(pprint.pformat(result, width=100, sort_dicts=False))
    return 0


async def _call(
    target: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float
) -> object:
    async with open_references(target, timeout=timeout) as (ref,):
        try:
            async with asyncio.timeout(timeout):
                return await ref.callRemote(method, *args, **kwargs)
        except RemoteError as e:
            raise CommandError(f"remote error: {e.remoteType}: {_one_line(e.remoteValue)}") from None
        except TimeoutError:
            raise CommandError(f"no answer from {method}() within {timeout:g} s") from None


def _one_line(text: object) -> str:
    return " ".join(str(text).split())
