"""The API's HTTP plumbing in-process: a body read into a contract model within its size limit (chunked uploads
included), refusals as the contract's error body."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from fastapi import Request, Response
from fastapi.testclient import TestClient
from starlette.types import Message, Receive, Scope

from service.errors import ApiError
from service.http import create_app, json_response, read_body, read_json
from vigil.contracts import ErrorResponse, IngestRequest
from vigil.settings import get_settings


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


LIMIT = 1024  # the smallest VIGIL_MAX_BODY_BYTES the settings allow
CHUNK = 100


@pytest.fixture
def small_limit(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv("VIGIL_MAX_BODY_BYTES", str(LIMIT))
    get_settings.cache_clear()
    assert get_settings().max_body_bytes == LIMIT
    return LIMIT


class ChunkedBody:
    """An ASGI ``receive`` that sends ``total`` bytes in chunks of ``chunk`` bytes, as a chunked upload arrives, and
    counts the bytes it handed to the app."""

    def __init__(self, total: int, chunk: int = CHUNK) -> None:
        self.total, self.chunk, self.sent = total, chunk, 0

    async def __call__(self) -> Message:
        size = min(self.chunk, self.total - self.sent)
        self.sent += size
        return {"type": "http.request", "body": b"x" * size, "more_body": self.sent < self.total}


def post(receive: Receive, headers: dict[str, str] | None = None) -> Request:
    scope: Scope = {"type": "http", "method": "POST", "path": "/documents", "query_string": b"",
                    "headers": [(k.encode(), v.encode()) for k, v in (headers or {}).items()]}
    return Request(scope, receive)


def test_a_chunked_body_over_the_limit_is_refused_after_at_most_one_chunk_past_it(small_limit: int) -> None:
    body = ChunkedBody(total=1024 * 1024)  # a megabyte offered, no Content-Length
    with pytest.raises(ApiError) as refused:
        asyncio.run(read_body(post(body)))
    assert (refused.value.status, refused.value.code) == (413, "body_too_large")
    assert str(small_limit) in refused.value.message
    # Refused on the chunk that passed the limit: what was read is the limit and at most one chunk more.
    assert small_limit < body.sent <= small_limit + CHUNK


@pytest.mark.parametrize("chunk", [CHUNK, LIMIT, 1])
def test_a_chunked_body_of_exactly_the_limit_is_read_whole(small_limit: int, chunk: int) -> None:
    body = ChunkedBody(total=small_limit, chunk=chunk)
    assert asyncio.run(read_body(post(body))) == b"x" * small_limit
    assert body.sent == small_limit


def test_one_byte_over_the_limit_is_refused(small_limit: int) -> None:
    with pytest.raises(ApiError) as refused:
        asyncio.run(read_body(post(ChunkedBody(total=small_limit + 1))))
    assert (refused.value.status, refused.value.code) == (413, "body_too_large")


def test_a_declared_oversize_content_length_is_refused_without_reading(small_limit: int) -> None:
    body = ChunkedBody(total=small_limit + 1)
    with pytest.raises(ApiError) as refused:
        asyncio.run(read_body(post(body, {"content-length": str(small_limit + 1)})))
    assert (refused.value.status, refused.value.code) == (413, "body_too_large")
    assert refused.value.message == f"request body of {small_limit + 1} bytes; the limit is {small_limit}"
    assert body.sent == 0


def test_a_chunked_body_of_whitespace_is_empty(small_limit: int) -> None:
    async def blank() -> Message:
        return {"type": "http.request", "body": b"  \n ", "more_body": False}

    with pytest.raises(ApiError) as refused:
        asyncio.run(read_body(post(blank)))
    assert (refused.value.status, refused.value.code) == (400, "empty_request")


def test_a_route_answers_an_oversize_chunked_upload_with_413(client: TestClient, small_limit: int) -> None:
    def upload() -> Iterator[bytes]:  # a generator body: httpx sends it chunked, without Content-Length
        yield b'{"documents": [{"id": "d1", "text": "'
        for _ in range(small_limit // CHUNK + 1):
            yield b"y" * CHUNK
        yield b'"}]}'

    response = client.post("/documents", content=upload(), headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert refusal(response)[:2] == (413, "body_too_large")


def test_a_route_reads_a_chunked_upload_under_the_limit(client: TestClient, small_limit: int) -> None:
    def upload() -> Iterator[bytes]:
        yield b'{"documents": [{"id": "d1", '
        yield b'"text": "Some text."}]}'

    response = client.post("/documents", content=upload(), headers={"content-type": "application/json"})
    assert (response.status_code, response.json()) == (200, {"documents": 1})
