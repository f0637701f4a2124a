"""Objects that travel by reference: `Referenceable` (yours, called remotely) and
`RemoteReference` (the peer's, which you call)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from . import _calls
from .errors import NoSuchMethod
from .schema import RemoteInterface, RemoteMethodSchema, get_remote_interface
from .streams import RemoteStream

__all__ = ["Avatar", "Link", "Referenceable", "RemoteReference", "Root", "ViewPoint", "Viewable"]


class Link(Protocol):
    """What the objects here need of the connection they travel on (the ``broker`` a
    `Referenceable` is called through and a `RemoteReference` calls through): every connection
    of either wire is one."""

    disconnected: bool
    closed: asyncio.Future[None]
    """Resolves once the connection is gone."""

    def call(
        self, object_id: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], cache: bool = False
    ) -> asyncio.Future[Any]:
        """Call `method` on the peer's object `object_id`: a future for the answer."""
        ...

    def call_only(self, object_id: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """`call`, asking for no answer."""
        ...

    def call_stream(
        self, ref: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> RemoteStream:
        """A stream of what `method` of the peer's object `ref` yields (a pbfast peer's)."""
        ...

    def call_with_options(
        self,
        object_id: Any,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: dict[str, Any],
    ) -> asyncio.Future[Any]:
        """`call` with call options (a deadline): sent with the call to a peer that takes them."""
        ...

    def call_only_with_options(
        self,
        object_id: Any,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: dict[str, Any],
    ) -> None:
        """`call_only` with call options."""
        ...

    def watch(self, ref: Any) -> None:
        """Run `ref`'s disconnect callbacks when the connection ends."""
        ...

    def unwatch(self, ref: Any) -> None:
        """Undo `watch`."""
        ...

    def release(self, luid: Any, count: int) -> None:
        """Tell the peer `count` of its references to `luid` are gone."""
        ...

    async def close(self) -> None:
        """Close the connection and wait until it is gone."""
        ...

    async def wait_writable(self) -> None:
        """Write what is queued, then wait until the connection can take more (the peer is
        reading): what a sender of many messages awaits between them, so that it holds no
        more than the transport's buffer.

        Raises:
            DeadReferenceError: the connection is gone.
        """
        ...


def prefixed_method(obj: Any, prefix: str, message: str) -> Callable[..., Any]:
    """``obj.<prefix><message>``: the method a remote call names (every ``remote_``,
    ``perspective_``, ``view_`` and ``observe_`` dispatch in Python looks it up here; a plain
    Referenceable's ``remote_`` methods are found by the decoders, which report a missing one
    as their wire does: this NoSuchMethod for PB, the lookup's own AttributeError for foolscap).

    Raises:
        NoSuchMethod: for ``remote_`` (Twisted's wording); AttributeError for other prefixes.
    """
    method: Callable[..., Any] | None = getattr(obj, prefix + message, None)
    if method is None:
        if prefix == "remote_":
            raise NoSuchMethod(f"No such method: remote_{message}")
        raise AttributeError(f"{type(obj).__name__} has no method {prefix}{message}")
    return method


def default_dispatch(cls: type) -> bool:
    """Whether a call on a `cls` instance is ``remote_<name>(*args, **kwargs)`` with its result
    sent for no particular perspective: a Referenceable that keeps the default dispatch and
    declares no `RemoteInterface` to check calls against. (The connections run such calls
    without a Python frame of their own.)"""
    return (
        unchecked_remote_methods(cls)
        and getattr(cls, "serializingPerspective", None) is Referenceable.serializingPerspective
    )


def unchecked_remote_methods(cls: type) -> bool:
    """Whether a call on a `cls` instance is just ``remote_<name>(*args, **kwargs)``: a
    Referenceable with the default `Referenceable.remoteMessageReceived` and no
    ``remote_interface``."""
    return (
        issubclass(cls, Referenceable)
        and cls.remoteMessageReceived is Referenceable.remoteMessageReceived
        and getattr(cls, "remote_interface", None) is None
    )


def checked_interface(cls: type) -> type[RemoteInterface] | None:
    """The interface each call on a `cls` instance is checked against before its method runs:
    the ``remote_interface`` of a Referenceable that keeps the default
    `Referenceable.remoteMessageReceived` (which does the checking), else None."""
    if not issubclass(cls, Referenceable):
        return None
    if cls.remoteMessageReceived is not Referenceable.remoteMessageReceived:
        return None
    interface = getattr(cls, "remote_interface", None)
    return interface if isinstance(interface, type) and issubclass(interface, RemoteInterface) else None


class Referenceable:
    """An object the peer can call: ``remote_<name>`` methods, plain or ``async``.

    Sending one (as an argument or a result) gives the peer a `RemoteReference` to it; the
    object stays in the connection's table until the peer lets go of every reference.

    A class that sets ``remote_interface`` to a `pbfast.RemoteInterface` has every call checked
    against it before the method runs (a method the interface lacks, or arguments that violate
    it, fail the call with `pbfast.Violation`), and its results before they are sent. On a Tub,
    a call holding a string longer than its method admits is refused as it arrives, before the
    string is buffered.
    """

    __slots__ = ()

    def remoteMessageReceived(
        self, broker: Link, message: str, args: tuple[Any, ...], kw: dict[str, Any]
    ) -> Any:
        """Run ``remote_<message>(*args, **kw)``; its result (awaited if awaitable) is the answer.

        Raises:
            NoSuchMethod: there is no such method.
            Violation: the call, or its result, violates the class's ``remote_interface``.
        """
        interface = get_remote_interface(self)
        if interface is None:
            return prefixed_method(self, "remote_", message)(*args, **kw)
        schema = interface.method(message)
        schema.check_args(args, kw)
        result = prefixed_method(self, "remote_", message)(*args, **kw)
        if inspect.isawaitable(result):
            return _checked_when_done(schema, result)
        schema.check_result(result, inbound=False)
        return result

    def serializingPerspective(self) -> Any:
        """The perspective this object's results are sent for (see `Avatar`, `ViewPoint`)."""
        return None


async def _checked_when_done(schema: RemoteMethodSchema, awaitable: Awaitable[Any]) -> Any:
    result = await awaitable
    schema.check_result(result, inbound=False)
    return result


class Root(Referenceable):
    """A `Referenceable` that can be served as a connection's root object (named ``"root"``)."""

    __slots__ = ()

    def rootObject(self, broker: Link) -> Referenceable:
        """The root for one new connection; override to give each connection its own."""
        return self


class Avatar(Referenceable):
    """What a cred login gives the client: its ``perspective_<name>`` methods are called
    remotely. Results are sent for this avatar (it is the perspective a `Viewable` or a
    `Copyable` sees)."""

    __slots__ = ()

    def remoteMessageReceived(
        self, broker: Link, message: str, args: tuple[Any, ...], kw: dict[str, Any]
    ) -> Any:
        return self.perspectiveMessageReceived(broker, message, args, kw)

    def perspectiveMessageReceived(
        self, broker: Link, message: str, args: tuple[Any, ...], kw: dict[str, Any]
    ) -> Any:
        """Run ``perspective_<message>(*args, **kw)``.

        Raises:
            AttributeError: there is no such method.
        """
        return prefixed_method(self, "perspective_", message)(*args, **kw)

    def serializingPerspective(self) -> Any:
        return self


class Viewable:
    """An object that is never sent itself: the peer gets a reference to a `ViewPoint` of it
    for the perspective it was sent for, and calls to it run ``view_<name>(perspective, ...)``."""

    __slots__ = ()

    def viewMessageReceived(
        self, perspective: Any, message: str, args: tuple[Any, ...], kw: dict[str, Any]
    ) -> Any:
        """Run ``view_<message>(perspective, *args, **kw)``.

        Raises:
            AttributeError: there is no such method.
        """
        return prefixed_method(self, "view_", message)(perspective, *args, **kw)


class ViewPoint(Referenceable):
    """A `Viewable` as seen by one perspective (what travels for it)."""

    __slots__ = ("perspective", "viewable")

    def __init__(self, perspective: Any, viewable: Viewable) -> None:
        self.perspective: Any = perspective
        self.viewable: Viewable = viewable

    def remoteMessageReceived(
        self, broker: Link, message: str, args: tuple[Any, ...], kw: dict[str, Any]
    ) -> Any:
        return self.viewable.viewMessageReceived(self.perspective, message, args, kw)

    def serializingPerspective(self) -> Any:
        return self.perspective


class RemoteReference:
    """A reference to an object on the other side of a connection.

    Every ``remote`` occurrence received for the same object yields this same proxy; when it is
    garbage-collected the owner is sent one ``decref`` per occurrence, so its table can empty.
    """

    __slots__ = ("broker", "luid", "_count", "_disconnect_callbacks", "__weakref__")

    def __init__(self, broker: Link, luid: int | bytes) -> None:
        self.broker: Link = broker
        self.luid: int | bytes = luid
        # `remote` occurrences received and not yet decref'd (0 for the unreferenced root).
        self._count = 0
        self._disconnect_callbacks: list[Callable[[RemoteReference], object]] | None = None

    # Whether the wire names the interface of the object referred to (foolscap's does, PB's
    # cannot): where it cannot, a reference meets any `RemoteInterface` constraint.
    carries_interface_names = False

    @property
    def remote_interface_name(self) -> str | None:
        """The name of the `RemoteInterface` the peer says the object implements (None: it named
        none, or the wire cannot say)."""
        return None

    def callRemote(self, _name: str, /, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        """Call ``remote_<_name>(*args, **kwargs)`` on the remote object; the message is sent
        at once and the returned future resolves to the result.

        The future raises `RemoteError` (the remote method raised), `DeadReferenceError` (the
        connection was already gone), `PBConnectionLost` (it ended while waiting), or
        `JellyError`/`BananaError` (an argument cannot be sent, or the answer not decoded).

        Cancelling it (or the task awaiting it, as ``asyncio.timeout`` does) cancels the remote
        method's task too when the peer is pbfast (a stock Twisted or foolscap peer runs the
        method on: the call is abandoned locally). Inside ``async with pbfast.deadline(...)``,
        or a remote method called with a deadline, the deadline travels with the call (see
        `pbfast.deadline`).
        """
        if _calls.options_in_use:
            options = _calls.gather_options()
            if options is not None:
                return self.broker.call_with_options(self.luid, _name, args, kwargs, options)
        return self.broker.call(self.luid, _name, args, kwargs)

    def callRemoteOnly(self, _name: str, /, *args: Any, **kwargs: Any) -> None:
        """Call without asking for an answer (Twisted's ``pbanswer=False``): the remote side
        runs the method and sends nothing back, not even an error.

        Raises:
            DeadReferenceError: the connection is already gone.
            JellyError, BananaError: an argument cannot be sent.
        """
        if _calls.options_in_use:
            options = _calls.gather_options()
            if options is not None:
                self.broker.call_only_with_options(self.luid, _name, args, kwargs, options)
                return
        self.broker.call_only(self.luid, _name, args, kwargs)

    def callRemoteStream(self, _name: str, /, *args: Any, **kwargs: Any) -> RemoteStream:
        """Consume the remote method ``remote_<_name>(*args, **kwargs)``, an async generator,
        as an async iterator: ``async for item in ref.callRemoteStream("feed", 10): ...``.

        Nothing is sent until iteration starts. Items come with credit-based flow control (see
        `pbfast.streams.RemoteStream` and its `window`); leaving the loop early or cancelling
        the consuming task closes the remote generator. Only between pbfast peers that both
        speak the ``stream`` extension.

        Raises:
            pbfast.Error: the peer is not pbfast, or does not speak the extension (raised here,
                before anything is sent).
        """
        return self.broker.call_stream(self, _name, args, kwargs)

    def notifyOnDisconnect(self, callback: Callable[[RemoteReference], object]) -> None:
        """Run ``callback(self)`` when the connection ends (keeps this reference alive until then)."""
        if self._disconnect_callbacks is None:
            self._disconnect_callbacks = []
            self.broker.watch(self)
        self._disconnect_callbacks.append(callback)

    def dontNotifyOnDisconnect(self, callback: Callable[[RemoteReference], object]) -> None:
        """Undo `notifyOnDisconnect`.

        Raises:
            ValueError: `callback` was not registered.
        """
        if not self._disconnect_callbacks or callback not in self._disconnect_callbacks:
            raise ValueError(f"{callback!r} was not registered with notifyOnDisconnect")
        self._disconnect_callbacks.remove(callback)
        if not self._disconnect_callbacks:
            self._disconnect_callbacks = None
            self.broker.unwatch(self)

    def __repr__(self) -> str:
        luid = self.luid.decode() if isinstance(self.luid, bytes) else self.luid
        return f"<RemoteReference {luid} on {self.broker!r}>"

    def __del__(self) -> None:
        if self._count:
            self.broker.release(self.luid, self._count)
