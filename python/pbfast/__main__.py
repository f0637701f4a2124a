"""``python -m pbfast``: the ``pbfast`` command line (see :mod:`pbfast._cli`)."""

from __future__ import annotations

import sys

from ._cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
