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

from service.errors import ApiError, grpc_status
from service.oip import grpc_service_pb2 as pb
from service.oip import grpc_service_pb2_grpc as pb_grpc
from telemetry.propagation import REQUEST_ID_HEADER
from vigil.settings import get_settings

logger = logging.getLogger(__name__)

SERVICE_NAME = "inference.GRPCInferenceService"


@dataclass(frozen=True)
class InferOutcome:
    version: str
    labels: list[str]
    scores: list[float]
    request_id: str
    trace_id: str = ""  # 32 hex digits of the request's trace, when tracing is on
    traceparent: str = ""  # W3C header value to hand back to the caller


@dataclass(frozen=True)
class InferAnswer:
    """What a backend answers a ModelInfer with: the response and what ties it to its trace and log rows."""

    response: pb.ModelInferResponse
    request_id: str
    trace_id: str = ""
    traceparent: str = ""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: list[int]


@dataclass
class ModelBackend:
    """One model behind the gRPC front, as plain async callables (no BentoML types).

    ``infer`` answers a request; it raises ApiError on refusals.
    """

    name: str
    infer: Callable[[pb.ModelInferRequest, dict[str, str]], Awaitable[InferAnswer]]
    metadata: Callable[[], Awaitable[dict[str, Any]]]  # {"version", "ready", ...}
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    platform: str = "vigil"


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, backends: list[ModelBackend], server_version: str) -> None:
        self.backends = {backend.name: backend for backend in backends}
        self.server_version = server_version

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        first = next(iter(self.backends.values()))
        return pb.ServerReadyResponse(ready=bool((await self._metadata(first)).get("ready")))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="vigil", version=self.server_version, extensions=[])

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        backend = await self._backend(request.name, context)
        meta = await self._metadata(backend)
        ready = bool(meta.get("ready")) and (not request.version or request.version == meta.get("version"))
        return pb.ModelReadyResponse(ready=ready)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        backend = await self._backend(request.name, context)
        meta = await self._metadata(backend)
        response = pb.ModelMetadataResponse(name=backend.name, platform=backend.platform,
                                            versions=[str(meta.get("version") or "")])
        # A backend whose tensors follow the served version (a pyfunc model's signature) gives them with its state.
        for spec in meta.get("inputs") or backend.inputs:
            response.inputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        for spec in meta.get("outputs") or backend.outputs:
            response.outputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        return response

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        backend = await self._backend(request.model_name, context)
        metadata = {item.key: item.value for item in (context.invocation_metadata() or ())
                    if isinstance(item.value, str)}
        try:
            answer = await backend.infer(request, metadata)
        except ApiError as error:
            await context.abort(grpc_status(error.status), error.message)
            raise  # unreachable: abort raises
        trailing = [(REQUEST_ID_HEADER, answer.request_id)]
        if answer.traceparent:
            trailing += [("traceparent", answer.traceparent), ("vigil-trace-id", answer.trace_id)]
        context.set_trailing_metadata(tuple(trailing))
        return answer.response

    async def _backend(self, name: str, context: Any) -> ModelBackend:
        backend = self.backends.get(name)
        if backend is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"unknown model {name!r}; this server serves {sorted(self.backends)}")
        assert backend is not None
        return backend

    async def _metadata(self, backend: ModelBackend) -> dict[str, Any]:
        try:
            return await backend.metadata()
        except Exception as error:  # readiness questions answer "not ready", never fail
            logger.warning("model metadata unavailable: %s", error)
            return {"ready": False}


def server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Channel options of the gRPC server: SO_REUSEPORT lets API workers share the port, and a request message is
    held to ``max_message_bytes`` (VIGIL_MAX_BODY_BYTES, the bound of a REST body), so one setting bounds a request
    on both protocols. gRPC itself refuses a larger message with RESOURCE_EXHAUSTED before a servicer sees it.

    The send limit stays at gRPC's default (unbounded on a server) on purpose: an answer can be larger than its
    request (a pyfunc model's output rows, a RAG answer with its citations), REST does not bound answers either, and
    capping them would only turn an answer already computed and held in memory into an error.
    """
    return [("grpc.so_reuseport", 1), ("grpc.max_receive_message_length", max_message_bytes)]


async def start_grpc_server(backends: list[ModelBackend], server_version: str, host: str, port: int
                            ) -> grpc.aio.Server:
    """Start the gRPC server on ``host:port`` in the running event loop; SO_REUSEPORT lets API workers share it."""
    server = grpc.aio.server(options=server_options(get_settings().max_body_bytes))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(backends, server_version), server)
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
