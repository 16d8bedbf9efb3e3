"""BentoML's ASGI tracing middleware, as Vigil configures it: a server span per request, no per-message spans; and
what ServingTelemetry leaves on a prediction's span and in Prometheus. No servers, no global tracer provider."""

from __future__ import annotations

import pytest
from opentelemetry.instrumentation import asgi
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import service.serving_telemetry as serving_telemetry
from service.serving_telemetry import PredictionRecord, ServingTelemetry, skip_asgi_message_spans
from telemetry import semconv
from vigil.settings import Settings


async def predict(_: object) -> JSONResponse:
    return JSONResponse({"label": "positive"})


def test_the_middleware_bentoml_builds_opens_no_receive_or_send_spans() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    skip_asgi_message_spans()
    skip_asgi_message_spans()  # idempotent: every worker imports the service module

    # What BentoML does when it builds an app: look the class up on the module, pass no exclude_spans.
    app = asgi.OpenTelemetryMiddleware(Starlette(routes=[Route("/predict", predict, methods=["POST"])]),
                                       tracer_provider=provider)
    with TestClient(app) as client:
        assert client.post("/predict", json={"text": "fine"}).status_code == 200

    names = [span.name for span in exporter.get_finished_spans()]
    assert names == ["POST /predict"]
    assert asgi.OpenTelemetryMiddleware.__mro__[1].__name__ == "OpenTelemetryMiddleware"


@pytest.fixture
def telemetry(monkeypatch: pytest.MonkeyPatch) -> ServingTelemetry:
    # The process's tracer provider is left alone: the spans come from the test's own provider.
    monkeypatch.setattr(serving_telemetry, "setup_tracing", lambda *args, **kwargs: None)
    return ServingTelemetry(Settings(inference_log=False, trace_raw_text=True))


def predictions(version: str, label: str) -> float:
    return REGISTRY.get_sample_value("vigil_predictions_total",
                                     {"model": "sentiment", "version": version, "label": label}) or 0.0


def test_a_prediction_puts_its_attributes_on_its_span_and_counts_every_label(telemetry: ServingTelemetry) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    before = predictions("41", "positive"), predictions("41", "negative")
    for texts, labels in ((["good"], ["positive"]), (["fine", "bad", "great"], ["positive", "negative", "positive"])):
        with tracer.start_as_current_span("sentiment.predict") as span:
            trace_id, traceparent = telemetry.record(span, "rest", "/predict", "req-1", PredictionRecord(
                texts=texts, labels=labels, scores=[0.9] * len(texts), version="41", batch_size=8, latency_ms=2.0))
        assert traceparent == f"00-{trace_id}-{span.get_span_context().span_id:016x}-01"
    one, three = (span.attributes or {} for span in exporter.get_finished_spans())
    assert one[semconv.MODEL_VERSION] == "41" and one[semconv.BATCH_SIZE] == 8 and one[semconv.REQUEST_ID] == "req-1"
    assert (one[semconv.INPUT_COUNT], one[semconv.LABEL_COUNTS_PREFIX + "positive"], one[semconv.INPUT_TEXT]) == (
        1, 1, "good")
    assert (three[semconv.INPUT_COUNT], three[semconv.LABEL_COUNTS_PREFIX + "positive"],
            three[semconv.LABEL_COUNTS_PREFIX + "negative"]) == (3, 2, 1)
    assert semconv.INPUT_TEXT not in three  # the text of a one-text request only
    assert (predictions("41", "positive") - before[0], predictions("41", "negative") - before[1]) == (3.0, 1.0)
