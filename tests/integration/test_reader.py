"""The span reader end to end: `vigil train reader` registers a version, the session's RAG service switches to it
when its alias appears, `vigil eval rag` reports exact match and F1, and the promotion gate refuses a version below
the policy's bar.

The session's service is shared: other tests expect the extractive generator's answers, so this module moves the
reader's aliases away at its end and waits for the service to answer extractively again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.conftest import wait_until
from tests.integration.conftest import Server, VigilEnv
from vigil import model_digest

if TYPE_CHECKING:
    from mlflow import MlflowClient

READER = "rag-reader"
QUESTION = "Which NFL team represented the AFC at Super Bowl 50?"
# A few questions and one step: a real registered version in seconds, not a good reader.
TRAIN_ARGS = ("train", "reader", "--limit", "16", "--eval-limit", "4", "--max-seq-len", "128")


def ask(server: Server) -> dict[str, Any]:
    response = httpx.post(f"{server.http}/rag/query", json={"question": QUESTION, "top_k": 3}, timeout=60)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def generator_state(server: Server) -> dict[str, Any]:
    state: dict[str, Any] = httpx.get(f"{server.http}/status", timeout=30).json()["rag_generator"]
    return state


@pytest.fixture(scope="module")
def reader_version(vigil_env: VigilEnv, live_server: Server, registry_client: MlflowClient) -> Iterator[str]:
    """rag-reader v1, trained and registered (champion); afterwards no alias of rag-reader is left and the session's
    service answers extractively again."""
    assert generator_state(live_server)["answering"] == "extractive"  # nothing registered yet
    trained = vigil_env.run(*TRAIN_ARGS, timeout=300)
    assert "aliases set: challenger, champion" in trained.stdout, trained.stdout
    try:
        yield "1"
    finally:
        for alias in ("champion", "challenger"):
            registry_client.delete_registered_model_alias(READER, alias)
        wait_until(lambda: ask(live_server)["generator"]["name"] == "extractive", timeout=60,
                   what="the RAG service to fall back to the extractive generator")


def test_the_service_switches_to_the_reader_when_its_alias_appears(live_server: Server, reader_version: str) -> None:
    answer = wait_until(lambda: (body := ask(live_server))["generator"]["name"] == "reader" and body, timeout=120,
                        what="the RAG service to load rag-reader@champion")
    assert answer["generator"]["model"] == f"{READER} v{reader_version}"
    # One span, marked with the number of the chunk it comes from, and found in that chunk.
    span, _, mark = answer["answer"].rpartition(" [")
    cited = answer["citations"][int(mark.rstrip("]")) - 1]
    assert span and span in cited["text"], answer
    assert answer["usage"]["total_tokens"] == answer["usage"]["prompt_tokens"] + answer["usage"]["completion_tokens"]
    state = generator_state(live_server)
    assert (state["configured"], state["answering"], state["reader"]) == ("reader", "reader", f"{READER} v1")
    assert state["follower"]["integrity"].startswith("verified (sha256:")


def test_eval_rag_reports_exact_match_and_f1(vigil_env: VigilEnv, live_server: Server, reader_version: str,
                                             served_qa_subset: Path, tmp_path: Path) -> None:
    wait_until(lambda: ask(live_server)["generator"]["name"] == "reader", timeout=120, what="the reader")
    out = tmp_path / "report.json"
    vigil_env.run("eval", "rag", "--dataset", str(served_qa_subset), "--endpoint", live_server.http, "--limit", "4",
                  "--json", str(out))
    report = json.loads(out.read_text())
    metrics = report["metrics"]
    assert report["generator"] == "reader" and metrics["questions"] == 4
    assert 0.0 <= metrics["exact_match"] <= metrics["token_f1"] <= 1.0
    assert all({"exact_match", "token_f1"} <= set(row["scores"]) for row in report["results"])


def test_the_gate_refuses_a_reader_below_the_policys_bar(vigil_env: VigilEnv, registry_client: MlflowClient,
                                                         reader_version: str, tmp_path: Path) -> None:
    # The candidate: the same files as v1, registered again with their digest (a second training run would cost
    # CI time and be as untrained); the policy asks a held-out F1 no few-step reader reaches.
    copied = registry_client.copy_model_version(f"models:/{READER}/{reader_version}", READER)
    manifest = model_digest.recorded(registry_client, READER, reader_version)
    assert manifest is not None
    model_digest.record(registry_client, READER, str(copied.version), manifest)
    policy = tmp_path / "policy.toml"
    policy.write_text('[gate]\nlimit = 8\nbootstrap = 100\n\n[models."rag-reader".rules.token_f1]\n'
                      'max_regression = 0.02\nminimum = 0.9\n')
    refused = vigil_env.run("models", "promote", READER, "--version", str(copied.version), "--reason", "test",
                            check=False, extra_env={"VIGIL_PROMOTION_POLICY": str(policy)})
    assert refused.returncode != 0, refused.stdout
    assert "refused" in refused.stdout + refused.stderr and "token_f1" in refused.stdout + refused.stderr
    tags = registry_client.get_model_version(READER, str(copied.version)).tags
    assert tags["vigil.champion.evaluation_verdict"] == "fail"
    run = registry_client.get_run(tags["vigil.champion.evaluation_run_id"])
    assert run.data.params["questions"] == "8" and "candidate_token_f1" in run.data.metrics
    assert registry_client.get_model_version_by_alias(READER, "champion").version == reader_version
