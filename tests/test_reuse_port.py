"""``reuse_port=True``: several listeners on one port (``SO_REUSEPORT``), the kernel spreading the
connections among them; the PB wire (`pbfast.serve`), a Tub (`Tub.listenOn`) and the endpoints
underneath. On 127.0.0.1 only. (``pbfast serve --workers`` is tested in test_cli_workers.py.)"""

from __future__ import annotations

import errno
import socket
import sys

import pbfast
import pytest
from pbfast import endpoints

# How many connections may be made to see each of two listeners answer: the kernel picks one
# per connection from a hash of its addresses, so missing one of two has odds of 2**-attempts.
ATTEMPTS = 24


class Named(pbfast.Root):
    def __init__(self, name: str) -> None:
        self.name = name

    def remote_name(self) -> str:
        return self.name


def test_two_pb_servers_share_a_port(run) -> None:
    async def main() -> None:
        first = await pbfast.serve(Named("first"), "tcp:port=0:interface=127.0.0.1", reuse_port=True)
        endpoint = f"tcp:port={first.port}:interface=127.0.0.1"
        async with first, await pbfast.serve(Named("second"), endpoint, reuse_port=True) as second:
            assert second.port == first.port
            answered = set()
            for _ in range(ATTEMPTS):
                async with pbfast.connect(f"tcp:host=127.0.0.1:port={first.port}") as root:
                    answered.add(await root.callRemote("name"))
                if len(answered) == 2:
                    break
            assert answered == {"first", "second"}
            # Without it the port stays taken, as before.
            with pytest.raises(OSError) as refused:
                await pbfast.serve(Named("third"), endpoint)
            assert refused.value.errno == errno.EADDRINUSE

    run(main())


def test_two_tubs_with_one_identity_serve_one_furl(run) -> None:
    async def main() -> None:
        identity = pbfast.Tub().identity.to_pem()
        async with pbfast.Tub(certData=identity) as a, pbfast.Tub(certData=identity) as b:
            listener = await a.listenOn("tcp:port=0:interface=127.0.0.1", reuse_port=True)
            again = await b.listenOn(f"tcp:port={listener.port}:interface=127.0.0.1", reuse_port=True)
            assert again.port == listener.port
            furls = set()
            for tub, name in ((a, "a"), (b, "b")):
                tub.setLocation(f"tcp:127.0.0.1:{listener.port}")
                furls.add(tub.registerReference(Named(name), "shared"))
            (furl,) = furls
            answered = set()
            for _ in range(ATTEMPTS):
                async with pbfast.Tub() as client:
                    ref = await client.getReference(furl)
                    answered.add(await ref.callRemote("name"))
                if len(answered) == 2:
                    break
            assert answered == {"a", "b"}

    run(main())


def test_reuse_port_is_for_tcp_ports(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    for description in ("tcp:8800", "tcp6:port=8800", "ssl:8443:privateKey=key.pem"):
        endpoint = endpoints.parse_server(description, reuse_port=True)
        assert endpoint.port in (8800, 8443)
        assert endpoint.reuse_port  # type: ignore[attr-defined]
    assert not endpoints.parse_server("tcp:8800").reuse_port  # type: ignore[attr-defined]
    assert endpoints.parse_server("tcp:port=0").port == 0
    for description in (f"unix:{tmp_path / 's'}", "systemd:domain=INET:index=0"):
        assert endpoints.parse_server(description).port is None
        with pytest.raises(ValueError, match="reuse_port applies to endpoints that bind a TCP port") as e:
            endpoints.parse_server(description, reuse_port=True)
        assert repr(description) in str(e.value)
    # Where the socket module has no SO_REUSEPORT (Windows), it is refused up front.
    monkeypatch.delattr(socket, "SO_REUSEPORT", raising=False)
    with pytest.raises(ValueError, match=rf"needs the socket option SO_REUSEPORT.*\({sys.platform}\)"):
        endpoints.parse_server("tcp:8800", reuse_port=True)


def test_reuse_port_refused_by_serve_and_listen_on(run, tmp_path) -> None:
    async def main() -> None:
        path = tmp_path / "pb.sock"
        with pytest.raises(ValueError, match="reuse_port applies to endpoints that bind a TCP port"):
            await pbfast.serve(Named("x"), f"unix:{path}", reuse_port=True)
        async with pbfast.Tub() as tub:
            with pytest.raises(ValueError, match="reuse_port applies to endpoints that bind a TCP port"):
                await tub.listenOn(f"unix:{path}", reuse_port=True)
            assert tub.getListeners() == []
        assert not path.exists()

    run(main())
