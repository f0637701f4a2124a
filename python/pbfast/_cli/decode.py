"""``pbfast decode``: pretty-print a captured banana byte stream (being written)."""

from __future__ import annotations

import argparse

from .common import CommandError

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("decode", help="pretty-print a captured banana byte stream")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    raise CommandError("decode is being written")
