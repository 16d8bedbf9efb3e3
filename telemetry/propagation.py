"""What ties a request together across processes: W3C trace context (a caller's ``traceparent`` in, ours out, the
current trace id) and the request id (a caller's ``x-request-id`` in, the one on the response and the log rows out)."""

from __future__ import annotations

import re
import uuid
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
    """The current trace id as 32 hex digits, or "" when the current span is neither recorded nor sampled (tracing
    off, or a caller's unsampled trace in a process without Vigil's tracing). Under tail sampling a recorded trace has
    its id before the decision to keep it is made."""
    span = trace.get_current_span()
    span_context = span.get_span_context()
    if not (span_context.is_valid and (span.is_recording() or span_context.trace_flags.sampled)):
        return ""
    return format_trace_id(span_context.trace_id)


REQUEST_ID_HEADER = "x-request-id"
# A caller's id is kept when it could not harm a log or a header: short, and letters, digits and `-_.:` only.
_USABLE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def request_id_from(carrier: Mapping[str, str]) -> str:
    """The caller's ``x-request-id`` (REST header or gRPC metadata) when usable, else a new 32-hex-digit id."""
    offered = carrier.get(REQUEST_ID_HEADER)
    if offered is None:
        offered = next((value for key, value in carrier.items() if str(key).lower() == REQUEST_ID_HEADER), None)
    if isinstance(offered, str) and _USABLE_REQUEST_ID.match(offered):
        return offered
    return uuid.uuid4().hex
