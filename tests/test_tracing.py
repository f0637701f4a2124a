"""OpenTelemetry tracing of calls (`pbfast._tracing`), on every wire variant: a client span and a
server span per call, the trace context carried between pbfast peers, client spans only toward
stock peers, and nothing imported or changed when tracing is not configured. The calls run in
a subprocess (tests/tracing_target.py): a tracer provider is set once per process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pbfast
import pytest
from pbfast import _tracing
from wires import VARIANTS

TARGET = Path(__file__).resolve().with_name("tracing_target.py")
METHODS = ("echo", "later", "fail", "back", "note", "deadline", "numbers", "ping", "late", "broken", "total")
FAILING = ("fail", "broken")


def target(*args: str) -> dict[str, Any]:
    path = os.pathsep.join([str(TARGET.parent), os.environ.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, str(TARGET), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": path},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_spans_per_call_and_the_trace_context_between_pbfast_peers() -> None:
    report = target()
    for variant in VARIANTS:
        got = report[variant]
        assert got["result"]["tracing"] == [True, True], variant
        spans = got["spans"]
        by_id = {s["id"]: s for s in spans}
        # One client and one server span per call (the call made back to the caller included),
        # with OpenTelemetry's RPC attributes.
        for method in METHODS:
            kinds = sorted(s["kind"] for s in spans if s["name"] == method)
            want = ["CLIENT", "CLIENT", "SERVER", "SERVER"] if method == "echo" else ["CLIENT", "SERVER"]
            assert kinds == want, (variant, method, kinds)
        for span in spans:
            assert span["attributes"]["rpc.system"] == "pbfast"
            assert span["attributes"]["rpc.method"] == span["name"]
            assert span["attributes"]["pbfast.wire"] == {"pb": "pb", "tub": "foolscap"}[variant.split("-")[0]]
            if span["kind"] == "SERVER":
                # The caller's span is the parent: its context came with the call.
                parent = by_id[span["parent"]]
                assert parent["kind"] == "CLIENT"
                assert (parent["name"], parent["trace"]) == (span["name"], span["trace"])
        # A failed call, or stream, is an error on both sides.
        assert {s["status"] for s in spans if s["name"] in FAILING} == {"ERROR"}
        assert {s["status"] for s in spans if s["name"] not in FAILING} == {"UNSET"}
        # A stream is one call: its batches, end and start make no spans; the call its generator
        # makes is a child of the stream's server span.
        assert set(METHODS) == {s["name"] for s in spans}, (variant, sorted({s["name"] for s in spans}))
        [numbers_server] = [s for s in spans if s["name"] == "numbers" and s["kind"] == "SERVER"]
        [ping] = [s for s in spans if s["name"] == "ping" and s["kind"] == "CLIENT"]
        assert ping["parent"] == numbers_server["id"] and ping["trace"] == numbers_server["trace"]
        # The call the server made while running "back" belongs to the same trace, as its child.
        [back_server] = [s for s in spans if s["name"] == "back" and s["kind"] == "SERVER"]
        [nested] = [s for s in spans if s["kind"] == "CLIENT" and s["parent"] == back_server["id"]]
        assert nested["name"] == "echo" and nested["trace"] == back_server["trace"]
        # The trace context and the deadline travel together.
        assert 29 < got["result"]["deadline"] <= 30
    # Stock Twisted and foolscap peers get plain calls (they answer them); only our client spans.
    stock = report["stock"]
    assert stock["result"] == ["twisted", "foolscap"]
    assert [(s["name"], s["kind"], s["attributes"]["pbfast.wire"]) for s in stock["spans"]] == [
        ("echo", "CLIENT", "pb"),
        ("echo", "CLIENT", "foolscap"),
    ]


def test_tracing_not_configured_imports_nothing_and_changes_nothing() -> None:
    report = target("--off")
    assert report["imported"] == []
    for variant in VARIANTS:
        assert report["results"][variant]["tracing"] == [False, False]


def test_the_trace_context_among_received_options() -> None:
    """What a traced producer reads from the options sent with a stream (docs/extensions.md):
    the ``trace`` entry, checked; other entries and other values are no trace context."""
    carrier = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    assert _tracing.carrier_in({"trace": carrier, "deadline": 3.0}) == carrier
    for options in (None, {}, {"deadline": 3.0}, ["trace"], {"trace": None}):
        assert _tracing.carrier_in(options) is None
    for bad in ("text", {"a": 1}, {str(i): "x" for i in range(20)}, {"a": "x" * 9000}):
        with pytest.raises(pbfast.Error, match="the trace option"):
            _tracing.carrier_in({"trace": bad})
