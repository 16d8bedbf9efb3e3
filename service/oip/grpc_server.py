"""Vigil's gRPC server: `inference.GRPCInferenceService` (Open Inference Protocol v2), health and reflection.

BentoML 1.4 has no gRPC for new-style services, so this asyncio server runs inside the API service's worker and
reaches the model through the same dependency call as REST: a gRPC request goes through the same batcher.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.errors import ApiError
from service.oip import codec
from service.oip import grpc_service_pb2 as pb
from service.oip import grpc_service_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

SERVICE_NAME = "inference.GRPCInferenceService"

_STATUS_TO_GRPC = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
    502: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


@dataclass(frozen=True)
class InferOutcome:
    version: str
    labels: list[str]
    scores: list[float]
    trace_id: str = ""  # 32 hex digits of the request's trace, when tracing is on
    traceparent: str = ""  # W3C header value to hand back to the caller


@dataclass
class ModelBackend:
    """What the gRPC front needs from the model, as plain async callables (no BentoML types)."""

    name: str
    infer: Callable[[list[str], dict[str, str], str], Awaitable[InferOutcome]]  # texts, metadata, endpoint
    metadata: Callable[[], Awaitable[dict[str, Any]]]  # {"version", "ready", ...}
    server_version: str


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, backend: ModelBackend) -> None:
        self.backend = backend

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=bool((await self._metadata()).get("ready")))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="vigil", version=self.backend.server_version, extensions=[])

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        await self._require_model(request.name, context)
        meta = await self._metadata()
        ready = bool(meta.get("ready")) and (not request.version or request.version == meta.get("version"))
        return pb.ModelReadyResponse(ready=ready)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        await self._require_model(request.name, context)
        meta = await self._metadata()
        response = pb.ModelMetadataResponse(name=self.backend.name, platform="vigil_pytorch",
                                            versions=[str(meta.get("version") or "")])
        response.inputs.add(name=codec.INPUT_NAME, datatype="BYTES", shape=[-1])
        response.outputs.add(name=codec.LABEL_OUTPUT, datatype="BYTES", shape=[-1])
        response.outputs.add(name=codec.SCORE_OUTPUT, datatype="FP32", shape=[-1])
        return response

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        await self._require_model(request.model_name, context)
        metadata = {item.key: item.value for item in (context.invocation_metadata() or ())
                    if isinstance(item.value, str)}
        try:
            texts = codec.texts_from_grpc(request)
            outcome = await self.backend.infer(texts, metadata, "grpc:ModelInfer")
            if request.model_version and request.model_version != outcome.version:
                logger.info("request asked for v%s; served by v%s", request.model_version, outcome.version)
            if outcome.traceparent:
                context.set_trailing_metadata((("traceparent", outcome.traceparent),
                                               ("vigil-trace-id", outcome.trace_id)))
            return codec.grpc_response(request, outcome.version, outcome.labels, outcome.scores)
        except ApiError as error:
            await context.abort(_STATUS_TO_GRPC.get(error.status, grpc.StatusCode.INTERNAL), error.message)
            raise  # unreachable: abort raises

    async def _require_model(self, name: str, context: Any) -> None:
        if name != self.backend.name:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model {name!r}; this server serves "
                                                           f"{self.backend.name!r}")

    async def _metadata(self) -> dict[str, Any]:
        try:
            return await self.backend.metadata()
        except Exception as error:
            logger.warning("model metadata unavailable: %s", error)
            return {"ready": False}


async def start_grpc_server(backend: ModelBackend, host: str, port: int) -> grpc.aio.Server:
    """Start the gRPC server on ``host:port`` in the running event loop; SO_REUSEPORT lets API workers share it."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1),
                                      ("grpc.max_receive_message_length", 8 * 1024 * 1024)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(backend), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name, reflection.SERVICE_NAME,
         health.SERVICE_NAME),
        server,
        pool=pb.POOL,  # our descriptors live in a private pool (see Makefile: proto)
    )
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    logger.info("gRPC (Open Inference Protocol v2) listening on %s:%d", host, port)
    return server
