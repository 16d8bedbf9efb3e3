"""Open Inference Protocol v2 over REST: its JSON bodies and their encoding, beside the gRPC one (`codec.py`).

The bodies are the protocol's, not Vigil's own contracts (`vigil.contracts`): the protocol is specified elsewhere
and its clients (Triton's `tritonclient.http`) are too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict

from service.errors import ApiError
from service.oip.codec import (
    ANSWER_OUTPUT,
    CITATIONS_OUTPUT,
    INPUT_NAME,
    LABEL_OUTPUT,
    SCORE_OUTPUT,
    USAGE_OUTPUT,
    check_text_tensor,
)
from vigil.contracts import RagQueryResponse


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


def texts_from_rest(inputs: Sequence[InferTensor], expected: str = INPUT_NAME) -> list[str]:
    if len(inputs) != 1:
        raise ApiError(400, "invalid_tensor", f"expected exactly one input tensor {expected!r}, got {len(inputs)}")
    tensor = inputs[0]
    data = _flatten(tensor.data)
    check_text_tensor(tensor.name, tensor.datatype, tensor.shape, len(data), expected)
    texts: list[str] = []
    for index, value in enumerate(data):
        if not isinstance(value, str):
            raise ApiError(422, "invalid_type", f"text element {index} is {type(value).__name__}, expected a string")
        texts.append(value)
    return texts


def _flatten(data: Sequence[Any]) -> list[Any]:
    flat: list[Any] = []
    for value in data:
        if isinstance(value, list):
            flat.extend(_flatten(value))
        else:
            flat.append(value)
    return flat


def sentiment_response(request: InferRequest, model_name: str, version: str, labels: Sequence[str],
                       scores: Sequence[float]) -> dict[str, Any]:
    """The infer response body with the outputs the request asked for (all of them when it named none)."""
    wanted = {o.name for o in request.outputs or []} or {LABEL_OUTPUT, SCORE_OUTPUT}
    unknown = wanted - {LABEL_OUTPUT, SCORE_OUTPUT}
    if unknown:
        raise ApiError(400, "invalid_tensor", f"unknown output(s) {sorted(unknown)}; available: label, score")
    outputs: list[dict[str, Any]] = []
    if LABEL_OUTPUT in wanted:
        outputs.append({"name": LABEL_OUTPUT, "datatype": "BYTES", "shape": [len(labels)], "data": labels})
    if SCORE_OUTPUT in wanted:
        outputs.append({"name": SCORE_OUTPUT, "datatype": "FP32", "shape": [len(scores)], "data": scores})
    return _response(request, model_name, version, outputs)


def rag_response(request: InferRequest, model_name: str, answer: RagQueryResponse) -> dict[str, Any]:
    """The answer as three outputs: `answer` BYTES, `citations` BYTES (JSON), `usage` INT64 [3]."""
    usage = answer.usage
    citations = orjson.dumps([c.model_dump() for c in answer.citations]).decode()
    return _response(request, model_name, answer.model.version, [
        {"name": ANSWER_OUTPUT, "datatype": "BYTES", "shape": [1], "data": [answer.answer]},
        {"name": CITATIONS_OUTPUT, "datatype": "BYTES", "shape": [1], "data": [citations]},
        {"name": USAGE_OUTPUT, "datatype": "INT64", "shape": [3],
         "data": [usage.prompt_tokens, usage.completion_tokens, usage.total_tokens]},
    ])


def _response(request: InferRequest, model_name: str, version: str,
              outputs: list[dict[str, Any]]) -> dict[str, Any]:
    payload: dict[str, Any] = {"model_name": model_name, "model_version": version, "outputs": outputs}
    if request.id is not None:
        payload["id"] = request.id
    return payload
