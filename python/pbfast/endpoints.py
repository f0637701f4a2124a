"""Twisted-style endpoint strings for asyncio.

A description such as ``"tcp:8800"`` or ``"ssl:host=example.com:port=8800:caCerts=ca.pem"``
names a transport and its parameters; `listen` and `connect` turn it into a listening
server or a client connection on the running event loop (plain asyncio or uvloop).

Syntax (Twisted's): fields are separated by ``:``; a backslash makes the next character literal
(``\\:`` is a colon, ``\\\\`` a backslash); the first field is the endpoint type; every other
field is either positional or ``key=value`` (only the first unescaped ``=`` separates, so values
may contain ``=``). Positional fields fill the type's positional parameters in order.

Server types:

    tcp:PORT  tcp:port=P:interface=ADDR:backlog=N          (interface default 0.0.0.0,
                                                           backlog default 1024)
    tcp6:port=P:interface=ADDR:backlog=N                   (interface default ::)
    unix:PATH  unix:address=PATH:mode=666:backlog=N:lockfile=0|1   (lockfile default 1: PATH.lock)
    ssl:port=P:privateKey=KEY.pem:certKey=CERT.pem:extraCertChain=CHAIN.pem:interface=ADDR:backlog=N
        :sslmethod=TLS_METHOD|TLSv1_2_METHOD|...:dhParameters=DH.pem
    systemd:domain=INET|INET6|UNIX:index=N                 (a socket-activated listening socket)

Client types:

    tcp:HOST:PORT  tcp:host=H:port=P:timeout=SECONDS:bindAddress=ADDR
    tcp6:host=H:port=P:timeout=SECONDS:bindAddress=ADDR
    unix:PATH  unix:path=PATH:timeout=SECONDS:checkPID=0|1
    ssl:host=H:port=P:caCerts=CA.pem:caCertsDir=DIR:certKey=CERT.pem:privateKey=KEY.pem:hostname=NAME
    tls:HOST:PORT  tls:host=H:port=P:trustRoots=CA.pem|DIR:certificate=CERT.pem:privateKey=KEY.pem

More types can be added with `register_server` and `register_client`; the built-in
types are registered the same way.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import errno
import math
import os
import re
import socket
import ssl
import stat
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, NamedTuple, TypeVar, cast

__all__ = [
    "ClientEndpoint",
    "Listener",
    "PeerAddress",
    "ServerEndpoint",
    "connect",
    "listen",
    "parse_client",
    "parse_server",
    "register_client",
    "register_server",
    "self_signed_certificate",
]

#: First file descriptor of sockets passed by systemd socket activation (sd_listen_fds(3)).
SD_LISTEN_FDS_START = 3
#: Connections the kernel may queue before we accept them, unless ``backlog=`` says otherwise
#: (Twisted's 50 makes a burst of connections wait for SYN retransmissions; the kernel caps
#: the figure at ``net.core.somaxconn``).
LISTEN_BACKLOG = 1024

_ProtocolFactory = Callable[[], asyncio.BaseProtocol]
_Connection = tuple[asyncio.Transport, asyncio.BaseProtocol]
_P = TypeVar("_P", bound=asyncio.BaseProtocol)


class Listener:
    """A listening server made by `listen`.

    Also an async context manager: ``async with await listen(...) as listener:`` closes the
    server (and waits for `wait_closed`) on exit.

    Args:
        server: the loop's server object (from ``loop.create_server`` and friends).
        on_close: called once, after the server is closed by `close` (for example to
            remove a unix socket file).
    """

    def __init__(self, server: asyncio.AbstractServer, *, on_close: Callable[[], None] | None = None) -> None:
        self._server = server
        self._on_close = on_close
        self._closed = False
        # Read the bound address now: the loop forgets its sockets once the server is closed.
        self._sockets: tuple[Any, ...] = tuple(getattr(server, "sockets", None) or ())
        self._port: int | None = None
        self._address: tuple[str, int] | str | None = None
        if self._sockets:
            sock = self._sockets[0]
            name = sock.getsockname()
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                self._address = (name[0], name[1])
                self._port = name[1]
            else:
                self._address = os.fsdecode(name) if isinstance(name, bytes) else name

    @property
    def server(self) -> asyncio.AbstractServer:
        """The underlying loop server object."""
        return self._server

    @property
    def sockets(self) -> tuple[Any, ...]:
        """The listening sockets (socket-like objects supplied by the loop)."""
        return self._sockets

    @property
    def port(self) -> int | None:
        """The bound TCP port of the first socket (the real one after ``port=0``); None for unix."""
        return self._port

    @property
    def address(self) -> tuple[str, int] | str | None:
        """``(host, port)`` of the first TCP socket, or the path of a unix socket."""
        return self._address

    def is_serving(self) -> bool:
        """True while the server accepts connections."""
        return self._server.is_serving()

    def close(self) -> None:
        """Stop listening. Connections already accepted stay open."""
        self._server.close()
        if not self._closed:
            self._closed = True
            if self._on_close is not None:
                self._on_close()

    async def wait_closed(self) -> None:
        """Wait until the server is closed (on Python 3.12+ also until its connections are)."""
        await self._server.wait_closed()

    async def __aenter__(self) -> Listener:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
        await self.wait_closed()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "listening"
        return f"<Listener {state} on {self._address!r}>"


class ServerEndpoint(abc.ABC):
    """Something that can listen: the result of `parse_server`."""

    port: int | None = None
    """The TCP port it will bind as described (0: a free port the kernel picks, known from the
    `Listener` once listening); None for types that bind no TCP port (``unix``, ``systemd``)."""

    @abc.abstractmethod
    async def listen(self, protocol_factory: _ProtocolFactory) -> Listener:
        """Start listening on the running loop; each connection gets ``protocol_factory()``.

        Raises:
            OSError: the address cannot be bound (in use, permission denied, ...).
        """


class ClientEndpoint(abc.ABC):
    """Something that can connect: the result of `parse_client`."""

    @abc.abstractmethod
    async def connect(self, protocol_factory: _ProtocolFactory) -> _Connection:
        """Connect on the running loop and return ``(transport, protocol)``.

        Raises:
            OSError: the connection failed (refused, unreachable, TLS verification failed as
                `ssl.SSLError`, timed out as `TimeoutError`).
        """


_ServerFactory = Callable[[dict[str, str], list[str]], ServerEndpoint]
_ClientFactory = Callable[[dict[str, str], list[str]], ClientEndpoint]

_SERVER_TYPES: dict[str, _ServerFactory] = {}
_CLIENT_TYPES: dict[str, _ClientFactory] = {}


def _register(types: dict[str, Any], name: str, factory: Callable[..., Any]) -> None:
    if not isinstance(name, str) or not name or any(c in name for c in ":=\\"):
        raise ValueError(f"endpoint type name must be a non-empty string without ':', '=' or '\\': {name!r}")
    if not callable(factory):
        raise TypeError(f"factory for {name!r} must be callable, got {factory!r}")
    types[name] = factory


def register_server(name: str, factory: _ServerFactory) -> None:
    """Make ``name:...`` descriptions usable with `listen` (replacing any earlier ``name``).

    Args:
        name: the endpoint type, the first field of a description.
        factory: called as ``factory(kwargs, args)`` with the ``key=value`` fields and the
            positional fields (unescaped); returns a `ServerEndpoint` or raises
            ValueError naming the bad part.

    Raises:
        ValueError: ``name`` is empty or contains ``:``, ``=`` or a backslash.
        TypeError: ``factory`` is not callable.
    """
    _register(_SERVER_TYPES, name, factory)


def register_client(name: str, factory: _ClientFactory) -> None:
    """Make ``name:...`` descriptions usable with `connect` (replacing any earlier ``name``).

    Args:
        name: the endpoint type, the first field of a description.
        factory: called as ``factory(kwargs, args)``; returns a `ClientEndpoint` or
            raises ValueError naming the bad part.

    Raises:
        ValueError: ``name`` is empty or contains ``:``, ``=`` or a backslash.
        TypeError: ``factory`` is not callable.
    """
    _register(_CLIENT_TYPES, name, factory)


# -- parsing -------------------------------------------------------------------------------------


def _split(description: str) -> tuple[str, dict[str, str], list[str]]:
    """Split a description into its type, keyword fields and positional fields."""
    if not isinstance(description, str):
        raise TypeError(f"endpoint description must be a str, got {type(description).__name__}")
    if not description:
        raise ValueError("empty endpoint description")
    fields: list[tuple[str | None, str]] = []
    buf: list[str] = []
    key: str | None = None
    i = 0
    while i < len(description):
        c = description[i]
        if c == "\\":
            if i + 1 == len(description):
                raise ValueError("trailing backslash: a backslash must escape a following character")
            buf.append(description[i + 1])
            i += 2
            continue
        if c == ":":
            fields.append((key, "".join(buf)))
            buf, key = [], None
        elif c == "=" and key is None:
            key, buf = "".join(buf), []
        else:
            buf.append(c)
        i += 1
    fields.append((key, "".join(buf)))

    type_key, type_name = fields[0]
    if type_key is not None or not type_name:
        raise ValueError(f"the first field must be the endpoint type, got {description.split(':', 1)[0]!r}")
    kwargs: dict[str, str] = {}
    args: list[str] = []
    for n, (k, value) in enumerate(fields[1:], start=1):
        if k is None:
            if not value:
                raise ValueError(f"field {n} is empty")
            args.append(value)
        elif not k:
            raise ValueError(f"field {n} has an empty key: ={value!r}")
        elif k in kwargs:
            raise ValueError(f"parameter {k!r} given twice")
        else:
            kwargs[k] = value
    return type_name, kwargs, args


def parse_server(description: str, *, reuse_port: bool = False) -> ServerEndpoint:
    """Parse a server description without listening.

    Args:
        description: e.g. ``"tcp:8800"`` or ``"unix:/run/app.sock:mode=660"``.
        reuse_port: bind with ``SO_REUSEPORT``, so that several listening sockets (in one
            process or several, of the same user) share the port and the kernel spreads the
            incoming connections among them; for the types that bind a TCP port (``tcp``,
            ``tcp6``, ``ssl``).

    Raises:
        ValueError: malformed description; the message names the bad part (the type, key,
            value or missing parameter). With `reuse_port`: a type that binds no TCP port, or
            a platform without ``SO_REUSEPORT`` (Windows).
    """
    endpoint: ServerEndpoint = _parse(description, _SERVER_TYPES, "server")
    if reuse_port:
        endpoint = _sharing_the_port(endpoint, description)
    return endpoint


def _sharing_the_port(endpoint: ServerEndpoint, description: str) -> ServerEndpoint:
    if not isinstance(endpoint, _TCPServerEndpoint):
        raise ValueError(
            f"reuse_port applies to endpoints that bind a TCP port (tcp, tcp6, ssl), not to {description!r}"
        )
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError(
            f"reuse_port needs the socket option SO_REUSEPORT, which this platform ({sys.platform}) "
            "does not have"
        )
    return replace(endpoint, reuse_port=True)


def parse_client(description: str) -> ClientEndpoint:
    """Parse a client description without connecting.

    Args:
        description: e.g. ``"tcp:127.0.0.1:8800"`` or ``"tls:example.com:443"``.

    Raises:
        ValueError: malformed description; the message names the bad part.
    """
    endpoint: ClientEndpoint = _parse(description, _CLIENT_TYPES, "client")
    return endpoint


def _parse(description: str, types: dict[str, Any], role: str) -> Any:
    name, kwargs, args = _split(description)
    factory = types.get(name)
    if factory is None:
        known = ", ".join(sorted(types))
        raise ValueError(f"unknown {role} endpoint type {name!r} in {description!r}; known types: {known}")
    try:
        return factory(kwargs, args)
    except ValueError as e:
        raise ValueError(f"bad {role} endpoint {description!r}: {e}") from None


def _bind(
    kind: str,
    kwargs: dict[str, str],
    args: list[str],
    positional: Sequence[str],
    keywords: Sequence[str] = (),
    required: Sequence[str] = (),
) -> dict[str, str]:
    """Map positional fields onto parameter names and check names against what ``kind`` takes."""
    allowed = (*positional, *keywords)
    for key in kwargs:
        if key not in allowed:
            raise ValueError(f"unknown parameter {key!r} for {kind}; expected one of: {', '.join(allowed)}")
    if len(args) > len(positional):
        raise ValueError(
            f"{kind} takes at most {len(positional)} positional field(s) ({', '.join(positional)}), "
            f"got {len(args)}; first extra: {args[len(positional)]!r}"
        )
    params = dict(kwargs)
    for name, value in zip(positional, args, strict=False):
        if name in params:
            raise ValueError(f"parameter {name!r} given both as a positional field and as {name}=")
        params[name] = value
    for name in required:
        if name not in params:
            raise ValueError(f"{kind} requires parameter {name!r}")
    return params


_DIGITS = re.compile(r"[0-9]+")


def _int(name: str, value: str, lo: int, hi: int) -> int:
    if not _DIGITS.fullmatch(value) or not lo <= int(value) <= hi:
        raise ValueError(f"{name} must be an integer {lo}-{hi}, got {value!r}")
    return int(value)


def _timeout(value: str) -> float:
    try:
        t = float(value)
    except ValueError:
        t = math.nan
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"timeout must be a positive number of seconds, got {value!r}")
    return t


def _flag(name: str, value: str) -> bool:
    if value not in ("0", "1"):
        raise ValueError(f"{name} must be 0 or 1, got {value!r}")
    return value == "1"


def _path(name: str, value: str | None) -> str | None:
    if value is not None and not value:
        raise ValueError(f"{name} must not be empty")
    return value


def _mode(value: str) -> int:
    try:
        mode = int(value, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o7777:
        raise ValueError(f"mode must be octal permission bits like 666 or 0o600, got {value!r}")
    return mode


# -- error messages ------------------------------------------------------------------------------


def _reraise(e: OSError, what: str, description: str) -> OSError:
    """An OSError like ``e`` (same errno and class) whose message names the description."""
    if isinstance(e, ssl.SSLError):
        return e  # keep verify_code, reason, ... intact
    cls = type(e) if type(e).__module__ in ("builtins", "socket") else OSError
    if e.errno is None:
        return cls(f"cannot {what} {description!r}: {e}")
    if e.filename is not None:
        return cls(e.errno, f"cannot {what} {description!r}: {e.strerror}", e.filename)
    return cls(e.errno, f"cannot {what} {description!r}: {e.strerror}")


async def listen(
    description: str, protocol_factory: _ProtocolFactory, *, reuse_port: bool = False
) -> Listener:
    """Listen on the endpoint ``description`` using the running event loop.

    Args:
        description: a server endpoint string, e.g. ``"tcp:8800"`` or ``"tcp:port=0"``.
        protocol_factory: called once per accepted connection.
        reuse_port: share the port with other listeners that set it too (see `parse_server`).

    Raises:
        ValueError: malformed description (see `parse_server`; with `reuse_port`, a type that
            binds no TCP port or a platform without it), or a systemd endpoint without a
            matching inherited socket.
        OSError: the address cannot be used (same errno as the loop's error, message naming
            ``description``).
    """
    endpoint = parse_server(description, reuse_port=reuse_port)
    try:
        return await endpoint.listen(protocol_factory)
    except OSError as e:
        new = _reraise(e, "listen on", description)
        if new is e:
            raise
        raise new from e


async def connect(description: str, protocol_factory: Callable[[], _P]) -> tuple[asyncio.Transport, _P]:
    """Connect to the endpoint ``description`` using the running event loop.

    Args:
        description: a client endpoint string, e.g. ``"tcp:host=127.0.0.1:port=8800"``.
        protocol_factory: called once to make the connection's protocol.

    Returns:
        ``(transport, protocol)``.

    Raises:
        ValueError: malformed description (see `parse_client`).
        TimeoutError: not connected within the endpoint's timeout.
        ssl.SSLError: TLS failed (e.g. `ssl.SSLCertVerificationError`).
        OSError: the connection failed (message naming ``description``).
    """
    endpoint = parse_client(description)
    try:
        transport, protocol = await endpoint.connect(protocol_factory)
        return transport, cast(_P, protocol)  # the factory's protocol
    except TimeoutError as e:
        if e.errno is not None:  # the kernel's ETIMEDOUT: keep errno
            raise _reraise(e, "connect to", description) from e
        raise TimeoutError(f"cannot connect to {description!r}: timed out") from e
    except OSError as e:
        new = _reraise(e, "connect to", description)
        if new is e:
            raise
        raise new from e


# -- TLS helpers ---------------------------------------------------------------------------------

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\s*", re.DOTALL)


def _load_cert_chain(ctx: ssl.SSLContext, cert: str, key: str, extra_chain: str | None = None) -> None:
    """Load a certificate (plus optional intermediates) and its private key into ``ctx``."""
    with tempfile.TemporaryDirectory(prefix="pbfast-tls-") as tmp:
        certfile = cert
        if extra_chain is not None:
            # load_cert_chain reads the chain from one file: leaf certificate(s) then the
            # intermediates. Only certificates are copied, never the private key.
            with open(cert, "rb") as f:
                leaf = b"".join(_PEM_CERT.findall(f.read()))
            with open(extra_chain, "rb") as f:
                chain = b"".join(_PEM_CERT.findall(f.read()))
            if not chain:
                raise ValueError(f"extraCertChain {extra_chain!r} holds no PEM certificate")
            certfile = os.path.join(tmp, "chain.pem")
            with open(certfile, "wb") as f:
                f.write(leaf + chain)
        try:
            ctx.load_cert_chain(certfile, keyfile=key)
        except ssl.SSLError as e:
            raise ssl.SSLError(
                e.errno, f"cannot load certificate {cert!r} with private key {key!r}: {e.strerror}"
            ) from e


def _client_context(
    ca_file: str | None, ca_dir: str | None, cert: str | None, key: str | None
) -> ssl.SSLContext:
    """A verifying client context: the given CAs, or the system trust store when none is given."""
    ca_files: list[str] = [ca_file] if ca_file is not None else []
    if ca_dir is not None:
        # Twisted's caCertsDir / trustRoots: every *.pem file of the directory.
        pems = sorted(os.path.join(ca_dir, n) for n in os.listdir(ca_dir) if n.lower().endswith(".pem"))
        if not pems:
            # Never fall back to the system store when the caller named their own CAs.
            raise ValueError(f"CA directory {ca_dir!r} holds no .pem file")
        ca_files += pems
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_files[0] if ca_files else None)
    for path in ca_files[1:]:
        ctx.load_verify_locations(cafile=path)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None or key is not None:
        _load_cert_chain(ctx, cert or key or "", key or cert or "")
    return ctx


class PeerAddress(NamedTuple):
    """Where a connection's peer is (what a reference's ``getPeer()`` gives): `type` is
    ``"TCP"`` (IPv4 or IPv6, as Twisted's addresses say), ``"UNIX"`` (`host` is the peer's socket
    path, empty when it has none) or ``"memory"`` (an in-memory link: a Tub's connection to
    itself, or `pbfast.testing`'s); `port` is 0 where there is none. ``str()`` gives the
    address as logs show it: ``host:port``, ``[v6]:port`` or a socket path."""

    type: str
    host: str
    port: int

    def __str__(self) -> str:
        if self.type == "TCP":
            host = f"[{self.host}]" if ":" in self.host else self.host
            return f"{host}:{self.port}"
        if self.type == "UNIX":
            return self.host or "(unix socket)"
        return self.host

    @classmethod
    def of(cls, transport: asyncio.BaseTransport) -> PeerAddress:
        """The address of `transport`'s peer."""
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            return cls("TCP", str(peer[0]), int(peer[1]))
        if isinstance(peer, bytes):
            peer = peer.decode("utf-8", "replace")
        sock = transport.get_extra_info("socket")
        if sock is not None and getattr(socket, "AF_UNIX", None) == sock.family:
            return cls("UNIX", str(peer or ""), 0)
        return cls("memory", str(peer or ""), 0)


def _set_nodelay(transport: asyncio.BaseTransport) -> None:
    """Turn Nagle's algorithm off on a TCP transport (no-op for other kinds): small
    request/answer messages must not wait for it."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


# -- server endpoints ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _TCPServerEndpoint(ServerEndpoint):
    port: int = field()  # a field of its own, not the base class's None
    interface: str
    backlog: int
    family: socket.AddressFamily = socket.AF_UNSPEC
    reuse_port: bool = False

    def _ssl_context(self) -> ssl.SSLContext | None:
        return None

    async def listen(self, protocol_factory: _ProtocolFactory) -> Listener:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            protocol_factory,
            host=self.interface,
            port=self.port,
            family=self.family,
            backlog=self.backlog,
            ssl=self._ssl_context(),
            reuse_port=self.reuse_port,
        )
        return Listener(server)


# Twisted's `sslmethod` values (pyOpenSSL's method names) -> the TLS versions allowed (least,
# most; None: the newest there is). The negotiating methods keep TLS 1.2 as the floor.
_SSL_METHODS: dict[str, tuple[ssl.TLSVersion, ssl.TLSVersion | None]] = {
    "SSLv23_METHOD": (ssl.TLSVersion.TLSv1_2, None),
    "TLS_METHOD": (ssl.TLSVersion.TLSv1_2, None),
    "TLS_SERVER_METHOD": (ssl.TLSVersion.TLSv1_2, None),
    "TLSv1_2_METHOD": (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2),
    # OpenSSL's security level may still refuse these two at the handshake, as it does for
    # Twisted.
    "TLSv1_1_METHOD": (ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1_1),
    "TLSv1_METHOD": (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1),
}


def _ssl_method(value: str | None) -> str | None:
    if value is None or value in _SSL_METHODS:
        return value
    if value in ("SSLv2_METHOD", "SSLv3_METHOD"):
        raise ValueError(
            f"sslmethod={value}: SSL 2 and 3 are broken and no TLS library here offers them "
            "(TLS_METHOD negotiates the best version both ends have)"
        )
    raise ValueError(f"sslmethod must be one of {', '.join(_SSL_METHODS)}, got {value!r}")


@dataclass(frozen=True)
class _SSLServerEndpoint(_TCPServerEndpoint):
    private_key: str = ""
    cert_key: str = ""
    extra_cert_chain: str | None = None
    ssl_method: str | None = None
    dh_parameters: str | None = None

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        least, most = _SSL_METHODS[self.ssl_method or "TLS_METHOD"]
        ctx.minimum_version = least
        if most is not None:
            ctx.maximum_version = most
        _load_cert_chain(ctx, self.cert_key, self.private_key, self.extra_cert_chain)
        if self.dh_parameters is not None:
            ctx.load_dh_params(self.dh_parameters)  # for the DHE cipher suites
        return ctx


def _clear_stale_socket(path: str) -> None:
    """Remove ``path`` if it is a unix socket nobody listens on; refuse if somebody does."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, "the path exists and is not a socket", path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.setblocking(False)  # a full backlog must not block us: it reads as "in use"
        err = probe.connect_ex(path)
    finally:
        probe.close()
    if err == errno.ECONNREFUSED:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    elif err in (0, errno.EAGAIN, errno.EINPROGRESS):
        raise OSError(errno.EADDRINUSE, "address already in use (another server listens there)", path)
    elif err != errno.ENOENT:
        raise OSError(err, os.strerror(err), path)


@dataclass(frozen=True)
class _UNIXServerEndpoint(ServerEndpoint):
    path: str
    mode: int = 0o666
    backlog: int = LISTEN_BACKLOG
    lockfile: bool = True

    async def listen(self, protocol_factory: _ProtocolFactory) -> Listener:
        loop = asyncio.get_running_loop()
        lock = _PidLock(self.path + ".lock") if self.lockfile else None
        if lock is not None:
            lock.acquire(self.path)
        try:
            _clear_stale_socket(self.path)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        bound = False
        try:
            sock.bind(self.path)
            bound = True
            # chmod before listen(): nobody can connect until the mode is in place.
            os.chmod(self.path, self.mode)
            st = os.stat(self.path)
            sock.setblocking(False)
            server = await loop.create_unix_server(protocol_factory, sock=sock, backlog=self.backlog)
        except BaseException:
            sock.close()
            if bound:
                _unlink_quietly(self.path)
            if lock is not None:
                lock.release()
            raise

        def remove_socket_file() -> None:
            # Only our own socket file: another server may have replaced it meanwhile.
            try:
                now = os.stat(self.path)
            except OSError:
                now = None
            if now is not None and (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                _unlink_quietly(self.path)
            if lock is not None:
                lock.release()

        return Listener(server, on_close=remove_socket_file)


class _PidLock:
    """Twisted's lock file for a unix socket (``lockfile=1``): a symbolic link ``PATH.lock`` whose
    target is the owner's PID, made atomically; a lock whose process is gone is taken over."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._held = False

    def acquire(self, socket_path: str) -> None:
        """Take the lock, or raise OSError (EADDRINUSE) naming the process that holds it."""
        for _ in range(3):  # another process may take over a stale lock at the same moment
            try:
                os.symlink(str(os.getpid()), self.path)
                self._held = True
                return
            except FileExistsError:
                pass
            try:
                owner = int(os.readlink(self.path))
            except FileNotFoundError:
                continue  # released meanwhile
            except (OSError, ValueError):
                owner = None  # not a lock of this kind: a stale one, taken over
            if owner is not None and _process_exists(owner):
                raise OSError(
                    errno.EADDRINUSE, f"address already in use (locked by process {owner})", socket_path
                )
            _unlink_quietly(self.path)
        raise OSError(errno.EADDRINUSE, f"could not take the lock {self.path}", socket_path)

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        with contextlib.suppress(OSError):
            if os.readlink(self.path) == str(os.getpid()):
                os.unlink(self.path)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


_SYSTEMD_DOMAINS = {"INET": socket.AF_INET, "INET6": socket.AF_INET6, "UNIX": socket.AF_UNIX}


@dataclass(frozen=True)
class _SystemdServerEndpoint(ServerEndpoint):
    domain: str
    index: int

    def _fd(self) -> int:
        fds = os.environ.get("LISTEN_FDS")
        if fds is None:
            raise ValueError(
                "systemd endpoint: LISTEN_FDS is not set (the process was not started by systemd "
                "socket activation)"
            )
        if not _DIGITS.fullmatch(fds):
            raise ValueError(f"systemd endpoint: LISTEN_FDS is not a number: {fds!r}")
        pid = os.environ.get("LISTEN_PID")
        if pid is not None and pid != str(os.getpid()):
            raise ValueError(
                f"systemd endpoint: LISTEN_PID={pid} is not this process ({os.getpid()}); "
                "the sockets were meant for another process"
            )
        if self.index >= int(fds):
            raise ValueError(f"systemd endpoint: index {self.index} out of range, LISTEN_FDS={fds}")
        return SD_LISTEN_FDS_START + self.index

    async def listen(self, protocol_factory: _ProtocolFactory) -> Listener:
        loop = asyncio.get_running_loop()
        fd = self._fd()
        sock = socket.socket(fileno=fd)
        family = _SYSTEMD_DOMAINS[self.domain]
        try:
            if sock.family != family or sock.type != socket.SOCK_STREAM:
                raise ValueError(
                    f"systemd endpoint: fd {fd} is a {sock.family.name}/{sock.type.name} socket, "
                    f"not {family.name}/SOCK_STREAM as domain={self.domain} asks"
                )
            sock.setblocking(False)
            if family == socket.AF_UNIX:
                server = await loop.create_unix_server(protocol_factory, sock=sock)
            else:
                server = await loop.create_server(protocol_factory, sock=sock)
        except BaseException:
            sock.detach()  # the fd belongs to the service manager's hand-over; leave it open
            raise
        return Listener(server)


def _tcp_server_fields(p: dict[str, str], default_interface: str) -> dict[str, Any]:
    """The parameters every TCP server type takes, as `_TCPServerEndpoint` fields."""
    return {
        "port": _int("port", p["port"], 0, 65535),
        "interface": p.get("interface") or default_interface,
        "backlog": _int("backlog", p.get("backlog", str(LISTEN_BACKLOG)), 0, 2**31 - 1),
    }


def _tcp_server(family: socket.AddressFamily, default_interface: str, kind: str) -> _ServerFactory:
    def factory(kwargs: dict[str, str], args: list[str]) -> ServerEndpoint:
        p = _bind(kind, kwargs, args, ("port", "interface", "backlog"), required=("port",))
        return _TCPServerEndpoint(**_tcp_server_fields(p, default_interface), family=family)

    return factory


def _ssl_server(kwargs: dict[str, str], args: list[str]) -> ServerEndpoint:
    kind = "ssl server endpoint"
    p = _bind(
        kind,
        kwargs,
        args,
        ("port", "privateKey", "certKey"),
        ("interface", "backlog", "extraCertChain", "sslmethod", "dhParameters"),
        required=("port",),
    )
    key = _path("privateKey", p.get("privateKey"))
    cert = _path("certKey", p.get("certKey"))
    if key is None and cert is None:
        raise ValueError(
            "ssl server endpoint requires privateKey=KEY.pem (and certKey=CERT.pem unless "
            "the same file holds the certificate)"
        )
    return _SSLServerEndpoint(
        **_tcp_server_fields(p, "0.0.0.0"),
        private_key=key or cert or "",
        cert_key=cert or key or "",
        extra_cert_chain=_path("extraCertChain", p.get("extraCertChain")),
        ssl_method=_ssl_method(p.get("sslmethod")),
        dh_parameters=_path("dhParameters", p.get("dhParameters")),
    )


def _unix_server(kwargs: dict[str, str], args: list[str]) -> ServerEndpoint:
    p = _bind(
        "unix server endpoint",
        kwargs,
        args,
        ("address", "mode", "backlog", "lockfile"),
        required=("address",),
    )
    return _UNIXServerEndpoint(
        path=p["address"],
        mode=_mode(p.get("mode", "666")),
        backlog=_int("backlog", p.get("backlog", str(LISTEN_BACKLOG)), 0, 2**31 - 1),
        lockfile=_flag("lockfile", p.get("lockfile", "1")),
    )


def _systemd_server(kwargs: dict[str, str], args: list[str]) -> ServerEndpoint:
    p = _bind("systemd server endpoint", kwargs, args, ("domain", "index"), required=("domain", "index"))
    domain = p["domain"].upper()
    if domain not in _SYSTEMD_DOMAINS:
        raise ValueError(f"domain must be one of INET, INET6, UNIX, got {p['domain']!r}")
    return _SystemdServerEndpoint(domain=domain, index=_int("index", p["index"], 0, 2**31 - 1))


# -- client endpoints ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _TLSClientOptions:
    ca_file: str | None = None
    ca_dir: str | None = None
    cert: str | None = None
    key: str | None = None
    hostname: str | None = None


@dataclass(frozen=True)
class _TCPClientEndpoint(ClientEndpoint):
    host: str
    port: int
    timeout: float = 30.0
    bind_address: str | None = None
    family: socket.AddressFamily = socket.AF_UNSPEC
    tls: _TLSClientOptions | None = None

    async def connect(self, protocol_factory: _ProtocolFactory) -> _Connection:
        loop = asyncio.get_running_loop()
        ssl_ctx: ssl.SSLContext | None = None
        server_hostname: str | None = None
        if self.tls is not None:
            t = self.tls
            ssl_ctx = _client_context(t.ca_file, t.ca_dir, t.cert, t.key)
            server_hostname = t.hostname or self.host
        async with asyncio.timeout(self.timeout):  # covers the TLS handshake too
            transport, protocol = await loop.create_connection(
                protocol_factory,
                host=self.host,
                port=self.port,
                family=self.family,
                ssl=ssl_ctx,
                server_hostname=server_hostname,
                local_addr=(self.bind_address, 0) if self.bind_address is not None else None,
            )
        _set_nodelay(transport)
        return transport, protocol


@dataclass(frozen=True)
class _UNIXClientEndpoint(ClientEndpoint):
    path: str
    timeout: float = 30.0

    async def connect(self, protocol_factory: _ProtocolFactory) -> _Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.timeout):
            transport, protocol = await loop.create_unix_connection(protocol_factory, self.path)
        return transport, protocol


def _tcp_client_fields(p: dict[str, str]) -> dict[str, Any]:
    """The parameters every TCP client type takes, as `_TCPClientEndpoint` fields."""
    return {
        "host": p["host"],
        "port": _int("port", p["port"], 1, 65535),
        "timeout": _timeout(p.get("timeout", "30")),
        "bind_address": _path("bindAddress", p.get("bindAddress")),
    }


def _tcp_client(family: socket.AddressFamily, kind: str) -> _ClientFactory:
    def factory(kwargs: dict[str, str], args: list[str]) -> ClientEndpoint:
        p = _bind(kind, kwargs, args, ("host", "port"), ("timeout", "bindAddress"), required=("host", "port"))
        return _TCPClientEndpoint(**_tcp_client_fields(p), family=family)

    return factory


def _ssl_client(kwargs: dict[str, str], args: list[str]) -> ClientEndpoint:
    p = _bind(
        "ssl client endpoint",
        kwargs,
        args,
        ("host", "port"),
        ("timeout", "bindAddress", "caCerts", "caCertsDir", "certKey", "privateKey", "hostname"),
        required=("host", "port"),
    )
    return _TCPClientEndpoint(
        **_tcp_client_fields(p),
        tls=_TLSClientOptions(
            ca_file=_path("caCerts", p.get("caCerts")),
            ca_dir=_path("caCertsDir", p.get("caCertsDir")),
            cert=_path("certKey", p.get("certKey")),
            key=_path("privateKey", p.get("privateKey")),
            hostname=_path("hostname", p.get("hostname")),
        ),
    )


def _tls_client(kwargs: dict[str, str], args: list[str]) -> ClientEndpoint:
    p = _bind(
        "tls client endpoint",
        kwargs,
        args,
        ("host", "port"),
        ("timeout", "bindAddress", "trustRoots", "certificate", "privateKey"),
        required=("host", "port"),
    )
    roots = _path("trustRoots", p.get("trustRoots"))
    is_dir = roots is not None and os.path.isdir(roots)
    return _TCPClientEndpoint(
        **_tcp_client_fields(p),
        tls=_TLSClientOptions(
            ca_file=None if is_dir else roots,
            ca_dir=roots if is_dir else None,
            cert=_path("certificate", p.get("certificate")),
            key=_path("privateKey", p.get("privateKey")),
        ),
    )


def _unix_client(kwargs: dict[str, str], args: list[str]) -> ClientEndpoint:
    p = _bind("unix client endpoint", kwargs, args, ("path",), ("timeout", "checkPID"), required=("path",))
    _flag("checkPID", p.get("checkPID", "0"))  # accepted for Twisted compatibility; no lock files here
    return _UNIXClientEndpoint(path=p["path"], timeout=_timeout(p.get("timeout", "30")))


register_server("tcp", _tcp_server(socket.AF_UNSPEC, "0.0.0.0", "tcp server endpoint"))
register_server("tcp6", _tcp_server(socket.AF_INET6, "::", "tcp6 server endpoint"))
register_server("unix", _unix_server)
register_server("ssl", _ssl_server)
register_server("systemd", _systemd_server)
register_client("tcp", _tcp_client(socket.AF_UNSPEC, "tcp client endpoint"))
register_client("tcp6", _tcp_client(socket.AF_INET6, "tcp6 client endpoint"))
register_client("unix", _unix_client)
register_client("ssl", _ssl_client)
register_client("tls", _tls_client)


# -- certificates --------------------------------------------------------------------------------


def self_signed_certificate(hostname: str = "localhost") -> tuple[bytes, bytes]:
    """Make a self-signed EC P-256 certificate valid for one year, for tests and private setups.

    The subject alternative names are ``hostname`` (as a DNS name, or an IP address when it is
    one) plus 127.0.0.1 and ::1 when ``hostname`` is ``localhost``. Clients trust it by using the
    certificate itself as their CA (``caCerts=`` / ``trustRoots=``).

    Args:
        hostname: the name clients will check.

    Returns:
        ``(cert_pem, key_pem)``; the key is unencrypted PKCS#8.
    """
    from ._certificates import tls_certificate

    return tls_certificate(hostname)
