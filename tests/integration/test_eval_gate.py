"""`vigil eval …` and the gated `vigil models promote` against a real MLflow server and real trained models.

The tests have a registered model of their own (`sentiment-evalgate`), since other tests move the aliases of
`sentiment`: v1, the good one, is a copy of the session's trained `sentiment` v1 (its run, files and digest record:
training it again with the same arguments would give the same model and cost minutes of CI), v2 a weak one, a copy
of the session's weak training (`weak_trained`) registered as training registers a new version; the sentiment
promotion gate applies to it through VIGIL_SENTIMENT_MODEL_NAME, under the shipped policy
(evaluations/policy.toml). They run in file order: the refusal, the forced promotion and the accepted
promotion are one story told in steps.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from evaluations.schemas import Comparison, SentimentEvaluation
from tests.integration.conftest import MODEL as SERVED_MODEL
from tests.integration.conftest import Server, VigilEnv, register_weak
from training.data import fingerprint, limit_stratified, load_sentiment, split_sentiment

MODEL = "sentiment-evalgate"


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    """The gate of the sentiment model applies to our own name; the policy is the shipped one."""
    return {"VIGIL_SENTIMENT_MODEL_NAME": MODEL}


@pytest.fixture(scope="module")
def client(vigil_env: VigilEnv) -> MlflowClient:
    mlflow.set_tracking_uri(vigil_env.tracking_uri)
    mlflow.set_registry_uri(vigil_env.tracking_uri)
    return MlflowClient(vigil_env.tracking_uri, vigil_env.tracking_uri)


@pytest.fixture(scope="module")
def versions(vigil_env: VigilEnv, env: dict[str, str], client: MlflowClient,
             trained_twice: tuple[str, str], weak_trained: str) -> tuple[str, str]:
    """(good, weak): the first, trained with the session's TRAIN_ARGS, champion; the second, weak, challenger."""
    good = client.copy_model_version(f"models:/sentiment/{trained_twice[0]}", MODEL).version
    vigil_env.run("models", "promote", MODEL, "--version", str(good), "--reason", "the good version",
                  extra_env=env)
    return str(good), register_weak(client, weak_trained, MODEL)


def said(result: subprocess.CompletedProcess[str]) -> str:
    """The command's output with rich's line wrapping (80 columns off a terminal) undone."""
    return " ".join(result.stdout.split())


def predictions_of(client: MlflowClient, run_id: str, scratch: Path) -> pd.DataFrame:
    return pd.read_parquet(client.download_artifacts(run_id, "predictions/predictions.parquet", str(scratch)))


def test_eval_sentiment_scores_the_training_test_split(
    vigil_env: VigilEnv, env: dict[str, str], client: MlflowClient, versions: tuple[str, str], tmp_path: Path
) -> None:
    good, _ = versions
    out = tmp_path / "good.json"
    shown = vigil_env.run("eval", "sentiment", "--model", f"{MODEL}/{good}", "--json", str(out), extra_env=env)
    assert "macro-F1" in said(shown) and "ECE (10 bins)" in said(shown)
    report = SentimentEvaluation.model_validate_json(out.read_text())

    # The data is the test split training made for this version, and the figures are training's own.
    frame, _ = load_sentiment(domains=["amazon", "yelp"])
    test = split_sentiment(limit_stratified(frame, 600, 11), 11).test
    assert report.dataset.fingerprint == fingerprint(test) and report.metrics.rows == len(test)
    training = client.get_run(client.get_model_version(MODEL, good).run_id).data.metrics
    assert report.metrics.macro_f1 == pytest.approx(training["test_macro_f1"], abs=1e-9)
    assert report.metrics.per_domain_macro_f1["amazon"] == pytest.approx(training["test_amazon_macro_f1"], abs=1e-9)

    # The CLI's figures equal scikit-learn's on the predictions the run kept.
    assert report.run_id
    rows = predictions_of(client, report.run_id, tmp_path)
    assert rows["text"].tolist() == test["text"].tolist()
    assert report.metrics.accuracy == pytest.approx(accuracy_score(rows["label"], rows["predicted"]))
    assert report.metrics.macro_f1 == pytest.approx(f1_score(rows["label"], rows["predicted"], average="macro"))
    assert report.metrics.roc_auc == pytest.approx(roc_auc_score(rows["label"], rows["p_positive"]))
    assert report.metrics.macro_f1 > 0.75

    run = client.get_run(report.run_id)
    assert client.get_experiment(run.info.experiment_id).name == "evaluations"
    assert run.data.tags["vigil.model"] == MODEL and run.data.tags["vigil.model_version"] == good
    assert run.data.tags["dataset.name"] == "test"
    assert run.data.tags["dataset.fingerprint"] == fingerprint(test)
    assert run.data.metrics["ece"] == pytest.approx(report.metrics.ece)
    assert {"latency_p50_ms", "latency_p95_ms", "roc_auc", "yelp_macro_f1"} <= set(run.data.metrics)
    plots = {a.path for a in client.list_artifacts(report.run_id, "plots")}
    assert plots == {"plots/confusion_matrix.png", "plots/calibration.png"}


def test_endpoint_evaluation_equals_in_process(
    vigil_env: VigilEnv, env: dict[str, str], client: MlflowClient, versions: tuple[str, str], live_server: Server,
    tmp_path: Path,
) -> None:
    """The real `vigil serve` (the session's) answers the evaluation's requests; in process, the same registered
    version scores the same rows."""
    _, weak = versions
    state = httpx.get(f"{live_server.http}/status", timeout=10).json()["models"][SERVED_MODEL]
    served = state["version"]
    common = ("eval", "sentiment", "--model", f"{SERVED_MODEL}/{served}", "--data", "imdb", "--limit", "150")
    vigil_env.run(*common, "--json", str(tmp_path / "local.json"), extra_env=env)
    vigil_env.run(*common, "--endpoint", live_server.http, "--json", str(tmp_path / "http.json"), extra_env=env)
    local = SentimentEvaluation.model_validate_json((tmp_path / "local.json").read_text())
    remote = SentimentEvaluation.model_validate_json((tmp_path / "http.json").read_text())
    assert (local.source, remote.source) == ("in-process", "endpoint")
    assert (remote.model.name, remote.model.version) == (SERVED_MODEL, served)
    assert remote.dataset.fingerprint == local.dataset.fingerprint

    assert local.run_id and remote.run_id
    ours, theirs = predictions_of(client, local.run_id, tmp_path / "a"), predictions_of(client, remote.run_id,
                                                                                         tmp_path / "b")
    assert ours["text"].tolist() == theirs["text"].tolist()
    if state["precision"] == "float":
        assert ours["predicted_label"].tolist() == theirs["predicted_label"].tolist()
        # Different batch shapes (32 in-process, 150 per request) round differently in the last float32 bits.
        assert ours["p_positive"].to_numpy() == pytest.approx(theirs["p_positive"].to_numpy(), abs=1e-5)
        for metric in ("accuracy", "macro_f1", "roc_auc", "ece"):
            assert getattr(local.metrics, metric) == pytest.approx(getattr(remote.metrics, metric), abs=1e-4), metric
    else:
        # The service serves the INT8 graph it checked against the float one on the version's own test split
        # (within 0.005 macro-F1 there); the endpoint evaluation measures what is served, so on other data
        # (imdb here) a borderline text may flip. Both figures are in /status.
        verdict = state["quantization"]
        assert state["precision"] == "int8" and abs(verdict["difference"]) <= verdict["tolerance"]
        agreement = (ours["predicted_label"] == theirs["predicted_label"]).mean()
        assert agreement >= 0.9, agreement
        assert ours["p_positive"].to_numpy() == pytest.approx(theirs["p_positive"].to_numpy(), abs=0.2)
        for metric in ("accuracy", "macro_f1"):
            assert getattr(local.metrics, metric) == pytest.approx(getattr(remote.metrics, metric), abs=0.05), metric
    assert client.get_run(remote.run_id).data.tags["vigil.eval.source"] == "endpoint"

    wrong = vigil_env.run("eval", "sentiment", "--model", f"{MODEL}/{weak}", "--endpoint", live_server.http,
                          "--limit", "20", check=False, extra_env=env)
    assert wrong.returncode == 1
    assert f"serves {SERVED_MODEL} v{served}, not {MODEL} v{weak}" in said(wrong)


def test_compare_refuses_the_weak_candidate_with_reasons(
    vigil_env: VigilEnv, env: dict[str, str], client: MlflowClient, versions: tuple[str, str]
) -> None:
    good, weak = versions
    result = vigil_env.run("eval", "compare", MODEL, "--candidate", weak, "--baseline", good, "--json", "-",
                           check=False, extra_env=env)
    assert result.returncode == 1, result.stderr
    comparison = Comparison.model_validate_json(result.stdout)
    assert not comparison.passed
    failed = {rule.metric: rule for rule in comparison.rules if not rule.passed}
    assert "macro_f1" in failed and "lower, more than allowed 0.0100" in failed["macro_f1"].reason
    f1 = next(d for d in comparison.deltas if d.metric == "macro_f1")
    assert f1.delta is not None and f1.ci_low is not None and f1.ci_high is not None
    assert f1.ci_low <= f1.delta <= f1.ci_high < 0
    # Rows held out from both versions, though they were trained on different subsets.
    assert "minus sentences either trained on" in comparison.dataset.description

    assert comparison.run_id
    run = client.get_run(comparison.run_id)
    assert run.data.tags["vigil.eval.kind"] == "compare" and run.data.tags["vigil.verdict"] == "fail"
    assert run.data.tags["vigil.candidate_version"] == weak and run.data.tags["vigil.baseline_version"] == good
    assert run.data.metrics["delta_macro_f1"] == pytest.approx(f1.delta)
    children = client.search_runs([run.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{comparison.run_id}'")
    assert sorted(c.data.tags["vigil.eval.role"] for c in children) == ["baseline", "candidate"]


def test_gate_refuses_to_promote_the_weak_version(
    vigil_env: VigilEnv, env: dict[str, str], client: MlflowClient, versions: tuple[str, str]
) -> None:
    good, weak = versions
    assert client.get_model_version_by_alias(MODEL, "champion").version == good
    assert client.get_model_version_by_alias(MODEL, "challenger").version == weak

    refused = vigil_env.run("models", "promote", MODEL, check=False, extra_env=env)
    assert refused.returncode == 1
    assert f"promotion of {MODEL} v{weak} to @champion refused" in said(refused)
    assert "macro_f1" in said(refused) and "--force --reason" in said(refused)
    assert client.get_model_version_by_alias(MODEL, "champion").version == good

    tags = client.get_model_version(MODEL, weak).tags
    assert tags["vigil.champion.evaluation_verdict"] == "fail"
    evaluation = client.get_run(tags["vigil.champion.evaluation_run_id"])
    assert evaluation.data.tags["vigil.eval.trigger"] == "gate:champion"
    assert evaluation.data.tags["vigil.verdict"] == "fail"
    assert evaluation.info.run_id in said(refused)

    (attempt,) = client.search_runs(
        [evaluation.info.experiment_id],
        filter_string=f"tags.`vigil.action` = 'refused' and tags.`vigil.model` = '{MODEL}'",
    )
    assert attempt.data.tags["vigil.evaluation_run_id"] == evaluation.info.run_id
    assert "macro_f1" in attempt.data.tags["vigil.refusals"]


def test_force_overrides_the_gate_and_is_recorded(
    vigil_env: VigilEnv, env: dict[str, str], client: MlflowClient, versions: tuple[str, str]
) -> None:
    good, weak = versions
    no_reason = vigil_env.run("models", "promote", MODEL, "--force", check=False, extra_env=env)
    assert no_reason.returncode == 1 and "--force needs --reason" in said(no_reason)

    reason = "hotfix: accept the smaller model for the demo"
    forced = vigil_env.run("models", "promote", MODEL, "--force", "--reason", reason, extra_env=env)
    assert "forced past the gate" in said(forced)
    assert client.get_model_version_by_alias(MODEL, "champion").version == weak
    tags = client.get_model_version(MODEL, weak).tags
    assert tags["vigil.champion.action"] == "forced-promote"
    assert tags["vigil.champion.reason"] == reason
    assert tags["vigil.champion.from_version"] == good
    move = client.get_run(tags["vigil.champion.move_run_id"])
    assert move.data.tags["vigil.action"] == "forced-promote" and move.data.tags["vigil.reason"] == reason
    # The forced move links the evaluation it overrode.
    assert move.data.tags["vigil.evaluation_run_id"] == tags["vigil.champion.evaluation_run_id"]
    assert move.data.tags["vigil.evaluation_verdict"] == "fail"


def test_gate_accepts_the_good_version_over_the_weak_one(
    vigil_env: VigilEnv, env: dict[str, str], client: MlflowClient, versions: tuple[str, str]
) -> None:
    good, weak = versions
    assert client.get_model_version_by_alias(MODEL, "champion").version == weak
    promoted = vigil_env.run("models", "promote", MODEL, "--version", good, "--reason", "better model back",
                             extra_env=env)
    assert "gate: pass" in said(promoted)
    assert client.get_model_version_by_alias(MODEL, "champion").version == good
    tags = client.get_model_version(MODEL, good).tags
    assert tags["vigil.champion.evaluation_verdict"] == "pass"
    assert tags["vigil.champion.action"] == "promote" and tags["vigil.champion.from_version"] == weak
    evaluation = client.get_run(tags["vigil.champion.evaluation_run_id"])
    assert evaluation.data.tags["vigil.verdict"] == "pass"
    assert evaluation.data.tags["vigil.candidate_version"] == good
    move = client.get_run(tags["vigil.champion.move_run_id"])
    assert move.data.tags["vigil.evaluation_run_id"] == evaluation.info.run_id


def test_an_alias_without_holder_needs_no_comparison(
    vigil_env: VigilEnv, env: dict[str, str], client: MlflowClient, versions: tuple[str, str]
) -> None:
    _, weak = versions
    promoted = vigil_env.run("models", "promote", MODEL, "--version", weak, "--to", "staging", extra_env=env)
    assert "no comparison needed" in said(promoted)
    assert client.get_model_version_by_alias(MODEL, "staging").version == weak
    assert client.get_model_version(MODEL, weak).tags["vigil.staging.evaluation_verdict"] == "not-needed"
