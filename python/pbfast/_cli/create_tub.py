"""``pbfast create-tub FILE``: a new Tub identity (certificate and key), and its TubID."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..identity import TubIdentity
from .common import CommandError, describe

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "create-tub",
        help="make a Tub certificate file and print its TubID",
        description="Make a new Tub identity (an RSA-2048 self-signed certificate and its key, in "
        "foolscap's PEM layout, readable by its owner only) and print its TubID. Pass the file to "
        "`pbfast serve --tub --cert-file FILE` (or `pbfast.Tub(certFile=FILE)`) so a Tub keeps "
        "its TubID, and so its FURLs, across restarts. An existing file is never overwritten.",
    )
    parser.add_argument("file", metavar="FILE", type=Path, help="where to write the certificate")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    path: Path = args.file
    if path.exists():
        try:
            held = f" (it holds TubID {TubIdentity.from_pem(path.read_bytes()).tubID})"
        except (OSError, ValueError):
            held = ""
        raise CommandError(f"{path} already exists{held}; not overwritten")
    identity = TubIdentity.generate()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        raise CommandError(f"cannot create {path}: {describe(e)}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(identity.to_pem())
    print(identity.tubID)
    return 0
