"""W3C trace context across process boundaries: a caller's ``traceparent`` in, ours out, the current trace id."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import format_trace_id


def extract_context(carrier: Mapping[str, str]) -> Context:
    """The remote parent named by a W3C ``traceparent`` in REST headers or gRPC metadata (keys in any case)."""
    lowered = {str(key).lower(): value for key, value in carrier.items() if isinstance(value, str)}
    return propagate.extract(lowered)


def inject_traceparent(
    carrier: MutableMapping[str, str], context: Context | None = None
) -> MutableMapping[str, str]:
    """Write ``traceparent`` (and ``tracestate``) of the current or given context into ``carrier``."""
    propagate.inject(carrier, context=context)
    return carrier


def current_trace_id() -> str:
    """The current trace id as 32 hex digits, or "" when the current span is not sampled or tracing is off."""
    span_context = trace.get_current_span().get_span_context()
    if not (span_context.is_valid and span_context.trace_flags.sampled):
        return ""
    return format_trace_id(span_context.trace_id)
