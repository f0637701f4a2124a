"""Paging: a large value sent as a series of small calls, in `twisted.spread.util`'s protocol.

Stock Twisted refuses any string over 640 KiB in a message, and a large message holds up
everything behind it on its connection. Paging cuts the value into pages instead. The receiver
passes a *collector* (a `Referenceable` with ``remote_gotPage(page)`` and
``remote_endedPaging()``) to a remote method; that method makes a `Pager` for it, which sends
each page as a ``gotPage`` call asking for no answer, then ``endedPaging``. These are Twisted's
method names and calls, so either side may be stock Twisted:

    # the sending side: a remote method
    class Files(pbfast.Root):
        def remote_fetch(self, collector, name):
            StringPager(collector, self.files[name])   # the pages follow on their own

    # the receiving side
    pages = await getAllPages(root, "fetch", "big.bin")
    data = b"".join(pages)

A pager sends its next page whenever its connection can take more: while the peer does not
read, it waits, so paging a large value to a slow reader holds no more than the value itself
and the connection's write buffer. It works on both wires (PB connections and Tubs).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

from .errors import DeadReferenceError, PBConnectionLost
from .referenceable import Referenceable, RemoteReference

__all__ = ["CallbackPageCollector", "Pager", "StringPager", "getAllPages"]

log: logging.Logger = logging.getLogger("pbfast")

# Pagers still sending (the loop keeps only weak references to tasks).
_paging: set[asyncio.Task[None]] = set()


class Pager:
    """Sends pages to a remote collector, one ``gotPage(page)`` call (asking for no answer) at
    a time as the connection can take them, then ``endedPaging()``; the base of `StringPager`.

    Subclass it and override `nextPage`; call `stopPaging` from it when the page it returns is
    the last. Paging starts once the constructor has returned (on the next turn of the loop),
    driven by the pager itself; Twisted's broker hooks (``registerPageProducer``,
    ``sendNextPage``, ``stillPaging``) have no counterpart.

    Paging ends early if the connection ends (a `nextPage` coroutine still running is
    cancelled), or if `nextPage`, a page's sending or the callback raises: the error is logged
    (a lost connection at DEBUG) and `wait` raises it.
    The collector then hears nothing more (the protocol has no way to say "failed"), so a
    receiver waits until its connection ends.

    Args:
        collector: the peer's collector (a `RemoteReference`; any object with
            ``remote_gotPage`` and ``remote_endedPaging`` on the other side).
        callback: called as ``callback(*args, **kw)`` once ``endedPaging`` has been sent (a
            value that is not callable is ignored, as in Twisted).
        *args: positional arguments for `callback`.
        **kw: keyword arguments for `callback`.

    Raises:
        DeadReferenceError: the collector's connection is already gone.
        RuntimeError: no event loop is running.
    """

    def __init__(
        self, collector: RemoteReference, callback: Callable[..., object] | None = None, *args: Any, **kw: Any
    ) -> None:
        if collector.broker.disconnected:
            raise DeadReferenceError(f"cannot page to {collector!r}: its connection is gone")
        loop = asyncio.get_running_loop()
        self.collector: RemoteReference = collector
        """Where the pages go."""
        self.callback: Callable[..., object] | None = callback if callable(callback) else None
        """Called as ``callback(*callbackArgs, **callbackKeyword)`` when paging has ended."""
        self.callbackArgs: tuple[Any, ...] = args
        """The positional arguments of `callback`."""
        self.callbackKeyword: dict[str, Any] = kw
        """The keyword arguments of `callback`."""
        self._stillPaging = True
        self._done: asyncio.Future[None] = loop.create_future()
        self._lost = False
        self._task = task = loop.create_task(self._page())
        _paging.add(task)
        task.add_done_callback(self._paged)
        # A pager waiting (for the connection, or for its own next page) stops when the
        # connection ends.
        collector.broker.closed.add_done_callback(self._connection_lost)

    def nextPage(self) -> Any:
        """The next page: any value the wire can send (a byte string, usually). Override it;
        it may be a coroutine function (a page read from a file or fetched elsewhere). Call
        `stopPaging` in it when returning the last page.

        Raises:
            NotImplementedError: not overridden.
        """
        raise NotImplementedError(f"{type(self).__name__} must override nextPage")

    def stopPaging(self) -> None:
        """Mark the page being produced (or, called from outside, the next one sent) as the
        last: ``endedPaging`` follows it."""
        self._stillPaging = False

    async def wait(self) -> None:
        """Wait until paging is over: every page and ``endedPaging`` handed to the connection
        (not yet read by the peer), and the callback run. A remote method that awaits this
        before returning keeps its call running until then, which a shutdown's grace period
        waits for.

        Raises:
            PBConnectionLost: the connection ended first (a `nextPage` coroutine still
                running is cancelled then).
            Exception: what `nextPage`, a page's sending or the callback raised.
        """
        await asyncio.shield(self._done)

    async def _page(self) -> None:
        collector = self.collector
        link = collector.broker
        try:
            while True:
                await link.wait_writable()
                page = self.nextPage()
                if inspect.isawaitable(page):
                    page = await page
                collector.callRemoteOnly("gotPage", page)
                if not self._stillPaging:
                    break
                # Let the page be written (and the rest of the loop run) before the next one.
                await asyncio.sleep(0)
            collector.callRemoteOnly("endedPaging")
            if self.callback is not None:
                self.callback(*self.callbackArgs, **self.callbackKeyword)
        except asyncio.CancelledError:
            if not self._lost:
                self._done.cancel()
                raise
            self._task.uncancel()  # our own doing: the connection ended
            self._ended(None)
        except (DeadReferenceError, PBConnectionLost) as exc:
            self._ended(exc)
        except Exception as exc:
            log.error("%r: paging to %r failed", self, collector, exc_info=exc)
            self._fail(exc)
        else:
            self._done.set_result(None)

    def _connection_lost(self, closed: asyncio.Future[None]) -> None:
        if not self._task.done():
            self._lost = True
            self._task.cancel()

    def _paged(self, task: asyncio.Task[None]) -> None:
        # Forgotten once done, so that a long connection keeps no pager (nor what it pages).
        _paging.discard(task)
        self.collector.broker.closed.remove_done_callback(self._connection_lost)
        if not self._done.done():  # cancelled before it started
            if self._lost:
                self._ended(None)
            else:
                self._done.cancel()

    def _ended(self, cause: BaseException | None) -> None:
        lost = PBConnectionLost(f"the connection of {self.collector!r} ended before paging did")
        if cause is not None:
            lost.__cause__ = cause.with_traceback(None)
        log.debug("%r: %s", self, lost)
        self._fail(lost)

    def _fail(self, exc: BaseException) -> None:
        # Logged already; the traceback would keep this frame (and the pager) in a cycle.
        self._done.set_exception(exc.with_traceback(None))
        self._done.exception()  # retrieved: only `wait` reports it

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {'paging' if not self._done.done() else 'done'}>"


class StringPager(Pager):
    """A `Pager` that sends a string (bytes or str) in slices of `chunkSize`.

    An empty string is sent as one empty page, as Twisted does. Each page is one message, so
    toward stock Twisted keep `chunkSize` under its 640 KiB limit on strings (the default,
    Twisted's, is 8 KiB).

    Args:
        collector: the peer's collector.
        st: the string to send.
        chunkSize: the length of each page (the last may be shorter).
        callback: called as ``callback(*args, **kw)`` once ``endedPaging`` has been sent.
        *args: positional arguments for `callback`.
        **kw: keyword arguments for `callback`.

    Raises:
        TypeError: `st` is not bytes or str.
        ValueError: `chunkSize` is not a positive integer.
        DeadReferenceError: the collector's connection is already gone.
    """

    def __init__(
        self,
        collector: RemoteReference,
        st: bytes | str,
        chunkSize: int = 8192,
        callback: Callable[..., object] | None = None,
        *args: Any,
        **kw: Any,
    ) -> None:
        if not isinstance(st, bytes | str):
            raise TypeError(f"StringPager pages bytes or str, not {type(st).__name__}")
        if not isinstance(chunkSize, int) or isinstance(chunkSize, bool) or chunkSize < 1:
            raise ValueError(f"StringPager's chunkSize must be a positive integer, not {chunkSize!r}")
        self.string: bytes | str = st
        """The string being sent."""
        self.pointer: int = 0
        """Where the next page starts in `string`."""
        self.chunkSize: int = chunkSize
        """The length of each page."""
        super().__init__(collector, callback, *args, **kw)

    def nextPage(self) -> bytes | str:
        """The next `chunkSize` slice of the string (`stopPaging` at its end)."""
        page = self.string[self.pointer : self.pointer + self.chunkSize]
        self.pointer += self.chunkSize
        if self.pointer >= len(self.string):
            self.stopPaging()
        return page


class CallbackPageCollector(Referenceable):
    """Receives pages from the peer's `Pager` (pbfast's or Twisted's), and hands them all to
    ``callback(pages)`` when paging has ended. Pass it to the remote method that makes the
    pager; `getAllPages` does that for you.

    Args:
        callback: called with the list of pages, in the order they came.
    """

    def __init__(self, callback: Callable[[list[Any]], object]) -> None:
        self.pages: list[Any] = []
        """The pages received so far (once paging has ended they are the callback's, and this
        starts anew)."""
        self.callback: Callable[[list[Any]], object] = callback
        """Called with the list of pages when paging has ended."""

    def remote_gotPage(self, page: Any) -> None:
        """One page has come."""
        self.pages.append(page)

    def remote_endedPaging(self) -> None:
        """Paging has ended: hand the pages to the callback."""
        pages, self.pages = self.pages, []
        self.callback(pages)


async def getAllPages(referenceable: RemoteReference, methodName: str, /, *args: Any, **kw: Any) -> list[Any]:
    """Call ``methodName(collector, *args, **kw)`` on `referenceable`, with a new
    `CallbackPageCollector` as the first argument, and return the pages the remote method's
    pager sends to it, in order (join them: ``b"".join(pages)``).

    Returns once paging has ended and the call has been answered, in either order.

    Raises:
        RemoteError: the remote method raised (it may have sent pages before).
        PBConnectionLost: the connection ended before paging did.
        DeadReferenceError: the connection was already gone.
    """
    loop = asyncio.get_running_loop()
    paged: asyncio.Future[list[Any]] = loop.create_future()

    def ended(pages: list[Any]) -> None:
        if not paged.done():
            paged.set_result(pages)

    answer = referenceable.callRemote(methodName, CallbackPageCollector(ended), *args, **kw)
    closed = referenceable.broker.closed
    try:
        while not (paged.done() and answer.done()):
            if answer.done() and answer.exception() is not None:
                break
            if closed.done():
                raise PBConnectionLost(
                    f"the connection of {referenceable!r} ended before its paging ({methodName}) did"
                )
            waiting = [future for future in (paged, answer, closed) if not future.done()]
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        answer.result()
        return paged.result()
    finally:
        if not answer.done():
            answer.cancel()
