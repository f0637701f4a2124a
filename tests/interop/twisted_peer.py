"""Stock Twisted Perspective Broker peer for pbfast interop tests.

This script runs *unmodified* ``twisted.spread.pb`` on Twisted's own reactor
so the test-suite can check pbfast against the reference implementation over a
real TCP connection.  It only depends on the standard library and Twisted, and
it only ever listens on / connects to 127.0.0.1.

Usage::

    python tests/interop/twisted_peer.py server
    python tests/interop/twisted_peer.py client PORT SCENARIO

``server``
    Listens on an ephemeral port, prints exactly one line ``PORT <n>`` to
    stdout, then serves until its stdin reaches EOF (the test controls its
    lifetime by closing the pipe).  Every connection gets a fresh root object
    (see :class:`PeerRoot` for the ``remote_*`` methods).

``client PORT SCENARIO``
    Connects with ``pb.PBClientFactory`` to 127.0.0.1:PORT, runs SCENARIO
    (one of :data:`SCENARIOS`), prints one line ``RESULT <json>`` and exits 0.
    On any unexpected failure it prints ``ERROR <traceback as json string>``
    and exits 1.

Set ``TWISTED_PEER_LOG=1`` in the environment to send Twisted's log to
stderr (off by default so an unread stderr pipe can never fill up and block
the peer).
"""

from __future__ import annotations

import datetime
import decimal
import gc
import hashlib
import json
import math
import os
import sys
import threading

import twisted
from twisted.internet import defer, protocol, reactor, task
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.python import reflect
from twisted.spread import pb, util

HOST = "127.0.0.1"
CLIENT_TIMEOUT = 30.0  # seconds; a client scenario that takes longer is an ERROR
BAD_VERSION_WAIT = 2.0  # seconds to wait for the server to hang up in bad_version
PAGED_SIZE = (1 << 20) + 3  # bytes the `paging` scenario asks for: past banana's 640 KiB


# ---------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------


def _text(value):
    """Decode bytes (CopiedFailure.type / parents are bytes) to str."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, type):
        return reflect.qual(value)
    return str(value)


def failure_info(failure):
    """Describe a Failure (local or CopiedFailure) without ever raising.

    ``repr()`` of a CopiedFailure raises, so only safe accessors are used.
    """
    try:
        message = failure.getErrorMessage()
    except Exception:
        message = reflect.safe_str(failure.value)
    try:
        parents = [_text(p) for p in failure.parents]
    except Exception:
        parents = []
    return {"type": _text(failure.type), "message": message, "parents": parents}


def sample_values():
    """One example of every jelly builtin type (no self-referencing list)."""
    shared = [1, 2]
    return [
        None,
        True,
        False,
        0,
        -1,
        2**31,
        -(2**31) - 1,
        2**100,
        -(2**100),
        1.5,
        float("inf"),
        b"bytes",
        "unicode \u2713",
        [1, [2]],
        (1, 2),
        {"a": 1, 2: "b"},
        {1, 2},
        frozenset({3}),
        datetime.datetime(2024, 1, 2, 3, 4, 5, 6),
        datetime.date(2024, 1, 2),
        datetime.time(1, 2, 3, 4),
        datetime.timedelta(days=1, seconds=2, microseconds=3),
        decimal.Decimal("1.25"),
        [shared, shared],  # shared reference: the same list object twice
    ]


def paged_bytes(size):
    """The `size` bytes paged in the paging tests (both sides make the same ones)."""
    return (bytes(range(256)) * (size // 256 + 1))[:size]


def self_referencing_list():
    cycle = []
    cycle.append(cycle)
    return cycle


# ---------------------------------------------------------------------------
# server mode
# ---------------------------------------------------------------------------


class MyError(pb.Error):
    """A pb.Error subclass: sent to the peer without a logged traceback."""


class Child(pb.Referenceable):
    def __init__(self, start=0):
        self.count = start

    def remote_inc(self):
        self.count += 1
        return self.count

    def remote_value(self):
        return self.count


class PeerRoot(pb.Referenceable):
    """The root object of one connection; holds the connection's broker."""

    def __init__(self, broker):
        self.broker = broker
        self.same_child_instance = Child()
        self.kept = []

    def remote_echo(self, x):
        return x

    def remote_echo_args(self, *args, **kwargs):
        return [list(args), kwargs]

    def remote_fail_value(self, msg):
        raise ValueError(msg)

    def remote_fail_pb(self, msg):
        raise MyError(msg)

    def remote_fail_key(self):
        return {}["missing"]

    def remote_child(self, start=0):
        return Child(start)

    def remote_same_child(self):
        return self.same_child_instance

    def remote_identity(self, x):
        return x

    def remote_is_same_child(self, ref):
        return ref is self.same_child_instance

    def remote_call_back(self, ref, name, *args, **kwargs):
        return ref.callRemote(name, *args, **kwargs)

    def remote_call_back_fail(self, ref, name):
        def unexpected(result):
            return {
                "type": None,
                "message": None,
                "parents": [],
                "unexpected_result": result,
            }

        return ref.callRemote(name).addCallbacks(unexpected, failure_info)

    def remote_tables(self):
        broker = self.broker
        return {
            "luids": len(broker.luids),
            "localObjects": len(broker.localObjects),  # includes "root"
            "remotelyCachedObjects": len(broker.remotelyCachedObjects),
        }

    def remote_gc(self):
        gc.collect()
        return None

    def remote_drop_and_gc(self):
        del self.kept[:]
        gc.collect()
        return None

    def remote_keep(self, ref):
        self.kept.append(ref)
        return len(self.kept)

    def remote_call_kept(self, name, *args):
        return defer.gatherResults([ref.callRemote(name, *args) for ref in self.kept], consumeErrors=True)

    def remote_types(self):
        return sample_values() + [self_referencing_list()]

    def remote_slow(self, x, seconds):
        return task.deferLater(reactor, seconds, lambda: x)

    def remote_version(self):
        return twisted.__version__

    def remote_pages(self, collector, size, chunk_size=8192):
        """Page `size` bytes of `paged_bytes` to `collector` with Twisted's own StringPager."""
        util.StringPager(collector, paged_bytes(size), chunk_size)


class PerConnectionRoot(pb.Root):
    """Hands every new broker its own :class:`PeerRoot`."""

    def rootObject(self, broker):
        return PeerRoot(broker)


def _stop_on_stdin_eof():
    try:
        while sys.stdin.buffer.read(65536):
            pass
    except Exception:
        pass
    reactor.callFromThread(reactor.stop)


def run_server():
    port = reactor.listenTCP(0, pb.PBServerFactory(PerConnectionRoot()), interface=HOST)
    sys.stdout.write(f"PORT {port.getHost().port}\n")
    sys.stdout.flush()
    threading.Thread(target=_stop_on_stdin_eof, name="stdin-watch", daemon=True).start()
    reactor.run()
    return 0


# ---------------------------------------------------------------------------
# client mode: JSON encoding of observed values
# ---------------------------------------------------------------------------


def to_json(value, _stack=()):
    """Turn any value into something json.dumps accepts; never raises."""
    try:
        return _to_json(value, _stack)
    except Exception:
        return {"repr": reflect.safe_repr(value)}


def _sorted_items(items, stack):
    encoded = [to_json(i, stack) for i in items]
    return sorted(encoded, key=lambda e: json.dumps(e, sort_keys=True))


def _to_json(value, stack):
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": bytes(value).hex()}
    if isinstance(value, decimal.Decimal):
        return {"decimal": str(value)}
    if isinstance(value, datetime.datetime):
        return {"datetime": value.isoformat()}
    if isinstance(value, datetime.date):
        return {"date": value.isoformat()}
    if isinstance(value, datetime.time):
        return {"time": value.isoformat()}
    if isinstance(value, datetime.timedelta):
        return {"timedelta": [value.days, value.seconds, value.microseconds]}
    if isinstance(value, (list, tuple, dict, set, frozenset)):
        if id(value) in stack:
            return {"cycle": True}
        stack = (*stack, id(value))
        if isinstance(value, list):
            return [to_json(v, stack) for v in value]
        if isinstance(value, tuple):
            return {"tuple": [to_json(v, stack) for v in value]}
        if isinstance(value, frozenset):
            return {"frozenset": _sorted_items(value, stack)}
        if isinstance(value, set):
            return {"set": _sorted_items(value, stack)}
        if all(isinstance(k, str) for k in value):
            return {k: to_json(v, stack) for k, v in value.items()}
        return {"dict": [[to_json(k, stack), to_json(v, stack)] for k, v in value.items()]}
    return {"repr": reflect.safe_repr(value)}


def _emit(tag, payload):
    sys.stdout.write(f"{tag} {json.dumps(payload)}\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------
# client mode: scenarios (each returns a JSON-able dict)
# ---------------------------------------------------------------------------


class Local(pb.Referenceable):
    """A Referenceable living on the Twisted (client) side."""

    def remote_hello(self, name):
        return f"hello {name}"

    def remote_add(self, a, b):
        return a + b


def _capture_failure(d):
    """Deferred firing with ("ok", result) or ("fail", failure)."""
    return d.addCallbacks(lambda r: ("ok", r), lambda f: ("fail", f))


def _broker_tables(broker):
    return {
        "luids": len(broker.luids),
        "localObjects": len(broker.localObjects),
        "remotelyCachedObjects": len(broker.remotelyCachedObjects),
    }


@defer.inlineCallbacks
def scenario_basic(root):
    values = []
    all_equal = True
    for index, sent in enumerate(sample_values()):
        received = yield root.callRemote("echo", sent)
        equal = bool(received == sent)
        same_type = type(received) is type(sent)
        all_equal = all_equal and equal and same_type
        values.append(
            {
                "index": index,
                "sent": to_json(sent),
                "received": to_json(received),
                "equal": equal,
                "same_type": same_type,
                "received_type": type(received).__name__,
            }
        )
    shared = yield root.callRemote("echo", sample_values()[-1])
    self_ref = yield root.callRemote("echo", self_referencing_list())
    echo_args = yield root.callRemote("echo_args", 1, "two", x=3)
    return {
        "values": values,
        "all_equal": all_equal,
        "shared_reference_preserved": isinstance(shared, list)
        and len(shared) == 2
        and shared[0] is shared[1],
        "self_ref": {
            "is_list": isinstance(self_ref, list),
            "len": len(self_ref) if isinstance(self_ref, list) else None,
            "is_self": isinstance(self_ref, list) and len(self_ref) == 1 and self_ref[0] is self_ref,
        },
        "echo_args": to_json(echo_args),
    }


@defer.inlineCallbacks
def scenario_errors(root):
    calls = {
        "fail_value": ("fail_value", "boom"),
        "fail_pb": ("fail_pb", "expected"),
        "nosuch": ("nosuch",),
    }
    report = {}
    for key, call in calls.items():
        entry = {}
        # 1) inlineCallbacks form: the CopiedFailure is thrown into the
        #    generator as a pb.RemoteError(type, value, traceback).
        try:
            result = yield root.callRemote(*call)
        except Exception as exc:
            entry["exception_class"] = reflect.qual(type(exc))
            entry["exception_args"] = to_json(exc.args)
            entry["is_remote_error"] = isinstance(exc, pb.RemoteError)
            entry["remote_type"] = _text(getattr(exc, "remoteType", None))
        else:
            entry["exception_class"] = None
            entry["unexpected_result"] = to_json(result)
            entry["is_remote_error"] = False
        # 2) addErrback form: inspect the Failure itself.
        outcome, value = yield _capture_failure(root.callRemote(*call))
        if outcome == "fail":
            entry.update(failure_info(value))
            entry["is_copied_failure"] = isinstance(value, pb.CopiedFailure)
            entry["check_value_error_str"] = to_json(value.check("builtins.ValueError"))
            entry["check_value_error_class"] = value.check(ValueError) is not None
            entry["check_pb_error"] = value.check(pb.Error) is not None
        else:
            entry.update({"type": None, "message": None, "parents": []})
            entry["errback_unexpected_result"] = to_json(value)
        report[key] = entry
    # pbfast serves a control channel under the name "pbfast", to pbfast peers only.
    control = root.broker.remoteForName("pbfast")
    outcome, value = yield _capture_failure(control.callRemote("cancel", [1]))
    report["pbfast_object"] = (
        failure_info(value) if outcome == "fail" else {"unexpected_result": to_json(value)}
    )
    return report


@defer.inlineCallbacks
def scenario_references(root):
    report = {}
    c = yield root.callRemote("child")
    first = yield c.callRemote("inc")
    second = yield c.callRemote("inc")
    report["inc"] = [first, second]
    report["value"] = yield c.callRemote("value")

    same = yield root.callRemote("same_child")
    same_again = yield root.callRemote("same_child")
    report["same_child_proxy_identical"] = same is same_again
    del same_again
    report["is_same_child"] = yield root.callRemote("is_same_child", same)

    report["call_back"] = yield root.callRemote("call_back", Local(), "hello", "pbfast")
    report["call_back_add"] = yield root.callRemote("call_back", Local(), "add", 2, 3)

    loc = Local()
    back = yield root.callRemote("identity", loc)
    report["identity_is_same"] = back is loc
    # Stock Twisted servers decref an argument before sending the answer, so
    # against them the returned "local" luid is already gone (back is None).
    report["identity_result"] = to_json(back)
    del back, loc

    report["tables_before"] = to_json((yield root.callRemote("tables")))
    report["client_tables_before"] = _broker_tables(root.broker)

    del c, same
    gc.collect()
    yield task.deferLater(reactor, 0.2, lambda: None)
    yield root.callRemote("gc")
    report["tables_after"] = to_json((yield root.callRemote("tables")))
    # The server's decrefs for our Local objects have arrived by now.
    gc.collect()
    report["client_tables_after"] = _broker_tables(root.broker)
    return report


@defer.inlineCallbacks
def scenario_slow_parallel(root):
    """Many calls in flight at once (``echo``), then calls answered in reverse order
    (``slow(x, seconds)``, which the server must answer with ``x`` after ``seconds``)."""
    count = 50
    results = yield defer.DeferredList([root.callRemote("echo", i) for i in range(count)], consumeErrors=True)
    values = [value if ok else {"failure": failure_info(value)} for ok, value in results]
    # Calls answered in another order than they were made: the first call
    # sleeps longest, so the answers come back last-call-first and each must
    # still reach its own Deferred.
    slow_count = 8
    finished = []

    def record(value):
        finished.append(value)
        return value

    slow_results = yield defer.DeferredList(
        [root.callRemote("slow", i, 0.03 * (slow_count - i)).addCallback(record) for i in range(slow_count)],
        consumeErrors=True,
    )
    slow_values = [value if ok else {"failure": failure_info(value)} for ok, value in slow_results]
    return {
        "results": to_json(values),
        "all_ok": all(ok for ok, _ in results),
        "in_order": values == list(range(count)),
        "slow_results": to_json(slow_values),
        "slow_all_ok": all(ok for ok, _ in slow_results),
        "slow_in_order": slow_values == list(range(slow_count)),
        "slow_completion_order": to_json(finished),
    }


@defer.inlineCallbacks
def scenario_paging(root):
    """Twisted's ``getAllPages`` on the server's ``pages(collector, size)``, which must page
    ``paged_bytes(size)`` (stock Twisted refuses a single string that large)."""
    pages = yield util.getAllPages(root, "pages", PAGED_SIZE)
    data = b"".join(pages)
    return {
        "pages": len(pages),
        "page_types": sorted({type(page).__name__ for page in pages}),
        "page_sizes": sorted({len(page) for page in pages}),
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "equal": data == paged_bytes(PAGED_SIZE),
    }


# The client's dialect choice: banana string "pb" (length 2, STRING 0x82).
_CHOOSE_PB = b"\x02\x82pb"
# banana for ["version", 5]: list of 2, vocab 19 ("version"), int 5.
_BAD_VERSION = bytes([0x02, 0x80, 0x13, 0x87, 0x05, 0x81])


class _RawProbe(protocol.Protocol):
    """Speaks just enough banana to offer a PB version the server must reject."""

    def __init__(self, closed):
        self.received = bytearray()
        self.sent = False
        self.closed = closed  # fires True when the server hangs up

    def dataReceived(self, data):
        self.received += data
        if not self.sent:  # the first chunk carries the server's dialect offer
            self.sent = True
            self.transport.write(_CHOOSE_PB + _BAD_VERSION)

    def connectionLost(self, reason):
        if not self.closed.called:
            self.closed.callback(True)


class _RawProbeFactory(protocol.ClientFactory):
    def __init__(self):
        self.closed = defer.Deferred()
        self.probe = None

    def buildProtocol(self, addr):
        self.probe = _RawProbe(self.closed)
        return self.probe

    def clientConnectionFailed(self, connector, reason):
        if not self.closed.called:
            self.closed.errback(reason)


@defer.inlineCallbacks
def scenario_bad_version(port):
    factory = _RawProbeFactory()
    reactor.connectTCP(HOST, port, factory)

    def give_up():
        if not factory.closed.called:
            factory.closed.callback(False)

    timer = reactor.callLater(BAD_VERSION_WAIT, give_up)
    closed_by_server = yield factory.closed
    if timer.active():
        timer.cancel()
    probe = factory.probe
    if not closed_by_server and probe is not None:
        probe.transport.loseConnection()
    return {
        "closed": closed_by_server,
        "sent_choice_and_version": probe is not None and probe.sent,
        "received_hex": bytes(probe.received).hex() if probe is not None else "",
    }


SCENARIOS = {
    "basic": scenario_basic,
    "errors": scenario_errors,
    "references": scenario_references,
    "slow_parallel": scenario_slow_parallel,
    "paging": scenario_paging,
    "bad_version": None,  # raw TCP, no PBClientFactory
}


@defer.inlineCallbacks
def _run_scenario(port, scenario):
    if scenario == "bad_version":
        return (yield scenario_bad_version(port))
    factory = pb.PBClientFactory()
    reactor.connectTCP(HOST, port, factory)
    root = yield factory.getRootObject()
    try:
        return (yield SCENARIOS[scenario](root))
    finally:
        factory.disconnect()


def run_client(port, scenario):
    if scenario not in SCENARIOS:
        _emit("ERROR", f"unknown scenario {scenario!r}; known: {sorted(SCENARIOS)}")
        return 1
    state = {"done": False, "exit_code": 1}

    def finish(tag, payload, exit_code):
        # Exactly one RESULT/ERROR line, whatever fires first (scenario or
        # timeout); later events (e.g. connection lost on shutdown) are ignored.
        if state["done"]:
            return
        state["done"] = True
        state["exit_code"] = exit_code
        _emit(tag, payload)
        reactor.stop()

    def succeeded(result):
        finish("RESULT", to_json(result), 0)

    def failed(failure):
        try:
            text = failure.getTraceback()
        except Exception:
            text = failure_info(failure)["message"]
        finish("ERROR", text, 1)

    def start():
        timer = reactor.callLater(
            CLIENT_TIMEOUT,
            finish,
            "ERROR",
            f"scenario {scenario!r} timed out after {CLIENT_TIMEOUT}s",
            1,
        )
        d = _run_scenario(port, scenario)
        d.addCallback(succeeded)
        d.addErrback(failed)
        d.addBoth(lambda _: timer.active() and timer.cancel())

    reactor.callWhenRunning(start)
    reactor.run()
    return state["exit_code"]


# ---------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------


def _configure_logging():
    """Twisted log to stderr if TWISTED_PEER_LOG is set, else discard it.

    Without an explicit choice Twisted prints every logged error (e.g. each
    "Peer will receive following PB traceback") to stderr, which could fill
    an unread stderr pipe and block the peer.
    """
    if os.environ.get("TWISTED_PEER_LOG"):
        observers = [textFileLogObserver(sys.stderr)]
    else:
        observers = [lambda event: None]
    globalLogBeginner.beginLoggingTo(observers, discardBuffer=True, redirectStandardIO=False)


def main(argv):
    _configure_logging()
    if len(argv) == 1 and argv[0] == "server":
        return run_server()
    if len(argv) == 3 and argv[0] == "client":
        try:
            port = int(argv[1])
        except ValueError:
            pass
        else:
            return run_client(port, argv[2])
    sys.stderr.write(
        "usage: twisted_peer.py server\n"
        "       twisted_peer.py client PORT SCENARIO\n"
        f"scenarios: {', '.join(SCENARIOS)}\n"
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
