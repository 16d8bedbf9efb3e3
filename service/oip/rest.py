"""Open Inference Protocol v2 over REST: its JSON bodies and their encoding, beside the gRPC one (`codec.py`).

The bodies are the protocol's, not Vigil's own contracts (`vigil.contracts`): the protocol is specified elsewhere
and its clients (Triton's `tritonclient.http`) are too. That includes Triton's binary tensor extension, which
`tritonclient.http` uses at its defaults: the body is a JSON header of `Inference-Header-Content-Length` bytes
followed by the raw tensors its inputs size with `parameters.binary_data_size`; outputs asked for with
`binary_data` (or all of them, by `binary_data_output`) are answered the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from service.errors import ApiError
from service.http import parse_json, read_body
from service.oip.codec import (
    ANSWER_OUTPUT,
    CITATIONS_OUTPUT,
    INPUT_NAME,
    LABEL_OUTPUT,
    SCORE_OUTPUT,
    USAGE_OUTPUT,
    check_text_tensor,
    raw_from_values,
    values_from_raw,
)
from vigil.contracts import RagQueryResponse

HEADER_LENGTH = "inference-header-content-length"


class InferTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    # Empty in the JSON header of a binary request: the tensor's bytes follow the header.
    data: list[Any] = Field(default_factory=list)


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


async def read_infer_request(request: Request) -> InferRequest:
    """An infer request, JSON or with binary tensors; binary inputs come back decoded into their `data`."""
    body = await read_body(request)
    declared = request.headers.get(HEADER_LENGTH)
    if declared is None:
        return parse_json(body, InferRequest)
    if not declared.isdigit() or int(declared) > len(body):
        raise ApiError(400, "invalid_request",
                       f"Inference-Header-Content-Length {declared!r} does not fit a body of {len(body)} bytes")
    header_length = int(declared)
    infer = parse_json(body[:header_length], InferRequest)
    offset = header_length
    for tensor in infer.inputs:
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is None:
            continue
        if not isinstance(size, int) or size < 0 or offset + size > len(body):
            raise ApiError(400, "invalid_tensor",
                           f"input {tensor.name!r}: binary_data_size {size!r} runs past the end of the body")
        tensor.data = values_from_raw(tensor.name, tensor.datatype, body[offset:offset + size])
        offset += size
    if offset != len(body):
        raise ApiError(400, "invalid_request",
                       f"{len(body) - offset} bytes after the binary inputs belong to no input")
    return infer


def infer_response(request: InferRequest, payload: dict[str, Any], headers: dict[str, str]) -> Response:
    """The response to ``request``: plain JSON, or a JSON header and raw outputs for those asked in binary."""
    everything_binary = bool((request.parameters or {}).get("binary_data_output"))
    asked = {o.name: bool((o.parameters or {}).get("binary_data")) for o in request.outputs or []}
    blobs: list[bytes] = []
    for output in payload["outputs"]:
        if not (everything_binary or asked.get(output["name"], False)):
            continue
        raw = raw_from_values(output["datatype"], output.pop("data"))
        output["parameters"] = {**output.get("parameters", {}), "binary_data_size": len(raw)}
        blobs.append(raw)
    header = orjson.dumps(payload)
    if not blobs:
        return Response(header, media_type="application/json", headers=headers)
    return Response(b"".join([header, *blobs]), media_type="application/octet-stream",
                    headers={**headers, HEADER_LENGTH: str(len(header))})


def texts_from_rest(inputs: Sequence[InferTensor], expected: str = INPUT_NAME) -> list[str]:
    if len(inputs) != 1:
        raise ApiError(400, "invalid_tensor", f"expected exactly one input tensor {expected!r}, got {len(inputs)}")
    tensor = inputs[0]
    data = flatten(tensor.data)
    check_text_tensor(tensor.name, tensor.datatype, tensor.shape, len(data), expected)
    texts: list[str] = []
    for index, value in enumerate(data):
        if not isinstance(value, str):
            raise ApiError(422, "invalid_type", f"text element {index} is {type(value).__name__}, expected a string")
        texts.append(value)
    return texts


def flatten(data: Sequence[Any]) -> list[Any]:
    flat: list[Any] = []
    for value in data:
        if isinstance(value, list):
            flat.extend(flatten(value))
        else:
            flat.append(value)
    return flat


def sentiment_response(request: InferRequest, model_name: str, version: str, request_id: str,
                       labels: Sequence[str], scores: Sequence[float]) -> dict[str, Any]:
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
    return _response(request, model_name, version, request_id, outputs)


def rag_response(request: InferRequest, model_name: str, answer: RagQueryResponse) -> dict[str, Any]:
    """The answer as three outputs: `answer` BYTES, `citations` BYTES (JSON), `usage` INT64 [3]."""
    usage = answer.usage
    citations = orjson.dumps([c.model_dump() for c in answer.citations]).decode()
    return _response(request, model_name, answer.model.version, answer.request_id, [
        {"name": ANSWER_OUTPUT, "datatype": "BYTES", "shape": [1], "data": [answer.answer]},
        {"name": CITATIONS_OUTPUT, "datatype": "BYTES", "shape": [1], "data": [citations]},
        {"name": USAGE_OUTPUT, "datatype": "INT64", "shape": [3],
         "data": [usage.prompt_tokens, usage.completion_tokens, usage.total_tokens]},
    ])


def _response(request: InferRequest, model_name: str, version: str, request_id: str,
              outputs: list[dict[str, Any]]) -> dict[str, Any]:
    # The protocol's `id` echoes the caller's; when it sent none, it is the request id of the log rows.
    return {"model_name": model_name, "model_version": version, "id": request.id or request_id, "outputs": outputs}
