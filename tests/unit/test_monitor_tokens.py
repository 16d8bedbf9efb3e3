"""The tokens job on real inference-log rows (SQLite) with real Evidently reports and a real local workspace."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from monitoring.tokens import TokenStatus, price_for, run_tokens
from monitoring.window import Window
from telemetry import records
from tests.unit.test_monitor_alerts import WebhookReceiver
from vigil.settings import Settings

DAY = datetime(2025, 1, 1, tzinfo=UTC)
WINDOW = Window(DAY, DAY + timedelta(days=1))


def rag_row(at: datetime, prompt: int, completion: int, top1: float | None, generator: str = "extractive",
            model: str = "", version: str = "2") -> records.InferenceRecord:
    return records.InferenceRecord(
        timestamp=at, request_id=f"r{at.timestamp()}", trace_id="", endpoint="/rag/query", protocol="rest",
        kind="rag", model_name="rag", model_version=version, input_text="what is vigil?", latency_ms=12.0,
        retrieved_ids=["a", "b"] if top1 is not None else [], retrieved_scores=[top1, top1 / 2] if top1 else [],
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion, generator=generator,
        generator_model=model or None,
    )


def write(settings: Settings, rows: list[records.InferenceRecord]) -> None:
    engine = records.create_engine(settings.inference_log_sqlalchemy_url)
    with engine.begin() as connection:
        connection.execute(records.inference_log.insert(), [row.model_dump() for row in rows])
    engine.dispose()


def settings_for(tmp_path: Path, **overrides: object) -> Settings:
    """Settings under ``tmp_path``; every location given, so a developer's VIGIL_* variables never leak in."""
    values: dict[str, object] = {"home": tmp_path, "inference_log_url": "", "evidently_workspace": "",
                                 "evidently_url": "", "alert_webhook": "", "drift_min_rows": 50,
                                 "token_budget_daily": 1_000_000,
                                 "token_prices_per_1k": {"extractive": 0.0, "gpt-4o-mini": 0.6}}
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def mixed_day(start: datetime, top1_mean: float, seed: int = 0) -> list[records.InferenceRecord]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(100):
        at = start + timedelta(minutes=5 * i)
        top1 = float(np.clip(rng.normal(top1_mean, 0.05), 0, 1))
        if i % 2:
            rows.append(rag_row(at, 500, 100, top1, generator="openai", model="gpt-4o-mini"))
        else:
            rows.append(rag_row(at, 300, 40, top1))
    return rows


def test_totals_percentiles_breakdown_cost_and_snapshot(tmp_path: Path) -> None:
    from evidently.ui.workspace import Workspace

    settings = settings_for(tmp_path)
    write(settings, mixed_day(DAY + timedelta(hours=1), 0.8))
    write(settings, [rag_row(DAY - timedelta(hours=1), 999, 999, 0.5)])  # the day before: outside the window

    result = run_tokens(settings, WINDOW)

    assert result.status is TokenStatus.OK and result.exit_code == 0
    assert result.queries == 100
    assert (result.prompt_tokens, result.completion_tokens, result.total_tokens) == (40_000, 7_000, 47_000)
    assert result.p50_tokens == pytest.approx(470) and result.p95_tokens == pytest.approx(600)
    by = {(g.generator, g.generator_model): g for g in result.by_generator}
    assert by[("openai", "gpt-4o-mini")].total_tokens == 30_000
    assert by[("openai", "gpt-4o-mini")].cost == pytest.approx(18.0)
    assert by[("extractive", "-")].cost == 0.0
    assert result.cost == pytest.approx(18.0) and result.unpriced_queries == 0
    assert [(d.day.isoformat(), d.total_tokens, d.exceeded) for d in result.days] == [("2025-01-01", 47_000, False)]
    assert result.models == ["rag@2"]
    assert result.retrieval is not None and result.retrieval.baseline_rows == 100
    assert "baseline established" in result.retrieval.detail

    workspace = Workspace(str(settings.evidently_workspace_path))
    [project] = workspace.search_project("rag")
    [snapshot_id] = workspace.list_runs(project.id)
    assert str(snapshot_id) == result.snapshot_id
    stored = workspace.get_run(project.id, snapshot_id)
    assert stored is not None and stored.metadata["job"] == "tokens" and stored.metadata["verdict"] == "ok"
    sums = {r.metric_value_location.metric.params.get("column"): r.value for r in stored.metric_results.values()
            if r.metric_value_location.metric.params["type"].endswith(":SumValue")}
    assert sums["total_tokens"] == 47_000 and sums["cost_estimate"] == pytest.approx(18.0)
    assert result.report and "<!DOCTYPE html>" in Path(result.report).read_text()


def test_exceeded_budget_exits_1_and_alerts(tmp_path: Path) -> None:
    with WebhookReceiver() as receiver:
        settings = settings_for(tmp_path, token_budget_daily=40_000, alert_webhook=receiver.url)
        write(settings, mixed_day(DAY + timedelta(hours=1), 0.8))
        # A one-hour window still checks the whole day's spend so far; so does a window without queries.
        result = run_tokens(settings, Window(DAY + timedelta(hours=9), DAY + timedelta(hours=10)))
        quiet = run_tokens(settings, Window(DAY + timedelta(hours=20), DAY + timedelta(hours=21)))

    assert result.status is TokenStatus.ALERT and result.exit_code == 1
    assert result.queries == 4 and result.budget_exceeded and result.days[0].total_tokens == 47_000
    assert "daily budget exceeded on 2025-01-01 (47000 > 40000)" in result.message
    first, second = receiver.bodies
    assert first["kind"] == "token_budget" and first["model_name"] == "rag" and first["model_version"] == "2"
    assert first["details"]["2025-01-01"] == 47_000 and first["snapshot_id"] == result.snapshot_id
    assert first["window_end"] == "2025-01-01T10:00:00Z"
    assert result.alerts_delivered == [True]
    assert quiet.exit_code == 1 and quiet.snapshot_id is None and second["kind"] == "token_budget"


def test_top1_score_against_the_stored_baseline(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    for day, mean in ((0, 0.8), (1, 0.8), (2, 0.45)):
        write(settings, mixed_day(DAY + timedelta(days=day, hours=1), mean, seed=day))

    first = run_tokens(settings, WINDOW)
    same = run_tokens(settings, Window(DAY + timedelta(days=1), DAY + timedelta(days=2)))
    worse = run_tokens(settings, Window(DAY + timedelta(days=2), DAY + timedelta(days=3)))

    assert first.retrieval is not None and first.retrieval.drifted is None  # it became the baseline
    assert same.retrieval is not None and same.retrieval.drifted is False and same.exit_code == 0
    assert worse.retrieval is not None and worse.retrieval.drifted is True and worse.exit_code == 1
    assert worse.retrieval.baseline_top1_mean == pytest.approx(0.8, abs=0.02)
    assert worse.retrieval.top1_mean == pytest.approx(0.45, abs=0.02)

    rebased = run_tokens(settings, Window(DAY + timedelta(days=2), DAY + timedelta(days=3)), rebaseline=True)
    assert rebased.retrieval is not None and rebased.retrieval.drifted is None and rebased.exit_code == 0


def test_unpriced_models_and_empty_windows(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, token_prices_per_1k={})
    write(settings, [rag_row(DAY + timedelta(minutes=i), 100, 10, None, "openai", "llama3") for i in range(5)])

    result = run_tokens(settings, WINDOW)
    assert result.unpriced_queries == 5 and result.cost == 0.0
    assert result.by_generator[0].price_per_1k is None and result.by_generator[0].cost is None
    assert result.retrieval is not None and "no baseline yet" in result.retrieval.detail

    empty = run_tokens(settings, Window(DAY + timedelta(days=5), DAY + timedelta(days=6)))
    assert empty.status is TokenStatus.INSUFFICIENT and empty.exit_code == 2


def test_prices_by_model_then_generator() -> None:
    prices = {"openai": 1.0, "gpt-4o": 5.0}
    assert price_for(prices, "openai", "gpt-4o") == 5.0
    assert price_for(prices, "openai", "gpt-3.5") == 1.0
    assert price_for(prices, "vllm", "llama") is None
