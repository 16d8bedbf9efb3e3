"""The RAG pipeline against a real Milvus Lite in a temporary home, on three articles of the shipped corpus."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from evaluations.datasets import QAItem, load_qa
from service.errors import refusal
from service.rag.documents import read_paths
from service.rag.errors import StoreUnavailable
from service.rag.pipeline import RagPipeline
from service.rag.store import MilvusStore
from telemetry import semconv
from tests.conftest import REPO_ROOT, free_port, wait_until
from vigil.contracts import Document
from vigil.settings import Settings

ARTICLES = ("Amazon rainforest", "Black Death", "Packet switching")
CORPUS = REPO_ROOT / "data" / "rag" / "corpus.jsonl"
QA = REPO_ROOT / "data" / "rag" / "qa.jsonl"


def rag_settings(home: Path) -> Settings:
    return Settings(_env_file=None, home=home, generator="extractive")


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """On a busy 2-core machine two OpenMP threads spin against each other (~25× slower single queries)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three articles as a JSONL file, plus nothing else: a real slice of the shipped corpus."""
    lines = [line for line in CORPUS.read_text(encoding="utf-8").splitlines()
             if json.loads(line)["title"] in ARTICLES]
    path = tmp_path_factory.mktemp("corpus") / "subset.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def documents(subset: Path) -> list[Document]:
    return read_paths([subset]).documents


@pytest.fixture(scope="module")
def questions(documents: list[Document]) -> list[QAItem]:
    ids = {d.id for d in documents}
    return [q for q in load_qa(QA) if set(q.passage_ids) <= ids]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rag-home")


@pytest.fixture(scope="module")
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


@pytest.fixture(scope="module")
def pipeline(home: Path, documents: list[Document], spans: tuple[TracerProvider, InMemorySpanExporter],
             ) -> Iterator[RagPipeline]:
    rag = RagPipeline.from_settings(rag_settings(home), tracer_provider=spans[0], embedder_version="7")
    report = rag.ingest(documents)
    assert (report.documents, report.skipped) == (len(documents), 0)
    yield rag
    rag.close()


def test_ingest_stores_every_passage_with_the_embedder_version(pipeline: RagPipeline,
                                                               documents: list[Document]) -> None:
    stats = pipeline.stats()
    assert stats.store == "milvus-lite" and stats.exists and stats.hybrid
    assert stats.documents == len(documents) == 67
    assert stats.chunks >= stats.documents
    assert stats.embedding_model_versions == ["7"]


def test_retrieval_finds_the_gold_passage(pipeline: RagPipeline, questions: list[QAItem]) -> None:
    assert len(questions) > 100
    sample = questions[::4]
    # The same two steps as `retrieve`, with the questions embedded in one batch to keep the test quick.
    vectors = pipeline.embedder.embed([q.question for q in sample])
    found = [any(h.document_id in q.passage_ids for h in pipeline.store.search(v, q.question, 5))
             for v, q in zip(vectors, sample, strict=True)]
    assert sum(found) / len(found) >= 0.85, f"gold passage in the top 5 for {sum(found)}/{len(found)}"
    hits = pipeline.retrieve("When did the Black Death pandemic reach Europe?", 5)
    assert hits[0].document_id.startswith("Black_Death_p")


def test_the_encoder_runs_on_onnx_exported_into_the_homes_model_cache(home: Path, pipeline: RagPipeline) -> None:
    # The settings' default runtime; the retrieval and answers the other tests check come from this export.
    assert (pipeline.embedder.runtime, pipeline.embedder.onnx_error) == ("onnx", "")
    assert pipeline.embedder.onnx_path is not None and pipeline.embedder.onnx_path.is_file()
    assert pipeline.embedder.onnx_path.is_relative_to(home / "models")


def test_query_answers_with_citations_usage_and_versions(pipeline: RagPipeline) -> None:
    question = "What is the name of the approach that breaks data into packets?"
    answer = pipeline.query(question, top_k=3)
    assert len(answer.citations) == 3
    top = answer.citations[0]
    assert top.document_id.startswith("Packet_switching_p")
    # Ranked by fusion score, and each carries the chunk's own cosine similarity to the question.
    assert [c.score for c in answer.citations] == sorted((c.score for c in answer.citations), reverse=True)
    expected = float(pipeline.embedder.embed_one(question) @ pipeline.embedder.embed_one(top.text))
    assert top.similarity == pytest.approx(expected, abs=1e-3)
    assert "[1]" in answer.answer or "[2]" in answer.answer or "[3]" in answer.answer
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    assert answer.usage.prompt_tokens > sum(len(c.text.split()) for c in answer.citations)
    assert (answer.generator.name, answer.generator.model) == ("extractive", "extractive")
    assert (answer.model.name, answer.model.version) == ("text-embedder", "7")


def test_reingest_is_idempotent_and_replaces_changed_documents(pipeline: RagPipeline,
                                                               documents: list[Document]) -> None:
    before = pipeline.stats()
    report = pipeline.ingest(documents[:10])
    assert pipeline.stats().chunks == before.chunks
    assert (report.documents, report.embedded, report.removed) == (10, 0, 0)  # nothing changed, nothing embedded

    # Replacement is checked on the dense route: Milvus Lite keeps BM25 statistics per segment, so a one-chunk
    # re-ingest ranks low on BM25 until compaction merges its segment (a ranking matter, not a storage one).
    def nearest(text: str, limit: int) -> list[tuple[str, str, str]]:
        hits = pipeline.store.search(pipeline.embedder.embed_one(text), text, limit, hybrid=False)
        return [(h.id, h.document_id, h.text) for h in hits]

    original = documents[0]
    [(old_id, _, _)] = [hit for hit in nearest(original.text, 3) if hit[1] == original.id][:1]
    changed = original.model_copy(update={"text": "Vigil replaced this passage about an imaginary forest."})
    report = pipeline.ingest([changed])
    assert (report.chunks, report.embedded) == (1, 1) and report.removed >= 1
    assert pipeline.stats().documents == before.documents
    assert nearest(changed.text, 1)[0][1:] == (original.id, changed.text)
    assert old_id not in {hit[0] for hit in nearest(original.text, 10)}
    pipeline.ingest([original])
    assert pipeline.stats().chunks == before.chunks
    assert nearest(original.text, 1)[0][0] == old_id  # the same content gets the same id back

    retitled = pipeline.ingest([original.model_copy(update={"title": "Amazonia"})])
    assert retitled.embedded == retitled.chunks >= 1  # same text, new title: every chunk is rewritten
    assert {h.title for h in pipeline.retrieve(original.text, 10) if h.document_id == original.id} == {"Amazonia"}
    pipeline.ingest([original])


def test_delete_removes_a_document(pipeline: RagPipeline, documents: list[Document]) -> None:
    victim = documents[-1]
    before = pipeline.stats()
    report = pipeline.delete(victim.id)
    assert report.chunks_deleted >= 1
    assert pipeline.stats().documents == before.documents - 1
    assert victim.id not in {h.document_id for h in pipeline.retrieve(victim.text, 10)}
    assert pipeline.delete(victim.id).chunks_deleted == 0
    pipeline.ingest([victim])


def test_query_spans_nest_and_carry_retrieval_and_token_attributes(
        pipeline: RagPipeline, spans: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    exporter = spans[1]
    exporter.clear()
    answer = pipeline.query("How was the Black Death spread?", top_k=4)
    finished: dict[str, ReadableSpan] = {s.name: s for s in exporter.get_finished_spans()}
    assert set(finished) == {semconv.SPAN_RAG_QUERY, semconv.SPAN_RAG_EMBED, semconv.SPAN_RAG_RETRIEVE,
                             semconv.SPAN_RAG_GENERATE}
    root = finished[semconv.SPAN_RAG_QUERY]
    assert root.context is not None
    for name in (semconv.SPAN_RAG_EMBED, semconv.SPAN_RAG_RETRIEVE, semconv.SPAN_RAG_GENERATE):
        child = finished[name]
        assert child.parent is not None and child.parent.span_id == root.context.span_id
    retrieve = dict(finished[semconv.SPAN_RAG_RETRIEVE].attributes or {})
    assert retrieve[semconv.RETRIEVAL_STORE] == "milvus-lite"
    assert retrieve[semconv.RETRIEVAL_COLLECTION] == "vigil_documents"
    assert retrieve[semconv.RETRIEVAL_TOP_K] == 4
    assert list(retrieve[semconv.RETRIEVAL_HIT_IDS]) == [c.id for c in answer.citations]  # type: ignore[arg-type]
    assert len(retrieve[semconv.RETRIEVAL_HIT_SCORES]) == 4  # type: ignore[arg-type]
    generate = dict(finished[semconv.SPAN_RAG_GENERATE].attributes or {})
    assert generate[semconv.GEN_AI_OPERATION_NAME] == "text_completion"
    assert generate[semconv.GEN_AI_REQUEST_MODEL] == "extractive"
    assert generate[semconv.GEN_AI_USAGE_INPUT_TOKENS] == answer.usage.prompt_tokens
    assert generate[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == answer.usage.completion_tokens
    query = dict(root.attributes or {})
    assert query[semconv.INPUT_TEXT] == "How was the Black Death spread?"
    assert query[semconv.EMBEDDING_MODEL_VERSION] == "7"


def test_a_reopened_store_loads_and_answers(home: Path, pipeline: RagPipeline) -> None:
    chunks = pipeline.stats().chunks
    pipeline.close()  # stops the in-process Milvus Lite server and releases its lock
    reopened = RagPipeline.from_settings(rag_settings(home), embedder_version="7")
    try:
        reopened.warm_up()
        assert reopened.stats().chunks == chunks
        answer = reopened.query("When did the Black Death pandemic reach Europe?")
        assert answer.citations and answer.citations[0].document_id.startswith("Black_Death_p")
    finally:
        reopened.close()
    pipeline.store.open()  # later tests of this module keep using the fixture's pipeline


def test_a_second_process_gets_store_unavailable(tmp_path: Path) -> None:
    target = tmp_path / "milvus" / "vigil.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from service.rag.store import MilvusStore
            store = MilvusStore({str(target)!r}, "vigil_documents").open()
            print("open", flush=True)
            sys.stdin.read()
            store.close()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT,
    )
    try:
        output = holder.stdout
        assert output is not None
        wait_until(lambda: output.readline().strip() == "open", timeout=60, what="the holder process")
        with pytest.raises(StoreUnavailable, match="single-process") as caught:
            MilvusStore(str(target), "vigil_documents").open()
        assert refusal(caught.value) == (503, "StoreUnavailable")
    finally:
        holder.communicate("", timeout=60)


def test_an_unreachable_milvus_server_is_store_unavailable() -> None:
    store = MilvusStore(f"http://user:secret@127.0.0.1:{free_port()}", "vigil_documents", timeout=3)
    with pytest.raises(StoreUnavailable, match="not reachable") as caught:
        store.open()
    assert "secret" not in str(caught.value)
