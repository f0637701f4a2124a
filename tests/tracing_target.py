"""Run in a subprocess by tests/test_tracing.py (OpenTelemetry's tracer provider is set once per
process): calls on every wire variant with tracing configured, the finished spans printed as
JSON. With ``--off``: calls with OpenTelemetry not configured, and whether it was imported."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pbfast
from wires import VARIANTS, connector

INTEROP = Path(__file__).resolve().with_name("interop")
sys.path.insert(0, str(INTEROP))
from peers import peer_server, peer_tub  # noqa: E402


class Root(pbfast.Referenceable):
    def remote_echo(self, value: Any) -> Any:
        return value

    async def remote_later(self, value: Any) -> Any:
        await asyncio.sleep(0.001)
        return value

    def remote_fail(self) -> None:
        raise ValueError("no")

    async def remote_back(self, caller: pbfast.RemoteReference) -> Any:
        # A call made while running a call: its span is a child of this call's server span.
        return await caller.callRemote("echo", "back")

    def remote_note(self, value: Any) -> None:
        self.noted = value

    def remote_deadline(self) -> float | None:
        return pbfast.current_deadline()

    async def remote_numbers(self, n: int, caller: pbfast.RemoteReference) -> Any:
        # A stream whose generator calls back: that call is a child of the stream's server span.
        yield await caller.callRemote("ping", 0)
        for i in range(1, n):
            yield i

    async def remote_late(self, n: int) -> Any:
        await asyncio.sleep(0)
        return count(n)

    async def remote_broken(self) -> Any:
        yield 1
        raise ValueError("broken")

    async def remote_total(self, items: pbfast.RemoteStream) -> int:
        return sum([item async for item in items])


async def count(n: int) -> Any:
    for i in range(n):
        yield i


class Caller(pbfast.Referenceable):
    def remote_echo(self, value: Any) -> Any:
        return value

    def remote_ping(self, value: Any) -> Any:
        return value


async def calls(variant: str) -> dict[str, Any]:
    root = Root()
    with connector(variant) as connect:
        async with connect(root) as w:
            ref = w.root
            assert await ref.callRemote("echo", 1) == 1
            assert await ref.callRemote("later", 2) == 2
            try:
                await ref.callRemote("fail")
            except pbfast.RemoteError:
                pass
            assert await ref.callRemote("back", Caller()) == "back"
            ref.callRemoteOnly("note", 3)
            async with pbfast.deadline(30):
                left = await ref.callRemote("deadline")
            # Streams: one span each side for the stream, none for its batches or its end.
            assert [x async for x in ref.callRemoteStream("numbers", 3000, Caller())] == list(range(3000))
            assert [x async for x in ref.callRemoteStream("late", 3)] == [0, 1, 2]
            try:
                async for _ in ref.callRemoteStream("broken"):
                    pass
            except pbfast.RemoteError:
                pass
            assert await ref.callRemote("total", pbfast.stream(count(3000))) == sum(range(3000))
            for _ in range(100):
                if getattr(root, "noted", None) == 3:
                    break
                await asyncio.sleep(0.01)
            return {"deadline": left, "tracing": [w.client._tracer is not None, w.server._tracer is not None]}


async def stock_calls() -> list[Any]:
    """Calls (with a deadline, so with options for a pbfast peer) to stock Twisted and foolscap
    peers: they must go as plain calls."""
    results = []
    async with peer_server(INTEROP / "twisted_peer.py") as (_, port):
        async with pbfast.connect(f"tcp:host=127.0.0.1:port={port}") as root, pbfast.deadline(30):
            results.append(await root.callRemote("echo", "twisted"))
    async with peer_tub(INTEROP / "foolscap_peer.py") as (_, furl), pbfast.Tub() as tub:
        root = await tub.getReference(furl)
        async with pbfast.deadline(30):
            results.append(await root.callRemote("echo", "foolscap"))
    return results


def spans(exporter: Any) -> list[dict[str, Any]]:
    out = []
    for span in exporter.get_finished_spans():
        out.append(
            {
                "name": span.name,
                "kind": span.kind.name,
                "trace": span.context.trace_id,
                "id": span.context.span_id,
                "parent": span.parent.span_id if span.parent else None,
                "status": span.status.status_code.name,
                "attributes": dict(span.attributes),
            }
        )
    exporter.clear()
    return out


def main() -> None:
    if sys.argv[1:] == ["--off"]:
        results = {v: pbfast.run(calls(v)) for v in VARIANTS}
        imported = sorted(m for m in sys.modules if "opentelemetry" in m)
        print(json.dumps({"results": results, "imported": imported}))
        return
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    report = {}
    for variant in VARIANTS:
        result = pbfast.run(calls(variant))
        report[variant] = {"result": result, "spans": spans(exporter)}
    report["stock"] = {"result": pbfast.run(stock_calls()), "spans": spans(exporter)}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
