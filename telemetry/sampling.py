"""Which traces a process records: ``VIGIL_TRACE_SAMPLE_RATIO``, capped by ``VIGIL_TRACE_MAX_PER_SECOND``.

Both decide only for new traces: the root sampler sits under :class:`ParentBased`, so a caller's sampled
``traceparent`` is always honoured.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import Attributes

from vigil.settings import Settings

logger = logging.getLogger(__name__)


class RateLimitedSampler(Sampler):
    """Samples what ``inner`` samples, but at most ``per_second`` traces a second (a token bucket, burst one second).

    Why a cap: what a trace store sharing the serving cores spends per trace, against what the prediction costs, is
    measured in bench/RESULTS.md ("Telemetry overhead"). This keeps every request traced at ordinary loads and bounds
    that cost beyond. Meant as the root sampler of :class:`ParentBased`, so a caller's sampled ``traceparent`` is
    always honoured.
    """

    def __init__(self, inner: Sampler, per_second: float, clock: Callable[[], float] = time.monotonic) -> None:
        if per_second <= 0:
            raise ValueError("per_second must be positive")
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
        _count_rate_limited()
        return SamplingResult(Decision.DROP, None, trace_state)

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


def _count_rate_limited() -> None:
    # Metrics are a convenience here: a broken metrics set-up must not fail the span start that sampled.
    try:
        from telemetry.metrics import get_metrics

        get_metrics().traces_rate_limited.inc()
    except Exception:
        logger.debug("could not count a rate-limited trace", exc_info=True)


def sampler_from_settings(settings: Settings) -> Sampler:
    """The sampler ``settings`` ask for: nothing when tracing is off, else the ratio (and cap) under ParentBased."""
    if settings.tracing == "off":
        return ALWAYS_OFF
    root: Sampler = TraceIdRatioBased(settings.trace_sample_ratio)
    if settings.trace_max_per_second > 0:
        root = RateLimitedSampler(root, settings.trace_max_per_second)
    return ParentBased(root)
