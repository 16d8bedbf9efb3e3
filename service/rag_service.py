"""The RAG pipeline as its own BentoML service: the one process that owns the Milvus (Lite) store.

Milvus Lite is single-process, so queries and ingestion both go through this service's single worker; the API
service reaches it with `bentoml.depends`, which carries the trace context across.
"""

from __future__ import annotations

import logging
from typing import Any

import bentoml

from vigil.settings import get_settings

logger = logging.getLogger(__name__)


@bentoml.service(name="vigil-rag", workers=1, traffic={"timeout": 120})
class RagService:
    def __init__(self) -> None:
        import torch

        from service.rag.errors import RagError
        from service.rag.pipeline import RagPipeline
        from service.sentiment_service import torch_threads
        from telemetry.metrics import get_metrics
        from telemetry.tracing import setup_tracing

        # One thread, as for the sentiment model: two made one question's embedding 602 ms instead of 24 under load.
        torch.set_num_threads(torch_threads())
        self.settings = get_settings()
        setup_tracing("vigil-rag", settings=self.settings)
        self.metrics = get_metrics()
        self.pipeline = RagPipeline.from_settings(self.settings)
        self.store_error = ""
        try:
            self.pipeline.warm_up()
        except RagError as error:
            # The store may come back; queries try again and answer 503 meanwhile. /predict is unaffected.
            self.store_error = str(error)
            logger.error("RAG store unavailable at start: %s", error)

    @bentoml.api
    def query(self, question: str, top_k: int) -> dict[str, Any]:
        """The answer as a dict, or {"error": {...}} with the HTTP status the API should answer with."""
        import time

        from service.rag.errors import RagError

        started = time.perf_counter()
        try:
            answer = self.pipeline.query(question, top_k)
        except RagError as error:
            return {"error": {"status": error.http_status, "code": type(error).__name__, "message": str(error)}}
        self.metrics.rag_retrieval_seconds.observe(time.perf_counter() - started)
        return answer.model_dump()

    @bentoml.api
    def ingest(self, documents: list[dict[str, Any]], chunk_tokens: int | None = None,
               overlap_tokens: int | None = None) -> dict[str, Any]:
        from service.rag.errors import RagError
        from service.rag.schemas import Document

        try:
            report = self.pipeline.ingest([Document.model_validate(d) for d in documents],
                                          chunk_tokens=chunk_tokens, overlap_tokens=overlap_tokens)
        except RagError as error:
            return {"error": {"status": error.http_status, "code": type(error).__name__, "message": str(error)}}
        return report.model_dump()

    @bentoml.api
    def stats(self) -> dict[str, Any]:
        from service.rag.errors import RagError

        try:
            return {"ready": True, **self.pipeline.stats().model_dump()}
        except RagError as error:
            return {"ready": False, "reason": str(error)}
