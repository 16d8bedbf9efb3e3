"""`vigil eval rag` without servers: the QA data it asks, its refusal to fight `vigil serve` for Milvus Lite, and a
LangSmith that cannot be reached degrading to a message."""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from evaluations.datasets import resolve_qa
from evaluations.rag import InProcessAnswerer, log_to_langsmith, score_outputs, summarize
from evaluations.schemas import DatasetInfo, RagEvaluation, RagQuestionResult
from tests.conftest import free_port
from tests.support.local_http import serve_in_thread, stop_serving
from vigil.contracts import ModelIdentity
from vigil.errors import VigilError
from vigil.settings import get_settings


def write_qa(path: Path, count: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": f"Question {i}?", "answers": [f"answer {i}"],
                                        "passage_ids": [f"Doc_{i % 3}_p00{i % 2}"]}) + "\n" for i in range(count)))
    return path


def test_qa_limit_is_a_seeded_sample_with_an_order_free_fingerprint(tmp_path: Path) -> None:
    path = write_qa(tmp_path / "qa.jsonl", 20)
    whole = resolve_qa(path)
    assert len(whole.items) == 20 and whole.documents == ["Doc_0", "Doc_1", "Doc_2"]
    sample = resolve_qa(path, limit=5, seed=3)
    assert len(sample.items) == 5 and [i.id for i in sample.items] == [i.id for i in resolve_qa(path, 5, 3).items]
    assert sample.fingerprint != whole.fingerprint
    reversed_file = tmp_path / "reversed.jsonl"
    reversed_file.write_text("".join(reversed(path.read_text().splitlines(keepends=True))))
    assert resolve_qa(reversed_file).fingerprint == whole.fingerprint


def test_bad_qa_files_are_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(VigilError, match="no QA file"):
        resolve_qa(tmp_path / "missing.jsonl")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"id": "q1", "question": "no answers"}\n')
    with pytest.raises(VigilError, match="not a QA file"):
        resolve_qa(broken)


class _Ready(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        return None


@pytest.fixture
def service_on_port() -> Iterator[int]:
    """Something answering /readyz where `vigil serve` would: what a running service looks like to the CLI."""
    server = serve_in_thread(_Ready, "vigil-readyz-stand-in", port=free_port())
    yield server.server_address[1]
    stop_serving(server)


def test_in_process_refuses_while_a_service_owns_milvus_lite(
    service_on_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIGIL_HOME", str(tmp_path))
    monkeypatch.setenv("VIGIL_HTTP_PORT", str(service_on_port))
    monkeypatch.delenv("VIGIL_MILVUS_URI", raising=False)
    with pytest.raises(VigilError, match=f"--endpoint http://127.0.0.1:{service_on_port}"):
        InProcessAnswerer.open(get_settings())


def test_unreachable_langsmith_is_a_message_not_a_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    closed = free_port()
    monkeypatch.setenv("LANGSMITH_API_KEY", "ls-test")
    monkeypatch.setenv("LANGSMITH_ENDPOINT", f"http://127.0.0.1:{closed}")
    data = resolve_qa(write_qa(tmp_path / "qa.jsonl", 2))
    outputs = {"answer": "answer 0", "passages": ["Doc_0_p000"], "contexts": ["answer 0 is here"], "usage": {}}
    results = [RagQuestionResult(
        id=item.id, question=item.question, gold_answers=item.answers, gold_passages=item.passage_ids,
        answer="answer 0", passages=["Doc_0_p000"], first_relevant_rank=1,
        scores=score_outputs(outputs, {"answers": item.answers, "passage_ids": item.passage_ids}, 5),
        prompt_tokens=10, completion_tokens=2, total_tokens=12, latency_ms=1.0) for item in data.items]
    report = RagEvaluation(
        dataset=DatasetInfo(name="qa", fingerprint=data.fingerprint, rows=2, domains=[], description=""),
        source="in-process", k=5, generator="extractive", generator_model="extractive",
        embedder=ModelIdentity(name="text-embedder", version="1"), metrics=summarize(results, 5), results=results,
    )
    outcome = log_to_langsmith(get_settings(), data, report, answers=[], timeout_ms=2000)
    assert outcome.status == "failed"
    assert f"127.0.0.1:{closed}" in outcome.message and "in MLflow" in outcome.message
    assert outcome.dataset == f"vigil-rag-qa-{data.fingerprint}"
