"""`vigil eval rag` against a running `vigil serve` (--endpoint) and in process on a copy of the same Milvus Lite
store: the same retrieval figures and answers, each a run in MLflow `evaluations` on the session's real server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import free_port
from tests.integration.conftest import Server, VigilEnv

QUESTIONS = 12
K = 5


@pytest.fixture(scope="module")
def in_process_home(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A VIGIL_HOME holding a copy of the store the service started with (the service keeps the original locked)."""
    assert server.milvus_snapshot is not None
    home = tmp_path_factory.mktemp("eval-rag-home")
    shutil.copytree(server.milvus_snapshot, home / "milvus")
    return home


def eval_rag(vigil_env: VigilEnv, out: Path, *args: str, home: Path | None = None) -> dict[str, object]:
    # No LangSmith key (a developer's own must not send test data out); a free HTTP port, so a `vigil serve`
    # running on this machine is not mistaken for the owner of the test's store.
    extra = {"LANGSMITH_API_KEY": "", "VIGIL_HTTP_PORT": str(free_port())}
    if home is not None:
        extra["VIGIL_HOME"] = str(home)
    result = vigil_env.run("eval", "rag", "--k", str(K), "--limit", str(QUESTIONS), "--json", str(out), *args,
                           extra_env=extra, timeout=600)
    assert "passage recall@5" in result.stdout, result.stdout
    report: dict[str, object] = json.loads(out.read_text())
    return report


def test_endpoint_and_in_process_agree_and_both_are_logged(
    vigil_env: VigilEnv, server: Server, served_qa_subset: Path, in_process_home: Path, rag_endpoint: str,
    tmp_path: Path,
) -> None:
    remote = eval_rag(vigil_env, tmp_path / "endpoint.json", "--dataset", str(served_qa_subset),
                      "--endpoint", rag_endpoint)
    local = eval_rag(vigil_env, tmp_path / "local.json", "--dataset", str(served_qa_subset), home=in_process_home)

    assert (remote["source"], local["source"]) == ("endpoint", "in-process")
    assert remote["dataset"] == local["dataset"]  # type: ignore[comparison-overlap]
    ours, theirs = remote["metrics"], local["metrics"]
    assert isinstance(ours, dict) and isinstance(theirs, dict)
    assert ours["questions"] == theirs["questions"] == QUESTIONS
    for figure in ("recall", "mrr", "ndcg", "answer_containment", "token_f1", "groundedness"):
        assert ours[figure] == theirs[figure], figure
    # Same questions, same store, same pipeline: the same passages ranked the same way, and the same answers.
    remote_rows, local_rows = remote["results"], local["results"]
    assert isinstance(remote_rows, list) and isinstance(local_rows, list)
    assert [(r["id"], r["passages"], r["answer"], r["total_tokens"]) for r in remote_rows] == \
           [(r["id"], r["passages"], r["answer"], r["total_tokens"]) for r in local_rows]
    # The subset's questions are about the served articles: retrieval finds most gold passages.
    assert ours["recall"][str(K)] >= 0.5
    assert 0.0 <= ours["ndcg"][str(K)] <= ours["recall"][str(K)]
    assert ours["prompt_tokens"]["mean"] > 0 and ours["latency_ms"]["p95"] >= ours["latency_ms"]["p50"] > 0
    assert remote["generator"] == "extractive"

    client = MlflowClient(vigil_env.tracking_uri)
    for report in (remote, local):
        run = client.get_run(str(report["run_id"]))
        assert run.info.status == "FINISHED"
        assert client.get_experiment(run.info.experiment_id).name == "evaluations"
        tags = run.data.tags
        assert tags["vigil.eval.kind"] == "rag" and tags["vigil.eval.source"] == report["source"]
        assert tags["dataset.fingerprint"] == remote["dataset"]["fingerprint"]  # type: ignore[index]
        assert (tags["vigil.rag.k"], tags["vigil.rag.limit"]) == (str(K), str(QUESTIONS))
        assert tags["vigil.rag.generator"] == "extractive" and tags["vigil.rag.embedder"] == "text-embedder"
        assert run.data.metrics["recall_at_5"] == ours["recall"]["5"]
        assert run.data.metrics["mrr"] == ours["mrr"]
        assert run.data.params["k"] == str(K)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"evaluation.json", "results.json"} <= artifacts
        table = json.loads(Path(client.download_artifacts(run.info.run_id, "results.json", str(tmp_path))).read_text())
        assert len(table["data"]) == QUESTIONS and "recall_at_k" in table["columns"]


def test_in_process_refuses_a_store_a_service_owns(vigil_env: VigilEnv, server: Server, served_qa_subset: Path,
                                                   rag_endpoint: str) -> None:
    port = rag_endpoint.rsplit(":", 1)[1]
    result = vigil_env.run("eval", "rag", "--dataset", str(served_qa_subset), "--limit", "2", check=False,
                           extra_env={"VIGIL_HOME": server.env["VIGIL_HOME"], "VIGIL_HTTP_PORT": port,
                                      "LANGSMITH_API_KEY": ""})
    assert result.returncode == 1
    assert f"--endpoint http://127.0.0.1:{port}" in result.stdout + result.stderr
