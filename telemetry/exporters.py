"""Where spans go, by ``VIGIL_TRACING``, and the guards that keep exporting off the request path.

``otlp`` sends OTLP/HTTP protobuf to ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``OTEL_EXPORTER_OTLP_ENDPOINT``
(+ ``/v1/traces``), ``VIGIL_OTLP_ENDPOINT``, or by default the MLflow server's ``/v1/traces`` with the
``x-mlflow-experiment-id`` of ``VIGIL_TRACES_EXPERIMENT``; ``console`` prints spans; ``off`` exports nothing. With
``LANGSMITH_API_KEY`` set the same spans also go to LangSmith's OTLP endpoint.

Every exporter runs under its own :class:`CountingBatchSpanProcessor`: spans end into a bounded in-memory queue (a
full queue drops and counts), export runs on a background thread with a bounded timeout, and an exporter's failure
or exception is counted and logged, never raised.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from telemetry import semconv
from vigil import registry
from vigil.credentials import mask_url
from vigil.errors import VigilError
from vigil.settings import Settings

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

    def __post_init__(self) -> None:
        # Shown in /status, readiness details and logs; the exporter itself is built from the unmasked endpoint.
        self.endpoint = mask_url(self.endpoint)

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


class GuardedExporter(SpanExporter):
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


class CountingBatchSpanProcessor(BatchSpanProcessor):
    """The SDK's batch processor with Vigil's bounds, drop counting, and no ASGI per-message spans."""

    def __init__(self, exporter: GuardedExporter, status: ExporterStatus, settings: Settings) -> None:
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
        # They were 3 of every 7 spans the trace backend ingested, and are leaves: nothing points at them as a parent.
        if span.name.endswith(semconv.ASGI_MESSAGE_SPAN_SUFFIXES):
            return
        super().on_end(span)


def span_processors(settings: Settings) -> tuple[list[ExporterStatus], list[CountingBatchSpanProcessor]]:
    """A status for every exporter ``settings`` ask for, and a processor for each that could be created.

    An exporter that could not start (MLflow down, LangSmith's package broken) has a status saying why and no
    processor; spans still go to the others.
    """
    exporters: list[tuple[ExporterStatus, SpanExporter | None]] = []
    if settings.tracing != "off":
        exporters.append(_primary_exporter(settings))
        if settings.langsmith_api_key.get_secret_value():
            exporters.append(_langsmith_exporter(settings))
    processors = [
        CountingBatchSpanProcessor(GuardedExporter(exporter, status), status, settings)
        for status, exporter in exporters
        if exporter is not None
    ]
    return [status for status, _ in exporters], processors


# --- the exporters ----------------------------------------------------------------------------------------------


class ExporterUnavailable(Exception):
    """An exporter's backend cannot take spans at start; the message says why."""


def _configured_otlp_endpoint(settings: Settings) -> str:
    """The OTLP traces URL people chose, standard variables first; empty means "the MLflow server"."""
    if traces := os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return traces
    if base := os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return f"{base.rstrip('/')}/v1/traces"
    return settings.otlp_endpoint


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
        if not registry.is_server(tracking_uri):
            raise ExporterUnavailable("the tracking URI is not an MLflow server; traces need `mlflow server`")
        # Bounded: every process sets tracing up at start, and must not wait long on an absent server.
        experiment_id = registry.experiment_id(settings.traces_experiment, uri=tracking_uri,
                                               timeout=MLFLOW_LOOKUP_TIMEOUT_SECONDS)
    except (ExporterUnavailable, VigilError) as error:
        status.active, status.detail = False, f"MLflow unavailable at start: {error}"
        logger.warning("MLflow at %s is unavailable (%s): spans are not exported to MLflow until restart",
                       mask_url(tracking_uri), error)
        return status, None
    status.detail = f"experiment {settings.traces_experiment} ({experiment_id})"
    headers = {MLFLOW_EXPERIMENT_HEADER: experiment_id, **registry.auth_headers()}
    return status, _otlp_exporter(endpoint, settings, headers)


def _langsmith_exporter(settings: Settings) -> tuple[ExporterStatus, SpanExporter | None]:
    """LangSmith's own OTLP exporter class: it owns the header names (x-api-key, project or agent address).

    Only the exporter is taken from the ``langsmith`` package, not its client: the client's background flush
    blocks when LangSmith is unreachable, while this exporter runs under Vigil's bounded batch processor like any
    other.
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
