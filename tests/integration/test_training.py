"""`vigil train …` against a real MLflow server: runs, artifacts, registry, aliases, and the model by alias."""

from __future__ import annotations

from pathlib import Path

import httpx
import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.conftest import wait_until
from tests.integration.conftest import WEAK_ARGS, WEAK_MODEL, VigilEnv, start_server

OBVIOUS = {
    "I love this phone, it works great and the battery lasts forever.": "positive",
    "Excellent food and wonderful, friendly service.": "positive",
    "Terrible quality, it broke after one day. Waste of money.": "negative",
    "The worst restaurant I have ever been to, rude staff and cold food.": "negative",
}


@pytest.fixture(scope="module")
def client(vigil_env: VigilEnv) -> MlflowClient:
    mlflow.set_tracking_uri(vigil_env.tracking_uri)
    return MlflowClient(vigil_env.tracking_uri)


def test_training_logs_a_complete_run(client: MlflowClient, trained_twice: tuple[str, str], tmp_path: Path) -> None:
    first, _ = trained_twice
    version = client.get_model_version("sentiment", first)
    run = client.get_run(version.run_id)
    assert client.get_experiment(run.info.experiment_id).name == "sentiment"
    assert run.data.params["epochs"] == "3" and run.data.params["domains"] == "amazon,yelp"
    assert len(run.data.tags["dataset.fingerprint"]) == 16
    for metric in ("test_accuracy", "test_macro_f1", "test_roc_auc", "test_amazon_macro_f1",
                   "test_yelp_macro_f1", "ood_imdb_macro_f1", "data_skipped_lines"):
        assert metric in run.data.metrics, metric
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_macro_f1")] == [0, 1, 2]
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 3
    assert run.data.metrics["test_macro_f1"] > 0.75

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert "plots/confusion_matrix.png" in artifacts
    reference_file = client.download_artifacts(run.info.run_id, "drift_reference/reference.parquet", str(tmp_path))
    reference = pd.read_parquet(reference_file)
    assert {"text", "label", "prediction", "score", "embedding", "text_length", "word_count",
            "non_letter_share", "domain"} <= set(reference.columns)
    assert len(reference) > 100 and len(reference["embedding"].iloc[0]) == 384
    assert set(reference["prediction"]) <= {"positive", "negative"}


def test_registered_version_has_signature_and_aliases(
    client: MlflowClient, trained_twice: tuple[str, str]
) -> None:
    first, second = trained_twice
    assert client.get_model_version_by_alias("sentiment", "champion").version == first
    assert client.get_model_version_by_alias("sentiment", "challenger").version == second
    model = mlflow.models.get_model_info(f"models:/sentiment/{first}")
    assert model.signature is not None
    assert model.signature.inputs.input_names() == ["text"]
    assert {"label", "score"} == set(model.signature.outputs.input_names())
    tags = client.get_model_version("sentiment", first).tags
    assert tags["vigil.champion.by"] == "pytest"
    assert "no champion yet" in tags["vigil.champion.reason"]


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_model_by_alias_predicts_any_batch_size(trained_twice: tuple[str, str], batch: int) -> None:
    model = mlflow.pyfunc.load_model("models:/sentiment@challenger")
    texts = (list(OBVIOUS) * 16)[:batch]
    output = model.predict(pd.DataFrame({"text": texts}))
    assert len(output) == batch
    assert output["label"].tolist() == [OBVIOUS[t] for t in texts]
    assert output["score"].between(0.5, 1.0).all()


def test_same_seed_same_metrics(vigil_env: VigilEnv, client: MlflowClient, weak_trained: str) -> None:
    """Two trainings with the same seed and data give the same model: small runs, the session's weak one and one
    more here, of a model of its own."""
    vigil_env.run(*WEAK_ARGS, extra_env={"VIGIL_SENTIMENT_MODEL_NAME": "sentiment-repro"})
    runs = [client.get_run(client.get_model_version(name, version).run_id)
            for name, version in ((WEAK_MODEL, weak_trained), ("sentiment-repro", "1"))]
    assert runs[0].info.run_id != runs[1].info.run_id
    assert runs[0].data.tags["dataset.fingerprint"] == runs[1].data.tags["dataset.fingerprint"]
    for name in ("test_macro_f1", "test_roc_auc", "ood_imdb_macro_f1"):
        assert runs[0].data.metrics[name] == pytest.approx(runs[1].data.metrics[name], abs=1e-6), name


def test_promote_and_rollback_are_recorded(
    vigil_env: VigilEnv, client: MlflowClient, trained_twice: tuple[str, str], tmp_path: Path
) -> None:
    """Each alias move is recorded in the registry, and a running service follows it: after the rollback it
    answers with the first version again."""
    first, second = trained_twice
    env = {**vigil_env.env, "VIGIL_HOME": str(tmp_path), "VIGIL_SENTIMENT_MODEL_NAME": "sentiment",
           "VIGIL_ALIAS_POLL_SECONDS": "1", "VIGIL_TRACING": "off"}
    service = start_server(env, tmp_path / "serve.log")

    def serves(version: str) -> bool:
        status = httpx.get(f"{service.http}/status", timeout=10).json()["models"]["sentiment"]
        return bool(status.get("version") == version)

    try:
        assert serves(first)
        promoted = vigil_env.run("models", "promote", "sentiment", "--reason", "second run")
        assert "v2" in promoted.stdout
        assert client.get_model_version_by_alias("sentiment", "champion").version == second
        tags = client.get_model_version("sentiment", second).tags
        assert tags["vigil.champion.from_version"] == first
        assert tags["vigil.champion.reason"] == "second run"
        assert tags["vigil.champion.by"] == "pytest"
        wait_until(lambda: serves(second), timeout=30, what=f"the service to follow the promotion to v{second}")

        again = vigil_env.run("models", "promote", "sentiment", check=False)
        assert again.returncode == 1 and "already version 2" in again.stdout

        vigil_env.run("models", "rollback", "sentiment", "--reason", "regression seen")
        assert client.get_model_version_by_alias("sentiment", "champion").version == first
        tags = client.get_model_version("sentiment", first).tags
        assert tags["vigil.champion.action"] == "rollback"
        assert tags["vigil.champion.from_version"] == second
        wait_until(lambda: serves(first), timeout=30, what=f"the service to follow the rollback to v{first}")
        answer = httpx.post(f"{service.http}/predict", json={"text": next(iter(OBVIOUS))}, timeout=30)
        assert answer.status_code == 200 and answer.json()["model"] == {"name": "sentiment", "version": first}
    finally:
        service.stop()

    nothing_left = vigil_env.run("models", "rollback", "sentiment", check=False)
    assert nothing_left.returncode == 1 and "no earlier version" in nothing_left.stdout

    listed = vigil_env.run("models", "list").stdout
    assert "sentiment" in listed and "champion→v1" in listed
    shown = vigil_env.run("models", "show", "sentiment").stdout
    assert "challenger" in shown


def test_unknown_version_is_refused(vigil_env: VigilEnv, trained_twice: tuple[str, str]) -> None:
    result = vigil_env.run("models", "promote", "sentiment", "--version", "99", check=False)
    assert result.returncode == 1
    assert "no version 99" in result.stdout


def test_embedder_is_registered_as_champion(vigil_env: VigilEnv, client: MlflowClient) -> None:
    vigil_env.run("train", "embedder")
    version = client.get_model_version_by_alias("text-embedder", "champion")
    model = mlflow.pyfunc.load_model(f"models:/text-embedder/{version.version}")
    vectors = model.predict(["a short sentence", "another one"])
    assert len(vectors) == 2 and len(vectors[0]) == 384
    skipped = vigil_env.run("train", "embedder", "--if-missing")
    assert "nothing to register" in skipped.stdout
