"""Self-test of the stock-foolscap peer (``foolscap_peer.py``): stock foolscap on both ends.

Each client scenario runs against the peer's own ``server``, and its RESULT must pass the checks
of ``foolscap_expect.py``: this proves the scenarios and the expectations right, so the same
checks can judge pbfast's Tub on either end. The ``liar`` mode must be refused by stock foolscap
(and its honest control accepted), and the certificate options must give stable identities.

Every test starts its own server processes (a few tenths of a second each).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from foolscap_expect import (
    STOCK_NEGOTIATION_ERROR,
    STOCK_VIOLATION_VALUE,
    check_bad_tubid,
    check_basic,
    check_copyables,
    check_errors,
    check_gift,
    check_honest_liar,
    check_keepalive,
    check_liar,
    check_parallel,
    check_references,
)
from peers import peer_result, peer_run, peer_tub

pytestmark = pytest.mark.interop

PEER = Path(__file__).resolve().with_name("foolscap_peer.py")
LOG_ENV = {"FOOLSCAP_PEER_LOG": "1"}


def tub_id(furl: str) -> str:
    return furl.removeprefix("pb://").split("@", 1)[0]


async def scenario(furl: str, name: str, *args: str) -> dict:
    return await peer_result(PEER, "client", furl, name, *args)


def test_basic(run):
    async def main():
        async with peer_tub(PEER) as (_, furl):
            check_basic(await scenario(furl, "basic"))

    run(main())


def test_errors(run):
    async def main():
        async with peer_tub(PEER) as (_, furl):
            loose = check_errors(await scenario(furl, "errors"))
        # The texts that name stock foolscap's classes.
        assert loose["violation"]["value"] == STOCK_VIOLATION_VALUE
        assert (
            loose["missing_method"]["value"] == "'PeerRoot' object has no attribute 'remote_no_such_method'"
        )
        assert loose["wrong_arguments"]["value"] == (
            "PeerRoot.remote_echo() missing 1 required positional argument: 'x'"
        )

    run(main())


def test_references(run):
    async def main():
        async with peer_tub(PEER) as (_, furl):
            result = await scenario(furl, "references")
        check_references(result)
        # Stock foolscap names "root", the object registered by furl_of_new_object and, weakly,
        # the child it sent by reference, which goes with its last reference.
        assert result["tables_before"]["registered"] == 3
        assert result["tables_after"]["registered"] == 2

    run(main())


def test_copyables(run):
    async def main():
        async with peer_tub(PEER) as (_, furl):
            unknown = check_copyables(await scenario(furl, "copyables"))
        assert "unknown RemoteCopy name 'example.pbfast/Unknown'" in unknown["value"]

    run(main())


def test_gift(run):
    async def main():
        async with peer_tub(PEER) as (_, furl), peer_tub(PEER) as (_, third):
            result = await scenario(furl, "gift", "--third", third)
        check_gift(result)
        assert result["third_tubid"] == tub_id(third)
        # Stock foolscap registers the gift's target weakly when it sends it; only "root" is
        # left in the third Tub once the root dropped it.
        assert result["third_tables"]["registered"] == 1

    run(main())


def test_keepalive(run):
    """Our client pings the server after 1 s of silence and would drop it after 2 s; the server
    pings too (``--keepalive``) and would drop us after 2 s (``--disconnect``)."""

    async def main():
        async with peer_tub(PEER, "--keepalive", "1", "--disconnect", "2") as (_, furl):
            check_keepalive(await scenario(furl, "keepalive"))

    run(main())


def test_parallel(run):
    async def main():
        async with peer_tub(PEER) as (_, furl):
            check_parallel(await scenario(furl, "parallel"))

    run(main())


def test_bad_tubid(run):
    async def main():
        async with peer_tub(PEER) as (_, furl):
            result = await scenario(furl, "bad_tubid")
        check_bad_tubid(result)
        assert result["wrong_tubid"] != tub_id(furl)

    run(main())


def test_liar_is_refused(run, tmp_path):
    """A hello claiming a TubID the client's certificate does not hash to, or claiming one
    without a certificate, gets an error block and a hang-up; the same client telling the truth
    gets through. Stock foolscap's error block only says "internal server error": its log says
    why."""
    log = tmp_path / "server.log"

    async def main():
        async with peer_tub(PEER, env=LOG_ENV, stderr=log) as (_, furl):
            server = tub_id(furl)
            lying, no_cert, honest = await asyncio.gather(
                peer_result(PEER, "liar", furl),
                peer_result(PEER, "liar", furl, "--no-cert"),
                peer_result(PEER, "liar", furl, "--honest"),
            )
        check_liar(lying, server, error=STOCK_NEGOTIATION_ERROR)
        assert lying["cert_tubid"] is not None
        check_liar(no_cert, server, error=STOCK_NEGOTIATION_ERROR)
        assert no_cert["cert_tubid"] is None
        check_honest_liar(honest, server)

        text = log.read_text()
        assert "BananaError: ('TubID mismatch',)" in text, text
        # Without a client certificate foolscap fails before it reads the claim: Twisted raises
        # when asked for the peer's certificate.
        assert "did not have peer certificate" in text, text

    run(main())


def test_identity_files(run, tmp_path):
    """``--cert FILE`` creates the file on first use and keeps the TubID across restarts;
    ``tub-id`` reads the same TubID from it; a client's ``--cert`` works the same way."""
    server_cert = tmp_path / "server.pem"
    client_cert = tmp_path / "client.pem"

    async def main():
        async with peer_tub(PEER, "--cert", str(server_cert)) as (_, first):
            assert server_cert.exists()
            text = server_cert.read_text()
            assert "BEGIN CERTIFICATE" in text and "PRIVATE KEY" in text
            # A client Tub with an identity file of its own.
            assert await scenario(first, "parallel", "--cert", str(client_cert)) == {
                "order": ["fast", "slow"],
                "echoes": True,
            }
        async with peer_tub(PEER, "--cert", str(server_cert)) as (_, second):
            pass
        assert tub_id(second) == tub_id(first)
        assert second != first  # a new port
        read = await peer_run(PEER, "tub-id", str(server_cert))
        assert read.returncode == 0 and read.line("TUBID") == tub_id(first)

        client = (await peer_run(PEER, "tub-id", str(client_cert))).line("TUBID")
        assert len(client) == 32 and client != tub_id(first)
        missing = await peer_run(PEER, "tub-id", str(tmp_path / "missing.pem"))
        assert missing.returncode == 1 and "cannot load" in missing.line("ERROR")

    run(main())


def test_usage_errors(run):
    async def main():
        async with peer_tub(PEER) as (_, furl):
            # The gift scenario without its third Tub is an ERROR, not a RESULT.
            gift = await peer_run(PEER, "client", furl, "gift")
            assert gift.returncode == 1 and "--third" in gift.line("ERROR")
        assert (await peer_run(PEER, "client", furl, "no_such_scenario")).returncode == 2
        assert (await peer_run(PEER, "liar", furl, "--no-cert", "--honest")).returncode == 2

    run(main())
