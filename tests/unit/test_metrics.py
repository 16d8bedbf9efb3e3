"""Vigil's Prometheus metrics: names, laziness, and the multiprocess files BentoML's /metrics reads."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from telemetry.metrics import VigilMetrics, get_metrics
from tests.conftest import REPO_ROOT

EXPECTED = {
    # name as exposed: (type, label names)
    "vigil_predictions_total": ("counter", {"model", "version", "label"}),
    "vigil_model_loads_total": ("counter", {"model", "version", "outcome"}),
    "vigil_model_swaps_total": ("counter", {"model"}),
    "vigil_batch_size": ("histogram", set()),
    "vigil_inference_log_queue_depth": ("gauge", set()),
    "vigil_inference_log_writes_total": ("counter", set()),
    "vigil_inference_log_drops_total": ("counter", {"reason"}),
    "vigil_span_export_failures_total": ("counter", {"exporter"}),
    "vigil_spans_dropped_total": ("counter", {"exporter"}),
    "vigil_traces_rate_limited_total": ("counter", {"parent"}),
    "vigil_traces_total": ("counter", {"decision", "reason"}),
    "vigil_rag_prompt_tokens_total": ("counter", {"generator", "model"}),
    "vigil_rag_completion_tokens_total": ("counter", {"generator", "model"}),
    "vigil_rag_retrieval_seconds": ("histogram", set()),
    "vigil_requests_rejected_total": ("counter", {"reason"}),
    "vigil_shadow_total": ("counter", {"model", "outcome"}),
    "vigil_shadow_queue_depth": ("gauge", {"model"}),
    "vigil_feedback_total": ("counter", {"model", "version", "outcome"}),
    "vigil_live_accuracy": ("gauge", {"model", "version"}),
}


def exposed(registry: CollectorRegistry) -> dict[str, tuple[str, set[str]]]:
    found = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        if family.name.endswith("_created"):  # prometheus_client's creation timestamps, not ours
            continue
        suffix = "_total" if family.type == "counter" else ""
        labels = {key for sample in family.samples for key in sample.labels if key != "le"}
        found[family.name + suffix] = (family.type, labels)
    return found


def test_every_metric_has_its_conventional_name_type_and_labels() -> None:
    registry = CollectorRegistry()
    metrics = VigilMetrics.create(registry)
    metrics.predictions.labels(model="sentiment", version="2", label="positive").inc()
    metrics.model_loads.labels(model="sentiment", version="2", outcome="success").inc()
    metrics.model_swaps.labels(model="sentiment").inc()
    metrics.batch_size.observe(8)
    metrics.inference_log_queue_depth.set(3)
    metrics.inference_log_writes.inc(5)
    metrics.inference_log_drops.labels(reason="queue_full").inc()
    metrics.span_export_failures.labels(exporter="mlflow").inc()
    metrics.spans_dropped.labels(exporter="mlflow").inc()
    metrics.traces_rate_limited.labels(parent="remote").inc()
    metrics.traces.labels(decision="kept", reason="error").inc()
    metrics.rag_prompt_tokens.labels(generator="extractive", model="extractive").inc(120)
    metrics.rag_completion_tokens.labels(generator="extractive", model="extractive").inc(30)
    metrics.rag_retrieval_seconds.observe(0.004)
    metrics.requests_rejected.labels(reason="too_many_texts").inc()
    metrics.shadow.labels(model="sentiment", outcome="dropped").inc()
    metrics.shadow_queue_depth.labels(model="sentiment").set(4)
    metrics.feedback.labels(model="sentiment", version="2", outcome="correct").inc()
    metrics.live_accuracy.labels(model="sentiment", version="2").set(0.9)
    assert exposed(registry) == EXPECTED
    # Each series holds what was recorded on it, under the labels it was recorded with.
    assert {name: registry.get_sample_value(name, labels) for name, labels in [
        ("vigil_predictions_total", {"model": "sentiment", "version": "2", "label": "positive"}),
        ("vigil_model_loads_total", {"model": "sentiment", "version": "2", "outcome": "success"}),
        ("vigil_model_swaps_total", {"model": "sentiment"}),
        ("vigil_batch_size_sum", {}),
        ("vigil_inference_log_queue_depth", {}),
        ("vigil_inference_log_writes_total", {}),
        ("vigil_inference_log_drops_total", {"reason": "queue_full"}),
        ("vigil_span_export_failures_total", {"exporter": "mlflow"}),
        ("vigil_spans_dropped_total", {"exporter": "mlflow"}),
        ("vigil_traces_rate_limited_total", {"parent": "remote"}),
        ("vigil_traces_total", {"decision": "kept", "reason": "error"}),
        ("vigil_rag_prompt_tokens_total", {"generator": "extractive", "model": "extractive"}),
        ("vigil_rag_completion_tokens_total", {"generator": "extractive", "model": "extractive"}),
        ("vigil_rag_retrieval_seconds_count", {}),
        ("vigil_requests_rejected_total", {"reason": "too_many_texts"}),
    ]} == {
        "vigil_predictions_total": 1.0, "vigil_model_loads_total": 1.0, "vigil_model_swaps_total": 1.0,
        "vigil_batch_size_sum": 8.0, "vigil_inference_log_queue_depth": 3.0, "vigil_inference_log_writes_total": 5.0,
        "vigil_inference_log_drops_total": 1.0, "vigil_span_export_failures_total": 1.0,
        "vigil_spans_dropped_total": 1.0, "vigil_traces_rate_limited_total": 1.0,
        "vigil_traces_total": 1.0,
        "vigil_rag_prompt_tokens_total": 120.0, "vigil_rag_completion_tokens_total": 30.0,
        "vigil_rag_retrieval_seconds_count": 1.0, "vigil_requests_rejected_total": 1.0,
    }
    # A label set nothing was recorded under has no series.
    assert registry.get_sample_value(
        "vigil_predictions_total", {"model": "sentiment", "version": "2", "label": "negative"}
    ) is None


def test_process_metrics_are_created_once() -> None:
    assert get_metrics() is get_metrics()


def test_nothing_is_created_at_import_and_bentoml_metrics_endpoint_sees_the_series(tmp_path: Path) -> None:
    # A `bentoml serve` worker: PROMETHEUS_MULTIPROC_DIR is set before the worker starts, and /metrics is
    # BentoML's PrometheusClient aggregating every worker's files.
    script = textwrap.dedent("""
        import sys
        import telemetry.metrics
        assert "prometheus_client" not in sys.modules, "metrics module imported prometheus_client eagerly"
        metrics = telemetry.metrics.get_metrics()
        metrics.predictions.labels(model="sentiment", version="3", label="negative").inc(2)
        metrics.inference_log_queue_depth.set(4)
        metrics.batch_size.observe(16)

        from bentoml._internal.server.metrics.prometheus import PrometheusClient
        client = PrometheusClient(multiproc=True)
        client.registry  # binds the client to this process, as BentoML's server does
        sys.stdout.write(client.generate_latest().decode())
    """)
    multiproc_dir = tmp_path / "prometheus"
    multiproc_dir.mkdir()
    env = {"PATH": "/usr/bin:/bin", "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir), "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    families = {f.name: f for f in text_string_to_metric_families(result.stdout)}
    (prediction,) = families["vigil_predictions"].samples
    assert prediction.labels == {"model": "sentiment", "version": "3", "label": "negative"}
    assert prediction.value == 2.0
    assert [s.value for s in families["vigil_inference_log_queue_depth"].samples] == [4.0]
    assert any(s.name == "vigil_batch_size_count" and s.value == 1.0 for s in families["vigil_batch_size"].samples)
