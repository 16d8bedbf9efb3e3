"""Triton's binary tensor extension over HTTP, checked against Triton's own client library: the bodies
`tritonclient.http` builds at its defaults are read, and the responses Vigil builds are read back by it."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import tritonclient.http as triton
from starlette.requests import Request
from tritonclient.http import InferResult

from service.errors import ApiError
from service.oip import rest


def as_request(body: bytes, headers: dict[str, str]) -> Request:
    sent = False

    async def receive() -> dict[str, object]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    raw_headers = [(key.lower().encode(), value.encode()) for key, value in headers.items()]
    return Request({"type": "http", "method": "POST", "path": "/v2/models/m/infer", "headers": raw_headers}, receive)


def read(body: bytes, json_size: int | None) -> rest.InferRequest:
    headers = {"content-length": str(len(body))}
    if json_size is not None:
        headers["Inference-Header-Content-Length"] = str(json_size)
    return asyncio.run(rest.read_infer_request(as_request(body, headers)))


def test_a_default_tritonclient_request_is_read_with_its_binary_tensors_decoded() -> None:
    texts = triton.InferInput("text", [3, 1], "BYTES")
    texts.set_data_from_numpy(np.array([["Loved it."], ["Awful, ça casse."], [""]], dtype=object))  # binary default
    amounts = triton.InferInput("amount", [3], "FP64")
    amounts.set_data_from_numpy(np.array([1.5, -2.25, 1e300]))
    counts = triton.InferInput("count", [3], "INT32")
    counts.set_data_from_numpy(np.array([7, -1, 2**31 - 1], dtype=np.int32), binary_data=False)  # JSON, mixed in
    body, json_size = triton.InferenceServerClient.generate_request_body([texts, amounts, counts], request_id="r-1")
    assert json_size is not None  # the client did take the binary path

    request = read(body, json_size)

    assert request.id == "r-1"
    by_name = {tensor.name: tensor for tensor in request.inputs}
    assert by_name["text"].data == ["Loved it.", "Awful, ça casse.", ""]
    assert by_name["text"].shape == [3, 1]
    assert by_name["amount"].data == [1.5, -2.25, 1e300]
    assert by_name["count"].data == [7, -1, 2**31 - 1]
    assert request.parameters == {"binary_data_output": True}  # no outputs named: all of them in binary


@pytest.mark.parametrize(("body", "json_size", "message"), [
    (b'{"inputs": []}', 99, "does not fit"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]}abc',
     None, "not valid JSON"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}abcd',
     -4, "runs past the end"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]}abcde',
     -5, "belong to no input"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "parameters": {"binary_data_size": 4}}]}abcd',
     -4, "not a whole number of FP64"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 4}}]}abcd',
     -4, "truncated"),
])
def test_a_malformed_binary_body_is_a_400_saying_what_is_wrong(body: bytes, json_size: int | None,
                                                             message: str) -> None:
    header_size = json_size if json_size is None or json_size >= 0 else len(body) + json_size
    with pytest.raises(ApiError) as refused:
        read(body, header_size)
    assert refused.value.status == 400
    assert message in refused.value.message


def payload() -> dict[str, object]:
    return {"model_name": "sentiment", "model_version": "3", "id": "r-1", "outputs": [
        {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["positive", "négative"]},
        {"name": "score", "datatype": "FP32", "shape": [2], "data": [0.75, 0.5]},
    ]}


def test_outputs_asked_in_binary_are_read_back_by_tritonclient() -> None:
    request = rest.InferRequest(inputs=[], parameters={"binary_data_output": True})
    response = rest.infer_response(request, payload(), {"x-request-id": "r-1"})

    header_length = int(response.headers["inference-header-content-length"])
    result = InferResult.from_response_body(bytes(response.body), header_length=header_length)
    assert result.as_numpy("label").tolist() == [b"positive", "négative".encode()]
    assert result.as_numpy("score").dtype == np.float32
    assert result.as_numpy("score").tolist() == [0.75, 0.5]
    assert result.get_response()["id"] == "r-1"
    assert response.headers["x-request-id"] == "r-1"


def test_only_the_outputs_asked_in_binary_are_binary() -> None:
    request = rest.InferRequest(inputs=[], outputs=[
        rest.RequestedOutput(name="label", parameters={"binary_data": False}),
        rest.RequestedOutput(name="score", parameters={"binary_data": True})])
    response = rest.infer_response(request, payload(), {})

    header_length = int(response.headers["inference-header-content-length"])
    result = InferResult.from_response_body(bytes(response.body), header_length=header_length)
    outputs = {output["name"]: output for output in result.get_response()["outputs"]}
    assert outputs["label"]["data"] == ["positive", "négative"]
    assert outputs["score"]["parameters"] == {"binary_data_size": 8}
    assert result.as_numpy("score").tolist() == [0.75, 0.5]


def test_a_json_request_gets_a_plain_json_response() -> None:
    response = rest.infer_response(rest.InferRequest(inputs=[]), payload(), {})
    assert "inference-header-content-length" not in response.headers
    assert response.headers["content-type"] == "application/json"
    result = InferResult.from_response_body(bytes(response.body))
    assert result.as_numpy("score").tolist() == [0.75, 0.5]
