"""The API's HTTP plumbing in-process: a body read into a contract model, refusals as the contract's error body."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import Request, Response
from fastapi.testclient import TestClient

from service.http import create_app, json_response, read_json
from vigil.contracts import ErrorResponse, IngestRequest


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = create_app("test", "0", "plumbing under test")

    @app.post("/documents")
    async def documents(request: Request) -> Response:
        body = await read_json(request, IngestRequest)
        return json_response({"documents": len(body.documents)})

    with TestClient(app) as test_client:
        yield test_client


def refusal(response: object) -> tuple[int, str, str]:
    error = ErrorResponse.model_validate_json(response.content).error  # type: ignore[attr-defined]
    return response.status_code, error.code, error.message  # type: ignore[attr-defined]


def test_a_valid_body_is_read_into_the_contract(client: TestClient) -> None:
    response = client.post("/documents", json={"documents": [{"id": "d1", "text": "Some text."}]})
    assert (response.status_code, response.json()) == (200, {"documents": 1})


def test_an_invalid_document_is_a_422_naming_its_fields(client: TestClient) -> None:
    status, code, message = refusal(client.post("/documents", json={"documents": [{"id": "", "text": ""}]}))
    assert (status, code) == (422, "invalid_request")
    assert message.startswith("documents.0.id: ") and "documents.0.text: " in message


@pytest.mark.parametrize(("body", "status", "code"), [
    (b"", 400, "empty_request"),
    (b'{"documents": ', 400, "invalid_json"),
    (b'{"documents": [{"id": "caf\xe9", "text": "x"}]}', 400, "invalid_encoding"),
    (b'{"documents": [], "extra": 1}', 422, "invalid_request"),
])
def test_malformed_bodies_are_refused_with_their_code(client: TestClient, body: bytes, status: int,
                                                      code: str) -> None:
    response = client.post("/documents", content=body, headers={"content-type": "application/json"})
    assert refusal(response)[:2] == (status, code)
