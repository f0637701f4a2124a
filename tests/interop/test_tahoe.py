"""pbfast Tubs against stock Tahoe-LAFS (1.20) nodes: the introducer protocol v2, both ways.

* A stock introducer (``tahoe create-introducer``, ``tahoe run``) and a stock storage node
  joined to it: a pbfast Tub calls the introducer as a Tahoe client does (``get_version``,
  ``subscribe_v2`` with a subscriber of its own, ``publish_v2`` with an announcement it signed),
  and hears its own announcement and the stock node's back, signatures checked.
* A pbfast Tub serves the introducer (Tahoe's interface, declared as a ``pbfast.RemoteInterface``
  in foolscap's spelling) to a stock storage node, which asks its version, subscribes, publishes
  a signed announcement, and takes the announcements relayed to it.

The protocol, Tahoe's interfaces and the helpers that run the nodes are in
``tahoe_introducer.py``. Every node listens on 127.0.0.1 only (its Tub; Tahoe's log-port Tub
listens where Tahoe puts it, and nothing connects to it), has no web server, and stops when the
test closes its stdin.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import re
import sys
import tempfile
from pathlib import Path

import pbfast
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tahoe_introducer import (
    INTRODUCER_V2,
    Canary,
    Introducer,
    RIIntroducerPublisherAndSubscriberService_v2,
    RIIntroducerSubscriberClient_v2,
    Subscriber,
    free_port,
    key_string,
    listen_options,
    open_announcement,
    running,
    sign_announcement,
    tahoe,
    wait_for_file,
)

pytestmark = pytest.mark.interop

try:
    TAHOE_VERSION = importlib.metadata.version("tahoe-lafs")
except importlib.metadata.PackageNotFoundError:
    # The test extra installs it everywhere else, so missing there it is an error, not a skip.
    if sys.platform != "win32":
        raise
    pytest.skip(
        "tahoe-lafs is not installed: the test extra leaves it out on Windows, where its "
        "dependency netifaces has no wheel and needs a C compiler",
        allow_module_level=True,
    )
LISTEN = "tcp:0:interface=127.0.0.1"
NICKNAME = "stock-node"


def node_identity(nodedir: Path) -> tuple[bytes, str]:
    """A node's announcement key (``node.pubkey`` less its ``pub-``) and its TubID."""
    pubkey = (nodedir / "node.pubkey").read_bytes().strip()
    assert pubkey.startswith(b"pub-v0-")
    return pubkey[len(b"pub-") :], (nodedir / "my_nodeid").read_text().strip()


def check_storage_announcement(announcement: dict, key: bytes, nodedir: Path) -> None:
    """`announcement` is the stock node's storage announcement, signed by the node's key."""
    node_key, tubid = node_identity(nodedir)
    assert key == node_key
    assert announcement["service-name"] == "storage"
    assert announcement["nickname"] == NICKNAME
    assert announcement["my-version"] == f"tahoe-lafs/{TAHOE_VERSION}"
    assert announcement["seqnum"] >= 1
    furl = announcement["anonymous-storage-FURL"]
    assert re.fullmatch(rf"pb://{tubid}@tcp:127\.0\.0\.1:\d+/\w+", furl), furl


async def create_storage_node(root: Path, introducer_furl: str) -> Path:
    nodedir = root / "node"
    await tahoe(
        "create-node",
        f"--introducer={introducer_furl}",
        f"--nickname={NICKNAME}",
        "--webport=none",
        *listen_options(free_port()),
        str(nodedir),
    )
    return nodedir


def test_pbfast_speaks_to_a_stock_introducer(run):
    """pbfast as a Tahoe client of a stock introducer: its subscriber hears its own signed
    announcement and a stock node's, the introducer refuses a forged one."""

    async def main():
        with tempfile.TemporaryDirectory(prefix="pbfast-tahoe-") as tmp:
            root = Path(tmp)
            introdir = root / "introducer"
            await tahoe("create-introducer", *listen_options(free_port()), str(introdir))
            async with running(introdir) as introducer_proc, pbfast.Tub() as tub:
                furl = await wait_for_file(
                    introdir / "private" / "introducer.furl", introdir, introducer_proc
                )
                nodedir = await create_storage_node(root, furl)
                async with running(nodedir):
                    await speak_as_a_client(tub, furl, nodedir)

    async def speak_as_a_client(tub: pbfast.Tub, furl: str, nodedir: Path) -> None:
        listener = await tub.listenOn(LISTEN)  # so the introducer can call our subscriber back
        tub.setLocation(f"tcp:127.0.0.1:{listener.port}")
        introducer = await tub.getReference(furl)
        assert (
            introducer.remote_interface_name == RIIntroducerPublisherAndSubscriberService_v2.__remote_name__
        )

        version = await introducer.callRemote("get_version")
        assert INTRODUCER_V2 in version
        assert version[b"application-version"].startswith(f"tahoe-lafs/{TAHOE_VERSION}".encode())

        subscriber = Subscriber()
        info = {
            b"version": 0,
            b"nickname": "pbfast",
            b"app-versions": [],
            b"my-version": b"pbfast/1",
            b"oldest-supported": b"1.0.0",
        }
        for service in (b"storage", b"pbfast-echo"):
            assert await introducer.callRemote("subscribe_v2", subscriber, service, info) is None

        key = Ed25519PrivateKey.generate()
        mine = {
            "version": 0,
            "nickname": "pbfast ✓",  # JSON-escaped in the signed bytes; must come back as it was
            "app-versions": [],
            "my-version": "pbfast/1",
            "oldest-supported": "1.0.0",
            "service-name": "pbfast-echo",
            "seqnum": 1,
            "nonce": "n0",
            "FURL": tub.registerReference(pbfast.Referenceable()),  # what a service announces
        }
        signed = sign_announcement(mine, key)
        canary = Canary()
        assert await introducer.callRemote("publish_v2", signed, canary) is None
        heard, heard_key = await subscriber.next_of("pbfast-echo")
        assert heard == mine and heard_key == key_string(key.public_key())

        # The stock node's storage announcement, relayed to us by the stock introducer.
        storage, storage_key = await subscriber.next_of("storage")
        check_storage_announcement(storage, storage_key, nodedir)

        # A forgery: the introducer checks the signature and fails the call.
        msg, sig, claimed = sign_announcement({**mine, "seqnum": 2}, key)
        forged = (msg.replace(b'"seqnum": 2', b'"seqnum": 9'), sig, claimed)
        assert forged[0] != msg
        with pytest.raises(InvalidSignature):
            open_announcement(forged)
        with pytest.raises(pbfast.RemoteError) as refused:
            await introducer.callRemote("publish_v2", forged, canary)
        assert refused.value.check("allmydata.crypto.error.BadSignature"), refused.value
        # A newer announcement replaces ours and reaches us; the forgery (seqnum 9) never did.
        newer = {**mine, "seqnum": 3, "nonce": "n3"}
        await introducer.callRemote("publish_v2", sign_announcement(newer, key), canary)
        assert await subscriber.next_of("pbfast-echo") == (newer, key_string(key.public_key()))
        assert not [a for a, _ in subscriber.heard if a["service-name"] == "pbfast-echo"]

        # pbfast checks calls against Tahoe's interface before sending them.
        with pytest.raises(pbfast.Violation, match="subscribe_v2\\(service_name=\\).*is not a byte string"):
            await introducer.callRemote("subscribe_v2", subscriber, "storage", info)

    run(main(), timeout=60)


def test_stock_node_uses_a_pbfast_introducer(run):
    """A stock Tahoe storage node joins a grid whose introducer is served by pbfast: it asks the
    version, subscribes a subscriber that advertises Tahoe's interface, publishes its signed
    storage announcement with a canary, and takes the announcement relayed back to it."""

    async def main():
        with tempfile.TemporaryDirectory(prefix="pbfast-tahoe-") as tmp:
            root = Path(tmp)
            introducer = Introducer()
            async with pbfast.Tub() as tub:
                listener = await tub.listenOn(LISTEN)
                tub.setLocation(f"tcp:127.0.0.1:{listener.port}")
                furl = tub.registerReference(introducer, "introducer")
                nodedir = await create_storage_node(root, furl)
                async with running(nodedir) as node:
                    await check_the_node(introducer, nodedir)
                    assert node.returncode is None

    async def check_the_node(introducer: Introducer, nodedir: Path) -> None:
        assert await introducer.wait_for_call("get_version") == ()

        subscriber, service_name, info = await introducer.wait_for_call("subscribe_v2")
        assert service_name == b"storage"
        assert subscriber.remote_interface_name == RIIntroducerSubscriberClient_v2.__remote_name__
        assert info[b"nickname"] == NICKNAME and info[b"version"] == 0
        assert info[b"my-version"] == f"tahoe-lafs/{TAHOE_VERSION}"  # a str, though the dict has bytes keys

        signed, canary = await introducer.wait_for_call("publish_v2")
        assert canary.remote_interface_name is None and canary.getRemoteTubID() == node_identity(nodedir)[1]
        announcement, key = open_announcement(signed)
        check_storage_announcement(announcement, key, nodedir)

        # The node subscribed to storage and published storage: it was sent its own announcement
        # (whichever came first), took it, and keeps it in its announcement cache.
        await asyncio.wait_for(asyncio.gather(*introducer.relayed), 20)
        assert introducer.relayed
        cache = (nodedir / "private" / "introducer_default_cache.yaml").read_text()
        assert key.decode() in cache and announcement["anonymous-storage-FURL"] in cache

    run(main(), timeout=60)
