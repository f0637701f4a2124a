"""Stock foolscap peer for pbfast interop tests.

This script runs *unmodified* foolscap (a ``foolscap.api.Tub`` on Twisted's own reactor) so the
test-suite can check pbfast's ``Tub`` against the reference implementation over real TCP + TLS
connections. It only depends on the standard library, Twisted and foolscap, and it only ever
listens on / connects to 127.0.0.1.

Usage::

    python tests/interop/foolscap_peer.py server [--cert FILE] [--keepalive SECONDS]
                                                 [--disconnect SECONDS]
    python tests/interop/foolscap_peer.py client FURL SCENARIO [--cert FILE] [--third FURL]
    python tests/interop/foolscap_peer.py liar FURL [--no-cert | --honest]
    python tests/interop/foolscap_peer.py tub-id FILE

``server``
    Starts a Tub (its certificate read from FILE, or created and written there if FILE does not
    exist; a fresh one if no ``--cert``), listens on an ephemeral port of 127.0.0.1, registers a
    :class:`PeerRoot` under the name ``root``, prints exactly one line ``FURL <furl>`` and serves
    until its stdin reaches EOF. A line ``stop`` on stdin stops the Tub first (``stopService``:
    every connection is hung up with TLS close_notify) and prints ``STOPPED <seconds>`` once that
    has completed; the process still exits at EOF. ``--keepalive S`` sets the Tub's
    ``keepaliveTimeout`` (PING after S idle seconds), ``--disconnect S`` its
    ``disconnectTimeout`` (drop a connection after S seconds without inbound data). One root
    serves every connection.

``client FURL SCENARIO``
    A client-only Tub (no listener; ``--cert`` chooses its identity) gets FURL, runs SCENARIO (one
    of :data:`SCENARIOS`, see the ``scenario_*`` functions for what each reports), prints one line
    ``RESULT <json>`` and exits 0; on any unexpected failure, or after 30 s, or when its Tub's
    ``stopService`` afterwards takes over 5 s (the peer did not close its end), it prints
    ``ERROR <json string>`` and exits 1. The object behind FURL must offer the methods of
    :class:`PeerRoot`. Values are reported with :func:`tag`: ``{"type": "bytes", "hex": ...}``,
    ``{"type": "int", "value": "-5"}``, ... so a test can compare them exactly.
    ``gift`` needs ``--third FURL2``, the root of another server (the third Tub). ``hangup``
    calls ``hello("hangup")`` as the cue for the other side to stop its Tub, and reports how the
    disconnect and its own ``stopService`` went (see :func:`scenario_hangup`).

``liar FURL``
    Raw Twisted TLS instead of a Tub: sends the plaintext upgrade request for FURL's TubID,
    starts TLS presenting a fresh certificate, then sends a hello block claiming a random TubID
    that is not its certificate's, and reports what the server sent back. ``--no-cert`` presents
    no certificate (and still claims a TubID); ``--honest`` claims the certificate's own TubID,
    as a control. Prints ``RESULT {"status": ..., "reply": ..., "blocks": [...], "error": ...,
    "closed": ..., ...}`` (see :func:`run_liar`).

``tub-id FILE``
    Prints one line ``TUBID <tubid>``: the TubID foolscap computes for the certificate in FILE.

The root object (:class:`PeerRoot`) offers:

================================  ================================================================
``echo(x)``                       ``x``
``add(a, b)``                     ``a + b`` (positional or keyword)
``hello(name)``                   ``"hello " + name`` (what ``take_gift`` calls on a third Tub)
``fail(kind, message="boom")``    raises: ``value`` -> ``ValueError(message)``, ``custom`` ->
                                  ``PeerError(message)`` (reported as ``interop.PeerError``),
                                  ``violation`` -> ``foolscap.api.Violation(message)``, ``key`` ->
                                  ``KeyError(message)``, ``later`` -> ``ValueError(message)``
                                  from a Deferred that fails in a later reactor turn
``child(name)``                   a new Referenceable with ``name()`` -> name and ``echo(x)`` -> x
``shelf()``                       a new Referenceable declaring ``RIShelf`` (``put(key=
                                  ByteStringConstraint(8), value=int) -> bool``); it also has
                                  ``calls()``, which the interface lacks
``shelf_calls()``                 how many ``put`` calls that shelf ran
``same(ref)``                     ``ref`` itself (identity on return)
``identical(a, b)``               ``a is b`` as the server sees it
``keep(ref)``                     holds ``ref`` (until ``release``); the number held
``release()``                     drops every held reference; how many there were
``call_back(ref, method, *a,      ``ref.callRemote(method, *a, **kw)``'s result
**kw)``
``take_gift(ref)``                ``{"hello": ref.callRemote("hello", "gift"), "tubid": <TubID of
                                  the Tub ref lives in>}``
``furl_of_new_object(name)``      the FURL of a new child registered under a random name
``make_copy(x, y)``               a Copyable ``Point`` (``typeToCopy = "example.pbfast/Point"``)
``echo_copy(p)``                  ``p`` (a RemoteCopy of ``example.pbfast/Point``) sent back as a
                                  new ``Point`` with the same state
``sleep(seconds, value=None)``    ``value``, after ``seconds``
``collect()``                     None, once garbage is collected and the decrefs this Tub sent
                                  for it are acknowledged
``table_sizes()``                 ``{"exported", "imported", "gifts", "brokers", "registered"}``
                                  (see :meth:`PeerRoot.remote_table_sizes`)
================================  ================================================================

Set ``FOOLSCAP_PEER_LOG=1`` in the environment to send Twisted's and foolscap's logs to stderr
(off by default so an unread stderr pipe can never fill up and block the peer).
"""

from __future__ import annotations

import argparse
import base64
import decimal
import gc
import hashlib
import json
import os
import re
import sys
import threading
import time

from foolscap import crypto
from foolscap.api import (
    Copyable,
    Referenceable,
    RemoteCopy,
    RemoteInterface,
    Tub,
    Violation,
    fireEventually,
)
from foolscap.call import CopiedFailure
from foolscap.logging import log as flog
from foolscap.referenceable import RemoteReference
from foolscap.schema import ByteStringConstraint
from twisted.internet import defer, endpoints, interfaces, protocol, reactor, ssl, task
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.python import reflect
from zope.interface import implementer

HOST = "127.0.0.1"
ROOT_NAME = "root"
POINT_TYPE = "example.pbfast/Point"
CLIENT_TIMEOUT = 30.0  # seconds; a client scenario that takes longer is an ERROR
KEEPALIVE_IDLE = 3.5  # seconds the keepalive scenario stays silent
LIAR_QUIET = 1.0  # seconds without news after which the liar stops waiting for more
COLLECT_WAIT = 5.0  # seconds collect() waits at most for its decrefs to be acknowledged
STOP_WAIT = 5.0  # seconds a client waits at most for its Tub to hang up
HANGUP_WAIT = 10.0  # seconds the hangup scenario waits at most for the other side to hang up
FURL_RE = re.compile(r"^pb://([^@]+)@([^/]*)/(.+)$")  # foolscap's own FURL pattern
# The names every failure in the errors scenario is checked against with Failure.check().
CHECK_NAMES = (
    "builtins.ValueError",
    "builtins.KeyError",
    "builtins.LookupError",
    "builtins.AttributeError",
    "builtins.TypeError",
    "builtins.Exception",
    "foolscap.tokens.Violation",
    "interop.PeerError",
)


# ---------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------


def tag(value, _active=()):
    """Describe `value` as JSON-safe data that keeps every distinction the wire keeps.

    ints travel as decimal strings (no JSON precision limits), floats as ``repr`` (``nan``,
    ``-0.0``), bytes as hex; sets and dicts are sorted by their items' JSON text so the order
    they arrived in does not matter. A container met again inside itself is ``{"type":
    "cycle"}``. Never raises.
    """
    try:
        return _tag(value, _active)
    except Exception:
        return {"type": "other", "class": reflect.qual(type(value)), "repr": reflect.safe_repr(value)}


def _json_key(item):
    return json.dumps(item, sort_keys=True)


def _tag(value, active):
    if value is None:
        return {"type": "none"}
    if isinstance(value, bool):
        return {"type": "bool", "value": value}
    if isinstance(value, int):
        return {"type": "int", "value": str(value)}
    if isinstance(value, float):
        return {"type": "float", "value": repr(value)}
    if isinstance(value, bytes):
        return {"type": "bytes", "hex": value.hex()}
    if isinstance(value, str):
        return {"type": "str", "value": value}
    if isinstance(value, decimal.Decimal):
        return {"type": "decimal", "value": str(value)}
    if isinstance(value, RemoteReference):
        return {"type": "reference"}
    if isinstance(value, (Point, RemotePoint)):
        state = {name: tag(v, active) for name, v in sorted(vars(value).items())}
        return {"type": "copy", "copytype": POINT_TYPE, "state": state}
    if isinstance(value, (list, tuple, set, frozenset, dict)):
        if id(value) in active:
            return {"type": "cycle"}
        active = (*active, id(value))
        if isinstance(value, dict):
            items = [[tag(k, active), tag(v, active)] for k, v in value.items()]
            return {"type": "dict", "items": sorted(items, key=lambda kv: _json_key(kv[0]))}
        items = [tag(v, active) for v in value]
        if isinstance(value, (set, frozenset)):
            items.sort(key=_json_key)
        return {"type": type(value).__name__, "items": items}
    return {"type": "other", "class": reflect.qual(type(value)), "repr": reflect.safe_repr(value)}


def tub_id_of(cert):
    """The TubID foolscap derives from a certificate (base32 of the SHA-1 of its DER)."""
    return crypto.digest32(cert.digest("sha1"))


def parse_furl(furl):
    """``(tubid, hints, name)`` of a FURL, as foolscap splits it (only 32 TubID chars count)."""
    match = FURL_RE.match(furl)
    if match is None:
        raise ValueError(f"not a FURL: {furl!r}")
    tubid, hints, name = match.groups()
    return tubid[:32], hints.split(",") if hints else [], name


def local_furl(furl):
    """`furl`, if every hint in it is TCP on 127.0.0.1 (this peer never goes further)."""
    _tubid, hints, _name = parse_furl(furl)
    for hint in hints:
        host, _, port = hint.removeprefix("tcp:").rpartition(":")
        if host != HOST or not port.isdigit():
            raise ValueError(f"only tcp:{HOST}:PORT hints are allowed, not {hint!r}")
    return furl


def random_tub_id():
    """A well-formed TubID that names nobody (not the hash of any certificate we hold)."""
    return base64.b32encode(os.urandom(20)).decode("ascii").lower()


def _emit(tag_word, payload):
    sys.stdout.write(f"{tag_word} {json.dumps(payload)}\n")
    sys.stdout.flush()


def make_tub(cert_file):
    """A Tub whose identity lives in `cert_file` (created there if missing), or a fresh one."""
    return Tub(certFile=cert_file) if cert_file else Tub()


# ---------------------------------------------------------------------------
# objects the server offers (and the client sends)
# ---------------------------------------------------------------------------


class PeerError(Exception):
    """The ``custom`` failure. Its module is pinned so its qualified name does not depend on
    how this file was started (``__main__`` as a script): a pbfast root can raise a class of
    the same name and be compared with the same expectations."""

    __module__ = "interop"


class Point(Copyable):
    """Sent by copy as ``example.pbfast/Point``; its state is its attributes."""

    typeToCopy = POINT_TYPE

    def __init__(self, **state):
        self.__dict__.update(state)


class RemotePoint(RemoteCopy):
    """What a received ``example.pbfast/Point`` becomes (registered by ``copytype``)."""

    copytype = POINT_TYPE


class UnknownCopy(Copyable):
    """A copy whose type name nobody registered: receivers must refuse it."""

    typeToCopy = "example.pbfast/Unknown"

    def __init__(self):
        self.x = 1


class PeerChild(Referenceable):
    def __init__(self, name):
        self.name = name

    def remote_name(self):
        return self.name

    def remote_echo(self, x):
        return x


SHELF_INTERFACE = "RIShelf.interop.pbfast.example"


class RIShelf(RemoteInterface):
    """The interface of ``shelf()``'s object, in foolscap's spelling (the pbfast side declares
    the same name with type hints)."""

    __remote_name__ = SHELF_INTERFACE

    def put(key=ByteStringConstraint(8), value=int):  # noqa: B008  (foolscap's spelling)
        return bool


@implementer(RIShelf)
class PeerShelf(Referenceable):
    def __init__(self):
        self.calls = 0

    def remote_put(self, key, value=0):
        self.calls += 1
        return True

    def remote_calls(self):  # not in the interface: foolscap refuses it
        return self.calls


class PeerRoot(Referenceable):
    """The object registered as ``root``; see the module docstring for its methods."""

    def __init__(self, tub):
        self.tub = tub
        self.kept = []

    def remote_echo(self, x):
        return x

    def remote_add(self, a, b):
        return a + b

    def remote_hello(self, name):
        return f"hello {name}"

    def remote_fail(self, kind, message="boom"):
        if kind == "value":
            raise ValueError(message)
        if kind == "custom":
            raise PeerError(message)
        if kind == "violation":
            raise Violation(message)
        if kind == "key":
            raise KeyError(message)
        if kind == "later":
            d = defer.Deferred()
            reactor.callLater(0.01, d.errback, ValueError(message))
            return d
        raise ValueError(f"unknown failure kind {kind!r}")

    def remote_child(self, name):
        return PeerChild(name)

    def remote_shelf(self):
        self.shelf = PeerShelf()
        return self.shelf

    def remote_shelf_calls(self):
        return self.shelf.calls

    def remote_same(self, ref):
        return ref

    def remote_identical(self, a, b):
        return a is b

    def remote_keep(self, ref):
        self.kept.append(ref)
        return len(self.kept)

    def remote_release(self):
        count = len(self.kept)
        del self.kept[:]
        return count

    def remote_call_back(self, ref, method, *args, **kwargs):
        return ref.callRemote(method, *args, **kwargs)

    @defer.inlineCallbacks
    def remote_take_gift(self, ref):
        hello = yield ref.callRemote("hello", "gift")
        return {"hello": hello, "tubid": ref.getRemoteTubID()}

    def remote_furl_of_new_object(self, name):
        # registerReference holds the object strongly, so the FURL stays usable.
        return self.tub.registerReference(PeerChild(name))

    def remote_make_copy(self, x, y):
        return Point(x=x, y=y)

    def remote_echo_copy(self, p):
        if not isinstance(p, RemotePoint):
            raise TypeError(f"expected a {POINT_TYPE}, got {reflect.qual(type(p))}")
        return Point(**vars(p))

    def remote_sleep(self, seconds, value=None):
        return task.deferLater(reactor, seconds, lambda: value)

    @defer.inlineCallbacks
    def remote_collect(self):
        gc.collect()
        # A RemoteReference that dies sends its decref from foolscap's eventual-send queue, and
        # forgets its tracker only when the decref is answered: wait for both.
        yield fireEventually()
        waited = 0.0
        while any(b.waitingForAnswers for b in self.tub.brokers.values()) and waited < COLLECT_WAIT:
            yield task.deferLater(reactor, 0.02, lambda: None)
            waited += 0.02
        return None

    def remote_table_sizes(self):
        """Sizes of this Tub's reference tables, summed over its live brokers.

        * ``exported``: ``Broker.myReferenceByCLID`` -- our Referenceables the peers hold
          RemoteReferences to (the root included once a peer got it); an entry goes when the
          peer's ``decref`` brings its count to 0.
        * ``imported``: ``Broker.yourReferenceByCLID`` -- trackers of the peers' objects we
          hold RemoteReferences to; an entry goes when our ``decref`` is acknowledged.
        * ``gifts``: ``Broker.myGifts`` -- third-party references we sent, waiting for the
          receiver's ``decgift``.
        * ``brokers``: ``Tub.brokers`` -- live connections, one per remote TubID.
        * ``registered``: ``Tub.nameToReference`` -- names our objects are reachable under:
          ``root``, objects from ``furl_of_new_object``, and (held weakly) every Referenceable
          foolscap registered automatically when sending it by reference.
        """
        brokers = list(self.tub.brokers.values())
        return {
            "exported": sum(len(b.myReferenceByCLID) for b in brokers),
            "imported": sum(len(b.yourReferenceByCLID) for b in brokers),
            "gifts": sum(len(b.myGifts) for b in brokers),
            "brokers": len(brokers),
            "registered": len(self.tub.nameToReference),
        }


# ---------------------------------------------------------------------------
# server mode
# ---------------------------------------------------------------------------


@implementer(interfaces.IStreamServerEndpoint)
class _PortRecorder:
    """Wraps a server endpoint to learn the port it was given (``Listener.getPortnum`` is
    deprecated)."""

    def __init__(self, endpoint):
        self._endpoint = endpoint
        self.port = defer.Deferred()

    def listen(self, factory):
        d = self._endpoint.listen(factory)

        def listening(listening_port):
            self.port.callback(listening_port.getHost().port)
            return listening_port

        return d.addCallback(listening)


def _stop_on_stdin_eof(tub):
    """Until stdin's EOF: a line ``stop`` stops `tub` (``STOPPED <seconds>`` when done)."""
    try:
        for line in sys.stdin.buffer:
            if line.strip() == b"stop":
                reactor.callFromThread(_stop_and_report, tub)
    except Exception:
        pass
    reactor.callFromThread(reactor.stop)


def _stop_and_report(tub):
    if not tub.running:
        return
    started = time.monotonic()
    d = tub.stopService()
    d.addCallback(lambda _: sys.stdout.write(f"STOPPED {time.monotonic() - started:.3f}\n"))
    d.addCallback(lambda _: sys.stdout.flush())


@defer.inlineCallbacks
def _start_server(opts):
    tub = make_tub(opts.cert)
    if opts.keepalive is not None:
        tub.setOption("keepaliveTimeout", opts.keepalive)
    if opts.disconnect is not None:
        tub.setOption("disconnectTimeout", opts.disconnect)
    tub.startService()
    recorder = _PortRecorder(endpoints.serverFromString(reactor, f"tcp:0:interface={HOST}"))
    tub.listenOn(recorder)
    port = yield recorder.port
    tub.setLocation(f"tcp:{HOST}:{port}")
    furl = tub.registerReference(PeerRoot(tub), ROOT_NAME)
    sys.stdout.write(f"FURL {furl}\n")
    sys.stdout.flush()
    threading.Thread(target=_stop_on_stdin_eof, args=(tub,), name="stdin-watch", daemon=True).start()


def run_server(opts):
    state = {"exit_code": 0}

    def failed(f):
        _emit("ERROR", f.getTraceback())
        state["exit_code"] = 1
        reactor.stop()

    reactor.callWhenRunning(lambda: _start_server(opts).addErrback(failed))
    reactor.run()
    return state["exit_code"]


# ---------------------------------------------------------------------------
# client mode: scenarios (each returns a JSON-able dict)
# ---------------------------------------------------------------------------


class Local(Referenceable):
    """A Referenceable living in the client's Tub, handed to the server."""

    def remote_hello(self, name):
        return f"hello {name}"

    def remote_add(self, a, b=0):
        return a + b


def capture(d):
    """A Deferred firing with ``("ok", result)`` or ``("fail", failure)``.

    A remote failure arrives as a CopiedFailure whose ``value`` is a string. Yielding one inside
    ``inlineCallbacks`` does not raise it in the generator: Twisted fails while trying to throw
    the string in (``AttributeError: 'str' object has no attribute 'with_traceback'``) and the
    generator's own Deferred fails with that, past any ``except``. So scenarios look at failures
    through this instead.
    """
    return d.addCallbacks(lambda r: ("ok", r), lambda f: ("fail", f))


def failure_report(f):
    """What a caller can see of a remote failure."""
    traceback = f.traceback if isinstance(getattr(f, "traceback", None), str) else None
    if traceback is None:
        traceback_kind = "none"
    elif traceback == "Traceback unavailable\n":
        traceback_kind = "unavailable"
    else:
        traceback_kind = "full" if traceback.strip() else "empty"
    return {
        "failed": True,
        "copied": isinstance(f, CopiedFailure),
        "type": reflect.qual(f.type) if isinstance(f.type, type) else str(f.type),
        "value": f.value if isinstance(f.value, str) else reflect.safe_str(f.value),
        "parents": [str(p) for p in f.parents],
        "check": {name: f.check(name) is not None for name in CHECK_NAMES},
        "traceback": traceback_kind,
    }


@defer.inlineCallbacks
def outcome(d):
    """``{"failed": False, "result": tag}`` or a :func:`failure_report`."""
    kind, value = yield capture(d)
    if kind == "ok":
        return {"failed": False, "result": tag(value)}
    return failure_report(value)


def basic_values():
    """``(name, value)`` for every foolscap data type, with edge cases. Dicts never mix key
    types: the sender sorts keys and a bytes/str mix makes foolscap drop the connection."""
    return [
        ("none", None),
        ("true", True),
        ("false", False),
        ("int_0", 0),
        ("int_1", 1),
        ("int_neg_1", -1),
        ("int_2_31_minus_1", 2**31 - 1),
        ("int_2_31", 2**31),
        ("int_neg_2_31", -(2**31)),
        ("int_neg_2_31_minus_1", -(2**31) - 1),
        ("int_2_64", 2**64),
        ("int_neg_2_70", -(2**70)),
        ("float", 1.5),
        ("float_neg_zero", -0.0),
        ("float_tiny", -2.25e-300),
        ("float_inf", float("inf")),
        ("float_nan", float("nan")),
        ("bytes_empty", b""),
        ("bytes", b"bytes\x00\xff"),
        ("bytes_vocab_word", b"list"),  # a vocabulary word, sent as a VOCAB token
        ("str_empty", ""),
        ("str", "caf\u00e9 \u2713 \U0001f600"),
        ("list_empty", []),
        ("list", [1, [2, [3, []]]]),
        ("tuple_empty", ()),
        ("tuple", (1, "two", (3.0, None))),
        ("dict_empty", {}),
        ("dict_str_keys", {"a": 1, "\u00fc": [b"x"], "": None}),
        ("dict_bytes_keys", {b"k": 1, b"\xff": "v"}),
        ("dict_int_keys", {1: "one", -2: "minus two"}),
        ("set_empty", set()),
        ("set", {1, 2, 3}),
        ("frozenset", frozenset({b"a", b"b"})),
        ("nested", {"k": [(1, {2, 3}), {"inner": frozenset({4})}, [b"a", "b"]]}),
        ("decimal", decimal.Decimal("1.25")),
        ("decimal_small", decimal.Decimal("-0.000001")),
        ("decimal_big", decimal.Decimal("12345678901234567890.123456789")),
        ("decimal_exp", decimal.Decimal("1E+10")),
    ]


@defer.inlineCallbacks
def scenario_basic(tub, root, opts):
    """Every value of :func:`basic_values` echoed one by one (``values``: name, sent, received),
    then all at once in one list (``all_at_once``: received); a list holding one list twice and
    a list holding itself (``shared``/``cycle``: identity kept?); keyword arguments (``add``)."""
    values = []
    for name, sent in basic_values():
        received = yield root.callRemote("echo", sent)
        values.append({"name": name, "sent": tag(sent), "received": tag(received)})
    everything = [value for _, value in basic_values()]
    all_at_once = yield root.callRemote("echo", everything)

    inner = [1, 2]
    shared = yield root.callRemote("echo", [inner, inner])
    cycle = []
    cycle.append(cycle)
    cycle_back = yield root.callRemote("echo", cycle)
    return {
        "values": values,
        "all_at_once": {"sent": tag(everything), "received": tag(all_at_once)},
        "shared": {
            "received": tag(shared),
            "identity_preserved": isinstance(shared, list) and len(shared) == 2 and shared[0] is shared[1],
        },
        "cycle": {
            "received": tag(cycle_back),
            "identity_preserved": isinstance(cycle_back, list)
            and len(cycle_back) == 1
            and cycle_back[0] is cycle_back,
        },
        "add": {
            "positional": tag((yield root.callRemote("add", 2, 3))),
            "keywords": tag((yield root.callRemote("add", a=2, b=3))),
            "mixed": tag((yield root.callRemote("add", "x", b="y"))),
        },
    }


@defer.inlineCallbacks
def scenario_errors(tub, root, opts):
    """One :func:`failure_report` per failing call, then an echo proving the connection is still
    up (``after``)."""
    calls = {
        "value": ("fail", "value", "bad value"),
        "custom": ("fail", "custom", "expected"),
        "violation": ("fail", "violation", "not allowed"),
        "key": ("fail", "key", "missing"),
        "later": ("fail", "later", "too late"),
        "missing_method": ("no_such_method", 1),
        "wrong_arguments": ("echo",),
    }
    report = {}
    for key, call in calls.items():
        report[key] = yield outcome(root.callRemote(*call))
    report["after"] = yield outcome(root.callRemote("echo", "still fine"))
    return report


def scenario_schema(tub, root, opts):
    """Against an object whose class declares ``RIShelf`` (this side defines it too): the
    interface name its reference carries; a good call; a violating call refused here, by
    foolscap's own check against its copy (``local``); the same call sent unchecked
    (``_useSchema=False``), refused by the other side (``remote``); unchecked too, a key of
    17 MiB, past the other side's 16 MiB string limit (``oversize``); and an echo proving the
    connection is still up. (foolscap refuses to send a method its copy of the interface lacks,
    even unchecked.)"""
    shelf = yield root.callRemote("shelf")
    report = {"interface": shelf.tracker.interfaceName}
    report["good"] = yield outcome(shelf.callRemote("put", b"key", value=1))
    report["local"] = yield outcome(shelf.callRemote("put", b"123456789"))
    report["remote"] = yield outcome(shelf.callRemote("put", b"123456789", _useSchema=False))
    report["oversize"] = yield outcome(shelf.callRemote("put", b"x" * (17 << 20), _useSchema=False))
    report["after"] = yield outcome(root.callRemote("echo", "still fine"))
    return report


def _tables(tub):
    brokers = list(tub.brokers.values())
    return {
        "exported": sum(len(b.myReferenceByCLID) for b in brokers),
        "imported": sum(len(b.yourReferenceByCLID) for b in brokers),
        "gifts": sum(len(b.myGifts) for b in brokers),
        "brokers": len(brokers),
    }


@defer.inlineCallbacks
def _settle(root):
    """Drop garbage on both sides and wait until every decref is acknowledged: ours go out
    before the ``collect`` call and are answered before it, the server's are acknowledged
    before ``collect`` returns."""
    gc.collect()
    yield fireEventually()
    yield root.callRemote("collect")


@defer.inlineCallbacks
def scenario_references(tub, root, opts):
    """A server child called through; identity of references sent back (``same``,
    ``identical``); the server calling a local object back (``call_back``); an object fetched by
    its own FURL (``new_object``); then the server's ``table_sizes()`` and our own tables
    (``client_tables_*``: exported, imported, gifts, brokers) while each side holds references
    to the other's objects (``*_before``: the server ``keep``s our local object) and once both
    dropped them (``*_after``)."""
    report = {}
    child = yield root.callRemote("child", "alice")
    report["child"] = {
        "name": tag((yield child.callRemote("name"))),
        "echo": tag((yield child.callRemote("echo", [b"x", "y"]))),
    }
    back = yield root.callRemote("same", child)
    report["same_child_is_identical"] = back is child
    del back

    local = Local()
    back = yield root.callRemote("same", local)
    report["same_local_is_identical"] = back is local
    del back
    report["identical_local"] = yield root.callRemote("identical", local, local)
    report["identical_child"] = yield root.callRemote("identical", child, child)
    report["call_back"] = {
        "hello": (yield outcome(root.callRemote("call_back", local, "hello", "pbfast"))),
        "add": (yield outcome(root.callRemote("call_back", local, "add", 2, b=3))),
        "missing": (yield outcome(root.callRemote("call_back", local, "nope"))),
    }

    report["keep"] = yield root.callRemote("keep", local)

    furl = yield root.callRemote("furl_of_new_object", "fresh")
    fresh = yield tub.getReference(furl)
    report["new_object"] = {
        "same_tub": parse_furl(furl)[0] == parse_furl(opts.furl)[0],
        "name": tag((yield fresh.callRemote("name"))),
    }

    yield _settle(root)
    report["tables_before"] = yield root.callRemote("table_sizes")
    report["client_tables_before"] = _tables(tub)

    report["release"] = yield root.callRemote("release")
    del child, local, fresh
    yield _settle(root)
    report["tables_after"] = yield root.callRemote("table_sizes")
    report["client_tables_after"] = _tables(tub)
    return report


@defer.inlineCallbacks
def scenario_copyables(tub, root, opts):
    """Copies both ways by type name: ``make_copy`` (server to us), ``echo_copy`` (us to server
    and back), and a copy of a type the server does not know (``unknown``: must fail)."""
    made = yield root.callRemote("make_copy", 3, -4)
    made_any = yield root.callRemote("make_copy", [1, b"x"], None)
    echoed = yield root.callRemote("echo_copy", Point(x=5, y="six"))
    return {
        "make_copy": {"class": type(made).__name__, "value": tag(made)},
        "make_copy_any": tag(made_any),
        "echo_copy": {"class": type(echoed).__name__, "value": tag(echoed)},
        "unknown": (yield outcome(root.callRemote("echo", UnknownCopy()))),
        "after": (yield outcome(root.callRemote("echo", "still fine"))),
    }


@defer.inlineCallbacks
def scenario_gift(tub, root, opts):
    """We hold a reference into a third Tub (``--third``) and hand it to the root, which calls
    it: ``take_gift`` is the root's answer, ``third_tubid`` the third Tub's TubID; then the
    gift tables (ours must empty once the root acknowledged the gift with ``decgift``) and the
    root's and the third Tub's ``table_sizes()``."""
    if not opts.third:
        raise ValueError("the gift scenario needs --third FURL")
    third = yield tub.getReference(opts.third)
    taken = yield root.callRemote("take_gift", third)
    # decgift is a fire-and-forget call: wait until it has been processed.
    for _ in range(100):
        if _tables(tub)["gifts"] == 0:
            break
        yield task.deferLater(reactor, 0.02, lambda: None)
    # The root's reference to the third Tub's root died with take_gift: let its decref settle.
    yield _settle(root)
    return {
        "take_gift": tag(taken),
        "third_tubid": parse_furl(opts.third)[0],
        "client_tables": _tables(tub),
        "root_tables": (yield root.callRemote("table_sizes")),
        "third_tables": (yield third.callRemote("table_sizes")),
    }


@defer.inlineCallbacks
def scenario_keepalive(tub, root, opts):
    """With ``keepaliveTimeout=1`` and ``disconnectTimeout=2`` we PING after 1 s of silence
    and drop the connection after 2 s without inbound data, then stay idle for longer than that.
    Only a peer that answers PINGs (or that pings us at least as often) keeps the connection:
    ``data_while_idle`` (inbound bytes arrived while we were idle), ``connected``, ``echo`` (a
    call afterwards) and ``same_broker`` (no reconnection happened)."""
    broker = root.tracker.broker  # the connection's Broker, to tell a reconnection apart
    before = root.getDataLastReceivedAt()
    yield task.deferLater(reactor, KEEPALIVE_IDLE, lambda: None)
    after = root.getDataLastReceivedAt()
    return {
        "data_while_idle": before is not None and after is not None and after > before,
        "connected": root.isConnected(),
        "echo": (yield outcome(root.callRemote("echo", "awake"))),
        "same_broker": any(b is broker for b in tub.brokers.values()),
    }


@defer.inlineCallbacks
def scenario_parallel(tub, root, opts):
    """Answers out of order: ``sleep(0.3, "slow")`` and then ``echo("fast")`` in flight
    together (``order``: values in completion order), and 50 echoes in flight at once
    (``echoes``: all came back right)."""
    order = []
    slow = root.callRemote("sleep", 0.3, "slow").addCallback(order.append)
    fast = root.callRemote("echo", "fast").addCallback(order.append)
    yield defer.gatherResults([slow, fast], consumeErrors=True)
    echoes = yield defer.gatherResults([root.callRemote("echo", i) for i in range(50)], consumeErrors=True)
    return {"order": order, "echoes": echoes == list(range(50))}


@defer.inlineCallbacks
def scenario_bad_tubid(tub, opts):
    """Ask the right address for a different, well-formed TubID: the connection must fail
    (``failed``, ``type``, ``message``)."""
    tubid, hints, name = parse_furl(opts.furl)
    wrong = base64.b32encode(hashlib.sha1(tubid.encode("ascii")).digest()).decode("ascii").lower()
    furl = f"pb://{wrong}@{','.join(hints)}/{name}"
    kind, value = yield capture(tub.getReference(furl))
    if kind == "ok":
        return {"failed": False, "wrong_tubid": wrong, "type": None, "message": None}
    return {
        "failed": True,
        "wrong_tubid": wrong,
        "type": reflect.qual(value.type),
        "message": value.getErrorMessage(),
    }


@defer.inlineCallbacks
def _stop_tub(tub, limit):
    """Stop `tub`, giving up after `limit` seconds: how long it took, or None if it did not end
    in time. (It is timed: a timeout cancels the DeferredList inside ``stopService``, which
    then succeeds all the same.)"""
    started = time.monotonic()
    stopping = tub.stopService()
    stopping.addTimeout(limit, reactor)
    yield stopping.addErrback(lambda _: None)
    seconds = time.monotonic() - started
    return seconds if seconds < limit else None


@defer.inlineCallbacks
def scenario_hangup(tub, root, opts):
    """The other side stops its Tub on our cue. With ``sleep(30)`` pending we call
    ``hello("hangup")`` (the cue) and wait up to HANGUP_WAIT s for the disconnect: ``noticed``
    (seconds from the hello's answer to our notifyOnDisconnect callback; None if it never
    came), ``pending`` (that call's outcome), ``connected`` (isConnected() then), ``after`` (a
    call made then), and ``stop``: our own ``stopService`` afterwards, ``{"completed",
    "seconds"}`` (it waits for each connection to close, so a peer that ignores our TLS
    close_notify holds it up)."""
    lost = defer.Deferred()
    root.notifyOnDisconnect(lambda: lost.called or lost.callback(time.monotonic()))
    pending = outcome(root.callRemote("sleep", 30, "too late"))
    yield root.callRemote("hello", "hangup")
    cued = time.monotonic()
    lost.addTimeout(HANGUP_WAIT, reactor)
    kind, when = yield capture(lost)
    noticed = when - cued if kind == "ok" else None
    pending.addTimeout(1, reactor)
    pending_outcome = yield capture(pending)
    report = {
        "noticed": noticed,
        "pending": pending_outcome[1] if pending_outcome[0] == "ok" else "still waiting",
        "connected": root.isConnected(),
        "after": (yield outcome(root.callRemote("echo", 1))),
    }
    seconds = yield _stop_tub(tub, HANGUP_WAIT)
    report["stop"] = {"completed": seconds is not None, "seconds": seconds}
    return report


SCENARIOS = {
    "basic": scenario_basic,
    "schema": scenario_schema,
    "errors": scenario_errors,
    "references": scenario_references,
    "copyables": scenario_copyables,
    "gift": scenario_gift,
    "keepalive": scenario_keepalive,
    "parallel": scenario_parallel,
    "bad_tubid": scenario_bad_tubid,  # no root: the connection itself must fail
    "hangup": scenario_hangup,  # stops the Tub itself
}


@defer.inlineCallbacks
def _run_scenario(tub, opts):
    for furl in (opts.furl, opts.third):
        if furl:
            local_furl(furl)
    if opts.scenario == "bad_tubid":
        return (yield scenario_bad_tubid(tub, opts))
    root = yield tub.getReference(opts.furl)
    return (yield SCENARIOS[opts.scenario](tub, root, opts))


def _finish_once(state):
    """A function emitting exactly one RESULT/ERROR line, whatever fires first (the work or
    the timeout), then stopping the reactor; later calls do nothing."""

    def finish(tag_word, payload, exit_code):
        if state["done"]:
            return
        state["done"] = True
        state["exit_code"] = exit_code
        _emit(tag_word, payload)
        reactor.stop()

    return finish


def _run_with_timeout(work):
    """Run ``work()`` (returning a Deferred of a JSON-able result) on the reactor with the overall
    timeout; print its RESULT or ERROR line; the exit code."""
    state = {"done": False, "exit_code": 1}
    finish = _finish_once(state)

    def failed(f):
        try:
            text = f.getTraceback()
        except Exception:
            text = reflect.safe_str(f.value)
        finish("ERROR", text, 1)

    def start():
        timer = reactor.callLater(CLIENT_TIMEOUT, finish, "ERROR", f"timed out after {CLIENT_TIMEOUT}s", 1)
        d = defer.maybeDeferred(work)
        d.addCallbacks(lambda result: finish("RESULT", result, 0), failed)
        d.addBoth(lambda _: timer.active() and timer.cancel())

    reactor.callWhenRunning(start)
    reactor.run()
    return state["exit_code"]


def run_client(opts):
    @defer.inlineCallbacks
    def work():
        tub = make_tub(opts.cert)
        if opts.scenario == "keepalive":
            # Brokers take these from the Tub when a connection is made.
            tub.setOption("keepaliveTimeout", 1)
            tub.setOption("disconnectTimeout", 2)
        tub.startService()
        try:
            result = yield _run_scenario(tub, opts)
        finally:
            # Hang up properly (TLS close) rather than by process exit. stopService waits for
            # each connection to close, which needs the peer to answer our close_notify.
            hung_up = True
            if tub.running:
                hung_up = (yield _stop_tub(tub, STOP_WAIT)) is not None
        if not hung_up:
            raise RuntimeError(f"stopService took over {STOP_WAIT} s: the peer kept the connection open")
        return result

    return _run_with_timeout(work)


# ---------------------------------------------------------------------------
# liar mode: raw TLS, a hello claiming someone else's TubID
# ---------------------------------------------------------------------------


def _parse_block(text):
    """A negotiation block (``key: value`` lines) as a dict; non-conforming lines kept apart."""
    block = {}
    for line in text.split("\r\n"):
        key, colon, value = line.partition(":")
        if colon:
            block[key.strip().lower()] = value.lstrip()
        else:
            block.setdefault("", []).append(line)
    return block


def _hello_block(claimed_tubid):
    hello = {
        "banana-negotiation-range": "3 3",
        "initial-vocab-table-range": "0 1",
        "last-connection": "none 0",
        "my-incarnation": os.urandom(8).hex(),
        "my-tub-id": claimed_tubid,
    }
    return "".join(f"{k}: {v}\r\n" for k, v in sorted(hello.items())).encode("ascii") + b"\r\n"


class _Liar(protocol.Protocol):
    def __init__(self, request, tls_options, hello, done):
        self.request = request
        self.tls_options = tls_options
        self.hello = hello
        self.done = done
        self.plain = b""
        self.status = None
        self.encrypted = b""
        self.upgraded = False
        self.tls = False
        self.quiet_timer = None

    def connectionMade(self):
        self.transport.write(self.request)

    def dataReceived(self, data):
        if self.status is None:
            self.plain += data
            head, sep, rest = self.plain.partition(b"\r\n\r\n")
            if not sep:
                return
            self.status = head.split(b"\r\n")[0].decode("latin-1")
            if self.status.split()[1:2] != ["101"]:
                return  # refused: the server hangs up
            # Same order as foolscap: switch to TLS, then the hello goes out inside it.
            self.upgraded = True
            self.transport.startTLS(self.tls_options)
            self.transport.write(self.hello)
            data = rest
            if not data:
                return
        if not self.upgraded:
            return
        self.tls = True
        self.encrypted += data
        # The answer to a lie is an error block and a hang-up; to the honest hello, the server's
        # hello (and perhaps its decision), then silence: stop waiting once it is quiet.
        if self.quiet_timer is not None and self.quiet_timer.active():
            self.quiet_timer.cancel()
        self.quiet_timer = reactor.callLater(LIAR_QUIET, self._quiet)

    def _quiet(self):
        if not self.done.called:
            self.done.callback(False)
        self.transport.loseConnection()

    def connectionLost(self, reason):
        if self.quiet_timer is not None and self.quiet_timer.active():
            self.quiet_timer.cancel()
        if not self.done.called:
            self.done.callback(True)


@defer.inlineCallbacks
def run_liar_scenario(opts):
    tubid, hints, _name = parse_furl(local_furl(opts.furl))
    host, port = hints[0].removeprefix("tcp:").rsplit(":", 1)
    if opts.no_cert:
        tls_options = ssl.CertificateOptions()
        cert_tubid = None
        claimed = random_tub_id()
    else:
        cert = crypto.createCertificate()
        tls_options = ssl.CertificateOptions(privateKey=cert.privateKey.original, certificate=cert.original)
        cert_tubid = tub_id_of(cert)
        claimed = cert_tubid if opts.honest else random_tub_id()
    request = (
        f"GET /id/{tubid} HTTP/1.1\r\nHost: {host}\r\nUpgrade: TLS/1.0\r\nConnection: Upgrade\r\n\r\n"
    ).encode("ascii")
    done = defer.Deferred()
    liar = _Liar(request, tls_options, _hello_block(claimed), done)
    endpoint = endpoints.TCP4ClientEndpoint(reactor, host, int(port))
    yield endpoints.connectProtocol(endpoint, liar)
    closed = yield done
    reply = liar.encrypted.decode("utf-8", "replace")
    blocks = [_parse_block(b) for b in reply.split("\r\n\r\n") if b]
    errors = [b["error"] for b in blocks if "error" in b]
    return {
        "status": liar.status,
        "claimed_tubid": claimed,
        "cert_tubid": cert_tubid,
        "tls": liar.tls,
        "reply": reply,
        "blocks": blocks,
        "error": errors[0] if errors else None,
        "closed": closed,
    }


def run_liar(opts):
    """The liar's RESULT: ``status`` (the server's plaintext status line), ``claimed_tubid``,
    ``cert_tubid`` (None with ``--no-cert``), ``tls`` (anything arrived inside TLS), ``reply``
    (everything that did, as text), ``blocks`` (it parsed as negotiation blocks), ``error`` (the
    first block's ``error`` value, or None), ``closed`` (the server hung up, rather than going
    quiet for a second)."""
    return _run_with_timeout(lambda: run_liar_scenario(opts))


# ---------------------------------------------------------------------------
# tub-id mode
# ---------------------------------------------------------------------------


def run_tub_id(opts):
    try:
        with open(opts.file, "rb") as f:
            cert = crypto.loadCertificate(f.read())
    except Exception as e:
        _emit("ERROR", f"cannot load {opts.file}: {e}")
        return 1
    sys.stdout.write(f"TUBID {tub_id_of(cert)}\n")
    return 0


# ---------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------


def _foolscap_event_to_stderr(event):
    # foolscap's own formatter leaves out the attached failure, which holds the reason of, for
    # example, a refused negotiation.
    text = flog.format_message(event)
    failure = event.get("failure")
    if failure is not None:
        text += "\n" + failure.getTraceback()
    sys.stderr.write(f"[foolscap] {text}\n")
    sys.stderr.flush()


def _configure_logging():
    """Twisted's and foolscap's logs to stderr if FOOLSCAP_PEER_LOG is set, else discarded.

    Without an explicit choice Twisted prints every logged error to stderr, which could fill an
    unread stderr pipe and block the peer.
    """
    if os.environ.get("FOOLSCAP_PEER_LOG"):
        observers = [textFileLogObserver(sys.stderr)]
        flog.theLogger.addImmediateObserver(_foolscap_event_to_stderr)
    else:
        observers = [lambda event: None]
    globalLogBeginner.beginLoggingTo(observers, discardBuffer=True, redirectStandardIO=False)


def _parser():
    parser = argparse.ArgumentParser(prog="foolscap_peer.py", description="Stock foolscap peer.")
    modes = parser.add_subparsers(dest="mode", required=True)

    server = modes.add_parser("server", help="serve a root object; print FURL <furl>")
    server.add_argument("--cert", help="certificate file (created if missing)")
    server.add_argument("--keepalive", type=int, metavar="SECONDS", help="keepaliveTimeout")
    server.add_argument("--disconnect", type=int, metavar="SECONDS", help="disconnectTimeout")

    client = modes.add_parser("client", help="run a scenario against FURL; print RESULT <json>")
    client.add_argument("furl")
    client.add_argument("scenario", choices=sorted(SCENARIOS))
    client.add_argument("--cert", help="certificate file of the client Tub (created if missing)")
    client.add_argument("--third", metavar="FURL", help="root of a third Tub (gift scenario)")

    liar = modes.add_parser("liar", help="claim a TubID the certificate does not match")
    liar.add_argument("furl")
    lie = liar.add_mutually_exclusive_group()
    lie.add_argument("--no-cert", action="store_true", help="present no client certificate")
    lie.add_argument("--honest", action="store_true", help="claim the certificate's own TubID")

    tub_id = modes.add_parser("tub-id", help="print TUBID <tubid> of a certificate file")
    tub_id.add_argument("file")
    return parser


def main(argv):
    opts = _parser().parse_args(argv)
    _configure_logging()
    if opts.mode == "server":
        return run_server(opts)
    if opts.mode == "client":
        return run_client(opts)
    if opts.mode == "liar":
        return run_liar(opts)
    return run_tub_id(opts)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
