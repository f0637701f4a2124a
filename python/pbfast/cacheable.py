"""Objects that travel as kept-up-to-date copies: a `Cacheable` sends its state once per
connection and then tells each observer of changes; the `RemoteCache` on the other side applies
them in its ``observe_*`` methods.

On the wire (Twisted's): the first sending is ``[type_tag, luid, state]``, later ones
``["cached", luid]``; ``observer.callRemote(name, ...)`` is a ``cachemessage`` to the holder.
When the holder lets go of its copy (garbage collection) it sends ``decache``; once none are
left the owner calls `Cacheable.stoppedObserving` and answers ``uncache``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .copyable import Copyable, RemoteCopy
from .errors import DeadReferenceError
from .referenceable import Link, prefixed_method

__all__ = ["CacheLink", "Cacheable", "RemoteCache", "RemoteCacheObserver"]

log: logging.Logger = logging.getLogger("pbfast")


class Cacheable(Copyable):
    """An object whose copies on the other side are kept current."""

    def getStateToCacheAndObserveFor(self, perspective: Any, observer: RemoteCacheObserver) -> Any:
        """The state to send to a new holder, which `observer` now stands for; by default the
        copy state (keep `observer` to call its ``observe_*`` methods later)."""
        return self.getStateToCopyFor(perspective)

    def stoppedObserving(self, perspective: Any, observer: RemoteCacheObserver) -> None:
        """The holder behind `observer` let go of its copy, or disconnected."""


class RemoteCache(RemoteCopy):
    """The holder's copy of a `Cacheable`: ``setCopyableState`` receives the state, and the
    owner's ``observer.callRemote(name, ...)`` runs ``observe_<name>(...)`` here."""

    # Set by the connection that made the copy: whom to tell when it goes.
    _cache_link: CacheLink | None = None

    def remoteMessageReceived(
        self, broker: Any, message: str, args: tuple[Any, ...], kw: dict[str, Any]
    ) -> Any:
        return prefixed_method(self, "observe_", message)(*args, **kw)

    def __del__(self) -> None:
        link = self._cache_link
        if link is not None:
            link.connection.cache_died(link, self)


class CacheLink:
    """Ties a `RemoteCache` to the connection it came over.

    Attributes:
        connection: the connection (its ``cache_died(link, cache)`` runs when the copy goes).
        luid: the owner's number for the Cacheable.
        count: how many times the owner sent it (each to be given back when the copy goes).
        handle: what else the copy keeps alive while it lives, or None.
    """

    __slots__ = ("connection", "luid", "count", "handle")

    def __init__(self, connection: Any, luid: int, count: int, handle: Any = None) -> None:
        self.connection: Any = connection
        self.luid: int = luid
        self.count: int = count
        self.handle: Any = handle


class RemoteCacheObserver:
    """Stands for one holder of a `Cacheable` on one connection: ``callRemote(name, ...)``
    runs ``observe_<name>(...)`` on that holder's `RemoteCache`."""

    __slots__ = ("broker", "cacheable", "perspective", "luid")

    def __init__(self, broker: Link, cacheable: Cacheable, perspective: Any, luid: int) -> None:
        self.broker: Link = broker
        self.cacheable: Cacheable = cacheable
        self.perspective: Any = perspective
        self.luid: int = luid

    def callRemote(self, _name: str, /, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        """Call ``observe_<_name>`` on the holder's copy; the future gives its result.

        Observers are usually called and forgotten, so a failure — the holder left
        (`DeadReferenceError`) or the method raised — is logged at debug level, not reported
        as an unretrieved exception."""
        future = self.broker.call(self.luid, _name, args, kwargs, cache=True)
        future.add_done_callback(_quiet)
        return future

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, RemoteCacheObserver)
            and other.broker is self.broker
            and other.cacheable is self.cacheable
            and other.perspective is self.perspective
        )

    def __hash__(self) -> int:
        return hash((id(self.broker), id(self.cacheable), id(self.perspective)))

    def __repr__(self) -> str:
        return f"<RemoteCacheObserver of {self.cacheable!r} on {self.broker!r}>"


def _quiet(future: asyncio.Future[Any]) -> None:
    if future.cancelled():
        return
    exc = future.exception()
    if exc is not None and not isinstance(exc, DeadReferenceError):
        log.debug("an observer call failed: %s", exc)
