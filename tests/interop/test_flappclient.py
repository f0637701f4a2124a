"""foolscap's own command-line client, ``flappclient``, against services served by a pbfast Tub.

The services (``flapp_services.py``) speak what flappserver's ``upload-file`` and
``run-command`` speak. flappclient does its work, stops its Tub (TLS close_notify, then it waits
for the peer to close too) and exits by itself: each run must end with the right exit code well
within its time limit, its work done.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

import pbfast
import pytest
from flapp_services import CommandRunner, FileUploader

pytestmark = pytest.mark.interop

LISTEN = "tcp:0:interface=127.0.0.1"
# flappclient starts a Python with Twisted and foolscap; a hang shows as running into this.
RUN_LIMIT = 30.0


def flappclient_command() -> list[str]:
    beside = Path(sys.executable).with_name("flappclient")
    found = str(beside) if beside.exists() else shutil.which("flappclient")
    if found is None:
        pytest.fail("foolscap's flappclient script is not installed")
    return [found]


async def flappclient(furl_file: Path, *args: str, stdin: bytes = b"") -> tuple[int, bytes, bytes, float]:
    """Run ``flappclient --furlfile FURL_FILE ARGS`` to its end (killed after RUN_LIMIT s):
    ``(exit code, stdout, stderr, seconds)``."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    pipe = asyncio.subprocess.PIPE
    proc = await asyncio.create_subprocess_exec(
        *flappclient_command(), "--furlfile", str(furl_file), *args, stdin=pipe, stdout=pipe, stderr=pipe
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), RUN_LIMIT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()
    return proc.returncode, out, err, loop.time() - started


async def serve(tub: pbfast.Tub, service: pbfast.Referenceable, furl_file: Path) -> None:
    listener = await tub.listenOn(LISTEN)
    tub.setLocation(f"tcp:127.0.0.1:{listener.port}")
    tub.registerReference(service, furlFile=furl_file)


async def connections_end(tub: pbfast.Tub) -> None:
    """Until `tub` has no connection left (the client hung up)."""
    for _ in range(200):
        if tub.statistics()["connections"] == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"still connected: {tub.statistics()}")


def test_flappclient_uploads_files(run, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    sources = tmp_path / "sources"
    sources.mkdir()
    files = {
        "big.bin": os.urandom(2 * FileUploader.BLOCKSIZE + 12345),  # three read() calls
        "small.txt": b"hello from flappclient\n",
        "empty": b"",
    }
    for name, content in files.items():
        (sources / name).write_bytes(content)

    async def main():
        uploader = FileUploader(target)
        furl_file = tmp_path / "upload.furl"
        async with pbfast.Tub() as tub:
            await serve(tub, uploader, furl_file)
            code, out, err, seconds = await flappclient(
                furl_file, "upload-file", *(str(sources / name) for name in files)
            )
            assert code == 0, (code, out, err)
            assert out == b"".join(f"{name}: uploaded\n".encode() for name in files), out
            await connections_end(tub)
        print(f"flappclient upload-file: {seconds:.2f} s")
        assert uploader.uploaded == list(files)
        for name, content in files.items():
            assert (target / name).read_bytes() == content, name
            assert (target / name).stat().st_mode & 0o777 == 0o644
        assert sorted(p.name for p in target.iterdir()) == sorted(files)  # no .partial left

    run(main())


SCRIPT = """
import sys
data = sys.stdin.buffer.read()
open("ran-here", "wb").write(data)
sys.stdout.buffer.write(b"out:" + data.upper())
sys.stdout.flush()
sys.stderr.write("err:note\\n")
sys.exit(int(sys.argv[1]))
"""


@pytest.mark.parametrize(
    "accept_stdin,exit_code",
    [(True, 0), (False, 0), (False, 5)],
    ids=["stdin", "no-stdin", "exit-5"],
)
def test_flappclient_runs_a_command(run, tmp_path, accept_stdin, exit_code):
    """The command runs in the service's directory, with flappclient's stdin if the service
    accepts it; its stdout, stderr and exit code come back through flappclient."""
    target = tmp_path / "target"
    target.mkdir()
    sent = b"some input\nfor the command\n"
    got = sent if accept_stdin else b""

    async def main():
        argv = [sys.executable, "-c", SCRIPT, str(exit_code)]
        runner = CommandRunner(target, argv, accept_stdin=accept_stdin)
        furl_file = tmp_path / "run.furl"
        async with pbfast.Tub() as tub:
            await serve(tub, runner, furl_file)
            code, out, err, seconds = await flappclient(furl_file, "run-command", stdin=sent)
            await asyncio.wait_for(runner.wait(), 5)
            assert code == exit_code, (code, out, err)
            assert out == b"out:" + got.upper(), out
            assert err == b"err:note\n", err
            await connections_end(tub)
        print(f"flappclient run-command ({accept_stdin=}, {exit_code=}): {seconds:.2f} s")
        assert runner.exit_codes == [exit_code]
        assert (target / "ran-here").read_bytes() == got

    run(main())
