"""The Vigil API service: plain JSON and Open Inference Protocol v2 over REST, plus the gRPC front.

This class wires; the work happens in the model service (batching), the RAG service, `service.http` (bodies,
error answers), `service.oip` (protocol) and `service.validation` (limits). REST and gRPC both end in
:meth:`Vigil.infer`, so they share limits, batching, traces and log rows.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import time
from collections.abc import Mapping
from importlib.metadata import version as package_version
from typing import Any

import aiohttp
import bentoml
from bentoml.exceptions import BentoMLException
from fastapi import Request
from fastapi.responses import JSONResponse, Response

from service.coalescer import Coalescer
from service.errors import ApiError, OipErrorResponse, api_error, not_ready, overloaded, remote_error
from service.feedback import FeedbackDesk
from service.http import (
    create_app,
    json_response,
    openapi_body,
    read_body,
    read_json,
    retry_once_on_dropped_connection,
)
from service.invocations import parse_invocation, predictions_json
from service.oip import codec, rest
from service.oip.grpc_server import InferAnswer, InferOutcome, ModelBackend, TensorSpec, start_grpc_server
from service.pyfunc import (
    output_tensors,
    prediction_of,
    rows_from_prediction_input,
    rows_from_tensors,
    selected_outputs,
)
from service.pyfunc_front import PyfuncFront, spec_from_state
from service.pyfunc_service import pyfunc_services
from service.rag.errors import RagError, RagServiceUnavailable
from service.rag_service import RagService
from service.sentiment_service import SentimentModel
from service.serving_telemetry import (
    RAG_SERVICE_NAME,
    PredictionRecord,
    ServingTelemetry,
    relay_keep_notices,
    route_bentoml_spans_through_global_provider,
    skip_asgi_message_spans,
)
from service.shadow import ShadowBatch, ShadowJob, ShadowQueue
from service.validation import validate_texts
from telemetry.propagation import REQUEST_ID_HEADER, request_id_from
from vigil.api_token import api_token
from vigil.contracts import (
    ErrorResponse,
    Feedback,
    FeedbackBatch,
    FeedbackBatchReport,
    FeedbackRecorded,
    IngestReport,
    IngestRequest,
    ModelIdentity,
    PredictRequest,
    PredictResponse,
    RagQueryRequest,
    RagQueryResponse,
)
from vigil.settings import get_settings

logger = logging.getLogger(__name__)

VIGIL_VERSION = package_version("vigil")
RAG_MODEL = "rag"

route_bentoml_spans_through_global_provider()
skip_asgi_message_spans()

app = create_app("Vigil", VIGIL_VERSION, "Sentiment predictions over plain JSON and the Open Inference Protocol v2, "
                                         "and answers from a document collection.")
# Every refusal and failure of the JSON routes has the contract's error body.
REFUSED: dict[int | str, dict[str, Any]] = {"4XX": {"model": ErrorResponse}, "5XX": {"model": ErrorResponse}}
# The Open Inference routes refuse in the protocol's own body.
OIP_REFUSED: dict[int | str, dict[str, Any]] = {"4XX": {"model": OipErrorResponse},
                                                "5XX": {"model": OipErrorResponse}}




def response_headers(request_id: str, traceparent: str) -> dict[str, str]:
    """What every answer hands back to tie it to its trace and its log rows."""
    headers = {REQUEST_ID_HEADER: request_id}
    if traceparent:
        headers["traceparent"] = traceparent
    return headers


# Read at import: BentoML takes every model service, with its name and batching limits, at class definition, and
# imports this module again in each worker, where the same settings make the same classes.
PYFUNC_SERVICES = pyfunc_services(get_settings())


def with_pyfunc_services(cls: type) -> type:
    """One `bentoml.depends` per pyfunc model of VIGIL_MODELS, as `pyfunc_<index>` (BentoML finds them by type)."""
    for index, service in enumerate(PYFUNC_SERVICES.values()):
        setattr(cls, f"pyfunc_{index}", bentoml.depends(service))
    return cls


# Probes and scrapes would flood the trace store; every API call is traced.
@bentoml.service(name="vigil", workers=1, traffic={"timeout": 60},
                 tracing={"excluded_urls": ["/metrics", "/livez", "/readyz", "/healthz", "/api/docs"]})
@bentoml.asgi_app(app, path="/")
@with_pyfunc_services
class Vigil:
    model = bentoml.depends(SentimentModel)
    rag = bentoml.depends(RagService)

    def __init__(self) -> None:
        self.settings = get_settings()
        self.api_token = api_token(self.settings)  # a weak VIGIL_API_TOKEN stops the service at start
        self.model_name = self.settings.sentiment_model_name
        self.telemetry = ServingTelemetry(self.settings)
        batch_max_size = self.settings.limits_of(self.model_name).batch_max_size
        self.coalescer: Coalescer[str, Any] = Coalescer(self._call_model, max_items=batch_max_size,
                                                        max_in_flight=self.settings.model_calls_in_flight,
                                                        tracer=self.telemetry.tracer)
        self.feedback_desk = (FeedbackDesk(self.settings.inference_log_sqlalchemy_url,
                                           self.settings.mlflow_tracking_uri or None,
                                           self.settings.inference_log_flush_seconds)
                              if self.settings.inference_log else None)
        self._grpc_server: Any = None
        self._keep_notices: asyncio.Task[None] | None = None
        self.pyfuncs = {
            name: PyfuncFront(name, alias, functools.partial(getattr, self, f"pyfunc_{index}"), self.telemetry,
                              self.settings)
            for index, (name, alias) in enumerate(self.settings.served_models)
        }
        self.shadow = ShadowQueue.of_model(self.model_name, self.settings, self._call_shadow,
                                           self.telemetry.shadow_rows, self.telemetry.log, self.telemetry.metrics)
        self._shadow_tasks: list[asyncio.Task[None]] = []

    # --- the one prediction path ---------------------------------------------------------------------------

    async def infer(self, texts: list[str], headers: Mapping[str, str], endpoint: str,
                    protocol: str = "rest") -> InferOutcome:
        started = time.perf_counter()
        request_id = request_id_from(headers)
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
                precision=str(getattr(scored[0], "precision", "")),
                latency_ms=(time.perf_counter() - started) * 1000,
            )
            trace_id, traceparent = self.telemetry.record(span, protocol, endpoint, request_id, prediction)
        if self.shadow is not None:  # after the answer is ready; offer never waits
            self.shadow.offer(ShadowJob(request_id, trace_id, endpoint, protocol, texts))
        return InferOutcome(prediction.version, prediction.labels, prediction.scores, request_id, trace_id,
                            traceparent)

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

    async def _call_shadow(self, texts: list[str]) -> ShadowBatch:
        answered = await retry_once_on_dropped_connection(lambda: self.model.to_async.shadow(texts=texts))
        return answered if isinstance(answered, ShadowBatch) else ShadowBatch.model_validate(answered)

    # --- plain JSON ----------------------------------------------------------------------------------------

    @app.post("/predict", response_model=PredictResponse, tags=["predict"], responses=REFUSED,
              openapi_extra=openapi_body(PredictRequest, {
                  "one": {"text": "Great phone, the battery lasts all day."},
                  "many": {"texts": ["Loved it.", "Broke after a week."]}}))
    async def predict(self, request: Request) -> Response:
        """Classify one `text` or a list of `texts`."""
        body = await read_json(request, PredictRequest)
        if body.text is not None and body.texts is not None:
            raise ApiError(422, "invalid_request", "send either `text` or `texts`, not both")
        texts = [body.text] if body.text is not None else (body.texts or [])
        outcome = await self.infer(texts, dict(request.headers), "/predict")
        # The contract's PredictResponse, serialised directly (orjson): the hot path skips building the model.
        return json_response({
            "predictions": [{"label": label, "score": score}
                            for label, score in zip(outcome.labels, outcome.scores, strict=True)],
            "model": {"name": self.model_name, "version": outcome.version},
            "trace_id": outcome.trace_id,
            "request_id": outcome.request_id,
        }, headers=response_headers(outcome.request_id, outcome.traceparent))

    @app.get("/status", tags=["health"])
    async def status(self) -> dict[str, Any]:
        """Readiness details of every model: the served version, where it came from, why it is degraded if it is;
        and which RAG generator answers (the span reader, or the extractive generator and why)."""
        try:
            rag_generator = (await self.rag.to_async.stats()).get("generator")
        except Exception as error:
            rag_generator = {"answering": None, "reason": f"RAG service unreachable: {error}"}
        return {"service": "vigil", "version": VIGIL_VERSION, "models": await self._states(),
                "rag_generator": rag_generator}

    async def _states(self) -> dict[str, dict[str, Any]]:
        states: dict[str, dict[str, Any]] = {}
        describers = {self.model_name: self.model_state, **{name: f.state for name, f in self.pyfuncs.items()}}
        for name, describe in describers.items():
            try:
                states[name] = await describe()
            except Exception as error:
                states[name] = {"ready": False, "reason": f"model service unreachable: {error}"}
            states[name].pop("signature", None)
            # The model service says which version shadows and whether it scores; this worker, what it queued.
            queue = self._shadow_queues().get(name)
            service_side = states[name].get("shadow") or {}
            states[name]["shadow"] = {**queue.describe(), **service_side} if queue is not None else None
        return states

    def _shadow_queues(self) -> dict[str, ShadowQueue]:
        queues = {self.model_name: self.shadow, **{name: front.shadow for name, front in self.pyfuncs.items()}}
        return {name: queue for name, queue in queues.items() if queue is not None}

    # --- RAG -----------------------------------------------------------------------------------------------

    async def ask(self, question: str, top_k: int | None, headers: Mapping[str, str], endpoint: str,
                  protocol: str) -> tuple[RagQueryResponse, str]:
        """One RAG query through the RAG service, traced and logged; the answer with its trace id, and the
        traceparent to hand back."""
        started = time.perf_counter()
        request_id = request_id_from(headers)
        with self.telemetry.rag_span(headers, protocol, endpoint) as span:
            try:
                answer: RagQueryResponse = await retry_once_on_dropped_connection(lambda: self.rag.to_async.query(
                    question=question, top_k=self.settings.rag_top_k if top_k is None else top_k))
            except BentoMLException as error:
                raise self._refused(remote_error(error)) from None
            except aiohttp.ClientConnectionError as error:
                raise api_error(RagServiceUnavailable(f"the RAG service is unavailable: {error!r}")) from None
            trace_id, traceparent = self.telemetry.record_rag(
                span, protocol, endpoint, request_id, question, answer, (time.perf_counter() - started) * 1000)
        return answer.model_copy(update={"trace_id": trace_id, "request_id": request_id}), traceparent

    def _refused(self, error: RagError) -> ApiError:
        refused = api_error(error)
        if not isinstance(error, RagServiceUnavailable):  # the service's failure, not the caller's request
            self.telemetry.refused(refused.code)
        return refused

    async def rag_state(self) -> dict[str, Any]:
        state = dict(await self.rag.to_async.stats())
        versions = state.get("embedding_model_versions") or [""]
        return {**state, "version": versions[-1]}

    @app.post("/rag/query", response_model=RagQueryResponse, tags=["rag"], responses=REFUSED,
              openapi_extra=openapi_body(RagQueryRequest, {"question": {
                  "question": "Which NFL team represented the AFC at Super Bowl 50?", "top_k": 5}}))
    async def rag_query(self, request: Request) -> Response:
        """Answer a question from the document collection, with citations and token usage."""
        body = await read_json(request, RagQueryRequest)
        answer, traceparent = await self.ask(body.question, body.top_k, dict(request.headers), "/rag/query", "rest")
        return json_response(answer.model_dump(), headers=response_headers(answer.request_id, traceparent))

    @app.post("/rag/documents", response_model=IngestReport, tags=["rag"], responses=REFUSED,
              openapi_extra=openapi_body(IngestRequest, {"one": {"documents": [{
                  "id": "vigil-note", "title": "Vigil", "text": "Vigil keeps its vectors in Milvus Lite."}]}}))
    async def rag_documents(self, request: Request) -> Response:
        """Ingest documents (needs `Authorization: Bearer <VIGIL_API_TOKEN>`); the RAG service owns the store."""
        self._require_token(request)
        # Validated here against the contract, so a bad document is a 422 naming its field (`documents.0.id`).
        body = await read_json(request, IngestRequest)
        self.telemetry.calls_downstream(RAG_SERVICE_NAME)
        try:
            report: IngestReport = await self.rag.to_async.ingest(request=body)
        except BentoMLException as error:
            raise api_error(remote_error(error)) from None
        except aiohttp.ClientConnectionError as error:
            raise api_error(RagServiceUnavailable(f"the RAG service is unavailable: {error!r}")) from None
        return json_response(report.model_dump())

    def _require_token(self, request: Request) -> None:
        """Writes need `Authorization: Bearer <VIGIL_API_TOKEN>`: what is served, or judged, is never anonymous."""
        offered = request.headers.get("authorization", "")
        if not hmac.compare_digest(offered.encode(), f"Bearer {self.api_token}".encode()):
            raise ApiError(401, "unauthorized", "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    # --- feedback ------------------------------------------------------------------------------------------

    @app.post("/feedback", response_model=FeedbackRecorded, tags=["feedback"], responses=REFUSED,
              openapi_extra=openapi_body(Feedback, {
                  "label": {"request_id": "5f0c9a8e3b1d4c7e9a2b6d8f0e1c3a5b", "label": "positive"},
                  "rating": {"request_id": "5f0c9a8e3b1d4c7e9a2b6d8f0e1c3a5b", "score": 1, "comment": "spot on"}}))
    async def feedback(self, request: Request) -> Response:
        """The true label of a served request, or a rating, by the request id its answer carried (needs the bearer
        token). Sending the same feedback again changes nothing; a new one replaces it, and the old is kept."""
        self._require_token(request)
        item = await read_json(request, Feedback)
        return json_response((await self._feedback_desk().submit(item)).model_dump())

    @app.post("/feedback/batch", response_model=FeedbackBatchReport, tags=["feedback"], responses=REFUSED,
              openapi_extra=openapi_body(FeedbackBatch, {"labels": {"feedback": [
                  {"request_id": "5f0c9a8e3b1d4c7e9a2b6d8f0e1c3a5b", "label": "positive"},
                  {"request_id": "0a1b2c3d4e5f60718293a4b5c6d7e8f9", "label": "negative"}]}}))
    async def feedback_batch(self, request: Request) -> Response:
        """Up to 1000 feedbacks at once, for labels that arrive later in bulk; each is judged on its own and an
        unknown id or a refused label is reported in its result."""
        self._require_token(request)
        batch = await read_json(request, FeedbackBatch)
        return json_response((await self._feedback_desk().submit_many(batch.feedback)).model_dump())

    def _feedback_desk(self) -> FeedbackDesk:
        if self.feedback_desk is None:
            raise ApiError(503, "inference_log_off", "feedback is stored beside the inference log, which is off "
                                                     "(VIGIL_INFERENCE_LOG=false)")
        return self.feedback_desk

    # --- Open Inference Protocol v2 (REST) -----------------------------------------------------------------

    @app.get("/v2", response_model=rest.ServerMetadata, tags=["open-inference-v2"])
    async def server_metadata(self) -> rest.ServerMetadata:
        return rest.ServerMetadata(name="vigil", version=VIGIL_VERSION, extensions=[])

    @app.get("/v2/health/live", tags=["open-inference-v2"])
    async def server_live(self) -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", tags=["open-inference-v2"])
    async def server_ready(self) -> JSONResponse:
        ready = await self._all_ready()
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @app.get("/v2/models/{name}", response_model=rest.ModelMetadata, tags=["open-inference-v2"],
             responses=OIP_REFUSED)
    @app.get("/v2/models/{name}/versions/{version}", response_model=rest.ModelMetadata, tags=["open-inference-v2"],
             responses=OIP_REFUSED)
    async def model_metadata(self, name: str, version: str | None = None) -> rest.ModelMetadata:
        if name in self.pyfuncs:
            state = await self.pyfuncs[name].state()
            spec = spec_from_state(state)
            if spec is None:
                raise not_ready(str(state.get("reason") or "no model loaded"))
            return rest.ModelMetadata(
                name=name, versions=[str(state.get("version"))], platform=f"mlflow {state.get('runtime')}",
                inputs=[rest.TensorMetadata(name=f.name, datatype=f.datatype, shape=f.shape) for f in spec.inputs],
                outputs=[rest.TensorMetadata(name=f.name, datatype=f.datatype, shape=f.shape) for f in spec.outputs],
            )
        self._require_model(name)
        state = await self.model_state()
        return rest.ModelMetadata(
            name=self.model_name,
            versions=[str(state.get("version") or "")],
            platform="vigil_pytorch",
            inputs=[rest.TensorMetadata(name=codec.INPUT_NAME, datatype="BYTES", shape=[-1])],
            outputs=[rest.TensorMetadata(name=codec.LABEL_OUTPUT, datatype="BYTES", shape=[-1]),
                     rest.TensorMetadata(name=codec.SCORE_OUTPUT, datatype="FP32", shape=[-1])],
        )

    @app.get("/v2/models/{name}/ready", tags=["open-inference-v2"], responses=OIP_REFUSED)
    @app.get("/v2/models/{name}/versions/{version}/ready", tags=["open-inference-v2"], responses=OIP_REFUSED)
    async def model_ready(self, name: str, version: str | None = None) -> JSONResponse:
        if name in self.pyfuncs:
            ready = await self._pyfunc_ready(name)
            return JSONResponse({"name": name, "ready": ready}, status_code=200 if ready else 503)
        self._require_model(name)
        ready = await self._model_ready()
        return JSONResponse({"name": name, "ready": ready}, status_code=200 if ready else 503)

    @app.post("/v2/models/{name}/infer", response_model=rest.InferResponse, tags=["open-inference-v2"],
              responses=OIP_REFUSED)
    @app.post("/v2/models/{name}/versions/{version}/infer", response_model=rest.InferResponse,
              tags=["open-inference-v2"], responses=OIP_REFUSED)
    async def model_infer(self, name: str, request: Request, version: str | None = None) -> Response:
        if name == RAG_MODEL:
            return await self._rest_rag_infer(request)
        if name in self.pyfuncs:
            return await self._rest_pyfunc_infer(self.pyfuncs[name], request)
        self._require_model(name)
        body = await rest.read_infer_request(request)
        outcome = await self.infer(rest.texts_from_rest(body.inputs), dict(request.headers),
                                   f"/v2/models/{name}/infer")
        payload = rest.sentiment_response(body, self.model_name, outcome.version, outcome.request_id,
                                          outcome.labels, outcome.scores)
        return rest.infer_response(body, payload, response_headers(outcome.request_id, outcome.traceparent))

    async def _rest_rag_infer(self, request: Request) -> Response:
        body = await rest.read_infer_request(request)
        question = codec.single_question(rest.texts_from_rest(body.inputs, expected=codec.QUESTION_INPUT))
        answer, traceparent = await self.ask(question, None, dict(request.headers), f"/v2/models/{RAG_MODEL}/infer",
                                             "rest")
        payload = rest.rag_response(body, RAG_MODEL, answer)
        return rest.infer_response(body, payload, response_headers(answer.request_id, traceparent))

    async def _rest_pyfunc_infer(self, front: PyfuncFront, request: Request) -> Response:
        body = await rest.read_infer_request(request)
        _, spec = await front.spec()
        names = [tensor.name for tensor in body.inputs]
        if len(set(names)) != len(names):
            raise ApiError(400, "invalid_tensor", f"an input is sent twice: {names}")
        tensors = {t.name: (t.datatype, t.shape, rest.flatten(t.data)) for t in body.inputs}
        rows = rows_from_tensors(spec, tensors, front.limits.max_rows_per_request)
        outcome = await front.predict(rows, dict(request.headers), f"/v2/models/{front.name}/infer", "rest")
        outputs = selected_outputs(output_tensors(spec, outcome.rows), [o.name for o in body.outputs or []])
        payload = {"model_name": front.name, "model_version": outcome.version, "id": body.id or outcome.request_id,
                   "outputs": [{"name": o.name, "datatype": o.datatype, "shape": o.shape, "data": o.data}
                               for o in outputs]}
        return rest.infer_response(body, payload, response_headers(outcome.request_id, outcome.traceparent))

    # --- MLflow's scoring protocol ---------------------------------------------------------------------------

    @app.post("/models/{name}/invocations", tags=["mlflow-scoring"], responses=REFUSED)
    async def invocations(self, name: str, request: Request) -> Response:
        """Predict as `mlflow models serve` does: `dataframe_split`, `dataframe_records`, `instances`, `inputs`
        JSON or `text/csv` in, `{"predictions": ...}` out (with the request's `request_id`)."""
        front = self.pyfuncs.get(name)
        if front is None:
            raise ApiError(404, "model_not_found",
                           f"unknown model {name!r}; /invocations serves {sorted(self.pyfuncs)}")
        body = await read_body(request)
        _, spec = await front.spec()
        data = parse_invocation(body, request.headers.get("content-type", ""))
        rows = rows_from_prediction_input(spec, data, front.limits.max_rows_per_request)
        outcome = await front.predict(rows, dict(request.headers), f"/models/{name}/invocations", "rest")
        return Response(predictions_json(prediction_of(outcome.rows), outcome.request_id,
                                         ModelIdentity(name=name, version=outcome.version)),
                        media_type="application/json",
                        headers=response_headers(outcome.request_id, outcome.traceparent))

    def _require_model(self, name: str) -> None:
        if name != self.model_name:
            served = sorted([self.model_name, RAG_MODEL, *self.pyfuncs])
            raise ApiError(404, "model_not_found", f"unknown model {name!r}; this server serves {served}")

    async def _model_ready(self) -> bool:
        try:
            return bool((await self.model_state()).get("ready"))
        except Exception:
            return False

    async def _pyfunc_ready(self, name: str) -> bool:
        try:
            return bool((await self.pyfuncs[name].state()).get("ready"))
        except Exception:
            return False

    async def _all_ready(self) -> bool:
        """The server is ready when every model of VIGIL_MODELS is."""
        return await self._model_ready() and all([await self._pyfunc_ready(name) for name in self.pyfuncs])

    # --- lifecycle -----------------------------------------------------------------------------------------

    @bentoml.on_startup
    async def relay_sampling_decisions(self) -> None:
        """Tell the RAG service which pending traces this worker kept at their end (telemetry.sampling)."""

        async def keep_in_rag(trace_ids: list[str]) -> object:
            return await self.rag.to_async.keep_traces(trace_ids=trace_ids)

        self._keep_notices = asyncio.get_running_loop().create_task(
            relay_keep_notices({RAG_SERVICE_NAME: keep_in_rag}))

    @bentoml.on_startup
    async def drain_shadow_queues(self) -> None:
        """One task per shadowed model, scoring its queued requests off the request path (service/shadow.py)."""
        loop = asyncio.get_running_loop()
        self._shadow_tasks = [loop.create_task(queue.run()) for queue in self._shadow_queues().values()]

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
        pyfuncs = [ModelBackend(name=name, infer=functools.partial(self._grpc_pyfunc, front),
                                metadata=functools.partial(self._grpc_pyfunc_state, front), inputs=[], outputs=[],
                                platform="mlflow")
                   for name, front in self.pyfuncs.items()]
        self._grpc_server = await start_grpc_server([sentiment, rag, *pyfuncs], VIGIL_VERSION,
                                                    self.settings.serve_host, self.settings.grpc_port)

    async def _grpc_pyfunc_state(self, front: PyfuncFront) -> dict[str, Any]:
        state = await front.state()
        spec = spec_from_state(state)
        if spec is not None:  # the gRPC front publishes the served version's tensors
            state["inputs"] = [TensorSpec(f.name, f.datatype, f.shape) for f in spec.inputs]
            state["outputs"] = [TensorSpec(f.name, f.datatype, f.shape) for f in spec.outputs]
        return state

    async def _grpc_pyfunc(self, front: PyfuncFront, request: Any, metadata: dict[str, str]) -> InferAnswer:
        _, spec = await front.spec()
        rows = rows_from_tensors(spec, codec.tensors_from_grpc(request), front.limits.max_rows_per_request)
        outcome = await front.predict(rows, metadata, "grpc:ModelInfer", "grpc")
        outputs = selected_outputs(output_tensors(spec, outcome.rows), [o.name for o in request.outputs])
        response = codec.grpc_outputs_response(request, outcome.version, outcome.request_id, outputs)
        return InferAnswer(response, outcome.request_id, outcome.trace_id, outcome.traceparent)

    async def _grpc_sentiment(self, request: Any, metadata: dict[str, str]) -> InferAnswer:
        texts = codec.texts_from_grpc(request)
        outcome = await self.infer(texts, metadata, "grpc:ModelInfer", protocol="grpc")
        response = codec.grpc_response(request, outcome.version, outcome.request_id, outcome.labels, outcome.scores)
        return InferAnswer(response, outcome.request_id, outcome.trace_id, outcome.traceparent)

    async def _grpc_rag(self, request: Any, metadata: dict[str, str]) -> InferAnswer:
        question = codec.single_question(codec.texts_from_grpc(request, expected=codec.QUESTION_INPUT))
        answer, traceparent = await self.ask(question, None, metadata, "grpc:ModelInfer", "grpc")
        return InferAnswer(codec.rag_grpc_response(request, answer), answer.request_id, answer.trace_id, traceparent)

    @bentoml.on_shutdown
    async def stop(self) -> None:
        if self._grpc_server is not None:
            await self._grpc_server.stop(grace=5)
        if self._keep_notices is not None:
            self._keep_notices.cancel()
        for task in self._shadow_tasks:  # what is still queued is not scored: it answered nobody
            task.cancel()
        if self.feedback_desk is not None:
            await self.feedback_desk.close()
        # Rows and spans of the last requests are written before the process goes.
        self.telemetry.close()

    async def __is_ready__(self) -> bool:
        return await self._all_ready()
