"""Open Inference Protocol v2 over gRPC: tensors <-> Python lists, and what REST shares (`rest.py`): the tensor
checks and the raw little-endian tensor layout, which gRPC's `raw_*_contents` and Triton's binary tensor extension
over HTTP both use."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from service.errors import ApiError
from service.oip import grpc_service_pb2 as pb
from vigil.contracts import RagQueryResponse

INPUT_NAME = "text"
LABEL_OUTPUT = "label"
SCORE_OUTPUT = "score"
QUESTION_INPUT = "question"
ANSWER_OUTPUT = "answer"
CITATIONS_OUTPUT = "citations"
USAGE_OUTPUT = "usage"


def check_text_tensor(name: str, datatype: str, shape: Sequence[int], count: int, expected: str = INPUT_NAME) -> None:
    """A text input must be BYTES with shape [N] or [N, 1] holding N elements."""
    if name != expected:
        raise ApiError(400, "invalid_tensor", f"unknown input {name!r}; the model takes one input {expected!r}")
    if datatype != "BYTES":
        raise ApiError(400, "invalid_tensor", f"input {name!r} has datatype {datatype}; expected BYTES")
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or any(d < 0 for d in shape):
        raise ApiError(400, "invalid_tensor", f"input {name!r} has shape {list(shape)}; expected [N] or [N, 1]")
    if math.prod(shape) != count:
        raise ApiError(400, "invalid_tensor",
                       f"input {name!r} has shape {list(shape)} but holds {count} element(s)")


def decode_utf8(raw: bytes, index: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_encoding", f"text element {index} is not valid UTF-8") from None


def texts_from_grpc(request: pb.ModelInferRequest, expected: str = INPUT_NAME) -> list[str]:
    if len(request.inputs) != 1:
        raise ApiError(400, "invalid_tensor",
                       f"expected exactly one input tensor {expected!r}, got {len(request.inputs)}")
    tensor = request.inputs[0]
    if request.raw_input_contents:
        elements = unpack_bytes_tensor(request.raw_input_contents[0])
    else:
        elements = list(tensor.contents.bytes_contents)
    check_text_tensor(tensor.name, tensor.datatype, list(tensor.shape), len(elements), expected)
    return [decode_utf8(raw, index) for index, raw in enumerate(elements)]


def unpack_bytes_tensor(raw: bytes) -> list[bytes]:
    """Triton's raw BYTES layout: each element is a 4-byte little-endian length followed by its bytes."""
    elements: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ApiError(400, "invalid_tensor", "raw BYTES tensor is truncated")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise ApiError(400, "invalid_tensor", "raw BYTES tensor is truncated")
        elements.append(raw[offset : offset + length])
        offset += length
    return elements


def pack_bytes_tensor(values: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


# OIP datatype -> the little-endian numpy dtype of its raw layout (BYTES has its own, length-prefixed).
RAW_DTYPES: dict[str, str] = {
    "BOOL": "?", "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
    "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
    "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
}


def values_from_raw(name: str, datatype: str, raw: bytes) -> list[Any]:
    """The elements of a raw tensor, flat: strings for BYTES (UTF-8), numbers or booleans otherwise."""
    if datatype == "BYTES":
        return [decode_utf8(element, index) for index, element in enumerate(unpack_bytes_tensor(raw))]
    dtype = RAW_DTYPES.get(datatype)
    if dtype is None:
        raise ApiError(400, "invalid_tensor", f"input {name!r} has unknown datatype {datatype!r}")
    if len(raw) % np.dtype(dtype).itemsize:
        raise ApiError(400, "invalid_tensor",
                       f"input {name!r}: {len(raw)} bytes is not a whole number of {datatype} elements")
    values: list[Any] = np.frombuffer(raw, dtype=dtype).tolist()
    return values


def raw_from_values(datatype: str, values: Sequence[Any]) -> bytes:
    """The raw layout of flat ``values`` of ``datatype`` (strings are UTF-8 encoded for BYTES)."""
    if datatype == "BYTES":
        return pack_bytes_tensor([v if isinstance(v, bytes) else str(v).encode() for v in values])
    return np.asarray(values, dtype=RAW_DTYPES[datatype]).tobytes()


def grpc_response(
    request: pb.ModelInferRequest, version: str, request_id: str, labels: Sequence[str], scores: Sequence[float]
) -> pb.ModelInferResponse:
    """Outputs as raw contents, as Triton answers, which both Triton's and KServe's clients read."""
    count = len(labels)
    wanted = {o.name for o in request.outputs} or {LABEL_OUTPUT, SCORE_OUTPUT}
    unknown = wanted - {LABEL_OUTPUT, SCORE_OUTPUT}
    if unknown:
        raise ApiError(400, "invalid_tensor", f"unknown output(s) {sorted(unknown)}; available: label, score")
    response = pb.ModelInferResponse(model_name=request.model_name, model_version=version,
                                     id=request.id or request_id)
    if LABEL_OUTPUT in wanted:
        response.outputs.add(name=LABEL_OUTPUT, datatype="BYTES", shape=[count])
        response.raw_output_contents.append(pack_bytes_tensor([label.encode() for label in labels]))
    if SCORE_OUTPUT in wanted:
        response.outputs.add(name=SCORE_OUTPUT, datatype="FP32", shape=[count])
        response.raw_output_contents.append(struct.pack(f"<{count}f", *scores))
    return response


def single_question(questions: list[str]) -> str:
    if len(questions) != 1:
        raise ApiError(400, "invalid_tensor", f"the rag model takes one question per request, got {len(questions)}")
    return questions[0]


def rag_grpc_response(request: pb.ModelInferRequest, answer: RagQueryResponse) -> pb.ModelInferResponse:
    """The answer as three outputs: `answer` BYTES, `citations` BYTES (JSON), `usage` INT64 [3]."""
    usage = answer.usage
    citations = orjson.dumps([c.model_dump() for c in answer.citations])
    response = pb.ModelInferResponse(model_name=request.model_name, model_version=answer.model.version,
                                     id=request.id or answer.request_id)
    response.outputs.add(name=ANSWER_OUTPUT, datatype="BYTES", shape=[1])
    response.raw_output_contents.append(pack_bytes_tensor([answer.answer.encode()]))
    response.outputs.add(name=CITATIONS_OUTPUT, datatype="BYTES", shape=[1])
    response.raw_output_contents.append(pack_bytes_tensor([citations]))
    response.outputs.add(name=USAGE_OUTPUT, datatype="INT64", shape=[3])
    response.raw_output_contents.append(
        struct.pack("<3q", usage.prompt_tokens, usage.completion_tokens, usage.total_tokens))
    return response


# OIP datatype -> the typed field of `InferTensorContents` that carries it (FP16 travels raw only).
CONTENTS_FIELDS: dict[str, str] = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def tensors_from_grpc(request: pb.ModelInferRequest) -> dict[str, tuple[str, list[int], list[Any]]]:
    """Every input of ``request`` as name -> (datatype, shape, flat values), raw or typed contents alike."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise ApiError(400, "invalid_tensor", f"{len(raw)} raw contents for {len(request.inputs)} inputs")
    tensors: dict[str, tuple[str, list[int], list[Any]]] = {}
    for index, tensor in enumerate(request.inputs):
        if tensor.name in tensors:
            raise ApiError(400, "invalid_tensor", f"input {tensor.name!r} is sent twice")
        if raw:
            values = values_from_raw(tensor.name, tensor.datatype, raw[index])
        else:
            field = CONTENTS_FIELDS.get(tensor.datatype)
            if field is None:
                raise ApiError(400, "invalid_tensor", f"input {tensor.name!r}: datatype {tensor.datatype!r} "
                                                      "cannot travel in typed contents")
            values = list(getattr(tensor.contents, field))
            if tensor.datatype == "BYTES":
                values = [decode_utf8(element, position) for position, element in enumerate(values)]
        tensors[tensor.name] = (tensor.datatype, list(tensor.shape), values)
    return tensors


def grpc_outputs_response(request: pb.ModelInferRequest, version: str, request_id: str,
                          outputs: Sequence[Any]) -> pb.ModelInferResponse:
    """A response carrying ``outputs`` (name, datatype, shape, flat data) as raw contents, as Triton answers."""
    response = pb.ModelInferResponse(model_name=request.model_name, model_version=version,
                                     id=request.id or request_id)
    for output in outputs:
        response.outputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
        response.raw_output_contents.append(raw_from_values(output.datatype, output.data))
    return response
