"""Vigil's wire contracts: the request, response and error bodies of its JSON API, declared once.

The server (`service/`) parses requests into these models and answers in their shape; every client in the project
(`vigil eval`, `vigil eval replay`, `vigil rag ingest`) parses the answers with the same models, so a client cannot
drift from the server silently.

The Open Inference Protocol v2 bodies are not here: that protocol is specified outside Vigil, its clients are
external (Triton's), and its REST and gRPC encodings live together in `service/oip/`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_DOCUMENT_ID_CHARS = 512

# --- shared -------------------------------------------------------------------------------------------------------


class ModelIdentity(BaseModel):
    """A registered model version: what answered a request, or what an evaluation judged."""

    name: str
    version: str
    # Left out of JSON when None: the serving responses name a version, never the alias that led to it.
    alias: str | None = Field(None, description="the alias the version was asked for by, if any",
                              exclude_if=lambda value: value is None)


class ErrorDetail(BaseModel):
    code: str = Field(description="stable, machine-readable reason, e.g. `text_too_long`")
    message: str = Field(description="what was wrong, for a person")


class ErrorResponse(BaseModel):
    """The body of every refusal (4xx) and failure (5xx) of the JSON API."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"error": {"code": "text_too_long", "message": "texts[0] has 10001 characters; the limit is 10000"}}]})

    error: ErrorDetail


# --- POST /predict ------------------------------------------------------------------------------------------------


class PredictRequest(BaseModel):
    """Either one `text` or a list of `texts`."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"text": "Great phone, the battery lasts all day."},
                                        {"texts": ["Loved it.", "Broke after a week."]}]},
    )

    text: str | None = Field(None, description="One text to classify.")
    texts: list[str] | None = Field(None, description="Several texts, classified together.")


REQUEST_ID_DESCRIPTION = (
    "the request's id, also in the `x-request-id` header and on its inference-log rows: the caller's `x-request-id` "
    "when it sent a usable one, else a new one")


class PredictedLabel(BaseModel):
    label: str = Field(description="positive or negative")
    score: float = Field(description="probability of the predicted label")


class PredictResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{
            "predictions": [{"label": "positive", "score": 0.97}],
            "model": {"name": "sentiment", "version": "3"},
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "request_id": "0af7651916cd43dd8448eb211c80319c",
        }]},
    )

    predictions: list[PredictedLabel] = Field(description="one per text, in the order sent")
    model: ModelIdentity
    trace_id: str = Field("", description="the request's trace (32 hex digits); empty when it was not traced")
    request_id: str = Field("", description=REQUEST_ID_DESCRIPTION)


# --- POST /models/{name}/invocations ------------------------------------------------------------------------------


class InvocationsResponse(BaseModel):
    """MLflow's scoring answer (`{"predictions": ...}`, written by MLflow's own `predictions_to_json`) with the
    request's id and the version that answered beside it."""

    predictions: Any = Field(description="as `mlflow models serve` answers: a list of values, or of records for a "
                                         "multi-column output, or a dict of lists")
    model: ModelIdentity
    request_id: str = Field("", description=REQUEST_ID_DESCRIPTION)


# --- POST /rag/query ----------------------------------------------------------------------------------------------


class RagQueryRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"question": "Which NFL team represented the AFC at Super Bowl 50?",
                                         "top_k": 5}]},
    )

    question: str = Field(description="The question, at most VIGIL_RAG_MAX_QUESTION_CHARS characters.")
    # Bounds are checked by the RAG pipeline, which answers 422 `InvalidTopK` for the CLI and the API alike. Strict:
    # the document says integer, so `true` or "3" is refused rather than read as one.
    top_k: int | None = Field(None, strict=True, description="Chunks to retrieve, 1..50 (default VIGIL_RAG_TOP_K).")


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
    name: str = Field(description="extractive or openai")
    model: str = Field(description="the generating model as the provider names it")


class RagQueryResponse(BaseModel):
    """An answer with its citations and token usage: the body of `POST /rag/query`, and `vigil rag query --json`."""

    answer: str
    citations: list[Citation]
    usage: Usage
    generator: GeneratorInfo
    model: ModelIdentity = Field(description="the embedding model that retrieved the citations")
    trace_id: str = Field("", description="the request's trace (32 hex digits); empty when it was not traced")
    request_id: str = Field("", description=REQUEST_ID_DESCRIPTION)


# --- POST /rag/documents ------------------------------------------------------------------------------------------


class Document(BaseModel):
    """One document to ingest; ``id`` names it for re-ingest and delete."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(min_length=1, max_length=MAX_DOCUMENT_ID_CHARS)
    title: str = ""
    text: str = Field(min_length=1)
    source: str = ""


class IngestRequest(BaseModel):
    """Body of ``POST /rag/documents``; chunk sizes default to the service's settings."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"documents": [{
            "id": "vigil-note", "title": "Vigil", "text": "Vigil keeps its vectors in Milvus Lite by default."}]}]},
    )

    documents: list[Document] = Field(min_length=1)
    chunk_tokens: int | None = Field(None, ge=16, le=256)
    overlap_tokens: int | None = Field(None, ge=0)


class FileError(BaseModel):
    """Why one input (a file, or one line of a JSONL file) was not ingested."""

    source: str
    error: str


class IngestReport(BaseModel):
    documents: int = Field(description="Documents ingested (their old chunks replaced).")
    chunks: int = Field(description="Chunks those documents consist of now.")
    embedded: int = Field(0, description="Chunks embedded and written; the rest were stored unchanged already.")
    removed: int = Field(0, description="Stale chunks of re-ingested documents deleted.")
    skipped: int = Field(0, description="Inputs not ingested; each is named in errors.")
    errors: list[FileError] = Field(default_factory=list)
    seconds: float = 0.0
    embedding_model: ModelIdentity | None = None

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


# --- feedback -------------------------------------------------------------------------------------------------------

MAX_FEEDBACK_ITEMS = 1000
MAX_FEEDBACK_COMMENT_CHARS = 2000


class Feedback(BaseModel):
    """Ground truth or a rating for one served request, named by the request id its answer carried."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=64)
    label: Any = Field(None, description="The true label or value: one the model could have answered (a string "
                                         "label, a number for a regressor), or a list of them, one per row of a "
                                         "several-row request.")
    score: float | None = Field(None, allow_inf_nan=False, description="A person's rating, e.g. of a RAG answer.")
    comment: str | None = Field(None, max_length=MAX_FEEDBACK_COMMENT_CHARS)


class FeedbackBatch(BaseModel):
    """Labels that arrive later in bulk: up to 1000 feedbacks in one call."""

    model_config = ConfigDict(extra="forbid")

    feedback: list[Feedback] = Field(min_length=1, max_length=MAX_FEEDBACK_ITEMS)


class FeedbackRecorded(BaseModel):
    request_id: str
    status: str = Field(description="recorded (new or changed), unchanged (the same feedback again), or, in a batch, "
                                    "unknown_request / refused (with `error`)")
    revisions: int = Field(0, description="distinct feedbacks this request has had; the newest counts")
    model: ModelIdentity | None = None
    error: ErrorDetail | None = None


class FeedbackBatchReport(BaseModel):
    results: list[FeedbackRecorded]
    recorded: int
    unchanged: int
    refused: int = Field(description="unknown request ids and refused labels; each result says why")
