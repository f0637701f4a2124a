"""Tub-to-Tub RPC over TLS: two pbfast Tubs against two stock foolscap Tubs.

    python benches/tub.py [--seconds 2] [--rounds 3] [--connections 20] [--only pbfast,foolscap]
                          [--pin same|split|none] [--dicts | --bulk] [--json [PATH]]

For each system, a server Tub runs in its own process and publishes an object with a FURL; a
client Tub in another process gets a reference to it and measures the sequential latency of
``echo(1)`` (one call at a time: median and p99), the pipelined throughput with exactly 100 calls
outstanding (calls per second), and then the connection setup of fresh client Tubs: from
``getReference(furl)`` on a new connection to the first ``echo`` answer. Prints a Markdown report
with the ratios pbfast/foolscap and the targets; see benches/README.md for what each number means.

The measurement loops are the ones of ``rpc.py`` (imported from it), so the figures here and there
are comparable. Only the standard library and the systems measured are used; foolscap is optional.

With ``--dicts``, as in ``rpc.py``, the pbfast Tub alone echoes the 1,000 small dicts of
``serialization.py`` (as foolscap values) instead of ``1``, pipelined with 8 calls outstanding; no
sequential and no connection setup measurement then. With ``--bulk``, likewise, the pbfast Tub
alone echoes a 1 MiB byte string, 4 calls outstanding (``rpc.py --bulk`` measures the raw uvloop
echoes, over TCP and TLS, to compare with; ``compare.py`` runs both).

The same file is also the servers and clients it starts (internal):

    python benches/tub.py --serve SYSTEM                   # prints "FURL f", stops on stdin EOF
    python benches/tub.py --client SYSTEM --furl F ...     # one JSON object (to --out)
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# `python benches/tub.py` puts benches/ on sys.path already; importing this file from elsewhere
# (a test) needs it too.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rpc import (  # noqa: E402
    CpuClock,
    Result,
    add_cpu,
    busy_note,
    check_common,
    common_parser,
    cpu_per_call,
    cpu_totals,
    debug_warning,
    describe_call,
    describe_mode,
    describe_pin,
    echo_argument,
    exit_on_stdin_eof,
    fmt_cpu,
    fmt_mb,
    fmt_rate,
    fmt_ratio,
    fmt_target,
    fmt_us,
    machine_environment,
    mb_per_second,
    measure_asyncio,
    measure_twisted,
    mode_title,
    per_call_us,
    pin_args,
    placement,
    preflight,
    round_line,
    run_internal,
    run_reactor,
    stop_server,
    write_json,
)
from rpc import ratios as rpc_ratios  # noqa: E402
from rpc import unavailable as rpc_unavailable  # noqa: E402
from targets import for_script  # noqa: E402

PBFAST, FOOLSCAP = "pbfast", "foolscap"
SYSTEMS = (PBFAST, FOOLSCAP)
TITLES = {PBFAST: "pbfast Tub", FOOLSCAP: "foolscap Tub"}
CONNECTIONS = 20
HOST = "127.0.0.1"

# (label, key in the JSON, numerator, denominator, measure, comparison, target), as in rpc.py:
# the project's targets (benches/targets.py) between the two Tubs.
TARGETS = for_script({"tub": PBFAST, "foolscap": FOOLSCAP})
BULK_TARGETS = for_script({"tub": PBFAST, "foolscap": FOOLSCAP}, bulk=True)


# ============================================================================================
# Servers (each in its own process: `--serve SYSTEM`)


def announce(furl: str) -> None:
    print(f"FURL {furl}", flush=True)


def serve_pbfast() -> None:
    import pbfast

    class Echo(pbfast.Referenceable):
        def remote_echo(self, x: Any) -> Any:
            return x

    async def main() -> None:
        async with pbfast.Tub() as tub:
            listener = await tub.listenOn(f"tcp:0:interface={HOST}")
            tub.setLocation(f"tcp:{HOST}:{listener.port}")
            announce(tub.registerReference(Echo()))
            await asyncio.Event().wait()

    exit_on_stdin_eof()
    pbfast.run(main())


def serve_foolscap() -> None:
    from foolscap.api import Referenceable, Tub
    from twisted.internet import defer, endpoints, reactor

    class Echo(Referenceable):
        def remote_echo(self, x: Any) -> Any:
            return x

    class PortRecorder:
        """A server endpoint that tells the port it bound (foolscap's `Listener.getPortnum` is
        deprecated, and a pre-allocated port could be taken before we listen)."""

        def __init__(self) -> None:
            self._endpoint = endpoints.serverFromString(reactor, f"tcp:0:interface={HOST}")
            self.port = defer.Deferred()

        def listen(self, factory: Any) -> defer.Deferred:
            def listening(listening_port: Any) -> Any:
                self.port.callback(listening_port.getHost().port)
                return listening_port

            return self._endpoint.listen(factory).addCallback(listening)

    from twisted.internet.interfaces import IStreamServerEndpoint
    from zope.interface import classImplements

    classImplements(PortRecorder, IStreamServerEndpoint)

    @defer.inlineCallbacks
    def main() -> Any:
        tub = Tub()
        tub.startService()
        recorder = PortRecorder()
        tub.listenOn(recorder)
        port = yield recorder.port
        tub.setLocation(f"tcp:{HOST}:{port}")
        announce(tub.registerReference(Echo()))

    def failed(failure: Any) -> None:
        print(failure.getTraceback(), file=sys.stderr, flush=True)
        os._exit(1)

    exit_on_stdin_eof()
    reactor.callWhenRunning(lambda: main().addErrback(failed))
    reactor.run()


SERVERS = {PBFAST: serve_pbfast, FOOLSCAP: serve_foolscap}


# ============================================================================================
# Clients (each in its own process: `--client SYSTEM --furl F ...`)


class SetupTimer:
    """Times each fresh connection and adds up the CPU both processes spent in the timed parts
    only (the untimed identity generation between them is left out)."""

    def __init__(self, clock: CpuClock) -> None:
        self._clock = clock
        self.samples_ns: list[int] = []
        self.client_cpu_s = 0.0
        self.server_cpu_s: float | None = 0.0
        self.bad = 0
        self._start: tuple | None = None

    def start(self) -> None:
        self._start = self._clock.snapshot()

    def stop(self, value: Any) -> None:
        end, start = self._clock.snapshot(), self._start
        self.samples_ns.append(end[0] - start[0])
        self.client_cpu_s += end[1] - start[1]
        if self.server_cpu_s is None or start[2] is None or end[2] is None:
            self.server_cpu_s = None
        else:
            self.server_cpu_s += end[2] - start[2]
        if value != 1:
            self.bad += 1

    def result(self) -> dict[str, Any]:
        return {
            "samples_ns": self.samples_ns,
            "calls": len(self.samples_ns),
            "client_cpu_s": self.client_cpu_s,
            "server_cpu_s": self.server_cpu_s,
        }


def client_pbfast(args: argparse.Namespace) -> dict[str, Any]:
    import pbfast

    async def main() -> dict[str, Any]:
        value = echo_argument(args)
        async with pbfast.Tub() as tub:
            ref = await tub.getReference(args.furl)
            outcome = await measure_asyncio(functools.partial(ref.callRemote, "echo", value), value, args)
            outcome["tls"] = tls_pbfast(ref)
        if args.dicts or args.bulk:
            outcome["setup"] = None
            return outcome

        timer = SetupTimer(CpuClock(args.server_pid))
        for _ in range(args.connections):
            fresh = pbfast.Tub()  # its RSA key is made here, before the timer starts
            timer.start()
            ref = await fresh.getReference(args.furl)
            value = await ref.callRemote("echo", 1)
            timer.stop(value)
            del ref
            await fresh.stopService()
        outcome["setup"] = timer.result()
        outcome["bad_replies"] += timer.bad
        return outcome

    return pbfast.run(main())


def tls_pbfast(ref: Any) -> str | None:
    """The negotiated TLS version and cipher suite, for the report (private attributes: only
    what a bench may peek at)."""
    try:
        session = ref.broker._session
        return f"{session.protocol_version} {session.cipher_suite}"
    except AttributeError:
        return None


def client_foolscap(args: argparse.Namespace) -> dict[str, Any]:
    """Stock foolscap on Twisted's default reactor, measured with rpc.py's Deferred loops."""
    from foolscap.api import Tub
    from twisted.internet import defer

    @defer.inlineCallbacks
    def main() -> Any:
        tub = Tub()
        tub.startService()
        ref = yield tub.getReference(args.furl)
        outcome = yield measure_twisted(ref, 1, args)
        outcome["tls"] = tls_foolscap(ref)
        del ref
        yield tub.stopService()

        timer = SetupTimer(CpuClock(args.server_pid))
        for _ in range(args.connections):
            fresh = Tub()  # its RSA key is made here, before the timer starts
            fresh.startService()
            timer.start()
            ref = yield fresh.getReference(args.furl)
            value = yield ref.callRemote("echo", 1)
            timer.stop(value)
            del ref
            yield fresh.stopService()
        outcome["setup"] = timer.result()
        outcome["bad_replies"] += timer.bad
        return outcome

    return run_reactor(main)


def tls_foolscap(ref: Any) -> str | None:
    try:
        connection = ref.tracker.broker.transport.getHandle()
        return f"{connection.get_protocol_version_name()} {connection.get_cipher_name()}"
    except AttributeError:
        return None


CLIENTS = {PBFAST: client_pbfast, FOOLSCAP: client_foolscap}


# ============================================================================================
# The bench: start the processes, collect the results


@dataclass
class TubResult(Result):
    tls: str | None = None
    with_setup: bool = True  # False with --dicts: no connection setup measurement
    setup_ns: list[int] = field(default_factory=list)
    # summed over rounds as `cpu_totals`, the count being setups
    setup_cpu: list[Any] = field(default_factory=cpu_totals)

    @property
    def ok(self) -> bool:
        return super().ok and (bool(self.setup_ns) or not self.with_setup)

    def setup_ms(self) -> float | None:
        return statistics.median(self.setup_ns) / 1e6 if self.setup_ns else None

    def measure(self, name: str) -> float | None:
        return self.setup_ms() if name == "setup" else super().measure(name)


def versions() -> dict[str, str | None]:
    import pbfast

    out: dict[str, str | None] = {PBFAST: pbfast.__version__}
    try:
        import foolscap

        out[FOOLSCAP] = foolscap.__version__
    except ImportError:
        out[FOOLSCAP] = None
    return out


def library_versions() -> dict[str, str | None]:
    """Versions of what the two systems stand on (None: not installed)."""
    out: dict[str, str | None] = {}
    for name, module, attribute in (
        ("uvloop", "uvloop", "__version__"),
        ("twisted", "twisted", "__version__"),
        ("pyopenssl", "OpenSSL", "__version__"),
        ("cryptography", "cryptography", "__version__"),
    ):
        try:
            out[name] = getattr(__import__(module), attribute)
        except ImportError:
            out[name] = None
    try:
        from OpenSSL import SSL

        out["openssl"] = SSL.SSLeay_version(SSL.SSLEAY_VERSION).decode()
    except ImportError:
        out["openssl"] = None
    return out


def start_server(system: str, cpu: int | None) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve", system, *pin_args(cpu)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    if not line.startswith("FURL "):
        stop_server(proc)
        raise RuntimeError(f"the {system} server did not start (it printed {line!r})")
    return proc, line.split()[1]


def run_client(
    system: str,
    furl: str,
    server_pid: int,
    budget: float,
    connections: int,
    args: argparse.Namespace,
    cpu: int | None,
) -> dict:
    command = [
        sys.executable, os.path.abspath(__file__), "--client", system, "--furl", furl,
        "--seconds", repr(budget), "--warmup", repr(args.warmup), "--outstanding", str(args.outstanding),
        "--connections", str(connections), "--server-pid", str(server_pid), *pin_args(cpu),
        *(["--dicts"] if args.dicts else []), *(["--bulk"] if args.bulk else []),
    ]  # fmt: skip
    # Generous: an RSA-2048 key per fresh Tub takes up to a few hundred ms on a slow machine.
    timeout = 60 + 10 * (2 * budget + args.warmup) + 5 * connections
    with tempfile.TemporaryDirectory(prefix="pbfast-tub-") as tmp:
        out = os.path.join(tmp, "result.json")
        done = subprocess.run([*command, "--out", out], stdin=subprocess.DEVNULL, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"the {system} client failed (exit status {done.returncode})")
        with open(out, encoding="utf-8") as f:
            return json.load(f)


def split_connections(total: int, rounds: int) -> list[int]:
    """`total` fresh connections spread over the rounds, at least one per round."""
    return [max(1, total // rounds + (r < total % rounds)) for r in range(rounds)]


def measure(results: list[TubResult], args: argparse.Namespace, rounds: Iterable[int] | None = None) -> None:
    """`--rounds` rounds; in each, every system in turn gets a fresh server and client process,
    --seconds/--rounds of each measurement and its share of the fresh connections, the starting
    system rotating between rounds. `rounds`: which of the rounds to run now (default all)."""
    budget = args.seconds / args.rounds
    per_round = split_connections(args.connections, args.rounds)
    runnable = [r for r in results if r.unavailable is None]
    if not runnable:
        return
    server_cpu, client_cpu = placement(args.pin)
    for rnd in range(args.rounds) if rounds is None else rounds:
        order = runnable[rnd % len(runnable) :] + runnable[: rnd % len(runnable)]
        for res in order:
            proc, furl = start_server(res.system, server_cpu)
            try:
                out = run_client(res.system, furl, proc.pid, budget, per_round[rnd], args, client_cpu)
            finally:
                stop_server(proc)
            pipe, seq, setup = out["pipelined"], out["sequential"], out["setup"]
            res.runtime, res.tls = out["runtime"], out["tls"]
            res.bad_replies += out["bad_replies"]
            res.rates.append(pipe["calls"] / pipe["elapsed_s"])
            res.pipe_calls += pipe["calls"]
            add_cpu(res.pipe_cpu, pipe)
            if seq is not None:
                res.samples_ns.extend(seq["samples_ns"])
                res.seq_calls += seq["calls"]
                add_cpu(res.seq_cpu, seq)
            line = round_line(rnd, args, TITLES[res.system] + mode_title(args), res.rates[-1], seq)
            if setup is not None:
                res.setup_ns.extend(setup["samples_ns"])
                add_cpu(res.setup_cpu, setup)
                line += f", setup median {statistics.median(setup['samples_ns']) / 1e6:.2f} ms"
            print(line, file=sys.stderr)
    for res in runnable:
        if res.bad_replies:
            raise AssertionError(f"{res.system}: {res.bad_replies} calls did not echo their argument")


# --------------------------------------------------------------------------------------------
# Report


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}" if value < 10 else f"{value:.1f}"


def per_setup_ms(total: list[Any], index: int) -> float | None:
    us = per_call_us(total, index)
    return None if us is None else us / 1e3


def ratios(results: list[TubResult], args: argparse.Namespace) -> list[dict[str, Any]]:
    return rpc_ratios(results, BULK_TARGETS if args.bulk else TARGETS)


def environment() -> dict[str, Any]:
    return {
        **machine_environment(),
        "foolscap_version": versions()[FOOLSCAP],
        "libraries": library_versions(),
    }


def report(results: list[TubResult], env: dict[str, Any], args: argparse.Namespace) -> str:
    lines = ["# Tub benchmark", ""]
    if env["pbfast_build_profile"] != "release":
        lines += [debug_warning(), ""]
    libs = env["libraries"]
    cpus = f"{env['cpu_count']}" + (
        f" ({env['cpus_usable']} usable)" if env["cpus_usable"] not in (None, env["cpu_count"]) else ""
    )
    runtimes = ", ".join(f"{TITLES[r.system]} on `{r.runtime}`" for r in results if r.ok)
    tls = ", ".join(f"{TITLES[r.system]} `{r.tls}`" for r in results if r.ok and r.tls)
    setups = sum(split_connections(args.connections, args.rounds))
    lines += [
        f"- Python {env['python']} ({env['python_implementation']})",
        f"- pbfast {env['pbfast_version']}, `pbfast._core.build_profile` = `{env['pbfast_build_profile']}`; "
        f"uvloop {libs['uvloop'] or 'not installed'}, cryptography {libs['cryptography'] or 'not installed'}",
        f"- foolscap {env['foolscap_version'] or 'not installed'}, "
        f"Twisted {libs['twisted'] or 'not installed'}, "
        f"pyOpenSSL {libs['pyopenssl'] or 'not installed'} ({libs['openssl'] or 'no OpenSSL'})",
        f"- Event loops: {runtimes}",
        f"- TLS negotiated: {tls or '–'}; pbfast's AES-GCM for TLS 1.3 records: {env['pbfast_tls_aes_gcm']}",
        f"- CPUs: {cpus}{busy_note(env.get('cpu_busy_before_percent'))}",
        f"- Platform: {env['platform']}",
        f"- Call: {describe_call(args)} on an object published with `registerReference`, Tub to Tub "
        f"over TLS on {HOST}, server and client Tubs in separate processes",
        f"- Timing: {args.seconds:g} s per system per measurement in {args.rounds} alternating rounds "
        f"(a fresh server and client each round); warm-up {args.warmup:g} s; "
        f"pipelined with {args.outstanding} calls outstanding",
        f"- Connection setup: not measured with --{'bulk' if args.bulk else 'dicts'}"
        if args.dicts or args.bulk
        else f"- Connection setup: {setups} fresh client Tubs per system, each timed from "
        "`getReference(furl)` to the first `echo` answer; their RSA-2048 identities are made before "
        "the timer starts",
        f"- CPU placement (`--pin {args.pin}`): {describe_pin(args.pin)}",
        "",
        "| system | version | seq median µs | seq p99 µs | pipelined calls/s | MB/s each way "
        "| throughput spread | setup median ms | setup min–max ms | seq calls | pipelined calls | setups |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        if not r.ok:
            lines.append(f"| {TITLES[r.system]} | {r.unavailable or 'not run'} |" + " – |" * 10)
            continue
        mb = fmt_mb(mb_per_second(r.throughput())) if args.bulk else "–"
        setup_range = (
            f"{fmt_ms(min(r.setup_ns) / 1e6)}–{fmt_ms(max(r.setup_ns) / 1e6)}" if r.setup_ns else "–"
        )
        lines.append(
            f"| {TITLES[r.system]} | {r.version} | {fmt_us(r.median_us())} | {fmt_us(r.p99_us())} | "
            f"{fmt_rate(r.throughput())} | {mb} | ±{r.spread():.0f}% | {fmt_ms(r.setup_ms())} | "
            f"{setup_range} | {r.seq_calls:,} | {r.pipe_calls:,} | {len(r.setup_ns)} |"
        )
    lines += ["", "| ratio | value | target | result |", "|---|--:|--:|---|"]
    for t in ratios(results, args):
        lines.append(
            f"| {t['label']} | {fmt_ratio(t['ratio'])} | {fmt_target(t['comparison'], t['target'])} "
            f"| {t['verdict'] or '–'} |"
        )
    lines += [
        "",
        "CPU time of the client and the server process, per call (µs; in brackets, the part spent in the "
        "kernel) and per connection setup (ms):",
        "",
        "| system | pipelined client µs | pipelined server µs | sequential client µs | sequential server µs "
        "| setup client ms | setup server ms |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        if r.ok:
            calls = [fmt_cpu(total, side) for total in (r.pipe_cpu, r.seq_cpu) for side in (0, 1)]
            setup = [per_setup_ms(r.setup_cpu, 0), per_setup_ms(r.setup_cpu, 1)]
            cells = calls + [fmt_ms(c) for c in setup]
            lines.append(f"| {TITLES[r.system]} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def results_json(results: list[TubResult], env: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {
        "benchmark": "tub",
        "call": describe_mode(args),
        "environment": env,
        "settings": {
            "seconds": args.seconds,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "outstanding": args.outstanding,
            "connections": 0
            if args.dicts or args.bulk
            else sum(split_connections(args.connections, args.rounds)),
            "dicts": args.dicts,
            "bulk": args.bulk,
            "pin": args.pin,
            "placement": describe_pin(args.pin),
        },
        "systems": {},
        "ratios": {},
    }
    for r in results:
        if not r.ok:
            out["systems"][r.system] = {"unavailable": r.unavailable or "not run"}
            continue
        out["systems"][r.system] = {
            "version": r.version,
            "runtime": r.runtime,
            "tls": r.tls,
            "sequential": {
                "median_us": r.median_us(),
                "p99_us": r.p99_us(),
                "calls": r.seq_calls,
                **cpu_per_call(r.seq_cpu),
            },
            "pipelined": {
                "calls_per_second_median": r.throughput(),
                "calls_per_second_rounds": r.rates,
                "mb_per_second_median": mb_per_second(r.throughput()) if args.bulk else None,
                "calls": r.pipe_calls,
                **cpu_per_call(r.pipe_cpu),
            },
            "setup": {
                "median_ms": r.setup_ms(),
                "samples_ms": [ns / 1e6 for ns in r.setup_ns],
                "connections": len(r.setup_ns),
                "client_cpu_ms_per_setup": per_setup_ms(r.setup_cpu, 0),
                "server_cpu_ms_per_setup": per_setup_ms(r.setup_cpu, 1),
            }
            if r.with_setup
            else None,
        }
    for t in ratios(results, args):
        out["ratios"][t["key"]] = {k: t[k] for k in ("ratio", "comparison", "target", "verdict")}
    return out


def prepare(args: argparse.Namespace, only: list[str]) -> list[TubResult]:
    """A result for each system in `only`; those that cannot run are kept, marked unavailable."""
    have = versions()
    return [
        TubResult(
            s,
            have[s] or "",
            unavailable=rpc_unavailable(s, have[s], args),
            with_setup=not (args.dicts or args.bulk),
        )
        for s in SYSTEMS
        if s in only
    ]


def run(args: argparse.Namespace, only: list[str]) -> tuple[list[TubResult], dict[str, Any]]:
    """Measure the systems in `only`: the results and the environment, for `report` and
    `results_json`."""
    env = environment()
    preflight(env)
    results = prepare(args, only)
    started = time.monotonic()
    measure(results, args)
    print(f"  done in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return results, env


def main(argv: list[str] | None = None) -> int:
    parser = common_parser(SYSTEMS, __doc__)
    parser.add_argument(
        "--connections",
        type=int,
        default=CONNECTIONS,
        help=f"fresh client Tubs per system for the connection setup, spread over the rounds "
        f"(at least one per round; default: {CONNECTIONS})",
    )
    parser.add_argument("--furl", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    only = check_common(parser, args, SYSTEMS)
    if args.connections < 1:
        parser.error("--connections must be >= 1")
    if run_internal(args, SERVERS, CLIENTS):
        return 0

    results, env = run(args, only)
    data = results_json(results, env, args)
    if args.json == "-":
        print(json.dumps(data, indent=2))
    else:
        print(report(results, env, args), end="")
    if args.json and args.json != "-":
        write_json(args.json, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
