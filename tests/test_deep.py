"""Deeply nested values: every codec walks them with a heap stack, never native recursion.

Each check runs in a subprocess, so a crash (a native stack overflow is a SIGSEGV) fails the
test instead of killing pytest. For each entry point: (a) a value nested to the default
``max_depth`` decodes and encodes in a thread with a 256 KiB stack; (b) with ``max_depth`` raised
to 10**7, a value nested 10**5 deep decodes in the main thread and in a 256 KiB thread; (c) one
level deeper than ``max_depth`` is a clean error naming the limit. Values that deep are made and
freed in the main thread: CPython 3.13 frees nesting with native recursion that a 256 KiB stack
cannot take, whoever made the value. Then real servers (a PB server and a Tub) receive such
values from a peer, and must survive and go on serving.
"""

from __future__ import annotations

import select
import socket
import subprocess
import sys
import textwrap
import time

import pytest

DEEP = 10**5
RAISED = 10**7

# Helpers every script starts with.
PRELUDE = (
    f"""
import sys, threading
import pbfast
from pbfast import _core, banana
from pbfast.errors import BananaError, JellyError

DEEP, RAISED = {DEEP}, {RAISED}
"""
    + r'''


def in_small_thread(fn):
    """fn() in a thread whose stack is 256 KiB; its result, or its exception raised here."""
    threading.stack_size(256 * 1024)
    out = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as e:
            out["error"] = e

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    threading.stack_size(0)
    if "error" in out:
        raise out["error"]
    return out["value"]


def everywhere(fn):
    """fn() in the main thread and in a 256 KiB thread, which must agree."""
    here = fn()
    assert in_small_thread(fn) == here
    return here


def nested(lists, leaf=None):
    """`lists` lists around `leaf`, built without recursion."""
    value = leaf
    for _ in range(lists):
        value = [value]
    return value


KEPT = []


def depth(value):
    """How many single-item lists are around the innermost value (no recursion). The value is
    kept until the script ends, so that it is freed in the main thread (see the module doc)."""
    KEPT.append(value)
    n = 0
    while type(value) in (list, tuple) and len(value) == 1:
        value, n = value[0], n + 1
    return n


def raw_bytes(lists):
    """Raw banana: `lists` LISTs around INT 0."""
    return b"\x01\x80" * lists + b"\x00\x81"


def jelly_bytes(lists):
    """["list", ["list", ... ["None"]]] with `lists` jelly lists in all (pb dialect)."""
    return b"\x02\x80\x08\x87" * (lists - 1) + b"\x01\x80\x01\x87"


def refused(fn, exc, limit):
    """fn() must raise `exc` naming max_depth=`limit`."""
    try:
        fn()
    except exc as e:
        assert f"max_depth={limit}" in str(e), e
        assert getattr(e, "limit", "max_depth") == "max_depth", e
        return
    raise AssertionError(f"{fn} did not raise {exc.__name__}")
'''
)


def run_script(body: str, timeout: float = 60) -> str:
    """Run PRELUDE + body in a fresh interpreter; it must exit 0 and print OK last."""
    script = PRELUDE + textwrap.dedent(body) + "\nprint('OK')\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"exit status {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert done.stdout.strip().endswith("OK"), done.stdout + done.stderr
    return done.stdout


# ------------------------------------------------------------------------------------------------
# Every entry point
# ------------------------------------------------------------------------------------------------

RAW_BANANA = """
# (a) the default max_depth (1000), both ways, in a 256 KiB thread.
value = nested(1000, 0)
assert in_small_thread(lambda: banana.encode(value)) == raw_bytes(1000)
assert in_small_thread(lambda: depth(banana.decode(raw_bytes(1000)))) == 1000
assert in_small_thread(lambda: depth(banana.Decoder().feed(raw_bytes(1000))[0])) == 1000
# (b) raised.
assert everywhere(lambda: depth(banana.decode(raw_bytes(DEEP), max_depth=RAISED))) == DEEP
assert everywhere(lambda: depth(banana.Decoder(max_depth=RAISED).feed(raw_bytes(DEEP))[0])) == DEEP
assert depth(banana.decode(raw_bytes(10 * DEEP), max_depth=RAISED)) == 10 * DEEP
# (c) one deeper.
refused(lambda: in_small_thread(lambda: banana.decode(raw_bytes(1001))), BananaError, 1000)
refused(lambda: banana.Decoder().feed(raw_bytes(1001)), BananaError, 1000)
refused(lambda: banana.decode(raw_bytes(DEEP + 1), max_depth=DEEP), BananaError, DEEP)
refused(lambda: in_small_thread(lambda: banana.encode(nested(1001, 0))), ValueError, 1000)
refused(lambda: banana.encode(nested(DEEP, 0)), ValueError, 1000)
# Tokens are flat: encode_tokens takes any nesting.
tokens = [("LIST", 1)] * DEEP + [("INT", 0)]
assert in_small_thread(lambda: banana.encode_tokens(tokens)) == raw_bytes(DEEP)
assert _core.encode_tokens(tokens) == raw_bytes(DEEP)
"""

JELLY = """
# (a) 1000 jelly lists: the default max_depth, both ways, in a 256 KiB thread.
value = nested(999)
assert in_small_thread(lambda: pbfast.dumps(value)) == jelly_bytes(1000)
assert in_small_thread(lambda: depth(pbfast.loads(jelly_bytes(1000)))) == 999
assert in_small_thread(lambda: depth(banana.Decoder(jelly=True).feed(jelly_bytes(1000))[0])) == 999
sexp = in_small_thread(lambda: pbfast.jelly(value))
assert in_small_thread(lambda: depth(pbfast.unjelly(sexp))) == 999
# Sets, dicts and tuples, and a reference, on the way.
mixed = nested(300, "leaf")
for _ in range(100):
    mixed = {"k": (frozenset([1]), [mixed])}
data = in_small_thread(lambda: pbfast.dumps(mixed))
assert in_small_thread(lambda: pbfast.loads(data)) == mixed
shared = [1]
pair = nested(600, [shared, shared])
back = in_small_thread(lambda: pbfast.loads(pbfast.dumps(pair)))
inner = back
for _ in range(600):
    inner = inner[0]
assert inner[0] is inner[1]
# (b) raised.
assert everywhere(lambda: depth(pbfast.loads(jelly_bytes(DEEP), max_depth=RAISED))) == DEEP - 1
decode = lambda: depth(banana.Decoder(jelly=True, max_depth=RAISED).feed(jelly_bytes(DEEP))[0])
assert everywhere(decode) == DEEP - 1
# (c) one deeper: the framer's BananaError, whoever reads the bytes.
refused(lambda: in_small_thread(lambda: pbfast.loads(jelly_bytes(1001))), BananaError, 1000)
refused(lambda: banana.Decoder(jelly=True).feed(jelly_bytes(1001)), BananaError, 1000)
refused(lambda: pbfast.loads(jelly_bytes(DEEP + 1), max_depth=DEEP), BananaError, DEEP)
refused(lambda: in_small_thread(lambda: pbfast.dumps(nested(1000))), JellyError, 1000)
refused(lambda: pbfast.dumps(nested(DEEP)), JellyError, 1000)
refused(lambda: pbfast.jelly(nested(DEEP)), JellyError, 1000)
"""

PB = """
from pbfast._core import EV_MESSAGE, EV_READY, PbDecoder, PbEncoder


def server_decoder(**limits):
    client, server = PbDecoder(False), PbDecoder(True, **limits)
    [(kind, _, reply, _)] = client.feed(PbDecoder(True).offer())
    assert kind == EV_READY
    [(kind, _, _, _)] = server.feed(reply)
    assert kind == EV_READY
    return server


PLACEHOLDER = b"pbfast-deep-placeholder"


def call_bytes(value_bytes):
    # A call whose one argument is the jelly value `value_bytes`.
    message = PbEncoder("pb").message(1, b"root", "depth", True, (PLACEHOLDER,), {})
    return message.replace(bytes([len(PLACEHOLDER), 0x82]) + PLACEHOLDER, value_bytes)


def args_depth(server, data):
    [event] = server.feed(data)
    assert event[0] == EV_MESSAGE, event
    return depth(event[5][0])


# (a) message + tuple + 998 jelly lists: the default max_depth (1000), both ways.
data = call_bytes(jelly_bytes(998))
assert in_small_thread(lambda: args_depth(server_decoder(), data)) == 997
encoder = PbEncoder("pb")
message = lambda: encoder.message(1, b"root", "depth", True, (nested(997),), {})
assert in_small_thread(message) == data
assert in_small_thread(lambda: encoder.answer(1, nested(999))).endswith(jelly_bytes(1000))
# (b) raised.
data = call_bytes(jelly_bytes(DEEP))
assert everywhere(lambda: args_depth(server_decoder(max_depth=RAISED), data)) == DEEP - 1
# (c) one deeper.
too_deep = call_bytes(jelly_bytes(999))
refused(lambda: in_small_thread(lambda: server_decoder().feed(too_deep)), BananaError, 1000)
refused(lambda: server_decoder(max_depth=DEEP).feed(call_bytes(jelly_bytes(DEEP - 1))), BananaError, DEEP)
deep = nested(DEEP)
message = lambda: encoder.message(1, b"root", "x", True, (deep,))
refused(lambda: in_small_thread(message), JellyError, 1000)
refused(lambda: encoder.answer(1, nested(1000)), JellyError, 1000)
"""

FOOLSCAP = """
from pbfast._core import FS_ANSWER, FS_CALL, FoolscapDecoder, FoolscapEncoder


def answer_depth(decoder, data):
    [event] = decoder.feed(data)
    assert event[0] == FS_ANSWER, event
    return depth(event[2])


# (a) answer + 498 lists + 1: 499 sequences, within the default max_depth (500), both ways.
data = in_small_thread(lambda: FoolscapEncoder().answer(1, nested(497, [])))
assert in_small_thread(lambda: answer_depth(FoolscapDecoder(), data)) == 497
call = in_small_thread(lambda: FoolscapEncoder().call(1, 1, "depth", (nested(496, {"k": (1,)}),)))
[event] = in_small_thread(lambda: FoolscapDecoder().feed(call))
assert event[0] == FS_CALL and depth(event[4][0]) == 496
# (b) raised, both ways.
deep = nested(DEEP)
data = everywhere(lambda: FoolscapEncoder(max_depth=RAISED).answer(1, deep))
assert everywhere(lambda: answer_depth(FoolscapDecoder(max_depth=RAISED), data)) == DEEP
# (c) one deeper.
deeper = FoolscapEncoder(max_depth=501).answer(1, nested(499, []))
refused(lambda: in_small_thread(lambda: FoolscapDecoder().feed(deeper)), BananaError, 500)
refused(lambda: FoolscapDecoder(max_depth=DEEP).feed(data), BananaError, DEEP)
refused(lambda: in_small_thread(lambda: FoolscapEncoder().answer(1, nested(499, []))), ValueError, 500)
refused(lambda: FoolscapEncoder(max_depth=DEEP).answer(1, deep), ValueError, DEEP)
"""


@pytest.mark.parametrize("body", [RAW_BANANA, JELLY, PB, FOOLSCAP], ids=["banana", "jelly", "pb", "foolscap"])
def test_deep_values(body: str) -> None:
    run_script(body)


# ------------------------------------------------------------------------------------------------
# Real servers
# ------------------------------------------------------------------------------------------------

PB_SERVER = """
import asyncio


class Root(pbfast.Root):
    def remote_depth(self, value):
        return depth(value)

    def remote_echo(self, value):
        return value


async def main():
    server = await pbfast.serve(Root(), "tcp:port=0:interface=127.0.0.1", max_depth=RAISED)
    print(server.port, flush=True)
    # Serve until the test closes our stdin.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


asyncio.run(main())
"""

PB_CLIENT = """
import asyncio


async def main(port):
    root = await pbfast.connect(f"tcp:host=127.0.0.1:port={port}", timeout=30)
    call = lambda *args: asyncio.wait_for(root.callRemote(*args), 60)
    # Arguments and answers at the default max_depth: the call's tuple, 997 lists and a None.
    assert await call("depth", nested(997)) == 997
    assert depth(await call("echo", nested(997))) == 997
    await root.broker.close()


# The whole client, its event loop, encoder (Sender) and decoder, in a 256 KiB thread.
in_small_thread(lambda: asyncio.run(main(int(sys.argv[1]))))
"""

TUB_SERVER = """
import asyncio


class Deep(pbfast.Referenceable):
    def remote_depth(self, value):
        return depth(value)

    def remote_echo(self, value):
        return value


async def main():
    async with pbfast.Tub(max_depth=RAISED) as tub:
        listener = await tub.listenOn("tcp:0:interface=127.0.0.1")
        tub.setLocation(f"tcp:127.0.0.1:{listener.port}")
        print(tub.registerReference(Deep(), "deep"), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


asyncio.run(main())
"""

TUB_CLIENT = """
import asyncio


async def main(furl):
    async with pbfast.Tub(max_depth=RAISED) as tub:
        ref = await asyncio.wait_for(tub.getReference(furl), 30)
        call = lambda *args: asyncio.wait_for(ref.callRemote(*args), 60)
        assert await call("depth", nested(DEEP)) == DEEP
        assert depth(await call("echo", nested(DEEP))) == DEEP
        assert await call("depth", [[1]]) == 2


asyncio.run(main(sys.argv[1]))
"""


class Server:
    """A server script in a subprocess: its first line of output, and whether it still runs."""

    def __init__(self, body: str) -> None:
        script = PRELUDE + textwrap.dedent(body)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        assert ready, "the server printed nothing in 30 s"
        self.line = self.proc.stdout.readline().strip()
        assert self.line, self.stop()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> str:
        """Stop the server (EOF on its stdin, then a kill); its stderr."""
        try:
            _, err = self.proc.communicate(input="", timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=15)
        return err


def pb_exchange(port: int, calls: list[tuple[int, bytes]]) -> dict[int, tuple]:
    """Send `calls` (request id, message bytes) over a raw PB connection; the reply event for
    each request id."""
    from pbfast._core import EV_ANSWER, EV_BAD_REPLY, EV_ERROR, EV_READY, PbDecoder

    decoder = PbDecoder(False)
    replies: dict[int, tuple] = {}
    deadline = time.monotonic() + 60
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        pending = list(calls)
        while len(replies) < len(calls):
            assert time.monotonic() < deadline, f"no replies to {sorted(set(dict(calls)) - set(replies))}"
            chunk = sock.recv(1 << 16)
            assert chunk, "the server closed the connection"
            for event in decoder.feed(chunk):
                if event[0] == EV_READY:
                    sock.sendall(event[2])
                    # One call at a time, each after the reply to the one before.
                    sock.sendall(pending[0][1])
                elif event[0] in (EV_ANSWER, EV_ERROR, EV_BAD_REPLY):
                    replies[event[1]] = event
                    pending = [c for c in pending if c[0] != event[1]]
                    if pending:
                        sock.sendall(pending[0][1])
    return replies


def deep_call(request_id: int, method: str, lists: int) -> bytes:
    """A PB call of `method` whose one argument is `lists` jelly lists deep."""
    from pbfast._core import PbEncoder

    placeholder = b"pbfast-deep-placeholder"
    message = PbEncoder("pb").message(request_id, b"root", method, True, (placeholder,), {})
    value = b"\x02\x80\x08\x87" * (lists - 1) + b"\x01\x80\x01\x87"
    return message.replace(bytes([len(placeholder), 0x82]) + placeholder, value)


def test_a_pb_server_survives_a_deeply_nested_call() -> None:
    from pbfast._core import EV_ANSWER, PbEncoder

    server = Server(PB_SERVER)
    try:
        port = int(server.line)
        replies = pb_exchange(
            port,
            [
                (1, deep_call(1, "depth", DEEP)),
                # The answer is too deep to send back: the call fails, cleanly.
                (2, deep_call(2, "echo", DEEP)),
                (3, PbEncoder("pb").message(3, b"root", "depth", True, ([[1]],), {})),
            ],
        )
        assert replies[1][0] == EV_ANSWER and replies[1][2] == DEEP - 1, replies[1]
        assert replies[2][0] != EV_ANSWER, replies[2]
        assert replies[3][0] == EV_ANSWER and replies[3][2] == 2, replies[3]
        # And new connections are served as well, one from a pbfast client in a small thread.
        replies = pb_exchange(port, [(1, PbEncoder("pb").message(1, b"root", "depth", True, ([1],), {}))])
        assert replies[1][0] == EV_ANSWER and replies[1][2] == 1
        client = PRELUDE + textwrap.dedent(PB_CLIENT) + "\nprint('OK')\n"
        command = [sys.executable, "-c", client, str(port)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stdout + done.stderr
        assert server.alive()
    finally:
        err = server.stop()
    assert "Segmentation" not in err and "Traceback" not in err, err


def test_a_tub_survives_a_deeply_nested_call() -> None:
    server = Server(TUB_SERVER)
    try:
        furl = server.line
        assert furl.startswith("pb://"), furl
        client = PRELUDE + textwrap.dedent(TUB_CLIENT) + "\nprint('OK')\n"
        command = [sys.executable, "-c", client, furl]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stdout + done.stderr
        assert server.alive()
    finally:
        err = server.stop()
    assert "Segmentation" not in err and "Traceback" not in err, err
