"""Tracing set-up and helpers with in-memory and console exporters, and `vigil traces tail`; no servers."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import format_span_id, format_trace_id
from prometheus_client import REGISTRY
from rich.console import Console
from rich.tree import Tree
from typer.testing import CliRunner

from monitoring import traces_cli
from monitoring.traces_cli import SpanView, span_tree
from telemetry import propagation, sampling, semconv, tracing
from telemetry.redaction import text_digest
from tests.conftest import REPO_ROOT, free_port
from vigil.errors import MlflowUnavailable, VigilError
from vigil.settings import Settings

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture(autouse=True)
def _no_ambient_exporter_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's OTEL_* or LangSmith variables must not leak into these tests."""
    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_HEADERS",
                 "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "LANGSMITH_API_KEY", "LANGSMITH_ENDPOINT", "LANGSMITH_PROJECT",
                 "VIGIL_TRACE_RAW_TEXT", "VIGIL_TRACING"):
        monkeypatch.delenv(name, raising=False)


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def memory() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def test_injected_provider_records_vigil_spans(memory: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    provider, exporter = memory
    built = tracing.build_tracing("vigil-test", settings=settings(tracing="off"), tracer_provider=provider)
    assert built.provider is provider
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span(semconv.SPAN_RAG_QUERY) as query:
        query.set_attribute(semconv.MODEL_VERSION, "3")
        with tracer.start_as_current_span(semconv.SPAN_RAG_GENERATE) as generate:
            generate.set_attribute(semconv.GEN_AI_USAGE_INPUT_TOKENS, 120)
            generate.set_attribute(semconv.GEN_AI_USAGE_OUTPUT_TOKENS, 30)
    finished = {span.name: span for span in exporter.get_finished_spans()}
    assert set(finished) == {semconv.SPAN_RAG_QUERY, semconv.SPAN_RAG_GENERATE}
    child, parent = finished[semconv.SPAN_RAG_GENERATE], finished[semconv.SPAN_RAG_QUERY]
    assert child.parent is not None and child.parent.span_id == parent.context.span_id
    assert child.attributes is not None and child.attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == 30
    assert built.status() == {"mode": "off", "trace_all": False, "slow_ms": 1000.0, "sample_ratio": 1.0,
                              "max_traces_per_second": 1.0, "max_remote_traces_per_second": 1.0, "degraded": False,
                              "shut_down": False, "exporters": [], "held_spans": 0}


def test_own_provider_has_resource_ratio_sampler_and_console_exporter() -> None:
    built = tracing.build_tracing("vigil-test", settings=settings(tracing="console", environment="ci",
                                                                  trace_sample_ratio=0.5))
    resource = built.provider.resource.attributes
    assert resource["service.name"] == "vigil-test"
    assert resource["service.version"] == tracing.vigil_version() != ""
    assert resource[semconv.DEPLOYMENT_ENVIRONMENT] == "ci"
    assert isinstance(built.provider.sampler, sampling.TailSampler)
    assert "ratio=0.5" in built.provider.sampler.get_description()
    # A sampled remote parent is kept within its budget, whatever the ratio.
    remote = propagation.extract_context({"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
    with built.provider.get_tracer("test").start_as_current_span(semconv.SPAN_SENTIMENT_PREDICT, context=remote):
        assert propagation.current_trace_id() == TRACE_ID
    assert [(e.name, e.active) for e in built.exporters] == [("console", True)]
    assert built.shutdown(timeout_seconds=5)


def test_the_callers_budget_defaults_to_the_uniform_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings(trace_max_per_second=4).trace_remote_max_per_second == 4
    monkeypatch.setenv("VIGIL_TRACE_MAX_PER_SECOND", "7")
    monkeypatch.setenv("VIGIL_TRACE_REMOTE_MAX_PER_SECOND", "")  # as .env.example ships it
    assert settings().trace_remote_max_per_second == 7
    with pytest.raises(ValueError, match="trace_remote_max_per_second"):
        settings(trace_remote_max_per_second=-1)


def test_off_mode_creates_cheap_unsampled_spans() -> None:
    built = tracing.build_tracing("vigil-test", settings=settings(tracing="off"))
    with built.provider.get_tracer("test").start_as_current_span("anything") as span:
        assert not span.is_recording()
        assert propagation.current_trace_id() == ""
    assert built.status()["exporters"] == []


def test_traceparent_round_trip_with_rest_headers_and_grpc_metadata(
    memory: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = memory
    tracer = provider.get_tracer("test")
    rest_headers = {"Traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "Content-Type": "application/json"}
    grpc_metadata = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "x-bin": b"\x00"}  # type: ignore[dict-item]
    for carrier in (rest_headers, grpc_metadata):
        with tracer.start_as_current_span("server", context=propagation.extract_context(carrier)) as span:
            outgoing = propagation.inject_traceparent({})
            assert propagation.current_trace_id() == TRACE_ID
            own_span_id = format_span_id(span.get_span_context().span_id)
        assert outgoing["traceparent"] == f"00-{TRACE_ID}-{own_span_id}-01"
    spans = exporter.get_finished_spans()
    assert len(spans) == 2
    assert all(s.parent is not None and format_span_id(s.parent.span_id) == PARENT_ID for s in spans)
    assert all(format_trace_id(s.context.trace_id) == TRACE_ID for s in spans)


def test_no_traceparent_means_a_new_trace(memory: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    provider, _ = memory
    assert propagation.current_trace_id() == ""
    with provider.get_tracer("test").start_as_current_span("root", context=propagation.extract_context({})):
        new_id = propagation.current_trace_id()
    assert len(new_id) == 32 and new_id != TRACE_ID
    int(new_id, 16)


def test_text_attribute_is_raw_or_a_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracing, "_active", None)
    assert tracing.text_attribute("great phone") == "great phone"
    monkeypatch.setenv("VIGIL_TRACE_RAW_TEXT", "false")
    from vigil.settings import get_settings

    get_settings.cache_clear()
    hashed = tracing.text_attribute("great phone")
    assert hashed == text_digest("great phone") == "sha256:" + hashlib.sha256(b"great phone").hexdigest()
    assert "great" not in hashed


def test_endpoint_precedence_follows_the_otel_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    configured = settings(tracing="otlp", otlp_endpoint="http://collector.vigil:4318/v1/traces")
    assert tracing.build_tracing("t", settings=configured).exporters[0].endpoint == configured.otlp_endpoint
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318/")
    assert tracing.build_tracing("t", settings=configured).exporters[0].endpoint == "http://base:4318/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4318/custom")
    built = tracing.build_tracing("t", settings=configured)
    assert [(e.name, e.endpoint, e.active) for e in built.exporters] == [("otlp", "http://traces:4318/custom", True)]
    built.shutdown(1)


def test_mlflow_down_degrades_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    with caplog.at_level(logging.WARNING, logger="telemetry"):
        built = tracing.build_tracing("t", settings=settings(tracing="otlp", langsmith_api_key="lsv2-test",
                                                             langsmith_endpoint="http://127.0.0.1:9"))
    assert len([r for r in caplog.records if r.name.startswith("telemetry.")]) == 1
    status = built.status()
    assert status["degraded"] is True
    mlflow, langsmith = status["exporters"]
    assert (mlflow["name"], mlflow["active"]) == ("mlflow", False)
    assert "unavailable" in mlflow["detail"]
    assert (langsmith["name"], langsmith["active"]) == ("langsmith", True)
    assert langsmith["endpoint"] == "http://127.0.0.1:9/otel/v1/traces"
    with built.provider.get_tracer("t").start_as_current_span("still-works"):
        pass
    built.shutdown(1)


def _exported_failures(exporter: str) -> float:
    return REGISTRY.get_sample_value("vigil_span_export_failures_total", {"exporter": exporter}) or 0.0


def test_failed_exports_and_dropped_spans_are_counted_never_raised() -> None:
    closed = f"http://127.0.0.1:{free_port()}/v1/traces"
    failures_before = _exported_failures("otlp")
    dropped_before = REGISTRY.get_sample_value("vigil_spans_dropped_total", {"exporter": "otlp"}) or 0.0
    built = tracing.build_tracing("t", settings=settings(tracing="otlp", otlp_endpoint=closed, span_queue_size=2,
                                                         export_timeout_seconds=0.3, trace_all=True))
    tracer = built.provider.get_tracer("t")
    for index in range(200):
        with tracer.start_as_current_span(f"span-{index}"):
            pass
    assert built.shutdown(timeout_seconds=5)
    (status,) = built.status()["exporters"]
    assert status["spans_dropped"] > 0
    assert status["export_failures"] > 0
    assert _exported_failures("otlp") - failures_before == status["export_failures"]
    dropped = REGISTRY.get_sample_value("vigil_spans_dropped_total", {"exporter": "otlp"})
    assert dropped is not None and dropped - dropped_before == status["spans_dropped"]


def test_shutdown_returns_within_its_bound_when_an_endpoint_hangs() -> None:
    # A socket that accepts connections and never answers: the export would wait its full 30 s timeout.
    with socket.socket() as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(16)
        endpoint = f"http://127.0.0.1:{black_hole.getsockname()[1]}/v1/traces"
        built = tracing.build_tracing("t", settings=settings(tracing="otlp", otlp_endpoint=endpoint,
                                                             export_timeout_seconds=30))
        with built.provider.get_tracer("t").start_as_current_span("never-delivered"):
            pass
        started = time.monotonic()
        finished = built.shutdown(timeout_seconds=1.0)
        elapsed = time.monotonic() - started
    assert finished is False
    assert elapsed < 1.5


def test_setup_tracing_installs_one_provider_per_process() -> None:
    # The global provider can be set once per process, so this runs in a fresh interpreter.
    script = textwrap.dedent("""
        import json
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from telemetry import propagation, tracing
        from vigil.settings import Settings

        exporter = InMemorySpanExporter()
        injected = TracerProvider()
        injected.add_span_processor(SimpleSpanProcessor(exporter))
        first = tracing.setup_tracing("vigil-test", settings=Settings(_env_file=None, tracing="off"),
                                      tracer_provider=injected)
        second = tracing.setup_tracing("other", settings=Settings(_env_file=None, tracing="console"))
        with tracing.get_tracer("test").start_as_current_span("sentiment.predict"):
            trace_id = propagation.current_trace_id()
        print(json.dumps({
            "same": first is second is injected is trace.get_tracer_provider(),
            "spans": [s.name for s in exporter.get_finished_spans()],
            "trace_id": trace_id,
            "status": tracing.tracing_status()["mode"],
            "shutdown": tracing.shutdown_tracing(2.0),
        }))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=60, check=True)
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["same"] is True
    assert outcome["spans"] == ["sentiment.predict"]
    assert len(outcome["trace_id"]) == 32
    assert outcome["status"] == "off"
    assert outcome["shutdown"] is True


def test_helpers_are_safe_outside_a_span() -> None:
    assert propagation.current_trace_id() == ""
    assert "traceparent" not in propagation.inject_traceparent({})
    with tracing.get_tracer("x").start_as_current_span("anything"):
        pass


# --- `vigil traces tail` -------------------------------------------------------------------------------------


def render(tree: Tree) -> str:
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(tree)
    return console.export_text()


def test_span_tree_nests_children_in_start_order_with_key_attributes() -> None:
    spans = [
        SpanView("c2", "root", semconv.SPAN_RAG_GENERATE, 30_000_000, 45_500_000,
                 attributes={semconv.GEN_AI_USAGE_INPUT_TOKENS: 120, semconv.GEN_AI_USAGE_OUTPUT_TOKENS: 30}),
        SpanView("root", PARENT_ID, semconv.SPAN_RAG_QUERY, 0, 50_000_000,
                 attributes={semconv.MODEL_VERSION: "4", "noise": "not shown"}),
        SpanView("c1", "root", semconv.SPAN_RAG_RETRIEVE, 10_000_000, 20_000_000, error=True),
    ]
    lines = render(span_tree("tr-x", spans)).splitlines()
    assert lines[0] == "tr-x"
    assert semconv.SPAN_RAG_QUERY in lines[1] and "50.0 ms" in lines[1] and f"{semconv.MODEL_VERSION}=4" in lines[1]
    assert "noise" not in lines[1]
    assert semconv.SPAN_RAG_RETRIEVE in lines[2] and "10.0 ms" in lines[2]
    assert semconv.SPAN_RAG_GENERATE in lines[3] and "15.5 ms" in lines[3]
    assert f"{semconv.GEN_AI_USAGE_INPUT_TOKENS}=120" in lines[3]


def test_traces_tail_refuses_a_malformed_trace_id() -> None:
    result = CliRunner().invoke(traces_cli.app, ["tail", "--trace-id", "not-a-trace"])
    assert isinstance(result.exception, VigilError)
    assert "not a trace id" in str(result.exception)


def test_traces_tail_names_the_unreachable_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    result = CliRunner().invoke(traces_cli.app, ["tail"])
    assert isinstance(result.exception, MlflowUnavailable)
    assert uri in str(result.exception) and "vigil mlflow up" in str(result.exception)


def test_asgi_message_spans_are_not_exported_and_the_tree_stays_whole() -> None:
    from tests.support.otlp_receiver import otlp_receiver

    with otlp_receiver() as receiver:
        built = tracing.build_tracing("t", settings=settings(tracing="otlp",
                                                             otlp_endpoint=f"{receiver.url}/v1/traces"))
        tracer = built.provider.get_tracer("t")
        with tracer.start_as_current_span("POST /predict"):
            with tracer.start_as_current_span("POST /predict http receive"):
                pass
            with tracer.start_as_current_span("sentiment.predict"):
                pass
            for _ in range(2):
                with tracer.start_as_current_span("POST /predict http send"):
                    pass
        assert built.shutdown(timeout_seconds=5)
        received = {span.name: span for _, span in receiver.spans()}
    assert sorted(received) == ["POST /predict", "sentiment.predict"]
    assert received["sentiment.predict"].parent_span_id == received["POST /predict"].span_id
