"""The service through faults of what it depends on, and through a supervisor's SIGTERM (issue "Hardened by
default", items 12 and 14).

Each fault hits a `vigil serve` of this module's own (the session's settings in a home of its own), under 16 clients
on `/predict`: MLflow (a copy of the session's) killed and started again, the trace backend refusing or never
answering, LangSmith gone, Milvus unreachable and the RAG worker killed, the model worker killed. Predictions must go
on: every answer a 200 with a right body (or, where a test says so, a 503 with `Retry-After`), never a 500 or a hang.
Then SIGTERM under load, last: the service finishes what it had accepted, logs a row for every 200 it gave, and
leaves no process and no port behind.

Two servers take the faults in turn, as a production service meets them one after another: one whose MLflow (registry
and trace store) is the copy a test kills and whose Milvus is not there, for the MLflow, RAG and SIGTERM tests; one
whose spans go to local receivers the tests stop, for the trace backend, LangSmith and model worker tests. Each test
measures from its own starting point (counters as deltas, answers of its own load), and no fault's setting changes
what another test shows: a server of its own per fault only cost CI a start-up each.

No assertion here is about timing; the latencies and times to recover are logged (`--log-cli-level=INFO`) and
recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, closing, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from mlflow import MlflowClient

from telemetry.records import create_engine, read_frame
from tests.conftest import free_port, wait_until
from tests.integration.conftest import Server, VigilEnv
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.serving import (
    REQUEST_TIMEOUT_SECONDS,
    Tally,
    background_load,
    metric,
    own_server,
    predict_route,
)
from vigil.contracts import ErrorResponse

logger = logging.getLogger(__name__)

# The first test of a session also pays for MLflow, training and the session's `vigil serve`, the first of this
# module for its MLflow and server (about 20-30 s each to start on 2 cores); each test adds well under two minutes.
TIMEOUT_SECONDS = 900
CLIENTS = 16
# While MLflow is down, the alias follower must fail this many polls in a row (one a second here) with the clients
# answered meanwhile: more than one failure, so the version is kept through repeated failures, not a single one.
FAILED_POLLS = 3


def model_of(server: Server) -> str:
    return server.env["VIGIL_SENTIMENT_MODEL_NAME"]


def model_status(server: Server) -> dict[str, Any]:
    """The served model's part of `/status`: version, readiness, the alias follower's last poll error."""
    response = httpx.get(f"{server.http}/status", timeout=REQUEST_TIMEOUT_SECONDS)
    return dict(response.json()["models"][model_of(server)])


def service_worker(server: Server, name: str) -> psutil.Process | None:
    """The BentoML worker of service ``name`` (its ``--service-name``) under ``server``, if one runs."""
    for process in psutil.Process(server.process.pid).children(recursive=True):
        try:
            arguments = process.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "--service-name" in arguments and arguments[arguments.index("--service-name") + 1:][:1] == [name]:
            return process
    return None


def respawned(server: Server, name: str, killed: int) -> psutil.Process:
    """Wait for BentoML to start service ``name`` again after its worker ``killed`` died."""
    def found() -> psutil.Process | None:
        worker = service_worker(server, name)
        return worker if worker is not None and worker.pid != killed else None

    return wait_until(found, timeout=120, interval=0.2, what=f"a new {name} worker")


def longest_gap(tally: Tally) -> float:
    """The longest time, in seconds, between two consecutive 200s: how long the clients saw no answer at all."""
    times = sorted(tally.answered_at)
    return max((later - earlier for earlier, later in itertools.pairwise(times)), default=0.0)


# --- 12a: MLflow killed ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OwnMlflow:
    """An MLflow server of a test's own, on a copy of the session's store: killing it touches no other test."""

    session: VigilEnv  # its home, URI and the environment `vigil` runs with against it

    def pid(self) -> int:
        return int(json.loads((self.session.home / "mlflow" / "server.json").read_text())["pid"])

    def kill(self) -> None:
        """SIGKILL to the server's process group: a crash, not a shutdown."""
        pid = self.pid()
        os.killpg(pid, signal.SIGKILL)
        psutil.Process(pid).wait(timeout=30)

    def up(self) -> None:
        self.session.run("mlflow", "up", timeout=180)


def copy_store(source: Path, target: Path) -> None:
    """The session's MLflow files, as a snapshot: databases through SQLite's backup (the server has them open),
    artifacts hard-linked (MLflow never rewrites one), the server's own state and log left out."""
    target.mkdir(mode=0o700)
    for entry in source.iterdir():
        if entry.name in ("server.json", "server.log"):
            continue
        if entry.is_dir():
            shutil.copytree(entry, target / entry.name, copy_function=os.link)
        elif entry.suffix == ".db":
            with closing(sqlite3.connect(entry)) as original, closing(sqlite3.connect(target / entry.name)) as copy:
                original.backup(copy)
            os.chmod(target / entry.name, 0o600)
        else:
            shutil.copy2(entry, target / entry.name)


@pytest.fixture(scope="module")
def own_mlflow(vigil_env: VigilEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnMlflow]:
    home = tmp_path_factory.mktemp("own-mlflow")
    copy_store(vigil_env.home / "mlflow", home / "mlflow")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    mlflow = OwnMlflow(VigilEnv(home, uri, {**vigil_env.env, "VIGIL_HOME": str(home),
                                            "VIGIL_MLFLOW_PORT": str(port), "MLFLOW_TRACKING_URI": uri}))
    mlflow.up()
    try:
        yield mlflow
    finally:
        mlflow.session.run("mlflow", "down", check=False)


@pytest.fixture(scope="module")
def fragile_server(live_server: Server, own_mlflow: OwnMlflow,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Its MLflow, registry and trace store, is the copy the MLflow test kills; its Milvus a server that is not there,
    so the RAG service starts without its store. The SIGTERM test, the module's last, stops it."""
    with own_server(live_server, tmp_path_factory, "serve-fragile",
                    MLFLOW_TRACKING_URI=own_mlflow.session.tracking_uri,
                    VIGIL_MILVUS_URI=f"http://127.0.0.1:{free_port()}") as server:
        yield server


def load_until(server: Server, done: Callable[[], bool], what: str) -> Tally:
    """CLIENTS clients on `/predict` until more than CLIENTS answers came and ``done()`` holds: a phase as long as
    its fault takes to show (failed exports counted, spans delivered), not a fixed time."""
    with background_load(server.http, [predict_route(model_of(server))], CLIENTS) as tally:
        wait_until(lambda: tally.answered > CLIENTS and done(), timeout=120, interval=0.5, what=what)
    return tally


@pytest.mark.timeout(TIMEOUT_SECONDS)
def test_predictions_go_on_while_mlflow_is_down_and_the_alias_is_followed_when_it_is_back(
    fragile_server: Server, own_mlflow: OwnMlflow
) -> None:
    server = fragile_server
    model = model_of(server)
    # The registry URI named too: without it MLflow's client takes a process-wide one an earlier test may have set
    # (the session's server), and the alias would move there.
    registry = MlflowClient(own_mlflow.session.tracking_uri, registry_uri=own_mlflow.session.tracking_uri)
    champion = str(registry.get_model_version_by_alias(model, "champion").version)
    others = sorted({v.version for v in registry.search_model_versions(f"name='{model}'")} - {champion}, key=int)
    other = others[-1] if others else str(registry.copy_model_version("models:/sentiment/2", model).version)

    with background_load(server.http, [predict_route(model)], CLIENTS) as tally:
        wait_until(lambda: tally.answered > CLIENTS, timeout=60, what="requests flowing")
        own_mlflow.kill()
        killed_at = time.monotonic()
        # The alias follower notices: its poll fails, and the version it loaded keeps serving.
        status = wait_until(lambda: (s := model_status(server))["last_poll_error"] and s, timeout=60,
                            what="the alias follower to notice MLflow is gone")
        assert status["ready"] is True and status["version"] == champion, status
        noticed_at, answered = time.monotonic(), tally.answered
        # More failed polls, and answers meanwhile: the follower kept the version through all of them.
        wait_until(lambda: time.monotonic() > noticed_at + FAILED_POLLS * float(status["poll_seconds"])
                   and tally.answered > answered + CLIENTS, timeout=120, what="answers while MLflow is down")
        status = model_status(server)
        assert status["last_poll_error"] and status["ready"] is True and status["version"] == champion, status
        own_mlflow.up()
        back_at = time.monotonic()
        wait_until(lambda: model_status(server)["last_poll_error"] == "", timeout=60,
                   what="the alias follower to reach MLflow again")
        recovered_after = time.monotonic() - back_at
        outage = back_at - killed_at
        during_outage = sum(killed_at <= t < back_at for t in tally.answered_at)
        # Moved by MLflow's own client, as any operator's script may: what is tested is that it is followed.
        registry.set_registered_model_alias(model, "champion", other)
        moved_at = time.monotonic()
        wait_until(lambda: tally.versions[-1] == other, timeout=120, what=f"answers from v{other}")
        followed_after = tally.answered_at[tally.versions.index(other)] - moved_at

    figures = (f"{CLIENTS} clients on /predict, MLflow killed for {outage:.1f} s ({during_outage} answered meanwhile); "
               f"the follower reached MLflow again {recovered_after:.1f} s after `vigil mlflow up` returned; the first "
               f"answer from v{other} came {followed_after:.1f} s after the alias moved from v{champion}: "
               f"{tally.summary()}; {tally.latencies()}; versions {dict(Counter(tally.versions))}")
    logger.info("MLflow killed: %s", figures)
    assert tally.failures == [], figures
    assert during_outage > CLIENTS, figures
    assert set(tally.versions) == {champion, other}, figures


# --- 12b and 12c: the trace backend and LangSmith down ---------------------------------------------------------


@dataclass(frozen=True)
class TraceBackends:
    otlp: OtlpReceiver  # the primary exporter's endpoint (any OTLP backend)
    langsmith: OtlpReceiver  # LangSmith's stand-in (its OTLP path)


@pytest.fixture(scope="module")
def backends() -> Iterator[TraceBackends]:
    otlp, langsmith = OtlpReceiver().start(), OtlpReceiver().start()
    try:
        yield TraceBackends(otlp, langsmith)
    finally:
        otlp.stop()
        langsmith.stop()


@pytest.fixture(scope="module")
def traced_server(live_server: Server, backends: TraceBackends,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Spans to two local receivers that the tests stop; batches go every second, so failures show quickly."""
    with own_server(live_server, tmp_path_factory, "serve-traced", VIGIL_TRACING="otlp",
                    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"{backends.otlp.url}/v1/traces",
                    LANGSMITH_ENDPOINT=backends.langsmith.url, LANGSMITH_API_KEY="ls-test-key",
                    OTEL_BSP_SCHEDULE_DELAY="1000") as server:
        yield server


@contextmanager
def stopped(receiver: OtlpReceiver) -> Iterator[None]:
    """The receiver gone: its port refuses connections."""
    port = receiver.port
    receiver.stop()
    try:
        yield
    finally:
        receiver.start(port)


@contextmanager
def silent(receiver: OtlpReceiver) -> Iterator[None]:
    """The receiver hung: its port takes connections and never answers (nothing accepts them)."""
    port = receiver.port
    receiver.stop()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        yield
    finally:
        listener.close()
        receiver.start(port)


def export_failures(server: Server, exporter: str) -> float:
    return metric(server, "vigil_span_export_failures_total", exporter=exporter)


def more_export_failures(server: Server, exporter: str, than: float) -> Callable[[], bool]:
    return lambda: export_failures(server, exporter) > than


def more_spans(receiver: OtlpReceiver, than: int) -> Callable[[], bool]:
    return lambda: len(receiver.spans()) > than


@pytest.mark.timeout(TIMEOUT_SECONDS)
def test_the_trace_backend_down_fails_no_request(traced_server: Server, backends: TraceBackends) -> None:
    server = traced_server
    phases: dict[str, AbstractContextManager[None]] = {
        "up": nullcontext(), "refusing": stopped(backends.otlp), "hung": silent(backends.otlp)}
    tallies: dict[str, Tally] = {}
    failures: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for phase, fault in phases.items():
        before = export_failures(server, "otlp")
        started = time.monotonic()
        with fault:
            if phase == "up":  # spans of this phase's own requests delivered
                tallies[phase] = load_until(server, more_spans(backends.otlp, than=len(backends.otlp.spans())),
                                            what="spans at the OTLP receiver")
            else:  # the clients keep asking until the exporter has failed, however long its attempt takes
                tallies[phase] = load_until(server, more_export_failures(server, "otlp", before),
                                            what=f"export failures counted while the backend is {phase}")
        seconds[phase] = time.monotonic() - started
        failures[phase] = export_failures(server, "otlp") - before

    figures = "; ".join(f"backend {phase} ({seconds[phase]:.1f} s): {tally.summary()}; {tally.latencies()}; "
                        f"{failures[phase]:.0f} failed exports" for phase, tally in tallies.items())
    logger.info("trace backend down, %d clients on /predict: %s", CLIENTS, figures)
    for phase, tally in tallies.items():
        assert tally.failures == [] and tally.answered > CLIENTS, f"{phase}: {figures}"
    assert failures["up"] == 0, figures
    # Logged too, once per exporter: the counter tells the rest.
    assert f"span export to otlp ({backends.otlp.url}/v1/traces) failed" in server.log.read_text(), figures


@pytest.mark.timeout(TIMEOUT_SECONDS)
def test_langsmith_down_fails_no_request_and_holds_back_no_other_exporter(
    traced_server: Server, backends: TraceBackends
) -> None:
    server = traced_server
    before = export_failures(server, "langsmith")
    with stopped(backends.langsmith):
        spans = len(backends.otlp.spans())
        tally = load_until(server, more_export_failures(server, "langsmith", before),
                           what="LangSmith export failures counted")
        # The other exporter delivers meanwhile: each runs on its own thread and queue.
        wait_until(more_spans(backends.otlp, than=spans), timeout=30, what="spans at the OTLP receiver")
    failed = export_failures(server, "langsmith") - before
    figures = f"{tally.summary()}; {tally.latencies()}; {failed:.0f} failed LangSmith exports"
    logger.info("LangSmith down, %d clients on /predict: %s", CLIENTS, figures)
    assert tally.failures == [] and tally.answered > CLIENTS, figures


# --- 12d: Milvus unreachable, the RAG worker killed ------------------------------------------------------------


def rag_query(server: Server) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.post(f"{server.http}/rag/query", json={"question": "Where is Warsaw?"},
                          timeout=REQUEST_TIMEOUT_SECONDS + 30)
    return response, time.monotonic() - started


@pytest.mark.timeout(TIMEOUT_SECONDS)
def test_rag_down_answers_503_and_leaves_predictions_alone(fragile_server: Server) -> None:
    server = fragile_server
    model = model_of(server)
    # A Milvus server that is not there: the RAG service started without its store.
    with background_load(server.http, [predict_route(model)], CLIENTS) as tally:
        wait_until(lambda: tally.answered > CLIENTS, timeout=60, what="requests flowing")
        refusals = [rag_query(server) for _ in range(5)]
        assert httpx.get(f"{server.http}/readyz", timeout=30).status_code == 200  # RAG is not what readiness is about
        # The RAG service itself gone: BentoML's arbiter starts its worker again, meanwhile queries wait for it.
        worker = service_worker(server, "vigil-rag")
        assert worker is not None
        worker.kill()
        killed_at = time.monotonic()
        while_down = rag_query(server)
        respawned(server, "vigil-rag", worker.pid)
        after = rag_query(server)
        answered = tally.answered
        wait_until(lambda: tally.answered > answered + CLIENTS, timeout=60, what="predictions after the RAG worker")
        rag_outage = time.monotonic() - killed_at

    answers = [*refusals, while_down, after]
    bodies = [ErrorResponse.model_validate_json(response.content).error for response, _ in answers]
    rag = [(response.status_code, body.code, f"{seconds:.2f} s")
           for (response, seconds), body in zip(answers, bodies, strict=True)]
    figures = (f"/rag/query → {rag}; {CLIENTS} clients on /predict meanwhile ({rag_outage:.1f} s around the RAG "
               f"worker's kill): {tally.summary()}; {tally.latencies()}")
    logger.info("RAG down: %s", figures)
    assert tally.failures == [], figures
    assert all(response.status_code == 503 for response, _ in answers), figures
    assert {body.code for body in bodies} <= {"StoreUnavailable", "rag_unavailable"}, figures
    assert all("Milvus" in body.message for body in bodies[:5]), figures


# --- 12e: the model worker killed ------------------------------------------------------------------------------


@pytest.mark.timeout(TIMEOUT_SECONDS)
def test_a_killed_model_worker_is_restarted_and_no_request_fails(traced_server: Server) -> None:
    server = traced_server
    model = model_of(server)
    with background_load(server.http, [predict_route(model)], CLIENTS, may_refuse=True) as tally:
        wait_until(lambda: tally.answered > CLIENTS, timeout=60, what="requests flowing")
        worker = service_worker(server, "vigil-sentiment")
        assert worker is not None
        worker.kill()
        killed_at = time.monotonic()
        respawned(server, "vigil-sentiment", worker.pid)
        respawned_after = time.monotonic() - killed_at
        answered = tally.answered
        wait_until(lambda: tally.answered > answered + CLIENTS, timeout=REQUEST_TIMEOUT_SECONDS,
                   what="answers from the new worker")
        answered = tally.answered
        wait_until(lambda: tally.answered > answered + CLIENTS, timeout=60, what="answers flowing again")

    figures = (f"{CLIENTS} clients on /predict, the vigil-sentiment worker SIGKILLed: BentoML had started a new one "
               f"{respawned_after:.1f} s later; longest wait without any answer {longest_gap(tally):.1f} s; "
               f"{tally.summary()}; {tally.latencies()}")
    logger.info("model worker killed: %s", figures)
    assert tally.failures == [], figures
    assert set(tally.refused) <= {"not_ready", "overloaded"}, figures
    assert model_status(server)["ready"] is True


# --- 14: SIGTERM under load ------------------------------------------------------------------------------------


def port_free(port: int) -> bool:
    """Whether a new server could listen on ``port`` (as servers do, past the closed connections' TIME_WAIT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.timeout(TIMEOUT_SECONDS)
def test_sigterm_under_load_finishes_in_flight_requests_logs_them_and_leaves_nothing_behind(
    fragile_server: Server
) -> None:
    server = fragile_server
    model = model_of(server)
    # The module's last test: the signal stops the server the others shared.
    assert server.process.poll() is None, "the SIGTERM test needs the module's server running"
    root = psutil.Process(server.process.pid)
    # BentoML's workers run in sessions of their own, outside `vigil serve`'s process group: the whole tree.
    tree = [root, *root.children(recursive=True)]
    ports = [int(server.http.rsplit(":", 1)[1]), int(server.grpc_target.rsplit(":", 1)[1])]
    signalled = threading.Event()
    # A request sent after the signal may find the port closed; any answer must still be a 200 (not even a 503:
    # the model service outlives the API worker's drain, service.http.OutliveCallers), and one sent before it
    # must be answered.
    with background_load(server.http, [predict_route(model)], CLIENTS,
                         may_go_unanswered=signalled.is_set) as tally:
        wait_until(lambda: tally.answered > 4 * CLIENTS, timeout=60, what="requests flowing")
        signalled.set()
        signalled_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=60)
        stopped_after = time.monotonic() - signalled_at
        _, alive = psutil.wait_procs(tree, timeout=30)
        # Once stopped, new connections are refused.
        wait_until(lambda: tally.unanswered["ClientConnectorError"], timeout=30, what="connections refused")

    rows = read_frame(create_engine(f"sqlite:///{Path(server.env['VIGIL_HOME']) / 'inference_log.db'}"),
                      kind="sentiment")
    logged = dict(zip(rows["request_id"], rows["model_version"], strict=True))
    unlogged = [request_id for request_id in tally.request_ids if request_id not in logged]
    wrong_version = [(request_id, version, logged[request_id])
                     for request_id, version in zip(tally.request_ids, tally.versions, strict=True)
                     if request_id in logged and logged[request_id] != version]
    in_flight = sum(t >= signalled_at for t in tally.answered_at)
    figures = (f"{CLIENTS} clients on /predict, SIGTERM to vigil serve after {tally.answered - in_flight} answers: "
               f"{in_flight} requests in flight answered after the signal; vigil serve exited {code} after "
               f"{stopped_after:.1f} s, {len(tree)} processes; {tally.summary()}; {tally.latencies()}; "
               f"{len(rows)} log rows, {len(unlogged)} answers without one")
    logger.info("SIGTERM under load: %s", figures)
    assert tally.failures == [], figures
    assert alive == [], f"left running: {[(p.pid, p.cmdline()) for p in alive]}; {figures}"
    assert not server.group_alive(), figures
    assert all(port_free(port) for port in ports), f"ports {ports} still bound; {figures}"
    assert code == 0, figures
    assert unlogged == [] and wrong_version == [], f"{unlogged[:5]} {wrong_version[:5]}; {figures}"
    assert len(set(tally.request_ids)) == tally.answered, figures
