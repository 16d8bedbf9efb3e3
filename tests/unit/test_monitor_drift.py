"""The drift job's logic without servers: redaction, descriptors, snapshot combining, and the no-verdict paths."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from monitoring.drift import DriftStatus, describe_texts, run_drift, usable_text
from monitoring.reference import cache_dir
from monitoring.window import Window
from monitoring.workspace import combine, save_snapshot
from telemetry import records
from tests.conftest import free_port
from tests.unit.test_monitor_tokens import settings_for
from vigil.errors import MlflowUnavailable
from vigil.settings import Settings
from vigil.text_features import describe_all

START = datetime(2025, 2, 1, tzinfo=UTC)
WINDOW = Window(START, START + timedelta(hours=1))
SENTENCES = ["Great phone, works well!", "Terrible service.", "The food was cold and bland.",
             "I love it", "Would not buy again; broke in a week.", "Friendly staff, nice place."]


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """MLflow on a port nothing listens on (MLFLOW_TRACKING_URI wins over the field): only a cache can serve."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    return settings_for(tmp_path, drift_min_rows=20)


def cache_reference(settings: Settings, version: str = "7") -> None:
    rng = np.random.default_rng(0)
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(120)]
    reference = pd.concat([pd.DataFrame({"text": texts}), describe_all(texts)], axis=1)
    reference["prediction"] = rng.choice(["negative", "positive"], size=len(texts))
    reference["score"] = rng.uniform(0.6, 1.0, size=len(texts))
    directory = cache_dir(settings, settings.sentiment_model_name, version)
    directory.mkdir(parents=True)
    reference.to_parquet(directory / "reference.parquet")
    (directory / "meta.json").write_text(json.dumps({"run_id": "run-7"}))


def log(settings: Settings, texts: list[str | None], version: str = "7", start: datetime = START) -> None:
    rng = np.random.default_rng(1)
    rows = [records.InferenceRecord(
        timestamp=start + timedelta(seconds=i), request_id=f"r{i}", trace_id="", endpoint="/predict",
        protocol="rest", kind="sentiment", model_name=settings.sentiment_model_name, model_version=version,
        input_text=text, label=str(rng.choice(["negative", "positive"])), score=float(rng.uniform(0.6, 1)),
        latency_ms=3.0,
    ).model_dump() for i, text in enumerate(texts)]
    engine = records.create_engine(settings.inference_log_sqlalchemy_url)
    with engine.begin() as connection:
        connection.execute(records.inference_log.insert(), rows)
    engine.dispose()


@pytest.mark.parametrize(("value", "usable"), [
    ("Great phone!", True), ("deadbeef", True), ("abc123 is my code", True),
    (None, False), ("", False), ("   ", False),
    (hashlib.sha256(b"Great phone!").hexdigest(), False), ("sha256:" + "ab" * 32, False),
])
def test_redacted_text_is_recognised(value: str | None, usable: bool) -> None:
    assert usable_text(value) is usable


def test_descriptors_match_the_reference_code_and_keep_order() -> None:
    texts = ["b", "Hello World!", "b", "x y z"]
    pd.testing.assert_frame_equal(describe_texts(texts), describe_all(texts))


def test_exit_codes() -> None:
    assert [s.exit_code for s in DriftStatus] == [0, 1, 2]


def test_combined_snapshot_keeps_every_part(tmp_path: Path) -> None:
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import RowCount, ValueDrift
    from evidently.ui.workspace import Workspace

    rng = np.random.default_rng(3)
    a = pd.DataFrame({"x": rng.normal(0, 1, 200)})
    b = pd.DataFrame({"y": rng.normal(0, 1, 200)})
    shifted = pd.DataFrame({"y": rng.normal(3, 1, 200)})
    first = Report([RowCount(tests=[]), ValueDrift(column="x")], include_tests=True).run(
        Dataset.from_pandas(a, data_definition=DataDefinition(numerical_columns=["x"])),
        Dataset.from_pandas(a, data_definition=DataDefinition(numerical_columns=["x"])))
    second = Report([ValueDrift(column="y")], include_tests=True).run(
        Dataset.from_pandas(shifted, data_definition=DataDefinition(numerical_columns=["y"])),
        Dataset.from_pandas(b, data_definition=DataDefinition(numerical_columns=["y"])))

    merged = combine([first, second], {"verdict": "drift"})
    assert len(merged.metric_results) == 3 and len(merged.tests_results) == 2
    assert sorted(t.status.value for t in merged.tests_results) == ["FAIL", "SUCCESS"]

    settings = settings_for(tmp_path)
    saved = save_snapshot(settings, "sentiment", merged)
    workspace = Workspace(str(settings.evidently_workspace_path))
    [project] = workspace.search_project("sentiment")
    stored = workspace.get_run(project.id, saved.snapshot_id)
    assert stored is not None and stored.metadata["verdict"] == "drift" and len(stored.metric_results) == 3
    assert Path(saved.location).exists()


def test_too_few_rows_is_no_verdict(offline: Settings) -> None:
    settings = offline
    cache_reference(settings)
    log(settings, SENTENCES[:5])
    result = run_drift(settings, WINDOW, version="7")
    assert result.status is DriftStatus.INSUFFICIENT and result.exit_code == 2
    assert result.rows == 5 and "too few rows" in result.message and "No drift verdict" in result.message
    assert result.snapshot_id is None and result.checks == []


def test_without_mlflow_the_serving_version_is_unknown(offline: Settings) -> None:
    with pytest.raises(MlflowUnavailable, match="not reachable"):
        run_drift(offline, WINDOW)


def test_redacted_rows_get_a_prediction_only_verdict(offline: Settings) -> None:
    settings = offline
    cache_reference(settings)
    hashed = [hashlib.sha256(f"text {i}".encode()).hexdigest() for i in range(25)]
    log(settings, [*hashed, *([None] * 25)])  # "hash" and "drop" redaction
    log(settings, SENTENCES * 5, version="8")  # another version in the same window is not judged

    result = run_drift(settings, WINDOW, version="7")

    assert (result.rows, result.text_rows, result.redacted_rows) == (50, 0, 50)
    assert result.status is DriftStatus.NO_DRIFT
    checks = {check.name: check for check in result.checks}
    assert checks["predicted label share"].drifted is False
    assert checks["text descriptors"].drifted is None and checks["text embeddings"].drifted is None
    assert "50 redacted" in checks["text descriptors"].detail
    assert "not evaluated: text redacted" in result.message
    assert result.snapshot_id and result.report and Path(result.report).exists()


@pytest.mark.slow  # MiniLM and Evidently's t-SNE widget on real text
def test_text_rows_are_embedded_by_the_registered_text_embedder(offline: Settings) -> None:
    from evidently.ui.workspace import Workspace

    settings = offline
    cache_reference(settings)
    texts: list[str | None] = list(SENTENCES * 5)
    log(settings, texts)

    result = run_drift(settings, WINDOW, version="7", html="never")

    assert (result.rows, result.text_rows, result.embedded_rows) == (30, 30, 30)
    checks = {check.name: check for check in result.checks}
    assert checks["text embeddings"].drifted is False  # the served sentences are the reference's own
    workspace = Workspace(str(settings.evidently_workspace_path))
    [project] = workspace.search_project("sentiment")
    stored = workspace.get_run(project.id, result.snapshot_id)
    # MLflow is down: the vectors are named as RAG names its own then (text-embedder's version is unknown).
    assert stored is not None and stored.metadata["embedder"] == "text-embedder vunregistered"
