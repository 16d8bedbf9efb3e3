"""Real servers for the integration tests, started once per session in a temporary VIGIL_HOME."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import psutil
import pytest

from tests.conftest import REPO_ROOT, VIGIL_BIN, free_port, wait_until
from tests.support.otlp_receiver import OtlpReceiver, otlp_receiver
from vigil.credentials import ensure_private_dir

if TYPE_CHECKING:
    from mlflow import MlflowClient


@dataclass(frozen=True)
class VigilEnv:
    home: Path
    tracking_uri: str
    env: dict[str, str]

    def run(self, *args: str, check: bool = True, timeout: float = 600,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run the real `vigil` command against this session's home and server."""
        result = subprocess.run(
            [VIGIL_BIN, *args], env={**self.env, **(extra_env or {})}, capture_output=True, text=True,
            timeout=timeout, check=False,
        )
        if check and result.returncode != 0:
            command = " ".join(args)
            raise AssertionError(f"vigil {command} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result


ADMIN_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def admin_variables(session: VigilEnv) -> dict[str, str]:
    """What `eval "$(vigil mlflow credentials)"` would set."""
    words = shlex.split(session.run("mlflow", "credentials").stdout)
    assert words[0] == "export"
    variables = dict(word.split("=", 1) for word in words[1:])
    assert set(variables) == set(ADMIN_VARIABLES)
    return variables


@pytest.fixture(scope="session")
def vigil_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VigilEnv]:
    """A real `mlflow server` on a free port, managed by `vigil mlflow up/down`."""
    home = tmp_path_factory.mktemp("vigil-home")
    port = free_port()
    env = {
        **os.environ,
        "VIGIL_HOME": str(home),
        "VIGIL_MLFLOW_PORT": str(port),
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
        "VIGIL_OPERATOR": "pytest",
        "HF_HUB_OFFLINE": "1",
    }
    session = VigilEnv(home, f"http://127.0.0.1:{port}", env)
    session.run("mlflow", "up", timeout=180)
    # The server asks for a login; the tests' own MLflow clients and scripts get the admin's, as a user's do.
    env.update(admin_variables(session))
    previous = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "VIGIL_HOME", *ADMIN_VARIABLES)}
    os.environ.update({key: env[key] for key in ADMIN_VARIABLES})
    os.environ["MLFLOW_TRACKING_URI"] = session.tracking_uri
    os.environ["VIGIL_HOME"] = str(home)
    yield session
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    session.run("mlflow", "down", check=False)


# Small but real: enough data and epochs that obvious sentences are labelled right, in well under a minute.
TRAIN_ARGS = ("train", "sentiment", "--limit", "600", "--epochs", "3", "--seed", "11")


@pytest.fixture(scope="session")
def trained_twice(vigil_env: VigilEnv) -> tuple[str, str]:
    """Two versions of `sentiment` alike, as training twice with the same seed and data makes them: (first,
    second). The second is registered as a copy of the first (its run, files and digest) and made the challenger,
    as training registers a new version: a second training would cost minutes of CI to make the same model.
    That training does make the same model is test_training's `test_same_seed_same_metrics`, on small runs."""
    from mlflow import MlflowClient

    from vigil import registry

    vigil_env.run(*TRAIN_ARGS)
    client = MlflowClient(vigil_env.tracking_uri, vigil_env.tracking_uri)
    second = str(client.copy_model_version("models:/sentiment/1", "sentiment").version)
    registry.move_alias(client, "sentiment", registry.CHALLENGER, second, reason="trained alike", action="register")
    return "1", second


# A weak `sentiment` version: few sentences, one epoch. The gate tests refuse it; as a shadow it disagrees.
WEAK_ARGS = ("train", "sentiment", "--limit", "40", "--epochs", "1", "--seed", "11")
WEAK_MODEL = "sentiment-weak"


@pytest.fixture(scope="session")
def weak_trained(vigil_env: VigilEnv) -> str:
    """`sentiment-weak` v1, trained once with WEAK_ARGS under a name of its own; a test that needs a weak version of
    its model registers a copy (`register_weak`), as trained_twice does for the second version: each test training
    it again made the same model at the cost of a training. That training does make the same model is test_training's
    `test_same_seed_same_metrics`, which trains it once more."""
    vigil_env.run(*WEAK_ARGS, extra_env={"VIGIL_SENTIMENT_MODEL_NAME": WEAK_MODEL})
    return "1"


def register_weak(client: MlflowClient, weak_version: str, name: str) -> str:
    """A copy of the weak version (its run, files and digest) as ``name``'s newest version, with the aliases training
    gives a new version: the challenger, and the champion when there is none."""
    from vigil import registry

    version = str(client.copy_model_version(f"models:/{WEAK_MODEL}/{weak_version}", name).version)
    registry.register_initial_aliases(client, name, version, reason=f"the weak training ({' '.join(WEAK_ARGS)})")
    return version


# --- a running `vigil serve`, shared by the serving and RAG-evaluation tests -----------------------------------

MODEL = "serving-sentiment"
INGEST_TOKEN = "test-ingest-token-of-at-least-32-characters"  # VIGIL_API_TOKEN of the session's server
RAG_TITLES = {"Super Bowl 50", "Warsaw"}


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    http: str
    grpc_target: str
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    # A copy of the Milvus Lite store as the service got it, for in-process runs on the same data (the service
    # holds the store's lock, and tests add documents to it).
    milvus_snapshot: Path | None = None

    def terminate(self) -> None:
        """Stop as a supervisor does: SIGTERM to `vigil serve` alone, which must take BentoML's processes along."""
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)
        try:
            wait_until(lambda: not self.group_alive(), timeout=30, interval=0.2, what="BentoML's processes to exit")
        finally:
            self.stop()

    def group_alive(self) -> bool:
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self) -> None:
        # BentoML's workers run in sessions of their own, outside this process group: found by the process tree.
        try:
            tree = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.group_alive():  # what outlived its parent must not hold ports and cores for the next tests
            os.killpg(self.process.pid, signal.SIGKILL)
        _, survivors = psutil.wait_procs(tree, timeout=15)
        for survivor in survivors:
            with contextlib.suppress(psutil.NoSuchProcess):
                survivor.kill()


# The session server's home, once it has exported its models to ONNX (and judged the classifier's INT8 graph). Every
# later server starts with those exports, as a restarted service does: the export, quantization and the check
# against torch took ~10 s a start, paid once here (the session server runs the cold path) instead of ~15 times.
_warm_exports: list[Path] = []


def _copy_warm_exports(home: Path) -> None:
    for source in _warm_exports:
        for exports in (source / "models").glob("*/onnx"):
            target = home / "models" / exports.parent.name / "onnx"
            if not target.exists():
                ensure_private_dir(target.parent)  # as the service makes it; copytree keeps the folder's own mode
                shutil.copytree(exports, target)


def start_server(env: dict[str, str], log: Path, expect_ready: bool = True) -> Server:
    _copy_warm_exports(Path(env["VIGIL_HOME"]))
    http_port, grpc_port = free_port(), free_port()
    process = subprocess.Popen(
        [VIGIL_BIN, "serve", "--port", str(http_port), "--grpc-port", str(grpc_port)],
        env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    server = Server(process, f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", log, env)

    def answering() -> bool:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            status = httpx.get(f"{server.http}/readyz", timeout=2).status_code
        except httpx.HTTPError:
            return False
        return status == 200 if expect_ready else status in (200, 503)

    try:
        wait_until(answering, timeout=180, interval=0.5, what="vigil serve")
    except AssertionError:
        server.stop()
        raise AssertionError(f"vigil serve did not come up:\n{log.read_text()[-3000:]}") from None
    return server


@pytest.fixture(scope="session")
def registry_client(vigil_env: VigilEnv, trained_twice: tuple[str, str]) -> MlflowClient:
    """`serving-sentiment` v1 = a copy of the trained `sentiment` v1, champion; other tests move `sentiment`."""
    from mlflow import MlflowClient

    client = MlflowClient(vigil_env.tracking_uri)
    client.copy_model_version("models:/sentiment/1", MODEL)
    vigil_env.run("models", "promote", MODEL, "--version", "1", "--reason", "serving tests")
    return client


@pytest.fixture(scope="session")
def langsmith() -> Iterator[OtlpReceiver]:
    """LangSmith's cloud cannot run here: a local endpoint that decodes real OTLP stands in for it."""
    with otlp_receiver() as receiver:
        yield receiver


@pytest.fixture(scope="session")
def server(vigil_env: VigilEnv, registry_client: MlflowClient, langsmith: OtlpReceiver,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One `vigil serve` for the session; the serving tests stop it at their end (shutdown is what they test)."""
    home = tmp_path_factory.mktemp("serve-home")
    env = {**vigil_env.env, "VIGIL_HOME": str(home), "VIGIL_SENTIMENT_MODEL_NAME": MODEL,
           "VIGIL_ALIAS_POLL_SECONDS": "1", "VIGIL_TRACING": "otlp", "LANGSMITH_API_KEY": "ls-test-key",
           "LANGSMITH_ENDPOINT": langsmith.url, "LANGSMITH_PROJECT": "vigil-tests",
           "VIGIL_API_TOKEN": INGEST_TOKEN,
           # Every request is shadowed; nothing is scored until a test (test_feedback) gives the model a challenger.
           "VIGIL_SHADOW_PERCENT": "100",
           # The span reader answers once test_reader registers one (the extractive generator until then and after).
           "VIGIL_GENERATOR": "reader",
           # test_reader's reader is trained on 16 questions: its margins over "no answer" say nothing, and the
           # default threshold would hand its answers to the extractive generator. Here any span it finds answers
           # (the threshold's fall-back is tests/unit/test_reader.py's).
           "VIGIL_RAG_READER_MIN_MARGIN": "-1000",
           # The tests that look for a request's trace send it sampled; their traces are kept however fast they come.
           "VIGIL_TRACE_REMOTE_MAX_PER_SECOND": "0",
           # A batch of 64 long reviews can take the default budget of 1 s on a busy 2-core machine, and BentoML then
           # refuses it as overloaded; no test here is about shedding load.
           "VIGIL_BATCH_MAX_LATENCY_MS": "10000"}
    # A few articles of the shipped corpus, ingested before the service takes the Milvus Lite store.
    corpus = home / "corpus.jsonl"
    corpus.write_text("".join(line for line in (REPO_ROOT / "data" / "rag" / "corpus.jsonl").open()
                              if json.loads(line)["title"] in RAG_TITLES))
    vigil_env.run("rag", "ingest", str(corpus), extra_env=env, timeout=300)
    snapshot = tmp_path_factory.mktemp("serve-milvus-snapshot") / "milvus"
    shutil.copytree(home / "milvus", snapshot)
    running = start_server(env, home / "serve.log")
    running.milvus_snapshot = snapshot
    _warm_exports.append(home)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def served_qa_subset(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped QA pairs whose gold passages are in the served subset (Super Bowl 50, Warsaw)."""
    corpus = Path(server.env["VIGIL_HOME"], "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    served = {json.loads(line)["id"] for line in corpus}
    qa = (REPO_ROOT / "data" / "rag" / "qa.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    path = tmp_path_factory.mktemp("qa-subset") / "qa-subset.jsonl"
    path.write_text("".join(line for line in qa if set(json.loads(line)["passage_ids"]) <= served))
    return path


@pytest.fixture(scope="module")
def live_server(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The session's service; when the serving tests have shut it down already, the same service started again on
    a copy of its first store."""
    if server.process.poll() is None:
        yield server
        return
    assert server.milvus_snapshot is not None
    home = tmp_path_factory.mktemp("serve-again")
    shutil.copytree(server.milvus_snapshot, home / "milvus")
    again = start_server({**server.env, "VIGIL_HOME": str(home)}, home / "serve.log")
    try:
        yield again
    finally:
        again.stop()


@pytest.fixture(scope="module")
def rag_endpoint(live_server: Server) -> str:
    return live_server.http
