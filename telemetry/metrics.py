"""Vigil's Prometheus metrics, created lazily and once per process.

How they reach BentoML's ``/metrics``: BentoML 1.4 serves ``/metrics`` from every API worker by aggregating the
files of ``prometheus_client``'s multiprocess mode (``MultiProcessCollector`` over ``PROMETHEUS_MULTIPROC_DIR``,
which ``bentoml serve`` puts in each worker's environment before the worker starts). Any ``prometheus_client``
metric created inside a worker therefore lands in those files and is served next to BentoML's own series; BentoML
1.4 deprecates its ``bentoml.metrics`` wrapper in favour of exactly that. Outside BentoML (CLI jobs, tests) the
same metrics live in ``prometheus_client``'s in-process default registry. Either way nothing here is created at
import time: ``prometheus_client`` picks single- or multi-process mode when it is first imported, so importing
it early in a process that only later learns ``PROMETHEUS_MULTIPROC_DIR`` would hide every series.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

logger = logging.getLogger(__name__)

# Batches are formed by adaptive batching up to VIGIL_BATCH_MAX_SIZE (64 by default).
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
RETRIEVAL_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True)
class VigilMetrics:
    """Every ``vigil_*`` series; label names are part of the contract with dashboards and alerts."""

    predictions: Counter  # model, version, label
    model_loads: Counter  # model, version, outcome (success | failure | cache)
    model_swaps: Counter  # model
    batch_size: Histogram
    inference_log_queue_depth: Gauge
    inference_log_writes: Counter
    inference_log_drops: Counter  # reason (queue_full | closed | write_error | bad_row)
    span_export_failures: Counter  # exporter
    spans_dropped: Counter  # exporter
    traces_rate_limited: Counter  # parent (none | remote)
    traces: Counter  # decision (kept | dropped), reason
    rag_prompt_tokens: Counter  # generator, model
    rag_completion_tokens: Counter  # generator, model
    rag_retrieval_seconds: Histogram
    requests_rejected: Counter  # reason
    shadow: Counter  # model, outcome (scored | dropped | failed | skipped)
    shadow_queue_depth: Gauge  # model
    feedback: Counter  # model, version, outcome (correct | wrong | value | rating)
    live_accuracy: Gauge  # model, version

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> VigilMetrics:
        """Create the metrics in ``registry`` (default: the process registry BentoML and Prometheus read).

        Call it once per registry: ``prometheus_client`` refuses a second metric with the same name.
        Use :func:`get_metrics` in application code.
        """
        import prometheus_client as prom

        _warn_if_multiprocess_missed()
        target = registry if registry is not None else prom.REGISTRY
        return cls(
            predictions=prom.Counter(
                "vigil_predictions_total", "Predictions served, by model version and predicted label.",
                ["model", "version", "label"], registry=target,
            ),
            model_loads=prom.Counter(
                "vigil_model_loads_total", "Model loads, by outcome.", ["model", "version", "outcome"],
                registry=target,
            ),
            model_swaps=prom.Counter(
                "vigil_model_swaps_total", "Atomic swaps to a new model version after an alias moved.", ["model"],
                registry=target,
            ),
            batch_size=prom.Histogram(
                "vigil_batch_size", "Texts per batch reaching the model.", buckets=BATCH_SIZE_BUCKETS,
                registry=target,
            ),
            # livesum: one number across the workers that are alive, instead of a series per pid.
            inference_log_queue_depth=prom.Gauge(
                "vigil_inference_log_queue_depth", "Inference-log rows waiting to be written.",
                multiprocess_mode="livesum", registry=target,
            ),
            inference_log_writes=prom.Counter(
                "vigil_inference_log_writes_total", "Inference-log rows written.", registry=target,
            ),
            inference_log_drops=prom.Counter(
                "vigil_inference_log_drops_total", "Inference-log rows lost, by reason.", ["reason"],
                registry=target,
            ),
            span_export_failures=prom.Counter(
                "vigil_span_export_failures_total", "Span batches an exporter failed to deliver.", ["exporter"],
                registry=target,
            ),
            spans_dropped=prom.Counter(
                "vigil_spans_dropped_total", "Spans dropped before export because the export queue was full.",
                ["exporter"], registry=target,
            ),
            traces_rate_limited=prom.Counter(
                "vigil_traces_rate_limited_total",
                "Traces left out of a sample by its budget (kept still if the request fails or is slow), by parent: "
                "none (the uniform sample of new traces, VIGIL_TRACE_MAX_PER_SECOND) or remote (a caller's sampled "
                "one, VIGIL_TRACE_REMOTE_MAX_PER_SECOND).",
                ["parent"], registry=target,
            ),
            traces=prom.Counter(
                "vigil_traces_total",
                "Requests' traces by tail-sampling decision: kept (reason error | slow | caller | sample | all) or "
                "dropped (reason unsampled | budget | caller_budget | overflow). Counted by the process that decides "
                "for the whole trace (the API worker); every request is in the inference log either way.",
                ["decision", "reason"], registry=target,
            ),
            rag_prompt_tokens=prom.Counter(
                "vigil_rag_prompt_tokens_total", "Prompt tokens sent to RAG generators.", ["generator", "model"],
                registry=target,
            ),
            rag_completion_tokens=prom.Counter(
                "vigil_rag_completion_tokens_total", "Completion tokens produced by RAG generators.",
                ["generator", "model"], registry=target,
            ),
            rag_retrieval_seconds=prom.Histogram(
                "vigil_rag_retrieval_seconds", "Vector-store retrieval latency.", buckets=RETRIEVAL_SECONDS_BUCKETS,
                registry=target,
            ),
            requests_rejected=prom.Counter(
                "vigil_requests_rejected_total", "Requests refused before inference, by reason.", ["reason"],
                registry=target,
            ),
            shadow=prom.Counter(
                "vigil_shadow_total",
                "Requests sampled for shadow scoring by the shadow alias's version, by outcome: scored, dropped (the "
                "queue was full), failed (the shadow call failed) or skipped (no shadow version, or the served one).",
                ["model", "outcome"], registry=target,
            ),
            shadow_queue_depth=prom.Gauge(
                "vigil_shadow_queue_depth", "Shadow jobs waiting to be scored, by model.", ["model"],
                multiprocess_mode="livesum", registry=target,
            ),
            feedback=prom.Counter(
                "vigil_feedback_total",
                "Rows of served requests given their first true label or rating (POST /feedback), by the version "
                "that answered and outcome: correct or wrong (a class), value (a number: see vigil monitor quality), "
                "rating (a score on an answer).", ["model", "version", "outcome"], registry=target,
            ),
            live_accuracy=prom.Gauge(
                "vigil_live_accuracy",
                "Share of the labelled rows this API worker has seen since it started that the served version "
                "answered right, by model and version (rate(vigil_feedback_total) gives it over any window).",
                ["model", "version"], multiprocess_mode="liveall", registry=target,
            ),
        )


_lock = threading.Lock()
_metrics: VigilMetrics | None = None


def get_metrics() -> VigilMetrics:
    """The process's metrics, created on first use (in the process that serves them)."""
    global _metrics
    if _metrics is None:
        with _lock:
            if _metrics is None:
                _metrics = VigilMetrics.create()
    return _metrics


def _warn_if_multiprocess_missed() -> None:
    from prometheus_client import values

    wants_multiprocess = "PROMETHEUS_MULTIPROC_DIR" in os.environ or "prometheus_multiproc_dir" in os.environ
    if wants_multiprocess and values.ValueClass is values.MutexValue:
        logger.warning(
            "prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set; vigil_* metrics of this "
            "process will not appear on BentoML's /metrics"
        )
