"""The CLI's ingest through a running service, against a local stand-in for `POST /rag/documents`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from service.rag import client
from service.rag.errors import ServiceIngestError
from tests.conftest import free_port
from tests.support.local_http import respond, serve_in_thread, stop_serving
from vigil.contracts import Document, IngestReport


@dataclass
class FakeService:
    url: str
    status: int = 200
    error: dict[str, Any] = field(default_factory=lambda: {"detail": "store is unavailable"})
    bodies: list[dict[str, Any]] = field(default_factory=list)
    authorization: list[str | None] = field(default_factory=list)


@pytest.fixture
def service() -> Iterator[FakeService]:
    state = FakeService(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._reply(503 if self.path == client.READY_PATH else 404, {"ready": False})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.bodies.append(body)
            state.authorization.append(self.headers.get("Authorization"))
            documents = body["documents"]
            report = IngestReport(documents=len(documents), chunks=2 * len(documents), seconds=0.25)
            self._reply(state.status, json.loads(report.model_dump_json()) if state.status == 200 else state.error)

        def _reply(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            respond(self, status, data)

        def log_message(self, *_: object) -> None:
            pass

    server = serve_in_thread(Handler, "rag-service-stand-in")
    state.url = client.service_url(server.server_address[1])
    yield state
    stop_serving(server)


def documents(count: int) -> list[Document]:
    return [Document(id=f"d{i}", title=f"T{i}", text=f"Text {i}.", source="corpus.jsonl") for i in range(count)]


def test_a_service_that_answers_readyz_counts_as_up_even_when_not_ready(service: FakeService) -> None:
    assert client.service_is_up(service.url)
    assert not client.service_is_up(client.service_url(free_port()))


def test_documents_go_in_batches_with_the_bearer_token(service: FakeService) -> None:
    seen: list[int] = []
    report = client.ingest_via_service(service.url, "tok3n", documents(150), chunk_tokens=128,
                                       progress=seen.append)
    assert [len(b["documents"]) for b in service.bodies] == [64, 64, 22]
    assert set(service.authorization) == {"Bearer tok3n"}
    assert service.bodies[0]["chunk_tokens"] == 128 and "overlap_tokens" not in service.bodies[0]
    assert service.bodies[0]["documents"][0] == {"id": "d0", "title": "T0", "text": "Text 0.",
                                                 "source": "corpus.jsonl"}
    assert (report.documents, report.chunks, report.seconds) == (150, 300, 0.75)
    assert seen == [64, 64, 22]


def test_a_refused_ingest_says_why(service: FakeService) -> None:
    service.status = 401
    with pytest.raises(ServiceIngestError, match="VIGIL_API_TOKEN"):
        client.ingest_via_service(service.url, "", documents(1))
    service.status = 503
    with pytest.raises(ServiceIngestError, match=r"HTTP 503.*store is unavailable"):
        client.ingest_via_service(service.url, "t", documents(1))
    service.status = 422
    service.error = {"error": {"code": "invalid_request", "message": "documents.0.id: too short"}}
    with pytest.raises(ServiceIngestError, match=r"HTTP 422 to /rag/documents: invalid_request: documents.0.id"):
        client.ingest_via_service(service.url, "t", documents(1))
