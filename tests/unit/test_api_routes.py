"""The API service's own routes in-process, without `bentoml serve`.

BentoML 1.4 builds the whole app with `Vigil.to_asgi()`, whose start-up resolves every `bentoml.depends` in this
process (the model from MLflow, the RAG store) and starts the gRPC server: not cheap. The routes themselves live on
the FastAPI app `service.api.app`, which finds its service instance through BentoML's current-service hook. With a
`Vigil()` set as that instance, a request runs the real route; a refusal answers before the route touches a
dependency (`bentoml.depends` resolves one on first use), so neither the model nor the RAG service is needed. What
the running service adds (batching, the dependencies, gRPC) is tested in tests/integration/test_serving.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Protocol

import pytest
from fastapi.testclient import TestClient

from service.errors import OipErrorResponse
from vigil.contracts import ErrorResponse


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    # Refusals open spans and would write log rows: no exporter, and a log that lives in memory.
    monkeypatch.setenv("VIGIL_TRACING", "off")
    monkeypatch.setenv("VIGIL_INFERENCE_LOG_URL", "sqlite://")
    from _bentoml_sdk.service import set_current_service

    from service.api import Vigil, app

    service = Vigil()
    set_current_service(service)
    try:
        # Not entered as a context manager: the app's lifespan is not what is under test.
        yield TestClient(app)
    finally:
        set_current_service(None)
        asyncio.run(service.stop())


class Answer(Protocol):
    @property
    def status_code(self) -> int: ...

    @property
    def content(self) -> bytes: ...


def refusal(response: Answer) -> tuple[int, str]:
    return response.status_code, ErrorResponse.model_validate_json(response.content).error.code


@pytest.mark.parametrize(("body", "status", "code"), [
    (b"", 400, "empty_request"),
    (b'{"text": ', 400, "invalid_json"),
    (b'{"text": "' + b"a" * (4 * 1024 * 1024) + b'"}', 413, "body_too_large"),
    (b'{"text": 42}', 422, "invalid_request"),
    (b'{"text": "a", "texts": ["b"]}', 422, "invalid_request"),
    (b'{"text": "   "}', 400, "empty_text"),
])
def test_predict_refusals(client: TestClient, body: bytes, status: int, code: str) -> None:
    response = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert refusal(response) == (status, code), response.text


@pytest.mark.parametrize(("body", "status", "code"), [
    (b"", 400, "empty_request"),
    (b'{"question": 5}', 422, "invalid_request"),
    (b'{"question": "Where is Warsaw?", "top_k": true}', 422, "invalid_request"),  # an integer, as documented
    (b'{"question": "Where is Warsaw?", "top_k": "3"}', 422, "invalid_request"),
])
def test_rag_query_refusals(client: TestClient, body: bytes, status: int, code: str) -> None:
    response = client.post("/rag/query", content=body, headers={"content-type": "application/json"})
    assert refusal(response) == (status, code), response.text


def test_open_inference_refuses_an_unknown_model_with_the_protocols_error_body(client: TestClient) -> None:
    # The protocol's body is `{"error": "<message>"}`: tritonclient.http reads `error` as a string.
    response = client.post("/v2/models/nope/infer", json={"inputs": []})
    assert response.status_code == 404
    assert OipErrorResponse.model_validate_json(response.content).error.startswith("unknown model 'nope'")
    assert set(response.json()) == {"error"}


def test_open_inference_refuses_a_binary_body_whose_tensors_do_not_fit(client: TestClient) -> None:
    header = (b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", '
              b'"parameters": {"binary_data_size": 99}}]}')
    response = client.post("/v2/models/sentiment/infer", content=header + b"\x05\x00\x00\x00hello",
                           headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 400
    assert "binary_data_size 99" in response.json()["error"]
