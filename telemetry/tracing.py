"""OpenTelemetry for every Vigil process: one tracer provider, exporters chosen by settings, bounded shutdown.

:func:`setup_tracing` is the one entry point; the rest are helpers request code uses. Exporters by
``VIGIL_TRACING``: ``otlp`` sends OTLP/HTTP protobuf to ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``,
``OTEL_EXPORTER_OTLP_ENDPOINT`` (+ ``/v1/traces``), ``VIGIL_OTLP_ENDPOINT``, or by default the MLflow server's
``/v1/traces`` with the ``x-mlflow-experiment-id`` of ``VIGIL_TRACES_EXPERIMENT``; ``console`` prints spans;
``off`` records nothing. With ``LANGSMITH_API_KEY`` set the same spans also go to LangSmith's OTLP endpoint.

Telemetry never blocks or fails a request: spans end into a bounded in-memory queue per exporter (a full queue
drops and counts), export runs on background threads with bounded timeouts, failures are counted and logged,
and :func:`shutdown_tracing` returns within its bound even when an endpoint is down.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import threading
import time
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, fields
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind, format_trace_id
from opentelemetry.util.types import Attributes
from pydantic import BaseModel

from telemetry import semconv
from vigil.settings import Settings, get_settings

logger = logging.getLogger(__name__)

EXPORTER_MLFLOW = "mlflow"
EXPORTER_OTLP = "otlp"
EXPORTER_CONSOLE = "console"
EXPORTER_LANGSMITH = "langsmith"

MLFLOW_EXPERIMENT_HEADER = "x-mlflow-experiment-id"
# MLflow's REST client retries for minutes; start-up must not wait on an absent server that long.
MLFLOW_LOOKUP_TIMEOUT_SECONDS = 2.0
# The SDK's default export batch; it must not exceed the queue.
MAX_EXPORT_BATCH_SIZE = 512
TEXT_HASH_PREFIX = "sha256:"


@dataclass
class ExporterStatus:
    """What one exporter is doing, for readiness details; counters move on export threads."""

    name: str
    endpoint: str
    active: bool = True
    detail: str = ""
    export_failures: int = 0
    spans_dropped: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count_failure(self) -> None:
        with self._lock:
            self.export_failures += 1
        _count_metric("span_export_failures", self.name, 1)

    def count_dropped(self, count: int) -> None:
        with self._lock:
            self.spans_dropped += count
        _count_metric("spans_dropped", self.name, count)

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}


def _count_metric(which: str, exporter: str, amount: int) -> None:
    # Metrics are a convenience here: a broken metrics set-up must not break the export thread.
    try:
        from telemetry.metrics import get_metrics

        getattr(get_metrics(), which).labels(exporter=exporter).inc(amount)
    except Exception:
        logger.debug("could not count %s for %s", which, exporter, exc_info=True)


class _GuardedExporter(SpanExporter):
    """Counts failed exports and never lets an exporter's exception reach the SDK's worker."""

    def __init__(self, inner: SpanExporter, status: ExporterStatus) -> None:
        self._inner = inner
        self._status = status
        self._warned = False
        self._shutdown_once = threading.Lock()
        self._is_shut_down = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._inner.export(spans)
        except Exception:
            logger.debug("%s exporter raised", self._status.name, exc_info=True)
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            self._status.count_failure()
            if not self._warned:
                # One warning per exporter; the failure counter tells the rest of the story.
                self._warned = True
                logger.warning(
                    "span export to %s (%s) failed; further failures are only counted "
                    "(vigil_span_export_failures_total)",
                    self._status.name, self._status.endpoint,
                )
        return result

    def shutdown(self) -> None:
        # Called by the batch processor and, on a timed-out shutdown, by Vigil to stop retry back-off early.
        with self._shutdown_once:
            if self._is_shut_down:
                return
            self._is_shut_down = True
        try:
            self._inner.shutdown()
        except Exception:
            logger.debug("%s exporter failed to shut down", self._status.name, exc_info=True)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        try:
            return bool(self._inner.force_flush(timeout_millis))
        except Exception:
            return False


class _DropCountingMetrics:
    """Wraps the SDK's batch-processor metrics hook: it is the one place that knows a span was dropped."""

    def __init__(self, inner: Any, status: ExporterStatus) -> None:
        self._inner = inner
        self._status = status

    def register_queue_size(self, get_queue_size: Any) -> None:
        self._inner.register_queue_size(get_queue_size)

    def drop_items(self, count: int, error_type: str = "queue_full") -> None:
        self._status.count_dropped(count)
        self._inner.drop_items(count, error_type)

    def finish_items(self, count: int) -> None:
        self._inner.finish_items(count)


# The ASGI middleware BentoML installs opens a span for each `receive` and `send` message of a request (three per
# prediction); they time socket reads and writes, not Vigil, and were 3 of every 7 spans the trace backend ingested.
ASGI_MESSAGE_SPAN_SUFFIXES = (" http receive", " http send")


class _CountingBatchSpanProcessor(BatchSpanProcessor):
    def __init__(self, exporter: _GuardedExporter, status: ExporterStatus, settings: Settings) -> None:
        super().__init__(
            exporter,
            max_queue_size=settings.span_queue_size,
            max_export_batch_size=min(MAX_EXPORT_BATCH_SIZE, settings.span_queue_size),
            export_timeout_millis=settings.export_timeout_seconds * 1000,
        )
        self.name = status.name
        self.guarded_exporter = exporter
        # The SDK (1.45) reports drops only through this private hook; without it drops go uncounted, not unsafe.
        batch = getattr(self, "_batch_processor", None)
        if batch is not None and hasattr(batch, "_metrics"):
            batch._metrics = _DropCountingMetrics(batch._metrics, status)
        else:
            logger.debug("this OpenTelemetry SDK hides its span queue; dropped spans are not counted")

    def on_end(self, span: ReadableSpan) -> None:
        if span.name.endswith(ASGI_MESSAGE_SPAN_SUFFIXES):
            return  # leaves: nothing else points at them as a parent
        super().on_end(span)


class RateLimitedSampler(Sampler):
    """Samples what ``inner`` samples, but at most ``per_second`` traces a second (a token bucket, burst one second).

    Under saturation a trace store on the same cores spends more than half the CPU of a prediction ingesting its
    trace (bench/RESULTS.md); this keeps every request traced at ordinary loads and bounds that cost beyond.
    Meant as the root sampler of :class:`ParentBased`, so a caller's sampled ``traceparent`` is always honoured.
    """

    def __init__(self, inner: Sampler, per_second: float, clock: Any = time.monotonic) -> None:
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
    try:
        from telemetry.metrics import get_metrics

        get_metrics().traces_rate_limited.inc()
    except Exception:
        logger.debug("could not count a rate-limited trace", exc_info=True)


def _sampler(settings: Settings) -> Sampler:
    if settings.tracing == "off":
        return ALWAYS_OFF
    root: Sampler = TraceIdRatioBased(settings.trace_sample_ratio)
    if settings.trace_max_per_second > 0:
        root = RateLimitedSampler(root, settings.trace_max_per_second)
    return ParentBased(root)


class Tracing:
    """A tracer provider with Vigil's exporters attached. :func:`setup_tracing` keeps one per process."""

    def __init__(
        self, provider: TracerProvider, *, mode: str, settings: Settings, owns_provider: bool,
        exporters: list[ExporterStatus], processors: list[_CountingBatchSpanProcessor],
    ) -> None:
        self.provider = provider
        self.mode = mode
        self.sample_ratio = settings.trace_sample_ratio
        self.max_traces_per_second = settings.trace_max_per_second
        self.raw_text = settings.trace_raw_text
        self.exporters = exporters
        self._processors = processors
        self._owns_provider = owns_provider
        self._shutdown_lock = threading.Lock()
        self._is_shut_down = False

    def status(self) -> dict[str, Any]:
        """Mode, exporters and their counters; ``degraded`` when a configured exporter could not start."""
        return {
            "mode": self.mode,
            "sample_ratio": self.sample_ratio,
            "max_traces_per_second": self.max_traces_per_second,
            "degraded": any(not exporter.active for exporter in self.exporters),
            "shut_down": self._is_shut_down,
            "exporters": [exporter.as_dict() for exporter in self.exporters],
        }

    def shutdown(self, timeout_seconds: float = 3.0) -> bool:
        """Flush and stop every exporter, in parallel, giving up after ``timeout_seconds``.

        The SDK's own shutdown waits up to 30 s per processor, one after another, and an OTLP exporter retries
        against an absent endpoint until its timeout; neither may hold a process that is exiting. Returns
        whether everything finished in time; what did not is abandoned on daemon threads.
        """
        with self._shutdown_lock:
            if self._is_shut_down:
                return True
            self._is_shut_down = True
        deadline = time.monotonic() + timeout_seconds
        # Vigil's exporters side by side, so one absent endpoint does not hold back the others' flush.
        stuck = _stop_all([(p.name, p) for p in self._processors], deadline)
        if stuck:
            for processor in self._processors:
                # Interrupts the OTLP client's retry back-off so the abandoned threads end soon after.
                processor.guarded_exporter.shutdown()
        if self._owns_provider:
            # Whatever else was added to the provider; Vigil's processors are already stopped (or abandoned).
            others = _stop_all([("other span processors", self.provider)], deadline)
            stuck = stuck or others
        if stuck:
            logger.warning("tracing shutdown gave up after %.1fs on %s; their unsent spans are lost",
                           timeout_seconds, ", ".join(stuck))
        return not stuck


def _stop_all(targets: list[tuple[str, SpanProcessor | TracerProvider]], deadline: float) -> list[str]:
    """Shut ``targets`` down on daemon threads; the names of those still running at ``deadline``."""
    stoppers: list[tuple[str, threading.Thread]] = []
    for name, target in targets:
        thread = threading.Thread(target=_shutdown_quietly, args=(target,), name=f"vigil-trace-stop-{name}",
                                  daemon=True)
        try:
            thread.start()
        except RuntimeError:  # no new threads during interpreter finalization
            _shutdown_quietly(target)
            continue
        stoppers.append((name, thread))
    for _, thread in stoppers:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [name for name, thread in stoppers if thread.is_alive()]


def _shutdown_quietly(target: SpanProcessor | TracerProvider) -> None:
    try:
        target.shutdown()
    except Exception:
        logger.debug("span processor failed to shut down", exc_info=True)


class _ExperimentRef(BaseModel):
    experiment_id: str
    lifecycle_stage: str = "active"


class _GetExperimentByName(BaseModel):
    experiment: _ExperimentRef


class _CreatedExperiment(BaseModel):
    experiment_id: str


class _ExporterUnavailable(Exception):
    pass


def vigil_version() -> str:
    try:
        return version("vigil")
    except PackageNotFoundError:
        return "0+unknown"


def _resource(service_name: str, settings: Settings) -> Resource:
    return Resource.create({
        SERVICE_NAME: service_name,
        SERVICE_VERSION: vigil_version(),
        semconv.DEPLOYMENT_ENVIRONMENT: settings.environment,
        semconv.DEPLOYMENT_ENVIRONMENT_NAME: settings.environment,
    })


def _configured_otlp_endpoint(settings: Settings) -> str:
    """The OTLP traces URL people chose, standard variables first; empty means "the MLflow server"."""
    if traces := os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return traces
    if base := os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return f"{base.rstrip('/')}/v1/traces"
    return settings.otlp_endpoint


def _mlflow_auth_headers() -> dict[str, str]:
    # Same variables the MLflow client reads, so a secured server accepts spans from the same environment.
    if token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return {"Authorization": f"Bearer {token}"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        import base64

        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    return {}


def mlflow_experiment_id(tracking_uri: str, name: str, timeout: float = MLFLOW_LOOKUP_TIMEOUT_SECONDS) -> str:
    """The id of experiment ``name`` on the MLflow server, created if missing (one short REST round-trip)."""
    import httpx

    def by_name(client: httpx.Client) -> str | None:
        response = client.get("/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": name})
        if response.status_code == 404:
            return None
        response.raise_for_status()
        experiment = _GetExperimentByName.model_validate_json(response.content).experiment
        if experiment.lifecycle_stage != "active":
            raise _ExporterUnavailable(f"experiment {name!r} is deleted; restore it in the MLflow UI or rename it")
        return experiment.experiment_id

    try:
        with httpx.Client(base_url=tracking_uri.rstrip("/"), timeout=timeout,
                          headers=_mlflow_auth_headers()) as client:
            if (found := by_name(client)) is not None:
                return found
            created = client.post("/api/2.0/mlflow/experiments/create", json={"name": name})
            if created.status_code == 200:
                return _CreatedExperiment.model_validate_json(created.content).experiment_id
            # Another worker may have created it between our two calls.
            if (found := by_name(client)) is not None:
                return found
            created.raise_for_status()
            raise _ExporterUnavailable(f"could not create experiment {name!r}")
    except httpx.HTTPStatusError as error:
        raise _ExporterUnavailable(f"MLflow answered {error.response.status_code}") from None
    except httpx.HTTPError as error:
        raise _ExporterUnavailable(type(error).__name__) from None


def _otlp_exporter(endpoint: str, settings: Settings, headers: Mapping[str, str] | None = None) -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint, headers=dict(headers or {}), timeout=settings.export_timeout_seconds)


def _primary_exporter(settings: Settings) -> tuple[ExporterStatus, SpanExporter | None]:
    if settings.tracing == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ExporterStatus(EXPORTER_CONSOLE, "stdout"), ConsoleSpanExporter()
    if endpoint := _configured_otlp_endpoint(settings):
        return ExporterStatus(EXPORTER_OTLP, endpoint), _otlp_exporter(endpoint, settings)
    tracking_uri = settings.mlflow_tracking_uri.rstrip("/")
    endpoint = f"{tracking_uri}/v1/traces"
    status = ExporterStatus(EXPORTER_MLFLOW, endpoint)
    try:
        if not tracking_uri.startswith(("http://", "https://")):
            raise _ExporterUnavailable("the tracking URI is not an MLflow server; traces need `mlflow server`")
        experiment_id = mlflow_experiment_id(tracking_uri, settings.traces_experiment)
    except _ExporterUnavailable as error:
        status.active, status.detail = False, f"MLflow unavailable at start: {error}"
        logger.warning("MLflow at %s is unavailable (%s): spans are not exported to MLflow until restart",
                       tracking_uri, error)
        return status, None
    status.detail = f"experiment {settings.traces_experiment} ({experiment_id})"
    headers = {MLFLOW_EXPERIMENT_HEADER: experiment_id, **_mlflow_auth_headers()}
    return status, _otlp_exporter(endpoint, settings, headers)


def _langsmith_exporter(settings: Settings) -> tuple[ExporterStatus, SpanExporter | None]:
    """LangSmith's own OTLP exporter class: it owns the header names (x-api-key, project or agent address).

    Only the exporter is taken from the ``langsmith`` package, not its client: the client's background flush
    is what blocks for ~20 s when LangSmith is unreachable, while this exporter runs under Vigil's bounded
    batch processor like any other.
    """
    endpoint = f"{settings.langsmith_endpoint.rstrip('/')}/otel/v1/traces"
    status = ExporterStatus(EXPORTER_LANGSMITH, endpoint, detail=f"project {settings.langsmith_project}")
    try:
        from langsmith.integrations.otel.processor import OtelExporter

        exporter = OtelExporter(
            url=endpoint, api_key=settings.langsmith_api_key.get_secret_value(),
            project=settings.langsmith_project, timeout=settings.export_timeout_seconds,
        )
    except Exception as error:
        status.active, status.detail = False, f"LangSmith exporter not created: {error}"
        logger.warning("LangSmith tracing is configured but its exporter could not be created: %s", error)
        return status, None
    return status, exporter


def build_tracing(
    service_name: str, *, settings: Settings | None = None, tracer_provider: TracerProvider | None = None
) -> Tracing:
    """A provider with the exporters ``settings`` ask for, without installing it globally (tests use this).

    An injected ``tracer_provider`` keeps its own resource and sampler; Vigil only adds exporters to it.
    """
    settings = settings or get_settings()
    owns_provider = tracer_provider is None
    if tracer_provider is None:
        # "off" still hands out valid, non-recording spans so context propagates, at almost no cost.
        tracer_provider = TracerProvider(
            resource=_resource(service_name, settings), sampler=_sampler(settings), shutdown_on_exit=False
        )
    exporters: list[tuple[ExporterStatus, SpanExporter | None]] = []
    if settings.tracing != "off":
        exporters.append(_primary_exporter(settings))
        if settings.langsmith_api_key.get_secret_value():
            exporters.append(_langsmith_exporter(settings))
    processors: list[_CountingBatchSpanProcessor] = []
    for status, exporter in exporters:
        if exporter is None:
            continue
        processor = _CountingBatchSpanProcessor(_GuardedExporter(exporter, status), status, settings)
        tracer_provider.add_span_processor(processor)
        processors.append(processor)
    return Tracing(
        tracer_provider, mode=settings.tracing, settings=settings, owns_provider=owns_provider,
        exporters=[status for status, _ in exporters], processors=processors,
    )


_lock = threading.Lock()
_active: Tracing | None = None


def setup_tracing(
    service_name: str, *, settings: Settings | None = None, tracer_provider: TracerProvider | None = None
) -> TracerProvider:
    """Install this process's tracer provider with Vigil's exporters; a second call returns the first provider.

    Pass ``tracer_provider`` to use a provider you built (tests pass one with an in-memory exporter); an SDK
    provider someone else already installed globally is used the same way, so there stays one per process.
    Shutdown is registered at exit with the bound of :func:`shutdown_tracing`.
    """
    global _active
    with _lock:
        if _active is not None:
            return _active.provider
        installed = trace.get_tracer_provider()
        if tracer_provider is None and isinstance(installed, TracerProvider):
            tracer_provider = installed
        tracing = build_tracing(service_name, settings=settings, tracer_provider=tracer_provider)
        if installed is not tracing.provider:
            trace.set_tracer_provider(tracing.provider)
            if trace.get_tracer_provider() is not tracing.provider:
                logger.warning("another tracer provider is already installed; Vigil's spans may not be exported")
        _active = tracing
        atexit.register(shutdown_tracing)
        logger.info("tracing: %s", ", ".join(f"{e.name}→{e.endpoint}" for e in tracing.exporters) or tracing.mode)
        return tracing.provider


def shutdown_tracing(timeout_seconds: float = 3.0) -> bool:
    """Flush and stop the process's exporters within ``timeout_seconds``; True when nothing was abandoned."""
    tracing = _active
    return True if tracing is None else tracing.shutdown(timeout_seconds)


def tracing_status() -> dict[str, Any]:
    """Readiness details: mode, exporters, whether one is degraded, export failures and dropped spans."""
    tracing = _active
    if tracing is None:
        return {"mode": "not set up", "degraded": False, "exporters": []}
    return tracing.status()


def get_tracer(name: str) -> trace.Tracer:
    """A tracer of the process's provider (a no-op one until :func:`setup_tracing` ran)."""
    return trace.get_tracer(name, vigil_version())


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


def text_attribute(text: str) -> str:
    """Request text as a span attribute: the text itself, or ``sha256:`` + 16 hex when raw text is off."""
    tracing = _active
    raw = tracing.raw_text if tracing is not None else get_settings().trace_raw_text
    if raw:
        return text
    return TEXT_HASH_PREFIX + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
