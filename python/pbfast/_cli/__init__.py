"""The ``pbfast`` command line (also ``python -m pbfast``).

Each subcommand lives in its own module with two functions: ``add_parser(subparsers)`` declares
its arguments and ``run(args) -> int`` carries it out. Expected failures (a bad argument, an
unreachable server, a remote error) raise :class:`CommandError` or one of the exceptions listed
in :data:`common.EXPECTED_ERRORS`; :func:`main` prints those as one line on stderr, never as a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from .. import __version__
from . import bench, call, create_tub, decode, demo, serve
from .common import EXIT_ERROR, EXPECTED_ERRORS, CommandError, describe

__all__ = ["main"]

_COMMANDS = (demo, serve, call, bench, create_tub, decode)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pbfast",
        description="Perspective Broker and foolscap RPC for asyncio: try it, serve objects, "
        "call them, load-test them, and look at what is on the wire.",
    )
    parser.add_argument("--version", action="version", version=f"pbfast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in _COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
        return code
    except BrokenPipeError:
        # The reader went away (`pbfast ... | head`): nothing more to say, and nowhere to say it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except CommandError as e:
        _report(args.command, str(e))
        return e.code
    except EXPECTED_ERRORS as e:
        _report(args.command, describe(e))
        return EXIT_ERROR


def _report(command: str, message: str) -> None:
    print(f"pbfast {command}: {message}", file=sys.stderr)
