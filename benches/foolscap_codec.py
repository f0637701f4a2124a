"""foolscap message codec: microseconds per message, pbfast against stock foolscap's own slicers
and unslicers (when foolscap is installed).

    python benches/foolscap_codec.py [--seconds 1] [--rounds 5]

Two calls, encoded to bytes and decoded back to a call event: ``add(1)`` (one small int) and
``echo(list)`` with a 20-element list of mixed values. pbfast: ``FoolscapEncoder.call`` and
``FoolscapDecoder.feed``; foolscap: ``CallSlicer`` through a real ``Broker`` writing to memory,
and the same bytes fed to another ``Broker`` (the call is taken where it would be queued, so
neither side runs a method). Build pbfast with ``maturin develop --release`` first.
"""

from __future__ import annotations

import argparse
import statistics
import time

from pbfast import _core

MIXED = [
    0, 1, -5, 2**40, 1.5, -2.25, b"bytes", b"list", "text", "h\xe9llo", "x" * 20,
    None, True, False, (1, 2), [3, 4], {"a": 1, "b": 2}, {5, 6}, frozenset({7}), 12345,
]  # fmt: skip
CASES = [("call add(1)", "add", (1,)), ("call echo(20 mixed values)", "echo", (MIXED,))]


def per_op(fn, seconds: float, rounds: int) -> float:
    """Median microseconds per call of `fn` over `rounds` timed runs."""
    n = 1
    while True:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed > seconds / 10:
            break
        n *= 2
    n = max(1, int(n * (seconds / max(elapsed, 1e-9))))
    results = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        results.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(results)


def pbfast_ops(method, args):
    encoder = _core.FoolscapEncoder()
    decoder = _core.FoolscapDecoder()
    data = encoder.call(1, 1, method, args)
    assert decoder.feed(data)[0][0] == _core.FS_CALL

    def encode():
        encoder.call(1, 1, method, args)

    def decode():
        decoder.feed(data)

    def both():
        decoder.feed(encoder.call(1, 1, method, args))

    return encode, decode, both


def foolscap_ops(method, args):
    from foolscap import broker, call
    from twisted.internet.testing import StringTransport

    class Target:
        def getInterface(self):
            return None

    class Receiver(broker.Broker):
        def getMyReferenceByCLID(self, clid):
            return Target()

        def scheduleCall(self, delivery, ready_deferred):
            self.activeLocalCalls.clear()
            self.last = delivery

    def connected(cls):
        b = cls(None, {"initial-vocab-table-index": 1})
        b.makeConnection(StringTransport())
        return b

    sender, receiver = connected(broker.Broker), connected(Receiver)

    def encode():
        sender.send(call.CallSlicer(1, 1, method, args, {}))
        data = sender.transport.value()
        sender.transport.clear()
        return data

    data = encode()

    def decode():
        receiver.handleData(data)

    def both():
        receiver.handleData(encode())

    decode()
    assert receiver.last.allargs.args == list(args)
    return encode, decode, both


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=5)
    opts = parser.parse_args()
    try:
        import foolscap  # noqa: F401

        systems = [("pbfast", pbfast_ops), ("foolscap", foolscap_ops)]
    except ImportError:
        systems = [("pbfast", pbfast_ops)]
    print(f"pbfast build: {_core.build_profile}\n")
    print("| message | system | encode µs | decode µs | encode+decode µs |")
    print("|---|---|---:|---:|---:|")
    for name, method, args in CASES:
        for system, ops in systems:
            times = [per_op(fn, opts.seconds, opts.rounds) for fn in ops(method, args)]
            print(f"| {name} | {system} | " + " | ".join(f"{t:.2f}" for t in times) + " |")


if __name__ == "__main__":
    main()
