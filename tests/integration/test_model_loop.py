"""The loop of a user's own models, end to end: train and register the tips models with the example script, attach
each one's training split as its reference with `vigil models reference`, send traffic to `vigil serve`, and judge it
with `vigil monitor drift --model NAME` — held-out rows exit 0, shifted rows exit 1; evaluate a version with `vigil
eval model` (in process and through the running service, against scikit-learn's own figures); refuse a constant
challenger at the promotion gate; with that challenger in the shadow, post the true values of live requests and
read each version's live quality; replay a labelled file through the service."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from mlflow import MlflowClient
from sklearn.model_selection import train_test_split

from telemetry.records import create_engine, read_frame
from tests.conftest import wait_until
from tests.integration.conftest import MODEL, Server, VigilEnv, start_server
from tests.support.tips_example import CLASSIFIER, REGRESSOR, example

TARGETS = {CLASSIFIER: "time", REGRESSOR: "tip"}
ROWS_PER_REQUEST = 4
MIN_ROWS = 100


def features(name: str) -> list[str]:
    module = example()
    return list(module.TIME_FEATURES if name == CLASSIFIER else module.TIP_FEATURES)


def split(name: str, tips: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The training and held-out rows of examples/train_tips.py (stratified on time for the classifier)."""
    train, test = train_test_split(tips, test_size=0.25, random_state=42,
                                   stratify=tips["time"] if name == CLASSIFIER else None)
    return train, test


@pytest.fixture(scope="module")
def tips() -> pd.DataFrame:
    frame: pd.DataFrame = example().load_tips()
    return frame


@pytest.fixture(scope="module")
def drift_server(vigil_env: VigilEnv, registry_client: MlflowClient, tips: pd.DataFrame,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Vigil serving both tips models, each with its training split attached as its drift reference."""
    versions = example().train_and_register(vigil_env.tracking_uri, alias="champion")
    assert set(versions) == {CLASSIFIER, REGRESSOR}
    home = tmp_path_factory.mktemp("model-drift-home")
    env = {**vigil_env.env, "VIGIL_HOME": str(home), "VIGIL_SENTIMENT_MODEL_NAME": MODEL, "VIGIL_TRACING": "off",
           "VIGIL_MODELS": f"{MODEL}@champion,{CLASSIFIER}@champion,{REGRESSOR}@champion",
           "VIGIL_BATCH_MAX_LATENCY_MS": "10000", "VIGIL_ALERT_WEBHOOK": "",
           # Every request shadowed: scored once the gate test below registers a constant challenger.
           "VIGIL_SHADOW_PERCENT": "100"}
    for name, target in TARGETS.items():
        train, _ = split(name, tips)
        path = home / f"{name}-train.csv"
        train[[*features(name), target]].to_csv(path, index=False)
        attached = vigil_env.run("models", "reference", name, "--data", str(path), "--target", target,
                                 extra_env=env)
        assert f"{name} v{versions[name]}" in attached.stdout, attached.stdout
    running = start_server(env, home / "serve.log")
    yield running
    running.stop()


def logged_rows(server: Server, name: str, since: datetime) -> int:
    log = read_frame(create_engine(f"sqlite:///{Path(server.env['VIGIL_HOME']) / 'inference_log.db'}"),
                     kind="model", model_name=name, since=since)
    return len(log)


def send(server: Server, name: str, rows: pd.DataFrame) -> datetime:
    """``rows`` through MLflow's `/invocations`, a few per request; returns when they are all in the log."""
    since = datetime.now(UTC)
    records = json.loads(rows[features(name)].to_json(orient="records"))
    url = f"{server.http}/models/{name}/invocations"
    with httpx.Client(timeout=60) as client:
        for first in range(0, len(records), ROWS_PER_REQUEST):
            answer = client.post(url, json={"dataframe_records": records[first:first + ROWS_PER_REQUEST]})
            assert answer.status_code == 200, answer.text
    wait_until(lambda: logged_rows(server, name, since) >= len(records), timeout=60,
               what=f"{len(records)} log rows of {name}")
    return since


def drift(vigil_env: VigilEnv, server: Server, name: str, since: datetime) -> subprocess.CompletedProcess[str]:
    return vigil_env.run("monitor", "drift", "--model", name, "--since", since.isoformat(), "--min-rows",
                         str(MIN_ROWS), "--json", check=False, extra_env=server.env)


def shifted(name: str, tips: pd.DataFrame) -> pd.DataFrame:
    """A realistic shift for each model: dinner-only traffic for the classifier, large parties for the regressor."""
    if name == CLASSIFIER:
        return tips[tips["time"] == "Dinner"]
    return tips[tips["size"] >= 4]


@pytest.mark.parametrize("name", [CLASSIFIER, REGRESSOR])
def test_held_out_traffic_is_no_drift_and_shifted_traffic_is_drift(
        drift_server: Server, vigil_env: VigilEnv, tips: pd.DataFrame, name: str) -> None:
    _, test = split(name, tips)
    held_out = pd.concat([test, test])  # 122 rows: the held-out split (61 rows) twice
    since = send(drift_server, name, held_out)
    calm = drift(vigil_env, drift_server, name, since)
    assert calm.returncode == 0, calm.stdout + calm.stderr
    verdict = json.loads(calm.stdout)
    assert verdict["status"] == "no_drift" and verdict["rows"] == len(held_out) and verdict["project"] == name
    assert verdict["task"] == ("classification" if name == CLASSIFIER else "regression")

    moved = shifted(name, tips)
    since = send(drift_server, name, moved if len(moved) >= MIN_ROWS else pd.concat([moved] * 3))
    alarm = drift(vigil_env, drift_server, name, since)
    assert alarm.returncode == 1, alarm.stdout + alarm.stderr
    verdict = json.loads(alarm.stdout)
    assert verdict["status"] == "drift" and verdict["drifted"]
    voted = {check["name"] for check in verdict["checks"] if check["drifted"] and check["votes"]}
    assert voted & {"inputs", "prediction"}, verdict["checks"]


# --- evaluation and the promotion gate -------------------------------------------------------------------------


def held_out_file(tmp_path: Path, name: str, tips: pd.DataFrame) -> Path:
    _, test = split(name, tips)
    path = tmp_path / f"{name}-test.csv"
    test[[*features(name), TARGETS[name]]].to_csv(path, index=False)
    return path




def sklearn_figures(name: str, tracking_uri: str, rows: pd.DataFrame) -> dict[str, float]:
    """The champion's figures on ``rows``, computed here with scikit-learn from the model MLflow loads."""
    import mlflow.pyfunc
    from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, mean_squared_error, r2_score

    mlflow.set_registry_uri(tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    truth, predicted = rows[TARGETS[name]], model.predict(rows[features(name)])
    if name == CLASSIFIER:
        return {"accuracy": accuracy_score(truth, predicted), "macro_f1": f1_score(truth, predicted, average="macro")}
    return {"mae": mean_absolute_error(truth, predicted), "rmse": mean_squared_error(truth, predicted) ** 0.5,
            "r2": r2_score(truth, predicted)}


@pytest.mark.parametrize("name", [CLASSIFIER, REGRESSOR])
def test_eval_model_matches_scikit_learn_in_process_and_through_the_service(
        drift_server: Server, vigil_env: VigilEnv, tips: pd.DataFrame, tmp_path: Path, name: str) -> None:
    path = held_out_file(tmp_path, name, tips)
    expected = sklearn_figures(name, vigil_env.tracking_uri, pd.read_csv(path))
    reports = []
    for where in ([], ["--endpoint", drift_server.http]):
        result = vigil_env.run("eval", "model", f"{name}@champion", "--data", str(path), "--target", TARGETS[name],
                               "--json", "-", *where, extra_env=drift_server.env)
        reports.append(json.loads(result.stdout))
    in_process, served = reports
    assert in_process["task"] == ("classification" if name == CLASSIFIER else "regression")
    assert in_process["rows"] == len(pd.read_csv(path)) and in_process["run_id"]
    for metric, value in expected.items():
        assert in_process["metrics"][metric] == pytest.approx(value, abs=1e-12), metric
    assert served["source"] == "endpoint" and served["metrics"] == in_process["metrics"]
    if name == CLASSIFIER:
        assert in_process["metrics"]["roc_auc"] is None  # the example's classifier gives labels, no scores
        assert sum(map(sum, in_process["metrics"]["confusion_matrix"])) == in_process["rows"]

    run = MlflowClient(vigil_env.tracking_uri).get_run(in_process["run_id"])
    assert run.data.tags["vigil.eval.kind"] == "model" and run.data.tags["dataset.fingerprint"]
    plot = "plots/confusion_matrix.png" if name == CLASSIFIER else "plots/residuals.png"
    artifacts = {a.path for a in MlflowClient(vigil_env.tracking_uri).list_artifacts(run.info.run_id, "plots")}
    assert plot in artifacts


def register_constant(name: str, tracking_uri: str, tips: pd.DataFrame) -> str:
    """A deliberately weak challenger, logged with plain MLflow like the example: the most frequent class, or the
    mean tip, whatever the row."""
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.dummy import DummyClassifier, DummyRegressor

    module = example()
    train, _ = split(name, tips)
    x, y = train[features(name)], train[TARGETS[name]]
    constant = DummyClassifier(strategy="most_frequent") if name == CLASSIFIER else DummyRegressor()
    model = module.make_pipeline(features(name), constant).fit(x, y)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    mlflow.set_experiment(module.EXPERIMENT)
    with mlflow.start_run(run_name=f"{name} constant"):
        info = mlflow.sklearn.log_model(model, name="model", signature=infer_signature(x, model.predict(x)),
                                        registered_model_name=name, pip_requirements=module.PIP_REQUIREMENTS)
    version = str(info.registered_model_version)
    MlflowClient(tracking_uri).set_registered_model_alias(name, "challenger", version)
    return version


@pytest.mark.parametrize("name", [CLASSIFIER, REGRESSOR])
def test_the_gate_refuses_a_constant_challenger_and_the_champion_stays(
        drift_server: Server, vigil_env: VigilEnv, tips: pd.DataFrame, tmp_path: Path, name: str) -> None:
    client = MlflowClient(vigil_env.tracking_uri)
    champion = client.get_model_version_by_alias(name, "champion").version
    weak = register_constant(name, vigil_env.tracking_uri, tips)
    path = held_out_file(tmp_path, name, tips)

    refused = vigil_env.run("models", "promote", name, "--data", str(path), "--target", TARGETS[name], check=False,
                            extra_env=drift_server.env)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    said = " ".join((refused.stdout + refused.stderr).split())
    metric = "macro_f1" if name == CLASSIFIER else "rmse"
    assert "refused" in said and f"{metric} " in said and "evidence: MLflow run" in said
    assert client.get_model_version_by_alias(name, "champion").version == champion

    tags = client.get_model_version(name, weak).tags
    assert tags["vigil.champion.evaluation_verdict"] == "fail"
    comparison = client.get_run(tags["vigil.champion.evaluation_run_id"])
    assert comparison.data.tags["vigil.verdict"] == "fail" and comparison.data.metrics["passed"] == 0
    decision = client.get_run(tags["vigil.champion.refusal_run_id"])  # the refusal is a run linked from the version
    assert decision.data.tags["vigil.action"] == "refused" and metric in decision.data.tags["vigil.refusals"]

    # Without --data the gate scores the candidate's attached evaluation dataset; with none it says how to attach.
    unattached = vigil_env.run("models", "promote", name, check=False, extra_env=drift_server.env)
    assert unattached.returncode == 1 and "--role evaluation" in " ".join(unattached.stdout.split())
    vigil_env.run("models", "reference", name, "--version", weak, "--data", str(path), "--target", TARGETS[name],
                  "--role", "evaluation", extra_env=drift_server.env)
    attached = vigil_env.run("models", "promote", name, check=False, extra_env=drift_server.env)
    assert attached.returncode == 1 and f"{metric} " in " ".join(attached.stdout.split())
    assert client.get_model_version_by_alias(name, "champion").version == champion


def shadow_of(server: Server, name: str) -> dict[str, Any]:
    state: dict[str, Any] = httpx.get(f"{server.http}/status", timeout=30).json()["models"][name]["shadow"]
    return state


@pytest.mark.parametrize("name", [CLASSIFIER, REGRESSOR])
def test_live_quality_of_the_served_model_and_its_constant_shadow(
        drift_server: Server, vigil_env: VigilEnv, tips: pd.DataFrame, tmp_path: Path, name: str) -> None:
    """The constant challenger the gate refused shadows every request; the true values come back by request id
    (one per row, as a list); `vigil monitor quality` gives the champion's figures computed from its answers and
    the challenger's on the same requests."""
    client = MlflowClient(vigil_env.tracking_uri)
    champion = str(client.get_model_version_by_alias(name, "champion").version)
    challenger = str(client.get_model_version_by_alias(name, "challenger").version)
    assert challenger != champion  # the constant one, registered by the gate test above
    wait_until(lambda: shadow_of(drift_server, name).get("version") == challenger
               and shadow_of(drift_server, name).get("scoring"), timeout=180, interval=0.5,
               what=f"the shadow to follow {name}@challenger (v{challenger})")
    _, test = split(name, tips)
    records = json.loads(test[features(name)].to_json(orient="records"))
    truths = test[TARGETS[name]].tolist()
    started = datetime.now(UTC)
    answers: list[Any] = []
    requests = 0
    token = (Path(drift_server.env["VIGIL_HOME"]) / "api_token").read_text().strip()  # generated for its home
    with httpx.Client(base_url=drift_server.http, timeout=60) as http:
        for first in range(0, len(records), ROWS_PER_REQUEST):
            rows = slice(first, first + ROWS_PER_REQUEST)
            answer = http.post(f"/models/{name}/invocations", json={"dataframe_records": records[rows]})
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["model"]["version"] == champion  # the shadow answers nobody
            answers += body["predictions"]
            posted = http.post("/feedback", headers={"Authorization": f"Bearer {token}"},
                               json={"request_id": body["request_id"], "label": truths[rows]})
            assert posted.status_code == 200, posted.text
            requests += 1

    def shadowed() -> list[int]:
        rows = read_frame(create_engine(f"sqlite:///{Path(drift_server.env['VIGIL_HOME']) / 'inference_log.db'}"),
                          kind="model", model_name=name, since=started, shadow=True)
        return [len(rows)] if len(rows) >= len(records) else []

    wait_until(shadowed, timeout=120, what=f"{len(records)} shadow rows of {name}")
    result = vigil_env.run("monitor", "quality", "--model", name, "--since", started.isoformat(), "--json", "-",
                           "--no-watch", extra_env=drift_server.env)
    served, shadow = json.loads(result.stdout)["versions"]
    assert (served["version"], served["role"], shadow["version"], shadow["role"]) == (
        champion, "champion", challenger, "challenger")
    assert served["requests"] == served["labelled"] == requests
    assert shadow["requests"] == shadow["labelled"] == requests
    constant = mlflow_predictions(name, vigil_env.tracking_uri, challenger, test)
    if name == CLASSIFIER:
        from sklearn.metrics import accuracy_score, f1_score

        assert served["accuracy"] == pytest.approx(accuracy_score(truths, answers), abs=1e-12)
        assert served["macro_f1"] == pytest.approx(f1_score(truths, answers, average="macro"), abs=1e-12)
        assert shadow["accuracy"] == pytest.approx(accuracy_score(truths, constant), abs=1e-12)
        agreed = sum(str(a) == str(b) for a, b in zip(answers, constant, strict=True)) / len(answers)
        assert shadow["agreement_with_champion"] == pytest.approx(agreed, abs=1e-12)
    else:
        from sklearn.metrics import mean_absolute_error, mean_squared_error

        assert served["mae"] == pytest.approx(mean_absolute_error(truths, answers), abs=1e-9)
        assert served["rmse"] == pytest.approx(mean_squared_error(truths, answers) ** 0.5, abs=1e-9)
        assert shadow["rmse"] == pytest.approx(mean_squared_error(truths, constant) ** 0.5, abs=1e-9)
        assert shadow["agreement_with_champion"] is None


def mlflow_predictions(name: str, tracking_uri: str, version: str, rows: pd.DataFrame) -> list[Any]:
    import mlflow.pyfunc

    mlflow.set_registry_uri(tracking_uri)
    predicted = mlflow.pyfunc.load_model(f"models:/{name}/{version}").predict(rows[features(name)])
    return list(pd.Series(predicted).tolist() if not isinstance(predicted, pd.DataFrame)
                else predicted.iloc[:, 0].tolist())


def test_replay_sends_a_labelled_files_rows_to_the_running_model(
        drift_server: Server, vigil_env: VigilEnv, tips: pd.DataFrame, tmp_path: Path) -> None:
    path = held_out_file(tmp_path, REGRESSOR, tips)
    rows = len(pd.read_csv(path))
    since = datetime.now(UTC)
    result = vigil_env.run("eval", "replay", "--model", REGRESSOR, "--data", str(path), "--target", "tip",
                           "--endpoint", drift_server.http, "--rows-per-request", "5", extra_env=drift_server.env)
    said = " ".join(result.stdout.split())
    champion = MlflowClient(vigil_env.tracking_uri).get_model_version_by_alias(REGRESSOR, "champion").version
    assert f"{REGRESSOR} v{champion} ({rows}" in said, said
    wait_until(lambda: logged_rows(drift_server, REGRESSOR, since) >= rows, timeout=60,
               what=f"{rows} replayed log rows of {REGRESSOR}")
