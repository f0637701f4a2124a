"""The object the ``pbfast serve --workers`` tests serve: ``pbfast serve --object
worker_target:Target`` (with ``tests/`` on PYTHONPATH). ``pid()`` says which worker process
answered; ``echo(value)`` as the test service has it."""

from __future__ import annotations

import os
from typing import Any

import pbfast

__all__ = ["Target"]


class Target(pbfast.Root):
    def remote_pid(self) -> int:
        return os.getpid()

    def remote_echo(self, value: Any = None) -> Any:
        return value
