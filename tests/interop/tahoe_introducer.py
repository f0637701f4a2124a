"""Tahoe-LAFS's introducer protocol (v2, over foolscap) for pbfast, and stock Tahoe nodes run as
subprocesses for ``test_tahoe.py``.

The two RemoteInterfaces are Tahoe's own (``allmydata/introducer/interfaces.py`` of
tahoe-lafs 1.20), in foolscap's spelling, unchanged but for the imports. An announcement is a
3-tuple ``(msg, sig_vs, key_vs)``: ``msg`` is the UTF-8 JSON of a dict, ``sig_vs`` is ``b"v0-"``
and the lower-case unpadded base32 of the ed25519 signature of ``msg``, ``key_vs`` the same of
the raw public key (``allmydata/introducer/common.py``, ``allmydata/crypto/ed25519.py``). It is
signed and checked here with ``cryptography`` alone, so a mistake in it cannot hide behind
Tahoe's own code.

A node is run with ``python -m allmydata`` (the ``tahoe`` command) of this interpreter:
``tahoe create-introducer``/``create-node`` make its directory, ``tahoe run`` runs it until its
stdin closes (Tahoe's own way to tie a node to its parent).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pbfast import Referenceable
from pbfast.schema import Any, DictOf, RemoteInterface, SetOf, StringConstraint

HOST = "127.0.0.1"
INTRODUCER_V2 = b"http://allmydata.org/tahoe/protocols/introducer/v2"

# ------------------------------------------------------------------ Tahoe's interfaces, unchanged

FURL = StringConstraint(1000)

Announcement_v2 = Any()


class RIIntroducerSubscriberClient_v2(RemoteInterface):
    __remote_name__ = "RIIntroducerSubscriberClient_v2.tahoe.allmydata.com"

    def announce_v2(announcements=SetOf(Announcement_v2)):  # noqa: B008  (foolscap's spelling)
        """I accept announcements from the publisher."""
        return None


SubscriberInfo = DictOf(bytes, Any())


class RIIntroducerPublisherAndSubscriberService_v2(RemoteInterface):
    """To publish a service to the world, connect to me and give me your
    announcement message. I will deliver a copy to all connected subscribers.
    To hear about services, connect to me and subscribe to a specific
    service_name."""

    __remote_name__ = "RIIntroducerPublisherAndSubscriberService_v2.tahoe.allmydata.com"

    def get_version():
        return DictOf(bytes, Any())

    def publish_v2(announcement=Announcement_v2, canary=Referenceable):
        return None

    def subscribe_v2(
        subscriber=RIIntroducerSubscriberClient_v2, service_name=bytes, subscriber_info=SubscriberInfo
    ):
        """Give me a subscriber reference, and I will call its announce_v2()
        method with any announcements that match the desired service name. I
        will ignore duplicate subscriptions. The subscriber_info dictionary
        tells me about the subscriber, and is used for diagnostic/status
        displays."""
        return None


# ------------------------------------------------------------------ signed announcements


def base32(data: bytes) -> bytes:
    """Tahoe's base32: RFC 4648's alphabet in lower case, without padding."""
    return base64.b32encode(data).rstrip(b"=").lower()


def unbase32(text: bytes) -> bytes:
    return base64.b32decode(text.upper() + b"=" * (-len(text) % 8))


def key_string(key: Ed25519PublicKey) -> bytes:
    """A public key as announcements carry it: ``b"v0-" + base32(raw key)`` (a node's
    ``node.pubkey`` file holds it with a ``pub-`` before)."""
    return b"v0-" + base32(key.public_bytes(Encoding.Raw, PublicFormat.Raw))


def sign_announcement(announcement: dict, key: Ed25519PrivateKey) -> tuple[bytes, bytes, bytes]:
    msg = json.dumps(announcement).encode("utf-8")
    return msg, b"v0-" + base32(key.sign(msg)), key_string(key.public_key())


def open_announcement(signed: object) -> tuple[dict, bytes]:
    """``(announcement, key_vs)`` of a signed announcement; raises
    ``cryptography.exceptions.InvalidSignature`` if it is not signed by the key it names, and
    ``ValueError`` if it is not shaped like one."""
    if not (isinstance(signed, tuple) and len(signed) == 3 and all(isinstance(x, bytes) for x in signed)):
        raise ValueError(f"not a (msg, sig, key) tuple of bytes: {signed!r}")
    msg, sig_vs, key_vs = signed
    if not (sig_vs.startswith(b"v0-") and key_vs.startswith(b"v0-")):
        raise ValueError(f"not v0- signature and key: {sig_vs!r}, {key_vs!r}")
    Ed25519PublicKey.from_public_bytes(unbase32(key_vs[3:])).verify(unbase32(sig_vs[3:]), msg)
    return json.loads(msg.decode("utf-8")), key_vs


# ------------------------------------------------------------------ pbfast's side of the protocol


class Subscriber(Referenceable):
    """What a Tahoe client hands the introducer to hear announcements: each ``announce_v2``
    call's announcements are opened (checked) and kept as ``(announcement, key_vs)`` until
    `next_of` takes them."""

    remote_interface = RIIntroducerSubscriberClient_v2

    def __init__(self) -> None:
        self.heard: list[tuple[dict, bytes]] = []
        self.changed = asyncio.Condition()

    async def remote_announce_v2(self, announcements):
        opened = [open_announcement(signed) for signed in announcements]
        async with self.changed:
            self.heard.extend(opened)
            self.changed.notify_all()

    async def next_of(self, service_name: str, timeout: float = 20.0) -> tuple[dict, bytes]:
        """The first announcement heard for `service_name` and not yet taken, waiting for one
        if need be."""
        async with asyncio.timeout(timeout), self.changed:
            while True:
                for i, (announcement, key) in enumerate(self.heard):
                    if announcement.get("service-name") == service_name:
                        del self.heard[i]
                        return announcement, key
                await self.changed.wait()


class Canary(Referenceable):
    """A publisher's canary: the introducer only holds it, to see the publisher go away."""


class Introducer(Referenceable):
    """An introducer served by pbfast, doing what Tahoe's ``IntroducerService`` does: it checks
    each published announcement's signature, keeps the last one per (service, key) (Tahoe's
    seqnum and duplicate rules left out), relays it to that service's subscribers, and tells
    each new subscriber what it holds. Every call is recorded in `calls` (name, arguments) and
    announced on `called`."""

    remote_interface = RIIntroducerPublisherAndSubscriberService_v2
    VERSION = {INTRODUCER_V2: {}, b"application-version": b"pbfast-interop/1"}

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple]] = []
        self.called = asyncio.Condition()
        self.announcements: dict[tuple[str, bytes], tuple[bytes, bytes, bytes]] = {}
        self.subscribers: dict[str, list] = {}
        self.relayed: list[asyncio.Future] = []

    async def _record(self, name: str, *args: object) -> None:
        async with self.called:
            self.calls.append((name, args))
            self.called.notify_all()

    async def wait_for_call(self, name: str, timeout: float = 20.0) -> tuple:
        """The arguments of the first call of `name`, waiting for it if need be."""
        async with asyncio.timeout(timeout), self.called:
            while True:
                for called, args in self.calls:
                    if called == name:
                        return args
                await self.called.wait()

    async def remote_get_version(self):
        await self._record("get_version")
        return self.VERSION

    async def remote_publish_v2(self, announcement, canary):
        opened, key = open_announcement(announcement)  # a bad one fails the call, as in Tahoe
        service = opened["service-name"]
        self.announcements[(service, key)] = announcement
        for subscriber in self.subscribers.get(service, []):
            self.relayed.append(subscriber.callRemote("announce_v2", {announcement}))
        await self._record("publish_v2", announcement, canary)

    async def remote_subscribe_v2(self, subscriber, service_name, subscriber_info):
        service = service_name.decode("utf-8")
        self.subscribers.setdefault(service, []).append(subscriber)
        held = {a for (s, _), a in self.announcements.items() if s == service}
        if held:
            self.relayed.append(subscriber.callRemote("announce_v2", held))
        await self._record("subscribe_v2", subscriber, service_name, subscriber_info)


# ------------------------------------------------------------------ stock Tahoe nodes


def free_port() -> int:
    """A TCP port free on 127.0.0.1 just now, for a node's ``tub.port`` (Tahoe refuses port 0
    there, since it must also write the port into its location)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


async def tahoe(*args: str, timeout: float = 30.0) -> str:
    """Run ``tahoe ARGS`` to its end; its output, or AssertionError if it failed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "allmydata",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode("utf-8", "replace")
    assert proc.returncode == 0, f"tahoe {' '.join(args)} exited {proc.returncode}:\n{text}"
    return text


def listen_options(port: int) -> tuple[str, ...]:
    """``tahoe create-*`` options for a node listening on 127.0.0.1 only, with no web server."""
    return ("--listen=tcp", f"--port=tcp:{port}:interface={HOST}", f"--location=tcp:{HOST}:{port}")


@contextlib.asynccontextmanager
async def running(nodedir: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """``tahoe run NODEDIR`` until the block ends: then its stdin is closed, which stops it
    (killed if it takes over 10 s). Its output goes to ``NODEDIR/run.log``, printed (for
    pytest's report) if the block fails."""
    with open(nodedir / "run.log", "ab") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "allmydata",
            "run",
            str(nodedir),
            stdin=asyncio.subprocess.PIPE,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
    try:
        yield proc
    except BaseException:
        print(f"== {nodedir.name}: tahoe run exited {proc.returncode}\n{run_log(nodedir)}")
        raise
    finally:
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        with contextlib.suppress(ConnectionError):
            await proc.stdin.wait_closed()


def run_log(nodedir: Path) -> str:
    path = nodedir / "run.log"
    return path.read_text("utf-8", "replace") if path.exists() else "(no run.log)"


async def wait_for_file(
    path: Path, nodedir: Path, proc: asyncio.subprocess.Process, timeout: float = 20.0
) -> str:
    """The contents of `path` once the node running in `nodedir` has written it."""
    async with asyncio.timeout(timeout):
        while not (path.exists() and path.read_text().strip()):
            assert proc.returncode is None, f"the node exited {proc.returncode}:\n{run_log(nodedir)}"
            await asyncio.sleep(0.05)
    return path.read_text().strip()
