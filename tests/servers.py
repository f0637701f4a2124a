"""Real server processes for the tests: ``pbfast serve`` run as a user runs it.

``ServeProcess(*args)`` starts ``python -m pbfast serve *args`` with ``tests/`` on PYTHONPATH
(so ``--object module:attr`` finds the test modules), waits until it prints where to call it
(``address``: a client endpoint or a FURL), and stops it with a signal. Use it as a context
manager, or call `stop` (and `kill` in a ``finally``): a test must never leave one running.

Its stderr goes to a temporary file, not a pipe, so a server that logs a lot never blocks on a
full pipe; `stderr` reads what it has written so far, at any time.

``tests/`` has no ``__init__.py``: test modules import this with ``from servers import ...``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

TESTS = Path(__file__).resolve().parent


def tests_env(**extra: str) -> dict[str, str]:
    """The environment for a subprocess that imports test modules: ``tests/`` on PYTHONPATH."""
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


class ServeProcess:
    """A ``pbfast serve`` subprocess; `address` is what it printed for clients (endpoint or
    FURL), `lines` everything it printed up to that."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, timeout: float = 30) -> None:
        self._stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pbfast", "serve", *args],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=env if env is not None else tests_env(),
        )
        self.pid = self.process.pid
        self.lines: list[str] = []
        deadline = time.monotonic() + timeout
        assert self.process.stdout is not None
        try:
            while time.monotonic() < deadline:
                line = self.process.stdout.readline()
                if not line:
                    raise AssertionError(f"pbfast serve ended: {self.process.wait()} {self.stderr()}")
                self.lines.append(line.rstrip("\n"))
                if line.startswith(("pb://", "call it at: ")):
                    self.address = line.strip().removeprefix("call it at: ")
                    return
            raise AssertionError(f"pbfast serve printed no address: {self.lines}")
        except BaseException:
            self.kill()
            raise

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 15) -> tuple[int, str]:
        """Send `sig` and wait for the process to end: its exit code and stderr."""
        self.process.send_signal(sig)
        try:
            self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self._keep_stderr()
        return self.process.returncode, self.stderr()

    def kill(self) -> None:
        """End the process now, if it is still running."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate()
        self._keep_stderr()

    def _keep_stderr(self) -> None:
        """The process has ended: keep what it wrote to stderr, and close the file."""
        if not self._stderr.closed:
            self._stderr_text = self.stderr()
            self._stderr.close()

    def stderr(self) -> str:
        """What the process has written to stderr so far (all of it once it has ended)."""
        if self._stderr.closed:
            return self._stderr_text
        fd = self._stderr.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode("utf-8", "replace")

    def rss(self) -> int:
        """The process's resident memory (Linux), in bytes."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError(f"no VmRSS for process {self.pid}")

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()
