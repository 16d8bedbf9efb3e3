"""HTTP plumbing of the API service: the FastAPI app, reading bodies into contract models, error answers, JSON
responses, the retry of a dependency call whose pooled connection dropped, and the dependency services outliving
their caller's drain on SIGTERM."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import aclosing, contextmanager
from types import FrameType
from typing import Any, TypeVar

import aiohttp
import orjson
from _bentoml_sdk.service import get_current_service
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from service.errors import ApiError
from vigil.settings import get_settings

logger = logging.getLogger(__name__)

# The model and RAG services answer only the API worker, which logs every request itself: their own access lines
# would double the log and cost each call a formatted line (bench/RESULTS.md, models).
INTERNAL_SERVICE_LOGGING: dict[str, Any] = {"access": {"enabled": False}}

# On SIGTERM a dependency service keeps answering until the API worker has not called it for this long (at once when
# it is idle), and at most for the API's longest request (its traffic timeout).
CALLERS_QUIET_SECONDS = 1.0
CALLERS_DRAIN_SECONDS = 60.0

Result = TypeVar("Result")
Body = TypeVar("Body", bound=BaseModel)


def create_app(title: str, version: str, description: str) -> FastAPI:
    """The API's FastAPI app: docs under /api, contract error bodies, and no per-request work it does not need."""
    app = FastAPI(
        # BentoML's middleware already opens the server span; FastAPI's own two spans per request (dependencies,
        # endpoint) only added to what the trace backend ingests. Its metrics and logs would go to OTel providers
        # nobody configures (Prometheus is BentoML's and ours), yet it asked for them on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        title=title,
        version=version,
        description=description,
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
        redoc_url=None,
    )
    # BentoML hands each route its service instance through a plain-function dependency, which FastAPI runs on its
    # thread pool: a thread hop per request on the hot path. The same lookup as a coroutine stays on the event loop.
    app.dependency_overrides[get_current_service] = _current_service
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    return app


async def _current_service() -> Any:
    return get_current_service()


async def _api_error(request: Request, error: ApiError) -> Response:
    return error_response(error, oip=is_oip_route(request))


async def _validation_error(request: Request, error: RequestValidationError) -> Response:
    return error_response(ApiError(422, "invalid_request", describe_validation(error.errors())),
                          oip=is_oip_route(request))


def is_oip_route(request: Request) -> bool:
    """Whether ``request`` speaks the Open Inference Protocol, whose error body is its own."""
    path = request.url.path
    return path == "/v2" or path.startswith("/v2/")


def error_response(error: ApiError, oip: bool = False) -> Response:
    body = error.oip_body() if oip else error.body()
    return Response(body.model_dump_json(), status_code=error.status, media_type="application/json",
                    headers=error.headers)


def describe_validation(errors: Iterable[Mapping[str, Any]]) -> str:
    """The first three problems, each naming its field by path (e.g. `documents.0.id: ...`)."""
    parts = []
    for item in list(errors)[:3]:
        where = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {item.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def openapi_body(schema: type[BaseModel], examples: dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra` for a route that reads its own body (:func:`read_json`), where FastAPI cannot see it."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": _inlined(schema.model_json_schema()),
        "examples": {name: {"value": value} for name, value in examples.items()},
    }}}}


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with its nested models written in place: its `#/$defs/...` refs mean nothing inside OpenAPI."""
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    inlined: dict[str, Any] = resolve(schema)
    return inlined


def json_response(payload: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    # orjson and no response-model validation: this is the hot path's serialiser.
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json", headers=headers)


async def read_json(request: Request, schema: type[Body]) -> Body:
    """The body parsed into ``schema``, refusing oversize, non-UTF-8 and malformed bodies with clear 4xx."""
    return parse_json(await read_body(request), schema)


async def read_body(request: Request) -> bytes:
    """The whole body within ``VIGIL_MAX_BODY_BYTES``; an empty one is refused.

    A declared Content-Length over the limit is refused before anything is read. A body without one (chunked) is
    read chunk by chunk and refused as soon as it passes the limit, so the worker never holds more than the limit
    plus one chunk of it, however much the client sends.
    """
    limit = get_settings().max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "body_too_large", f"request body of {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    received = 0
    async with aclosing(request.stream()) as stream:
        async for chunk in stream:
            received += len(chunk)
            if received > limit:
                raise ApiError(413, "body_too_large", f"request body of more than {limit} bytes; the limit is {limit}")
            chunks.append(chunk)
    body = b"".join(chunks)
    if not body.strip():
        raise ApiError(400, "empty_request", "the request body is empty")
    return body


def parse_json(body: bytes, schema: type[Body]) -> Body:
    """``body`` (UTF-8 JSON) parsed into ``schema``; 400 for bad encoding or JSON, 422 naming the bad field."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_encoding", "the request body is not valid UTF-8") from None
    try:
        return schema.model_validate_json(body)
    except ValidationError as error:
        if any(e.get("type") == "json_invalid" for e in error.errors()):
            raise ApiError(400, "invalid_json", "the request body is not valid JSON") from None
        raise ApiError(422, "invalid_request", describe_validation(error.errors())) from None


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


class OutliveCallers:
    """Keeps a dependency service (a model, RAG) answering after SIGTERM until the API worker has stopped calling it.

    BentoML's arbiter sends SIGTERM to every worker at once. The API worker then finishes the requests it accepted,
    but a model service that stopped at once closes its socket and pooled connections, and those requests' calls end
    in 503 `not_ready` (bench/RESULTS.md, "Faults"; tests/integration/test_faults.py, SIGTERM under load). So the
    service takes SIGTERM over from uvicorn, whose handler it wraps (uvicorn installs it in the worker's main thread
    before the service instance is made: create this in ``__init__``), and hands it on once no call has run for
    :data:`CALLERS_QUIET_SECONDS`, or after :data:`CALLERS_DRAIN_SECONDS`. Each call runs inside :meth:`call`.
    Elsewhere (not the main thread, no handler to wrap) nothing changes.
    """

    def __init__(self, quiet_seconds: float = CALLERS_QUIET_SECONDS,
                 longest_seconds: float = CALLERS_DRAIN_SECONDS) -> None:
        self.quiet_seconds = quiet_seconds
        self.longest_seconds = longest_seconds
        self._in_progress = 0
        self._last_call = float("-inf")  # when the latest call ended
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.installed = self._install()

    @contextmanager
    def call(self) -> Iterator[None]:
        """Around one call (calls run on BentoML's threads)."""
        with self._lock:
            self._in_progress += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_progress -= 1
                self._last_call = time.monotonic()

    def _quiet(self) -> bool:
        with self._lock:
            return self._in_progress == 0 and time.monotonic() - self._last_call >= self.quiet_seconds

    def _install(self) -> bool:
        if threading.current_thread() is not threading.main_thread():
            return False
        handler = signal.getsignal(signal.SIGTERM)
        if not callable(handler):
            return False

        def deferred(signum: int, _frame: FrameType | None) -> None:
            if not self._stopping.is_set():
                self._stopping.set()
                threading.Thread(target=self._hand_on, args=(handler, signum), name="vigil-outlive-callers",
                                 daemon=True).start()

        signal.signal(signal.SIGTERM, deferred)
        return True

    def _hand_on(self, handler: Callable[[int, FrameType | None], Any], signum: int) -> None:
        deadline = time.monotonic() + self.longest_seconds
        while time.monotonic() < deadline and not self._quiet():
            time.sleep(0.05)
        handler(signum, None)  # uvicorn's: it only sets the flag its main loop checks
