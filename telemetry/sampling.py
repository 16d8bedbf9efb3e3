"""Which traces are kept: tail-based sampling: every request recorded, every interesting one traced.

Every span is recorded (so its status, attributes and duration exist), and a trace's spans are held in memory until
the process's local root span of that trace ends. Then the trace is kept, whole, when

- the request **failed**: a span has ERROR status (the SDK sets it when an exception leaves a span; Vigil's spans set
  it for 5xx answers, never for a 4xx refusal, which is the caller's mistake), or the root answered HTTP 5xx;
- it was **slow**: the root lasted ``VIGIL_TRACE_SLOW_MS`` or longer (a fixed threshold, not a rolling p99: a p99
  calls 1 % of requests slow whatever the latency, and under overload, when every request is slow, calls none);
- a caller sent it **sampled** (``traceparent`` flag 01) within ``VIGIL_TRACE_REMOTE_MAX_PER_SECOND``;
- it fell in the **uniform sample**: ``VIGIL_TRACE_SAMPLE_RATIO`` of new traces, at most
  ``VIGIL_TRACE_MAX_PER_SECOND`` a second (a token bucket, burst one second, so a person trying requests by hand
  sees every trace);

and otherwise dropped, after being counted in ``vigil_traces_total{decision, reason}``; the request's inference-log
row is written either way. ``VIGIL_TRACE_ALL=true`` keeps every trace. Why: the cost of ingesting each trace into a
trace store sharing the serving cores is measured in bench/RESULTS.md ("Telemetry overhead").

The last two reasons are known when the trace *starts*, the first two only when it ends. :class:`TailSampler` decides
the former at the local root's start and writes it into the trace flags: **01 = kept already** (its spans go straight
to the exporters, nothing is held), **00 = pending** (held until the root ends). The flag travels in every
``traceparent`` Vigil sends, so a service behind the API worker (``trust_remote_parents``: the RAG service) knows:

- flag 01: the API worker keeps this trace; export at once.
- flag 00: pending. The service holds its spans of the trace and keeps them itself when its own part failed or was
  slow (the API worker's root, which waits on it, fails or is slow too, and keeps its part). Otherwise it waits up to
  ``AWAIT_DECISION_SECONDS`` for the API worker's decision: the API worker marks the span that called the service
  (``vigil.downstream.service``), and when it keeps a pending trace at its end it tells that service the trace id
  (:meth:`TailSamplingProcessor.drain_notices`, sent by the API worker in batches; the service calls
  :meth:`TailSamplingProcessor.keep`). A kept trace is so whole across processes in every case; the notice costs one
  call per batch of kept pending traces, and nothing for the dropped majority.

Memory is bounded: at most ``MAX_HELD_SPANS`` spans are held; beyond it, and for a trace whose root has not ended
after ``MAX_TRACE_SECONDS``, the oldest trace is dropped and counted (reason ``overflow``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, Decision, Sampler, SamplingResult, TraceIdRatioBased
from opentelemetry.trace import Link, SpanContext, SpanKind, StatusCode, TraceFlags, format_trace_id, get_current_span
from opentelemetry.util.types import Attributes

from telemetry import semconv
from vigil.settings import Settings

logger = logging.getLogger(__name__)

# What was known at a trace's start (the root span's vigil.sampling.head): kept already, or pending.
KEPT_AT_START = frozenset({"all", "sample", "caller"})
Head = Literal["all", "sample", "caller", "budget", "caller_budget", "unsampled"]
Decided = Literal["kept", "dropped"]

# Spans held while their traces are pending, in one process: ~1 KB each, so ~10 MB. An API worker holds the spans of
# the requests in flight (a handful each), a service behind it those awaiting the API worker's decision.
MAX_HELD_SPANS = 10_000
# A request lasts at most its service's traffic timeout (60 s, RAG 120 s); a root still open after this never ends.
MAX_TRACE_SECONDS = 300.0
# How long a service behind the API worker keeps a pending trace after its own part ended: the API worker's root
# ends right after, and its notices go out every KEEP_NOTICE_SECONDS.
AWAIT_DECISION_SECONDS = 10.0
KEEP_NOTICE_SECONDS = 0.2
# Trace ids remembered after their decision, for spans that end after their root (a cancelled request's model call).
REMEMBERED_DECISIONS = 4 * 4096
# Pending notices kept for a service that does not collect them.
MAX_NOTICES = 10_000


class TokenBucket:
    """At most ``per_second`` takes a second, in bursts of up to one second's worth (at least one)."""

    def __init__(self, per_second: float, clock: Callable[[], float] = time.monotonic) -> None:
        if per_second <= 0:
            raise ValueError("per_second must be positive")
        self.per_second = per_second
        self._capacity = max(1.0, per_second)
        self._tokens = self._capacity
        self._clock = clock
        self._refilled_at = clock()
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            now = self._clock()
            self._tokens = min(self._capacity, self._tokens + (now - self._refilled_at) * self.per_second)
            self._refilled_at = now
            if self._tokens < 1:
                return False
            self._tokens -= 1
            return True


class TailSampler(Sampler):
    """Records every span; at a local root, flags the trace sampled (01) when it is kept already, else pending (00).

    Children in the process follow their local root's flag. The root gets ``vigil.sampling.head`` saying why, which
    :class:`TailSamplingProcessor` reads when the root ends. ``trust_remote_parents``: a service only Vigil's API
    worker calls, whose callers' flags are that worker's decisions (01 kept, 00 pending), not a budget to apply.
    """

    def __init__(
        self, *, ratio: float = 1.0, per_second: float = 0.0, caller_per_second: float = 0.0, keep_all: bool = False,
        trust_remote_parents: bool = False, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ratio = ratio
        self._ratio_bound = TraceIdRatioBased.get_bound_for_rate(ratio)
        self._uniform = TokenBucket(per_second, clock) if per_second > 0 else None
        self._caller = TokenBucket(caller_per_second, clock) if caller_per_second > 0 else None
        self._keep_all = keep_all
        self._trust_remote_parents = trust_remote_parents

    def should_sample(
        self, parent_context: Context | None, trace_id: int, name: str, kind: SpanKind | None = None,
        attributes: Attributes = None, links: Sequence[Link] | None = None, trace_state: Any = None,
    ) -> SamplingResult:
        parent = get_current_span(parent_context).get_span_context()
        # A caller's tracestate travels on with its trace, as the SDK's own samplers keep it.
        state = trace_state or (parent.trace_state if parent.is_valid else None)
        if parent.is_valid and not parent.is_remote:
            sampled = parent.trace_flags.sampled
            return SamplingResult(Decision.RECORD_AND_SAMPLE if sampled else Decision.RECORD_ONLY, attributes, state)
        head = self._head(parent, trace_id)
        decision = Decision.RECORD_AND_SAMPLE if head in KEPT_AT_START else Decision.RECORD_ONLY
        return SamplingResult(decision, {**(attributes or {}), semconv.SAMPLING_HEAD: head}, state)

    def _head(self, parent: SpanContext, trace_id: int) -> Head:
        if self._keep_all:
            return "all"
        if parent.is_valid:
            if not parent.trace_flags.sampled:
                return "unsampled"  # a caller's "no": kept only when the request failed or was slow
            if self._trust_remote_parents:
                return "caller"
            if self._caller is None or self._caller.take():
                return "caller"
            _count_rate_limited("remote")
            return "caller_budget"
        if self._trust_remote_parents:
            return "unsampled"  # a service's own calls (its state, the notices), not requests
        if trace_id & 0xFFFFFFFFFFFFFFFF >= self._ratio_bound:
            return "unsampled"
        if self._uniform is None or self._uniform.take():
            return "sample"
        _count_rate_limited("none")
        return "budget"

    def get_description(self) -> str:
        budget = f"{self._uniform.per_second:g}/s" if self._uniform else "unlimited"
        caller = f"{self._caller.per_second:g}/s" if self._caller else "unlimited"
        return (f"TailSampler{{all={self._keep_all},ratio={self._ratio:g},uniform={budget},caller={caller},"
                f"trust_remote_parents={self._trust_remote_parents}}}")


def sampler_from_settings(
    settings: Settings, *, trust_remote_parents: bool = False, clock: Callable[[], float] = time.monotonic
) -> Sampler:
    """The sampler ``settings`` ask for: nothing recorded when tracing is off, else :class:`TailSampler`."""
    if settings.tracing == "off":
        return ALWAYS_OFF
    return TailSampler(
        ratio=settings.trace_sample_ratio, per_second=settings.trace_max_per_second,
        caller_per_second=settings.trace_remote_max_per_second, keep_all=settings.trace_all,
        trust_remote_parents=trust_remote_parents, clock=clock,
    )


# --- the processor ------------------------------------------------------------------------------------------------


@dataclass
class _Pending:
    deadline: float
    spans: list[ReadableSpan] = field(default_factory=list)


def is_local_root(span: ReadableSpan) -> bool:
    """The first span of its trace in this process: no parent, or a parent in another process."""
    return span.parent is None or span.parent.is_remote


def failed(spans: Iterable[ReadableSpan], root: ReadableSpan) -> bool:
    """A span of the trace has ERROR status, or the root answered 5xx (a 4xx refusal is not a failure)."""
    if any(span.status.status_code is StatusCode.ERROR for span in spans):
        return True
    attributes = root.attributes or {}
    status = attributes.get(semconv.HTTP_RESPONSE_STATUS_CODE, attributes.get(semconv.HTTP_STATUS_CODE))
    return isinstance(status, int) and status >= 500


def _count_rate_limited(parent: str) -> None:
    try:
        from telemetry.metrics import get_metrics

        get_metrics().traces_rate_limited.labels(parent=parent).inc()
    except Exception:
        logger.debug("could not count a rate-limited trace", exc_info=True)


# (decision, reason) -> its child of vigil_traces_total: counted once per request, on the thread that ends its root
# span, where prometheus_client's labels() (a key built and looked up under a lock) would run every time.
_trace_counters: dict[tuple[str, str], Any] = {}


def count_trace(decision: Decided, reason: str) -> None:
    """``vigil_traces_total{decision, reason}``; a broken metrics set-up never fails the span that ended."""
    try:
        counter = _trace_counters.get((decision, reason))
        if counter is None:
            from telemetry.metrics import get_metrics

            counter = _trace_counters[(decision, reason)] = get_metrics().traces.labels(decision=decision,
                                                                                        reason=reason)
        counter.inc()
    except Exception:
        logger.debug("could not count a trace decision", exc_info=True)


def as_sampled(span: ReadableSpan) -> ReadableSpan:
    """``span`` with the sampled flag, as exporters and batch processors expect of what they are given."""
    context = span.context
    if context is None or context.trace_flags.sampled:
        return span
    sampled = SpanContext(context.trace_id, context.span_id, context.is_remote, TraceFlags(TraceFlags.SAMPLED),
                          context.trace_state)
    return ReadableSpan(
        name=span.name, context=sampled, parent=span.parent, resource=span.resource, attributes=span.attributes,
        events=span.events, links=span.links, kind=span.kind, status=span.status, start_time=span.start_time,
        end_time=span.end_time, instrumentation_scope=span.instrumentation_scope,
    )


class TailSamplingProcessor(SpanProcessor):
    """Holds the spans of pending traces until their local root ends, then hands kept traces to ``exporters``.

    Spans of traces kept at their start pass through at once. ``defer_to_caller``: a service behind the API worker,
    which keeps a pending trace's spans after its root ended until the API worker's notice (:meth:`keep`) or
    ``await_seconds``, and leaves the counting of decisions to the API worker (it counts overflows only).
    """

    def __init__(
        self, exporters: Sequence[SpanProcessor], *, slow_ms: float, defer_to_caller: bool = False,
        max_spans: int = MAX_HELD_SPANS, max_trace_seconds: float = MAX_TRACE_SECONDS,
        await_seconds: float = AWAIT_DECISION_SECONDS, clock: Callable[[], float] = time.monotonic,
        count: Callable[[Decided, str], None] = count_trace,
    ) -> None:
        self._exporters = list(exporters)
        self._slow_ns = int(slow_ms * 1_000_000)
        self._defer_to_caller = defer_to_caller
        self._max_spans = max_spans
        self._max_trace_seconds = max_trace_seconds
        self._await_seconds = await_seconds
        self._clock = clock
        self._count = count
        self._lock = threading.Lock()
        # trace id -> its held spans, in order of their deadlines: open traces, and (defer_to_caller) awaiting ones.
        self._open: OrderedDict[int, _Pending] = OrderedDict()
        self._awaiting: OrderedDict[int, _Pending] = OrderedDict()
        self._held = 0
        self._decided: OrderedDict[int, bool] = OrderedDict()  # trace id -> kept, for spans ending after their root
        self._notices: dict[str, list[str]] = {}  # downstream service -> trace ids it should keep

    # --- SpanProcessor -------------------------------------------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is None:
            return
        if context.trace_flags.sampled:  # kept at its start
            self._export([span])
            if is_local_root(span) and not self._defer_to_caller:
                self._count("kept", self._reason([span], span) or self._head(span))
            return
        kept: list[ReadableSpan] = []
        counted: list[tuple[Decided, str]] = []
        with self._lock:
            counted += self._expire(self._clock())
            decided = self._decided.get(context.trace_id)
            if decided is not None:
                if decided:
                    kept.append(span)
            else:
                kept, counted = self._hold(span, counted)
        if kept:
            self._export(kept)
        for decision, reason in counted:
            self._count(decision, reason)

    def shutdown(self) -> None:
        # The exporters are Vigil's batch processors, stopped by telemetry.tracing within its bound; pending traces
        # were not kept, and are let go.
        with self._lock:
            self._open.clear()
            self._awaiting.clear()
            self._held = 0

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return all(exporter.force_flush(timeout_millis) for exporter in self._exporters)

    # --- the decision travelling between processes -----------------------------------------------------------

    def keep(self, trace_ids: Iterable[str]) -> int:
        """The caller kept these traces (32 hex digits each): export what is held of them, and what ends later.
        Returns how many were held here."""
        released: list[ReadableSpan] = []
        found = 0
        with self._lock:
            for trace_id in trace_ids:
                try:
                    key = int(trace_id, 16)
                except ValueError:
                    continue
                pending = self._awaiting.pop(key, None) or self._open.pop(key, None)
                if pending is not None:
                    found += 1
                    self._held -= len(pending.spans)
                    released += pending.spans
                self._remember(key, kept=True)
        if released:
            self._export(released)
        return found

    def drain_notices(self) -> dict[str, list[str]]:
        """Trace ids each downstream service should keep (pending traces kept here at their end), since last asked."""
        with self._lock:
            notices, self._notices = self._notices, {}
        return notices

    @property
    def held_spans(self) -> int:
        return self._held

    # --- inside the lock -------------------------------------------------------------------------------------

    def _hold(
        self, span: ReadableSpan, counted: list[tuple[Decided, str]]
    ) -> tuple[list[ReadableSpan], list[tuple[Decided, str]]]:
        trace_id = span.context.trace_id
        now = self._clock()
        pending = self._open.get(trace_id) or self._awaiting.get(trace_id)
        if pending is None:
            pending = self._open[trace_id] = _Pending(now + self._max_trace_seconds)
        pending.spans.append(span)
        self._held += 1
        counted += self._overflow()
        evicted = trace_id not in self._open and trace_id not in self._awaiting
        if evicted or not is_local_root(span):
            return [], counted
        reason = self._reason(pending.spans, span)
        self._open.pop(trace_id, None)
        self._awaiting.pop(trace_id, None)
        if reason is None and self._defer_to_caller and span.parent is not None:
            # Our part ended; the caller's root decides soon. Ours is kept now only if it failed or was slow.
            pending.deadline = now + self._await_seconds
            self._awaiting[trace_id] = pending
            return [], counted
        self._held -= len(pending.spans)
        self._remember(trace_id, kept=reason is not None)
        if not self._defer_to_caller:
            counted.append(("kept", reason) if reason else ("dropped", self._head(span)))
        if reason is None:
            return [], counted
        self._notify(pending.spans, format_trace_id(trace_id))
        return pending.spans, counted

    def _reason(self, spans: Sequence[ReadableSpan], root: ReadableSpan) -> str | None:
        """Why a trace is kept whatever was known at its start: "error", "slow", or None."""
        if failed(spans, root):
            return "error"
        if root.end_time is not None and root.start_time is not None and root.end_time - root.start_time >= \
                self._slow_ns:
            return "slow"
        return None

    @staticmethod
    def _head(root: ReadableSpan) -> str:
        head = (root.attributes or {}).get(semconv.SAMPLING_HEAD)
        return head if isinstance(head, str) else "unsampled"

    def _notify(self, spans: Sequence[ReadableSpan], trace_id: str) -> None:
        marked = ((span.attributes or {}).get(semconv.DOWNSTREAM_SERVICE) for span in spans)
        for service in {value for value in marked if isinstance(value, str)}:
            waiting = self._notices.setdefault(service, [])
            if len(waiting) < MAX_NOTICES:
                waiting.append(trace_id)

    def _remember(self, trace_id: int, *, kept: bool) -> None:
        self._decided[trace_id] = kept
        self._decided.move_to_end(trace_id)
        while len(self._decided) > REMEMBERED_DECISIONS:
            self._decided.popitem(last=False)

    def _drop_oldest(self, queue: OrderedDict[int, _Pending]) -> None:
        trace_id, pending = queue.popitem(last=False)
        self._held -= len(pending.spans)
        self._remember(trace_id, kept=False)

    def _expire(self, now: float) -> list[tuple[Decided, str]]:
        counted: list[tuple[Decided, str]] = []
        while self._awaiting and next(iter(self._awaiting.values())).deadline <= now:
            self._drop_oldest(self._awaiting)  # the caller did not keep it: counted there
        while self._open and next(iter(self._open.values())).deadline <= now:
            self._drop_oldest(self._open)
            counted.append(("dropped", "overflow"))
        return counted

    def _overflow(self) -> list[tuple[Decided, str]]:
        counted: list[tuple[Decided, str]] = []
        while self._held > self._max_spans and self._awaiting:
            self._drop_oldest(self._awaiting)
        while self._held > self._max_spans and self._open:
            self._drop_oldest(self._open)
            counted.append(("dropped", "overflow"))
        return counted

    def _export(self, spans: Iterable[ReadableSpan]) -> None:
        for span in spans:
            ready = as_sampled(span)
            for exporter in self._exporters:
                try:
                    exporter.on_end(ready)
                except Exception:
                    logger.debug("a span processor failed to take a span", exc_info=True)
