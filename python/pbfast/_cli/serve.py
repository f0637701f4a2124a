"""``pbfast serve``: serve an object on the PB wire or in a Tub until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from .. import endpoints, metrics
from ..cred import Portal
from ..pb import run as run_loop
from ..pb import serve
from ..referenceable import Referenceable
from ..tub import Tub
from .common import EXIT_USAGE, CommandError, describe, load_object, parse_arguments, parse_duration
from .service import TestService
from .workers import supervise, worker_count

__all__ = ["add_parser", "run", "DEFAULT_ENDPOINT"]

#: Twisted PB's customary port, on loopback only unless asked otherwise.
DEFAULT_ENDPOINT = "tcp:port=8787:interface=127.0.0.1"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "serve",
        help="serve an object on the PB wire (an endpoint) or in a Tub (a FURL)",
        description="Serve an object until interrupted (Ctrl-C or SIGTERM: new calls are refused, "
        "running ones get --grace to finish and send their replies, then the rest are cut "
        "off and the command exits with status 0). Without --tub, on "
        "Twisted PB's wire: every connection gets the object as its root, and the client endpoint "
        "to call it is printed. With --tub, in a Tub (foolscap's wire, over TLS): the object's "
        "FURL is printed. The default object is a test service with echo(value), "
        "sleep(seconds, value), payload(size) and fail(message).",
    )
    parser.add_argument(
        "endpoint",
        metavar="ENDPOINT",
        nargs="?",
        default=DEFAULT_ENDPOINT,
        help=f"where to listen, in Twisted's endpoint syntax (default {DEFAULT_ENDPOINT}; "
        "port=0 picks a free port)",
    )
    parser.add_argument(
        "--object",
        metavar="MODULE:ATTR",
        help="the object to serve: a pbfast.Referenceable (or pbfast.Portal), or a class or "
        "function that makes one when called with no arguments (default: the test service)",
    )
    parser.add_argument("--tub", action="store_true", help="serve in a Tub and print a FURL")
    parser.add_argument(
        "--cert-file",
        metavar="FILE",
        type=Path,
        help="(--tub) the Tub's certificate, created if missing, so the TubID survives restarts",
    )
    parser.add_argument(
        "--location",
        metavar="HINTS",
        help="(--tub) connection hints for the FURL, comma-separated, like tcp:example.org:8787 "
        "(default: the listening address, or every address of this host if it listens on all)",
    )
    parser.add_argument("--name", help="(--tub) the object's name in its FURL (default: 160 random bits)")
    parser.add_argument(
        "--furl-file",
        metavar="FILE",
        type=Path,
        help="(--tub) write the FURL there (and reuse the name a FURL already there has)",
    )
    parser.add_argument(
        "-o",
        "--option",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        help="a connection option, as a Python literal, e.g. max_in_flight=256, "
        "handshake_timeout=5.0 or (--tub) negotiationTimeout=20 (repeat for more; see the "
        "README's limits)",
    )
    parser.add_argument(
        "--grace",
        metavar="DURATION",
        default="10s",
        help="on SIGTERM or SIGINT, how long running calls may take to finish, like 10s or 500ms "
        "(default 10s)",
    )
    parser.add_argument(
        "--metrics",
        metavar="ENDPOINT",
        help="count calls, their durations, bytes and connections (see pbfast.metrics) and serve "
        "them in Prometheus' text format at /metrics over HTTP on this server endpoint, like "
        "tcp:9464 (needs prometheus-client: pip install 'pbfast[metrics]')",
    )
    parser.add_argument(
        "--unsafe-tracebacks",
        action="store_true",
        help="send tracebacks of failed calls to callers (they show file paths and code)",
    )
    parser.add_argument(
        "--workers",
        metavar="N",
        help="run N server processes (auto: one per CPU) sharing the port with SO_REUSEPORT, "
        "the kernel spreading connections among them (on Linux; a tcp, tcp6 or ssl endpoint "
        "with its port given). A worker that dies is restarted, after a back-off that grows "
        "while it keeps dying; SIGTERM or SIGINT stops them all with --grace. With --tub every "
        "worker serves the same FURL (--cert-file keeps it across restarts of the command)",
    )
    # Set by --workers on the processes it starts: share the port, and stop when the
    # supervisor goes away (its end of our stdin closes).
    parser.add_argument("--as-worker", action="store_true", help=argparse.SUPPRESS)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    tub_only = [flag for flag in ("cert_file", "location", "name", "furl_file") if getattr(args, flag)]
    if tub_only and not args.tub:
        raise CommandError(f"--{tub_only[0].replace('_', '-')} needs --tub", EXIT_USAGE)
    args.grace = _grace(args.grace)
    args.options = _options(args.option)
    if args.metrics is not None:
        _check_metrics(args)
    if args.workers is not None and not args.as_worker:
        return supervise(args, worker_count(args.workers))
    obj = load_object(args.object, (Referenceable, Portal)) if args.object else TestService()
    return run_loop(_with_metrics(_serve_tub(obj, args) if args.tub else _serve_pb(obj, args), args.metrics))


def _check_metrics(args: argparse.Namespace) -> None:
    """``--metrics``: an endpoint, prometheus-client, and one process to count in."""
    if args.workers is not None:
        raise CommandError(
            "--metrics cannot be combined with --workers: each worker would count only its own "
            "connections, and one endpoint cannot serve them all",
            EXIT_USAGE,
        )
    try:
        endpoints.parse_server(args.metrics)
    except ValueError as e:
        raise CommandError(f"--metrics: {e}", EXIT_USAGE) from None
    try:
        import prometheus_client  # noqa: F401
    except ModuleNotFoundError:
        raise CommandError(
            "--metrics needs prometheus-client: pip install 'pbfast[metrics]'", EXIT_USAGE
        ) from None


async def _with_metrics(serving: Coroutine[Any, Any, int], endpoint: str | None) -> int:
    """Run `serving`, counting calls and serving the metrics at `endpoint` meanwhile (if any)."""
    if endpoint is None:
        return await serving
    from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

    # pbfast's metrics, and the process's own (CPU, memory, file descriptors, collections).
    registry = CollectorRegistry(auto_describe=True)
    for collector in (ProcessCollector, PlatformCollector, GCCollector):
        collector(registry=registry)
    metrics.register(registry)
    metrics.enable()
    try:
        listener = await metrics.serve(endpoint, registry=registry)
    except OSError as e:
        serving.close()
        raise CommandError(f"--metrics: {describe(e)}") from None
    try:
        print(f"metrics at: {_metrics_url(listener.address)}", flush=True)
        return await serving
    finally:
        listener.close()


def _metrics_url(address: Any) -> str:
    if isinstance(address, tuple):
        host = address[0]
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"
        return f"http://{_host_hint(host)}:{address[1]}/metrics"
    return f"unix:{address} (GET /metrics)"


async def _serve_pb(obj: Any, args: argparse.Namespace) -> int:
    options = dict(args.options)
    if args.unsafe_tracebacks:
        options["unsafeTracebacks"] = True
    endpoints.parse_server(args.endpoint)  # a bad endpoint is not a bad option
    try:
        server = await serve(obj, args.endpoint, reuse_port=args.as_worker, **options)
    except (TypeError, ValueError) as e:
        raise CommandError(str(e), EXIT_USAGE) from None
    try:
        print(f"serving {obj!r} on the PB wire", flush=True)
        print(f"call it at: {_client_endpoint(server.address)}", flush=True)
        await _until_stopped(args.as_worker)
    finally:
        await server.shutdown(args.grace)
    return 0


async def _serve_tub(obj: Any, args: argparse.Namespace) -> int:
    if isinstance(obj, Portal):
        raise CommandError("a Portal serves PB logins; a Tub cannot serve it", EXIT_USAGE)
    tub = Tub(certFile=str(args.cert_file) if args.cert_file else None)
    if args.unsafe_tracebacks:
        tub.setOption("unsafeTracebacks", True)
    for name, value in args.options.items():
        try:
            tub.setOption(name, value)
        except (TypeError, ValueError) as e:
            raise CommandError(str(e), EXIT_USAGE) from None
    try:
        listener = await tub.listenOn(args.endpoint, reuse_port=args.as_worker)
        if args.location:
            tub.setLocation(*(hint.strip() for hint in args.location.split(",") if hint.strip()))
        elif isinstance(listener.address, tuple) and listener.address[0] not in ("0.0.0.0", "::"):
            tub.setLocation(f"tcp:{_host_hint(listener.address[0])}:{listener.port}")
        else:
            await tub.setLocationAutomatically()
        furl = tub.registerReference(obj, args.name, furlFile=args.furl_file)
        print(f"serving {obj!r} in Tub {tub.tubID}", flush=True)
        print(furl, flush=True)
        await _until_stopped(args.as_worker)
    finally:
        await tub.stopService(args.grace)
    return 0


def _options(texts: list[str]) -> dict[str, Any]:
    """``--option`` values: ``NAME=literal`` each."""
    for text in texts:
        name, sep, _ = text.partition("=")
        if not sep or not name.isidentifier():
            raise CommandError(f"--option takes NAME=VALUE, not {text!r}", EXIT_USAGE)
    _, options = parse_arguments(texts)
    return options


def _grace(text: str) -> float:
    """``--grace``, checked here rather than by argparse (whose errors come with the usage)."""
    try:
        return parse_duration(text)
    except ValueError as e:
        raise CommandError(f"--grace: {e}", EXIT_USAGE) from None


def _client_endpoint(address: Any) -> str:
    if isinstance(address, tuple):
        host = address[0]
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"
        kind = "tcp6" if ":" in host else "tcp"
        host = host.replace(":", "\\:")
        return f"{kind}:host={host}:port={address[1]}"
    return f"unix:path={address}"


def _host_hint(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def _until_stopped(as_worker: bool = False) -> None:
    """Wait for SIGINT or SIGTERM (or Ctrl-C where signals cannot be handled by the loop). The
    handlers stay: a second signal during the shutdown's grace period does not interrupt it
    (the grace period bounds it). A worker also stops when its supervisor is gone: the
    supervisor holds the other end of the worker's stdin, which the kernel closes however the
    supervisor ends."""
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stopped.set)
    if as_worker:
        _stop_when_closed(sys.stdin.fileno(), stopped)
    await stopped.wait()
    if not as_worker:  # the supervisor says it once for all of them
        print("stopping", file=sys.stderr, flush=True)


def _stop_when_closed(fd: int, stopped: asyncio.Event) -> None:
    """Set `stopped` at the end of file on `fd` (what is written to it is ignored)."""
    loop = asyncio.get_running_loop()

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            stopped.set()

    loop.add_reader(fd, readable)
