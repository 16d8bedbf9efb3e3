"""BentoML's ASGI tracing middleware, as Vigil configures it: a server span per request, no per-message spans."""

from __future__ import annotations

from opentelemetry.instrumentation import asgi
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from service.serving_telemetry import skip_asgi_message_spans


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
