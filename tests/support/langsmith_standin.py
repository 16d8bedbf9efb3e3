"""A local LangSmith REST API for the part of it `vigil eval rag` uses: LangSmith's stand-in, which cannot run here.

Driven by the real ``langsmith`` client (``Client`` and ``langsmith.evaluation.evaluate``), it answers the calls that
path makes, with the bodies the client's own schemas (``langsmith.schemas``) parse, and keeps what it is sent in
memory for assertions:

=========================================================  ========================================================
``GET /info``                                              server info: multipart run ingestion, multipart example
                                                           upload and zstd-compressed runs enabled, as the cloud
``GET /datasets?name=``                                    ``read_dataset`` / ``has_dataset`` (a list; empty: none)
``POST /datasets``                                         ``create_dataset`` (409 on a taken name)
``POST /v1/platform/datasets/{id}/examples``               ``create_examples``: multipart, parts ``{id}``,
                                                           ``{id}.inputs``, ``{id}.outputs``
``GET /examples?dataset=``                                 ``list_examples`` (offset/limit pages, ``id`` filter)
``GET /sessions?limit=``                                   the tenant lookup behind every dataset and example read
``POST /sessions``, ``PATCH /sessions/{id}``               the experiment (``create_project`` with a reference
                                                           dataset, 409 on a taken name) and its closing metadata
``POST /runs/multipart``                                   background ingestion, plain or ``Content-Encoding:
                                                           zstd``: parts ``post.{id}[.field]``,
                                                           ``patch.{id}[.field]``, ``feedback.{id}``,
                                                           ``attachment.{id}.{name}``
=========================================================  ========================================================

With ``refuse_ingest`` it answers ``POST /runs/multipart`` with 403. Anything else answers 404 (or 400 for a query
parameter it does not implement) and is kept in ``unhandled``, so a call the client starts making shows up as a
failure, not as a silent pass. Every request must carry the configured ``x-api-key`` (401 otherwise), and each
request's headers are kept in ``requests``.
"""

from __future__ import annotations

import io
import json
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.support.local_http import respond, serve_in_thread, stop_serving

TENANT_ID = "00000000-0000-4000-8000-00000000a11e"
INFO: dict[str, Any] = {
    "version": "0.12.0",
    "license_expiration_time": None,
    "batch_ingest_config": {
        "use_multipart_endpoint": True,
        "scale_up_qsize_trigger": 1000,
        "scale_up_nthreads_limit": 16,
        "scale_down_nempty_trigger": 4,
        "size_limit": 100,
        "size_limit_bytes": 20_971_520,
    },
    "instance_flags": {
        "dataset_examples_multipart_enabled": True,
        "examples_multipart_enabled": True,
        "zstd_compression_enabled": True,
    },
}
RUN_FIELDS = ("inputs", "outputs", "events", "extra", "error", "serialized")


class ApiError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    status: int


def now() -> str:
    return datetime.now(UTC).isoformat()


def multipart_parts(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    """(name, payload) of each part of a multipart/form-data body, in order."""
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    if not message.is_multipart():
        raise ApiError(422, f"expected multipart/form-data, got {content_type!r}")
    parts = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(name, str) or not isinstance(payload, bytes):
            raise ApiError(422, "a multipart part without a name or a body")
        parts.append((name, payload))
    return parts


def loads(payload: bytes, what: str) -> Any:
    try:
        return json.loads(payload)
    except ValueError:
        raise ApiError(422, f"{what} is not JSON") from None


@dataclass
class LangSmithStandIn:
    """Call :meth:`start` (or use :func:`langsmith_standin`); ``url`` is the API URL to give the client."""

    api_key: str = "ls-standin-key"
    refuse_ingest: bool = False  # answer POST /runs/multipart with 403, as a workspace over its quota would
    requests: list[ReceivedRequest] = field(default_factory=list)
    unhandled: list[str] = field(default_factory=list)
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    examples: dict[str, dict[str, Any]] = field(default_factory=dict)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    feedback: dict[str, dict[str, Any]] = field(default_factory=dict)
    progress_hints: dict[str, dict[str, Any]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "stand-in not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # --- for assertions -------------------------------------------------------------------------------------------

    def dataset_named(self, name: str) -> dict[str, Any]:
        with self._lock:
            return next(d for d in self.datasets.values() if d["name"] == name)

    def session_named(self, name: str) -> dict[str, Any]:
        with self._lock:
            return next(s for s in self.sessions.values() if s["name"] == name)

    def examples_of(self, dataset_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.examples.values() if e["dataset_id"] == dataset_id]

    def runs_in(self, session_id: str, root: bool = True) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.runs.values()
                    if r.get("session_id") == session_id and (not root or r.get("parent_run_id") is None)]

    # --- the API --------------------------------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str],
               body: bytes) -> tuple[int, Any]:
        if headers.get("x-api-key") != self.api_key:
            raise ApiError(401, "Invalid token")
        if method == "GET" and path == "/info":
            return 200, INFO
        if method == "GET" and path == "/datasets":
            return 200, self._list_datasets(query)
        if method == "POST" and path == "/datasets":
            return 200, self._create_dataset(loads(body, "the dataset"))
        if method == "POST" and (match := re.fullmatch(r"/v1/platform/datasets/([0-9a-f-]{36})/examples", path)):
            return 200, self._upload_examples(match[1], headers.get("content-type", ""), body)
        if method == "GET" and path == "/examples":
            return 200, self._list_examples(query)
        if method == "GET" and path == "/sessions":
            return 200, self._list_sessions(query)
        if method == "POST" and path == "/sessions":
            return 200, self._create_session(loads(body, "the session"), query)
        if method == "PATCH" and (match := re.fullmatch(r"/sessions/([0-9a-f-]{36})", path)):
            return 200, self._update_session(match[1], loads(body, "the session"))
        if method == "POST" and path == "/runs/multipart":
            if self.refuse_ingest:
                raise ApiError(403, "run ingestion refused (the stand-in was told to)")
            self._ingest(headers, body)
            return 202, {}
        raise ApiError(404, "Not Found")

    @staticmethod
    def _supported(query: dict[str, list[str]], *names: str) -> None:
        if extra := sorted(set(query) - set(names)):
            raise ApiError(400, f"query parameters {extra} are not implemented by the stand-in")

    @staticmethod
    def _page(items: list[dict[str, Any]], query: dict[str, list[str]]) -> list[dict[str, Any]]:
        offset = int(query.get("offset", ["0"])[0])
        limit = int(query.get("limit", ["100"])[0])
        return items[offset:offset + limit]

    def _list_datasets(self, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        self._supported(query, "name", "limit", "offset")
        with self._lock:
            found = [d for d in self.datasets.values() if "name" not in query or d["name"] == query["name"][0]]
        return self._page(found, query)

    def _create_dataset(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if any(d["name"] == body["name"] for d in self.datasets.values()):
                raise ApiError(409, f"Dataset {body['name']} already exists")
            created = now()
            dataset = {
                "id": str(uuid.uuid4()), "name": body["name"], "description": body.get("description"),
                "data_type": body.get("data_type", "kv"), "created_at": created, "modified_at": created,
                "example_count": 0, "session_count": 0, "last_session_start_time": None,
                "inputs_schema_definition": body.get("inputs_schema_definition"),
                "outputs_schema_definition": body.get("outputs_schema_definition"),
                "transformations": body.get("transformations"), "tenant_id": TENANT_ID,
                "metadata": (body.get("extra") or {}).get("metadata"), "extra": body.get("extra"),
            }
            self.datasets[dataset["id"]] = dataset
            return dataset

    def _upload_examples(self, dataset_id: str, content_type: str, body: bytes) -> dict[str, Any]:
        with self._lock:
            if dataset_id not in self.datasets:
                raise ApiError(404, f"Dataset {dataset_id} not found")
        uploaded: dict[str, dict[str, Any]] = {}
        for name, payload in multipart_parts(content_type, body):
            example_id, _, part = name.partition(".")
            example = uploaded.setdefault(example_id, {"id": example_id, "dataset_id": dataset_id})
            if not part:
                head = loads(payload, f"example {example_id}")
                unknown = set(head) - {"created_at", "metadata", "split", "source_run_id", "use_source_run_io",
                                       "use_source_run_attachments"}
                if unknown:
                    raise ApiError(422, f"example {example_id}: fields {sorted(unknown)} not implemented")
                example["created_at"] = head.get("created_at") or now()
                example["metadata"] = head.get("metadata")
                if "split" in head:
                    example["metadata"] = {**(head.get("metadata") or {}), "dataset_split": head["split"]}
            elif part in ("inputs", "outputs"):
                example[part] = loads(payload, name)
            else:
                raise ApiError(422, f"example part {name!r} not implemented by the stand-in")
        if any("created_at" not in e for e in uploaded.values()):
            raise ApiError(422, "an example without its main part")
        with self._lock:
            stamp = now()
            for example in uploaded.values():
                self.examples[example["id"]] = {"inputs": {}, "outputs": None, **example, "modified_at": stamp}
            dataset = self.datasets[dataset_id]
            dataset["example_count"] = sum(e["dataset_id"] == dataset_id for e in self.examples.values())
            dataset["modified_at"] = stamp
        return {"example_ids": list(uploaded), "count": len(uploaded), "as_of": stamp}

    def _list_examples(self, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        self._supported(query, "dataset", "id", "offset", "limit", "inline_s3_urls")
        with self._lock:
            found = [e for e in self.examples.values()
                     if ("dataset" not in query or e["dataset_id"] == query["dataset"][0])
                     and ("id" not in query or e["id"] in query["id"])]
        return self._page(found, query)

    def _list_sessions(self, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        self._supported(query, "limit", "offset")
        with self._lock:
            return self._page(list(self.sessions.values()), query)

    def _new_session(self, name: str, **fields: Any) -> dict[str, Any]:
        session = {"id": str(uuid.uuid4()), "name": name, "description": None, "extra": None,
                   "reference_dataset_id": None, "start_time": now(), "end_time": None, "tenant_id": TENANT_ID,
                   "run_count": 0, **fields}
        self.sessions[session["id"]] = session
        return session

    def _create_session(self, body: dict[str, Any], query: dict[str, list[str]]) -> dict[str, Any]:
        self._supported(query, "upsert")
        with self._lock:
            taken = next((s for s in self.sessions.values() if s["name"] == body["name"]), None)
            if taken is not None:
                if query.get("upsert") != ["true"]:
                    raise ApiError(409, f"Session {body['name']} already exists")
                taken.update(extra=body.get("extra"), description=body.get("description"))
                return taken
            reference = body.get("reference_dataset_id")
            if reference is not None:
                if reference not in self.datasets:
                    raise ApiError(404, f"Dataset {reference} not found")
                dataset = self.datasets[reference]
                dataset["session_count"] += 1
                dataset["last_session_start_time"] = now()
            session = self._new_session(body["name"], id=body.get("id") or str(uuid.uuid4()),
                                        description=body.get("description"), extra=body.get("extra"),
                                        reference_dataset_id=reference)
            # Progress hints for the UI: kept, never answered (the API does not return them either).
            self.progress_hints[session["id"]] = {
                key: body[key] for key in ("num_examples", "num_repetitions", "evaluator_keys") if key in body}
            return session

    def _update_session(self, session_id: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if session_id not in self.sessions:
                raise ApiError(404, f"Session {session_id} not found")
            session = self.sessions[session_id]
            session.update({key: value for key, value in body.items()
                            if key in ("name", "description", "extra", "end_time") and value is not None})
            return session

    def _ingest(self, headers: dict[str, str], body: bytes) -> None:
        if headers.get("content-encoding", "").lower() == "zstd":
            import zstandard

            reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body), read_across_frames=True)
            body = reader.read()
        with self._lock:
            for name, payload in multipart_parts(headers.get("content-type", ""), body):
                kind, _, rest = name.partition(".")
                if kind in ("post", "patch"):
                    run_id, _, part = rest.partition(".")
                    run = self.runs.setdefault(run_id, {"id": run_id})
                    value = loads(payload, name)
                    if not part:
                        run.update(value if kind == "post" else {k: v for k, v in value.items() if v is not None})
                        self._resolve_session(run)
                    elif part in RUN_FIELDS:
                        run[part] = value
                    else:
                        raise ApiError(422, f"run part {name!r} not implemented by the stand-in")
                elif kind == "feedback":
                    self.feedback[rest] = loads(payload, name)
                elif kind == "attachment":
                    run_id, _, attachment = rest.partition(".")
                    self.runs.setdefault(run_id, {"id": run_id}).setdefault("attachments", {})[attachment] = payload
                else:
                    raise ApiError(422, f"part {name!r} not implemented by the stand-in")

    def _resolve_session(self, run: dict[str, Any]) -> None:
        """A run names its project by id or by name; a new name creates the project, as LangSmith does."""
        if run.get("session_id"):
            if run["session_id"] not in self.sessions:
                raise ApiError(404, f"Session {run['session_id']} not found")
            return
        name = run.get("session_name")
        if name:
            session = next((s for s in self.sessions.values() if s["name"] == name), None)
            run["session_id"] = (session or self._new_session(name))["id"]

    # --- the server -----------------------------------------------------------------------------------------------

    def start(self) -> LangSmithStandIn:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the client's pooled session expects

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _serve(self) -> None:
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                headers = {key.lower(): value for key, value in self.headers.items()}
                body = self._body()
                try:
                    status, answer = standin.handle(self.command, url.path, query, headers, body)
                except ApiError as error:
                    status, answer = error.status, {"detail": error.detail}
                    if status in (400, 404, 422):
                        standin.unhandled.append(f"{self.command} {self.path}: {status} {error.detail}")
                except Exception as error:  # a bug of the stand-in: a 500 the client reports, and the test sees
                    status, answer = 500, {"detail": repr(error)}
                    standin.unhandled.append(f"{self.command} {self.path}: 500 {error!r}")
                with standin._lock:
                    standin.requests.append(ReceivedRequest(self.command, url.path, query, headers, status))
                payload = json.dumps(answer, default=str).encode()
                respond(self, status, payload)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:  # the test output stays readable
                pass

        self._server = serve_in_thread(Handler, "langsmith-standin")
        return self

    def stop(self) -> None:
        stop_serving(self._server)


@contextmanager
def langsmith_standin(api_key: str = "ls-standin-key", refuse_ingest: bool = False) -> Iterator[LangSmithStandIn]:
    standin = LangSmithStandIn(api_key=api_key, refuse_ingest=refuse_ingest).start()
    try:
        yield standin
    finally:
        standin.stop()
