"""Stock Twisted peer for pbfast's interop tests of PB's flavors and cred.

Like ``twisted_peer.py`` this runs *unmodified* ``twisted.spread.pb`` on Twisted's own reactor
(standard library and Twisted only, 127.0.0.1 only), but it exercises what sits on top of plain
references: copies (``pb.Copyable``/``pb.RemoteCopy``), caches (``pb.Cacheable``/
``pb.RemoteCache``), views (``pb.Viewable``) and logins (``twisted.cred`` portals,
``pb.Avatar`` perspectives, minds).

Both sides register their copy classes under the same explicit tags, independent of module
names: :data:`POND_TAG` (a plain copy) and :data:`DUCKPOND_TAG` (a cache).

Usage::

    python tests/interop/twisted_flavors_peer.py server
    python tests/interop/twisted_flavors_peer.py client PORT SCENARIO

``server``
    Serves a portal (user ``alice``, password ``secret``) on an ephemeral port, prints exactly
    one line ``PORT <n>`` and serves until its stdin reaches EOF. Logged-in users get a
    :class:`Player`; see its ``perspective_*`` methods. The test's pbfast server mirrors them.

``client PORT SCENARIO``
    Logs in to the pbfast portal at 127.0.0.1:PORT with ``PBClientFactory.login`` (a
    :class:`Mind` as the mind), runs SCENARIO (one of :data:`SCENARIOS`), prints one line
    ``RESULT <json>`` and exits 0; on any unexpected failure it prints ``ERROR <json string>``
    and exits 1.

Set ``TWISTED_PEER_LOG=1`` to send Twisted's log to stderr (discarded by default).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time

from twisted.cred import checkers, credentials, error, portal
from twisted.internet import defer, reactor, task
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.python import reflect
from twisted.spread import jelly, pb
from zope.interface import implementer

HOST = "127.0.0.1"
CLIENT_TIMEOUT = 30.0  # seconds; a client scenario that takes longer is an ERROR
POLL_TIMEOUT = 5.0  # seconds to wait for a change made by the other side to show
POND_TAG = b"interop.Pond"
DUCKPOND_TAG = b"interop.DuckPond"
CARD_TAG = b"interop.Card"


# ---------------------------------------------------------------------------
# copy and cache classes (the test registers the same tags on the pbfast side)
# ---------------------------------------------------------------------------


class Pond(pb.Copyable):
    """Sent by copy as ``{"color": ..., "frogs": ...}`` under POND_TAG."""

    def __init__(self, color, frogs):
        self.color = color
        self.frogs = frogs

    def getTypeToCopy(self):
        return POND_TAG

    def getStateToCopy(self):
        return {"color": self.color, "frogs": self.frogs}


class RemotePond(pb.RemoteCopy):
    """What a copy tagged POND_TAG becomes here."""

    def countFrogs(self):
        return self.frogs


pb.setUnjellyableForClass(POND_TAG, RemotePond)


def describe_pond(pond):
    return {
        "class": type(pond).__name__,
        "state": {"color": pond.color, "frogs": pond.frogs},
        "frogs": pond.countFrogs(),
    }


class Card(pb.Copyable):
    """A copy whose state names the perspective it is sent for."""

    def getTypeToCopy(self):
        return CARD_TAG

    def getStateToCopyFor(self, perspective):
        return {"holder": getattr(perspective, "name", None)}


class RemoteCard(pb.RemoteCopy):
    """What a copy tagged CARD_TAG becomes here."""


pb.setUnjellyableForClass(CARD_TAG, RemoteCard)


class Unregistered(pb.Copyable):
    """Sent under its class name, which the other side has not registered."""

    def __init__(self):
        self.secret = 1


class MasterDuckPond(pb.Cacheable):
    """A list of ducks, cached by its holders as DUCKPOND_TAG and kept current."""

    def __init__(self, ducks):
        self.ducks = list(ducks)
        self.observers = []
        self.stopped = 0  # stoppedObserving calls

    def getTypeToCopy(self):
        return DUCKPOND_TAG

    def getStateToCacheAndObserveFor(self, perspective, observer):
        self.observers.append(observer)
        return list(self.ducks)

    def stoppedObserving(self, perspective, observer):
        # Twisted hands stoppedObserving a new RemoteCacheObserver: match it by what it observes
        # for, not by identity.
        self.stopped += 1
        self.observers = [
            o for o in self.observers if not (o.broker is observer.broker and o.perspective is perspective)
        ]

    def addDuck(self, duck):
        self.ducks.append(duck)
        for observer in self.observers:
            observer.callRemote("addDuck", duck).addErrback(lambda f: None)

    def askObservers(self):
        """What every holder's ``observe_count`` answers."""
        return defer.gatherResults([o.callRemote("count") for o in self.observers], consumeErrors=True)

    def removeDuck(self, duck):
        self.ducks.remove(duck)
        for observer in self.observers:  # a keyword argument this time
            observer.callRemote("removeDuck", duck=duck).addErrback(lambda f: None)


class SlaveDuckPond(pb.RemoteCache):
    """What a cache tagged DUCKPOND_TAG becomes here."""

    def setCopyableState(self, state):
        self.ducks = list(state)

    def observe_addDuck(self, duck):
        self.ducks.append(duck)

    def observe_removeDuck(self, duck):
        self.ducks.remove(duck)

    def observe_count(self):
        return len(self.ducks)


pb.setUnjellyableForClass(DUCKPOND_TAG, SlaveDuckPond)


# ---------------------------------------------------------------------------
# server mode
# ---------------------------------------------------------------------------


class Board(pb.Viewable):
    """Never sent itself: each perspective gets its own ViewPoint."""

    def view_who(self, perspective):
        return perspective.name

    def view_greet(self, perspective, greeting, punctuation="!"):
        return f"{greeting}, {perspective.name}{punctuation}"

    def view_card(self, perspective):
        return Card()


class ServerState:
    """What all connections to the server share."""

    def __init__(self):
        self.pond = MasterDuckPond(["mallard"])
        self.board = Board()
        self.logouts = []


class Player(pb.Avatar):
    """The avatar of a logged-in user."""

    def __init__(self, state, name, mind):
        self.state = state
        self.name = name
        self.mind = mind
        self.caches = []  # the pbfast side's caches sent to takeCache

    def perspective_hello(self):
        return f"hello {self.name}"

    def perspective_pond(self):
        return Pond("green", 7)

    def perspective_card(self):
        return Card()

    def perspective_unregistered(self):
        return Unregistered()

    def perspective_pondsTwice(self):
        pond = Pond("teal", 2)
        return [pond, pond]

    def perspective_ducksTwice(self):
        return [self.state.pond, self.state.pond]

    def perspective_same(self, pair):
        return {"same": pair[0] is pair[1], "class": type(pair[0]).__name__}

    def perspective_isPond(self, obj):
        return obj is self.state.pond

    def perspective_giveCacheBack(self):
        return self.caches[-1]

    def perspective_takePond(self, pond):
        return describe_pond(pond)

    def perspective_ducks(self):
        return self.state.pond

    def perspective_addDuck(self, duck):
        self.state.pond.addDuck(duck)

    def perspective_removeDuck(self, duck):
        self.state.pond.removeDuck(duck)

    def perspective_observers(self):
        return len(self.state.pond.observers)

    def perspective_stopped(self):
        return self.state.pond.stopped

    def perspective_askObservers(self):
        return self.state.pond.askObservers()

    def perspective_board(self):
        return self.state.board

    def perspective_logouts(self):
        return list(self.state.logouts)

    def perspective_callMind(self, msg):
        return self.mind.callRemote("tell", msg)

    def perspective_takeCache(self, cache):
        self.caches.append(cache)
        return {"class": type(cache).__name__, "ducks": list(cache.ducks), "held": len(self.caches)}

    def perspective_cacheState(self):
        return [list(cache.ducks) for cache in self.caches]

    def perspective_dropCache(self):
        del self.caches[:]
        gc.collect()

    def perspective_stats(self):
        broker = self.mind.broker
        return {"caches": len(broker.remotelyCachedObjects), "cached": len(broker.locallyCachedObjects)}


@implementer(portal.IRealm)
class Realm:
    def __init__(self, state):
        self.state = state

    def requestAvatar(self, avatarId, mind, *interfaces):
        if pb.IPerspective not in interfaces:
            raise NotImplementedError("only pb.IPerspective")
        name = avatarId.decode("utf-8")
        player = Player(self.state, name, mind)

        def logout():
            self.state.logouts.append(name)

        return pb.IPerspective, player, logout


def _stop_on_stdin_eof():
    try:
        while sys.stdin.buffer.read(65536):
            pass
    except Exception:
        pass
    reactor.callFromThread(reactor.stop)


def run_server():
    checker = checkers.InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret")
    factory = pb.PBServerFactory(portal.Portal(Realm(ServerState()), [checker]))
    port = reactor.listenTCP(0, factory, interface=HOST)
    sys.stdout.write(f"PORT {port.getHost().port}\n")
    sys.stdout.flush()
    threading.Thread(target=_stop_on_stdin_eof, name="stdin-watch", daemon=True).start()
    reactor.run()
    return 0


# ---------------------------------------------------------------------------
# client mode
# ---------------------------------------------------------------------------


class Mind(pb.Referenceable):
    """Passed at login: the server may call it back."""

    def __init__(self):
        self.told = []

    def remote_tell(self, msg):
        self.told.append(msg)
        return f"told {msg}"


def _text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, type):
        return reflect.qual(value)
    return str(value)


def failure_info(failure):
    """Describe a Failure (local or CopiedFailure) without ever raising."""
    try:
        message = failure.getErrorMessage()
    except Exception:
        message = reflect.safe_str(failure.value)
    try:
        parents = [_text(p) for p in failure.parents]
    except Exception:
        parents = []
    return {
        "type": _text(failure.type),
        "message": message,
        "parents": parents,
        "is_copied_failure": isinstance(failure, pb.CopiedFailure),
        "check_unauthorized": failure.check(error.UnauthorizedLogin) is not None,
        "check_login_failed": failure.check(error.LoginFailed) is not None,
        "check_insecure_jelly": failure.check(jelly.InsecureJelly) is not None,
        "check_attribute_error": failure.check(AttributeError) is not None,
    }


def _failure_of(d):
    """Deferred firing with failure_info of `d`'s failure, or {"unexpected_result": ...}."""
    return d.addCallbacks(lambda result: {"unexpected_result": repr(result)}, failure_info)


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


@defer.inlineCallbacks
def until(fetch, ok, timeout=POLL_TIMEOUT):
    """Call ``fetch()`` (a value or a Deferred) until ``ok(value)`` or `timeout`; the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = yield defer.maybeDeferred(fetch)
        if ok(value) or time.monotonic() > deadline:
            return value
        yield sleep(0.01)


def _tables(broker):
    return {
        "localObjects": len(broker.localObjects),
        "remotelyCachedObjects": len(broker.remotelyCachedObjects),
        "locallyCachedObjects": len(broker.locallyCachedObjects),
    }


@defer.inlineCallbacks
def scenario_perspective(factory, avatar, mind):
    """perspective_* and view_* calls, copies both ways, the mind called back, a second avatar
    let go of."""
    report = {}
    report["hello"] = yield avatar.callRemote("hello")
    pond = yield avatar.callRemote("pond")
    report["pond"] = describe_pond(pond)
    report["takePond"] = yield avatar.callRemote("takePond", Pond("blue", 3))
    report["takePond_kw"] = yield avatar.callRemote("takePond", pond=Pond("red", 0))
    # (A RemotePond is not a Copyable, so Twisted will not send it back; a Pond made from it.)
    report["takePond_again"] = yield avatar.callRemote("takePond", Pond(pond.color, pond.frogs))
    # One copy twice in a message stays one object, both ways.
    ponds = yield avatar.callRemote("pondsTwice")
    report["pondsTwice"] = {"same": ponds[0] is ponds[1], "class": type(ponds[0]).__name__}
    twice = Pond("pink", 1)
    report["same_pond"] = yield avatar.callRemote("same", [twice, twice])
    report["equal_ponds"] = yield avatar.callRemote("same", [Pond("pink", 1), Pond("pink", 1)])

    board = yield avatar.callRemote("board")
    report["board_is_reference"] = isinstance(board, pb.RemoteReference)
    report["who"] = yield board.callRemote("who")
    report["greet"] = yield board.callRemote("greet", "good morning", punctuation="?")
    report["view_nosuch"] = yield _failure_of(board.callRemote("nosuch"))
    # Copies are made for the perspective they are sent for: the avatar, also through a view.
    card = yield avatar.callRemote("card")
    report["card"] = {"class": type(card).__name__, "holder": card.holder}
    card = yield board.callRemote("card")
    report["view_card"] = {"class": type(card).__name__, "holder": card.holder}

    report["callMind"] = yield avatar.callRemote("callMind", "hi")
    report["callMind_again"] = yield avatar.callRemote("callMind", "again")
    report["told"] = list(mind.told)
    report["perspective_nosuch"] = yield _failure_of(avatar.callRemote("nosuch"))
    # An unregistered copy as an argument fails the call; the connection goes on.
    report["unregistered"] = yield _failure_of(avatar.callRemote("takePond", Unregistered()))
    report["hello_after_unregistered"] = yield avatar.callRemote("hello")
    report["logouts_while_logged_in"] = yield avatar.callRemote("logouts")

    # A second login on the same connection; letting go of its avatar logs it out.
    other = yield factory.login(credentials.UsernamePassword(b"alice", b"secret"), client=Mind())
    report["other_hello"] = yield other.callRemote("hello")
    del other
    gc.collect()  # sends the decref
    report["logouts_after_drop"] = yield until(lambda: avatar.callRemote("logouts"), lambda v: len(v) == 1)
    return report


@defer.inlineCallbacks
def scenario_caches(factory, avatar, mind):
    """The server's Cacheable observed by our RemoteCache, then our Cacheable observed by the
    server's RemoteCache; each side lets go and the owner hears of it."""
    report = {}
    broker = avatar.broker

    # -- the server's Cacheable, cached here
    ducks = yield avatar.callRemote("ducks")
    report["ducks_class"] = type(ducks).__name__
    report["ducks_initial"] = list(ducks.ducks)
    again = yield avatar.callRemote("ducks")  # sent as ["cached", luid]: the same state
    report["again_shares_state"] = again.__dict__ is ducks.__dict__
    report["observers_while_held"] = yield avatar.callRemote("observers")
    report["server_stats_while_held"] = yield avatar.callRemote("stats")
    report["tables_while_held"] = _tables(broker)
    report["ask_observers_while_held"] = yield avatar.callRemote("askObservers")
    # Our copy sent back is the server's own Cacheable ("lcache").
    report["isPond"] = yield avatar.callRemote("isPond", ducks)
    pair = yield avatar.callRemote("ducksTwice")
    report["ducksTwice"] = {"same": pair[0] is pair[1], "shares_state": pair[0].__dict__ is ducks.__dict__}
    del pair

    yield avatar.callRemote("addDuck", "teal")
    report["after_add"] = yield until(lambda: list(ducks.ducks), lambda v: "teal" in v)
    yield avatar.callRemote("removeDuck", "mallard")
    report["after_remove"] = yield until(lambda: list(ducks.ducks), lambda v: "mallard" not in v)
    report["again_after_remove"] = list(again.ducks)

    ducks = again = None  # (not `del`: the lambdas above read these names)
    gc.collect()  # each copy sends one decache
    report["observers_after_drop"] = yield until(lambda: avatar.callRemote("observers"), lambda v: v == 0)
    report["stopped_after_drop"] = yield avatar.callRemote("stopped")
    report["server_stats_after_drop"] = yield until(
        lambda: avatar.callRemote("stats"), lambda v: v["caches"] == 0
    )
    report["tables_after_drop"] = yield until(
        lambda: _tables(broker), lambda v: v["locallyCachedObjects"] == 0
    )

    # -- our Cacheable, cached by the server
    pond = MasterDuckPond(["x"])
    report["takeCache"] = yield avatar.callRemote("takeCache", pond)
    report["takeCache_again"] = yield avatar.callRemote("takeCache", pond)  # ["cached", luid]
    report["our_observers_while_held"] = len(pond.observers)
    report["our_tables_while_held"] = _tables(broker)
    report["server_stats_while_holding"] = yield avatar.callRemote("stats")
    report["our_ask_observers"] = yield pond.askObservers()
    report["giveCacheBack_is_ours"] = (yield avatar.callRemote("giveCacheBack")) is pond
    report["same_cache"] = yield avatar.callRemote("same", [pond, pond])
    pond.addDuck("y")
    report["server_after_add"] = yield until(
        lambda: avatar.callRemote("cacheState"), lambda v: all("y" in d for d in v)
    )
    pond.removeDuck("x")
    report["server_after_remove"] = yield until(
        lambda: avatar.callRemote("cacheState"), lambda v: all("x" not in d for d in v)
    )
    yield avatar.callRemote("dropCache")
    report["our_observers_after_drop"] = yield until(lambda: len(pond.observers), lambda v: v == 0)
    report["our_stopped_after_drop"] = pond.stopped
    report["our_tables_after_drop"] = yield until(
        lambda: _tables(broker), lambda v: v["remotelyCachedObjects"] == 0
    )
    report["server_stats_after_holding"] = yield until(
        lambda: avatar.callRemote("stats"), lambda v: v["cached"] == 0
    )

    # Both caches again, still held when the connection ends (the mind outlives the scenario).
    mind.kept = yield avatar.callRemote("ducks")
    report["ducks_held_at_the_end"] = list(mind.kept.ducks)
    report["takeCache_at_the_end"] = yield avatar.callRemote("takeCache", pond)
    mind.pond = pond
    return report


@defer.inlineCallbacks
def scenario_anonymous(factory):
    """An anonymous login, to a portal that has no checker for anonymous credentials."""
    d = factory.login(credentials.Anonymous(), client=Mind())
    outcome = yield d.addCallbacks(lambda avatar: ("admitted", avatar), lambda f: ("refused", f))
    if outcome[0] == "refused":
        return {"refused": failure_info(outcome[1])}
    return {"admitted": {"hello": (yield outcome[1].callRemote("hello"))}}


@defer.inlineCallbacks
def scenario_badlogin(factory):
    creds = credentials.UsernamePassword(b"alice", b"wrong")
    report = {"wrong_password": (yield _failure_of(factory.login(creds, client=Mind())))}
    creds = credentials.UsernamePassword(b"mallory", b"secret")
    report["unknown_user"] = yield _failure_of(factory.login(creds, client=None))
    # The connection is still usable: the right password now works.
    avatar = yield factory.login(credentials.UsernamePassword(b"alice", b"secret"), client=Mind())
    report["hello_after"] = yield avatar.callRemote("hello")
    return report


# Scenarios run as alice (called with the factory, her avatar and the mind she logged in with)
# and scenarios that log in themselves (called with the factory).
SCENARIOS = {
    "perspective": scenario_perspective,
    "caches": scenario_caches,
}
LOGIN_SCENARIOS = {
    "badlogin": scenario_badlogin,
    "anonymous": scenario_anonymous,
}


@defer.inlineCallbacks
def _run_scenario(port, scenario):
    factory = pb.PBClientFactory()
    reactor.connectTCP(HOST, port, factory)
    try:
        if scenario in LOGIN_SCENARIOS:
            return (yield LOGIN_SCENARIOS[scenario](factory))
        mind = Mind()
        avatar = yield factory.login(credentials.UsernamePassword(b"alice", b"secret"), client=mind)
        return (yield SCENARIOS[scenario](factory, avatar, mind))
    finally:
        factory.disconnect()


def _emit(tag, payload):
    sys.stdout.write(f"{tag} {json.dumps(payload)}\n")
    sys.stdout.flush()


def run_client(port, scenario):
    if scenario not in SCENARIOS and scenario not in LOGIN_SCENARIOS:
        _emit("ERROR", f"unknown scenario {scenario!r}; known: {sorted({**SCENARIOS, **LOGIN_SCENARIOS})}")
        return 1
    state = {"done": False, "exit_code": 1}

    def finish(tag, payload, exit_code):
        if state["done"]:
            return
        state["done"] = True
        state["exit_code"] = exit_code
        try:
            _emit(tag, payload)
        except Exception as exc:  # not JSON-able: report that instead
            _emit("ERROR", f"cannot report {payload!r}: {exc}")
            state["exit_code"] = 1
        reactor.stop()

    def failed(failure):
        try:
            text = failure.getTraceback()
        except Exception:
            text = failure_info(failure)["message"]
        finish("ERROR", text, 1)

    def start():
        timer = reactor.callLater(
            CLIENT_TIMEOUT, finish, "ERROR", f"scenario {scenario!r} timed out after {CLIENT_TIMEOUT}s", 1
        )
        d = _run_scenario(port, scenario)
        d.addCallbacks(lambda result: finish("RESULT", result, 0), failed)
        d.addBoth(lambda _: timer.active() and timer.cancel())

    reactor.callWhenRunning(start)
    reactor.run()
    return state["exit_code"]


# ---------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------


def _configure_logging():
    if os.environ.get("TWISTED_PEER_LOG"):
        observers = [textFileLogObserver(sys.stderr)]
    else:
        observers = [lambda event: None]
    globalLogBeginner.beginLoggingTo(observers, discardBuffer=True, redirectStandardIO=False)


def main(argv):
    _configure_logging()
    if len(argv) == 1 and argv[0] == "server":
        return run_server()
    if len(argv) == 3 and argv[0] == "client" and argv[1].isdigit():
        return run_client(int(argv[1]), argv[2])
    sys.stderr.write(
        "usage: twisted_flavors_peer.py server\n"
        "       twisted_flavors_peer.py client PORT SCENARIO\n"
        f"scenarios: {', '.join({**SCENARIOS, **LOGIN_SCENARIOS})}\n"
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
