"""Request validation the service reuses, and the HTTP status each RAG error maps to."""

from __future__ import annotations

import pytest

from service.rag.errors import (
    GeneratorTimeout,
    GeneratorUnavailable,
    InvalidQuestion,
    InvalidTopK,
    QuestionTooLong,
    RagError,
    StoreUnavailable,
)
from service.rag.pipeline import validate_question, validate_top_k
from service.rag.schemas import IngestReport, IngestRequest
from service.rag.store import redact
from vigil.errors import VigilError


@pytest.mark.parametrize("question", ["", "   ", "\n\t"])
def test_empty_question_is_400(question: str) -> None:
    with pytest.raises(InvalidQuestion) as caught:
        validate_question(question, 4000)
    assert caught.value.http_status == 400
    assert isinstance(caught.value, ValueError)


def test_question_over_the_limit_is_413() -> None:
    assert validate_question("  What is BM25?  ", 4000) == "What is BM25?"
    assert validate_question("x" * 4000, 4000) == "x" * 4000
    with pytest.raises(QuestionTooLong, match="4001 characters; at most 4000") as caught:
        validate_question("x" * 4001, 4000)
    assert caught.value.http_status == 413


@pytest.mark.parametrize("top_k", [0, -1, 51, 1000])
def test_top_k_outside_1_to_50_is_422(top_k: int) -> None:
    with pytest.raises(InvalidTopK) as caught:
        validate_top_k(top_k)
    assert caught.value.http_status == 422


def test_top_k_bounds_are_accepted() -> None:
    assert [validate_top_k(k) for k in (1, 5, 50)] == [1, 5, 50]
    with pytest.raises(InvalidTopK):
        validate_top_k(True)


def test_fault_statuses_and_cli_friendliness() -> None:
    statuses = {cls: cls("x").http_status for cls in (StoreUnavailable, GeneratorUnavailable, GeneratorTimeout)}
    assert statuses == {StoreUnavailable: 503, GeneratorUnavailable: 502, GeneratorTimeout: 504}
    assert all(issubclass(cls, RagError) and issubclass(cls, VigilError) for cls in statuses)


def test_credentials_never_leave_the_store_target() -> None:
    assert redact("https://user:secret@in01.zillizcloud.com:19530/db?token=t") == "https://in01.zillizcloud.com:19530/db"
    assert redact("/home/vigil/.vigil/milvus/vigil.db") == "/home/vigil/.vigil/milvus/vigil.db"


def test_ingest_request_and_report_round_trip() -> None:
    request = IngestRequest.model_validate({"documents": [{"id": "d1", "title": "T", "text": "Body.", "source": "s"}]})
    assert request.documents[0].id == "d1" and request.chunk_tokens is None
    with pytest.raises(ValueError):
        IngestRequest.model_validate({"documents": []})
    first = IngestReport(documents=2, chunks=5, seconds=1.0)
    second = IngestReport(documents=1, chunks=1, skipped=1, errors=[{"source": "f", "error": "e"}], seconds=0.5)
    merged = first.merged(second)
    assert (merged.documents, merged.chunks, merged.skipped, merged.seconds) == (3, 6, 1, 1.5)
    assert IngestReport.model_validate_json(merged.model_dump_json()) == merged
