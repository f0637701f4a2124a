"""`pbfast.schema`: remote interfaces in both spellings (type hints, and foolscap's constraints as
defaults), the constraints themselves, and the Violations they raise (what, where, which bound).
Checking calls against them on a connection is tested with the brokers."""

from __future__ import annotations

import typing
from typing import Annotated

import pbfast
import pytest
from pbfast.schema import (
    Any,
    AttributeDictConstraint,
    ByteStringConstraint,
    ChoiceOf,
    DictOf,
    DuplicateRemoteInterfaceError,
    IntegerConstraint,
    ListOf,
    MaxLength,
    MaxValue,
    MinLength,
    MinValue,
    Nothing,
    NumberConstraint,
    Optional,
    RemoteInterface,
    RemoteInterfaceConstraint,
    RemoteMethodSchema,
    SetOf,
    StringConstraint,
    TupleOf,
    UnconstrainedMethod,
    UnicodeConstraint,
    adapt,
    get_remote_interface,
    remote_interface_by_name,
)


class Point(pbfast.Copyable):
    typeToCopy = "example.pbfast/schema-test/Point"


class RIStore(RemoteInterface):
    __remote_name__ = "RIStore.schema-test.example.org"

    def get(self, key: Annotated[bytes, MaxLength(64)]) -> bytes | None: ...

    def put(
        self, key: Annotated[bytes, MaxLength(64)], value: Annotated[bytes, MaxLength(2**20)]
    ) -> bool: ...

    def keys(self, limit: Annotated[int, MinValue(1), MaxValue(1000)] = 100) -> list[bytes]: ...

    def tagged(self, tags: Annotated[dict[str, int], MaxLength(3)], where: Point | None = None) -> None: ...


class RIFoolscapStore(RemoteInterface):
    """foolscap's spelling, unchanged."""

    __remote_name__ = "RIFoolscapStore.schema-test.example.org"

    def get(key=ByteStringConstraint(64)):  # type: ignore[no-untyped-def]  # noqa: B008
        return ChoiceOf(bytes, None)

    def put(key=bytes, value=StringConstraint(2**20), flags=Optional(ListOf(int, maxLength=4), [])):  # type: ignore[no-untyped-def]  # noqa: B008
        return bool

    def pair(p=(int, str)):  # type: ignore[no-untyped-def]
        return None

    anything = UnconstrainedMethod()


class Store(pbfast.Referenceable):
    remote_interface = RIStore


def violation(call: typing.Callable[[], object]) -> str:
    with pytest.raises(pbfast.Violation) as info:
        call()
    return str(info.value)


def test_interfaces_are_named_and_registered() -> None:
    assert RIStore.__remote_name__ == "RIStore.schema-test.example.org"
    assert remote_interface_by_name("RIStore.schema-test.example.org") is RIStore
    assert remote_interface_by_name("no such interface") is None
    assert RIStore.names() == ["get", "put", "keys", "tagged"]
    assert sorted(RIFoolscapStore.names()) == ["anything", "get", "pair", "put"]
    assert RIFoolscapStore["get"] is RIFoolscapStore.method("get")  # foolscap's RIFoo["name"]
    assert get_remote_interface(Store()) is RIStore
    assert get_remote_interface(pbfast.Referenceable()) is None
    with pytest.raises(pbfast.Violation, match="has no method 'drop'"):
        RIStore.method("drop")

    class RIDefault(RemoteInterface):
        def ping(self) -> None: ...

    assert (
        RIDefault.__remote_name__ == f"{__name__}.test_interfaces_are_named_and_registered.<locals>.RIDefault"
    )
    with pytest.raises(TypeError):
        RIStore()


def test_a_remote_name_belongs_to_one_interface() -> None:
    with pytest.raises(DuplicateRemoteInterfaceError, match="RIStore.schema-test.example.org"):

        class RIImpostor(RemoteInterface):
            __remote_name__ = "RIStore.schema-test.example.org"


def test_hinted_arguments() -> None:
    get = RIStore.method("get")
    get.check_args((b"k",), {})
    get.check_args((), {"key": b"k" * 64})
    message = violation(lambda: get.check_args((b"k" * 65,), {}))
    assert message == "RIStore.schema-test.example.org.get(key=): too long: 65 bytes, at most 64 allowed"
    assert "is not a byte string" in violation(lambda: get.check_args(("text",), {}))
    assert "missing required argument 'key'" in violation(lambda: get.check_args((), {}))
    assert "takes 1 positional arguments, 2 given" in violation(lambda: get.check_args((b"a", b"b"), {}))
    assert "unknown argument 'other'" in violation(lambda: get.check_args((b"a",), {"other": 1}))
    assert "given twice" in violation(lambda: get.check_args((b"a",), {"key": b"b"}))
    keys = RIStore.method("keys")
    keys.check_args((), {})  # a default makes it optional
    keys.check_args((1000,), {})
    assert "1001 is more than the maximum 1000" in violation(lambda: keys.check_args((1001,), {}))
    assert "0 is less than the minimum 1" in violation(lambda: keys.check_args((0,), {}))
    assert "True is not an integer" in violation(lambda: keys.check_args((True,), {}))
    tagged = RIStore.method("tagged")
    tagged.check_args(({"a": 1},), {"where": Point()})
    message = violation(lambda: tagged.check_args(({"a": "x"},), {}))
    assert message.startswith("RIStore.schema-test.example.org.tagged(tags=)['a']: 'x' is not an integer")
    assert "too long: 4 keys" in violation(lambda: tagged.check_args(({"a": 1, "b": 2, "c": 3, "d": 4},), {}))
    assert "meets none of" in violation(lambda: tagged.check_args(({},), {"where": object()}))


def test_hinted_results() -> None:
    RIStore.method("get").check_result(None)
    RIStore.method("get").check_result(b"v")
    assert "the result of RIStore.schema-test.example.org.put" in violation(
        lambda: RIStore.method("put").check_result("yes")
    )
    RIStore.method("keys").check_result([b"a", b"b"])
    assert "[1]: 2 is not a byte string" in violation(lambda: RIStore.method("keys").check_result([b"a", 2]))


def test_foolscap_spelling() -> None:
    get, put, pair = (RIFoolscapStore.method(n) for n in ("get", "put", "pair"))
    get.check_args((b"k",), {})
    assert "too long: 65 bytes" in violation(lambda: get.check_args((b"k" * 65,), {}))
    get.check_result(None)
    get.check_result(b"v")
    assert "meets none of" in violation(lambda: get.check_result(3))
    put.check_args((b"k", b"v"), {})  # `flags` is Optional
    put.check_args((b"k", b"v"), {"flags": [1, 2]})
    assert "too long: 5 elements" in violation(lambda: put.check_args((b"k", b"v", [1] * 5), {}))
    assert put.required == ["key", "value"]
    pair.check_args(((1, "a"),), {})
    assert "a tuple of 3 elements where 2 are expected" in violation(
        lambda: pair.check_args(((1, "a", 2),), {})
    )
    pair.check_result(None)  # `return None`: the result is None
    assert "is not None" in violation(lambda: pair.check_result(1))
    anything = RIFoolscapStore.method("anything")
    anything.check_args((1, 2, 3), {"x": object()})
    anything.check_result(object())


def test_foolscap_spelling_mistakes() -> None:
    with pytest.raises(TypeError, match="has no 'self'"):

        class RIWithSelf(RemoteInterface):
            def get(self, key=bytes):  # type: ignore[no-untyped-def]
                return bytes

    with pytest.raises(TypeError, match="needs a constraint"):

        class RIUnconstrained(RemoteInterface):
            def get(key):  # type: ignore[no-untyped-def]
                return bytes

    with pytest.raises(TypeError, match="cannot make a constraint"):
        adapt(object())


def test_method_schema_from_keywords() -> None:
    schema = RemoteMethodSchema(_response=bool, key=bytes, count=Optional(int, 1))
    schema.check_args((), {"key": b"k"})
    assert schema.required == ["key"]
    schema.checkAllArgs((b"k", 2), {}, True)  # foolscap's names
    schema.checkResults(True, True)
    assert "is not a boolean" in violation(lambda: schema.check_result(1))


def test_shorthand_and_hints_adapt() -> None:
    assert isinstance(adapt(bytes), ByteStringConstraint)
    assert isinstance(adapt(str), UnicodeConstraint)
    assert isinstance(adapt(float), NumberConstraint)
    assert isinstance(adapt(None), Nothing)
    assert isinstance(adapt(typing.Any), Any)
    big = adapt(int)
    assert isinstance(big, IntegerConstraint) and big.maxBytes == 1024
    big.check(2**8000)
    assert "too large" in violation(lambda: big.check(2**8192))
    assert "signed 32-bit" in violation(lambda: IntegerConstraint().check(2**31))
    NumberConstraint().check(1.5)
    assert isinstance(adapt(list[int]), ListOf)
    assert isinstance(adapt(tuple[int, ...]), ListOf)
    assert isinstance(adapt(tuple[int, str]), TupleOf)
    assert isinstance(adapt(dict[str, int]), DictOf)
    assert isinstance(adapt(typing.Optional[int]), ChoiceOf)  # noqa: UP045
    assert isinstance(adapt(RIStore), RemoteInterfaceConstraint)
    frozen = adapt(frozenset[int])
    assert isinstance(frozen, SetOf)
    frozen.check(frozenset({1}))
    assert "a frozenset is expected" in violation(lambda: frozen.check({1}))
    short = adapt(Annotated[str, MinLength(2), MaxLength(3)])
    short.check("abc")
    assert "too short: 1 characters" in violation(lambda: short.check("a"))
    shared = ByteStringConstraint()
    bounded = adapt(Annotated[bytes, shared, MaxLength(2)])
    assert (bounded.maxLength, shared.maxLength) == (2, None)  # the user's own constraint is kept
    with pytest.raises(TypeError, match="MaxValue does not apply"):
        adapt(Annotated[bytes, MaxValue(3)])
    UnicodeConstraint(regexp="^[a-z]+$").check("abc")
    assert "does not match" in violation(lambda: UnicodeConstraint(regexp="^[a-z]+$").check("ABC"))


def test_references_and_copies() -> None:
    constraint = adapt(RIStore)
    constraint.check(Store(), inbound=False)
    assert "does not implement" in violation(lambda: constraint.check(pbfast.Referenceable(), inbound=False))
    assert "is not a reference" in violation(lambda: constraint.check(Store(), inbound=True))

    class FakeReference:
        remote_interface_name = "RIStore.schema-test.example.org"

        def callRemote(self, name: str) -> None: ...

    constraint.check(FakeReference())
    FakeReference.remote_interface_name = "RIOther"
    assert "a reference to RIOther, not RIStore" in violation(lambda: constraint.check(FakeReference()))

    class ReceivedPoint:  # a copy as received: registered for the same type name
        copytype = "example.pbfast/schema-test/Point"

    point = adapt(Point)
    point.check(Point(), inbound=False)
    point.check(ReceivedPoint(), inbound=True)
    assert "is not a example.pbfast/schema-test/Point" in violation(lambda: point.check(object()))


def test_copy_state_schema() -> None:
    schema = AttributeDictConstraint(("x", int), ("y", int), ("label", Optional(str, "")))
    schema.check({"x": 1, "y": 2})
    assert ".x: 'a' is not an integer" in violation(lambda: schema.check({"x": "a", "y": 2}))
    assert "unknown attribute 'z'" in violation(lambda: schema.check({"x": 1, "y": 2, "z": 3}))
    assert "missing attribute 'y'" in violation(lambda: schema.check({"x": 1}))
    AttributeDictConstraint(("x", int), ignoreUnknown=True).check({"x": 1, "z": 3})


def test_the_longest_string_a_call_may_hold() -> None:
    """What a Tub refuses a call from as it arrives: the longest string its arguments may hold,
    in bytes as sent (4 a character of text), argument names included; None when unbounded."""
    assert RIStore.method("get").max_string_bytes == 64
    assert RIStore.method("put").max_string_bytes == 2**20
    assert RIStore.method("keys").max_string_bytes == len("limit")  # only its name is a string
    assert RIStore.method("tagged").max_string_bytes is None  # str keys of any length, a copy
    assert RIFoolscapStore.method("get").max_string_bytes == 64
    assert RIFoolscapStore.method("put").max_string_bytes is None  # a bare bytes key
    assert RIFoolscapStore.method("pair").max_string_bytes is None  # a bare str
    assert RIFoolscapStore.method("anything").max_string_bytes is None

    def longest(**arguments: object) -> int | None:
        return RemoteMethodSchema(**arguments).max_string_bytes

    assert longest(a=int, b=bool, c=None, d=float) == 1
    assert longest(text=UnicodeConstraint(10), raw=ByteStringConstraint(30)) == 40
    assert longest(x=ListOf(TupleOf(ByteStringConstraint(5), DictOf(UnicodeConstraint(3), int)))) == 12
    assert longest(x=SetOf(ByteStringConstraint(7)), y=Optional(ByteStringConstraint(9))) == 9
    assert longest(x=ChoiceOf(ByteStringConstraint(7), None, int)) == 7
    assert longest(x=ChoiceOf(ByteStringConstraint(7), Any())) is None
    assert longest(x=adapt(RIStore)) is None  # a reference carries a FURL
    assert longest(x=ByteStringConstraint(7), __acceptUnknown__=True) is None
    assert longest(x=ByteStringConstraint(7), __ignoreUnknown__=True) is None
    assert longest(a_rather_long_argument_name=int) == len("a_rather_long_argument_name")
    assert RemoteMethodSchema().max_string_bytes == 0


@pytest.mark.parametrize(
    "parents,violation",
    [
        (["pbfast.errors.Violation", "pbfast.errors.PbfastError"], True),
        (["foolscap.tokens.Violation", "builtins.Exception"], True),
        (["builtins.ValueError", "builtins.Exception"], False),
    ],
)
def test_a_refusal_from_the_peer_is_caught_as_a_violation(parents: list[str], violation: bool) -> None:
    """A failure whose remote type is a Violation (pbfast's or foolscap's) arrives as a
    `RemoteError` that is a `pbfast.Violation` too; other failures are plain RemoteErrors."""
    from pbfast._failure import remote_error

    error = remote_error({"type": parents[0], "value": "refused", "parents": parents})
    assert isinstance(error, pbfast.RemoteError)
    assert isinstance(error, pbfast.Violation) is violation
    assert error.remoteType == parents[0] and error.parents == tuple(parents)
