"""A registered version whose files were changed in the artifact store after registration is refused by the
serving model holder, /status names the changed file, and the verified version keeps answering."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from tests.conftest import wait_until
from tests.integration.conftest import Server, VigilEnv, start_server
from vigil import model_cache, model_digest
from vigil.sentiment_model import CLASSIFIER_PATH, HEAD_FILE

# A name of its own: the version numbers of the serving tests' model stay theirs.
NAME = "guarded-sentiment"
# The first test of a session also pays for MLflow and training (pyproject's 600 s are sized for that); this one adds
# a server of its own (about 20-30 s to start on 2 cores) and a minute at most of its own.
TIMEOUT_SECONDS = 900
POSITIVE = "I love this phone, it works great and the battery lasts forever."


def model_status(server: Server) -> dict[str, object]:
    status: dict[str, object] = httpx.get(f"{server.http}/status", timeout=30).json()["models"][NAME]
    return status


@pytest.fixture(scope="module")
def guarded(vigil_env: VigilEnv, trained_twice: tuple[str, str],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, MlflowClient]]:
    """`guarded-sentiment` v1 = a copy of the trained `sentiment` v1 (its files and its digest record), champion,
    served by a `vigil serve` of its own."""
    client = MlflowClient(vigil_env.tracking_uri)
    client.copy_model_version(f"models:/sentiment/{trained_twice[0]}", NAME)
    vigil_env.run("models", "promote", NAME, "--version", "1", "--reason", "safe loading tests")
    home = tmp_path_factory.mktemp("guarded-serve")
    env = {**vigil_env.env, "VIGIL_HOME": str(home), "VIGIL_SENTIMENT_MODEL_NAME": NAME,
           "VIGIL_ALIAS_POLL_SECONDS": "1", "VIGIL_TRACING": "off", "VIGIL_MODEL_RUNTIME": "torch"}
    running = start_server(env, home / "serve.log")
    try:
        yield running, client
    finally:
        running.stop()


@pytest.mark.timeout(TIMEOUT_SECONDS)
def test_a_version_changed_in_the_artifact_store_is_refused_and_reported_in_status(
        guarded: tuple[Server, MlflowClient], vigil_env: VigilEnv, tmp_path: Path) -> None:
    server, client = guarded
    status = model_status(server)
    assert (status["version"], status["ready"]) == ("1", True)
    assert str(status["integrity"]).startswith("verified (sha256:")

    # v2: the same files, uploaded to a run of their own and registered with the same digest record, as training
    # registers a version; then one byte of its head is changed where the artifact store keeps it.
    record = {key: value for key, value in client.get_model_version(NAME, "1").tags.items()
              if key in (model_digest.DIGEST_TAG, model_digest.FILES_TAG)}
    assert len(record) == 2, "training recorded no digest"
    files = model_cache.download_version(client, NAME, "1", tmp_path / "download")
    (files / model_cache.COMPLETE_MARKER).unlink()
    run = client.create_run(client.create_experiment("safe-loading-tests"))
    client.log_artifacts(run.info.run_id, str(files), "model")
    client.set_terminated(run.info.run_id)
    client.create_model_version(NAME, f"{run.info.artifact_uri}/model", run_id=run.info.run_id, tags=record)
    [stored] = (vigil_env.home / "mlflow").rglob(f"{run.info.run_id}/artifacts/model/{CLASSIFIER_PATH}/{HEAD_FILE}")
    head = bytearray(stored.read_bytes())
    head[-1] ^= 0x01
    stored.write_bytes(bytes(head))

    vigil_env.run("models", "promote", NAME, "--version", "2", "--force", "--reason", "a changed artifact")

    def refused() -> dict[str, object] | None:
        state = model_status(server)
        return state if "v2 refused" in str(state["reason"]) else None

    refusal = wait_until(refused, timeout=120, interval=1, what="v2 refused in /status")
    assert refusal is not None
    reason = str(refusal["reason"])
    assert reason.startswith(f"{NAME} v2 refused: files differ from the digest recorded at registration")
    assert f"{HEAD_FILE} changed" in reason and reason.endswith("; still serving v1")
    assert (refusal["version"], refusal["ready"]) == ("1", True)
    answer = httpx.post(f"{server.http}/predict", json={"text": POSITIVE}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == {"name": NAME, "version": "1"}
