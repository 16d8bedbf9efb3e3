"""The CLI's side of ``POST /rag/documents``: while `vigil serve` owns Milvus Lite, ingest goes through it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import httpx
from pydantic import ValidationError

from service.rag.documents import iter_batches
from service.rag.errors import ServiceIngestError
from vigil.contracts import Document, ErrorResponse, IngestReport, IngestRequest

logger = logging.getLogger(__name__)

READY_PATH = "/readyz"
DOCUMENTS_PATH = "/rag/documents"
# Well under the service's default body limit (4 MiB) even after JSON escaping, and small enough that the
# progress bar moves.
BATCH_DOCUMENTS = 64
BATCH_CHARS = 1_000_000


def service_url(port: int, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{port}"


def service_is_up(base_url: str, timeout: float = 1.0) -> bool:
    """Whether a Vigil service answers at ``base_url`` — any HTTP answer counts, ready or not: it owns the store."""
    try:
        httpx.get(f"{base_url}{READY_PATH}", timeout=timeout)
    except httpx.HTTPError:
        return False
    return True


def ingest_via_service(base_url: str, token: str, documents: Sequence[Document], *,
                       chunk_tokens: int | None = None, overlap_tokens: int | None = None,
                       timeout: float = 600.0, progress: Callable[[int], None] | None = None) -> IngestReport:
    """Send ``documents`` in batches to the running service; one report for all of them.

    ``progress`` receives the number of documents each accepted batch held.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    report = IngestReport(documents=0, chunks=0)
    with httpx.Client(base_url=base_url, headers=headers, timeout=timeout) as client:
        for batch in iter_batches(list(documents), BATCH_DOCUMENTS, BATCH_CHARS):
            body = IngestRequest(documents=batch, chunk_tokens=chunk_tokens, overlap_tokens=overlap_tokens)
            try:
                response = client.post(DOCUMENTS_PATH, content=body.model_dump_json(exclude_none=True),
                                       headers={"Content-Type": "application/json"})
            except httpx.HTTPError as exc:
                raise ServiceIngestError(f"the Vigil service at {base_url} failed during ingest "
                                         f"({type(exc).__name__}: {exc})") from None
            if response.status_code in (401, 403):
                raise ServiceIngestError(f"the Vigil service at {base_url} refused the ingest "
                                         f"(HTTP {response.status_code}); set VIGIL_API_TOKEN to its token")
            if response.status_code != 200:
                raise ServiceIngestError(f"the Vigil service at {base_url} answered HTTP {response.status_code} "
                                         f"to {DOCUMENTS_PATH}: {_reason(response)}")
            try:
                report = report.merged(IngestReport.model_validate_json(response.content))
            except ValidationError:
                raise ServiceIngestError(f"the Vigil service at {base_url} answered {DOCUMENTS_PATH} with "
                                         "something that is not an ingest report") from None
            if progress is not None:
                progress(len(batch))
    return report


def _reason(response: httpx.Response) -> str:
    """The service's own words: its error body's code and message, or the start of whatever else it answered."""
    try:
        error = ErrorResponse.model_validate_json(response.content).error
    except ValidationError:
        return " ".join(response.text.split())[:300]
    return f"{error.code}: {error.message}"
