"""Schemas: what a remote method accepts and returns, declared once in a `RemoteInterface` and
checked on every call.

An interface is declared with type hints::

    class RIStore(RemoteInterface):
        __remote_name__ = "RIStore.example.org"
        def get(self, key: Annotated[bytes, MaxLength(64)]) -> bytes | None: ...

or, unchanged, in foolscap's spelling: no ``self``, each argument's default is its constraint,
and what the method returns is the constraint of its result::

    class RIStore(RemoteInterface):
        __remote_name__ = "RIStore.example.org"
        def get(key=ByteStringConstraint(64)):
            return ChoiceOf(bytes, None)

The hints understood: ``int``, ``bool``, ``float``, ``str``, ``bytes``, ``None``, unions and
``Optional``, ``list[T]``, ``tuple[T, ...]``, ``tuple[A, B]``, ``dict[K, V]``, ``set[T]``,
``frozenset[T]``, a `RemoteInterface` (a reference to an object that implements it), a
`pbfast.Copyable` class, ``typing.Any``; ``Annotated[T, MaxLength(n)]`` (and `MinLength`,
`MaxValue`, `MinValue`) bound sizes and values. foolscap's shorthand works in both spellings:
``bytes``, ``str``, ``int`` (up to 1024 bytes of magnitude), ``float``, ``bool``, ``None`` and a
tuple of constraints (a tuple of exactly those).

A constraint that is not met raises `pbfast.Violation`, whose message says which method, which
argument (and where inside it) and which bound. On a Tub, a call whose arguments hold a string
longer than any its method admits (`RemoteMethodSchema.max_string_bytes`) is refused as it
arrives, before the string is buffered.
"""

from __future__ import annotations

import copy
import functools
import inspect
import re
import types
import typing
from collections.abc import Callable, Collection, Iterable
from typing import Any as _AnyType
from typing import ClassVar

from .errors import Violation

__all__ = [
    "Any",
    "AttributeDictConstraint",
    "BooleanConstraint",
    "ByteStringConstraint",
    "ChoiceOf",
    "Constraint",
    "CopyableConstraint",
    "DictOf",
    "DuplicateRemoteInterfaceError",
    "IntegerConstraint",
    "ListOf",
    "MaxLength",
    "MaxValue",
    "MinLength",
    "MinValue",
    "Nothing",
    "NumberConstraint",
    "Optional",
    "RemoteInterface",
    "RemoteInterfaceConstraint",
    "RemoteMethodSchema",
    "SetOf",
    "Shared",
    "StringConstraint",
    "TupleOf",
    "UnconstrainedMethod",
    "UnicodeConstraint",
    "adapt",
    "get_remote_interface",
    "remote_interface_by_name",
]


def _fail(what: str, where: str = "") -> Violation:
    return Violation(f"{where}: {what}" if where else what)


def _short(obj: object, limit: int = 60) -> str:
    text = repr(obj)
    return text if len(text) <= limit else text[:limit] + "..."


# ------------------------------------------------------------------------------ constraints


class Constraint:
    """What one value must be. `check` raises `pbfast.Violation` if `obj` is not that;
    `inbound` says whether it arrived from the peer (True) or is about to be sent."""

    name: ClassVar[str] = "Constraint"

    def check(self, obj: object, inbound: bool = True, where: str = "") -> None:
        """Raise `pbfast.Violation` (naming `where`, the place of `obj` in the call) unless
        `obj` meets the constraint."""

    def checkObject(self, obj: object, inbound: bool) -> None:
        """foolscap's name for `check`."""
        self.check(obj, inbound)

    def max_string_bytes(self) -> int | None:
        """The longest string a value meeting the constraint may hold anywhere inside it, in
        bytes as sent (a character of text takes up to 4); None when strings of any length may
        be there (a constraint that does not say admits anything)."""
        return None

    def __repr__(self) -> str:
        return f"{self.name}()"


class Any(Constraint):
    """Anything at all."""

    name = "Any"


class ByteStringConstraint(Constraint):
    """A byte string of `minLength` to `maxLength` bytes (None: any length)."""

    name = "ByteStringConstraint"

    def __init__(self, maxLength: int | None = None, minLength: int = 0) -> None:
        self.maxLength: int | None = maxLength
        self.minLength: int = minLength

    def check(self, obj: object, inbound: bool = True, where: str = "") -> None:
        if not isinstance(obj, bytes):
            raise _fail(f"{_short(obj)} is not a byte string", where)
        _check_length(len(obj), self.maxLength, self.minLength, "bytes", where)

    def max_string_bytes(self) -> int | None:
        return self.maxLength

    def __repr__(self) -> str:
        return f"ByteStringConstraint(maxLength={self.maxLength}, minLength={self.minLength})"


# foolscap's name for a byte string constraint (kept with its meaning: bytes, not text).
StringConstraint = ByteStringConstraint


class UnicodeConstraint(Constraint):
    """A text string of `minLength` to `maxLength` characters, matching `regexp` if given."""

    name = "UnicodeConstraint"

    def __init__(self, maxLength: int | None = None, minLength: int = 0, regexp: str | None = None) -> None:
        self.maxLength: int | None = maxLength
        self.minLength: int = minLength
        self.regexp: re.Pattern[str] | None = re.compile(regexp) if regexp is not None else None

    def check(self, obj: object, inbound: bool = True, where: str = "") -> None:
        if not isinstance(obj, str):
            raise _fail(f"{_short(obj)} is not a text string", where)
        _check_length(len(obj), self.maxLength, self.minLength, "characters", where)
        if self.regexp is not None and not self.regexp.search(obj):
            raise _fail(f"{_short(obj)} does not match {self.regexp.pattern!r}", where)

    def max_string_bytes(self) -> int | None:
        return None if self.maxLength is None else 4 * self.maxLength  # UTF-8's longest

    def __repr__(self) -> str:
        return f"UnicodeConstraint(maxLength={self.maxLength}, minLength={self.minLength})"


class IntegerConstraint(Constraint):
    """An integer: with `maxBytes` -1 (foolscap's default) a signed 32-bit one, else one whose
    magnitude is below ``2**(8*maxBytes)`` (None: any); `minValue`/`maxValue` bound it too."""

    name = "IntegerConstraint"

    def __init__(
        self, maxBytes: int | None = -1, *, minValue: float | None = None, maxValue: float | None = None
    ) -> None:
        if maxBytes is not None and maxBytes != -1 and maxBytes < 4:
            raise ValueError(f"maxBytes must be -1, None or at least 4, not {maxBytes}")
        self.maxBytes: int | None = maxBytes
        self.minValue: float | None = minValue
        self.maxValue: float | None = maxValue

    def check(self, obj: object, inbound: bool = True, where: str = "") -> None:
        if isinstance(obj, bool) or not isinstance(obj, int):
            raise _fail(f"{_short(obj)} is not an integer", where)
        if self.maxBytes == -1:
            if not -(2**31) <= obj < 2**31:
                raise _fail(f"{obj} does not fit in a signed 32-bit integer", where)
        elif self.maxBytes is not None and abs(obj) >= 2 ** (8 * self.maxBytes):
            raise _fail(f"integer too large (more than {self.maxBytes} bytes)", where)
        _check_value(obj, self.minValue, self.maxValue, where)

    def max_string_bytes(self) -> int | None:
        return 0  # numbers travel as numbers

    def __repr__(self) -> str:
        return f"IntegerConstraint(maxBytes={self.maxBytes})"


class NumberConstraint(IntegerConstraint):
    """A float, or an integer as `IntegerConstraint` (default up to 1024 bytes)."""

    name = "NumberConstraint"

    def __init__(
        self, maxBytes: int | None = 1024, *, minValue: float | None = None, maxValue: float | None = None
    ) -> None:
        if maxBytes == -1:
            raise ValueError("NumberConstraint takes maxBytes None or at least 4")
        super().__init__(maxBytes, minValue=minValue, maxValue=maxValue)

    def check(self, obj: object, inbound: bool = True, where: str = "") -> None:
        if isinstance(obj, float):
            _check_value(obj, self.minValue, self.maxValue, where)
            return
        super().check(obj, inbound, where)

    def __repr__(self) -> str:
        return f"NumberConstraint(maxBytes={self.maxBytes})"


class BooleanConstraint(Constraint):
    """True or False (only `value`, if given)."""

    name = "BooleanConstraint"

    def __init__(self, value: bool | None = None) -> None:
        self.value: bool | None = value

    def check(self, obj: object, inbound: bool = True, where: str = "") -> None:
        if not isinstance(obj, bool):
            raise _fail(f"{_short(obj)} is not a boolean", where)
        if self.value is not None and obj is not self.value:
            raise _fail(f"{obj} is not {self.value}", where)

    def max_string_bytes(self) -> int | None:
        return 0


class Nothing(Constraint):
    """None."""

    name = "Nothing"

    def check(self, obj: object, inbound: bool = True, where: str = "") -> None:
        if obj is not None:
            raise _fail(f"{_short(obj)} is not None", where)

    def max_string_bytes(self) -> int | None:
        return 0


class TupleOf(Constraint):
    """A tuple (a list too, inbound: foolscap sends both alike) of exactly these elements."""

    name = "TupleConstraint"

    def __init__(self, *constraints: object) -> None:
        self.constraints: tuple[Constraint, ...] = tuple(adapt(c) for c in constraints)

    def check(self, obj: object, inbound: bool = True, where: str = "") -> None:
        if not isinstance(obj, tuple | list):
            raise _fail(f"{_short(obj)} is not a tuple", where)
        if len(obj) != len(self.constraints):
            raise _fail(f"a tuple of {len(obj)} elements where {len(self.constraints)} are expected", where)
        for i, (item, constraint) in enumerate(zip(obj, self.constraints, strict=True)):
            constraint.check(item, inbound, f"{where}[{i}]")

    def max_string_bytes(self) -> int | None:
        return _longest(self.constraints)

    def __repr__(self) -> str:
        return f"TupleOf{self.constraints!r}"


class _Sequence(Constraint):
    kinds: ClassVar[tuple[type, ...]]
    noun: ClassVar[str]

    def __init__(self, constraint: object, maxLength: int | None = None, minLength: int = 0) -> None:
        self.constraint: Constraint = adapt(constraint)
        self.maxLength: int | None = maxLength
        self.minLength: int = minLength

    def check(self, obj: object, inbound: bool = True, where: str = "") -> None:
        if not isinstance(obj, self.kinds):
            raise _fail(f"{_short(obj)} is not a {self.noun}", where)
        items = typing.cast("Collection[object]", obj)
        _check_length(len(items), self.maxLength, self.minLength, "elements", where)
        if isinstance(self.constraint, Any):
            return
        for i, item in enumerate(items):
            self.constraint.check(item, inbound, f"{where}[{i}]")

    def max_string_bytes(self) -> int | None:
        return self.constraint.max_string_bytes()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.constraint!r}, maxLength={self.maxLength})"


class ListOf(_Sequence):
    """A list (or tuple) of `minLength` to `maxLength` elements, each meeting `constraint`."""

    name = "ListConstraint"
    kinds: ClassVar[tuple[type, ...]] = (list, tuple)
    noun: ClassVar[str] = "list"


class SetOf(_Sequence):
    """A set or frozenset (`mutable` True or False demands one), each element meeting
    `constraint`."""

    name = "SetConstraint"
    kinds: ClassVar[tuple[type, ...]] = (set, frozenset)
    noun: ClassVar[str] = "set"

    def __init__(self, constraint: object, maxLength: int | None = None, mutable: bool | None = None) -> None:
        super().__init__(constraint, maxLength)
        self.mutable: bool | None = mutable

    def check(self, obj: object, inbound: bool = True, where: str = "") -> None:
        super().check(obj, inbound, where)
        if self.mutable is not None and isinstance(obj, set) is not self.mutable:
            raise _fail(f"a {'set' if self.mutable else 'frozenset'} is expected", where)


class DictOf(Constraint):
    """A dict of at most `maxKeys` entries, whose keys and values meet the constraints."""

    name = "DictConstraint"

    def __init__(self, keyConstraint: object, valueConstraint: object, maxKeys: int | None = None) -> None:
        self.keyConstraint: Constraint = adapt(keyConstraint)
        self.valueConstraint: Constraint = adapt(valueConstraint)
        self.maxKeys: int | None = maxKeys

    def check(self, obj: object, inbound: bool = True, where: str = "") -> None:
        if not isinstance(obj, dict):
            raise _fail(f"{_short(obj)} is not a dict", where)
        _check_length(len(obj), self.maxKeys, 0, "keys", where)
        for key, value in obj.items():
            self.keyConstraint.check(key, inbound, f"{where}<key {_short(key, 30)}>")
            self.valueConstraint.check(value, inbound, f"{where}[{_short(key, 30)}]")

    def max_string_bytes(self) -> int | None:
        return _longest((self.keyConstraint, self.valueConstraint))

    def __repr__(self) -> str:
        return f"DictOf({self.keyConstraint!r}, {self.valueConstraint!r}, maxKeys={self.maxKeys})"


class ChoiceOf(Constraint):
    """One of the alternatives."""

    name = "PolyConstraint"

    def __init__(self, *alternatives: object) -> None:
        self.alternatives: tuple[Constraint, ...] = tuple(adapt(a) for a in alternatives)

    def check(self, obj: object, inbound: bool = True, where: str = "") -> None:
        for alternative in self.alternatives:
            try:
                alternative.check(obj, inbound, where)
                return
            except Violation:
                pass
        raise _fail(f"{_short(obj)} meets none of {list(self.alternatives)!r}", where)

    def max_string_bytes(self) -> int | None:
        return _longest(self.alternatives)

    def __repr__(self) -> str:
        return f"ChoiceOf{self.alternatives!r}"


class Optional(Constraint):
    """foolscap's optional argument: `constraint`, or left out (the method's default applies)."""

    name = "Optional"

    def __init__(self, constraint: object, default: object = None) -> None:
        self.constraint: Constraint = adapt(constraint)
        self.default: object = default

    def check(self, obj: object, inbound: bool = True, where: str = "") -> None:
        self.constraint.check(obj, inbound, where)

    def max_string_bytes(self) -> int | None:
        return self.constraint.max_string_bytes()


class Shared(Constraint):
    """foolscap's marker for a value that may be referenced more than once: checked as
    `constraint` (references are not counted)."""

    name = "Shared"

    def __init__(self, constraint: object, refLimit: int | None = None) -> None:
        self.constraint: Constraint = adapt(constraint)
        self.refLimit: int | None = refLimit

    def check(self, obj: object, inbound: bool = True, where: str = "") -> None:
        self.constraint.check(obj, inbound, where)

    def max_string_bytes(self) -> int | None:
        return self.constraint.max_string_bytes()


class CopyableConstraint(Constraint):
    """An instance of a `pbfast.Copyable` class as sent, or, received, a copy of one: an object
    whose copy type (``typeToCopy`` or ``copytype``) is the class's."""

    name = "CopyableConstraint"

    def __init__(self, cls: type) -> None:
        self.cls: type = cls
        self.type_name: str | None = _copy_type(cls)

    def check(self, obj: object, inbound: bool = True, where: str = "") -> None:
        if isinstance(obj, self.cls):
            return
        if inbound and self.type_name is not None and _copy_type(type(obj)) == self.type_name:
            return
        raise _fail(f"{_short(obj)} is not a {self.type_name or self.cls.__qualname__}", where)


class AttributeDictConstraint(Constraint):
    """The state of a copy (a `RemoteCopy`'s ``stateSchema``): a dict whose named attributes meet
    their constraints; other names are refused unless `ignoreUnknown`."""

    name = "AttributeDictConstraint"

    def __init__(self, *attrTuples: tuple[str, object], ignoreUnknown: bool = False) -> None:
        self.keys: dict[str, Constraint] = {name: adapt(c) for name, c in attrTuples}
        self.required: list[str] = [name for name, c in self.keys.items() if not isinstance(c, Optional)]
        self.ignoreUnknown: bool = ignoreUnknown

    def check(self, obj: object, inbound: bool = True, where: str = "") -> None:
        state = obj if isinstance(obj, dict) else getattr(obj, "__dict__", None)
        if not isinstance(state, dict):
            raise _fail(f"{_short(obj)} has no attributes", where)
        for name, value in state.items():
            constraint = self.keys.get(name)
            if constraint is None:
                if self.ignoreUnknown:
                    continue
                raise _fail(f"unknown attribute {name!r}", where)
            constraint.check(value, inbound, f"{where}.{name}")
        for name in self.required:
            if name not in state:
                raise _fail(f"missing attribute {name!r}", where)


class RemoteInterfaceConstraint(Constraint):
    """A reference to an object implementing `interface` (None: any reference). Received, it is a
    reference whose advertised interface name is `interface`'s; sent, a `Referenceable` that
    implements it or a reference that advertises it."""

    name = "RemoteInterfaceConstraint"

    def __init__(self, interface: type[RemoteInterface] | None) -> None:
        self.interface: type[RemoteInterface] | None = interface

    def check(self, obj: object, inbound: bool = True, where: str = "") -> None:
        wanted = self.interface.__remote_name__ if self.interface is not None else None
        advertised = getattr(obj, "remote_interface_name", _MISSING)
        if hasattr(obj, "callRemote") and advertised is not _MISSING:  # a reference
            if advertised is None and not getattr(obj, "carries_interface_names", True):
                return  # its wire (PB) cannot name interfaces
            if wanted is not None and advertised != wanted:
                what = advertised or "an object without an interface"
                raise _fail(f"a reference to {what}, not {wanted}", where)
            return
        if inbound:
            raise _fail(f"{_short(obj)} is not a reference", where)
        if not hasattr(obj, "remoteMessageReceived"):
            raise _fail(f"{_short(obj)} is not a Referenceable", where)
        if self.interface is not None and get_remote_interface(obj) is not self.interface:
            raise _fail(f"{_short(obj)} does not implement {wanted}", where)

    def __repr__(self) -> str:
        return f"RemoteInterfaceConstraint({self.interface.__remote_name__ if self.interface else None})"


_MISSING = object()


def _copy_type(cls: type) -> str | None:
    name = getattr(cls, "typeToCopy", None) or getattr(cls, "copytype", None)
    return name if isinstance(name, str) else None


def _longest(constraints: Iterable[Constraint]) -> int | None:
    """The most `max_string_bytes` of any of `constraints` (0 for none; None if one is None)."""
    longest = 0
    for constraint in constraints:
        n = constraint.max_string_bytes()
        if n is None:
            return None
        longest = max(longest, n)
    return longest


def _check_length(n: int, most: int | None, least: int, unit: str, where: str) -> None:
    if most is not None and n > most:
        raise _fail(f"too long: {n} {unit}, at most {most} allowed", where)
    if n < least:
        raise _fail(f"too short: {n} {unit}, at least {least} needed", where)


def _check_value(value: float, least: float | None, most: float | None, where: str) -> None:
    if most is not None and value > most:
        raise _fail(f"{value} is more than the maximum {most}", where)
    if least is not None and value < least:
        raise _fail(f"{value} is less than the minimum {least}", where)


# ------------------------------------------------------------------------------ bounds in hints


class _Bound:
    """A bound in ``Annotated[...]``: a number, compared and shown as given."""

    __slots__ = ("n",)

    def __init__(self, n: float) -> None:
        self.n: float = n

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.n == self.n

    def __hash__(self) -> int:
        return hash((type(self), self.n))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.n!r})"


class MaxLength(_Bound):
    """``Annotated[T, MaxLength(n)]``: at most `n` bytes, characters, elements or keys."""

    __slots__ = ()
    n: int


class MinLength(_Bound):
    """``Annotated[T, MinLength(n)]``: at least `n` bytes, characters or elements."""

    __slots__ = ()
    n: int


class MaxValue(_Bound):
    """``Annotated[int, MaxValue(n)]`` (or float): at most `n`."""

    __slots__ = ()


class MinValue(_Bound):
    """``Annotated[int, MinValue(n)]`` (or float): at least `n`."""

    __slots__ = ()


# ------------------------------------------------------------------------------ adapting


def adapt(spec: object) -> Constraint:
    """The constraint `spec` stands for: a constraint as it is, foolscap's shorthand (``bytes``,
    ``str``, ``int``, ``float``, ``bool``, ``None``, a tuple of constraints) or a type hint.

    Raises:
        TypeError: `spec` is none of these.
    """
    if isinstance(spec, Constraint):
        return spec
    if spec is None or spec is type(None):
        return Nothing()
    if isinstance(spec, tuple):
        return TupleOf(*spec)
    simple = _SHORTHAND.get(spec) if isinstance(spec, type) else None
    if simple is not None:
        return simple()
    if spec is _AnyType or spec is object:
        return Any()
    origin = typing.get_origin(spec)
    args = typing.get_args(spec)
    if origin is typing.Annotated:
        return _bounded(adapt(args[0]), args[1:], spec)
    if origin in (typing.Union, types.UnionType):
        alternatives = [adapt(a) for a in args]
        return alternatives[0] if len(alternatives) == 1 else ChoiceOf(*alternatives)
    if origin is list or spec is list:
        return ListOf(args[0] if args else Any())
    if origin is tuple or spec is tuple:
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            return ListOf(args[0] if args else Any())
        if args == ((),):
            return TupleOf()
        return TupleOf(*args)
    if origin is dict or spec is dict:
        return DictOf(*(args or (Any(), Any())))
    if origin is set or spec is set:
        return SetOf(args[0] if args else Any(), mutable=True)
    if origin is frozenset or spec is frozenset:
        return SetOf(args[0] if args else Any(), mutable=False)
    if isinstance(spec, type) and issubclass(spec, RemoteInterface):
        return RemoteInterfaceConstraint(None if spec is RemoteInterface else spec)
    if isinstance(spec, type) and _copy_type(spec) is not None:
        return CopyableConstraint(spec)
    if isinstance(spec, type) and hasattr(spec, "remoteMessageReceived"):
        return RemoteInterfaceConstraint(None)  # any Referenceable: a reference on arrival
    raise TypeError(f"cannot make a constraint from {spec!r}")


_SHORTHAND: dict[object, Callable[[], Constraint]] = {
    bytes: ByteStringConstraint,
    str: UnicodeConstraint,
    bool: BooleanConstraint,
    float: NumberConstraint,
    int: lambda: IntegerConstraint(maxBytes=1024),
}


def _bounded(constraint: Constraint, marks: tuple[object, ...], spec: object) -> Constraint:
    """A copy of `constraint` with the bounds of ``Annotated[...]``'s marks applied (a copy:
    the constraint may be one the user shares elsewhere)."""
    constraint = copy.copy(constraint)
    for mark in marks:
        if isinstance(mark, MaxLength | MinLength):
            if isinstance(mark, MinLength):
                attribute = "minLength"
            else:
                attribute = "maxKeys" if isinstance(constraint, DictOf) else "maxLength"
            if not hasattr(constraint, attribute):
                raise TypeError(f"{type(mark).__name__} does not apply to {spec!r}")
            setattr(constraint, attribute, mark.n)
        elif isinstance(mark, MaxValue | MinValue):
            if not isinstance(constraint, IntegerConstraint):
                raise TypeError(f"{type(mark).__name__} does not apply to {spec!r}")
            setattr(constraint, "maxValue" if isinstance(mark, MaxValue) else "minValue", mark.n)
        elif isinstance(mark, Constraint):
            constraint = copy.copy(mark)  # Annotated[bytes, ByteStringConstraint(64)]
    return constraint


# ------------------------------------------------------------------------------ methods


class RemoteMethodSchema:
    """The schema of one remote method: its arguments' constraints (in order), which of them are
    required, and its result's constraint. Built from a method of a `RemoteInterface`, or, as
    foolscap allows, from keyword constraints: ``RemoteMethodSchema(_response=bool, key=bytes)``.
    """

    def __init__(
        self, method: Callable[..., object] | None = None, _response: object = None, **kwargs: object
    ) -> None:
        self.name = ""
        self.interface: type[RemoteInterface] | None = None
        self.argumentNames: list[str] = []
        self.argConstraints: dict[str, Constraint] = {}
        self.required: list[str] = []
        self.responseConstraint: Constraint | None = None
        self.acceptUnknown: bool = bool(kwargs.pop("__acceptUnknown__", False))
        self.ignoreUnknown: bool = bool(kwargs.pop("__ignoreUnknown__", False))
        if method is not None:
            self._from_method(method)
            return
        if _response is not None:
            self.responseConstraint = adapt(_response)
        for name, spec in kwargs.items():
            self._add(name, adapt(spec), required=not isinstance(spec, Optional))

    def _add(self, name: str, constraint: Constraint, required: bool) -> None:
        self.argumentNames.append(name)
        self.argConstraints[name] = constraint
        if required:
            self.required.append(name)

    def _from_method(self, method: Callable[..., object]) -> None:
        signature = inspect.signature(method)
        parameters = list(signature.parameters.values())
        hinted = bool(getattr(method, "__annotations__", None))
        if hinted:
            hints = typing.get_type_hints(method, include_extras=True)
            if parameters and parameters[0].name == "self":
                parameters = parameters[1:]
            for p in parameters:
                if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                    raise TypeError(f"{method.__qualname__}: *{p.name} cannot be part of a remote schema")
                self._add(p.name, adapt(hints.get(p.name, Any())), required=p.default is p.empty)
            if "return" in hints:
                self.responseConstraint = adapt(hints["return"])
            return
        # foolscap's spelling: each default is the argument's constraint, the result the result's.
        for p in parameters:
            if p.name == "self":
                raise TypeError(f"{method.__qualname__}: a foolscap-style remote method has no 'self'")
            if p.default is p.empty:
                raise TypeError(
                    f"{method.__qualname__}: argument {p.name!r} needs a constraint as its default "
                    "(or a type hint)"
                )
            self._add(p.name, adapt(p.default), required=not isinstance(p.default, Optional))
        self.responseConstraint = adapt(method())

    def _where(self, argument: str) -> str:
        owner = self.interface.__remote_name__ if self.interface is not None else "?"
        return f"{owner}.{self.name}({argument}=)"

    def check_args(self, args: tuple[object, ...], kwargs: dict[str, object], inbound: bool = True) -> None:
        """Raise `pbfast.Violation` unless the arguments meet the schema: not too many, no
        unknown names (unless the schema accepts or ignores them), none required missing, each
        meeting its constraint."""
        if len(args) > len(self.argumentNames):
            raise Violation(
                f"{self._where('')[:-2]}: takes {len(self.argumentNames)} positional arguments, "
                f"{len(args)} given"
            )
        given = dict(zip(self.argumentNames, args, strict=False))
        for name, value in kwargs.items():
            if name in given:
                raise Violation(f"{self._where(name)[:-1]}: given twice")
            given[name] = value
        for name, value in given.items():
            constraint = self.argConstraints.get(name)
            if constraint is None:
                if self.acceptUnknown or self.ignoreUnknown:
                    continue
                raise Violation(f"{self._where(name)[:-1]}: unknown argument {name!r}")
            constraint.check(value, inbound, self._where(name))
        for name in self.required:
            if name not in given:
                raise Violation(f"{self._where(name)[:-1]}: missing required argument {name!r}")

    @functools.cached_property
    def max_string_bytes(self) -> int | None:
        """The longest string the arguments may hold, keyword names included, in bytes as sent
        (see `Constraint.max_string_bytes`); None when one admits strings of any length, or
        arguments the schema does not name are accepted. A Tub refuses a call holding a longer
        string as it arrives, before buffering it."""
        if self.acceptUnknown or self.ignoreUnknown:
            return None
        longest = _longest(self.argConstraints.values())
        if longest is None:
            return None
        return max([longest, *(len(name.encode()) for name in self.argumentNames)])

    def check_result(self, result: object, inbound: bool = True) -> None:
        """Raise `pbfast.Violation` unless `result` meets the result's constraint."""
        if self.responseConstraint is not None:
            owner = self.interface.__remote_name__ if self.interface is not None else "?"
            self.responseConstraint.check(result, inbound, f"the result of {owner}.{self.name}")

    # foolscap's names
    def checkAllArgs(self, args: tuple[object, ...], kwargs: dict[str, object], inbound: bool) -> None:
        self.check_args(args, kwargs, inbound)

    def checkResults(self, results: object, inbound: bool) -> None:
        self.check_result(results, inbound)

    def getResponseConstraint(self) -> Constraint | None:
        return self.responseConstraint


class UnconstrainedMethod(RemoteMethodSchema):
    """A method of an interface that takes anything and returns anything."""

    def __init__(self) -> None:
        super().__init__(__acceptUnknown__=True)

    def check_args(self, args: tuple[object, ...], kwargs: dict[str, object], inbound: bool = True) -> None:
        pass


# ------------------------------------------------------------------------------ interfaces


class DuplicateRemoteInterfaceError(Exception):
    """Two different interfaces claim one ``__remote_name__``."""


_REGISTRY: dict[str, type[RemoteInterface]] = {}


class _RemoteInterfaceMeta(type):
    def __init__(cls, name: str, bases: tuple[type, ...], namespace: dict[str, object]) -> None:
        super().__init__(name, bases, namespace)
        if not any(isinstance(base, _RemoteInterfaceMeta) for base in bases):
            return  # RemoteInterface itself
        remote_name = namespace.get("__remote_name__") or f"{cls.__module__}.{cls.__qualname__}"
        if not isinstance(remote_name, str):
            raise TypeError(f"{name}.__remote_name__ must be a str, not {type(remote_name).__name__}")
        cls.__remote_name__ = remote_name
        methods: dict[str, RemoteMethodSchema] = {}
        for base in reversed(cls.__mro__[1:]):
            methods.update(getattr(base, "_methods", {}))
        for attribute, value in namespace.items():
            if attribute.startswith("_"):
                continue
            if isinstance(value, RemoteMethodSchema):
                schema = value
            elif inspect.isfunction(value):
                schema = RemoteMethodSchema(method=value)
            else:
                continue
            schema.name, schema.interface = attribute, cls  # type: ignore[assignment]
            methods[attribute] = schema
        cls._methods = methods
        old = _REGISTRY.get(remote_name)
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise DuplicateRemoteInterfaceError(
                f"{cls.__module__}.{cls.__qualname__} has the remote name {remote_name!r} of "
                f"{old.__module__}.{old.__qualname__}: give one a __remote_name__ of its own"
            )
        _REGISTRY[remote_name] = cls  # type: ignore[assignment]

    def __getitem__(cls, name: str) -> RemoteMethodSchema:
        """foolscap's ``RIFoo["name"]``: the schema of method `name`."""
        return cls.method(name)  # type: ignore[attr-defined, no-any-return]


class RemoteInterface(metaclass=_RemoteInterfaceMeta):
    """The methods an object offers remotely, with the constraints of their arguments and
    results (see the module's description for the two spellings). ``__remote_name__`` names it
    on the wire (default: its module and class name); set ``remote_interface = RIFoo`` on a
    `Referenceable` that implements it."""

    __remote_name__: ClassVar[str] = ""
    _methods: ClassVar[dict[str, RemoteMethodSchema]] = {}

    def __init__(self) -> None:
        raise TypeError("a RemoteInterface describes objects; it is not made into one")

    @classmethod
    def names(cls) -> list[str]:
        """The names of its methods."""
        return list(cls._methods)

    @classmethod
    def method(cls, name: str) -> RemoteMethodSchema:
        """The schema of method `name`.

        Raises:
            Violation: the interface has no such method.
        """
        schema = cls._methods.get(name)
        if schema is None:
            raise Violation(f"{cls.__remote_name__} has no method {name!r}")
        return schema


def get_remote_interface(obj: object) -> type[RemoteInterface] | None:
    """The interface `obj` declares it implements (its class's ``remote_interface``), if any."""
    interface = getattr(type(obj), "remote_interface", None)
    if isinstance(interface, type) and issubclass(interface, RemoteInterface):
        return interface
    return None


def remote_interface_by_name(name: str) -> type[RemoteInterface] | None:
    """The interface defined in this process under `name`, if any."""
    return _REGISTRY.get(name)
