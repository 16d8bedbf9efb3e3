"""Typed RAG payloads: what crosses the HTTP, gRPC and CLI boundaries."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

MAX_DOCUMENT_ID_CHARS = 512


class Document(BaseModel):
    """One document to ingest; ``id`` names it for re-ingest and delete."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(min_length=1, max_length=MAX_DOCUMENT_ID_CHARS)
    title: str = ""
    text: str = Field(min_length=1)
    source: str = ""


class FileError(BaseModel):
    """Why one input (a file, or one line of a JSONL file) was not ingested."""

    source: str
    error: str


class IngestRequest(BaseModel):
    """Body of ``POST /rag/documents``; chunk sizes default to the service's settings."""

    documents: list[Document] = Field(min_length=1)
    chunk_tokens: int | None = Field(None, ge=16, le=256)
    overlap_tokens: int | None = Field(None, ge=0)


class IngestReport(BaseModel):
    documents: int = Field(description="Documents ingested (their old chunks replaced).")
    chunks: int = Field(description="Chunks those documents consist of now.")
    embedded: int = Field(0, description="Chunks embedded and written; the rest were stored unchanged already.")
    removed: int = Field(0, description="Stale chunks of re-ingested documents deleted.")
    skipped: int = Field(0, description="Inputs not ingested; each is named in errors.")
    errors: list[FileError] = Field(default_factory=list)
    seconds: float = 0.0
    embedding_model: EmbeddingModelInfo | None = None

    def merged(self, other: IngestReport) -> IngestReport:
        """Both reports as one, for ingests sent in several batches."""
        return IngestReport(
            documents=self.documents + other.documents,
            chunks=self.chunks + other.chunks,
            embedded=self.embedded + other.embedded,
            removed=self.removed + other.removed,
            skipped=self.skipped + other.skipped,
            errors=[*self.errors, *other.errors],
            seconds=self.seconds + other.seconds,
            embedding_model=other.embedding_model or self.embedding_model,
        )


class Citation(BaseModel):
    """A retrieved chunk; an answer's ``[n]`` marks refer to the n-th citation (1-based)."""

    id: str
    document_id: str
    title: str
    score: float = Field(description="The ranking score: fusion (RRF) in hybrid mode, cosine in dense mode.")
    similarity: float = Field(description="Cosine similarity of chunk and question (comparable over time).")
    text: str


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens)


class GeneratorInfo(BaseModel):
    name: str
    model: str


class EmbeddingModelInfo(BaseModel):
    name: str
    version: str


class RagAnswer(BaseModel):
    answer: str
    citations: list[Citation]
    usage: Usage
    generator: GeneratorInfo
    embedding_model: EmbeddingModelInfo


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


IngestReport.model_rebuild()
