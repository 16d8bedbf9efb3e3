"""The Vigil API service: plain JSON and Open Inference Protocol v2 over REST, plus the gRPC front.

This class wires; the work happens in the model service (batching), `service.oip` (protocol) and
`service.validation` (limits). REST and gRPC both end in :meth:`Vigil.infer`, so they share limits, batching and
(with the observability layer) traces and log rows.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from importlib.metadata import version as package_version
from typing import Any, TypeVar

import aiohttp
import bentoml
import orjson
from _bentoml_sdk.service import get_current_service
from bentoml.exceptions import BentoMLException
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from service.coalescer import Coalescer
from service.errors import ApiError, not_ready, overloaded
from service.oip import codec
from service.oip.grpc_server import InferOutcome, ModelBackend, TensorSpec, start_grpc_server
from service.rag_service import RagService
from service.schemas import (
    InferRequest,
    InferResponse,
    ModelMetadata,
    PredictRequest,
    PredictResponse,
    RagIngestRequest,
    RagQueryRequest,
    ServerMetadata,
    TensorMetadata,
)
from service.sentiment_service import SentimentModel
from service.serving_telemetry import (
    PredictionRecord,
    ServingTelemetry,
    route_bentoml_spans_through_global_provider,
    skip_asgi_message_spans,
)
from service.validation import validate_texts
from vigil.settings import get_settings

logger = logging.getLogger(__name__)

Result = TypeVar("Result")

VIGIL_VERSION = package_version("vigil")
RAG_MODEL = "rag"

route_bentoml_spans_through_global_provider()
skip_asgi_message_spans()

app = FastAPI(
    # BentoML's middleware already opens the server span; FastAPI's own two spans per request (dependencies,
    # endpoint) only added to what the trace backend ingests. Its metrics and logs would go to OTel providers
    # nobody configures (Prometheus is BentoML's and ours), yet it asked for them on every request.
    telemetry={"tracing": False, "metrics": False, "logs": False},
    title="Vigil",
    version=VIGIL_VERSION,
    description="Sentiment predictions over plain JSON and the Open Inference Protocol v2.",
    docs_url="/api/docs",
    openapi_url="/api/openapi.json",
    redoc_url=None,
)


async def _current_service() -> Any:
    return get_current_service()


# BentoML hands each route its service instance through a plain-function dependency, which FastAPI runs on its
# thread pool: a thread hop per request on the hot path. The same lookup as a coroutine stays on the event loop.
app.dependency_overrides[get_current_service] = _current_service


@app.exception_handler(ApiError)
async def _api_error(_: Request, error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
    return JSONResponse(ApiError(422, "invalid_request", _describe_validation(error.errors())).body(), 422)


def _describe_validation(errors: Any) -> str:
    parts = []
    for item in list(errors)[:3]:
        where = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {item.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def json_response(payload: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json", headers=headers)


async def read_json(request: Request, schema: type[Any]) -> Any:
    """The body parsed into ``schema``, refusing oversize, non-UTF-8 and malformed bodies with clear 4xx."""
    limit = get_settings().max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "body_too_large", f"request body of {declared} bytes; the limit is {limit}")
    body = await request.body()
    if len(body) > limit:
        raise ApiError(413, "body_too_large", f"request body of {len(body)} bytes; the limit is {limit}")
    if not body.strip():
        raise ApiError(400, "empty_request", "the request body is empty")
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_encoding", "the request body is not valid UTF-8") from None
    try:
        return schema.model_validate_json(body)
    except ValidationError as error:
        if any(e.get("type") == "json_invalid" for e in error.errors()):
            raise ApiError(400, "invalid_json", "the request body is not valid JSON") from None
        raise ApiError(422, "invalid_request", _describe_validation(error.errors())) from None


async def retry_once_on_dropped_connection(call: Callable[[], Awaitable[Result]]) -> Result:
    """Call a dependency service; once more on a fresh connection when a pooled one closed under us.

    Seen under load on both dependencies: bursts of `ServerDisconnectedError` on pooled connections (cause not
    found). Both calls are reads (a prediction, a query), so a retry is safe even if the first one arrived.
    """
    try:
        return await call()
    except aiohttp.ClientConnectionError as error:
        logger.info("a connection to a dependency service dropped (%r); retrying once", error)
        return await call()


# Probes and scrapes would flood the trace store; every API call is traced.
@bentoml.service(name="vigil", workers=1, traffic={"timeout": 60},
                 tracing={"excluded_urls": ["/metrics", "/livez", "/readyz", "/healthz", "/api/docs"]})
@bentoml.asgi_app(app, path="/")
class Vigil:
    model = bentoml.depends(SentimentModel)
    rag = bentoml.depends(RagService)

    def __init__(self) -> None:
        self.settings = get_settings()
        self.model_name = self.settings.sentiment_model_name
        self.telemetry = ServingTelemetry(self.settings)
        self.coalescer: Coalescer[Any] = Coalescer(self._call_model, max_items=self.settings.batch_max_size,
                                                        max_in_flight=self.settings.model_calls_in_flight)
        self._grpc_server: Any = None

    # --- the one prediction path ---------------------------------------------------------------------------

    async def infer(self, texts: list[str], headers: Mapping[str, str], endpoint: str,
                    protocol: str = "rest") -> InferOutcome:
        started = time.perf_counter()
        with self.telemetry.predict_span(headers, protocol, endpoint) as span:
            try:
                validate_texts(texts, self.settings)
                scored = await self.coalescer.submit(texts)
            except ApiError as error:
                self.telemetry.refused(error.code)
                raise
            prediction = PredictionRecord(
                texts=texts, labels=[s.label for s in scored], scores=[float(s.score) for s in scored],
                version=str(scored[0].version), batch_size=int(scored[0].batch_size),
                latency_ms=(time.perf_counter() - started) * 1000,
            )
            trace_id, traceparent = self.telemetry.record(span, protocol, endpoint, prediction)
        return InferOutcome(prediction.version, prediction.labels, prediction.scores, trace_id, traceparent)

    async def _call_model(self, texts: list[str]) -> list[Any]:
        try:
            return list(await retry_once_on_dropped_connection(lambda: self.model.to_async.predict(texts=texts)))
        except aiohttp.ClientConnectionError as error:
            raise not_ready(f"the model service did not answer: {error!r}") from None
        except BentoMLException as error:
            if int(error.error_code) != 503:
                raise
            # Only on this error path is it worth a second call: was it capacity, or no model at all?
            state = await self.model_state()
            if not state.get("ready"):
                raise not_ready(str(state.get("reason") or "no model loaded")) from None
            raise overloaded() from None

    async def model_state(self) -> dict[str, Any]:
        return dict(await self.model.to_async.describe())

    # --- plain JSON ----------------------------------------------------------------------------------------

    @app.post("/predict", response_model=PredictResponse, tags=["predict"],
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": PredictRequest.model_json_schema(),
                  "examples": {"one": {"value": {"text": "Great phone, the battery lasts all day."}},
                               "many": {"value": {"texts": ["Loved it.", "Broke after a week."]}}}}}}})
    async def predict(self, request: Request) -> Response:
        """Classify one `text` or a list of `texts`."""
        body: PredictRequest = await read_json(request, PredictRequest)
        if body.text is not None and body.texts is not None:
            raise ApiError(422, "invalid_request", "send either `text` or `texts`, not both")
        texts = [body.text] if body.text is not None else (body.texts or [])
        outcome = await self.infer(texts, dict(request.headers), "/predict")
        # Serialised directly (orjson): the hot path skips FastAPI's second validation of the response model.
        return json_response({
            "predictions": [{"label": label, "score": score}
                            for label, score in zip(outcome.labels, outcome.scores, strict=True)],
            "model": {"name": self.model_name, "version": outcome.version},
            "trace_id": outcome.trace_id,
        }, headers={"traceparent": outcome.traceparent} if outcome.traceparent else None)

    @app.get("/status", tags=["health"])
    async def status(self) -> dict[str, Any]:
        """Readiness details: the served version, where it came from, and why it is degraded if it is."""
        try:
            model_state = await self.model_state()
        except Exception as error:
            model_state = {"ready": False, "reason": f"model service unreachable: {error}"}
        return {"service": "vigil", "version": VIGIL_VERSION, "models": {self.model_name: model_state}}

    # --- RAG -----------------------------------------------------------------------------------------------

    async def ask(self, question: Any, top_k: int | None, headers: Mapping[str, str], endpoint: str,
                  protocol: str) -> tuple[dict[str, Any], str, str]:
        """One RAG query through the RAG service, traced and logged; returns (answer, trace id, traceparent)."""
        started = time.perf_counter()
        with self.telemetry.rag_span(headers, protocol, endpoint) as span:
            try:
                result = await retry_once_on_dropped_connection(lambda: self.rag.to_async.query(
                    question=question, top_k=self.settings.rag_top_k if top_k is None else top_k))
            except (BentoMLException, aiohttp.ClientConnectionError) as error:
                raise ApiError(503, "rag_unavailable", f"the RAG service is unavailable: {error!r}") from None
            if "error" in result:
                problem = result["error"]
                self.telemetry.refused(problem["code"])
                raise ApiError(int(problem["status"]), problem["code"], problem["message"])
            trace_id, traceparent = self.telemetry.record_rag(
                span, protocol, endpoint, question, result, (time.perf_counter() - started) * 1000)
        return result, trace_id, traceparent

    async def rag_state(self) -> dict[str, Any]:
        state = dict(await self.rag.to_async.stats())
        versions = state.get("embedding_model_versions") or [""]
        return {**state, "version": versions[-1]}

    @app.post("/rag/query", tags=["rag"], openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": RagQueryRequest.model_json_schema(),
                             "example": {"question": "Which NFL team represented the AFC at Super Bowl 50?",
                                         "top_k": 5}}}}})
    async def rag_query(self, request: Request) -> Response:
        """Answer a question from the document collection, with citations and token usage."""
        body: RagQueryRequest = await read_json(request, RagQueryRequest)
        answer, trace_id, traceparent = await self.ask(body.question, body.top_k, dict(request.headers),
                                                       "/rag/query", "rest")
        payload = {key: answer[key] for key in ("answer", "citations", "usage", "generator")}
        payload["model"] = answer["embedding_model"]
        payload["trace_id"] = trace_id
        return json_response(payload, headers={"traceparent": traceparent} if traceparent else None)

    @app.post("/rag/documents", tags=["rag"])
    async def rag_documents(self, request: Request) -> Response:
        """Ingest documents (needs `Authorization: Bearer <VIGIL_API_TOKEN>`); the RAG service owns the store."""
        expected = self.settings.api_token.get_secret_value()
        if not expected:
            raise ApiError(403, "ingest_disabled", "ingestion through the service needs VIGIL_API_TOKEN on the server")
        offered = request.headers.get("authorization", "")
        if not hmac.compare_digest(offered.encode(), f"Bearer {expected}".encode()):
            raise ApiError(401, "unauthorized", "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
        body: RagIngestRequest = await read_json(request, RagIngestRequest)
        try:
            report = await self.rag.to_async.ingest(documents=[d.model_dump() for d in body.documents],
                                                    chunk_tokens=body.chunk_tokens,
                                                    overlap_tokens=body.overlap_tokens)
        except BentoMLException as error:
            raise ApiError(503, "rag_unavailable", f"the RAG service is unavailable: {error}") from None
        if "error" in report:
            problem = report["error"]
            raise ApiError(int(problem["status"]), problem["code"], problem["message"])
        return json_response(report)

    # --- Open Inference Protocol v2 (REST) -----------------------------------------------------------------

    @app.get("/v2", response_model=ServerMetadata, tags=["open-inference-v2"])
    async def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(name="vigil", version=VIGIL_VERSION, extensions=[])

    @app.get("/v2/health/live", tags=["open-inference-v2"])
    async def server_live(self) -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", tags=["open-inference-v2"])
    async def server_ready(self) -> JSONResponse:
        ready = await self._model_ready()
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @app.get("/v2/models/{name}", response_model=ModelMetadata, tags=["open-inference-v2"])
    @app.get("/v2/models/{name}/versions/{version}", response_model=ModelMetadata, tags=["open-inference-v2"])
    async def model_metadata(self, name: str, version: str | None = None) -> ModelMetadata:
        self._require_model(name)
        state = await self.model_state()
        return ModelMetadata(
            name=self.model_name,
            versions=[str(state.get("version") or "")],
            platform="vigil_pytorch",
            inputs=[TensorMetadata(name=codec.INPUT_NAME, datatype="BYTES", shape=[-1])],
            outputs=[TensorMetadata(name=codec.LABEL_OUTPUT, datatype="BYTES", shape=[-1]),
                     TensorMetadata(name=codec.SCORE_OUTPUT, datatype="FP32", shape=[-1])],
        )

    @app.get("/v2/models/{name}/ready", tags=["open-inference-v2"])
    @app.get("/v2/models/{name}/versions/{version}/ready", tags=["open-inference-v2"])
    async def model_ready(self, name: str, version: str | None = None) -> JSONResponse:
        self._require_model(name)
        ready = await self._model_ready()
        return JSONResponse({"name": name, "ready": ready}, status_code=200 if ready else 503)

    @app.post("/v2/models/{name}/infer", response_model=InferResponse, tags=["open-inference-v2"])
    @app.post("/v2/models/{name}/versions/{version}/infer", response_model=InferResponse,
              tags=["open-inference-v2"])
    async def model_infer(self, name: str, request: Request, version: str | None = None) -> Response:
        if name == RAG_MODEL:
            return await self._rest_rag_infer(request)
        self._require_model(name)
        body: InferRequest = await read_json(request, InferRequest)
        texts = codec.texts_from_rest(body.inputs)
        outcome = await self.infer(texts, dict(request.headers), f"/v2/models/{name}/infer")
        wanted = {o.name for o in body.outputs or []} or {codec.LABEL_OUTPUT, codec.SCORE_OUTPUT}
        unknown = wanted - {codec.LABEL_OUTPUT, codec.SCORE_OUTPUT}
        if unknown:
            raise ApiError(400, "invalid_tensor", f"unknown output(s) {sorted(unknown)}; available: label, score")
        outputs: list[dict[str, Any]] = []
        if codec.LABEL_OUTPUT in wanted:
            outputs.append({"name": codec.LABEL_OUTPUT, "datatype": "BYTES", "shape": [len(texts)],
                            "data": outcome.labels})
        if codec.SCORE_OUTPUT in wanted:
            outputs.append({"name": codec.SCORE_OUTPUT, "datatype": "FP32", "shape": [len(texts)],
                            "data": outcome.scores})
        payload: dict[str, Any] = {"model_name": self.model_name, "model_version": outcome.version,
                                   "outputs": outputs}
        if body.id is not None:
            payload["id"] = body.id
        return json_response(payload, headers={"traceparent": outcome.traceparent} if outcome.traceparent else None)

    async def _rest_rag_infer(self, request: Request) -> Response:
        body: InferRequest = await read_json(request, InferRequest)
        question = codec.single_question(codec.texts_from_rest(body.inputs, expected=codec.QUESTION_INPUT))
        answer, _, traceparent = await self.ask(question, None, dict(request.headers),
                                                f"/v2/models/{RAG_MODEL}/infer", "rest")
        usage = answer["usage"]
        payload: dict[str, Any] = {
            "model_name": RAG_MODEL, "model_version": answer["embedding_model"]["version"],
            "outputs": [
                {"name": codec.ANSWER_OUTPUT, "datatype": "BYTES", "shape": [1], "data": [answer["answer"]]},
                {"name": codec.CITATIONS_OUTPUT, "datatype": "BYTES", "shape": [1],
                 "data": [orjson.dumps(answer["citations"]).decode()]},
                {"name": codec.USAGE_OUTPUT, "datatype": "INT64", "shape": [3],
                 "data": [usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]]},
            ],
        }
        if body.id is not None:
            payload["id"] = body.id
        return json_response(payload, headers={"traceparent": traceparent} if traceparent else None)

    def _require_model(self, name: str) -> None:
        if name != self.model_name:
            raise ApiError(404, "model_not_found", f"unknown model {name!r}; this server serves {self.model_name!r}")

    async def _model_ready(self) -> bool:
        try:
            return bool((await self.model_state()).get("ready"))
        except Exception:
            return False

    # --- lifecycle -----------------------------------------------------------------------------------------

    @bentoml.on_startup
    async def start_grpc(self) -> None:
        sentiment = ModelBackend(
            name=self.model_name, infer=self._grpc_sentiment, metadata=self.model_state, platform="vigil_pytorch",
            inputs=[TensorSpec(codec.INPUT_NAME, "BYTES", [-1])],
            outputs=[TensorSpec(codec.LABEL_OUTPUT, "BYTES", [-1]), TensorSpec(codec.SCORE_OUTPUT, "FP32", [-1])],
        )
        rag = ModelBackend(
            name=RAG_MODEL, infer=self._grpc_rag, metadata=self.rag_state, platform="vigil_rag",
            inputs=[TensorSpec(codec.QUESTION_INPUT, "BYTES", [1])],
            outputs=[TensorSpec(codec.ANSWER_OUTPUT, "BYTES", [1]), TensorSpec(codec.CITATIONS_OUTPUT, "BYTES", [1]),
                     TensorSpec(codec.USAGE_OUTPUT, "INT64", [3])],
        )
        self._grpc_server = await start_grpc_server([sentiment, rag], VIGIL_VERSION, self.settings.serve_host,
                                                    self.settings.grpc_port)

    async def _grpc_sentiment(self, request: Any, metadata: dict[str, str]) -> tuple[Any, str, str]:
        texts = codec.texts_from_grpc(request)
        outcome = await self.infer(texts, metadata, "grpc:ModelInfer", protocol="grpc")
        response = codec.grpc_response(request, outcome.version, outcome.labels, outcome.scores)
        return response, outcome.traceparent, outcome.trace_id

    async def _grpc_rag(self, request: Any, metadata: dict[str, str]) -> tuple[Any, str, str]:
        question = codec.single_question(codec.texts_from_grpc(request, expected=codec.QUESTION_INPUT))
        answer, trace_id, traceparent = await self.ask(question, None, metadata, "grpc:ModelInfer", "grpc")
        response = codec.rag_grpc_response(
            request, answer["embedding_model"]["version"], answer["answer"], orjson.dumps(answer["citations"]).decode(),
            [answer["usage"]["prompt_tokens"], answer["usage"]["completion_tokens"], answer["usage"]["total_tokens"]])
        return response, traceparent, trace_id

    @bentoml.on_shutdown
    async def stop(self) -> None:
        if self._grpc_server is not None:
            await self._grpc_server.stop(grace=5)
        # Rows and spans of the last requests are written before the process goes.
        self.telemetry.close()

    async def __is_ready__(self) -> bool:
        return await self._model_ready()
