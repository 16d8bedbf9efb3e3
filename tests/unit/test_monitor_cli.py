"""`vigil monitor …` in-process: options, exit codes, and what a person reads."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from monitoring.cli import app
from tests.conftest import free_port
from tests.unit.test_monitor_tokens import rag_row, write
from vigil.settings import get_settings

runner = CliRunner()


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VIGIL_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    for name in ("VIGIL_EVIDENTLY_URL", "VIGIL_EVIDENTLY_WORKSPACE", "VIGIL_INFERENCE_LOG_URL", "VIGIL_ALERT_WEBHOOK"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_contradictory_window_is_a_usage_error() -> None:
    result = runner.invoke(app, ["drift", "--until", "now", "--last", "1h"])
    assert result.exit_code == 2 and "not both" in result.output


def test_drift_without_mlflow_and_without_version_exits_2_and_says_why() -> None:
    result = runner.invoke(app, ["drift", "--model", "sentiment"])
    assert result.exit_code == 2
    assert "MLflow server not reachable" in result.output and "vigil mlflow up" in result.output


def test_tokens_table_and_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_TOKEN_BUDGET_DAILY", "1000")
    now = datetime.now(UTC)
    write(get_settings(), [rag_row(now - timedelta(minutes=i + 1), 300, 40, 0.7) for i in range(3)])

    table = runner.invoke(app, ["tokens", "--last", "1h"])
    assert table.exit_code == 1, table.output  # 1020 tokens today > 1000
    assert "exceeded" in table.output and "1020" in table.output and "3 queries" in table.output

    as_json = runner.invoke(app, ["tokens", "--last", "1h", "--json"])
    body = json.loads(as_json.output)
    assert as_json.exit_code == 1 and body["total_tokens"] == 1020 and body["budget_exceeded"] is True


def test_tokens_without_rows_exits_2() -> None:
    result = runner.invoke(app, ["tokens"])
    assert result.exit_code == 2 and "no RAG queries" in result.output


def test_schedule_runs_rounds_and_survives_failing_jobs() -> None:
    result = runner.invoke(app, ["schedule", "--every", "1s", "--jobs", "tokens,drift", "--runs", "2"])
    assert result.exit_code == 0, result.output
    assert result.output.count("tokens → 2") == 2  # no rows yet: no verdict
    assert result.output.count("drift → 2") == 2 and "MLflow server not reachable" in result.output
    assert runner.invoke(app, ["schedule", "--jobs", "drift,nope"]).exit_code == 2


def test_dashboards_command(home: Path) -> None:
    result = runner.invoke(app, ["dashboards"])
    assert result.exit_code == 0 and "sentiment" in result.output and "rag" in result.output
    assert (home / "evidently").is_dir()
