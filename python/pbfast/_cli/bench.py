"""``pbfast bench``: the load generator (being written)."""

from __future__ import annotations

import argparse

from .common import CommandError

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("bench", help="load-test a remote method")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    raise CommandError("bench is being written")
