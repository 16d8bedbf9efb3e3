"""A local OTLP/HTTP traces endpoint that decodes real protobuf: LangSmith's stand-in, which cannot run here.

Accepts ``POST /otel/v1/traces`` (LangSmith's path) and ``POST /v1/traces`` (the OTLP default), and records each
request's headers and decoded spans for assertions.
"""

from __future__ import annotations

import gzip
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.support.local_http import respond, serve_in_thread, stop_serving

TRACE_PATHS = ("/otel/v1/traces", "/v1/traces")


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    resource: dict[str, Any]


@dataclass(frozen=True)
class ReceivedExport:
    path: str
    headers: dict[str, str]  # lower-case names
    spans: list[ReceivedSpan]


def any_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [any_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {item.key: any_value(item.value) for item in value.kvlist_value.values}
    return None if kind is None else getattr(value, kind)


def decode(body: bytes) -> list[ReceivedSpan]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = {item.key: any_value(item.value) for item in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(ReceivedSpan(
                    name=span.name, trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                    parent_span_id=span.parent_span_id.hex(),
                    attributes={item.key: any_value(item.value) for item in span.attributes},
                    resource=resource,
                ))
    return spans


@dataclass
class OtlpReceiver:
    """Call :meth:`start` (or use :func:`otlp_receiver`); ``url`` is the base to give as an endpoint."""

    status_code: int = 200
    exports: list[ReceivedExport] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "receiver not started"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spans(self) -> list[tuple[ReceivedExport, ReceivedSpan]]:
        with self._lock:
            return [(export, span) for export in self.exports for span in export.spans]

    def start(self, port: int = 0) -> OtlpReceiver:
        """Serve on ``port`` (0: a free one); a stopped receiver starts again on its own port with ``port``."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                path = self.path.split("?", 1)[0]
                if path not in TRACE_PATHS:
                    self.send_error(404)
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                headers = {key.lower(): value for key, value in self.headers.items()}
                export = ReceivedExport(path, headers, decode(body))
                with receiver._lock:
                    receiver.exports.append(export)
                payload = ExportTraceServiceResponse().SerializeToString()
                respond(self, receiver.status_code, payload, "application/x-protobuf")

            def log_message(self, format: str, *args: Any) -> None:  # the test output stays readable
                pass

        self._server = serve_in_thread(Handler, "otlp-receiver", port)
        return self

    def stop(self) -> None:
        stop_serving(self._server)


@contextmanager
def otlp_receiver(status_code: int = 200) -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver(status_code=status_code).start()
    try:
        yield receiver
    finally:
        receiver.stop()
