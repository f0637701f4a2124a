"""Streams between pbfast peers, with credit-based flow control.

A remote method written as an async generator is consumed with
``async for item in ref.callRemoteStream(name, *args, **kwargs)`` (a `RemoteStream`); an async
iterable passed as ``pbfast.stream(aiter)`` (a `Stream`) reaches the remote method as a
`RemoteStream`. Both need a pbfast peer that speaks the ``stream`` extension (see
docs/extensions.md for the messages).

Flow control: the consumer grants the producer credit, a window of items and of bytes (the
bytes estimated by `estimate_size`), and grants more as it consumes. The producer sends nothing
beyond its credit (it may overshoot the bytes by the one item that used up the last of them),
so what is produced and not yet consumed stays within the window, however slow the consumer:
at most ``max_items`` items and ``max_bytes`` bytes plus one item, on the way or waiting on
the consumer's side. The connection's back-pressure applies as well: the producer waits while
the transport does not take more.

This module holds the public names; the messages are sent and received by the connection layer
(``pbfast._streaming``).
"""

from __future__ import annotations

import asyncio
import collections
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any, Protocol

from .errors import DeadReferenceError, Error, PBConnectionLost

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_ITEMS", "RemoteStream", "Stream", "estimate_size", "stream"]

DEFAULT_MAX_ITEMS = 1024
"""The consumer's window in items, unless `RemoteStream.window` sets another."""
DEFAULT_MAX_BYTES = 4 << 20
"""The consumer's window in bytes (4 MiB), unless `RemoteStream.window` sets another: with the
producer's side, what a stream holds stays well under 64 MB however large its items."""

# A batch (one message) holds at most this many items, or items of this many bytes or more.
BATCH_ITEMS = 512
BATCH_BYTES = 256 << 10

# How deep `estimate_size` looks into nested containers, and how many elements of one it
# looks at (the rest are assumed alike).
_ESTIMATE_DEPTH = 4
_ESTIMATE_SAMPLE = 64
_SCALAR = 8


def stream(iterable: AsyncIterable[Any]) -> Stream:
    """Wrap an async iterable so that it can be sent (as an argument of a call, or as a result)
    to a pbfast peer: there it arrives as a `RemoteStream` that iterates over it, with credit-based
    flow control. The iterable is consumed once, by the first receiver to start iterating; if it
    is an async generator, it is closed (``aclose()``) when the receiver stops early, or when the
    connection is lost.

    Raises:
        TypeError: `iterable` is not an async iterable.
    """
    return Stream(iterable)


class Stream:
    """An async iterable marked to be sent as a stream (made by `stream`). Sending it to a peer
    that is not pbfast, or lacks the ``stream`` extension, fails before anything is sent.

    Args:
        iterable: what the receiver iterates over.

    Raises:
        TypeError: `iterable` is not an async iterable.
    """

    __slots__ = ("iterable", "_taken", "__weakref__")

    def __init__(self, iterable: AsyncIterable[Any]) -> None:
        if not hasattr(type(iterable), "__aiter__"):
            hint = (
                " (iterate over a plain iterable in an async generator)"
                if hasattr(iterable, "__iter__")
                else ""
            )
            raise TypeError(f"pbfast.stream() takes an async iterable, not {type(iterable).__name__}{hint}")
        self.iterable: AsyncIterable[Any] = iterable
        self._taken = False

    def _take(self) -> AsyncIterator[Any] | None:
        """The iterator, for the first receiver that starts; None for any later one."""
        if self._taken:
            return None
        self._taken = True
        return aiter(self.iterable)

    def __repr__(self) -> str:
        return f"<pbfast.Stream of {self.iterable!r}>"


def estimate_size(value: Any) -> int:
    """The bytes `value` is counted as against a stream's window: the length of byte strings
    and strings (UTF-8), 8 for other scalars, and the sum over containers (for a large one,
    over its first elements and assumed alike for the rest; nested past a few levels, 8 per
    element). An estimate of the encoded size, cheap to compute, made the same way on both
    sides."""
    return _estimate(value, 0)


def _estimate(value: Any, depth: int) -> int:
    kind = type(value)
    if kind is bytes or kind is bytearray:
        return len(value)
    if kind is str:
        return len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
    if kind is memoryview:
        return int(value.nbytes)
    if kind in (int, float, bool, type(None)):
        return _SCALAR
    if isinstance(value, dict):
        elements: Any = value.items()
        count = len(value)
    elif isinstance(value, (list, tuple, set, frozenset)):
        elements = value
        count = len(value)
    else:
        state = getattr(value, "__dict__", None)
        if isinstance(state, dict) and depth < _ESTIMATE_DEPTH:
            return _SCALAR + _estimate(state, depth + 1)
        return _SCALAR
    if count == 0 or depth >= _ESTIMATE_DEPTH:
        return _SCALAR * (count + 1)
    total = 0
    seen = 0
    for element in elements:
        total += _estimate(element, depth + 1)
        seen += 1
        if seen == _ESTIMATE_SAMPLE:
            break
    return _SCALAR + total * count // seen


class _Channel(Protocol):
    """What a `RemoteStream` needs of the connection it is consumed on."""

    peer: str
    closed: asyncio.Future[None]

    def call_control_only(self, method: str, *args: Any) -> None: ...


# Start a stream: given the consumer and its window, send what starts it; the producer's
# reference, or a future for it.
_Starter = Callable[["RemoteStream", int, int], Any]

_NEW, _OPEN, _ENDED, _FAILED, _CLOSED = range(5)


class RemoteStream(AsyncIterator[Any]):
    """The consuming end of a stream: an async iterator over the items a peer produces (what
    `RemoteReference.callRemoteStream` returns, and what a `pbfast.stream` argument becomes).

    Nothing is asked of the peer until iteration starts. Items come in order; an exception
    raised by the producer is raised here as `pbfast.RemoteError` (after the items produced
    before it), and the connection ending raises `pbfast.PBConnectionLost`. Leaving early
    (``break``, an exception, cancelling the task awaiting the next item, `aclose`, or leaving
    ``async with``) closes the producer: a remote async generator's ``finally`` blocks run.
    When the iterator is dropped unfinished (garbage-collected) it is closed as well, but
    ``async with`` (or `aclose`) closes it at a definite point.

    Made by the connection (its arguments are the connection's business), not by users.
    """

    def __init__(self, link: _Channel, start: _Starter, source: Any = None) -> None:
        self._link = link
        self._start: _Starter | None = start
        self._loop = asyncio.get_running_loop()
        self._state = _NEW
        self._error: BaseException | None = None
        self._source: Any = source  # the producer's reference, once known
        self._close_wanted = False  # closed before the producer's reference came
        self._max_items = DEFAULT_MAX_ITEMS
        self._half_items = (DEFAULT_MAX_ITEMS + 1) // 2
        self._max_bytes = DEFAULT_MAX_BYTES
        # Items received and not yet consumed, and the sizes of the batches they came in:
        # [items of the batch still queued, its bytes].
        self._items: collections.deque[Any] = collections.deque()
        self._batches: collections.deque[list[int]] = collections.deque()
        self._queued_bytes = 0
        # Items received, and whether a batch went missing.
        self._received = 0
        self._gap = False
        # Credit granted and not yet used by the producer (bytes may go below zero: the last
        # item sent may overshoot).
        self._credit_items = 0
        self._credit_bytes = 0
        self._waiter: asyncio.Future[None] | None = None
        self._watch: Callable[[asyncio.Future[None]], None] | None = None
        # Called with the stream's error (or None) once it is over: a traced connection's span.
        self._on_end: Callable[[BaseException | None], None] | None = None

    def __repr__(self) -> str:
        state = ("new", "open", "ended", "failed", "closed")[self._state]
        return f"<RemoteStream {state} from {self._link.peer}>"

    # ------------------------------------------------------------------ public

    def window(self, max_items: int | None = None, max_bytes: int | None = None) -> RemoteStream:
        """Set the window: at most `max_items` items and `max_bytes` bytes (as `estimate_size`
        counts them, plus the one item that may overshoot) produced and not yet consumed.
        Defaults `DEFAULT_MAX_ITEMS` and `DEFAULT_MAX_BYTES`. May be called at any time (a wider
        window takes effect at once, a narrower one as the items already granted are consumed);
        returns this stream, so it can be chained:
        ``async for x in ref.callRemoteStream("feed").window(max_items=16)``.

        Raises:
            ValueError: a size that is not a positive integer.
        """
        for name, value in (("max_items", max_items), ("max_bytes", max_bytes)):
            if value is not None and not (type(value) is int and value > 0):
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if max_items is not None:
            self._max_items = max_items
            self._half_items = (max_items + 1) // 2
        if max_bytes is not None:
            self._max_bytes = max_bytes
        if self._state == _OPEN:
            self._grant()
        return self

    def __aiter__(self) -> RemoteStream:
        return self

    async def __anext__(self) -> Any:
        """The next item.

        Raises:
            StopAsyncIteration: the producer finished, or the stream was closed.
            RemoteError: the producer raised (or could not be started: no such method, not an
                async iterable, ...).
            PBConnectionLost: the connection ended first.
            RuntimeError: another task is awaiting the next item of this stream.
        """
        if self._waiter is not None:
            raise RuntimeError(f"{self!r} is already being iterated by another task")
        if self._state == _NEW:
            self._open()
        while not self._items:
            if self._state != _OPEN:
                error, self._error = self._error, None
                if error is not None:
                    raise error
                raise StopAsyncIteration
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            except asyncio.CancelledError:
                # The consuming task is cancelled: this stream is done with, as an async
                # generator would be.
                self._close()
                raise
            finally:
                self._waiter = None
        items = self._items
        item = items.popleft()
        batch = self._batches[0]
        batch[0] -= 1
        if not batch[0]:
            self._batches.popleft()
            self._queued_bytes -= batch[1]
            if self._state == _OPEN:
                self._grant()
        elif self._max_items - len(items) - self._credit_items >= self._half_items and self._state == _OPEN:
            self._grant()
        return item

    async def aclose(self) -> None:
        """Stop consuming: the producer is told to stop (its async generator is closed) and
        items still on the way are dropped. Nothing happens if the stream has ended already."""
        self._close()

    async def __aenter__(self) -> RemoteStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._close()

    def __del__(self) -> None:
        source = getattr(self, "_source", None)  # (None if __init__ failed)
        if source is not None and self._state in (_NEW, _OPEN):
            # Dropped unfinished: tell the producer (from the loop: this may run anywhere).
            self._source = None
            on_end, self._on_end = self._on_end, None
            try:
                self._loop.call_soon_threadsafe(_send_close, self._link, source)
                if on_end is not None:
                    self._loop.call_soon_threadsafe(on_end, None)
            except RuntimeError:  # the loop is closed: so is the connection
                pass

    # ------------------------------------------------------------------ the connection's side

    def _open(self) -> None:
        start, self._start = self._start, None
        assert start is not None
        self._state = _OPEN
        self._credit_items, self._credit_bytes = self._max_items, self._max_bytes
        if not self._link.closed.done():
            watch = self._watch = _watcher(weakref.ref(self))
            self._link.closed.add_done_callback(watch)
        try:
            source = start(self, self._max_items, self._max_bytes)
        except Exception as exc:  # the connection is gone, or the request could not be sent
            self._finish(_FAILED, exc)
            return
        if isinstance(source, asyncio.Future):
            source.add_done_callback(self._started)

    def _started(self, future: asyncio.Future[Any]) -> None:
        """The peer answered the request that starts the stream: with the producer's
        reference, or with why it could not start."""
        error: BaseException | None
        if future.cancelled():
            error = PBConnectionLost("the request starting the stream was cancelled")
        else:
            error = future.exception()
        if error is not None:
            if self._state == _OPEN:
                self._finish(_FAILED, error)
            return
        source = future.result()
        if self._close_wanted:
            self._close_wanted = False
            _send_close(self._link, source)
        elif self._state == _OPEN:
            self._source = source
            self._grant()  # what was consumed meanwhile

    def _receive_items(self, first: int, items: list[Any], size: int) -> None:
        """A batch arrived, `first` the number of the producer's items before it."""
        if self._state != _OPEN or self._gap:
            return  # closed meanwhile, or after a lost batch: dropped
        if (
            type(items) is not list
            or not items
            or type(size) is not int
            or size < 0
            or type(first) is not int
        ):
            self._violation("a batch must be numbered, a non-empty list of items, and its size a count")
            return
        if first != self._received:
            # A batch we could not decode (our connection refused it): its producer heard why
            # and fails the stream; nothing after the gap is given out.
            self._gap = True
            return
        if len(items) > self._credit_items:
            self._violation(f"the producer sent {len(items)} items on a credit of {self._credit_items}")
            return
        self._received += len(items)
        self._credit_items -= len(items)
        self._credit_bytes -= size
        self._items.extend(items)
        self._batches.append([len(items), size])
        self._queued_bytes += size
        self._wake()

    def _receive_end(self, error: BaseException | None) -> None:
        """The producer finished: normally, or raising `error`."""
        if self._state != _OPEN:
            return
        if error is None and self._gap:
            error = Error(f"the stream from {self._link.peer} lost items after the {self._received}th")
        self._finish(_ENDED if error is None else _FAILED, error)

    def _violation(self, message: str) -> None:
        self._close()
        self._state = _FAILED
        self._error = Error(f"the stream from {self._link.peer} broke its flow control: {message}")
        self._wake()

    def _lost(self) -> None:
        if self._state in (_NEW, _OPEN):
            lost = PBConnectionLost(f"the connection to {self._link.peer} was lost before the stream ended")
            self._finish(_FAILED, lost)

    # ------------------------------------------------------------------ inside

    def _grant(self) -> None:
        """Give the producer the credit that keeps what is on the way or queued within the
        window: as soon as half a window's worth (of items or bytes) is free."""
        queued = len(self._items)
        items = self._max_items - queued - self._credit_items
        nbytes = self._max_bytes - self._queued_bytes - self._credit_bytes
        if items <= 0 or nbytes <= 0:
            # The narrower of the two is full; grant nothing until it frees (granting items
            # without bytes, or bytes without items, would let nothing more through).
            return
        if items < self._half_items and nbytes < (self._max_bytes + 1) // 2:
            return
        source = self._source
        if source is None:
            return  # the credit waits for the producer's reference (the first grant goes with the start)
        self._credit_items += items
        self._credit_bytes += nbytes
        try:
            self._link.call_control_only("stream_credit", source, items, nbytes)
        except DeadReferenceError:
            pass

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _finish(self, state: int, error: BaseException | None) -> None:
        """The stream is over (the items already queued are still given out)."""
        self._state = state
        self._error = error
        self._source = None
        self._start = None
        watch, self._watch = self._watch, None
        if watch is not None:
            self._link.closed.remove_done_callback(watch)
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            on_end(error)
        self._wake()

    def _close(self) -> None:
        if self._state == _NEW:
            self._start = None
            source, self._source = self._source, None
            if source is not None:
                _send_close(self._link, source)
            self._state = _CLOSED
            return
        if self._state != _OPEN:
            return
        source = self._source
        if source is not None:
            _send_close(self._link, source)
        else:
            self._close_wanted = True  # sent once the producer's reference comes
        self._items.clear()
        self._batches.clear()
        self._queued_bytes = 0
        self._finish(_CLOSED, None)


def _watcher(stream: weakref.ref[RemoteStream]) -> Callable[[asyncio.Future[None]], None]:
    """A callback for the connection's end that does not keep the stream alive."""

    def lost(_: asyncio.Future[None]) -> None:
        consumer = stream()
        if consumer is not None:
            consumer._lost()

    return lost


def _send_close(link: _Channel, source: Any) -> None:
    try:
        link.call_control_only("stream_close", source)
    except DeadReferenceError:
        pass
