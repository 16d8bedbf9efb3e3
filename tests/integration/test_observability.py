"""Spans from a real Vigil process reach the real MLflow trace store and a LangSmith stand-in; shutdown is bounded.

Each scenario runs in its own interpreter: the tracer provider is process-global, and process exit is part of
what is tested.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from monitoring import traces_cli
from telemetry import semconv
from tests.conftest import free_port, wait_until
from tests.integration.conftest import VigilEnv
from tests.support.otlp_receiver import ReceivedExport, ReceivedSpan, otlp_receiver

REMOTE_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
REMOTE_PARENT_ID = "00f067aa0ba902b7"
SHUTDOWN_SLACK_SECONDS = 0.5

# What a served request does, minus the server: spans with Vigil's attributes, then a bounded shutdown.
SCRIPT = textwrap.dedent(f"""
    import json, os, time
    from telemetry import propagation, semconv, tracing

    tracing.setup_tracing("vigil-it")
    tracer = tracing.get_tracer("vigil.it")
    with tracer.start_as_current_span(semconv.SPAN_SENTIMENT_PREDICT) as predict:
        predict.set_attribute(semconv.MODEL_NAME, "sentiment")
        predict.set_attribute(semconv.MODEL_VERSION, "5")
        predict.set_attribute(semconv.BATCH_SIZE, 2)
        predict.set_attribute(semconv.INPUT_TEXT, tracing.text_attribute("great battery"))
        with tracer.start_as_current_span(semconv.SPAN_RAG_GENERATE) as generate:
            generate.set_attribute(semconv.GEN_AI_OPERATION_NAME, "chat")
            generate.set_attribute(semconv.GEN_AI_REQUEST_MODEL, "extractive")
            generate.set_attribute(semconv.GEN_AI_USAGE_INPUT_TOKENS, 120)
            generate.set_attribute(semconv.GEN_AI_USAGE_OUTPUT_TOKENS, 30)
        trace_id = propagation.current_trace_id()
    remote = propagation.extract_context({{"traceparent": "00-{REMOTE_TRACE_ID}-{REMOTE_PARENT_ID}-01"}})
    with tracer.start_as_current_span("server.request", context=remote) as server:
        server.set_attribute(semconv.MODEL_VERSION, "5")
    with tracer.start_as_current_span("burst"):
        for index in range(int(os.environ.get("EXTRA_SPANS", "0"))):
            with tracer.start_as_current_span(f"extra-{{index}}"):
                pass
    started = time.monotonic()
    finished = tracing.shutdown_tracing(float(os.environ["SHUTDOWN_BOUND"]))
    print(json.dumps({{
        "trace_id": trace_id,
        "shutdown_finished": finished,
        "shutdown_seconds": time.monotonic() - started,
        "status": tracing.tracing_status(),
    }}))
""")


@dataclass(frozen=True)
class Run:
    trace_id: str
    shutdown_finished: bool
    shutdown_seconds: float
    status: dict[str, Any]


def run_traced_process(vigil_env: VigilEnv, cwd: Path, bound: float, **env: str) -> Run:
    clean = {key: value for key, value in vigil_env.env.items()
             if not key.startswith(("OTEL_", "LANGSMITH_", "VIGIL_TRAC", "VIGIL_OTLP"))}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=cwd, env={**clean, "SHUTDOWN_BOUND": str(bound), **env},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    return Run(**json.loads(result.stdout.strip().splitlines()[-1]))


def mlflow_spans(vigil_env: VigilEnv, trace_id: str) -> dict[str, Any]:
    """The spans of ``tr-<trace_id>`` in the vigil-traces experiment, by name, once MLflow has them."""
    client = MlflowClient(tracking_uri=vigil_env.tracking_uri)
    experiment = client.get_experiment_by_name("vigil-traces")
    assert experiment is not None, "setup_tracing should have created the vigil-traces experiment"

    def find() -> dict[str, Any]:
        found = client.search_traces(locations=[experiment.experiment_id],
                                     filter_string=f"trace.request_id = 'tr-{trace_id}'")
        return {span.name: span for trace in found for span in trace.data.spans}

    return wait_until(find, timeout=20, what=f"trace tr-{trace_id} in MLflow")


@dataclass(frozen=True)
class Exported:
    run: Run
    langsmith: list[tuple[ReceivedExport, ReceivedSpan]]


@pytest.fixture(scope="module")
def exported(vigil_env: VigilEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exported]:
    # With the default tail sampling, the script's first new trace is the uniform sample's first of its second, and
    # the caller's sampled one is within the caller's budget: both are kept, the burst after them is not.
    with otlp_receiver() as langsmith:
        run = run_traced_process(
            vigil_env, tmp_path_factory.mktemp("traced"), bound=5.0,
            LANGSMITH_API_KEY="lsv2-test-key", LANGSMITH_ENDPOINT=langsmith.url, LANGSMITH_PROJECT="vigil-it",
        )
        yield Exported(run, langsmith.spans())


def test_spans_land_in_the_mlflow_trace_store_with_their_attributes(
    vigil_env: VigilEnv, exported: Exported
) -> None:
    run = exported.run
    assert run.shutdown_finished
    assert run.status["degraded"] is False
    assert [e["name"] for e in run.status["exporters"]] == ["mlflow", "langsmith"]
    assert all(e["export_failures"] == 0 and e["spans_dropped"] == 0 for e in run.status["exporters"])

    spans = mlflow_spans(vigil_env, run.trace_id)
    predict, generate = spans[semconv.SPAN_SENTIMENT_PREDICT], spans[semconv.SPAN_RAG_GENERATE]
    assert predict.parent_id is None
    assert generate.parent_id == predict.span_id
    assert predict.attributes[semconv.MODEL_VERSION] == "5"
    assert predict.attributes[semconv.BATCH_SIZE] == 2
    assert predict.attributes[semconv.INPUT_TEXT] == "great battery"
    assert generate.attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS] == 120
    assert generate.attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == 30


def test_a_given_traceparent_names_the_mlflow_trace(vigil_env: VigilEnv, exported: Exported) -> None:
    spans = mlflow_spans(vigil_env, REMOTE_TRACE_ID)
    server = spans["server.request"]
    assert server.parent_id == REMOTE_PARENT_ID
    assert server.attributes[semconv.MODEL_VERSION] == "5"


def test_langsmith_receives_the_same_spans_with_its_headers_and_token_usage(exported: Exported) -> None:
    received = [(export, span) for export, span in exported.langsmith if span.trace_id == exported.run.trace_id]
    by_name = {span.name: (export, span) for export, span in received}
    assert set(by_name) == {semconv.SPAN_SENTIMENT_PREDICT, semconv.SPAN_RAG_GENERATE}
    export, generate = by_name[semconv.SPAN_RAG_GENERATE]
    assert export.path == "/otel/v1/traces"
    assert export.headers["x-api-key"] == "lsv2-test-key"
    assert export.headers["langsmith-project"] == "vigil-it"
    assert export.headers["content-type"] == "application/x-protobuf"
    assert generate.attributes[semconv.GEN_AI_USAGE_INPUT_TOKENS] == 120
    assert generate.attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == 30
    assert generate.attributes[semconv.GEN_AI_REQUEST_MODEL] == "extractive"
    assert generate.resource["service.name"] == "vigil-it"
    assert generate.resource[semconv.DEPLOYMENT_ENVIRONMENT] == "local"


def test_traces_tail_prints_the_span_tree(vigil_env: VigilEnv, exported: Exported) -> None:
    mlflow_spans(vigil_env, exported.run.trace_id)
    runner = CliRunner()
    for args in (["--trace-id", exported.run.trace_id], ["--limit", "10"]):
        result = runner.invoke(traces_cli.app, ["tail", *args], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        assert f"tr-{exported.run.trace_id}" in result.output
        assert semconv.SPAN_SENTIMENT_PREDICT in result.output and semconv.SPAN_RAG_GENERATE in result.output
        assert f"{semconv.MODEL_VERSION}=5" in result.output
        assert f"{semconv.GEN_AI_USAGE_INPUT_TOKENS}=120" in result.output


def test_langsmith_down_never_fails_spans_and_shutdown_is_bounded(
    vigil_env: VigilEnv, tmp_path: Path
) -> None:
    bound = 3.0
    # Every trace kept, so that the 300 spans of the burst wait in LangSmith's queue (tail sampling would drop them).
    run = run_traced_process(
        vigil_env, tmp_path, bound=bound, EXTRA_SPANS="300", VIGIL_TRACE_ALL="true",
        LANGSMITH_API_KEY="lsv2-test-key", LANGSMITH_ENDPOINT=f"http://127.0.0.1:{free_port()}",
    )
    assert run.shutdown_seconds <= bound + SHUTDOWN_SLACK_SECONDS, run
    # MLflow's exporter is not held back by LangSmith's: they shut down side by side.
    spans = mlflow_spans(vigil_env, run.trace_id)
    assert spans[semconv.SPAN_SENTIMENT_PREDICT].attributes[semconv.MODEL_VERSION] == "5"
