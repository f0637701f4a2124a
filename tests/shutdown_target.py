"""The object the shutdown tests serve from a real ``pbfast serve`` process:
``pbfast serve --object shutdown_target:Target`` (with ``tests/`` on PYTHONPATH) serves
`hostile_target.Target`, and prints every record of the ``pbfast`` loggers, DEBUG included, one
a line as ``LEVEL logger: message`` on stderr. The command itself leaves logging to Python's
defaults (WARNING and above, the message alone), so this is how a test tells an ERROR from a
WARNING and sees what a shutdown logged at DEBUG.
"""

from __future__ import annotations

import logging
import sys

from hostile_target import Target

__all__ = ["Target"]

_handler = logging.StreamHandler(sys.stderr)
_handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
logging.getLogger().addHandler(_handler)
logging.getLogger("pbfast").setLevel(logging.DEBUG)
