"""PB connections end to end: what only PB has (its servers and `pbfast.connect`, its options,
`pbfast.run`, its encoder's answers, TLS endpoints).

The broker behaviours PB shares with the Tub (calls, errors, references, the connection's
lifecycle) run on both wires in tests/test_wires.py, PB over the in-memory pair of
``pbfast.testing``, TCP on 127.0.0.1 and a unix socket. Every test that runs a loop uses
conftest's ``run`` fixture, so it honours ``--loop``.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
from typing import Any

import pbfast
import pbfast.testing
import pytest
from connections import _endpoints, eventually, settle
from pbfast import _core

# --------------------------------------------------------------------------------------------
# Helper objects
# --------------------------------------------------------------------------------------------


class Counter(pbfast.Referenceable):
    def __init__(self, start: int = 0) -> None:
        self.value = start

    def remote_inc(self, by: int = 1) -> int:
        self.value += by
        return self.value


class Echo(pbfast.Root):
    def __init__(self) -> None:
        self.child = Counter()
        self.gate = asyncio.Event()
        self.started = 0

    def remote_echo(self, x: Any) -> Any:
        return x

    async def remote_wait(self) -> str:
        """Blocks until the test opens the gate."""
        self.started += 1
        await self.gate.wait()
        return "opened"

    def remote_fail(self) -> None:
        raise ValueError("boom")

    def remote_child(self) -> Counter:
        return self.child


@pytest.fixture
def sockdir() -> Any:
    """A short temporary directory for unix socket paths (test_endpoints.py has its own)."""
    path = tempfile.mkdtemp(dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Servers and connecting
# --------------------------------------------------------------------------------------------


def test_server_close_closes_connections(run, socket_kind) -> None:
    kind, tmpdir = socket_kind

    async def main() -> None:
        listen_on, connect_to = _endpoints(kind, tmpdir)
        echo = Echo()
        server = await pbfast.serve(echo, listen_on)
        roots = [await pbfast.connect(connect_to(server), timeout=5) for _ in range(2)]
        assert len(server.brokers) == 2
        pending = roots[0].callRemote("wait")
        await eventually(lambda: echo.started == 1)
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)
        with pytest.raises(pbfast.PBConnectionLost):
            await asyncio.wait_for(pending, 5)
        for root in roots:
            await asyncio.wait_for(asyncio.shield(root.broker.closed), 5)
            assert root.broker.disconnected
            with pytest.raises(pbfast.DeadReferenceError):
                await root.callRemote("echo", 1)
        # No longer listening.
        with pytest.raises(OSError):
            await pbfast.connect(connect_to(server), timeout=5)
        echo.gate.set()
        await settle()

    run(main())


def test_server_and_connect_as_context_managers(run, socket_kind) -> None:
    kind, tmpdir = socket_kind

    async def main() -> None:
        listen_on, connect_to = _endpoints(kind, tmpdir)
        async with await pbfast.serve(Echo(), listen_on) as server:
            async with pbfast.connect(connect_to(server), timeout=5) as root:
                assert await root.callRemote("echo", "hi") == "hi"
                broker = root.broker
                assert not broker.disconnected
            assert broker.disconnected
            await eventually(lambda: not server.brokers)
            async with pbfast.connect(connect_to(server)) as root2:
                assert await root2.callRemote("echo", 2) == 2
        assert root2.broker.disconnected

    run(main())


def test_connect_refused(run) -> None:
    async def main() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with pytest.raises(ConnectionRefusedError):
            await pbfast.connect(f"tcp:host=127.0.0.1:port={port}", timeout=5)

    run(main())


def test_connect_timeout_on_a_silent_server(run) -> None:
    class Silent(asyncio.Protocol):
        def __init__(self) -> None:
            self.lost = asyncio.get_running_loop().create_future()

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            accepted.append(self)

        def connection_lost(self, exc: Exception | None) -> None:
            if not self.lost.done():
                self.lost.set_result(None)

    accepted: list[Silent] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            started = loop.time()
            with pytest.raises(TimeoutError):
                await pbfast.connect(f"tcp:host=127.0.0.1:port={port}", timeout=0.5)
            assert 0.4 <= loop.time() - started < 3
            assert len(accepted) == 1
            # pbfast dropped its end: the silent server sees the connection go.
            await asyncio.wait_for(accepted[0].lost, 5)
        finally:
            for proto in accepted:
                proto.transport.close()
            server.close()
            await server.wait_closed()
        await settle()

    run(main())


def test_unknown_options_and_bad_roots(run, sockdir) -> None:
    async def main() -> None:
        with pytest.raises(TypeError, match="bogus"):
            pbfast.connect("tcp:host=127.0.0.1:port=1", bogus=1)
        with pytest.raises(TypeError, match="bogus"):
            await pbfast.serve(Echo(), "tcp:port=0:interface=127.0.0.1", bogus=1)
        with pytest.raises(TypeError, match="bogus"):
            await pbfast.testing.connected_pair(Echo(), bogus=1)
        with pytest.raises(TypeError):
            await pbfast.serve(object(), "tcp:port=0:interface=127.0.0.1")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await pbfast.serve(lambda: None, f"unix:address={sockdir}/s")  # type: ignore[arg-type]

    run(main())


# --------------------------------------------------------------------------------------------
# pbfast.run
# --------------------------------------------------------------------------------------------


def test_pbfast_run_returns_the_value() -> None:
    async def main() -> tuple[int, str]:
        await asyncio.sleep(0)
        return 42, type(asyncio.get_running_loop()).__module__

    value, loop_module = pbfast.run(main())
    assert value == 42
    try:
        import uvloop  # noqa: F401
    except ImportError:
        assert loop_module.startswith("asyncio")
    else:
        assert loop_module.startswith("uvloop")


def test_pbfast_run_serves_and_connects() -> None:
    async def main() -> Any:
        async with await pbfast.serve(Echo(), "tcp:port=0:interface=127.0.0.1") as server:
            async with pbfast.connect(f"tcp:host=127.0.0.1:port={server.port}", timeout=5) as root:
                return await root.callRemote("echo", {"ok": (1, 2)})

    assert pbfast.run(main()) == {"ok": (1, 2)}
    with pytest.raises(pbfast.RemoteError):
        pbfast.run(_fails())


async def _fails() -> None:
    root, server_broker = await pbfast.testing.connected_pair(Echo())
    try:
        await root.callRemote("fail")
    finally:
        await root.broker.close()
        await server_broker.close()


# --------------------------------------------------------------------------------------------
# The session's hot path and the broker answer alike (PB's encoder is stateless; a Tub's
# numbers its opens, so its bytes depend on what went before: see test_wires.py's
# test_calls_run_in_order_on_both_paths for the Tub's two paths)
# --------------------------------------------------------------------------------------------


class BothPaths(pbfast.Root):
    def remote_plain(self, x: Any) -> Any:  # answered inside the decoder's feed
        return x

    async def remote_later(self, x: Any) -> Any:  # answered by the broker, after the await
        return x


def test_fast_and_broker_answers_are_the_same_bytes(run) -> None:
    """Both paths encode answers with one function: the bytes match the codec's
    ``PbEncoder.answer``."""

    async def main() -> None:
        root, server = await pbfast.testing.connected_pair(BothPaths())
        written: list[bytes] = []
        write = server.transport.write
        server.transport.write = lambda data: (written.append(bytes(data)), write(data))  # type: ignore[method-assign]
        value = {"a": [1, 2.5, "x", b"y", None, (True, -(2**70))]}
        encoder = _core.PbEncoder("pb")
        try:
            for request_id, method in enumerate(["plain", "later"], start=1):
                written.clear()
                assert await root.callRemote(method, value) == value
                assert b"".join(written) == encoder.answer(request_id, value), method
        finally:
            await root.broker.close()
            await server.close()

    run(main())


def test_calls_over_tls(run, tmp_path) -> None:
    cert, key = pbfast.endpoints.self_signed_certificate("localhost")
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    server_endpoint = (
        f"ssl:port=0:interface=127.0.0.1:privateKey={tmp_path / 'key.pem'}:certKey={tmp_path / 'cert.pem'}"
    )

    async def main() -> None:
        async with await pbfast.serve(Echo(), server_endpoint) as server:
            client = (
                f"ssl:host=127.0.0.1:port={server.port}:caCerts={tmp_path / 'cert.pem'}:hostname=localhost"
            )
            async with pbfast.connect(client) as root:
                assert await root.callRemote("echo", [1, "two"]) == [1, "two"]
                child = await root.callRemote("child")
                assert await child.callRemote("inc") == 1

    run(main())
