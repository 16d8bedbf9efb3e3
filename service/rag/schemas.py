"""Typed RAG payloads that stay inside the service: the store's statistics and a delete's report.

What crosses the HTTP boundary (documents, ingest reports, answers) is a wire contract, in `vigil.contracts`.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class StoreStats(BaseModel):
    store: str = Field(description="milvus-lite or milvus")
    target: str = Field(description="Milvus Lite path, or the server URI without credentials.")
    collection: str
    exists: bool
    chunks: int
    documents: int
    embedding_model_versions: list[str]
    hybrid: bool = Field(description="BM25 full-text search fused with the dense search (RRF).")


class DeleteReport(BaseModel):
    document_id: str
    chunks_deleted: int
