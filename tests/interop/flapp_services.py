"""flappserver's ``upload-file`` and ``run-command`` services, served by a pbfast Tub.

Stock foolscap's command-line client ``flappclient`` (``foolscap/appserver/client.py``) drives
these; the stock server side is ``foolscap/appserver/services.py``. Neither side declares a
RemoteInterface: flappclient calls the service's methods by name.

``upload-file`` (`FileUploader`)
    ``putfile(name: bytes, source)``: the service pulls the file with ``source.callRemote("read",
    BLOCKSIZE)`` until it answers ``b""``, writes it to ``<name>.partial`` in its target
    directory, gives it the configured mode and renames it to ``<name>``; the answer is None.
    flappclient sends one ``putfile`` per file, in order, and prints ``<name>: uploaded``.

``run-command`` (`CommandRunner`)
    ``execute(watcher)`` starts the configured command in the target directory. Its output goes
    to ``watcher.callRemoteOnly("stdout" | "stderr", data)`` and its end to
    ``watcher.callRemoteOnly("done", signal, exitcode)`` (flappclient exits with ``exitcode``,
    or 127 after a signal). With ``accept_stdin`` the answer is a `Command` with
    ``feed_stdin(data)`` and ``close_stdin()``, through which flappclient streams its own stdin;
    otherwise None (and the command's stdin is empty).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

import pbfast


class FileUploader(pbfast.Referenceable):
    """``upload-file``: files uploaded land in `targetdir` (names only, no subdirectories)."""

    BLOCKSIZE = 1024 * 1024

    def __init__(self, targetdir: str | os.PathLike[str], mode: int = 0o644) -> None:
        self.targetdir = Path(targetdir)
        self.mode = mode
        self.uploaded: list[str] = []

    async def remote_putfile(self, name: bytes | str, source: pbfast.RemoteReference) -> None:
        name = name.decode("utf-8") if isinstance(name, bytes) else name
        if name in ("", ".", "..") or any(c in name for c in "/\\\0"):
            raise ValueError(f"not a plain file name: {name!r}")
        target = self.targetdir / name
        partial = target.with_name(name + ".partial")
        try:
            with open(partial, "wb") as f:
                while data := await source.callRemote("read", self.BLOCKSIZE):
                    f.write(data)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        os.chmod(partial, self.mode)
        partial.replace(target)
        self.uploaded.append(name)


class Command(pbfast.Referenceable):
    """The running command's stdin, for a client whose stdin it accepts."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.closed = False

    def remote_feed_stdin(self, data: bytes) -> None:
        if not isinstance(data, bytes):
            raise TypeError(f"stdin takes bytes, not {type(data).__name__}")
        if not self.closed:
            self.process.stdin.write(data)

    def remote_close_stdin(self) -> None:
        if not self.closed:
            self.closed = True
            self.process.stdin.close()


class CommandRunner(pbfast.Referenceable):
    """``run-command``: runs `argv` in `targetdir` for each client that asks."""

    def __init__(
        self,
        targetdir: str | os.PathLike[str],
        argv: Sequence[str],
        *,
        accept_stdin: bool = False,
        send_stdout: bool = True,
        send_stderr: bool = True,
    ) -> None:
        self.targetdir = Path(targetdir)
        self.argv = list(argv)
        self.accept_stdin = accept_stdin
        self.send_stdout = send_stdout
        self.send_stderr = send_stderr
        self.exit_codes: list[int] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def remote_execute(self, watcher: pbfast.RemoteReference) -> Command | None:
        pipe = asyncio.subprocess.PIPE
        process = await asyncio.create_subprocess_exec(
            *self.argv,
            cwd=self.targetdir,
            stdin=pipe if self.accept_stdin else asyncio.subprocess.DEVNULL,
            stdout=pipe,
            stderr=pipe,
        )
        command = Command(process) if self.accept_stdin else None
        task = asyncio.get_running_loop().create_task(self._watch(process, watcher, command))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if command is not None:
            watcher.notifyOnDisconnect(command.remote_close_stdin)
        return command

    async def _watch(
        self, process: asyncio.subprocess.Process, watcher: pbfast.RemoteReference, command: Command | None
    ) -> None:
        def tell(method: str, *args: object) -> None:
            with contextlib.suppress(pbfast.DeadReferenceError):  # the client is gone: drain anyway
                watcher.callRemoteOnly(method, *args)

        async def pump(stream: asyncio.StreamReader, method: str, send: bool) -> None:
            while data := await stream.read(65536):
                if send:
                    tell(method, data)

        await asyncio.gather(
            pump(process.stdout, "stdout", self.send_stdout), pump(process.stderr, "stderr", self.send_stderr)
        )
        code = await process.wait()
        if command is not None:
            command.remote_close_stdin()
        self.exit_codes.append(code)
        # As Twisted reports it: (signal, None) after a signal, else (None, exit code).
        tell("done", *((-code, None) if code < 0 else (None, code)))

    async def wait(self) -> None:
        """Until every command started has ended and been reported."""
        while self._tasks:
            await asyncio.gather(*self._tasks)
