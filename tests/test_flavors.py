"""PB's object flavors end to end: Copyable/RemoteCopy, Cacheable/RemoteCache, Viewable, and
the receive limits (``max_proxies`` and the banana limits).

Most tests run over three transports (conftest's ``transport`` fixture, built on
``connections.py``): the in-memory pair of ``pbfast.testing``, TCP on 127.0.0.1 and a unix
socket. Copy registrations are process-global, so every class here has a name starting with
``Fl`` and is registered at module level.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import types
from typing import Any

import pbfast
import pbfast.cred
import pytest
from connections import eventually, pbfast_records, settle

# --------------------------------------------------------------------------------------------
# Helpers (the `transport` fixture is conftest's; see connections.py)
# --------------------------------------------------------------------------------------------


async def log_in(root: pbfast.RemoteReference, username: bytes, password: str, mind: Any = None) -> Any:
    """Twisted's challenge/response login through a portal's root; the avatar's reference."""
    challenge, challenger = await root.callRemote("login", username)
    return await challenger.callRemote("respond", pbfast.cred.respond(challenge, password), mind)


# --------------------------------------------------------------------------------------------
# Copyable / RemoteCopy classes
# --------------------------------------------------------------------------------------------


class FlPond(pbfast.Copyable):
    """Sent with the default state: its ``__dict__``."""

    def __init__(self, color: str, frogs: int) -> None:
        self.color = color
        self.frogs = frogs


class FlPondCopy(pbfast.RemoteCopy):
    def count(self) -> int:
        return self.frogs


pbfast.setUnjellyableForClass(FlPond, FlPondCopy)  # by class


class FlSecretive(pbfast.Copyable):
    """Sends only part of its state."""

    def __init__(self) -> None:
        self.public = "visible"
        self.password = "hunter2"

    def getStateToCopy(self) -> Any:
        return {"public": self.public, "shown": True}


class FlSecretiveCopy(pbfast.RemoteCopy):
    pass


pbfast.setUnjellyableForClass(f"{FlSecretive.__module__}.FlSecretive", FlSecretiveCopy)  # by name


class FlTagged(pbfast.Copyable):
    """Travels under a tag of its own choosing."""

    def __init__(self, n: int) -> None:
        self.n = n

    def getTypeToCopy(self) -> str:
        return "flavors.custom.Tagged"


class FlTaggedCopy(pbfast.RemoteCopy):
    def setCopyableState(self, state: Any) -> None:
        self.state = state


pbfast.setUnjellyableForClass("flavors.custom.Tagged", FlTaggedCopy)


class FlBytesTagged(pbfast.Copyable):
    def getTypeToCopy(self) -> bytes:
        return b"flavors.custom.BytesTagged"

    def getStateToCopy(self) -> Any:
        return [1, 2, 3]


class FlBytesTaggedCopy(pbfast.RemoteCopy):
    def setCopyableState(self, state: Any) -> None:
        self.items = state


pbfast.setUnjellyableForClass(b"flavors.custom.BytesTagged", FlBytesTaggedCopy)


class FlPerspectiveCopyable(pbfast.Copyable):
    """Its state says which perspective it was sent for."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def getStateToCopyFor(self, perspective: Any) -> Any:
        self.seen.append(perspective)
        return {"for": getattr(perspective, "name", None)}


class FlPerspectiveCopy(pbfast.RemoteCopy):
    pass


pbfast.setUnjellyableForClass(FlPerspectiveCopyable, FlPerspectiveCopy)


class FlFactorySource(pbfast.Copyable):
    def __init__(self, value: Any) -> None:
        self.value = value


class FlFactoryProduct:
    """Not a RemoteCopy: a factory makes it, then it is given the state."""

    def __init__(self, serial: int) -> None:
        self.serial = serial
        self.states: list[Any] = []

    def setCopyableState(self, state: Any) -> None:
        self.states.append(state)


FL_FACTORY_CALLS: list[FlFactoryProduct] = []


def fl_factory() -> FlFactoryProduct:
    product = FlFactoryProduct(len(FL_FACTORY_CALLS))
    FL_FACTORY_CALLS.append(product)
    return product


pbfast.setUnjellyableFactoryForClass(f"{FlFactorySource.__module__}.FlFactorySource", fl_factory)


class FlBoth(pbfast.Copyable, pbfast.RemoteCopy):
    """Sent and received as itself (registered for its own name on both sides)."""

    def __init__(self, label: str = "unset") -> None:
        self.label = label

    def shout(self) -> str:
        return self.label.upper()


pbfast.setUnjellyableForClass(FlBoth, FlBoth)


# A module whose class tree is registered with setUnjellyableForClassTree.
fl_tree = types.ModuleType("pbfast_flavors_tree")
exec(
    "import pbfast\n"
    "class TreeBase(pbfast.Copyable, pbfast.RemoteCopy):\n"
    "    def kind(self):\n"
    "        return 'base'\n"
    "class TreeLeaf(TreeBase):\n"
    "    def kind(self):\n"
    "        return 'leaf'\n"
    "class Unrelated(pbfast.Copyable, pbfast.RemoteCopy):\n"
    "    pass\n",
    fl_tree.__dict__,
)


class FlForeignLeaf(fl_tree.TreeBase):  # type: ignore[name-defined]
    """A subclass of the tree's base defined elsewhere: not registered by the tree."""


fl_tree.FlForeignLeaf = FlForeignLeaf  # present in the module, but not defined there
pbfast.setUnjellyableForClassTree(fl_tree, fl_tree.TreeBase)


class FlUnregistered(pbfast.Copyable):
    def __init__(self) -> None:
        self.x = 1


class FlTrap:
    """A class the receiver has but never registered: receiving must not construct it."""

    made: list[Any] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        FlTrap.made.append((args, kwargs))

    def setCopyableState(self, state: Any) -> None:
        FlTrap.made.append(("state", state))


class FlTrapSender(pbfast.Copyable):
    """Sends itself tagged as some other (unregistered) class or module."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def getTypeToCopy(self) -> str:
        return self.tag

    def getStateToCopy(self) -> Any:
        return {"payload": 1}


# --------------------------------------------------------------------------------------------
# Cacheable / RemoteCache classes
# --------------------------------------------------------------------------------------------


class FlDuckPond(pbfast.Cacheable):
    def __init__(self, ducks: list[str] | None = None) -> None:
        self.ducks = list(ducks or ["mallard"])
        self.state_calls = 0
        self.observers: list[pbfast.RemoteCacheObserver] = []
        self.stopped: list[pbfast.RemoteCacheObserver] = []

    def getStateToCacheAndObserveFor(self, perspective: Any, observer: pbfast.RemoteCacheObserver) -> Any:
        self.state_calls += 1
        self.observers.append(observer)
        return {"ducks": list(self.ducks)}

    def stoppedObserving(self, perspective: Any, observer: pbfast.RemoteCacheObserver) -> None:
        self.stopped.append(observer)
        self.observers.remove(observer)

    def add_duck(self, duck: str) -> list[asyncio.Future[Any]]:
        self.ducks.append(duck)
        return [observer.callRemote("add", duck) for observer in self.observers]


class FlDuckPondCopy(pbfast.RemoteCache):
    def setCopyableState(self, state: Any) -> None:
        self.ducks = list(state["ducks"])

    def observe_add(self, duck: str) -> int:
        self.ducks.append(duck)
        return len(self.ducks)

    async def observe_slow_count(self) -> int:
        await asyncio.sleep(0)
        return len(self.ducks)

    def observe_fail(self) -> None:
        raise pbfast.Error("on purpose")


pbfast.setUnjellyableForClass(FlDuckPond, FlDuckPondCopy)


class FlHiddenPond(pbfast.Cacheable):
    """A Cacheable the receiver never registered."""

    def __init__(self) -> None:
        self.stopped = 0

    def getStateToCacheAndObserveFor(self, perspective: Any, observer: Any) -> Any:
        return {"hidden": True}

    def stoppedObserving(self, perspective: Any, observer: Any) -> None:
        self.stopped += 1


# --------------------------------------------------------------------------------------------
# Referenceables, Viewables and a realm
# --------------------------------------------------------------------------------------------


class FlThing(pbfast.Referenceable):
    def remote_ping(self) -> str:
        return "pong"


class FlBoard(pbfast.Viewable):
    def __init__(self) -> None:
        self.seen: list[Any] = []

    def view_who(self, perspective: Any) -> Any:
        self.seen.append(perspective)
        return getattr(perspective, "name", None)

    def view_add(self, perspective: Any, a: int, b: int = 0) -> int:
        return a + b


class FlRoot(pbfast.Root):
    def __init__(self) -> None:
        self.pond = FlDuckPond()
        self.other_pond = FlDuckPond(["teal"])
        self.hidden = FlHiddenPond()
        self.board = FlBoard()
        self.perspective_copyable = FlPerspectiveCopyable()
        self.received: list[Any] = []

    # copies
    def remote_echo(self, x: Any) -> Any:
        return x

    def remote_take(self, x: Any) -> str:
        self.received.append(x)
        return type(x).__name__

    def remote_same(self, a: Any, b: Any) -> bool:
        return a is b

    def remote_pond(self, color: str = "green", frogs: int = 7) -> FlPond:
        return FlPond(color, frogs)

    def remote_shared(self) -> list:
        pond = FlPond("blue", 3)
        return [pond, pond, {"again": pond}]

    def remote_secretive(self) -> FlSecretive:
        return FlSecretive()

    def remote_tagged(self) -> list:
        return [FlTagged(5), FlBytesTagged()]

    def remote_factory(self, value: Any) -> FlFactorySource:
        return FlFactorySource(value)

    def remote_both(self, label: str) -> FlBoth:
        return FlBoth(label)

    def remote_tree(self) -> list:
        return [fl_tree.TreeBase(), fl_tree.TreeLeaf()]

    def remote_tree_unrelated(self) -> Any:
        return fl_tree.Unrelated()

    def remote_tree_foreign(self) -> Any:
        return FlForeignLeaf()

    def remote_unregistered(self) -> Any:
        return [1, FlUnregistered()]

    def remote_trap(self, tag: str) -> Any:
        return FlTrapSender(tag)

    def remote_perspective_copy(self) -> Any:
        return self.perspective_copyable

    # caches
    def remote_cache(self) -> FlDuckPond:
        return self.pond

    def remote_cache_twice(self) -> list:
        return [self.pond, self.pond]

    def remote_other_cache(self) -> FlDuckPond:
        return self.other_pond

    def remote_is_pond(self, x: Any) -> bool:
        return x is self.pond

    def remote_ponds(self, n: int) -> list:
        return [FlDuckPond([f"duck{i}"]) for i in range(n)]

    def remote_refused_then_cache(self) -> list:
        return [FlUnregistered(), self.pond]

    def remote_hidden_cache(self) -> Any:
        return self.hidden

    # references
    def remote_things(self, n: int) -> list:
        return [FlThing() for _ in range(n)]

    def remote_count(self, things: list) -> int:
        return len(things)

    def remote_board(self) -> FlBoard:
        return self.board

    # sizes
    def remote_blob(self, n: int) -> bytes:
        return b"x" * n

    def remote_nested(self, depth: int) -> list:
        return nested(depth)

    def remote_long_list(self, n: int) -> list:
        return list(range(n))


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


class FlPlayer(pbfast.Avatar):
    def __init__(self, name: str, root: FlRoot) -> None:
        self.name = name
        self.root = root

    def perspective_name(self) -> str:
        return self.name

    def perspective_board(self) -> FlBoard:
        return self.root.board

    async def perspective_async_board(self) -> FlBoard:
        await asyncio.sleep(0)
        return self.root.board

    def perspective_copy(self) -> Any:
        return self.root.perspective_copyable

    async def perspective_async_copy(self) -> Any:
        await asyncio.sleep(0)
        return self.root.perspective_copyable

    def perspective_cache(self) -> Any:
        return self.root.pond


class FlRealm:
    def __init__(self, root: FlRoot) -> None:
        self.root = root
        self.avatars: dict[str, FlPlayer] = {}

    def requestAvatar(self, avatar_id: Any, mind: Any) -> Any:
        avatar = self.avatars[avatar_id] = FlPlayer(avatar_id, self.root)
        return avatar


def fl_portal(root: FlRoot) -> tuple[pbfast.Portal, FlRealm]:
    realm = FlRealm(root)
    checker = pbfast.InMemoryUsernamePasswordDatabase(alice="secret", bob="hunter2")
    return pbfast.Portal(realm, [checker]), realm


# --------------------------------------------------------------------------------------------
# Copyable / RemoteCopy
# --------------------------------------------------------------------------------------------


def test_default_state_is_the_dict(run, transport) -> None:
    async def main() -> None:
        async with transport(FlRoot()) as conn:
            got = await conn.root.callRemote("pond", "green", 7)
            assert type(got) is FlPondCopy
            assert (got.color, got.frogs, got.count()) == ("green", 7, 7)
            assert vars(got) == {"color": "green", "frogs": 7}

    run(main())


def test_custom_state_and_registration_by_name(run, transport) -> None:
    async def main() -> None:
        async with transport(FlRoot()) as conn:
            got = await conn.root.callRemote("secretive")
            assert type(got) is FlSecretiveCopy
            assert vars(got) == {"public": "visible", "shown": True}
            assert not hasattr(got, "password")

    run(main())


def test_custom_type_tags(run, transport) -> None:
    async def main() -> None:
        async with transport(FlRoot()) as conn:
            tagged, bytes_tagged = await conn.root.callRemote("tagged")
            assert type(tagged) is FlTaggedCopy
            assert tagged.state == {"n": 5}
            assert type(bytes_tagged) is FlBytesTaggedCopy
            assert bytes_tagged.items == [1, 2, 3]

    run(main())


def test_factory_is_called_then_given_the_state(run, transport) -> None:
    async def main() -> None:
        async with transport(FlRoot()) as conn:
            before = len(FL_FACTORY_CALLS)
            got = await conn.root.callRemote("factory", {"k": [1, 2]})
            assert type(got) is FlFactoryProduct
            assert FL_FACTORY_CALLS[before:] == [got]
            assert got.states == [{"value": {"k": [1, 2]}}]

    run(main())


def test_copyable_that_is_also_its_remote_copy(run, transport) -> None:
    async def main() -> None:
        root = FlRoot()
        async with transport(root) as conn:
            got = await conn.root.callRemote("both", "quack")
            assert type(got) is FlBoth and got.label == "quack" and got.shout() == "QUACK"
            # Sent back (it is a Copyable too): the server receives an FlBoth, and echoes it.
            assert await conn.root.callRemote("take", got) == "FlBoth"
            assert type(root.received[-1]) is FlBoth and root.received[-1].label == "quack"
            again = await conn.root.callRemote("echo", FlBoth("again"))
            assert type(again) is FlBoth and again.label == "again"

    run(main())


def test_class_tree_registration(run, transport) -> None:
    async def main() -> None:
        async with transport(FlRoot()) as conn:
            base, leaf = await conn.root.callRemote("tree")
            assert type(base) is fl_tree.TreeBase and base.kind() == "base"
            assert type(leaf) is fl_tree.TreeLeaf and leaf.kind() == "leaf"
            # Not a subclass of the base: not registered.
            with pytest.raises(pbfast.InsecureJelly, match="pbfast_flavors_tree.Unrelated"):
                await conn.root.callRemote("tree_unrelated")
            # A subclass found in the module but defined elsewhere: not registered either.
            with pytest.raises(pbfast.InsecureJelly, match="FlForeignLeaf"):
                await conn.root.callRemote("tree_foreign")
            assert await conn.root.callRemote("echo", 1) == 1

    run(main())


def test_class_tree_with_a_prefix() -> None:
    module = types.ModuleType("pbfast_flavors_tree_prefixed")
    exec(
        "import pbfast\nclass Base(pbfast.RemoteCopy):\n    pass\nclass Leaf(Base):\n    pass\n",
        module.__dict__,
    )
    pbfast.setUnjellyableForClassTree(module, module.Base, prefix="flavors.prefixed.")
    assert pbfast.copyable.unjellyableFor(b"flavors.prefixed.Leaf") == ("class", module.Leaf)
    assert pbfast.copyable.unjellyableFor(b"flavors.prefixed.Base") == ("class", module.Base)
    assert pbfast.copyable.unjellyableFor(b"pbfast_flavors_tree_prefixed.Leaf") is None


def test_registration_refuses_bad_targets() -> None:
    with pytest.raises(TypeError):
        pbfast.setUnjellyableForClass("flavors.bad.NoState", object)
    with pytest.raises(TypeError):
        pbfast.setUnjellyableForClass("flavors.bad.Instance", FlBoth("x"))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        pbfast.setUnjellyableFactoryForClass("flavors.bad.Factory", 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        pbfast.setUnjellyableForClass(42, FlBoth)  # type: ignore[arg-type]
    assert pbfast.copyable.unjellyableFor(b"flavors.bad.NoState") is None


def test_copies_in_arguments_and_results(run, transport) -> None:
    async def main() -> None:
        root = FlRoot()
        async with transport(root) as conn:
            assert await conn.root.callRemote("take", FlBoth("arg")) == "FlBoth"
            assert await conn.root.callRemote("take", x=FlBoth("kwarg")) == "FlBoth"
            assert [b.label for b in root.received] == ["arg", "kwarg"]
            # A copy inside containers, both ways.
            got = await conn.root.callRemote("echo", {"ponds": [FlBoth("a"), (FlBoth("b"),)]})
            assert [type(x) for x in (got["ponds"][0], got["ponds"][1][0])] == [FlBoth, FlBoth]
            assert (got["ponds"][0].label, got["ponds"][1][0].label) == ("a", "b")

    run(main())


def test_shared_copies_keep_their_identity(run, transport) -> None:
    async def main() -> None:
        async with transport(FlRoot()) as conn:
            first, second, third = await conn.root.callRemote("shared")
            assert type(first) is FlPondCopy
            assert first is second is third["again"]
            # In arguments too.
            both = FlBoth("shared")
            assert await conn.root.callRemote("same", both, both) is True
            assert await conn.root.callRemote("same", both, FlBoth("shared")) is False
            echoed = await conn.root.callRemote("echo", [both, both])
            assert echoed[0] is echoed[1] and echoed[0] is not both

    run(main())


def test_unregistered_copy_in_a_result_fails_that_call_only(run, transport) -> None:
    async def main() -> None:
        async with transport(FlRoot()) as conn:
            with pytest.raises(pbfast.InsecureJelly, match="FlUnregistered"):
                await conn.root.callRemote("unregistered")
            assert await conn.root.callRemote("echo", "still fine") == "still fine"
            assert (await conn.root.callRemote("pond")).frogs == 7
            assert not conn.client_broker.disconnected

    run(main())


def test_unregistered_copy_in_arguments_is_refused_remotely(run, transport) -> None:
    async def main() -> None:
        root = FlRoot()
        async with transport(root) as conn:
            with pytest.raises(pbfast.RemoteError) as info:
                await conn.root.callRemote("take", FlUnregistered())
            assert info.value.check(pbfast.InsecureJelly)
            assert info.value.check(pbfast.JellyError)
            assert "FlUnregistered" in str(info.value)
            assert root.received == []
            assert await conn.root.callRemote("take", FlBoth("ok")) == "FlBoth"

    run(main())


TRAP_TAGS = [
    f"{FlTrap.__module__}.FlTrap",  # a class the receiver has, never registered
    "pbfast_flavors_canary.Thing",  # a module that is importable, never imported
    "pbfast_flavors_canary",
    "os.system",
]


def test_receiving_never_constructs_or_imports(run, transport, tmp_path, monkeypatch) -> None:
    canary = tmp_path / "pbfast_flavors_canary.py"
    imported = tmp_path / "imported"
    canary.write_text(
        f"open({str(imported)!r}, 'w').close()\n"
        "class Thing:\n    def __init__(self):\n        raise SystemExit\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    FlTrap.made.clear()

    async def main() -> None:
        root = FlRoot()
        async with transport(root) as conn:
            for tag in TRAP_TAGS:
                with pytest.raises(pbfast.InsecureJelly):
                    await conn.root.callRemote("trap", tag)
                with pytest.raises(pbfast.RemoteError) as info:
                    await conn.root.callRemote("take", FlTrapSender(tag))
                assert info.value.check(pbfast.InsecureJelly)
            assert root.received == []
            assert await conn.root.callRemote("echo", 1) == 1

    run(main())
    assert FlTrap.made == []
    assert "pbfast_flavors_canary" not in sys.modules
    assert not imported.exists()


def test_copy_state_for_a_perspective(run, transport) -> None:
    async def main() -> None:
        root = FlRoot()
        portal, realm = fl_portal(root)
        async with transport(portal) as conn:
            alice = await log_in(conn.root, b"alice", "secret")
            got = await alice.callRemote("copy")
            assert type(got) is FlPerspectiveCopy and vars(got) == {"for": "alice"}
            assert root.perspective_copyable.seen == [realm.avatars["alice"]]
            got = await alice.callRemote("async_copy")
            assert vars(got) == {"for": "alice"}
            assert root.perspective_copyable.seen[-1] is realm.avatars["alice"]
            bob = await log_in(conn.root, b"bob", "hunter2")
            assert vars(await bob.callRemote("copy")) == {"for": "bob"}
            assert root.perspective_copyable.seen[-1] is realm.avatars["bob"]
        # From a plain Referenceable: no perspective.
        async with transport(root) as conn:
            got = await conn.root.callRemote("perspective_copy")
            assert vars(got) == {"for": None}
            assert root.perspective_copyable.seen[-1] is None

    run(main())


class FlSpokesman(pbfast.Referenceable):
    """A plain Referenceable whose results are sent for a perspective of its choosing."""

    def __init__(self, perspective: Any, root: FlRoot) -> None:
        self.perspective = perspective
        self.root = root

    def serializingPerspective(self) -> Any:
        return self.perspective

    def remote_copy(self) -> Any:
        return self.root.perspective_copyable

    async def remote_async_copy(self) -> Any:
        await asyncio.sleep(0)
        return self.root.perspective_copyable

    def remote_board(self) -> FlBoard:
        return self.root.board


def test_serializing_perspective_of_a_plain_referenceable(run, transport) -> None:
    """`Referenceable.serializingPerspective` decides what perspective results are sent for,
    for any Referenceable, not only Avatars and ViewPoints."""

    async def main() -> None:
        root = FlRoot()
        speaker = FlPlayer("carol", root)

        class SpokesRoot(pbfast.Root):
            def remote_spokesman(self) -> FlSpokesman:
                return FlSpokesman(speaker, root)

        async with transport(SpokesRoot()) as conn:
            spokesman = await conn.root.callRemote("spokesman")
            assert vars(await spokesman.callRemote("copy")) == {"for": "carol"}
            assert vars(await spokesman.callRemote("async_copy")) == {"for": "carol"}
            board = await spokesman.callRemote("board")
            assert await board.callRemote("who") == "carol"

    run(main())


# --------------------------------------------------------------------------------------------
# Cacheable / RemoteCache
# --------------------------------------------------------------------------------------------


def test_cache_state_is_sent_once_per_connection(run, transport) -> None:
    async def main() -> None:
        root = FlRoot()
        async with transport(root) as conn:
            first = await conn.root.callRemote("cache")
            second = await conn.root.callRemote("cache")
            third, fourth = await conn.root.callRemote("cache_twice")
            assert type(first) is FlDuckPondCopy and first.ducks == ["mallard"]
            assert first is second is third is fourth
            assert root.pond.state_calls == 1
            assert len(root.pond.observers) == 1
            assert conn.server_broker.statistics()["caches"] == 1
            assert conn.client_broker.statistics()["cached"] == 1

    run(main())


def test_observer_calls_run_observe_methods(run, transport) -> None:
    async def main() -> None:
        root = FlRoot()
        async with transport(root) as conn:
            copy = await conn.root.callRemote("cache")
            (observer,) = root.pond.observers
            assert isinstance(observer, pbfast.RemoteCacheObserver)
            assert observer.perspective is None
            (future,) = root.pond.add_duck("teal")
            assert await future == 2
            assert copy.ducks == ["mallard", "teal"]
            assert await observer.callRemote("slow_count") == 2
            with pytest.raises(pbfast.RemoteError) as info:
                await observer.callRemote("fail")
            assert info.value.check(pbfast.Error)
            with pytest.raises(pbfast.RemoteError):
                await observer.callRemote("no_such_observe_method")
            assert copy.ducks == ["mallard", "teal"]

    run(main())


def test_remote_cache_sent_back_is_the_original(run, transport) -> None:
    async def main() -> None:
        root = FlRoot()
        async with transport(root) as conn:
            copy = await conn.root.callRemote("cache")
            assert await conn.root.callRemote("is_pond", copy) is True
            assert await conn.root.callRemote("is_pond", [copy][0]) is True
            other = await conn.root.callRemote("other_cache")
            assert await conn.root.callRemote("is_pond", other) is False
            # Echoed back and forth, it stays the same copy.
            assert await conn.root.callRemote("echo", copy) is copy

    run(main())


def test_dropping_the_copy_stops_observing(run, transport) -> None:
    async def main() -> None:
        root = FlRoot()
        async with transport(root) as conn:
            copy = await conn.root.callRemote("cache")
            again = await conn.root.callRemote("cache")
            (observer,) = root.pond.observers
            assert conn.server_broker.statistics()["caches"] == 1
            del copy, again
            await eventually(lambda: root.pond.stopped == [observer])
            await eventually(lambda: conn.server_broker.statistics()["caches"] == 0)
            assert conn.server_broker.statistics()["objects"] == 0
            await eventually(lambda: conn.client_broker.statistics()["cached"] == 0)
            # Sent again: a fresh copy with its state, and a new observer.
            fresh = await conn.root.callRemote("cache")
            assert fresh.ducks == ["mallard"] and root.pond.state_calls == 2
            assert len(root.pond.observers) == 1
            await settle()
            assert root.pond.stopped == [observer]

    run(main())


def test_disconnect_stops_observing_every_cache(run, transport) -> None:
    async def main() -> None:
        root = FlRoot()
        async with transport(root) as conn:
            copies = [await conn.root.callRemote("cache"), await conn.root.callRemote("other_cache")]
            assert conn.server_broker.statistics()["caches"] == 2
            (pond_observer,) = root.pond.observers
            (other_observer,) = root.other_pond.observers
            await conn.client_broker.close()
            await asyncio.wait_for(asyncio.shield(conn.server_broker.closed), 5)
            assert root.pond.stopped == [pond_observer]
            assert root.other_pond.stopped == [other_observer]
            assert conn.server_broker.statistics()["caches"] == 0
            del copies
            await settle()
            assert len(root.pond.stopped) == 1 and len(root.other_pond.stopped) == 1

    run(main())


def test_observer_calls_after_the_holder_left(run, transport, caplog) -> None:
    async def main() -> None:
        root = FlRoot()
        async with transport(root) as conn:
            copy = await conn.root.callRemote("cache")
            assert copy.ducks == ["mallard"]
            (observer,) = root.pond.observers
            await conn.client_broker.close()
            await asyncio.wait_for(asyncio.shield(conn.server_broker.closed), 5)
            with pytest.raises(pbfast.DeadReferenceError):
                await observer.callRemote("add", "late")
            # Called and forgotten, as observers usually are: no unretrieved exception.
            observer.callRemote("add", "forgotten")
            root.pond.ducks.append("x")
            await settle()

    with caplog.at_level(logging.DEBUG, logger="pbfast"):
        run(main())
    assert not pbfast_records(caplog, logging.WARNING)


def test_stale_observer_after_the_copy_was_dropped(run, transport, caplog) -> None:
    """After stoppedObserving, a kept observer's calls fail quietly and reach no other copy."""

    async def main() -> None:
        root = FlRoot()
        async with transport(root) as conn:
            copy = await conn.root.callRemote("cache")
            (observer,) = root.pond.observers
            del copy
            await eventually(lambda: root.pond.stopped == [observer])
            other = await conn.root.callRemote("other_cache")
            fresh = await conn.root.callRemote("cache")
            with pytest.raises((pbfast.DeadReferenceError, pbfast.RemoteError)):
                await observer.callRemote("add", "stale")
            assert other.ducks == ["teal"] and fresh.ducks == ["mallard"]
            assert not conn.client_broker.disconnected

    with caplog.at_level(logging.DEBUG, logger="pbfast"):
        run(main())
    assert not pbfast_records(caplog, logging.WARNING)


def test_cacheable_over_two_connections_has_two_observers(run, transport) -> None:
    async def main() -> None:
        root = FlRoot()
        async with transport(root) as conn:
            first = await conn.root.callRemote("cache")
            other_root, other_server_broker = await conn.another()
            second = await other_root.callRemote("cache")
            assert first is not second
            assert root.pond.state_calls == 2
            assert len(root.pond.observers) == 2
            assert {o.broker for o in root.pond.observers} == {conn.server_broker, other_server_broker}
            assert await asyncio.gather(*root.pond.add_duck("eider")) == [2, 2]
            assert first.ducks == second.ducks == ["mallard", "eider"]
            # One holder leaves: only its observer stops.
            await other_root.broker.close()
            await eventually(lambda: len(root.pond.stopped) == 1)
            assert root.pond.stopped[0].broker is other_server_broker
            assert await asyncio.gather(*root.pond.add_duck("scoter")) == [3]
            assert first.ducks == ["mallard", "eider", "scoter"]

    run(main())


def test_cache_observer_sees_the_perspective(run, transport) -> None:
    async def main() -> None:
        root = FlRoot()
        portal, realm = fl_portal(root)
        async with transport(portal) as conn:
            alice = await log_in(conn.root, b"alice", "secret")
            copy = await alice.callRemote("cache")
            assert copy.ducks == ["mallard"]
            (observer,) = root.pond.observers
            assert observer.perspective is realm.avatars["alice"]
            await conn.client_broker.close()
            await eventually(lambda: root.pond.stopped == [observer])

    run(main())


# ---- bugs: cached objects the receiver never took must be given back


def test_cache_after_a_refused_value_is_given_back(run, transport) -> None:
    """A Cacheable sent in a message the receiver refuses (before reaching it) must not stay
    counted on the owner: the owner stops observing, and can send it again later."""

    async def main() -> None:
        root = FlRoot()
        async with transport(root) as conn:
            with pytest.raises(pbfast.InsecureJelly):
                await conn.root.callRemote("refused_then_cache")
            await settle()
            await eventually(lambda: conn.server_broker.statistics()["caches"] == 0, timeout=0.3)
            assert len(root.pond.stopped) == 1
            copy = await conn.root.callRemote("cache")
            assert copy.ducks == ["mallard"]

    run(main())


def test_unregistered_cacheable_is_given_back(run, transport) -> None:
    async def main() -> None:
        root = FlRoot()
        async with transport(root) as conn:
            with pytest.raises(pbfast.InsecureJelly, match="FlHiddenPond"):
                await conn.root.callRemote("hidden_cache")
            await eventually(lambda: conn.server_broker.statistics()["caches"] == 0, timeout=0.3)
            assert conn.server_broker.statistics()["objects"] == 0
            assert root.hidden.stopped == 1

    run(main())


def test_copy_dropped_while_a_reply_naming_it_is_in_flight(run, transport) -> None:
    """The holder lets go of its copy just as the owner sends it again (as ``cached``): the
    call must still get a usable copy, or at least the Cacheable must stay usable."""

    async def main() -> None:
        root = FlRoot()
        async with transport(root) as conn:
            copy = await conn.root.callRemote("cache")
            in_flight = conn.root.callRemote("cache")
            del copy
            gc.collect()  # the decache is queued before the reply arrives
            try:
                again = await in_flight
            except pbfast.JellyError:
                again = None
            await settle()
            if again is None:
                # Then at least the next sending must work, and nothing may leak.
                assert conn.server_broker.statistics()["caches"] == 0
                again = await conn.root.callRemote("cache")
            assert again.ducks == ["mallard"]
            assert await asyncio.gather(*root.pond.add_duck("late")) == [2]

    run(main())


# --------------------------------------------------------------------------------------------
# Viewable
# --------------------------------------------------------------------------------------------


def test_viewable_sees_the_avatar(run, transport) -> None:
    async def main() -> None:
        root = FlRoot()
        portal, realm = fl_portal(root)
        async with transport(portal) as conn:
            alice = await log_in(conn.root, b"alice", "secret")
            board = await alice.callRemote("board")
            assert isinstance(board, pbfast.RemoteReference)
            assert await board.callRemote("who") == "alice"
            assert root.board.seen == [realm.avatars["alice"]]
            assert await board.callRemote("add", 2, b=3) == 5
            # The same Viewable for the same perspective: the same reference.
            assert await alice.callRemote("board") is board
            assert await alice.callRemote("async_board") is board
            # Another perspective on the same connection gets its own view.
            bob = await log_in(conn.root, b"bob", "hunter2")
            bobs_board = await bob.callRemote("board")
            assert bobs_board is not board
            assert await bobs_board.callRemote("who") == "bob"
            assert root.board.seen[-1] is realm.avatars["bob"]
            assert await board.callRemote("who") == "alice"
            with pytest.raises(pbfast.RemoteError):
                await board.callRemote("nothing_here")

    run(main())


def test_viewable_from_a_plain_referenceable_has_no_perspective(run, transport) -> None:
    async def main() -> None:
        root = FlRoot()
        async with transport(root) as conn:
            board = await conn.root.callRemote("board")
            assert await board.callRemote("who") is None
            assert root.board.seen == [None]
            assert await conn.root.callRemote("board") is board

    run(main())


def test_viewpoints_are_released_with_their_references(run, transport) -> None:
    async def main() -> None:
        root = FlRoot()
        portal, realm = fl_portal(root)
        async with transport(portal) as conn:
            alice = await log_in(conn.root, b"alice", "secret")
            board = await alice.callRemote("board")
            assert await board.callRemote("who") == "alice"
            objects = conn.server_broker.statistics()["objects"]
            del board
            await eventually(lambda: conn.server_broker.statistics()["objects"] == objects - 1)
            board = await alice.callRemote("board")
            assert await board.callRemote("who") == "alice"

    run(main())


# --------------------------------------------------------------------------------------------
# Receive limits
# --------------------------------------------------------------------------------------------


def test_max_proxies_refuses_too_many_references(run, transport) -> None:
    async def main() -> None:
        async with transport(FlRoot(), client_options={"max_proxies": 4}) as conn:
            with pytest.raises(pbfast.Error, match="max_proxies=4"):
                await conn.root.callRemote("things", 10)
            assert not conn.client_broker.disconnected
            await eventually(lambda: conn.server_broker.statistics()["objects"] == 0)
            assert conn.client_broker.statistics()["proxies"] == 0
            things = await conn.root.callRemote("things", 2)
            assert [await t.callRemote("ping") for t in things] == ["pong", "pong"]
            del things
            await eventually(lambda: conn.server_broker.statistics()["objects"] == 0)

    run(main())


def test_max_proxies_counts_cached_copies(run, transport) -> None:
    async def main() -> None:
        root = FlRoot()
        async with transport(root, client_options={"max_proxies": 4}) as conn:
            ponds = await conn.root.callRemote("ponds", 2)
            assert [p.ducks for p in ponds] == [["duck0"], ["duck1"]]
            # The two cached copies count: ten references are too many.
            with pytest.raises(pbfast.Error, match="max_proxies=4"):
                await conn.root.callRemote("things", 10)
            assert not conn.client_broker.disconnected
            await eventually(lambda: conn.server_broker.statistics()["objects"] == 2)
            assert conn.server_broker.statistics()["caches"] == 2
            del ponds
            await eventually(lambda: conn.server_broker.statistics()["objects"] == 0)
            assert conn.server_broker.statistics()["caches"] == 0
            assert conn.client_broker.statistics()["cached"] == 0

    run(main())


def test_max_proxies_refuses_too_many_cached_copies_in_arguments(run, transport) -> None:
    async def main() -> None:
        async with transport(FlRoot(), max_proxies=3) as conn:
            ponds = [FlDuckPond([f"d{i}"]) for i in range(4)]
            with pytest.raises(pbfast.RemoteError, match="max_proxies=3") as info:
                await conn.root.callRemote("count", ponds)
            assert info.value.check(pbfast.Error)
            # The refused copy is given back (decache), the accepted ones die with the call.
            await eventually(lambda: conn.client_broker.statistics()["caches"] == 0)
            assert all(len(p.stopped) == 1 for p in ponds)
            assert await conn.root.callRemote("count", ponds[:3]) == 3
            await eventually(lambda: conn.client_broker.statistics()["caches"] == 0)

    run(main())


def test_max_proxies_refuses_too_many_references_in_arguments(run, transport) -> None:
    async def main() -> None:
        async with transport(FlRoot(), max_proxies=3) as conn:
            with pytest.raises(pbfast.RemoteError, match="max_proxies=3") as info:
                await conn.root.callRemote("count", [FlThing() for _ in range(8)])
            assert info.value.check(pbfast.Error)
            await eventually(lambda: conn.client_broker.statistics()["objects"] == 0)
            assert await conn.root.callRemote("count", [FlThing() for _ in range(3)]) == 3
            await eventually(lambda: conn.client_broker.statistics()["objects"] == 0)
            assert conn.server_broker.statistics()["proxies"] == 0

    run(main())


def test_max_proxies_allows_exactly_the_limit(run, transport) -> None:
    """``max_proxies=N`` lets the peer make us hold N objects: the root reference a client
    holds (which the peer did not send) must not count against it."""

    async def main() -> None:
        async with transport(FlRoot(), client_options={"max_proxies": 3}) as conn:
            things = await conn.root.callRemote("things", 3)
            assert len(things) == 3
            assert conn.client_broker.statistics()["proxies"] == 3

    run(main())


LIMITS = {
    # limit: (option value, a call whose argument is too big, a call whose reply is too big)
    "max_message_size": (4000, ("echo", b"x" * 10_000), ("blob", 10_000)),
    "max_depth": (30, ("echo", nested(100)), ("nested", 100)),
    "max_element_size": (200, ("echo", b"y" * 1000), ("long_list", 1000)),
}


@pytest.mark.parametrize("limit", sorted(LIMITS))
def test_server_limit_refuses_an_oversized_argument(run, transport, caplog, limit) -> None:
    value, (method, arg), _ = LIMITS[limit]
    # The in-memory pair has one set of options for both ends, and a pbfast peer (the `large`
    # extension) sends no message past its own max_message_size: the client refuses it first.
    sender_refuses = limit == "max_message_size"

    async def main() -> bool:
        async with transport(FlRoot(), **{limit: value}) as conn:
            assert await conn.root.callRemote("echo", b"small") == b"small"
            if sender_refuses and conn.kind == "memory":
                with pytest.raises(pbfast.BananaError) as refused:
                    await conn.root.callRemote(method, arg)
                assert refused.value.limit == limit
                assert await conn.root.callRemote("echo", b"fine") == b"fine"
                return False
            with pytest.raises(pbfast.PBConnectionLost):
                await conn.root.callRemote(method, arg)
            await asyncio.wait_for(asyncio.shield(conn.server_broker.closed), 5)
            assert conn.client_broker.disconnected
            with pytest.raises(pbfast.DeadReferenceError):
                await conn.root.callRemote("echo", 1)
            # Other connections are unaffected.
            other_root, _ = await conn.another()
            assert await other_root.callRemote("echo", b"fine") == b"fine"
            return True

    with caplog.at_level(logging.WARNING, logger="pbfast"):
        server_refused = run(main())
    if server_refused:
        assert any(limit in r.getMessage() for r in pbfast_records(caplog, logging.WARNING))
    assert not pbfast_records(caplog, logging.ERROR)


@pytest.mark.parametrize("limit", sorted(LIMITS))
def test_client_limit_refuses_an_oversized_reply(run, transport, limit) -> None:
    value, _, (method, arg) = LIMITS[limit]

    async def main() -> None:
        async with transport(FlRoot(), client_options={limit: value}) as conn:
            assert await conn.root.callRemote("echo", b"small") == b"small"
            if limit == "max_message_size" and conn.kind == "memory":
                # (One set of options for both ends: the server refuses to send the answer, as
                # pbfast peers do past their own max_message_size.)
                with pytest.raises(pbfast.RemoteError) as refused:
                    await conn.root.callRemote(method, arg)
                assert f"max_message_size={value}" in str(refused.value)
                assert await conn.root.callRemote("echo", b"fine") == b"fine"
                return
            with pytest.raises(pbfast.PBConnectionLost) as info:
                await conn.root.callRemote(method, arg)
            cause = info.value.__cause__
            assert isinstance(cause, pbfast.BananaError) and cause.limit == limit
            assert limit in str(info.value)
            assert conn.client_broker.disconnected
            other_root, _ = await conn.another()
            assert await other_root.callRemote("echo", b"fine") == b"fine"

    run(main())
