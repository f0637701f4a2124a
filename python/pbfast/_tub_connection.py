"""A Tub connection on a socket: foolscap's negotiation, then TLS, then the PB layer.

Phases, for either role: the plaintext upgrade (the client asks ``GET /id/<tubid>``, the server
answers ``101``), TLS on the same socket (the Rust `TlsSession`, fed each chunk), each side's
hello block, the master's decision block, and then banana for the `TubBroker`. Whoever sees a
problem tells the peer in the current phase's own form (a ``500`` line, an error block, or a
banana ERROR token) and closes. A peer that hangs up (TLS close_notify, or a TCP close) ends the
connection at once: see `TubConnection._peer_hung_up`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from . import _core, _negotiate
from ._negotiate import HeaderReader, Hello
from ._tub_broker import TubBroker
from .errors import NegotiationError, PBConnectionLost, TLSError

if TYPE_CHECKING:
    from .tub import Tub

log = logging.getLogger("pbfast.tub")

# Hello-block key through which pbfast Tubs tell each other what they add to foolscap; stock
# foolscap ignores keys it does not know.
EXTENSIONS_KEY = "pbfast-extensions"
EXTENSIONS = frozenset({"cacheable"})


class TubConnection(asyncio.Protocol):
    """One socket of a Tub, as client (`target` is the TubID dialled) or server."""

    def __init__(self, tub: Tub, *, target: str | None = None, host: str = "") -> None:
        self.tub = tub
        self.target = target
        self.host = host
        self.client = target is not None
        self.broker: TubBroker | None = None
        self.ready: asyncio.Future[TubBroker] = asyncio.get_running_loop().create_future()
        # Done once the socket is closed (after our close_notify has been written out).
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self._reader = HeaderReader()
        self._tls: Any = None
        self._hello: Hello | None = None
        self._theirs: Hello | None = None
        self._extensions: frozenset[str] = frozenset()
        self._phase = "upgrade"
        self._plain: list[bytes] = []
        self._flush_scheduled = False
        self._closing = False
        self._timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        role = f"client to {self.target}" if self.client else "server"
        return f"<TubConnection {role} {self._phase}>"

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.tub.negotiationTimeout, self._timed_out)
        self.tub._connections.add(self)
        if self.client:
            transport.write(_negotiate.upgrade_request(self.target, self.host))  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            if self._tls is None:
                self._upgrade(data)
            else:
                plain = self._tls.feed(data)
                if plain:
                    self._secure(plain)
        except NegotiationError as e:
            self._refuse(e)
        except TLSError as e:
            self._abort(NegotiationError(f"TLS with {self._peer_name()} failed: {e}"))
        if self._tls is not None and self._tls.closed and not self._closing:
            self._peer_hung_up("sent TLS close_notify")
        self._flush()

    def eof_received(self) -> bool:
        if not self._closing:
            self._peer_hung_up("closed the TCP connection without TLS close_notify")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self.tub._connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        if not self.ready.done():
            reason = exc or ConnectionResetError(
                f"{self._peer_name()} closed the connection during negotiation"
            )
            if not isinstance(reason, NegotiationError):
                reason = NegotiationError(f"negotiation with {self._peer_name()} failed: {reason}")
            self.ready.set_exception(reason)
            self.ready.exception()  # nobody may be waiting (a server connection)
        if self.broker is not None:
            self.broker.connection_lost(exc)
        if not self.lost.done():
            self.lost.set_result(None)

    # ------------------------------------------------------------------ the link the broker writes to

    def send(self, data: bytes) -> None:
        """Queue plaintext; it is encrypted and written once per loop iteration (one TLS record
        for many messages)."""
        self._plain.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def close(self, reason: BaseException | None = None) -> None:
        if self._closing or self.transport is None:
            return
        self._flush()
        self._closing = True
        if self._tls is not None:
            self._tls.close()
            out = self._tls.take()
            if out:
                self.transport.write(out)
        self.transport.close()
        if self.broker is not None:
            self.broker.connection_lost(reason)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._closing or self._tls is None:
            return
        if self._plain:
            data = b"".join(self._plain) if len(self._plain) > 1 else self._plain[0]
            self._plain.clear()
            self._tls.write(data)
        out = self._tls.take()
        if out:
            self.transport.write(out)

    # ------------------------------------------------------------------ negotiation

    def _upgrade(self, data: bytes) -> None:
        got = self._reader.feed(data)
        if got is None:
            return
        header, rest = got
        if self.client:
            _negotiate.check_upgrade_reply(header)
        else:
            wanted = _negotiate.parse_request(header)
            if wanted != self.tub.tubID:
                raise NegotiationError(f"unknown TubID {wanted}")
            self.transport.write(_negotiate.UPGRADE_REPLY)
        self._tls = _core.TlsSession(not self.client, *self.tub._tls_identity)
        self._phase = "hello"
        self._hello = self.tub._hello(self.target, client=self.client)
        block = self._hello.block()
        block[EXTENSIONS_KEY] = " ".join(sorted(EXTENSIONS))
        self._tls.write(_negotiate.encode_block(block))
        if rest:
            plain = self._tls.feed(rest)
            if plain:
                self._secure(plain)

    def _secure(self, plain: bytes) -> None:
        if self._phase == "banana":
            self.broker.feed(plain)
            return
        got = self._reader.feed(plain)
        if got is None:
            return
        header, rest = got
        block = _negotiate.decode_block(header)
        if self._phase == "hello":
            self._hello_received(block)
        else:
            _negotiate.accept_decision(block)
            incarnation, _, text = block.get("current-connection", "").partition(" ")
            seqnum = int(text) if text.isdigit() else 0
            self._start(seqnum, (incarnation, seqnum) if incarnation else None)
        if rest:
            self._secure(rest)

    def _hello_received(self, block: dict[str, str]) -> None:
        theirs = Hello.parse(block)
        self._theirs = theirs
        self._extensions = frozenset(block.get(EXTENSIONS_KEY, "").split()) & EXTENSIONS
        certified = self._tls.peer_tub_id
        if certified is None:
            raise NegotiationError("you must use a certificate to claim a TubID")
        if certified != theirs.tub_id:
            raise NegotiationError(
                f"TubID mismatch: the peer claims {theirs.tub_id} but its certificate is {certified}"
            )
        if self.client and theirs.tub_id != self.target:
            raise NegotiationError(
                f"connected to the wrong Tub: wanted {self.target}, reached {theirs.tub_id}"
            )
        if theirs.tub_id == self.tub.tubID:
            raise NegotiationError("a Tub cannot connect to itself over the network")
        if _negotiate.is_master(self.tub.tubID, theirs.tub_id):
            seqnum = self.tub._master_decide(theirs)
            decision, _table = _negotiate.decide(self._hello, theirs, seqnum)
            self._tls.write(_negotiate.encode_block(decision))
            self._start(seqnum, None)
        else:
            self._phase = "decision"

    def _start(self, seqnum: int, master_connection: tuple[str, int] | None) -> None:
        """Negotiation is over: hand the connection to a new broker."""
        theirs = self._theirs
        self._phase = "banana"
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        broker = TubBroker(self.tub, self, theirs.tub_id, peer_extensions=self._extensions)
        broker.peer_incarnation = theirs.incarnation
        broker.seqnum = seqnum
        self.broker = broker
        self.tub._attach(broker, master_connection)
        self.ready.set_result(broker)

    # ------------------------------------------------------------------ the peer hangs up

    def _peer_hung_up(self, how: str) -> None:
        """The peer sent TLS close_notify or closed TCP: end the connection now, in any phase.

        A Twisted peer (stock foolscap) that ends a connection sends close_notify and keeps its
        socket open until our close_notify or TCP close arrives, so waiting for its TCP close
        would leave both sides waiting forever. Answer with our close_notify (`close` writes it
        after whatever is still queued), close the socket, and end the broker at once: its
        pending calls fail with `PBConnectionLost` and the notifyOnDisconnect callbacks run.
        """
        if self.broker is None:
            self._fail(NegotiationError(f"{self._peer_name()} {how} during negotiation"))
        else:
            self.close(PBConnectionLost(f"the peer {how}"))

    # ------------------------------------------------------------------ failures

    def _refuse(self, error: NegotiationError) -> None:
        """Tell the peer why, in the current phase's form, and close."""
        log.info("refused a Tub connection with %s: %s", self._peer_name(), error)
        if self.transport is None or self._closing:
            return
        if self._tls is None:
            if not self.client:
                self.transport.write(_negotiate.refusal(str(error)))
        elif self._phase in ("hello", "decision"):
            self._tls.write(_negotiate.error_block(str(error)))
        self._fail(error)

    def _abort(self, error: NegotiationError) -> None:
        log.info("%s", error)
        self._fail(error)

    def _fail(self, error: NegotiationError) -> None:
        if not self.ready.done():
            self.ready.set_exception(error)
            self.ready.exception()
        self.close(error)

    def _timed_out(self) -> None:
        self._timer = None
        self._refuse(
            NegotiationError(
                f"negotiation with {self._peer_name()} took longer than {self.tub.negotiationTimeout} s"
            )
        )

    def _peer_name(self) -> str:
        if self.target is not None:
            return f"Tub {self.target}"
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "a client"
