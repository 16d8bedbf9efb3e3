"""The RAG pipeline as its own BentoML service: the one process that owns the Milvus (Lite) store.

Milvus Lite is single-process, so queries and ingestion both go through this service's single worker; the API
service reaches it with `bentoml.depends`, which carries the trace context across.

Answers and ingest reports cross as the contract's models. A typed RAG error crosses as a response of its own
(`service.errors.error_response`), because BentoML would drop its type and, for a 5xx, its message; the API
raises it again as that type (`service.errors.remote_error`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import bentoml
from starlette.responses import Response

from service.errors import error_response
from service.http import INTERNAL_SERVICE_LOGGING, OutliveCallers
from service.rag.errors import RagError
from vigil.contracts import IngestReport, IngestRequest, RagQueryResponse
from vigil.settings import get_settings

logger = logging.getLogger(__name__)


# Threads for the sync handlers (BentoML runs one at a time by default): queries that arrive together meet in the
# encoder, which embeds their questions as one batch (`vigil.embedding.SharedCalls`), and one query's Milvus search
# overlaps another's Python work.
QUERY_THREADS = 8


@bentoml.service(name="vigil-rag", workers=1, threads=QUERY_THREADS, traffic={"timeout": 120},
                 logging=INTERNAL_SERVICE_LOGGING)
class RagService:
    def __init__(self) -> None:
        import torch

        from service.rag.pipeline import RagPipeline
        from telemetry.metrics import get_metrics
        from telemetry.tracing import setup_tracing

        self.callers = OutliveCallers()  # on SIGTERM, answers the API worker's last calls before it stops
        self.settings = get_settings()
        # One thread, as for the sentiment model: two collapse when other processes want the cores (bench/RESULTS.md).
        torch.set_num_threads(self.settings.torch_threads)
        # Only Vigil's API worker calls this service: a traceparent's flag is its sampling decision (01 kept, 00
        # pending until `keep_traces`), not a caller's wish to put under a budget of its own (telemetry.sampling).
        setup_tracing("vigil-rag", settings=self.settings, trust_remote_parents=True)
        self.metrics = get_metrics()
        self.pipeline = RagPipeline.from_settings(self.settings)
        self.store_error = ""
        try:
            self.pipeline.warm_up()
        except RagError as error:
            # The store may come back; queries try again and answer 503 meanwhile. /predict is unaffected.
            self.store_error = str(error)
            logger.error("RAG store unavailable at start: %s", error)
        # In the background: the extractive generator answers until the reader (if one is registered) is loaded.
        self.pipeline.follow_reader(wait=False)

    # The declared output is what BentoML's client parses a 2xx into; a refusal is a Response and passes through.
    @bentoml.api(output_spec=RagQueryResponse)
    def query(self, question: str, top_k: int) -> RagQueryResponse | Response:
        """The answer (its trace id left for the API to fill in), or the typed error as its own response."""
        started = time.perf_counter()
        try:
            with self.callers.call():
                answer = self.pipeline.query(question, top_k)
        except RagError as error:
            return error_response(error)
        self.metrics.rag_retrieval_seconds.observe(time.perf_counter() - started)
        return answer

    @bentoml.api(output_spec=IngestReport)
    def ingest(self, request: IngestRequest) -> IngestReport | Response:
        """Chunk, embed and store the documents (the API validated them against the contract already)."""
        try:
            with self.callers.call():
                return self.pipeline.ingest(request.documents, chunk_tokens=request.chunk_tokens,
                                            overlap_tokens=request.overlap_tokens)
        except RagError as error:
            return error_response(error)

    @bentoml.api
    def keep_traces(self, trace_ids: list[str]) -> int:
        """The API worker kept these pending traces at their end (failed, slow): export this service's part of them.
        Returns how many were held here."""
        from telemetry.tracing import keep_traces

        return keep_traces(trace_ids)

    @bentoml.api
    def stats(self) -> dict[str, Any]:
        embedder = self.pipeline.embedder
        # Which runtime embeds questions, and why not ONNX Runtime when it was asked for and failed.
        encoder = {"encoder_runtime": embedder.runtime, "encoder_fallback": embedder.onnx_error,
                   "generator": self.generator_state()}
        try:
            return {"ready": True, **self.pipeline.stats().model_dump(), **encoder}
        except RagError as error:
            return {"ready": False, "reason": str(error), **encoder}

    def generator_state(self) -> dict[str, Any]:
        """Which generator answers and why: for the reader, the version served (or why none) and the fall-backs."""
        generator = self.pipeline.generator
        describe = getattr(generator, "describe", None)
        state: dict[str, Any] = dict(describe()) if callable(describe) else {
            "configured": generator.name, "answering": generator.name, "reason": "configured (VIGIL_GENERATOR)"}
        holder = self.pipeline.reader_holder
        if holder is not None:
            state["follower"] = holder.describe()
        return state
