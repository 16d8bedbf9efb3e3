"""Which traces a process records: new ones by ``VIGIL_TRACE_SAMPLE_RATIO`` capped by ``VIGIL_TRACE_MAX_PER_SECOND``;
those a caller sent sampled (``traceparent`` flag 01) up to ``VIGIL_TRACE_REMOTE_MAX_PER_SECOND``.

The caller's flag is honoured, joining its trace, but only within a budget of its own: were it honoured always, any
caller that marks its requests sampled would lift the cap that protects the trace store. The two budgets are apart,
so callers that sample everything cannot starve this process's own traces, nor the reverse. A caller's unsampled
``traceparent`` is never recorded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind, get_current_span
from opentelemetry.util.types import Attributes

from vigil.settings import Settings

logger = logging.getLogger(__name__)

# The `parent` label of vigil_traces_rate_limited_total: a new trace, or a caller's sampled one.
Parent = Literal["none", "remote"]


class RateLimitedSampler(Sampler):
    """Samples what ``inner`` samples, but at most ``per_second`` traces a second (a token bucket, burst one second).

    Why a cap: what a trace store sharing the serving cores spends per trace, against what the prediction costs, is
    measured in bench/RESULTS.md ("Telemetry overhead"). This keeps every request traced at ordinary loads and bounds
    that cost beyond. :func:`sampler_from_settings` puts one under :class:`ParentBased` for new traces
    (``parent="none"``) and another for callers' sampled ones (``parent="remote"``, ``inner`` always on).
    """

    def __init__(
        self, inner: Sampler, per_second: float, clock: Callable[[], float] = time.monotonic, *,
        parent: Parent = "none",
    ) -> None:
        if per_second <= 0:
            raise ValueError("per_second must be positive")
        self._parent: Parent = parent
        self._inner = inner
        self._per_second = per_second
        self._capacity = max(1.0, per_second)
        self._tokens = self._capacity
        self._clock = clock
        self._refilled_at = clock()
        self._lock = threading.Lock()

    def should_sample(
        self, parent_context: Context | None, trace_id: int, name: str, kind: SpanKind | None = None,
        attributes: Attributes = None, links: Sequence[Link] | None = None, trace_state: Any = None,
    ) -> SamplingResult:
        result = self._inner.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)
        if not result.decision.is_sampled() or self._take_token():
            return result
        _count_rate_limited(self._parent)
        # A caller's tracestate travels on with its unsampled trace, as the SDK's own samplers keep it.
        parent = get_current_span(parent_context).get_span_context()
        return SamplingResult(Decision.DROP, None, trace_state or (parent.trace_state if parent.is_valid else None))

    def _take_token(self) -> bool:
        with self._lock:
            now = self._clock()
            self._tokens = min(self._capacity, self._tokens + (now - self._refilled_at) * self._per_second)
            self._refilled_at = now
            if self._tokens < 1:
                return False
            self._tokens -= 1
            return True

    def get_description(self) -> str:
        return f"RateLimited{{{self._per_second:g}/s,{self._inner.get_description()}}}"


def _count_rate_limited(parent: Parent) -> None:
    # Metrics are a convenience here: a broken metrics set-up must not fail the span start that sampled.
    try:
        from telemetry.metrics import get_metrics

        get_metrics().traces_rate_limited.labels(parent=parent).inc()
    except Exception:
        logger.debug("could not count a rate-limited trace", exc_info=True)


def sampler_from_settings(
    settings: Settings, *, trust_remote_parents: bool = False, clock: Callable[[], float] = time.monotonic
) -> Sampler:
    """The sampler ``settings`` ask for: nothing when tracing is off, else under :class:`ParentBased` the ratio and
    cap for new traces, and the remote cap for callers' sampled ones.

    ``trust_remote_parents``: honour every sampled remote parent, uncapped. Only for a process that Vigil's own API
    worker alone calls (a dependency service): its remote parents are traces the API worker already admitted under
    both caps, and capping them again would cut those traces in two. ``clock`` paces both caps (tests pass a fake).
    """
    if settings.tracing == "off":
        return ALWAYS_OFF
    root: Sampler = TraceIdRatioBased(settings.trace_sample_ratio)
    if settings.trace_max_per_second > 0:
        root = RateLimitedSampler(root, settings.trace_max_per_second, clock)
    remote: Sampler = ALWAYS_ON
    if settings.trace_remote_max_per_second > 0 and not trust_remote_parents:
        remote = RateLimitedSampler(ALWAYS_ON, settings.trace_remote_max_per_second, clock, parent="remote")
    return ParentBased(root, remote_parent_sampled=remote)
