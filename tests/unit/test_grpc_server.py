"""The gRPC server holds a request message to VIGIL_MAX_BODY_BYTES, as REST holds a body: a real grpc.aio server
on loopback with a stand-in backend, no model."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from service.oip import grpc_service_pb2 as pb
from service.oip import grpc_service_pb2_grpc as pb_grpc
from service.oip.grpc_server import InferAnswer, ModelBackend, TensorSpec, server_options, start_grpc_server
from tests.conftest import free_port
from vigil.settings import get_settings

LIMIT = 4096


def test_the_server_options_carry_the_body_limit_as_the_receive_limit() -> None:
    options = dict(server_options(LIMIT))
    assert options["grpc.max_receive_message_length"] == LIMIT
    assert "grpc.max_send_message_length" not in options  # answers are not bounded, as on REST


def infer_request(payload_bytes: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="echo")
    request.inputs.add(name="text", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(b"x" * payload_bytes)
    return request


async def infer_both(port: int, received: list[int]) -> tuple[grpc.StatusCode, grpc.StatusCode]:
    async def infer(request: pb.ModelInferRequest, metadata: dict[str, str]) -> InferAnswer:
        received.append(request.ByteSize())
        return InferAnswer(response=pb.ModelInferResponse(model_name="echo", model_version="1"), request_id="r1")

    async def metadata() -> dict[str, Any]:
        return {"version": "1", "ready": True}

    backend = ModelBackend(name="echo", infer=infer, metadata=metadata, inputs=[TensorSpec("text", "BYTES", [-1])],
                           outputs=[])
    server = await start_grpc_server([backend], "test", "127.0.0.1", port)
    codes = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for size in (LIMIT // 2, 2 * LIMIT):
                try:
                    await stub.ModelInfer(infer_request(size), timeout=30)
                    codes.append(grpc.StatusCode.OK)
                except grpc.aio.AioRpcError as error:
                    codes.append(error.code())
    finally:
        await server.stop(None)
    return codes[0], codes[1]


def test_a_message_over_the_body_limit_is_refused_before_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_MAX_BODY_BYTES", str(LIMIT))
    get_settings.cache_clear()
    received: list[int] = []
    under, over = asyncio.run(infer_both(free_port(), received))
    assert (under, over) == (grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert len(received) == 1 and received[0] < LIMIT  # only the message within the limit reached the backend
