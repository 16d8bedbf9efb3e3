"""One redaction: the same text hashes the same on a sentiment span, a RAG span and an inference-log row."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import pytest
import sqlalchemy as sa
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service.rag.generators import Generation
from service.rag.pipeline import RagPipeline
from service.rag.store import Hit
from telemetry import semconv, tracing
from telemetry.inference_log import InferenceLogWriter
from telemetry.records import InferenceRecord, read_frame
from telemetry.redaction import is_text_digest, redact_text, text_digest
from vigil.contracts import Usage
from vigil.settings import Settings

TEXT = "Is the battery good for a week?"


def test_text_digest_is_prefixed_full_sha256() -> None:
    digest = text_digest(TEXT)
    assert digest == "sha256:" + hashlib.sha256(TEXT.encode("utf-8")).hexdigest()
    assert is_text_digest(digest)
    assert is_text_digest(digest.removeprefix("sha256:"))  # what inference logs stored before the prefix
    assert not is_text_digest(TEXT)
    assert not is_text_digest("sha256:" + "ab" * 8)  # too short to be a digest


def test_redact_text_keeps_hashes_or_drops() -> None:
    assert redact_text(TEXT, "keep") == TEXT
    assert redact_text(TEXT, "hash") == text_digest(TEXT)
    assert redact_text(TEXT, "drop") is None
    assert redact_text(None, "hash") is None
    with pytest.raises(ValueError):
        redact_text(TEXT, "scramble")  # type: ignore[arg-type]


class FakeEmbedder:
    name = "text-embedder"
    version = "1"

    def embed_one(self, text: str) -> list[float]:
        return [1.0, 0.0]


class FakeStore:
    kind = "milvus-lite"
    collection = "docs"

    def search(self, vector: Sequence[float], question: str, top_k: int) -> list[Hit]:
        return [Hit(id="c1", document_id="d1", title="Battery", source="d1.md", text="A week on one charge.",
                    score=0.9, similarity=0.9, embedding_model_version="1")]


class FakeGenerator:
    name = "extractive"
    model = "extractive"
    system = "vigil.extractive"
    operation = "text_completion"

    def generate(self, question: str, hits: Sequence[Hit]) -> Generation:
        return Generation(answer=hits[0].text, usage=Usage.of(12, 5), contexts_used=1, response_model=self.model)


def input_text_of(exporter: InMemorySpanExporter, name: str) -> Any:
    (span,) = [s for s in exporter.get_finished_spans() if s.name == name]
    assert span.attributes is not None
    return span.attributes[semconv.INPUT_TEXT]


def test_a_sentiment_span_a_rag_span_and_a_log_row_carry_the_same_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(_env_file=None, home=tmp_path, tracing="off", trace_raw_text=False,
                        inference_log_redaction="hash")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    # The sentiment span, as the serving path writes it under the process's tracing set-up.
    monkeypatch.setattr(tracing, "_active", tracing.build_tracing("t", settings=settings, tracer_provider=provider))
    with provider.get_tracer("test").start_as_current_span(semconv.SPAN_SENTIMENT_PREDICT) as span:
        span.set_attribute(semconv.INPUT_TEXT, tracing.text_attribute(TEXT))

    # The RAG service's span, from the real pipeline.
    pipeline = RagPipeline(embedder=cast(Any, FakeEmbedder()), store=cast(Any, FakeStore()),
                           generator=FakeGenerator(), settings=settings, tracer_provider=provider)
    assert pipeline.query(TEXT).answer == "A week on one charge."

    # The inference-log row of the same text.
    writer = InferenceLogWriter.from_settings(settings)
    writer.log(InferenceRecord(request_id="r1", trace_id="", endpoint="/query", protocol="rest", kind="rag",
                               model_name="text-embedder", model_version="1", input_text=TEXT, latency_ms=1.0))
    assert writer.close(timeout=30)
    engine = sa.create_engine(settings.inference_log_sqlalchemy_url)
    try:
        (row,) = read_frame(engine).to_dict("records")
    finally:
        engine.dispose()

    expected = text_digest(TEXT)
    assert input_text_of(exporter, semconv.SPAN_SENTIMENT_PREDICT) == expected
    assert input_text_of(exporter, semconv.SPAN_RAG_QUERY) == expected
    assert row["input_text"] == expected
    provider.shutdown()
