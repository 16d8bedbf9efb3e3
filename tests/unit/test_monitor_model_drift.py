"""The drift job of a user's own model, without servers: the tips models trained in-process, their training split as
the reference, logged rows in a real SQLite inference log, snapshots in a real local Evidently workspace."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow.models import infer_signature
from sklearn.model_selection import train_test_split
from typer.testing import CliRunner

from monitoring.cli import app
from monitoring.dashboards import ensure_dashboards
from monitoring.drift import DriftStatus
from monitoring.model_drift import (
    AttachedReference,
    cached_predictions,
    column_kinds,
    first_output,
    judge_window,
    task_of,
)
from monitoring.reference import ServedVersion
from monitoring.window import Window
from telemetry import records
from tests.conftest import free_port
from tests.support.tips_example import CLASSIFIER, REGRESSOR, example
from tests.unit.test_monitor_tokens import settings_for
from vigil.settings import Settings
from vigil.signature import FieldSpec, ModelSignatureSpec, signature_spec

START = datetime(2025, 3, 1, tzinfo=UTC)
WINDOW = Window(START, START + timedelta(hours=1))


@cache
def trained(name: str) -> tuple[Any, AttachedReference, pd.DataFrame]:
    """The model as examples/train_tips.py trains it, its training split as reference, and all 244 tips rows."""
    module = example()
    tips = module.load_tips()
    model, x_train, _ = (module.train_time_classifier if name == CLASSIFIER else module.train_tip_regressor)(tips)
    frame = x_train.reset_index(drop=True)
    spec = signature_spec(infer_signature(x_train, model.predict(x_train)))
    return model, AttachedReference(frame, pd.Series(model.predict(frame)), spec, f"fp-{name}"), tips


def held_out(name: str) -> pd.DataFrame:
    tips = trained(name)[2]
    _, test = train_test_split(tips, test_size=0.25, random_state=42,
                               stratify=tips["time"] if name == CLASSIFIER else None)
    return test


def log_traffic(settings: Settings, name: str, pool: pd.DataFrame, rows: int = 150, seed: int = 0) -> None:
    """``rows`` requests drawn from ``pool``, predicted by the model and logged as the service logs them."""
    model, reference, _ = trained(name)
    features = [field.name for field in reference.spec.inputs]
    picked = pool[features].sample(n=rows, replace=True, random_state=seed).reset_index(drop=True)
    predictions = model.predict(picked).tolist()  # plain values, as the service logs them
    logged = [records.InferenceRecord(
        timestamp=START + timedelta(seconds=10 * i), request_id=f"r{i}", trace_id="",
        endpoint=f"/models/{name}/invocations", protocol="rest", kind="model", model_name=name, model_version="3",
        latency_ms=2.0, inputs=row, outputs=predictions[i],
    ).model_dump() for i, row in enumerate(picked.to_dict(orient="records"))]
    engine = records.create_engine(settings.inference_log_sqlalchemy_url)
    with engine.begin() as connection:
        connection.execute(records.inference_log.insert(), logged)
    engine.dispose()


def judged(settings: Settings, name: str, reference: AttachedReference | None = None) -> Any:
    served = ServedVersion(name, "3", "run-3", "champion")
    return judge_window(settings, served, WINDOW, reference or trained(name)[1], send_alerts=False, html="never")


def checks_of(result: Any) -> dict[str, Any]:
    return {check.name: check for check in result.checks}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return settings_for(tmp_path, drift_min_rows=50)


@pytest.mark.parametrize("name", [CLASSIFIER, REGRESSOR])
def test_held_out_rows_are_no_drift(settings: Settings, name: str) -> None:
    from evidently.ui.workspace import Workspace

    log_traffic(settings, name, held_out(name))
    result = judged(settings, name)

    assert result.status is DriftStatus.NO_DRIFT and result.exit_code == 0, result.message
    assert result.rows == 150 and result.reference_rows == 183 and result.drifted == []
    assert checks_of(result)["inputs"].score == 0.0
    [project] = Workspace(str(settings.evidently_workspace_path)).search_project(name)  # the model's own project
    assert result.project == name and result.snapshot_id
    stored = Workspace(str(settings.evidently_workspace_path)).get_run(project.id, result.snapshot_id)
    assert stored is not None and stored.metadata["verdict"] == "no_drift"


def test_large_parties_drift_the_regressor_inputs_and_prediction(settings: Settings) -> None:
    tips = trained(REGRESSOR)[2]
    log_traffic(settings, REGRESSOR, tips[tips["size"] >= 4])
    result = judged(settings, REGRESSOR)

    assert result.status is DriftStatus.DRIFT and result.exit_code == 1
    checks = checks_of(result)
    assert checks["input size"].drifted and checks["input total_bill"].drifted
    assert not checks["input smoker"].drifted and not checks["input size"].votes  # a column alone does not vote
    assert checks["inputs"].drifted and checks["inputs"].score >= checks["inputs"].threshold
    assert checks["prediction"].drifted and checks["prediction"].method == "Wasserstein (normed)"
    assert result.task == "regression" and "inputs" in result.message and "prediction" in result.message


def test_scaled_bills_drift_the_regressor_prediction(settings: Settings) -> None:
    test = held_out(REGRESSOR)
    log_traffic(settings, REGRESSOR, test.assign(total_bill=test["total_bill"] * 1.5))
    result = judged(settings, REGRESSOR)

    checks = checks_of(result)
    assert result.status is DriftStatus.DRIFT
    assert checks["prediction"].drifted and checks["prediction"].score > checks["prediction"].threshold
    assert checks["input total_bill"].drifted and not checks["input day"].drifted


def test_dinner_only_traffic_shifts_the_classifiers_label_share(settings: Settings) -> None:
    tips = trained(CLASSIFIER)[2]
    log_traffic(settings, CLASSIFIER, tips[tips["time"] == "Dinner"])
    result = judged(settings, CLASSIFIER)

    prediction = checks_of(result)["prediction"]
    assert result.task == "classification" and result.status is DriftStatus.DRIFT
    assert prediction.method == "label share PSI" and prediction.threshold == 0.2 and prediction.drifted
    assert checks_of(result)["input day"].drifted  # hardly any Thursday lunches left


def test_no_reference_is_no_verdict_and_says_how_to_attach_one(settings: Settings) -> None:
    log_traffic(settings, REGRESSOR, held_out(REGRESSOR))
    result = judge_window(settings, ServedVersion(REGRESSOR, "3", "run-3", None), WINDOW, None)

    assert result.status is DriftStatus.INSUFFICIENT and result.exit_code == 2
    assert f"vigil models reference {REGRESSOR} --data FILE [--target COL]" in result.message
    assert result.snapshot_id is None


def test_too_few_rows_is_no_verdict(settings: Settings) -> None:
    log_traffic(settings, REGRESSOR, held_out(REGRESSOR), rows=20)
    result = judged(settings, REGRESSOR)
    assert result.exit_code == 2 and result.rows == 20 and "too few rows" in result.message and result.checks == []


def test_column_kinds_come_from_the_signature_and_free_text_is_described(settings: Settings) -> None:
    rng = np.random.default_rng(0)
    reviews = [f"review {i}: " + " ".join(rng.choice(["good", "bad", "slow", "tasty"], size=8)) for i in range(200)]
    reference = pd.DataFrame({"amount": rng.normal(10, 2, 200), "member": rng.choice([True, False], 200),
                              "city": rng.choice(["Paris", "Lyon"], 200), "review": reviews})
    spec = ModelSignatureSpec(inputs=[FieldSpec("amount", "FP64", [-1], "double"),
                                      FieldSpec("member", "BOOL", [-1], "boolean"),
                                      FieldSpec("city", "BYTES", [-1], "string"),
                                      FieldSpec("review", "BYTES", [-1], "string")], outputs=[], tensor_based=False)
    assert column_kinds(spec, reference) == {"amount": "numerical", "member": "categorical", "city": "categorical",
                                             "review": "text"}

    # Served traffic with louder reviews: the text column drifts through its descriptors.
    predictions = pd.Series(reference["amount"] * 0.1)
    shouted = reference.assign(review=[text.upper() + "!!!" for text in reviews])
    name = "shop-model"
    engine = records.create_engine(settings.inference_log_sqlalchemy_url)
    rows = [records.InferenceRecord(
        timestamp=START + timedelta(seconds=i), request_id=f"s{i}", trace_id="", endpoint="/v2/models/x/infer",
        protocol="rest", kind="model", model_name=name, model_version="3", latency_ms=1.0,
        inputs={k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}, outputs=float(row["amount"]) * 0.1,
    ).model_dump() for i, row in enumerate(shouted.to_dict(orient="records"))]
    with engine.begin() as connection:
        connection.execute(records.inference_log.insert(), rows)
    engine.dispose()
    result = judged(settings, name, AttachedReference(reference, predictions, spec, "fp-shop"))

    review = checks_of(result)["input review"]
    assert review.method == "share of drifted text descriptors" and review.drifted
    assert not checks_of(result)["input amount"].drifted and not checks_of(result)["prediction"].drifted


def test_prediction_task_and_shapes() -> None:
    assert task_of(pd.Series(["Lunch", "Dinner"])) == "classification"
    assert task_of(pd.Series([True, False])) == "classification"
    assert task_of(pd.Series([0, 1, 2, 1])) == "classification"
    assert task_of(pd.Series(np.linspace(0, 5, 50))) == "regression"
    assert first_output(pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0]})).tolist() == [1.0, 2.0]
    assert first_output(np.array([[0.2, 0.8], [0.6, 0.4]])).tolist() == [0.2, 0.6]
    assert first_output(["x", "y"]).tolist() == ["x", "y"]


def test_reference_predictions_are_read_from_their_cache(settings: Settings) -> None:
    # A cached file means the model is not loaded (MLflow is not even configured here).
    _, reference, _ = trained(REGRESSOR)
    served = ServedVersion(REGRESSOR, "3", "run-3", None)
    path = settings.home / "monitoring" / "reference-predictions" / REGRESSOR / "3" / f"{reference.fingerprint}.parquet"
    path.parent.mkdir(parents=True)
    pd.DataFrame({"prediction": reference.predictions}).to_parquet(path)
    again = cached_predictions(settings, served, reference.fingerprint, reference.frame, reference.spec)
    pd.testing.assert_series_equal(again, reference.predictions, check_names=False)


def test_cli_any_model_name_runs_the_models_job_and_the_schedule_runs_every_served_model(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("VIGIL_MODELS", f"sentiment@champion,{CLASSIFIER}@champion,{REGRESSOR}@staging")
    runner = CliRunner()
    result = runner.invoke(app, ["drift", "--model", REGRESSOR])
    assert result.exit_code == 2 and "MLflow server not reachable" in result.output

    scheduled = runner.invoke(app, ["schedule", "--every", "1s", "--jobs", "drift", "--runs", "1"])
    assert scheduled.exit_code == 0, scheduled.output
    for job in ("drift", f"drift:{CLASSIFIER}", f"drift:{REGRESSOR}"):
        assert f"{job} → 2" in scheduled.output


def test_every_served_model_gets_its_own_dashboard(tmp_path: Path) -> None:
    from evidently.ui.workspace import Workspace

    settings = settings_for(tmp_path, models=f"sentiment@champion,{CLASSIFIER}@champion,{REGRESSOR}@champion")
    made = {info.project: info for info in ensure_dashboards(settings)}
    ensure_dashboards(settings)  # again: rewritten in place

    workspace = Workspace(str(settings.evidently_workspace_path))
    assert sorted(p.name for p in workspace.list_projects()) == sorted(["rag", "sentiment", CLASSIFIER, REGRESSOR])
    dashboard = workspace.get_dashboard(made[REGRESSOR].project_id)
    assert len(dashboard.panels) == len(made[REGRESSOR].panels)
    assert {"Prediction drift over time", "Input column drift scores"} <= {p.title for p in dashboard.panels}
