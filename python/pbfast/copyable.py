"""Objects that travel by copy: `Copyable` (sent as its state) and `RemoteCopy` (made from it
on the receiving side), and the receiver's allow-list, `setUnjellyableForClass`.

A copy goes on the wire as ``[type_tag, state]``: the tag is the sender's qualified class name
unless `Copyable.getTypeToCopy` says otherwise. The receiver builds only what it has registered
for a tag; anything else raises `InsecureJelly` for that call, and no constructor of a class the
receiver did not register ever runs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

from .errors import qualified_name
from .schema import adapt

__all__ = [
    "Copyable",
    "RemoteCopy",
    "setUnjellyableFactoryForClass",
    "setUnjellyableForClass",
    "setUnjellyableForClassTree",
    "unjellyableFor",
]


class Copyable:
    """An object sent by copy. Override `getStateToCopy` (or `getStateToCopyFor`, which is told
    the perspective it is sent for) and `getTypeToCopy` (or `getTypeToCopyFor`), or just set
    `typeToCopy`: the name receivers register (foolscap's convention is a URL-like unique name)."""

    typeToCopy: str | None = None
    """The type tag to send instead of the qualified class name (None: the class name)."""

    def getStateToCopy(self) -> Any:
        """The state to send; by default the instance's ``__dict__``."""
        return self.__dict__

    def getStateToCopyFor(self, perspective: Any) -> Any:
        """The state to send for `perspective` (the avatar it is sent for, or None); by default
        `getStateToCopy`."""
        return self.getStateToCopy()

    def getTypeToCopy(self) -> str | bytes:
        """The type tag the receiver registers: `typeToCopy`, or else the qualified class name."""
        return self.typeToCopy or qualified_name(type(self))

    def getTypeToCopyFor(self, perspective: Any) -> str | bytes:
        """The type tag to send for `perspective`; by default `getTypeToCopy`."""
        return self.getTypeToCopy()


class RemoteCopy:
    """The receiving side of a copy: made with no arguments, then given the sender's state.

    A subclass that sets `copytype` is registered for that type tag (as foolscap does)."""

    copytype: str | None = None
    """The type tag this class is registered for when it is defined (None: not registered)."""

    stateSchema: Any = None
    """What a received state must be (foolscap's name): a `pbfast.schema` constraint, usually
    an `AttributeDictConstraint`; a state that violates it fails the message that carried it
    with `pbfast.Violation`, before the copy is made. None: no check."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        copytype = cls.__dict__.get("copytype")
        if copytype:
            setUnjellyableForClass(copytype, cls)

    def setCopyableState(self, state: Any) -> None:
        """Take the received state; by default, a dict of it becomes the instance's attributes
        (byte-string keys, as old Python 2 peers send them, become str)."""
        if not isinstance(state, dict):
            raise TypeError(f"{qualified_name(type(self))} got a {type(state).__name__} state, not a dict")
        for key, value in state.items():
            name = key.decode("utf-8") if isinstance(key, bytes) else key
            if not isinstance(name, str):
                raise TypeError(f"{qualified_name(type(self))} got a state key that is not a string: {key!r}")
            setattr(self, name, value)


# tag -> ("class", cls) or ("factory", callable)
_registry: dict[bytes, tuple[str, Any]] = {}
_lock = threading.Lock()


def _tag(name: str | bytes | type) -> bytes:
    if isinstance(name, type):
        return qualified_name(name).encode()
    if isinstance(name, str):
        return name.encode()
    if isinstance(name, bytes):
        return name
    raise TypeError(f"a type tag is a class, str or bytes, not {type(name).__name__}")


def setUnjellyableForClass(classname: str | bytes | type, unjellyable: type) -> None:
    """Allow copies tagged `classname` (a tag, or the sending class itself) and build them as
    `unjellyable`: a `RemoteCopy` (or, for caches, `RemoteCache`) subclass, made with no
    arguments and then given the state with ``setCopyableState``."""
    if not isinstance(unjellyable, type) or not hasattr(unjellyable, "setCopyableState"):
        raise TypeError(f"{unjellyable!r} is not a class with setCopyableState (a RemoteCopy or RemoteCache)")
    with _lock:
        _registry[_tag(classname)] = ("class", unjellyable)


def setUnjellyableFactoryForClass(classname: str | bytes | type, factory: Callable[[], Any]) -> None:
    """Allow copies tagged `classname` and build them with ``factory()``, whose result is then
    given the state with ``setCopyableState``."""
    if not callable(factory):
        raise TypeError(f"{factory!r} is not callable")
    with _lock:
        _registry[_tag(classname)] = ("factory", factory)


def setUnjellyableForClassTree(module: ModuleType, baseClass: type, prefix: str | None = None) -> None:
    """Register every subclass of `baseClass` defined in `module` under ``prefix + name``
    (`prefix` defaults to the module's name plus a dot)."""
    prefix = f"{module.__name__}." if prefix is None else prefix
    for name, value in vars(module).items():
        if isinstance(value, type) and issubclass(value, baseClass) and value.__module__ == module.__name__:
            setUnjellyableForClass(f"{prefix}{name}", value)


def unjellyableFor(tag: bytes) -> tuple[str, Any] | None:
    """What is registered for `tag`: ``("class", cls)``, ``("factory", f)`` or None."""
    return _registry.get(tag)


def make_copy(tag: bytes, state: Any) -> Any:
    """Build the registered object for `tag` from `state` (the caller has checked the tag).

    Raises:
        Violation: `state` violates the class's ``stateSchema``.
    """
    kind, target = _registry[tag]
    schema = getattr(target, "stateSchema", None) if kind == "class" else None
    if schema is not None:
        checked = state
        if isinstance(state, dict):  # (old Python 2 peers send byte-string keys)
            checked = {
                k.decode("utf-8", "replace") if isinstance(k, bytes) else k: v for k, v in state.items()
            }
        where = f"the state of a {tag.decode('utf-8', 'replace')} copy"
        adapt(schema).check(checked, inbound=True, where=where)
    obj = target()
    obj.setCopyableState(state)
    return obj
