"""pbfast.endpoints: parsing Twisted-style endpoint strings, and listening/connecting with them.

Network use is limited to 127.0.0.1, ::1 and unix sockets in a temporary directory. Tests that
run an event loop are marked ``event_loop`` and honour ``--loop`` (asyncio or uvloop).
"""

from __future__ import annotations

import asyncio
import datetime
import errno
import ipaddress
import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from pbfast import endpoints
from pbfast.endpoints import (
    ClientEndpoint,
    Listener,
    ServerEndpoint,
    connect,
    listen,
    parse_client,
    parse_server,
    register_client,
    register_server,
    self_signed_certificate,
)


def run(coro: Coroutine[Any, Any, Any], loop_name: str) -> Any:
    """Run ``coro`` to completion on a fresh loop of the selected kind."""
    if loop_name == "asyncio":
        return asyncio.run(coro)
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


# -- protocols -----------------------------------------------------------------------------------


class Tracker:
    """Makes server protocols and remembers them, so a test can wait until all are closed."""

    def __init__(self, echo: bool = True) -> None:
        self.echo = echo
        self.closed: list[asyncio.Future[None]] = []

    def __call__(self) -> asyncio.Protocol:
        return ServerProtocol(self)

    async def wait(self) -> None:
        async with asyncio.timeout(5):
            await asyncio.gather(*self.closed)


class ServerProtocol(asyncio.Protocol):
    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.done = asyncio.get_running_loop().create_future()
        self.tracker.closed.append(self.done)

    def data_received(self, data: bytes) -> None:
        if self.tracker.echo:
            self.transport.write(data)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.done.set_result(None)


class ClientProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.data = bytearray()
        self.wanted = 0
        self.enough = loop.create_future()
        self.closed = loop.create_future()

    def data_received(self, data: bytes) -> None:
        self.data += data
        if len(self.data) >= self.wanted and not self.enough.done():
            self.enough.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set_result(None)


async def roundtrip(description: str, payload: bytes = b"ping") -> tuple[bytes, dict[str, Any]]:
    """Connect, send ``payload``, read as many bytes back, close; returns (echo, extra info)."""
    transport, protocol = await connect(description, ClientProtocol)
    assert isinstance(protocol, ClientProtocol)
    try:
        protocol.wanted = len(payload)
        transport.write(payload)
        async with asyncio.timeout(5):
            await protocol.enough
        info = {
            name: transport.get_extra_info(name) for name in ("peername", "peercert", "socket", "sockname")
        }
        nodelay = None
        sock = info["socket"]
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            nodelay = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        info["nodelay"] = nodelay
    finally:
        transport.close()
        async with asyncio.timeout(5):
            await protocol.closed
    return bytes(protocol.data), info


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def sockdir(tmp_path: Path) -> Iterator[Path]:
    """A directory short enough for unix socket paths (about 100 bytes at most)."""
    if len(str(tmp_path)) < 70:
        yield tmp_path
        return
    d = tempfile.mkdtemp(dir="/tmp", prefix="pbf")
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Paths of a self-signed localhost certificate and key, separately and combined, plus a
    directory of CA files and an unrelated certificate."""
    d = tmp_path_factory.mktemp("certs")
    cert, key = self_signed_certificate()
    other_cert, _ = self_signed_certificate()
    paths = {
        "cert": d / "cert.pem",
        "key": d / "key.pem",
        "combined": d / "combined.pem",
        "other": d / "other.pem",
        "cadir": d / "cadir",
    }
    paths["cert"].write_bytes(cert)
    paths["key"].write_bytes(key)
    paths["combined"].write_bytes(cert + key)
    paths["other"].write_bytes(other_cert)
    paths["cadir"].mkdir()
    (paths["cadir"] / "server.pem").write_bytes(cert)
    (paths["cadir"] / "README").write_text("not a certificate")
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made by the test are undone afterwards."""
    monkeypatch.setattr(endpoints, "_SERVER_TYPES", dict(endpoints._SERVER_TYPES))
    monkeypatch.setattr(endpoints, "_CLIENT_TYPES", dict(endpoints._CLIENT_TYPES))


def ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


# -- parsing -------------------------------------------------------------------------------------


def test_parse_tcp_server_positional_and_defaults() -> None:
    ep = parse_server("tcp:8800")
    assert isinstance(ep, ServerEndpoint)
    assert (ep.port, ep.interface, ep.backlog) == (8800, "0.0.0.0", 1024)  # type: ignore[attr-defined]
    ep = parse_server("tcp:0:127.0.0.1:7")
    assert (ep.port, ep.interface, ep.backlog) == (0, "127.0.0.1", 7)  # type: ignore[attr-defined]


def test_parse_tcp_server_keywords() -> None:
    ep = parse_server("tcp:backlog=5:interface=127.0.0.1:port=8800")
    assert (ep.port, ep.interface, ep.backlog) == (8800, "127.0.0.1", 5)  # type: ignore[attr-defined]
    ep = parse_server("tcp:port=1:interface=")  # empty interface: all IPv4 addresses
    assert ep.interface == "0.0.0.0"  # type: ignore[attr-defined]


def test_parse_tcp6_server_escaped_colons() -> None:
    ep = parse_server(r"tcp6:port=0:interface=\:\:1")
    assert (ep.port, ep.interface, ep.family) == (0, "::1", socket.AF_INET6)  # type: ignore[attr-defined]
    assert parse_server("tcp6:8800").interface == "::"  # type: ignore[attr-defined]


def test_parse_escapes_and_equals_in_values() -> None:
    assert parse_server(r"unix:/tmp/a\:b").path == "/tmp/a:b"  # type: ignore[attr-defined]
    assert parse_server(r"unix:/tmp/a\\b").path == "/tmp/a\\b"  # type: ignore[attr-defined]
    assert parse_client("unix:path=/tmp/a=b=c").path == "/tmp/a=b=c"  # type: ignore[attr-defined]
    # An escaped "=" in the first field part does not make it a key.
    assert parse_client(r"unix:/tmp/x\=y").path == "/tmp/x=y"  # type: ignore[attr-defined]


def test_parse_unix_server() -> None:
    ep = parse_server("unix:/run/app.sock")
    assert (ep.path, ep.mode, ep.backlog, ep.lockfile) == ("/run/app.sock", 0o666, 1024, True)  # type: ignore[attr-defined]
    ep = parse_server("unix:address=/run/app.sock:mode=0o600:backlog=3:lockfile=0")
    assert (ep.path, ep.mode, ep.backlog, ep.lockfile) == ("/run/app.sock", 0o600, 3, False)  # type: ignore[attr-defined]
    assert parse_server("unix:/x:660").mode == 0o660  # type: ignore[attr-defined]


def test_parse_ssl_server() -> None:
    ep = parse_server("ssl:443:privateKey=server.pem")
    assert (ep.port, ep.private_key, ep.cert_key) == (443, "server.pem", "server.pem")  # type: ignore[attr-defined]
    ep = parse_server(
        "ssl:port=443:privateKey=k.pem:certKey=c.pem:extraCertChain=ch.pem:interface=127.0.0.1:backlog=9"
    )
    assert (ep.private_key, ep.cert_key, ep.extra_cert_chain) == ("k.pem", "c.pem", "ch.pem")  # type: ignore[attr-defined]
    assert (ep.interface, ep.backlog) == ("127.0.0.1", 9)  # type: ignore[attr-defined]


def test_parse_systemd_server() -> None:
    ep = parse_server("systemd:domain=INET6:index=2")
    assert (ep.domain, ep.index) == ("INET6", 2)  # type: ignore[attr-defined]
    assert parse_server("systemd:UNIX:0").domain == "UNIX"  # type: ignore[attr-defined]


def test_parse_clients() -> None:
    ep = parse_client("tcp:example.com:8800")
    assert isinstance(ep, ClientEndpoint)
    assert (ep.host, ep.port, ep.timeout, ep.bind_address, ep.tls) == ("example.com", 8800, 30.0, None, None)  # type: ignore[attr-defined]
    ep = parse_client("tcp:host=127.0.0.1:port=1:timeout=2.5:bindAddress=127.0.0.1")
    assert (ep.host, ep.port, ep.timeout, ep.bind_address) == ("127.0.0.1", 1, 2.5, "127.0.0.1")  # type: ignore[attr-defined]
    ep = parse_client(r"tcp6:\:\:1:80")
    assert (ep.host, ep.family) == ("::1", socket.AF_INET6)  # type: ignore[attr-defined]
    ep = parse_client("unix:path=/run/app.sock:timeout=1:checkPID=1")
    assert (ep.path, ep.timeout) == ("/run/app.sock", 1.0)  # type: ignore[attr-defined]
    ep = parse_client("ssl:h:443:caCerts=ca.pem:certKey=c.pem:privateKey=k.pem:hostname=n")
    tls = ep.tls  # type: ignore[attr-defined]
    assert (tls.ca_file, tls.ca_dir, tls.cert, tls.key, tls.hostname) == (
        "ca.pem",
        None,
        "c.pem",
        "k.pem",
        "n",
    )
    ep = parse_client("tls:example.com:443")
    assert ep.tls == endpoints._TLSClientOptions()  # type: ignore[attr-defined]


def test_parse_tls_client_trust_roots_file_or_dir(tmp_path: Path) -> None:
    ep = parse_client(f"tls:h:443:trustRoots={tmp_path}:certificate=c.pem:privateKey=k.pem")
    tls = ep.tls  # type: ignore[attr-defined]
    assert (tls.ca_file, tls.ca_dir, tls.cert, tls.key) == (None, str(tmp_path), "c.pem", "k.pem")
    ep = parse_client("tls:h:443:trustRoots=ca.pem")
    assert (ep.tls.ca_file, ep.tls.ca_dir) == ("ca.pem", None)  # type: ignore[attr-defined]


BAD_SERVERS = [
    ("", ["empty"]),
    ("tcp:port=abc", ["port", "'abc'"]),
    ("tcp:70000", ["port", "'70000'"]),
    ("tcp:port=-1", ["port", "'-1'"]),
    ("tcp: 80", ["port", "' 80'"]),
    ("bogus:1", ["'bogus'", "tcp", "unix", "ssl", "systemd"]),
    ("tcp:port=1:colour=red", ["'colour'", "interface"]),
    ("tcp", ["'port'", "requires"]),
    ("tcp:1:0.0.0.0:5:extra", ["positional", "'extra'"]),
    ("tcp:port=1:port=2", ["'port'", "twice"]),
    ("tcp:1:port=2", ["'port'", "positional"]),
    ("tcp:port=1:backlog=x", ["backlog", "'x'"]),
    ("tcp:80\\", ["backslash"]),
    ("tcp::80", ["field 1", "empty"]),
    ("tcp:80:", ["field 2", "empty"]),
    ("tcp:=5", ["empty key"]),
    ("type=tcp:80", ["first field", "'type=tcp'"]),
    (":80", ["first field"]),
    ("unix:/tmp/x:mode=999", ["mode", "'999'"]),
    ("unix:/tmp/x:mode=rw", ["mode", "'rw'"]),
    ("unix:/tmp/x:lockfile=yes", ["lockfile", "'yes'"]),
    ("unix:mode=600", ["'address'"]),
    ("ssl:port=443", ["privateKey"]),
    ("ssl:port=443:privateKey=", ["privateKey", "empty"]),
    ("ssl:443:privateKey=k.pem:sslmethod=TLS", ["sslmethod", "'TLS'", "TLS_METHOD"]),
    ("ssl:443:privateKey=k.pem:sslmethod=SSLv3_METHOD", ["SSLv3_METHOD", "broken", "TLS_METHOD"]),
    ("ssl:443:privateKey=k.pem:dhParameters=", ["dhParameters", "empty"]),
    ("systemd:domain=IPX:index=0", ["domain", "'IPX'"]),
    ("systemd:domain=INET", ["'index'"]),
    ("systemd:domain=INET:index=-1", ["index", "'-1'"]),
]


@pytest.mark.parametrize(("description", "fragments"), BAD_SERVERS)
def test_malformed_server_descriptions(description: str, fragments: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        parse_server(description)
    for fragment in fragments:
        assert fragment in str(info.value)


BAD_CLIENTS = [
    ("tcp:host=h", ["'port'"]),
    ("tcp:port=80", ["'host'"]),
    ("tcp:h:0", ["port", "'0'"]),
    ("tcp:h:http", ["port", "'http'"]),
    ("tcp:h:80:timeout=0", ["timeout", "'0'"]),
    ("tcp:h:80:timeout=nan", ["timeout", "'nan'"]),
    ("tcp:h:80:timeout=soon", ["timeout", "'soon'"]),
    ("tcp:h:80:interface=x", ["'interface'"]),
    ("tcp:h:80:bindAddress=", ["bindAddress"]),
    ("unix:timeout=1", ["'path'"]),
    ("unix:/x:checkPID=2", ["checkPID", "'2'"]),
    ("ssl:h:443:caCerts=", ["caCerts", "empty"]),
    ("ssl:h:443:trustRoots=ca.pem", ["'trustRoots'", "caCerts"]),
    ("tls:h:443:endpoint=tcp", ["'endpoint'", "trustRoots"]),
    ("tls:h", ["'port'"]),
    ("smoke:signals", ["'smoke'", "tls"]),
]


@pytest.mark.parametrize(("description", "fragments"), BAD_CLIENTS)
def test_malformed_client_descriptions(description: str, fragments: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        parse_client(description)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_description_must_be_a_string() -> None:
    with pytest.raises(TypeError):
        parse_server(b"tcp:80")  # type: ignore[arg-type]


# -- tcp -----------------------------------------------------------------------------------------


@pytest.mark.event_loop
def test_tcp_echo_and_port_zero(loop_name: str) -> None:
    async def main() -> None:
        tracker = Tracker()
        listener = await listen("tcp:port=0:interface=127.0.0.1", tracker)
        try:
            assert isinstance(listener, Listener)
            assert listener.port is not None and listener.port > 0
            assert listener.address == ("127.0.0.1", listener.port)
            assert listener.sockets and listener.is_serving()
            echo, info = await roundtrip(f"tcp:127.0.0.1:{listener.port}", b"hello")
            assert echo == b"hello"
            assert info["nodelay"]
            echo, _ = await roundtrip(f"tcp:host=127.0.0.1:port={listener.port}:bindAddress=127.0.0.1")
            assert echo == b"ping"
            await tracker.wait()
        finally:
            listener.close()
            await listener.wait_closed()
        assert not listener.is_serving()
        assert listener.port is not None  # still reported after close

    run(main(), loop_name)


@pytest.mark.event_loop
def test_listener_is_an_async_context_manager(loop_name: str) -> None:
    async def main() -> None:
        tracker = Tracker()
        async with await listen("tcp:0:127.0.0.1", tracker) as listener:
            assert listener.is_serving()
            port = listener.port
            assert (await roundtrip(f"tcp:127.0.0.1:{port}"))[0] == b"ping"
            await tracker.wait()
        assert not listener.is_serving()
        description = f"tcp:127.0.0.1:{port}"
        with pytest.raises(ConnectionRefusedError, match=description):
            await connect(description, ClientProtocol)

    run(main(), loop_name)


@pytest.mark.event_loop
def test_port_in_use_is_an_oserror_naming_the_description(loop_name: str) -> None:
    async def main() -> None:
        async with await listen("tcp:0:127.0.0.1", Tracker()) as first:
            description = f"tcp:port={first.port}:interface=127.0.0.1"
            with pytest.raises(OSError) as info:
                await listen(description, Tracker())
            assert info.value.errno == errno.EADDRINUSE
            assert repr(description) in str(info.value)

    run(main(), loop_name)


@pytest.mark.event_loop
@pytest.mark.skipif(not ipv6_loopback(), reason="IPv6 loopback (::1) unavailable")
def test_tcp6_echo(loop_name: str) -> None:
    async def main() -> None:
        tracker = Tracker()
        async with await listen(r"tcp6:port=0:interface=\:\:1", tracker) as listener:
            assert listener.address == ("::1", listener.port)
            echo, info = await roundtrip(rf"tcp6:host=\:\:1:port={listener.port}")
            assert echo == b"ping"
            assert info["socket"].family == socket.AF_INET6
            assert info["nodelay"]
            await tracker.wait()

    run(main(), loop_name)


# -- unix ----------------------------------------------------------------------------------------


@pytest.mark.event_loop
def test_unix_echo_mode_and_cleanup(loop_name: str, sockdir: Path) -> None:
    path = str(sockdir / "s.sock")

    async def main() -> None:
        tracker = Tracker()
        async with await listen(f"unix:address={path}:mode=600", tracker) as listener:
            assert listener.port is None
            assert listener.address == path
            st = os.stat(path)
            assert stat.S_ISSOCK(st.st_mode)
            assert stat.S_IMODE(st.st_mode) == 0o600
            assert (await roundtrip(f"unix:{path}", b"over unix"))[0] == b"over unix"
            assert (await roundtrip(f"unix:path={path}:timeout=5"))[0] == b"ping"
            await tracker.wait()
        assert not os.path.exists(path)

    run(main(), loop_name)


@pytest.mark.event_loop
def test_unix_default_mode_and_stale_socket(loop_name: str, sockdir: Path) -> None:
    path = str(sockdir / "stale.sock")
    # A socket file left behind by a server that is gone: bound, never listening.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(path)
    assert os.path.exists(path)

    async def main() -> None:
        tracker = Tracker()
        async with await listen(f"unix:{path}", tracker):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o666
            assert (await roundtrip(f"unix:{path}"))[0] == b"ping"
            await tracker.wait()

    run(main(), loop_name)


@pytest.mark.event_loop
def test_unix_path_in_use_or_not_a_socket(loop_name: str, sockdir: Path) -> None:
    path = str(sockdir / "busy.sock")
    plain = sockdir / "plain"
    plain.write_text("keep me")

    async def main() -> None:
        tracker = Tracker()
        async with await listen(f"unix:{path}", tracker):
            with pytest.raises(OSError) as info:
                await listen(f"unix:{path}", Tracker())
            assert info.value.errno == errno.EADDRINUSE
            assert f"unix:{path}" in str(info.value)
            # The running server is untouched.
            assert (await roundtrip(f"unix:{path}"))[0] == b"ping"
            await tracker.wait()
        with pytest.raises(OSError) as info:
            await listen(f"unix:{plain}", Tracker())
        assert info.value.errno == errno.EEXIST

    run(main(), loop_name)
    assert plain.read_text() == "keep me"


@pytest.mark.event_loop
def test_unix_lockfile(loop_name: str, sockdir: Path) -> None:
    """``lockfile=1`` (the default, as Twisted's): ``PATH.lock`` names the listening process,
    a second server is refused by it, a lock left by a process that is gone is taken over, and
    closing removes it; ``lockfile=0`` makes none."""
    path = str(sockdir / "locked.sock")
    lock = path + ".lock"

    async def main() -> None:
        async with await listen(f"unix:{path}", Tracker()):
            assert os.readlink(lock) == str(os.getpid())
            with pytest.raises(OSError) as info:
                await listen(f"unix:{path}", Tracker())
            assert info.value.errno == errno.EADDRINUSE
            assert f"locked by process {os.getpid()}" in str(info.value)
            assert (await roundtrip(f"unix:{path}"))[0] == b"ping"
        assert not os.path.lexists(lock) and not os.path.exists(path)
        # A lock (and socket) left by a process that has exited.
        gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
        os.symlink(gone.stdout.decode().strip(), lock)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.bind(path)
        async with await listen(f"unix:{path}", Tracker()):
            assert os.readlink(lock) == str(os.getpid())
            assert (await roundtrip(f"unix:{path}"))[0] == b"ping"
        assert not os.path.lexists(lock)
        async with await listen(f"unix:{path}:lockfile=0", Tracker()):
            assert not os.path.lexists(lock)

    run(main(), loop_name)


# -- ssl / tls -----------------------------------------------------------------------------------


def test_self_signed_certificate() -> None:
    cert_pem, key_pem = self_signed_certificate()
    assert b"PRIVATE KEY" in key_pem
    cert = x509.load_pem_x509_certificate(cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=365) <= lifetime <= datetime.timedelta(days=366)
    assert cert.not_valid_before_utc <= datetime.datetime.now(datetime.UTC)

    other = x509.load_pem_x509_certificate(self_signed_certificate("192.0.2.7")[0])
    san = other.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.0.2.7")]
    assert san.get_values_for_type(x509.DNSName) == []


@pytest.mark.event_loop
def test_ssl_echo_with_verified_clients(loop_name: str, certs: dict[str, str]) -> None:
    async def main() -> None:
        tracker = Tracker()
        server = f"ssl:port=0:interface=127.0.0.1:privateKey={certs['key']}:certKey={certs['cert']}"
        async with await listen(server, tracker) as listener:
            port = listener.port
            clients = [
                f"ssl:127.0.0.1:{port}:caCerts={certs['cert']}",
                f"ssl:host=localhost:port={port}:caCerts={certs['cert']}",
                f"ssl:127.0.0.1:{port}:caCertsDir={certs['cadir']}:hostname=localhost",
                f"ssl:127.0.0.1:{port}:caCerts={certs['cert']}:certKey={certs['cert']}:privateKey={certs['key']}",
                f"tls:127.0.0.1:{port}:trustRoots={certs['cert']}",
                f"tls:host=127.0.0.1:port={port}:trustRoots={certs['cadir']}:certificate={certs['combined']}",
            ]
            for client in clients:
                echo, info = await roundtrip(client, b"secret")
                assert echo == b"secret", client
                assert info["peercert"] is not None
                assert info["nodelay"]
            await tracker.wait()

    run(main(), loop_name)


@pytest.mark.event_loop
def test_ssl_server_with_combined_pem_and_extra_chain(loop_name: str, certs: dict[str, str]) -> None:
    async def main() -> None:
        tracker = Tracker()
        server = f"ssl:0:{certs['combined']}:interface=127.0.0.1:extraCertChain={certs['other']}"
        async with await listen(server, tracker) as listener:
            client = f"tls:127.0.0.1:{listener.port}:trustRoots={certs['cert']}"
            assert (await roundtrip(client))[0] == b"ping"
            await tracker.wait()

    run(main(), loop_name)


@pytest.mark.event_loop
def test_ssl_server_method_and_dh_parameters(loop_name: str, certs: dict[str, str]) -> None:
    """Twisted's ``sslmethod`` pins the TLS version (the endpoints howto's example, with a method
    that is not broken); ``dhParameters`` loads a Diffie-Hellman group."""
    dh = Path(__file__).parent / "vectors" / "tls" / "ffdhe3072.pem"

    async def main() -> None:
        for method, version in [("TLSv1_2_METHOD", "TLSv1.2"), ("TLS_METHOD", "TLSv1.3")]:
            server = (
                f"ssl:0:privateKey={certs['key']}:certKey={certs['cert']}:interface=127.0.0.1"
                f":extraCertChain={certs['other']}:sslmethod={method}:dhParameters={dh}"
            )
            async with await listen(server, Tracker()) as listener:
                transport, _ = await connect(
                    f"ssl:127.0.0.1:{listener.port}:caCerts={certs['cert']}", ClientProtocol
                )
                try:
                    assert transport.get_extra_info("ssl_object").version() == version, method
                finally:
                    transport.close()

    run(main(), loop_name)


@pytest.mark.event_loop
def test_ssl_client_rejects_wrong_ca_and_wrong_name(loop_name: str, certs: dict[str, str]) -> None:
    async def main() -> None:
        tracker = Tracker()
        server = f"ssl:port=0:interface=127.0.0.1:privateKey={certs['combined']}"
        async with await listen(server, tracker) as listener:
            port = listener.port
            for client in (
                f"ssl:127.0.0.1:{port}:caCerts={certs['other']}",
                f"tls:127.0.0.1:{port}:trustRoots={certs['other']}",
                f"ssl:127.0.0.1:{port}:caCerts={certs['cert']}:hostname=wrong.example",
            ):
                with pytest.raises(ssl.SSLCertVerificationError):
                    await connect(client, ClientProtocol)
            # The server survives failed handshakes.
            assert (await roundtrip(f"ssl:127.0.0.1:{port}:caCerts={certs['cert']}"))[0] == b"ping"
            await tracker.wait()

    run(main(), loop_name)


@pytest.mark.event_loop
def test_ssl_missing_files_and_empty_ca_dir(loop_name: str, tmp_path: Path, certs: dict[str, str]) -> None:
    missing = str(tmp_path / "missing.pem")

    async def main() -> None:
        description = f"ssl:port=0:interface=127.0.0.1:privateKey={missing}"
        with pytest.raises(FileNotFoundError) as info:
            await listen(description, Tracker())
        assert description in str(info.value)
        with pytest.raises(ssl.SSLError, match="cannot load certificate"):
            await listen(f"ssl:0:{certs['other']}:interface=127.0.0.1", Tracker())
        # A CA directory without certificates must not fall back to the system trust store.
        with pytest.raises(ValueError, match="no .pem file"):
            await connect(f"ssl:127.0.0.1:1:caCertsDir={tmp_path}", ClientProtocol)

    run(main(), loop_name)


@pytest.mark.event_loop
def test_connect_timeout(loop_name: str, certs: dict[str, str]) -> None:
    async def main() -> None:
        tracker = Tracker(echo=False)  # accepts, then never answers the TLS handshake
        async with await listen("tcp:0:127.0.0.1", tracker) as listener:
            description = f"ssl:127.0.0.1:{listener.port}:caCerts={certs['cert']}:timeout=0.2"
            with pytest.raises(TimeoutError, match="timed out"):
                await connect(description, ClientProtocol)
            await tracker.wait()

    run(main(), loop_name)


# -- systemd -------------------------------------------------------------------------------------


def inherit(monkeypatch: pytest.MonkeyPatch, sock: socket.socket, index: int) -> int:
    """Hand ``sock`` over the way systemd does: as fd SD_LISTEN_FDS_START + index."""
    fd = os.dup(sock.fileno())
    sock.close()
    monkeypatch.setattr(endpoints, "SD_LISTEN_FDS_START", fd - index)
    monkeypatch.setenv("LISTEN_FDS", str(index + 1))
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    return fd


@pytest.mark.event_loop
def test_systemd_inet(loop_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fd = inherit(monkeypatch, socket.create_server(("127.0.0.1", 0)), index=1)

    async def main() -> None:
        tracker = Tracker()
        async with await listen("systemd:domain=INET:index=1", tracker) as listener:
            assert listener.address == ("127.0.0.1", listener.port)
            assert (await roundtrip(f"tcp:127.0.0.1:{listener.port}"))[0] == b"ping"
            await tracker.wait()

    try:
        run(main(), loop_name)
    except BaseException:
        os.close(fd)
        raise
    with pytest.raises(OSError):  # the listener owned the fd and closed it
        os.fstat(fd)


@pytest.mark.event_loop
def test_systemd_unix(loop_name: str, monkeypatch: pytest.MonkeyPatch, sockdir: Path) -> None:
    path = str(sockdir / "sd.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen()
    fd = inherit(monkeypatch, sock, index=0)

    async def main() -> None:
        tracker = Tracker()
        async with await listen("systemd:UNIX:0", tracker) as listener:
            assert listener.port is None
            assert listener.address == path
            assert (await roundtrip(f"unix:{path}"))[0] == b"ping"
            await tracker.wait()

    try:
        run(main(), loop_name)
    except BaseException:
        os.close(fd)
        raise


@pytest.mark.event_loop
def test_systemd_errors(loop_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fd = inherit(monkeypatch, socket.create_server(("127.0.0.1", 0)), index=0)

    async def expect(description: str, fragment: str) -> None:
        with pytest.raises(ValueError, match=fragment):
            await listen(description, Tracker())

    async def main() -> None:
        await expect("systemd:domain=INET:index=1", "index 1 out of range")
        await expect("systemd:domain=UNIX:index=0", "not AF_UNIX")
        monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
        await expect("systemd:domain=INET:index=0", "LISTEN_PID")
        monkeypatch.delenv("LISTEN_PID")
        monkeypatch.delenv("LISTEN_FDS")
        await expect("systemd:domain=INET:index=0", "LISTEN_FDS is not set")

    try:
        run(main(), loop_name)
        os.fstat(fd)  # a refused hand-over leaves the inherited fd open
    finally:
        os.close(fd)


# -- registry ------------------------------------------------------------------------------------


class LoopbackServer(ServerEndpoint):
    def __init__(self, port: int) -> None:
        self.port = port

    async def listen(self, protocol_factory: Any) -> Listener:
        loop = asyncio.get_running_loop()
        return Listener(await loop.create_server(protocol_factory, "127.0.0.1", self.port))


class LoopbackClient(ClientEndpoint):
    def __init__(self, port: int) -> None:
        self.port = port

    async def connect(self, protocol_factory: Any) -> Any:
        return await parse_client(f"tcp:127.0.0.1:{self.port}").connect(protocol_factory)


def loopback_port(kwargs: dict[str, str], args: list[str]) -> int:
    port = kwargs.get("port", args[0] if args else "0")
    if not port.isdigit():
        raise ValueError(f"port must be a number, got {port!r}")
    return int(port)


@pytest.mark.event_loop
@pytest.mark.usefixtures("registry")
def test_registry_custom_type(loop_name: str) -> None:
    register_server("loopback", lambda kwargs, args: LoopbackServer(loopback_port(kwargs, args)))
    register_client("loopback", lambda kwargs, args: LoopbackClient(loopback_port(kwargs, args)))
    with pytest.raises(ValueError, match="'loopback:x'.*got 'x'"):
        parse_server("loopback:x")
    with pytest.raises(ValueError, match="loopback"):  # listed among the known types
        parse_client("nope:1")

    async def main() -> None:
        tracker = Tracker()
        async with await listen("loopback:port=0", tracker) as listener:
            assert (await roundtrip(f"loopback:{listener.port}"))[0] == b"ping"
            await tracker.wait()

    run(main(), loop_name)


@pytest.mark.usefixtures("registry")
def test_registry_rejects_bad_names_and_factories() -> None:
    for name in ("", "a:b", "a=b", "a\\b"):
        with pytest.raises(ValueError):
            register_server(name, lambda kwargs, args: LoopbackServer(0))
    with pytest.raises(TypeError):
        register_client("x", "not callable")  # type: ignore[arg-type]
