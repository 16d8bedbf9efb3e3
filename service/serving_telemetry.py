"""What every served prediction leaves behind: a span, Prometheus series and inference-log rows.

Built once per API worker. REST requests arrive inside BentoML's server span (its middleware honours an incoming
`traceparent`); gRPC requests carry theirs in metadata, so this module opens their server span itself.

Spans say ERROR only for a failure (5xx, an unexpected exception), never for a refusal (4xx): tail sampling
(`telemetry.sampling`) keeps every failed request's trace, and a caller's mistake is not a failure of Vigil's.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, use_span

from service.errors import ApiError
from service.shadow import ShadowJob
from telemetry import semconv
from telemetry.inference_log import InferenceLogWriter
from telemetry.metrics import get_metrics
from telemetry.propagation import extract_context
from telemetry.records import InferenceRecord
from telemetry.sampling import KEEP_NOTICE_SECONDS
from telemetry.tracing import drain_keep_notices, get_tracer, setup_tracing, shutdown_tracing, text_attribute
from vigil.contracts import RagQueryResponse
from vigil.settings import Settings

logger = logging.getLogger(__name__)


def mark_failure(span: Span, error: BaseException) -> None:
    """ERROR status on ``span`` for a failure; a refusal (an ApiError below 500) leaves the status unset."""
    if isinstance(error, ApiError) and error.status < 500:
        return
    span.set_status(Status(StatusCode.ERROR, str(error)[:200]))


@contextmanager
def failures_marked(span: Span) -> Iterator[Span]:
    try:
        yield span
    except Exception as error:
        mark_failure(span, error)
        raise


@contextmanager
def shared_call_spans(tracer: trace.Tracer, parents: Sequence[otel_context.Context], name: str,
                      attributes: Mapping[str, int]) -> Iterator[None]:
    """One span ``name`` in each of ``parents``' traces for a call they share, linked as a star.

    The coalescer sends several requests' texts in one model call; each request's trace shows that call. The first
    request's span is current during the call, so the call carries its traceparent: it links to every other
    request's span (which requests the call served), and each of those links to it (where the call went on). A link
    from every span to every other cost a call of n requests n(n-1) links, the largest single part of the API
    worker's tracing time at concurrency 32 (bench/RESULTS.md, "Closing the gap"); the star costs 2(n-1) and still
    joins any two of them.
    """
    leader = tracer.start_span(name, context=parents[0], attributes=attributes)
    leader_link = [Link(leader.get_span_context())]
    spans = [leader, *(tracer.start_span(name, context=parent, attributes=attributes, links=leader_link)
                       for parent in parents[1:])]
    for span in spans[1:]:
        leader.add_link(span.get_span_context())
    try:
        with use_span(spans[0], end_on_exit=False, record_exception=False, set_status_on_exception=False):
            yield
    except Exception as error:
        for span in spans:
            mark_failure(span, error)
        raise
    finally:
        for span in spans:
            span.end()


async def relay_keep_notices(services: Mapping[str, Callable[[list[str]], Awaitable[object]]],
                             drain: Callable[[], dict[str, list[str]]] = drain_keep_notices) -> None:
    """Forever: tell each service behind the API worker which of its pending traces the API worker kept.

    A service behind the API worker holds its spans of a pending trace until the API worker's root ends
    (`telemetry.sampling`); this carries the decision back for the traces kept at their end (failed, slow), batched
    every KEEP_NOTICE_SECONDS. A lost notice loses that service's part of one trace, never a request: the first
    failure per service is a warning, the rest are logged at debug level.
    """
    warned: set[str] = set()
    while True:
        await asyncio.sleep(KEEP_NOTICE_SECONDS)
        for service, trace_ids in drain().items():
            keep = services.get(service)
            if keep is None:
                continue
            try:
                await keep(trace_ids)
            except Exception as error:
                log = logger.debug if service in warned else logger.warning
                warned.add(service)
                log("could not tell %s to keep %d traces (their spans there are lost): %r", service, len(trace_ids),
                    error)


def route_bentoml_spans_through_global_provider() -> None:
    """Make BentoML's HTTP server spans use the process's global provider, so they share Vigil's exporters.

    BentoML builds its tracing middleware from its own container before the service instance exists; OTel's proxy
    provider forwards to whatever `setup_tracing` installs later. Relies on BentoML's container (1.4 internals).
    """
    from bentoml._internal.configuration.containers import BentoMLContainer

    BentoMLContainer.tracer_provider.set(trace.get_tracer_provider())


def skip_asgi_message_spans() -> None:
    """Have the ASGI tracing middleware BentoML installs open no span per `receive`/`send` message.

    Three spans per prediction that time socket reads and writes. The middleware has the option (`exclude_spans`);
    BentoML 1.4 does not pass it, and imports the class from its module each time it builds an app, so a subclass
    with that default in the module's place is what it builds. `telemetry.exporters` also keeps such spans out of
    the export, for a middleware built before this ran.
    """
    from opentelemetry.instrumentation import asgi

    if getattr(asgi.OpenTelemetryMiddleware, "skips_message_spans", False):
        return

    class OpenTelemetryMiddlewareWithoutMessageSpans(asgi.OpenTelemetryMiddleware):
        skips_message_spans = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("exclude_spans", ["receive", "send"])
            super().__init__(*args, **kwargs)

    asgi.OpenTelemetryMiddleware = OpenTelemetryMiddlewareWithoutMessageSpans  # type: ignore[misc]


# The BentoML name of the RAG service (service/rag_service.py), which holds its spans of pending traces.
RAG_SERVICE_NAME = "vigil-rag"


@dataclass(frozen=True)
class PredictionRecord:
    texts: list[str]
    labels: list[str]
    scores: list[float]
    version: str
    batch_size: int
    latency_ms: float
    precision: str = ""  # of the classifier's graph (float | int8); empty: not reported


class ServingTelemetry:
    def __init__(self, settings: Settings, service_name: str = "vigil") -> None:
        self.settings = settings
        setup_tracing(service_name, settings=settings)
        self.tracer = get_tracer("vigil.service")
        self.metrics = get_metrics()
        self.log = InferenceLogWriter.from_settings(settings) if settings.inference_log else None
        # prometheus_client's labels() builds and looks up its key under a lock on every call; a handful of
        # (model, version, label) children serve every request.
        self._prediction_counters: dict[tuple[str, str, str], Any] = {}

    @contextmanager
    def server_span(self, carrier: Mapping[str, str], protocol: str) -> Iterator[None]:
        """The request's server span: BentoML's middleware opens it for REST; for gRPC it is opened here."""
        if protocol != "grpc":
            yield
            return
        with self.tracer.start_as_current_span(semconv.SPAN_GRPC_MODEL_INFER, context=extract_context(carrier),
                                               kind=SpanKind.SERVER, record_exception=False,
                                               set_status_on_exception=False) as span, failures_marked(span):
            span.set_attribute(semconv.RPC_SYSTEM, "grpc")
            yield

    @contextmanager
    def predict_span(self, carrier: Mapping[str, str], protocol: str, endpoint: str) -> Iterator[Span]:
        """`sentiment.predict` under the request's server span (BentoML's for REST, ours for gRPC)."""
        with self.server_span(carrier, protocol), self._predict(protocol, endpoint) as span:
            yield span

    @staticmethod
    def trace_ids(span: Span) -> tuple[str, str]:
        """(trace id, traceparent) to hand back for ``span``; empty strings when it is not recorded.

        Every recorded request has its trace id (on its log rows too), kept or not: tail sampling decides after the
        answer. The traceparent's flag says whether the trace was kept at its start (01) or is pending (00).
        """
        context = span.get_span_context()
        if not (context.is_valid and (span.is_recording() or context.trace_flags.sampled)):
            return "", ""
        flags = "01" if context.trace_flags.sampled else "00"
        return f"{context.trace_id:032x}", f"00-{context.trace_id:032x}-{context.span_id:016x}-{flags}"

    @contextmanager
    def _predict(self, protocol: str, endpoint: str) -> Iterator[Span]:
        # Attributes given at the start are stored in one go; each set_attribute takes the span's lock again.
        attributes = {semconv.MODEL_NAME: self.settings.sentiment_model_name,
                      semconv.MODEL_ALIAS: self.settings.serve_alias, semconv.PROTOCOL: protocol,
                      semconv.ENDPOINT: endpoint}
        with self.tracer.start_as_current_span(semconv.SPAN_SENTIMENT_PREDICT, attributes=attributes,
                                               record_exception=False, set_status_on_exception=False) as span, \
                failures_marked(span):
            yield span

    @contextmanager
    def rag_span(self, carrier: Mapping[str, str], protocol: str, endpoint: str) -> Iterator[Span]:
        """The API's span around a RAG call; the RAG service's `rag.query` tree hangs below it."""
        with self.server_span(carrier, protocol), self.tracer.start_as_current_span(
                semconv.SPAN_RAG_REQUEST, record_exception=False, set_status_on_exception=False) as span, \
                failures_marked(span):
            span.set_attribute(semconv.ENDPOINT, endpoint)
            span.set_attribute(semconv.DOWNSTREAM_SERVICE, RAG_SERVICE_NAME)
            yield span

    @staticmethod
    def calls_downstream(service: str) -> None:
        """Mark the current span as calling ``service``, whose spans of this trace wait for this process's decision."""
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute(semconv.DOWNSTREAM_SERVICE, service)

    def record_rag(self, span: Span, protocol: str, endpoint: str, request_id: str, question: str,
                   answer: RagQueryResponse, latency_ms: float) -> tuple[str, str]:
        """Token counters and one inference-log row for a RAG answer; returns (trace id, traceparent)."""
        trace_id, traceparent = self.trace_ids(span)
        usage, generator, embedder = answer.usage, answer.generator, answer.model
        labels = {"generator": generator.name, "model": generator.model}
        self.metrics.rag_prompt_tokens.labels(**labels).inc(usage.prompt_tokens)
        self.metrics.rag_completion_tokens.labels(**labels).inc(usage.completion_tokens)
        if span.is_recording():
            span.set_attribute(semconv.REQUEST_ID, request_id)
            span.set_attribute(semconv.GEN_AI_USAGE_INPUT_TOKENS, usage.prompt_tokens)
            span.set_attribute(semconv.GEN_AI_USAGE_OUTPUT_TOKENS, usage.completion_tokens)
        if self.log is not None:
            self.log.log(InferenceRecord(
                request_id=request_id, trace_id=trace_id, endpoint=endpoint,
                protocol="grpc" if protocol == "grpc" else "rest", kind="rag", model_name=embedder.name,
                model_version=embedder.version, input_text=question, latency_ms=latency_ms,
                retrieved_ids=[c.id for c in answer.citations],
                # Cosine similarity, not the rank-fusion score: it is what retrieval-health monitoring compares.
                retrieved_scores=[c.similarity for c in answer.citations],
                prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                total_tokens=usage.total_tokens, generator=generator.name, generator_model=generator.model,
            ))
        return trace_id, traceparent

    def _prediction_counter(self, model: str, version: str, label: str) -> Any:
        key = (model, version, label)
        counter = self._prediction_counters.get(key)
        if counter is None:
            counter = self._prediction_counters[key] = self.metrics.predictions.labels(model=model, version=version,
                                                                                      label=label)
        return counter

    def refused(self, reason: str) -> None:
        self.metrics.requests_rejected.labels(reason=reason).inc()

    def record(self, span: Span, protocol: str, endpoint: str, request_id: str,
               prediction: PredictionRecord) -> tuple[str, str]:
        """Attributes, metrics and one log row per text; returns (trace id, traceparent) for the response."""
        trace_id, traceparent = self.trace_ids(span)
        name = self.settings.sentiment_model_name
        if span.is_recording():
            attributes: dict[str, str | int] = {
                semconv.MODEL_VERSION: prediction.version, semconv.BATCH_SIZE: prediction.batch_size,
                semconv.INPUT_COUNT: len(prediction.texts), semconv.REQUEST_ID: request_id,
            }
            if prediction.precision:
                attributes[semconv.MODEL_PRECISION] = prediction.precision
            for label, count in Counter(prediction.labels).items():
                attributes[semconv.LABEL_COUNTS_PREFIX + label] = count
            if len(prediction.texts) == 1:
                attributes[semconv.INPUT_TEXT] = text_attribute(prediction.texts[0])
            span.set_attributes(attributes)
        for label in prediction.labels:
            self._prediction_counter(name, prediction.version, label).inc()
        if self.log is None:
            return trace_id, traceparent
        for text, label, score in zip(prediction.texts, prediction.labels, prediction.scores, strict=True):
            self.log.log(InferenceRecord(
                request_id=request_id, trace_id=trace_id, endpoint=endpoint,
                protocol="grpc" if protocol == "grpc" else "rest", kind="sentiment", model_name=name,
                model_version=prediction.version, input_text=text, label=label, score=score,
                latency_ms=prediction.latency_ms, role=self.settings.serve_alias,
            ))
        return trace_id, traceparent

    def shadow_rows(self, job: ShadowJob, version: str, outputs: list[Any], latency_ms: float
                    ) -> list[InferenceRecord]:
        """The log rows of one request scored in the shadow (service/shadow.py): its ids, the shadow's answers."""
        return [InferenceRecord(
            request_id=job.request_id, trace_id=job.trace_id, endpoint=job.endpoint,
            protocol="grpc" if job.protocol == "grpc" else "rest", kind="sentiment",
            model_name=self.settings.sentiment_model_name, model_version=version, input_text=text,
            label=str(output["label"]), score=float(output["score"]), latency_ms=latency_ms,
            role=self.settings.shadow_alias, shadow=True,
        ) for text, output in zip(job.inputs, outputs, strict=True)]

    def close(self) -> None:
        if self.log is not None:
            self.log.close(timeout=10.0)
        shutdown_tracing(timeout_seconds=3.0)
