"""Tubs facing bad peers: garbage before and after the upgrade, oversized and malformed
negotiation blocks, stalled handshakes, lying certificates, malformed banana, arguments past an
interface's limits. Each is refused with a clear error, and a client that was already connected
keeps working."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated

import pbfast
import pytest
from pbfast import _core
from pbfast._tub_broker import TubBroker
from pbfast.furl import FURL
from pbfast.identity import TubIdentity
from pbfast.schema import MaxLength
from servers import ServeProcess
from test_negotiate import UPGRADE_REPLY, hello_block, upgrade_request
from test_tub import Echo, serving

HOST = "127.0.0.1"


def address(furl: str) -> tuple[str, int]:
    _, host, port = pbfast.furl.parse_hint(FURL.parse(furl).locationHints[0])
    return host, port


async def read_all(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Everything until the server closes (fails if it does not close in time)."""
    return await asyncio.wait_for(reader.read(), timeout)


@contextlib.asynccontextmanager
async def watched(**options):
    """A serving Tub and a client already connected to it; on the way out the client must still
    get answers."""
    async with serving(**options) as (server, furl), pbfast.Tub() as client:
        ref = await client.getReference(furl)
        yield server, furl
        assert await ref.callRemote("echo", "still here") == "still here"


class RawTLS:
    """A hand-driven foolscap client: plaintext upgrade, then our TLS session over a stream."""

    def __init__(self, reader, writer, identity: TubIdentity):
        self.reader, self.writer = reader, writer
        self.tls = _core.TlsSession(False, identity.certificate_der, identity.private_key_der)
        self.plain = b""

    @classmethod
    async def open(cls, furl: str, identity: TubIdentity | None = None) -> RawTLS:
        reader, writer = await asyncio.open_connection(*address(furl))
        writer.write(upgrade_request(FURL.parse(furl).tubID))
        reply = await reader.readuntil(b"\r\n\r\n")
        assert reply == UPGRADE_REPLY
        return cls(reader, writer, identity or TubIdentity.generate())

    def send(self, plain: bytes) -> None:
        self.tls.write(plain)
        self.writer.write(self.tls.take())

    async def receive(self, timeout: float = 5.0) -> bytes:
        """Plaintext until the server closes."""
        while True:
            self.writer.write(self.tls.take())
            chunk = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not chunk:
                return self.plain
            self.plain += self.tls.feed(chunk)

    def close(self) -> None:
        self.writer.close()


def test_garbage_before_the_upgrade(run):
    async def main():
        async with watched() as (_, furl):
            reader, writer = await asyncio.open_connection(*address(furl))
            writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
            assert (
                await read_all(reader)
                == b"HTTP/1.1 500 Internal Server Error: internal server error, see logs\r\n\r\n"
            )
            writer.close()

    run(main())


def test_oversized_upgrade_request(run):
    async def main():
        async with watched() as (_, furl):
            reader, writer = await asyncio.open_connection(*address(furl))
            writer.write(b"GET /id/" + b"a" * 5000)
            reply = await read_all(reader)
            assert reply.startswith(
                b"HTTP/1.1 500 Internal Server Error: negotiation header longer than 4096"
            )
            writer.close()

    run(main())


def test_request_for_another_tub_and_plain_http(run):
    async def main():
        async with watched() as (_, furl):
            other = pbfast.Tub().tubID
            for request, reason in [
                (upgrade_request(other), f"unknown TubID {other}".encode()),
                (b"GET /id/ HTTP/1.1\r\n\r\n", b"secure Tubs require encryption"),
                (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"internal server error, see logs"),
            ]:
                reader, writer = await asyncio.open_connection(*address(furl))
                writer.write(request)
                assert (
                    await read_all(reader) == b"HTTP/1.1 500 Internal Server Error: " + reason + b"\r\n\r\n"
                )
                writer.close()

    run(main())


def test_garbage_after_the_upgrade(run):
    async def main():
        async with watched() as (_, furl):
            reader, writer = await asyncio.open_connection(*address(furl))
            writer.write(upgrade_request(FURL.parse(furl).tubID))
            assert await reader.readuntil(b"\r\n\r\n") == UPGRADE_REPLY
            writer.write(b"this is not a TLS record at all\r\n" * 4)
            await read_all(reader)  # an alert, then the close
            writer.close()

    run(main())


@pytest.mark.parametrize(
    ("record", "alert"),
    [
        (bytes([23, 3, 3, 0, 32]) + bytes(range(32)), "bad_record_mac"),  # not sealed with our key
        (bytes([23, 3, 3, 0x48, 0]), "record_overflow"),  # longer than a record may be
        (bytes([22, 3, 3, 0, 4, 20, 0, 0, 0]), "unexpected_message"),  # a plaintext handshake record
    ],
)
def test_garbage_records_after_the_tls_handshake(run, record, alert):
    """Once TLS is up, a record the peer could not have sealed: the server tells it why with the
    alert RFC 8446 names, and closes that connection only."""

    async def main():
        async with watched() as (_, furl):
            identity = TubIdentity.generate()
            raw = await RawTLS.open(furl, identity)
            raw.send(hello_block(identity.tubID, "0" * 16, client=True))
            # The server's answer: its TLS handshake is over, so the record reaches pbfast's
            # own record protection.
            while b"\r\n\r\n" not in raw.plain:
                raw.writer.write(raw.tls.take())
                raw.plain += raw.tls.feed(await asyncio.wait_for(raw.reader.read(65536), 5))
            raw.writer.write(record)
            with pytest.raises(_core.TlsError, match=f"the peer sent the alert {alert}"):
                raw.tls.feed(await read_all(raw.reader))
            raw.close()

    run(main())


def test_stalled_tls_handshake_times_out(run):
    async def main():
        async with watched(negotiationTimeout=0.3) as (_, furl):
            reader, writer = await asyncio.open_connection(*address(furl))
            writer.write(upgrade_request(FURL.parse(furl).tubID))
            assert await reader.readuntil(b"\r\n\r\n") == UPGRADE_REPLY
            await read_all(reader, timeout=5)  # the server gives up and closes
            writer.close()

    run(main())


def _blocks(plain: bytes) -> list[dict[str, str]]:
    """The negotiation blocks in `plain` (error blocks included) as dicts."""
    return [
        dict(line.decode().split(": ", 1) for line in block.split(b"\r\n"))
        for block in plain.split(b"\r\n\r\n")
        if block
    ]


def test_oversized_hello_block(run):
    async def main():
        async with watched() as (server, furl):
            raw = await RawTLS.open(furl)
            raw.send(b"x-padding: " + b"y" * 5000 + b"\r\n")
            blocks = _blocks(await raw.receive())
            assert blocks[0]["my-tub-id"] == server.tubID
            assert blocks[-1]["error"] == "negotiation header longer than 4096 bytes"
            raw.close()

    run(main())


def test_malformed_hello_block(run):
    async def main():
        async with watched() as (_, furl):
            raw = await RawTLS.open(furl)
            raw.send(b"no colon on this line\r\n\r\n")
            blocks = _blocks(await raw.receive())
            assert "malformed negotiation line" in blocks[-1]["error"]
            raw.close()

    run(main())


def test_lying_client_certificate(run):
    async def main():
        async with watched() as (_, furl):
            raw = await RawTLS.open(furl)
            liar = pbfast.Tub().tubID
            raw.send(hello_block(liar, "0" * 16, client=True))
            blocks = _blocks(await raw.receive())
            assert blocks[-1]["error"].startswith(f"TubID mismatch: the peer claims {liar}")
            raw.close()

    run(main())


def test_lying_server_certificate(run):
    """A server that answers for any TubID, with a certificate of its own: our client refuses it
    because the certificate does not hash to the FURL's TubID."""

    async def main():
        impostor = TubIdentity.generate()

        async def handle(reader, writer):
            request = await reader.readuntil(b"\r\n\r\n")
            claimed = request.split()[1].removeprefix(b"/id/").decode()
            writer.write(UPGRADE_REPLY)
            tls = _core.TlsSession(True, impostor.certificate_der, impostor.private_key_der)
            tls.write(hello_block(claimed, "1" * 16, client=False))
            while chunk := await reader.read(65536):
                tls.feed(chunk)
                writer.write(tls.take())
            writer.close()

        server = await asyncio.start_server(handle, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        async with server, pbfast.Tub() as client:
            victim = pbfast.Tub().tubID
            with pytest.raises(pbfast.NegotiationError, match="TubID mismatch"):
                await client.getReference(f"pb://{victim}@tcp:{HOST}:{port}/name")

    run(main())


def test_connection_refused_is_a_clear_error(run):
    async def main():
        async with pbfast.Tub() as client:
            probe = await asyncio.start_server(lambda r, w: None, HOST, 0)
            port = probe.sockets[0].getsockname()[1]
            probe.close()
            await probe.wait_closed()
            with pytest.raises(ConnectionError, match="cannot connect to Tub"):
                await client.getReference(f"pb://{pbfast.Tub().tubID}@tcp:{HOST}:{port}/x")
            with pytest.raises(ConnectionError, match="no usable location hints"):
                await client.getReference(f"pb://{pbfast.Tub().tubID}@tor:example.onion:80/x")

    run(main())


@pytest.mark.parametrize(
    "tokens,why",
    [
        ([("STRING", b"no-such-type")], "unknown"),
        ([("STRING", b"call"), ("INT", 1), ("INT", 999), ("STRING", b"echo")], "unknown clid"),
    ],
)
def test_bad_sequences_fail_only_themselves(run, tokens, why):
    """Sequences a Tub cannot use are refused one by one; the connection stays up."""

    async def main():
        echo = Echo()
        async with serving(echo) as (_, furl), pbfast.Tub() as client:
            ref = await client.getReference(furl)
            broker = ref.broker
            opened = broker._session.next_open_id
            raw = [("OPEN", opened), *tokens, ("CLOSE", opened)]
            broker._session.write(_core.encode_tokens(raw, "foolscap"))
            broker._session.next_open_id = opened + 1
            assert await ref.callRemote("echo", 1) == 1

    run(main())


def test_protocol_error_ends_only_that_connection(run):
    async def main():
        async with watched() as (_, furl), pbfast.Tub() as other:
            ref = await other.getReference(furl)
            lost = asyncio.get_running_loop().create_future()
            ref.notifyOnDisconnect(lost.set_result, True)
            ref.broker._session.write(_core.encode_tokens([("INT", 5)], "foolscap"))  # a bare top-level INT
            assert await asyncio.wait_for(lost, 5)
            with pytest.raises(pbfast.DeadReferenceError):
                await ref.callRemote("echo", 1)

    run(main())


class RIBox(pbfast.RemoteInterface):
    __remote_name__ = "RIBox.tub-adversity-test.pbfast.example"

    def put(
        self,
        key: Annotated[bytes, MaxLength(8)],
        value: list[Annotated[str, MaxLength(4)]] = [],  # noqa: B006
    ) -> int: ...


class Box(pbfast.Referenceable):
    remote_interface = RIBox

    def __init__(self) -> None:
        self.puts = 0

    def remote_put(self, key: bytes, value: list[str] = []) -> int:  # noqa: B006
        self.puts += 1
        return self.puts


class Boxes(Echo):
    def __init__(self) -> None:
        super().__init__()
        self.box = Box()

    def remote_box(self) -> Box:
        return self.box


def test_a_string_past_an_interfaces_limits_refuses_the_call_as_it_arrives(run):
    """Calls on an object whose interface bounds its strings are refused as soon as a longer
    string arrives, past the connection's own string and message limits too, with foolscap's
    Violation naming the method and the limit; the connection goes on. Other objects' calls
    keep only the connection's limits."""

    async def main():
        root = Boxes()
        limits = {"max_element_size": 100_000, "max_message_size": 200_000}
        async with serving(root, **limits) as (tub, furl), pbfast.Tub() as client:
            ref = await client.getReference(furl)
            assert await ref.callRemote("echo", b"x" * 50_000) == b"x" * 50_000
            server_broker = tub._brokers[client.tubID]
            assert not server_broker._session.checks_calls  # no interface yet: nothing asked
            box = await ref.callRemote("box")
            assert server_broker._session.checks_calls
            assert await box.callRemote("put", b"k", ["abcd"]) == 1

            def send(*args, **kwargs):  # past the client's own checks
                return client_broker.call(box.luid, "put", args, kwargs)

            client_broker = box.broker
            for args, kwargs in [
                ((b"x" * 1_000_000,), {}),  # past the connection's limits
                ((b"k",), {"value": ["a", "b" * 50, "c"]}),  # text: 4 bytes a character
                ((b"k", [["nested", ("deeper", {"x": b"y" * 1000})]]), {}),
            ]:
                with pytest.raises(pbfast.RemoteError) as info:
                    await send(*args, **kwargs)
                assert info.value.check(pbfast.Violation), info.value
                message = str(info.value)
                assert "RIBox.tub-adversity-test.pbfast.example.put: a string of" in message, message
                assert "refused as it arrived: the interface allows at most 16" in message, message
            with pytest.raises(pbfast.RemoteError, match="has no method 'missing'"):
                await client_broker.call(box.luid, "missing", (b"x" * 1000,), {})
            # Within the limits the interface's own check decides, once the call is decoded.
            with pytest.raises(pbfast.RemoteError, match="too long: 9 bytes, at most 8 allowed"):
                await send(b"123456789")
            assert await box.callRemote("put", b"k") == 2
            assert root.box.puts == 2
            assert await ref.callRemote("echo", b"x" * 50_000) == b"x" * 50_000

    run(main())


def test_an_oversize_argument_is_not_buffered(run):
    """A server process serves an object whose interface bounds an argument to 1024 bytes; a
    client that does not define the interface sends 100 MB in it. The call fails with foolscap's
    Violation naming the limit, the server's peak memory grows by far less than the argument (it
    skipped the string as it arrived), and the next call on the same reference works."""
    size = 100 << 20
    with ServeProcess("--tub", "tcp:0:interface=127.0.0.1", "--object", "schema_target:Store") as server:

        async def main():
            # (A pbfast client sends nothing past its own max_message_size: raised to send it.)
            async with pbfast.Tub(max_message_size=size + (1 << 20)) as client:
                store = await asyncio.wait_for(client.getReference(server.address), 10)
                assert store.remote_interface_name == "RIStore.schema-target.pbfast.example"
                assert pbfast.schema.remote_interface_by_name(store.remote_interface_name) is None
                assert await store.callRemote("put", b"small", b"v") == 1
                before = await store.callRemote("peak_memory")
                call = store.callRemote("put", b"big", b"x" * size)
                with pytest.raises(pbfast.RemoteError) as info:
                    await asyncio.wait_for(call, 30)
                grown = await store.callRemote("peak_memory") - before
                assert await store.callRemote("put", b"after", b"v") == 2
                return info.value, grown

        refused, grown = run(main(), timeout=60)
    assert refused.check(pbfast.Violation), refused
    assert "RIStore.schema-target.pbfast.example.put: a string of 104857600 bytes" in str(refused)
    assert "the interface allows at most 1024" in str(refused)
    assert grown < 16 << 20, f"the server's peak memory grew by {grown / 2**20:.1f} MiB"


def test_a_damaged_record_amid_a_large_message(run, monkeypatch):
    """While a large message comes, the server reads its records straight into the buffer that
    holds it; a record the peer could not have sealed, arriving then, fails that connection
    with bad_record_mac and nothing else (the other client is still answered)."""
    landed = []
    get_buffer = TubBroker.get_buffer

    def spy(self, sizehint):
        view = get_buffer(self, sizehint)
        landed.append(view is not self._thread_read_view)
        return view

    monkeypatch.setattr(TubBroker, "get_buffer", spy)

    async def main():
        async with watched() as (_, furl), pbfast.Tub() as other:
            ref = await other.getReference(furl)
            lost = asyncio.get_running_loop().create_future()
            ref.notifyOnDisconnect(lost.set_result, True)
            session, opened = ref.broker._session, ref.broker._session.next_open_id
            tokens = [("OPEN", opened), ("STRING", b"call"), ("INT", 1), ("INT", 1), ("STRING", b"echo")]
            tokens += [("OPEN", opened + 1), ("STRING", b"arguments"), ("INT", 1), ("STRING", bytes(1 << 20))]
            call = _core.encode_tokens(tokens, "foolscap")
            session.write(call[: 300 << 10])  # well into the string
            await asyncio.sleep(0.2)
            landed.clear()
            ref.broker.transport.write(bytes([23, 3, 3, 0, 32]) + bytes(range(32)))
            assert await asyncio.wait_for(lost, 5)
            assert "bad_record_mac" in str(ref.broker._reason)  # the server's alert
            assert any(landed), "the record was read into the message's buffer"

    run(main())
