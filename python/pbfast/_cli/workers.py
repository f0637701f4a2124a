"""``pbfast serve --workers N``: a supervisor that runs N ``pbfast serve`` processes sharing one
port (``SO_REUSEPORT``: the kernel spreads the incoming connections among them).

Each worker is ``python -m pbfast serve ... --as-worker``: it listens with ``reuse_port=True``
and stops when its stdin reaches end of file, that is when the supervisor has gone, however it
ended (the supervisor holds the other end and never writes). Workers run in a process group of
their own, so a terminal's Ctrl-C reaches only the supervisor, which stops them in order.

Worker 1 starts first. With ``--tub`` it makes or loads the certificate (the given
``--cert-file``, else one in a private temporary directory removed on exit), settles the name
and the location hints, writes ``--furl-file`` and prints the FURL; the others and every
restarted worker get the same certificate, ``--name`` and ``--location``, so all serve that FURL.

A worker's exit is learnt from SIGCHLD and ``waitpid`` on its own PID, not from its pipes
closing: a process it started may hold them open after it has gone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .. import endpoints
from ..furl import FURL
from .common import EXIT_ERROR, EXIT_USAGE, CommandError

__all__ = [
    "MAX_RESTART_DELAY",
    "MAX_WORKERS",
    "RESTART_DELAY",
    "STABLE_AFTER",
    "STOP_MARGIN",
    "supervise",
    "worker_count",
]

#: The most workers one command runs.
MAX_WORKERS = 1024
#: Seconds before a dead worker is started again; doubled for each death in a row of a worker
#: that ran less than `STABLE_AFTER` seconds, up to `MAX_RESTART_DELAY`.
RESTART_DELAY = 0.5
MAX_RESTART_DELAY = 30.0
#: A worker that ran this many seconds before it died is restarted after `RESTART_DELAY` again.
STABLE_AFTER = 10.0
#: Seconds beyond the grace period a stopping worker may take before it is killed.
STOP_MARGIN = 5.0
#: Seconds a stopped worker's last output may take to arrive.
_DRAIN_TIME = 1.0

# The lines a worker prints once it listens: the client endpoint on the PB wire, or the FURL.
_ADDRESS_PREFIXES = ("call it at: ", "pb://", "pbu://")


def worker_count(text: str) -> int:
    """``--workers``: a number of processes, or ``auto`` (one per CPU).

    Raises:
        CommandError: (usage) anything else, or a number out of range.
    """
    if text == "auto":
        return min(os.cpu_count() or 1, MAX_WORKERS)
    if not text.isdigit() or not 1 <= int(text) <= MAX_WORKERS:
        raise CommandError(f"--workers takes 1 to {MAX_WORKERS} or auto, not {text!r}", EXIT_USAGE)
    return int(text)


def supervise(args: argparse.Namespace, count: int) -> int:
    """Run `count` workers serving as `args` says until SIGTERM or SIGINT; the exit code.

    Raises:
        CommandError: (usage) an endpoint that cannot share its port (not TCP, port 0, or no
            ``SO_REUSEPORT`` on this platform).
        ValueError: a malformed endpoint.
    """
    endpoints.parse_server(args.endpoint)  # a malformed endpoint is reported as without --workers
    try:
        endpoint = endpoints.parse_server(args.endpoint, reuse_port=True)
    except ValueError as e:
        raise CommandError(f"--workers: {e}", EXIT_USAGE) from None
    if endpoint.port == 0:
        raise CommandError(
            f"--workers needs the port given, not port=0 in {args.endpoint!r} (each worker would "
            "listen on a free port of its own)",
            EXIT_USAGE,
        )
    with contextlib.ExitStack() as stack:
        cert_file = args.cert_file
        if args.tub and cert_file is None:
            # Every worker must have the same identity, so it needs a file even when the user
            # keeps none; the directory is readable by its owner only.
            directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="pbfast-serve-"))
            cert_file = Path(directory) / "tub.pem"
        return asyncio.run(_Supervisor(args, count, endpoint.port, cert_file).run())


@dataclass(eq=False)
class _Worker:
    """One of the N places: the process in it now, and its restart back-off."""

    number: int
    process: subprocess.Popen[bytes] | None = None
    exited: asyncio.Future[int] | None = None
    output: asyncio.StreamReader | None = None
    output_pipe: asyncio.ReadTransport | None = None
    forwarding: asyncio.Task[None] | None = None
    started: float = 0.0
    delay: float = RESTART_DELAY

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def name(self) -> str:
        return f"worker {self.number} (pid {self.pid})"

    def poll(self) -> None:
        """Note its exit status if it has ended (reaping it)."""
        if self.process is not None and self.exited is not None and not self.exited.done():
            status = self.process.poll()
            if status is not None:
                self.exited.set_result(status)

    def close(self) -> None:
        """Let go of the pipes of a process that has ended."""
        if self.process is not None and self.process.stdin is not None:
            self.process.stdin.close()  # its end of file reaches any child it left behind
        if self.forwarding is not None:
            self.forwarding.cancel()
        if self.output_pipe is not None:
            self.output_pipe.close()


class _StartFailed(Exception):
    def __init__(self, worker: _Worker, status: int) -> None:
        super().__init__(worker.number, status)
        self.worker = worker
        self.status = status


class _Supervisor:
    def __init__(
        self, args: argparse.Namespace, count: int, port: int | None, cert_file: Path | None
    ) -> None:
        self.args = args
        self.port = port
        self.cert_file = cert_file
        self.workers = [_Worker(number) for number in range(1, count + 1)]
        self.stop_requested = asyncio.Event()
        # From worker 1's FURL: what every later worker is told to serve.
        self.name: str | None = args.name
        self.location: str | None = args.location
        self.address = ""

    def command(self, first: bool) -> list[str]:
        """A worker's command line (`first`: worker 1's first start, which may write the FURL file)."""
        args = self.args
        command = [sys.executable, "-m", "pbfast", "serve", "--as-worker", f"--grace={args.grace!r}s"]
        if args.object:
            command.append(f"--object={args.object}")
        command += [f"--option={text}" for text in args.option]
        if args.unsafe_tracebacks:
            command.append("--unsafe-tracebacks")
        if args.tub:
            command += ["--tub", f"--cert-file={self.cert_file}"]
            if self.name is not None:
                command.append(f"--name={self.name}")
            if self.location is not None:
                command.append(f"--location={self.location}")
            if first and args.furl_file is not None:
                command.append(f"--furl-file={args.furl_file}")
        return [*command, "--", args.endpoint]

    def reap(self) -> None:
        for worker in self.workers:
            worker.poll()

    # ------------------------------------------------------------------ running

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop_requested.set)
        loop.add_signal_handler(signal.SIGCHLD, self.reap)
        keepers: list[asyncio.Task[None]] = []
        failed: _StartFailed | None = None
        try:
            if await self._start_all():
                keepers = [asyncio.create_task(self._keep_running(worker)) for worker in self.workers]
                await self.stop_requested.wait()
        except _StartFailed as e:
            failed = e
            if failed.status <= 0:  # a status > 0: the worker has said why
                _log(f"{failed.worker.name} {_exit_reason(failed.status)} before it served")
        finally:
            for task in keepers:
                task.cancel()
            await asyncio.gather(*keepers, return_exceptions=True)
            if self.stop_requested.is_set():
                _log(f"stopping {len(self.workers)} worker{'s' if len(self.workers) > 1 else ''}")
            status = await self._stop_all()
        if failed is not None:
            return failed.status if failed.status > 0 else EXIT_ERROR
        return status

    async def _start_all(self) -> bool:
        """Start worker 1, then the others, and print what they serve; False if asked to stop
        meanwhile.

        Raises:
            _StartFailed: a worker ended before it served.
        """
        first, *others = self.workers
        lines = await self._start(first, first=True)
        if lines is None:
            return False
        if self.args.tub:
            furl = FURL.parse(self.address)
            self.name = furl.name
            self.location = ",".join(furl.locationHints)
        starting = [asyncio.create_task(self._start(worker, first=False)) for worker in others]
        if starting:
            done, pending = await asyncio.wait(starting, return_when=asyncio.FIRST_EXCEPTION)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for task in starting:  # the first failure, in the workers' order
                if task in done and (error := task.exception()) is not None:
                    raise error
            if any(task.result() is None for task in starting):
                return False
        for line in lines[:-1]:
            print(line)
        pids = ", ".join(str(worker.pid) for worker in self.workers)
        plural = "s" if len(self.workers) > 1 else ""
        print(f"{len(self.workers)} worker{plural} sharing port {self.port}: pid{plural} {pids}")
        print(lines[-1], flush=True)
        return True

    async def _start(self, worker: _Worker, *, first: bool) -> list[str] | None:
        """Start `worker` and wait until it serves: the lines it printed, the last one where
        to call it; None if asked to stop meanwhile.

        Raises:
            _StartFailed: it ended first.
            OSError: it could not be started.
        """
        loop = asyncio.get_running_loop()
        worker.close()
        worker.process = subprocess.Popen(
            self.command(first), stdin=subprocess.PIPE, stdout=subprocess.PIPE, process_group=0
        )
        worker.exited = loop.create_future()
        worker.started = loop.time()
        worker.poll()  # it may have ended before SIGCHLD could be noticed for it
        assert worker.process.stdout is not None
        worker.output = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(worker.output)
        worker.output_pipe, _ = await loop.connect_read_pipe(lambda: protocol, worker.process.stdout)
        reading = asyncio.ensure_future(_read_until_serving(worker.output))
        stop = asyncio.ensure_future(self.stop_requested.wait())
        try:
            await asyncio.wait((reading, stop, worker.exited), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not reading.done():
                reading.cancel()
        if self.stop_requested.is_set():
            return None
        lines = None if reading.cancelled() else reading.result()
        if lines is None:
            raise _StartFailed(worker, await asyncio.shield(worker.exited))
        worker.forwarding = asyncio.create_task(_forward(worker.output))
        address = lines[-1].removeprefix("call it at: ")
        if first:
            self.address = address
        elif address != self.address:
            _log(f"{worker.name} serves {address}, not {self.address}")
        return lines

    async def _keep_running(self, worker: _Worker) -> None:
        """Start `worker` again each time it dies, after its back-off."""
        loop = asyncio.get_running_loop()
        while True:
            if worker.exited is not None:
                status = await asyncio.shield(worker.exited)  # cancelling us must not cancel it
                if self.stop_requested.is_set():
                    return  # a signal to the whole group: stopping, not dying
                if loop.time() - worker.started >= STABLE_AFTER:
                    worker.delay = RESTART_DELAY
                _log(f"{worker.name} {_exit_reason(status)}; restarting in {worker.delay:g} s")
            await asyncio.sleep(worker.delay)
            worker.delay = min(worker.delay * 2, MAX_RESTART_DELAY)
            try:
                if await self._start(worker, first=False) is None:
                    return
            except _StartFailed:
                continue  # the next turn reports its exit
            except OSError as e:
                _log(f"worker {worker.number} could not be started: {e}")
                if worker.exited is not None and not worker.exited.done():
                    assert worker.process is not None
                    worker.process.kill()  # started, but its output cannot be read
                else:
                    worker.exited = None  # not started: try again after the back-off
                continue
            _log(f"worker {worker.number} restarted: pid {worker.pid}")

    async def _stop_all(self) -> int:
        """SIGTERM to every running worker; those still running after the grace period and
        `STOP_MARGIN` are killed. 0 if every one exited by itself with status 0."""
        self.reap()
        running = [w for w in self.workers if w.exited is not None and not w.exited.done()]
        for worker in running:
            assert worker.process is not None
            worker.process.terminate()  # a no-op for a process that has ended and been reaped
        status = 0
        if running:
            exits = {worker.exited: worker for worker in running if worker.exited is not None}
            _, late = await asyncio.wait(exits, timeout=self.args.grace + STOP_MARGIN)
            for exited in late:
                worker = exits[exited]
                _log(f"{worker.name} did not stop within the grace period; killing it")
                assert worker.process is not None
                worker.process.kill()
            for exited, worker in exits.items():
                # Killed by our SIGTERM: a worker that had not yet set up its own handling.
                if await exited not in (0, -signal.SIGTERM):
                    status = EXIT_ERROR
                    _log(f"{worker.name} {_exit_reason(exited.result())}")
        forwarding = [w.forwarding for w in self.workers if w.forwarding is not None]
        if forwarding:
            await asyncio.wait(forwarding, timeout=_DRAIN_TIME)
        for worker in self.workers:
            worker.close()
        return status


async def _read_until_serving(output: asyncio.StreamReader) -> list[str] | None:
    """The lines a worker prints up to where to call it (printed once it listens), or None at
    the end of its output."""
    lines = []
    while line := (await output.readline()).decode(errors="replace"):
        lines.append(line.rstrip("\n"))
        if line.startswith(_ADDRESS_PREFIXES):
            return lines
    return None


async def _forward(output: asyncio.StreamReader) -> None:
    """What a worker prints once it serves (its object's own output) goes to ours."""
    while line := await output.readline():
        sys.stdout.write(line.decode(errors="replace"))
        sys.stdout.flush()


def _exit_reason(status: int) -> str:
    if status >= 0:
        return f"exited with status {status}"
    try:
        return f"was killed by {signal.Signals(-status).name}"
    except ValueError:
        return f"was killed by signal {-status}"


def _log(message: str) -> None:
    print(f"pbfast serve: {message}", file=sys.stderr, flush=True)
