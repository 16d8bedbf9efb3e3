"""The API worker's side of one pyfunc model: its signature, its coalescer, its traces, metrics and log rows.

Open Inference (REST and gRPC) and MLflow's `/invocations` all end in :meth:`PyfuncFront.predict`, so limits,
batching, traces and log rows are shared, as sentiment's are in `Vigil.infer`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from bentoml.exceptions import BentoMLException

from service.coalescer import Coalescer
from service.errors import ApiError, not_ready, overloaded
from service.http import retry_once_on_dropped_connection
from service.pyfunc import PredictedRow
from service.serving_telemetry import ServingTelemetry, mark_failure
from service.shadow import ShadowBatch, ShadowJob, ShadowQueue
from telemetry import semconv
from telemetry.propagation import request_id_from
from telemetry.records import InferenceRecord
from vigil.settings import Settings
from vigil.signature import FieldSpec, ModelSignatureSpec


@dataclass(frozen=True)
class RowsOutcome:
    version: str
    rows: list[PredictedRow]
    request_id: str
    trace_id: str
    traceparent: str


def spec_from_state(state: Mapping[str, Any]) -> ModelSignatureSpec | None:
    """The signature the model service published with its state, or None while no version is loaded."""
    signature = state.get("signature")
    if not signature:
        return None
    return ModelSignatureSpec(inputs=[FieldSpec(**field) for field in signature["inputs"]],
                              outputs=[FieldSpec(**field) for field in signature["outputs"]],
                              tensor_based=bool(signature["tensor_based"]))


class PyfuncFront:
    def __init__(self, name: str, alias: str, service: Callable[[], Any], telemetry: ServingTelemetry,
                 settings: Settings) -> None:
        self.name = name
        self.alias = alias
        self._service = service  # the dependency proxy, looked up when first used (BentoML resolves it lazily)
        self.telemetry = telemetry
        self.settings = settings
        self.limits = settings.limits_of(name)
        self.coalescer: Coalescer[dict[str, Any], PredictedRow] = Coalescer(
            self._call, max_items=self.limits.batch_max_size, max_in_flight=settings.model_calls_in_flight,
            tracer=telemetry.tracer)
        self._spec: tuple[str, ModelSignatureSpec] | None = None  # (version, its signature)
        self.shadow = ShadowQueue.of_model(name, settings, self._call_shadow, self._shadow_rows, telemetry.log,
                                           telemetry.metrics)

    async def state(self) -> dict[str, Any]:
        state = dict(await self._service().to_async.describe())
        spec = spec_from_state(state)
        if spec is not None:
            self._spec = (str(state.get("version")), spec)
        return state

    async def spec(self) -> tuple[str, ModelSignatureSpec]:
        """The served version and its signature, asked of the model service once per version."""
        if self._spec is None:
            state = await self.state()
            if self._spec is None:
                raise not_ready(str(state.get("reason") or "no model loaded"))
        assert self._spec is not None
        return self._spec

    async def predict(self, rows: list[dict[str, Any]], headers: Mapping[str, str], endpoint: str,
                      protocol: str) -> RowsOutcome:
        """Rows (validated against the signature by the caller) through the batcher, traced and logged."""
        started = time.perf_counter()
        request_id = request_id_from(headers)
        with self.telemetry.server_span(headers, protocol), self.telemetry.tracer.start_as_current_span(
                semconv.SPAN_MODEL_PREDICT, record_exception=False, set_status_on_exception=False) as span:
            span.set_attribute(semconv.MODEL_NAME, self.name)
            span.set_attribute(semconv.MODEL_ALIAS, self.alias)
            span.set_attribute(semconv.PROTOCOL, protocol)
            span.set_attribute(semconv.ENDPOINT, endpoint)
            span.set_attribute(semconv.REQUEST_ID, request_id)
            try:
                predicted = await self.coalescer.submit(rows)
            except ApiError as error:
                self.telemetry.refused(error.code)
                mark_failure(span, error)
                raise
            version = predicted[0].version
            if self._spec is not None and self._spec[0] != version:
                self._spec = None  # the alias moved: ask for the new version's signature next time
            span.set_attribute(semconv.MODEL_VERSION, version)
            span.set_attribute(semconv.BATCH_SIZE, predicted[0].batch_size)
            span.set_attribute(semconv.INPUT_COUNT, len(rows))
            trace_id, traceparent = self.telemetry.trace_ids(span)
            self._count_and_log(rows, predicted, version, request_id, trace_id, endpoint, protocol,
                                (time.perf_counter() - started) * 1000)
        if self.shadow is not None:
            self.shadow.offer(ShadowJob(request_id, trace_id, endpoint, protocol, rows))
        return RowsOutcome(version, predicted, request_id, trace_id, traceparent)

    def _count_and_log(self, rows: list[dict[str, Any]], predicted: list[PredictedRow], version: str,
                       request_id: str, trace_id: str, endpoint: str, protocol: str, latency_ms: float) -> None:
        metrics = self.telemetry.metrics
        for row in predicted:
            label = row.output if isinstance(row.output, str) else ""  # a classifier's label; "" for numbers
            metrics.predictions.labels(model=self.name, version=version, label=label).inc()
        log = self.telemetry.log
        if log is None:
            return
        for inputs, row in zip(rows, predicted, strict=True):
            log.log(InferenceRecord(
                request_id=request_id, trace_id=trace_id, endpoint=endpoint,
                protocol="grpc" if protocol == "grpc" else "rest", kind="model", model_name=self.name,
                model_version=version, latency_ms=latency_ms, inputs=inputs, outputs=row.output, role=self.alias,
            ))

    async def _call_shadow(self, rows: list[dict[str, Any]]) -> ShadowBatch:
        service = self._service()
        answered = await retry_once_on_dropped_connection(lambda: service.to_async.shadow(rows=rows))
        return answered if isinstance(answered, ShadowBatch) else ShadowBatch.model_validate(answered)

    def _shadow_rows(self, job: ShadowJob, version: str, outputs: list[Any], latency_ms: float
                     ) -> list[InferenceRecord]:
        predicted = [PredictedRow.model_validate(output) for output in outputs]
        return [InferenceRecord(
            request_id=job.request_id, trace_id=job.trace_id, endpoint=job.endpoint,
            protocol="grpc" if job.protocol == "grpc" else "rest", kind="model", model_name=self.name,
            model_version=version, latency_ms=latency_ms, inputs=inputs, outputs=row.output,
            role=self.settings.shadow_alias, shadow=True,
        ) for inputs, row in zip(job.inputs, predicted, strict=True)]

    async def _call(self, rows: list[dict[str, Any]]) -> list[PredictedRow]:
        service = self._service()
        try:
            answered = await retry_once_on_dropped_connection(lambda: service.to_async.predict(rows=rows))
        except aiohttp.ClientConnectionError as error:
            raise not_ready(f"the model service of {self.name!r} did not answer: {error!r}") from None
        except BentoMLException as error:
            if int(error.error_code) != 503:
                raise ApiError(500, "prediction_failed",
                               f"{self.name} failed to predict rows that match its signature: {error.message}"
                               ) from None
            state = await self.state()
            if not state.get("ready"):
                raise not_ready(str(state.get("reason") or "no model loaded")) from None
            raise overloaded() from None
        return [row if isinstance(row, PredictedRow) else PredictedRow.model_validate(row) for row in answered]

