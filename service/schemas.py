"""Request and response schemas of the HTTP API (plain JSON and Open Inference Protocol v2)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ModelRef(BaseModel):
    name: str
    version: str


class PredictRequest(BaseModel):
    """Either one `text` or a list of `texts`."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"text": "Great phone, the battery lasts all day."},
                                        {"texts": ["Loved it.", "Broke after a week."]}]},
    )

    text: str | None = Field(None, description="One text to classify.")
    texts: list[str] | None = Field(None, description="Several texts, classified together.")


class Prediction(BaseModel):
    label: str = Field(description="positive or negative")
    score: float = Field(description="probability of the predicted label")


class PredictResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{
            "predictions": [{"label": "positive", "score": 0.97}],
            "model": {"name": "sentiment", "version": "3"},
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        }]},
    )

    predictions: list[Prediction]
    model: ModelRef
    trace_id: str = ""


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


# --- Open Inference Protocol v2 (REST) ----------------------------------------------------------------------


class InferTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any]


class RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{
            "id": "42",
            "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["Loved it.", "Awful."]}],
        }]},
    )

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferTensor]
    outputs: list[RequestedOutput] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[InferTensor]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


# --- RAG ------------------------------------------------------------------------------------------------------


class RagQueryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(description="The question, at most VIGIL_RAG_MAX_QUESTION_CHARS characters.")
    top_k: int | None = Field(None, description="Chunks to retrieve, 1..50 (default VIGIL_RAG_TOP_K).")


class RagDocument(BaseModel):
    id: str
    title: str = ""
    text: str
    source: str = ""


class RagIngestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    documents: list[RagDocument] = Field(min_length=1)
    chunk_tokens: int | None = None
    overlap_tokens: int | None = None
