"""OpenTelemetry spans for calls, when the application has configured tracing.

pbfast never imports OpenTelemetry itself: a connection asks `tracer()` once, when it is made,
and traces its calls only if the application has already imported ``opentelemetry.trace`` and
set a tracer provider. Otherwise nothing on a connection changes, so tracing that is not
configured costs nothing per call.

A traced connection makes a client span for each call it sends and a server span for each call
it runs, named after the method, with OpenTelemetry's RPC attributes. Between two pbfast peers
the caller's trace context travels with the call (the ``trace`` call option: the W3C
``traceparent``/``tracestate`` entries of the global propagator), so the server span is the
client span's child. A stream is traced as one call, from its start to its end; the calls it
is made of (its batches, its end) make no spans.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import Callable
from typing import Any

from . import _calls, _core
from .errors import Error

__all__ = ["CARRIER", "INTERNAL", "CallTracer", "SpanEnd", "TRACE", "carrier_in", "checked_carrier", "tracer"]

INSTRUMENTATION = "pbfast"

# The call option that carries the caller's trace context (see docs/extensions.md).
TRACE = "trace"
# Bounds on a received trace context: W3C's traceparent is 55 characters, tracestate at most
# 32 entries of 256.
MAX_ENTRIES = 8
MAX_TEXT = 8192

# The trace context of the peer's call being started now (set from its options), or None.
CARRIER: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("pbfast_trace", default=None)
# Ends a span, with the exception its call or stream failed with (or None).
SpanEnd = Callable[[BaseException | None], None]
# True while pbfast makes calls of its own on references (a stream's batches and its end): those
# make no spans.
INTERNAL: contextvars.ContextVar[bool] = contextvars.ContextVar("pbfast_internal_call", default=False)


_registered = False


def checked_carrier(value: Any) -> dict[str, str]:
    """A received ``trace`` option: the caller's trace context.

    Raises:
        Error: it is not a small dict of strings.
    """
    if (
        type(value) is not dict
        or len(value) > MAX_ENTRIES
        or not all(type(k) is type(v) is str and len(k) + len(v) <= MAX_TEXT for k, v in value.items())
    ):
        raise Error(f"the trace option must be a dict of at most {MAX_ENTRIES} short strings")
    return value


def carrier_in(options: Any) -> dict[str, str] | None:
    """The trace context among the call options `options` a peer sent (a dict; anything else,
    or no ``trace`` entry, is no trace context).

    Raises:
        Error: the ``trace`` entry is malformed.
    """
    if type(options) is not dict or options.get(TRACE) is None:
        return None
    return checked_carrier(options[TRACE])


def _apply_carrier(value: Any) -> Any:
    """The ``trace`` option received with a call: the caller's trace context, checked."""
    token = CARRIER.set(checked_carrier(value))
    return lambda: CARRIER.reset(token)


def tracer(wire: str, peer: str) -> CallTracer | None:
    """The tracer for a new connection of `wire` ("pb" or "tub") to `peer`, or None when the
    application has not configured OpenTelemetry tracing."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return None  # the API's defaults: no provider was set
    global _registered
    if not _registered:
        # Received trace contexts are put where the server span finds them; ours are sent by
        # the traced connection itself (it makes the client span first), so nothing to gather.
        _calls.register_option(TRACE, lambda: None, _apply_carrier)
        _registered = True
    return CallTracer(provider.get_tracer(INSTRUMENTATION, _core.__version__), wire, peer)


class CallTracer:
    """The spans of one connection's calls."""

    __slots__ = ("_tracer", "_attributes", "_trace", "_propagate", "_context")

    def __init__(self, otel_tracer: Any, wire: str, peer: str) -> None:
        from opentelemetry import context, propagate, trace

        self._tracer = otel_tracer
        self._trace, self._propagate, self._context = trace, propagate, context
        host, _, port = peer.rpartition(":")
        self._attributes: dict[str, Any] = {"rpc.system": "pbfast", "pbfast.wire": wire}
        if host and port.isdigit():
            self._attributes.update({"network.peer.address": host, "network.peer.port": int(port)})

    def client_span(self, method: str) -> tuple[Any, dict[str, str]]:
        """Start the span of a call we send; returns it and the trace context to send with the
        call (empty if the propagator adds nothing)."""
        span = self._tracer.start_span(
            method, kind=self._trace.SpanKind.CLIENT, attributes={**self._attributes, "rpc.method": method}
        )
        carrier: dict[str, str] = {}
        self._propagate.inject(carrier, context=self._trace.set_span_in_context(span))
        return span, carrier

    def server_span(self, method: str, carrier: dict[str, str] | None) -> tuple[Any, Any]:
        """Start the span of a call we run, as the child of the caller's span if its trace
        context came with it, and make it current; returns it and the token `finish` needs
        to restore the context."""
        parent = self._propagate.extract(carrier) if carrier else None
        span = self._tracer.start_span(
            method,
            context=parent,
            kind=self._trace.SpanKind.SERVER,
            attributes={**self._attributes, "rpc.method": method},
        )
        token = self._context.attach(self._trace.set_span_in_context(span))
        return span, token

    def detach(self, token: Any) -> None:
        """Restore the context `server_span` (or `attach`) replaced."""
        self._context.detach(token)

    def attach(self, span: Any) -> Any:
        """Make `span` current (in this task's context); returns the token `detach` needs."""
        return self._context.attach(self._trace.set_span_in_context(span))

    def end_with(self, span: Any, future: asyncio.Future[Any]) -> None:
        """End `span` as the call or task `future` ended."""
        if future.cancelled():
            self.end(span, asyncio.CancelledError())
        else:
            self.end(span, future.exception())

    def end(self, span: Any, error: BaseException | None = None) -> None:
        """End `span`, marked as failed if the call ended with `error`."""
        if error is not None:
            span.record_exception(error)
            status = self._trace.Status(self._trace.StatusCode.ERROR, f"{type(error).__name__}: {error}")
            span.set_status(status)
        span.end()
