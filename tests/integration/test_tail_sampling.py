"""Tail sampling on a real `vigil serve` into the session's MLflow (issue 16, item 1): failed and slow requests have
their whole trace in the trace store, across the API worker and the RAG service; ordinary requests outside the
uniform sample are not exported, yet are in the inference log and counted on /metrics.

Two servers of this module's own (the session's settings in homes of their own), both with no uniform sample
(`VIGIL_TRACE_SAMPLE_RATIO=0`): one whose Milvus is not there, so every `/rag/query` fails with a 503 in the RAG
service; one where every request is slow (`VIGIL_TRACE_SLOW_MS=1`). A 4xx is a refusal of the caller's request, not a
failure: it is not kept.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient

from telemetry import semconv
from telemetry.records import create_engine, read_frame
from tests.conftest import free_port, wait_until
from tests.integration.conftest import Server, VigilEnv, start_server
from tests.support.serving import metric

TIMEOUT_SECONDS = 900
REVIEW = "Great phone, the battery lasts all day."
QUESTION = "Which NFL team represented the AFC at Super Bowl 50?"


@contextmanager
def tail_server(session: Server, tmp_path_factory: pytest.TempPathFactory, name: str, *,
                milvus: Path | None = None, **settings: str) -> Iterator[Server]:
    """The session's service in a home of its own, no uniform sample, ``settings`` over its environment.

    Only the session server's settings are read, never the server itself: the serving tests, which run before this
    module, stop it, and `live_server` would start it again (a server's start-up in CI) for nothing here."""
    home = tmp_path_factory.mktemp(name)
    if milvus is not None:
        shutil.copytree(milvus, home / "milvus")
    env = {**session.env, "VIGIL_HOME": str(home), "VIGIL_TRACE_SAMPLE_RATIO": "0", **settings}
    env.pop("VIGIL_TRACE_ALL", None)
    running = start_server(env, home / "serve.log")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def failing_rag(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with tail_server(server, tmp_path_factory, "serve-tail-failing",
                     VIGIL_MILVUS_URI=f"http://127.0.0.1:{free_port()}") as server:
        yield server


@pytest.fixture(scope="module")
def all_slow(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    assert server.milvus_snapshot is not None
    with tail_server(server, tmp_path_factory, "serve-tail-slow", milvus=server.milvus_snapshot,
                     VIGIL_TRACE_SLOW_MS="1") as running:
        yield running


def new_trace_id() -> str:
    return uuid.uuid4().hex


def unsampled(trace_id: str) -> dict[str, str]:
    """A caller's traceparent that asks for no sampling: only a failure or slowness may keep the trace."""
    return {"traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-00"}


class TraceStore:
    def __init__(self, vigil_env: VigilEnv) -> None:
        self.client = MlflowClient(tracking_uri=vigil_env.tracking_uri)
        experiment = self.client.get_experiment_by_name("vigil-traces")
        assert experiment is not None
        self.experiment_id = experiment.experiment_id

    def spans(self, trace_id: str) -> dict[str, Any]:
        """The spans of ``tr-<trace_id>`` by name ({} when the store has no such trace)."""
        found = self.client.search_traces(locations=[self.experiment_id],
                                          filter_string=f"trace.request_id = 'tr-{trace_id}'")
        return {span.name: span for trace in found for span in trace.data.spans}

    def wait_for(self, trace_id: str, names: set[str]) -> dict[str, Any]:
        """The trace's spans once every one of ``names`` is there (they come from several processes)."""
        return wait_until(lambda: (spans := self.spans(trace_id)) and names <= set(spans) and spans, timeout=60,
                          interval=0.5, what=f"spans {sorted(names)} of trace {trace_id} in MLflow")


@pytest.fixture(scope="module")
def store(vigil_env: VigilEnv) -> TraceStore:
    return TraceStore(vigil_env)


def in_the_rag_service(spans: dict[str, Any]) -> bool:
    """The RAG service's server span hangs under the API worker's `rag.request`, and `rag.query` under it."""
    request = spans[semconv.SPAN_RAG_REQUEST]
    served = [span for span in spans.values() if span.parent_id == request.span_id]
    return any(name.startswith("POST /query") for name in (span.name for span in served)) and \
        spans[semconv.SPAN_RAG_QUERY].parent_id in {span.span_id for span in served}


def logged_trace_ids(server: Server) -> set[str]:
    rows = read_frame(create_engine(f"sqlite:///{Path(server.env['VIGIL_HOME']) / 'inference_log.db'}"))
    return set(rows["trace_id"])


@pytest.mark.timeout(TIMEOUT_SECONDS)
def test_a_failed_request_is_traced_whole_and_ordinary_ones_are_only_logged_and_counted(
    failing_rag: Server, store: TraceStore
) -> None:
    server = failing_rag
    # Ordinary requests first: new traces, outside the (empty) uniform sample.
    ordinary = []
    for _ in range(5):
        response = httpx.post(f"{server.http}/predict", json={"text": REVIEW}, timeout=60)
        assert response.status_code == 200, response.text
        trace_id = response.json()["trace_id"]
        # Every request has its trace id; the flag says the decision was not made at the start.
        _, header_trace_id, _, flags = response.headers["traceparent"].split("-")
        assert trace_id and (header_trace_id, flags) == (trace_id, "00")
        ordinary.append(trace_id)
    # A refusal (4xx) is the caller's mistake, not a failure.
    refused = new_trace_id()
    answer = httpx.post(f"{server.http}/predict", json={"text": "a", "texts": ["b"]}, headers=unsampled(refused),
                        timeout=60)
    assert answer.status_code == 422
    # The failure: the RAG service cannot reach its store and answers 503. The caller asked for no sampling.
    failed = new_trace_id()
    answer = httpx.post(f"{server.http}/rag/query", json={"question": QUESTION}, headers=unsampled(failed), timeout=90)
    assert answer.status_code == 503, answer.text

    # Whole across processes: the API worker's spans and the RAG service's.
    spans = store.wait_for(failed, {semconv.SPAN_RAG_REQUEST, semconv.SPAN_RAG_QUERY})
    assert spans[semconv.SPAN_RAG_REQUEST].status.status_code == "ERROR"
    assert spans[semconv.SPAN_RAG_QUERY].status.status_code == "ERROR"
    assert in_the_rag_service(spans)
    # The API worker exported the failed trace after the ordinary ones ended: had they been kept, they would be there.
    for trace_id in [*ordinary, refused]:
        assert store.spans(trace_id) == {}, trace_id
    # Every request is in the inference log (the 4xx was refused before it reached a model), and every decision counted.
    wait_until(lambda: set(ordinary) <= logged_trace_ids(server), timeout=30, what="ordinary requests logged")
    assert metric(server, "vigil_traces_total", decision="dropped", reason="unsampled") >= len(ordinary) + 1
    assert metric(server, "vigil_traces_total", decision="kept", reason="error") >= 1
    assert metric(server, "vigil_traces_total", decision="kept", reason="sample") == 0


@pytest.mark.timeout(TIMEOUT_SECONDS)
def test_slow_requests_are_traced_whole_with_the_rag_services_part(all_slow: Server, store: TraceStore) -> None:
    server = all_slow
    predicted = httpx.post(f"{server.http}/predict", json={"text": REVIEW}, timeout=60)
    assert predicted.status_code == 200, predicted.text
    spans = store.wait_for(predicted.json()["trace_id"], {semconv.SPAN_SENTIMENT_PREDICT, semconv.SPAN_MODEL_CALL})
    assert any(name.startswith("POST /predict") for name in spans), sorted(spans)
    assert spans[semconv.SPAN_MODEL_CALL].parent_id == spans[semconv.SPAN_SENTIMENT_PREDICT].span_id
    assert spans[semconv.SPAN_MODEL_CALL].attributes[semconv.COALESCED_REQUESTS] == 1

    asked = new_trace_id()
    answered = httpx.post(f"{server.http}/rag/query", json={"question": QUESTION}, headers=unsampled(asked),
                          timeout=90)
    assert answered.status_code == 200, answered.text
    assert answered.json()["trace_id"] == asked
    spans = store.wait_for(asked, {semconv.SPAN_RAG_REQUEST, semconv.SPAN_RAG_QUERY, semconv.SPAN_RAG_EMBED,
                                   semconv.SPAN_RAG_RETRIEVE, semconv.SPAN_RAG_GENERATE})
    assert in_the_rag_service(spans)
    assert spans[semconv.SPAN_RAG_GENERATE].attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] > 0
    # The API worker kept the pending trace at its end and told the RAG service so (here the RAG service had kept its
    # slow part already); a notice it could not deliver would be a warning in the log.
    assert "could not tell vigil-rag" not in server.log.read_text()
    assert metric(server, "vigil_traces_total", decision="kept", reason="slow") >= 2
    assert metric(server, "vigil_traces_total", decision="dropped") == 0
