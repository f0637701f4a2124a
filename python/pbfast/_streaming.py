"""Streams on a connection, either wire: the messages of the ``stream`` extension.

Everything travels as ordinary calls between ordinary references, so it is written once for
both wires (docs/extensions.md has the messages):

- the consumer (`pbfast.streams.RemoteStream`) exports a `_Sink`; the producer is a `_Source`
  running the iterator in a task of its own;
- a stream is started by the consumer: ``stream`` on the control channel for
  ``callRemoteStream`` (answered with the source), ``start`` on the source for a
  `pbfast.stream` the peer sent (a copy of type ``pbfast.stream`` naming the source); either
  carries the sink and the first credit;
- the source sends ``items(first, batch, size)`` (answered, so that a batch the consumer cannot
  decode fails the stream), then ``end()`` or ``fail(failure)``, to the sink; the consumer sends
  ``stream_credit(source, items, size)`` as it consumes, or ``stream_close(source)`` to stop
  early, on the control channel (calls without an answer there are never held back).

A source's task does not count against ``max_in_flight`` (it may wait for credit as long as its
consumer likes); the streams a peer may start on one connection are bounded by
``max_in_flight`` on their own. On a traced connection a stream is one span on each side (see
`pbfast._tracing`); the calls above make none.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from . import _tracing
from .errors import DeadReferenceError, Error, LimitExceeded, RemoteError
from .referenceable import Link, Referenceable, RemoteReference
from .streams import BATCH_BYTES, BATCH_ITEMS, RemoteStream, Stream, _estimate, estimate_size

__all__ = [
    "EXTENSION",
    "STREAM_TYPE",
    "StreamLink",
    "open_stream",
    "receive_stream",
    "require",
    "send_stream",
    "serve_stream",
    "source_of",
]

log = logging.getLogger("pbfast")

EXTENSION = "stream"
# The copy type (PB's jelly tag, foolscap's copyable type) of a `pbfast.stream` sent to a peer.
STREAM_TYPE = "pbfast.stream"

# The sources' tasks (the loop holds tasks only weakly; a source waiting for credit is
# otherwise referred to by nothing but itself once its consumer let go of it).
_running: set[asyncio.Task[None]] = set()
# The sources running on each connection (bounded by its max_in_flight).
_counts: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


class StreamLink(Link, Protocol):
    """What streams need of a connection (every `pbfast._connection.Connection` is one)."""

    peer: str
    peer_is_pbfast: bool
    peer_extensions: frozenset[str]
    options: Any

    def call_control(self, method: str, *args: Any) -> asyncio.Future[Any]: ...

    def call_control_only(self, method: str, *args: Any) -> None: ...

    def _limit_reached(self, limit: str, detail: str) -> None: ...

    def _stream_ended(self) -> None: ...

    def _stream_span(self, method: str) -> tuple[_tracing.SpanEnd | None, tuple[Any, ...]]:
        """For a stream of the peer's `method` about to start: what ends its span (None when
        the connection is not traced) and the options to send with ``stream`` (its trace
        context), if any."""
        ...

    def _stream_failure(self, exc: BaseException, what: str) -> Any:
        """`exc` as a value the wire sends as a failure (logged as the wire logs the failures
        of remote methods); `what` names the stream."""
        ...


def require(link: StreamLink, what: str) -> None:
    """Refuse, before anything is sent, to use a stream with a peer that does not speak the
    extension.

    Raises:
        Error: the peer is not pbfast, or lacks the extension.
    """
    if EXTENSION in link.peer_extensions:
        return
    if link.peer_is_pbfast:
        why = f"the pbfast peer {link.peer} does not speak the {EXTENSION!r} extension"
    else:
        why = f"the peer {link.peer} is not pbfast (a stock Twisted or foolscap peer, or not connected yet)"
    raise Error(f"{what} needs a pbfast peer that speaks the {EXTENSION!r} extension: {why}")


# ---------------------------------------------------------------------- the consumer's side


class _Sink(Referenceable):
    """The consumer's end, which the producer sends to (holding its `RemoteStream` weakly, so
    that a stream dropped unfinished can be collected, and then closes itself)."""

    __slots__ = ("_stream",)
    _untraced = True  # (calls on it are the stream's own: see `_internal`)

    def __init__(self, stream: RemoteStream) -> None:
        self._stream = weakref.ref(stream)

    def remote_items(self, first: int, items: Any, size: int) -> None:
        stream = self._stream()
        if stream is not None:
            stream._receive_items(first, list(items) if type(items) is tuple else items, size)

    def remote_end(self) -> None:
        stream = self._stream()
        if stream is not None:
            stream._receive_end(None)

    def remote_fail(self, failure: Any) -> None:
        stream = self._stream()
        if stream is not None:
            if not isinstance(failure, RemoteError):
                failure = RemoteError("builtins.object", repr(failure)[:200])
            stream._receive_end(failure)


def open_stream(
    link: StreamLink, ref: RemoteReference, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> RemoteStream:
    """``ref.callRemoteStream(method, *args, **kwargs)``: a stream that, once iterated, asks
    the peer (on the control channel) to run the method and stream what it yields.

    Raises:
        Error: the peer does not speak the extension.
    """
    require(link, "callRemoteStream")

    def start(stream: RemoteStream, max_items: int, max_bytes: int) -> asyncio.Future[Any]:
        stream._on_end, options = link._stream_span(method)
        sink = _Sink(stream)
        return link.call_control("stream", ref, method, args, kwargs, sink, max_items, max_bytes, *options)

    return RemoteStream(link, start)


def receive_stream(link: StreamLink, state: Any) -> RemoteStream:
    """The `RemoteStream` for a received ``pbfast.stream`` copy.

    Raises:
        Error: the state does not name a source of the peer.
    """
    source = state.get("source") if isinstance(state, dict) else None
    if not isinstance(source, RemoteReference) or source.broker is not link:
        raise Error(f"a {STREAM_TYPE} copy must name its source, a reference to the sender's object")

    def start(stream: RemoteStream, max_items: int, max_bytes: int) -> Any:
        _internal(source.callRemoteOnly, "start", _Sink(stream), max_items, max_bytes)
        return source

    return RemoteStream(link, start, source)


# ---------------------------------------------------------------------- the producer's side


def source_of(link: StreamLink, source: Any) -> _Source:
    """The source a control call names: one of ours on this connection.

    Raises:
        Error: it is not.
    """
    if not isinstance(source, _Source) or source._link is not link:
        raise Error(
            "stream_credit and stream_close name a stream's source, a reference to the producer's object"
        )
    return source


def send_stream(link: StreamLink, stream: Stream) -> dict[str, Any]:
    """The state of the copy a `pbfast.stream` travels as: its new source.

    Raises:
        Error: the peer does not speak the extension.
    """
    require(link, "sending a pbfast.stream")
    return {"source": _Source(link, "pbfast.stream", stream=stream)}


def serve_stream(
    link: StreamLink,
    target: Any,
    method: Any,
    args: Any,
    kwargs: Any,
    sink: Any,
    max_items: Any,
    max_bytes: Any,
    *,
    on_end: _tracing.SpanEnd | None = None,
) -> Any:
    """The control message ``stream``: run `method` of our object `target` and stream what it
    yields to `sink`, the peer's consumer, with the first credit; the answer is the source (or,
    if the method is a coroutine, a coroutine for it). `on_end` is called with the generator's
    exception (or None) once the stream is over.

    Raises:
        Error: the arguments are malformed.
        TypeError: the method's result is not an async iterable.
        LimitExceeded: the peer already has ``max_in_flight`` streams running here.
    """
    if type(method) is not str or not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
        raise Error("stream takes a target, a method name, its arguments (a list) and keywords (a dict)")
    if not all(type(key) is str for key in kwargs):
        raise Error("the keywords of a streamed call must be strings")
    _check_start(link, sink, max_items, max_bytes)
    full = _full(link)
    if full is not None:
        raise full
    dispatch = getattr(target, "remoteMessageReceived", None)
    if isinstance(target, RemoteReference) or dispatch is None:
        raise Error(f"cannot stream from {type(target).__name__}: not one of our objects")
    result = dispatch(link, method, tuple(args), kwargs)
    if inspect.isawaitable(result) and not hasattr(type(result), "__aiter__"):
        return _serve_later(link, method, result, sink, max_items, max_bytes, on_end)
    return _serve(link, method, result, sink, max_items, max_bytes, on_end)


async def _serve_later(
    link: StreamLink,
    method: str,
    awaitable: Any,
    sink: Any,
    items: int,
    nbytes: int,
    on_end: _tracing.SpanEnd | None,
) -> Any:
    return _serve(link, method, await awaitable, sink, items, nbytes, on_end)


def _serve(
    link: StreamLink,
    method: str,
    result: Any,
    sink: Any,
    items: int,
    nbytes: int,
    on_end: _tracing.SpanEnd | None,
) -> _Source:
    if not hasattr(type(result), "__aiter__"):
        raise TypeError(
            f"{method} returned {type(result).__name__}, not an async iterable: "
            "only an async generator (or a method returning an async iterable) can be streamed"
        )
    source = _Source(link, method)
    source._on_end = on_end
    source._begin(sink, items, nbytes, aiter(result))
    return source


def running(link: Any) -> int:
    """How many streams `link` is producing for its peer."""
    return _counts.get(link, 0)


def _full(link: StreamLink) -> LimitExceeded | None:
    """Why the peer may not start one more stream on `link`, if it may not."""
    limit = link.options.max_in_flight
    if _counts.get(link, 0) < limit:
        return None
    message = f"the peer has max_in_flight={limit} streams running already"
    link._limit_reached("max_in_flight", f"{message}; the next one fails")
    return LimitExceeded(message, "max_in_flight")


def _check_start(link: StreamLink, sink: Any, max_items: Any, max_bytes: Any) -> None:
    if not isinstance(sink, RemoteReference) or sink.broker is not link:
        raise Error("a stream's sink must be a reference to the consumer's object")
    for name, value in (("max_items", max_items), ("max_bytes", max_bytes)):
        if type(value) is not int or value <= 0:
            raise Error(f"a stream's first credit ({name}) must be a positive integer, not {value!r}")


class _Source(Referenceable):
    """The producer's end: iterates in a task of its own while it has credit, sending the
    items in batches to the consumer's sink."""

    _untraced = True  # (calls on it are the stream's own: see `_internal`)

    def __init__(self, link: StreamLink, name: str, *, stream: Stream | None = None) -> None:
        self._link = link
        self._name = name
        self._stream = stream  # a pbfast.stream, until started
        self._sink: RemoteReference | None = None
        self._iterator: AsyncIterator[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self._credit_items = 0
        self._credit_bytes = 0
        self._credited: asyncio.Future[None] | None = None
        self._batch: list[Any] = []
        self._batch_bytes = 0
        self._flush_handle: asyncio.Handle | None = None
        # Items sent, batches not yet answered, and what the end waits on for them.
        self._sent = 0
        self._unanswered = 0
        self._drained: asyncio.Future[None] | None = None
        self._done = False  # closed by the consumer, ended, failed, or the connection lost
        self._counted = False
        # Called with the exception the stream failed with (or None) once it is over.
        self._on_end: _tracing.SpanEnd | None = None
        self._failure: BaseException | None = None

    def __repr__(self) -> str:
        return f"<stream source {self._name} to {self._link.peer}>"

    # Messages from the consumer.

    def remote_start(self, sink: Any, max_items: Any, max_bytes: Any) -> None:
        """Start a `pbfast.stream` we sent."""
        _check_start(self._link, sink, max_items, max_bytes)
        stream, self._stream = self._stream, None
        if stream is None or self._done:
            raise Error(f"{self!r} was started already")
        iterator = stream._take()
        if iterator is None:
            failure = self._link._stream_failure(
                Error("this pbfast.stream is being consumed by another receiver already"), self._name
            )
            _send(sink, "fail", failure)
            return
        self._begin(sink, max_items, max_bytes, iterator)

    def credit(self, items: Any, nbytes: Any) -> None:
        """The consumer grants more credit (the control call ``stream_credit``)."""
        if type(items) is not int or type(nbytes) is not int or items < 0 or nbytes < 0:
            raise Error(f"stream_credit takes two counts, not {items!r} and {nbytes!r}")
        self._credit_items += items
        self._credit_bytes += nbytes
        credited = self._credited
        if credited is not None and not credited.done():
            credited.set_result(None)

    def close(self) -> None:
        """The consumer stops early (the control call ``stream_close``)."""
        self._stream = None  # (a pbfast.stream never started stays untouched)
        self._stop()

    # Running.

    def _begin(self, sink: RemoteReference, items: int, nbytes: int, iterator: AsyncIterator[Any]) -> None:
        link = self._link
        full = _full(link)
        if full is not None:
            _send(sink, "fail", link._stream_failure(full, self._name))
            _close_soon(iterator)
            return
        _counts[link] = _counts.get(link, 0) + 1
        self._counted = True
        self._sink = sink
        self._iterator = iterator
        self._credit_items, self._credit_bytes = items, nbytes
        task = self._task = asyncio.get_running_loop().create_task(self._run())
        _running.add(task)
        task.add_done_callback(_running.discard)
        link.closed.add_done_callback(self._lost)

    async def _run(self) -> None:
        iterator = self._iterator
        assert iterator is not None
        try:
            while not self._done:
                if self._credit_items <= 0 or self._credit_bytes <= 0:
                    self._flush()
                    self._credited = asyncio.get_running_loop().create_future()
                    await self._credited
                    self._credited = None
                    continue
                try:
                    item = await anext(iterator)
                except StopAsyncIteration:
                    self._flush()
                    if self._unanswered:
                        # The end goes once the consumer has taken every batch: one it could
                        # not decode fails the stream instead (see `_delivered`).
                        self._drained = asyncio.get_running_loop().create_future()
                        await self._drained
                    self._finish("end")
                    break
                size = _estimate(item, 0)
                self._batch.append(item)
                self._batch_bytes += size
                self._credit_items -= 1
                self._credit_bytes -= size
                if len(self._batch) >= BATCH_ITEMS or self._batch_bytes >= BATCH_BYTES:
                    self._flush()
                    await self._link.wait_writable()
                elif self._flush_handle is None:
                    # Sent once this turn of the loop is over: a producer that yields without
                    # waiting fills a batch first, a slow one sends each item as it comes.
                    self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)
        except asyncio.CancelledError as exc:
            if self._done:
                return  # stopped by us (see `_stop`)
            # The generator's own (something it awaited was cancelled), or the task cancelled
            # from outside (the loop shutting down): either way the consumer hears of it.
            self._flush()
            self._finish("fail", exc)
            if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                raise
        except DeadReferenceError:
            self._done = True  # the connection is gone
        except Exception as exc:
            if not self._done:
                self._flush()
                self._finish("fail", exc)
        finally:
            self._iterator = None
            await self._release(iterator)

    def _flush(self) -> None:
        """Send the items batched so far."""
        handle, self._flush_handle = self._flush_handle, None
        if handle is not None:
            handle.cancel()
        batch, size = self._batch, self._batch_bytes
        if not batch or self._done:
            return
        self._batch, self._batch_bytes = [], 0
        error = self._send_items(batch, size)
        if error is not None:
            # The batch did not encode: send its items one by one up to the one that does not,
            # then fail the stream with why.
            for item in batch:
                error = self._send_items([item], estimate_size(item))
                if error is not None:
                    break
            if error is not None:
                self._abandon(error, f"while sending an item of the stream {self._name}")

    def _send_items(self, batch: list[Any], size: int) -> BaseException | None:
        """Send one batch (numbered by its first item, so the consumer sees one go missing);
        why it could not be encoded, if it could not."""
        sink = self._sink
        assert sink is not None
        try:
            answer: asyncio.Future[Any] = _internal(sink.callRemote, "items", self._sent, batch, size)
        except DeadReferenceError:
            self._stop()
            return None
        except Exception as exc:  # (an encoder that raises rather than failing the future)
            return exc
        if answer.done() and answer.exception() is not None:
            error = answer.exception()
            if isinstance(error, ConnectionError):
                self._stop()
                return None
            return error
        self._sent += len(batch)
        # The answer says whether the consumer could take the batch (decode it).
        self._unanswered += 1
        answer.add_done_callback(self._delivered)
        return None

    def _delivered(self, answer: asyncio.Future[Any]) -> None:
        self._unanswered -= 1
        error = None if answer.cancelled() else answer.exception()
        if error is not None and not isinstance(error, ConnectionError):
            self._abandon(error, f"a batch of the stream {self._name} could not be taken by the consumer")
        elif not self._unanswered and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _abandon(self, error: BaseException, why: str) -> None:
        """Give up on the stream: the consumer gets `error`."""
        if not self._done:
            error.add_note(why)
            self._finish("fail", error)
        self._stop()

    def _finish(self, how: str, exc: BaseException | None = None) -> None:
        """Tell the consumer the stream is over (``end``, or ``fail`` with `exc`)."""
        sink = self._sink
        if self._done or sink is None:
            return
        self._done = True
        self._failure = exc
        if exc is None:
            _send(sink, how)
            return
        try:
            failure = self._link._stream_failure(exc, self._name)
        except Exception as again:  # the failure itself could not be made
            failure = self._link._stream_failure(Error(f"{type(again).__name__} (unsendable)"), self._name)
        _send(sink, how, failure)

    def _stop(self) -> None:
        """Stop producing: the consumer closed, or nothing more can be sent."""
        self._done = True
        task = self._task
        # (Not once the task is closing the iterator: that must not be cut short.)
        running = self._iterator is not None
        if task is not None and running and not task.done() and task is not asyncio.current_task():
            task.cancel()

    def _lost(self, _: asyncio.Future[None]) -> None:
        self._stop()

    async def _release(self, iterator: AsyncIterator[Any]) -> None:
        """Let go of everything; close the iterator (an async generator's ``finally`` blocks
        run)."""
        handle, self._flush_handle = self._flush_handle, None
        if handle is not None:
            handle.cancel()
        self._batch = []
        self._sink = None
        self._credited = self._drained = None
        self._link.closed.remove_done_callback(self._lost)
        if self._counted:
            self._counted = False
            _counts[self._link] -= 1
        try:
            await _close(iterator, self._name)
        finally:
            on_end, self._on_end = self._on_end, None
            if on_end is not None:
                on_end(self._failure)
            self._link._stream_ended()


def _send(sink: RemoteReference, method: str, *args: Any) -> None:
    try:
        _internal(sink.callRemoteOnly, method, *args)
    except DeadReferenceError:
        pass


def _internal(call: Callable[..., Any], *args: Any) -> Any:
    """``call(*args)``, a call of the stream's own: it makes no span on a traced connection
    (the peer makes none for calls on a `_Sink` or a `_Source`)."""
    token = _tracing.INTERNAL.set(True)
    try:
        return call(*args)
    finally:
        _tracing.INTERNAL.reset(token)


async def _close(iterator: AsyncIterator[Any], name: str) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:
        log.exception("closing the stream %s raised", name)


def _close_soon(iterator: AsyncIterator[Any]) -> None:
    """Close an iterator that will not run (in a task: closing may have to await)."""
    if getattr(iterator, "aclose", None) is not None:
        task = asyncio.get_running_loop().create_task(_close(iterator, "refused"))
        _running.add(task)
        task.add_done_callback(_running.discard)
