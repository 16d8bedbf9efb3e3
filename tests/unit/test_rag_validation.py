"""Request validation the service reuses, and the HTTP status each RAG error maps to."""

from __future__ import annotations

from http import HTTPStatus

import pytest
from bentoml.exceptions import BentoMLException

from service.errors import REFUSALS, error_response, grpc_status, refusal, remote_error
from service.rag.errors import (
    GeneratorTimeout,
    GeneratorUnavailable,
    InvalidQuestion,
    InvalidTopK,
    QuestionTooLong,
    RagError,
    RagServiceUnavailable,
    StoreUnavailable,
)
from service.rag.pipeline import validate_question, validate_top_k
from service.rag.store import MilvusStore
from vigil.contracts import IngestReport, IngestRequest
from vigil.errors import VigilError


@pytest.mark.parametrize("question", ["", "   ", "\n\t"])
def test_empty_question_is_400(question: str) -> None:
    with pytest.raises(InvalidQuestion) as caught:
        validate_question(question, 4000)
    assert refusal(caught.value) == (400, "InvalidQuestion")
    assert isinstance(caught.value, ValueError)


def test_question_over_the_limit_is_413() -> None:
    assert validate_question("  What is BM25?  ", 4000) == "What is BM25?"
    assert validate_question("x" * 4000, 4000) == "x" * 4000
    with pytest.raises(QuestionTooLong, match="4001 characters; at most 4000") as caught:
        validate_question("x" * 4001, 4000)
    assert refusal(caught.value) == (413, "QuestionTooLong")


@pytest.mark.parametrize("top_k", [0, -1, 51, 1000])
def test_top_k_outside_1_to_50_is_422(top_k: int) -> None:
    with pytest.raises(InvalidTopK) as caught:
        validate_top_k(top_k)
    assert refusal(caught.value) == (422, "InvalidTopK")


def test_top_k_bounds_are_accepted() -> None:
    assert [validate_top_k(k) for k in (1, 5, 50)] == [1, 5, 50]
    with pytest.raises(InvalidTopK):
        validate_top_k(True)


def test_fault_statuses_and_cli_friendliness() -> None:
    statuses = {cls: refusal(cls("x"))[0] for cls in (StoreUnavailable, GeneratorUnavailable, GeneratorTimeout)}
    assert statuses == {StoreUnavailable: 503, GeneratorUnavailable: 502, GeneratorTimeout: 504}
    assert all(issubclass(cls, RagError) and issubclass(cls, VigilError) for cls in statuses)


def test_credentials_never_leave_the_store_target() -> None:
    store = MilvusStore("http://user:secret@127.0.0.1:1/db?token=t0k3n", "chunks", timeout=0.5)  # nothing listens
    with pytest.raises(StoreUnavailable) as refused:
        store.open()
    assert "Milvus at http://user:***@127.0.0.1:1/db?token=*** is not reachable" in str(refused.value)
    assert "secret" not in str(refused.value) and "t0k3n" not in str(refused.value)


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


def test_every_error_type_has_its_own_code_and_a_grpc_status() -> None:
    codes = [code for _, code in REFUSALS.values()]
    assert len(codes) == len(set(codes))
    assert refusal(RagServiceUnavailable("down")) == (503, "rag_unavailable")
    assert refusal(ValueError("not ours")) == (500, "internal_error")
    assert {status: grpc_status(status).name for status in (400, 413, 422, 502, 503, 504)} == {
        400: "INVALID_ARGUMENT", 413: "INVALID_ARGUMENT", 422: "INVALID_ARGUMENT", 502: "UNAVAILABLE",
        503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def bentoml_client_raises(status: int, body: bytes) -> BentoMLException:
    """What BentoML 1.4's dependency client raises for a non-2xx answer (`_bentoml_impl.client.proxy2`)."""
    code = HTTPStatus(status)
    return BentoMLException.error_mapping.get(code, BentoMLException)(body.decode(), error_code=code)


@pytest.mark.parametrize("kind", [kind for kind in REFUSALS if kind is not RagServiceUnavailable])
def test_a_typed_error_crosses_the_service_boundary_as_itself(kind: type[RagError]) -> None:
    response = error_response(kind("the reason, with its details"))
    assert (response.status_code, response.headers["content-type"]) == (refusal(kind("x"))[0], "application/json")
    received = remote_error(bentoml_client_raises(response.status_code, bytes(response.body)))
    assert type(received) is kind and str(received) == "the reason, with its details"


def test_an_answer_that_is_not_a_typed_error_means_the_service_is_unavailable() -> None:
    crashed = bentoml_client_raises(500, b'{"error": "An unexpected error has occurred, please check the server log."}')
    overloaded = bentoml_client_raises(503, b"Service Unavailable")
    for error in (crashed, overloaded):
        received = remote_error(error)
        assert isinstance(received, RagServiceUnavailable) and refusal(received) == (503, "rag_unavailable")
