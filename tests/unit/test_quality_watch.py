"""The watch on live quality: [live.watch] bounds and drops judged on the served version, the alert, and the
snapshots in the model's Evidently project."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from monitoring.cli import app
from monitoring.quality import QualityReport, VersionQuality
from monitoring.quality_watch import judge_watch, publish_quality
from monitoring.window import Window
from telemetry import feedback
from telemetry.records import InferenceRecord, create_engine, inference_log
from tests.conftest import free_port
from tests.unit.test_monitor_alerts import WebhookReceiver
from vigil.policy import Policy
from vigil.settings import Settings

runner = CliRunner()


def report(*entries: VersionQuality, task: str = "classification") -> QualityReport:
    return QualityReport(model="sentiment", task=task, window_start="2026-01-01T00:00:00+00:00",  # type: ignore[arg-type]
                         window_end="2026-01-01T01:00:00+00:00", versions=list(entries))


def watch_policy(**watch: dict[str, float]) -> Policy:
    return Policy.model_validate({"live": {"watch_min_labelled": 10, "watch": watch}})


def test_a_floor_and_a_drop_against_offline_are_judged_on_the_served_version_only() -> None:
    served = VersionQuality(version="3", role="champion", requests=50, labelled=40, accuracy=0.70, macro_f1=0.69)
    shadow = VersionQuality(version="4", role="challenger", requests=50, labelled=40, accuracy=0.10, macro_f1=0.1)
    policy = watch_policy(accuracy={"minimum": 0.8}, macro_f1={"max_drop": 0.05})
    verdict = judge_watch(report(served, shadow), policy, "champion",
                          lambda version, metric: (0.90, "training run r1, test split"))
    breaches = verdict.breaches
    assert [(b.version, b.metric) for b in breaches] == [("3", "accuracy"), ("3", "macro_f1")]
    assert "below the minimum 0.8000" in breaches[0].reason
    assert "0.2100 worse than offline (0.9000, training run r1" in breaches[1].reason
    assert verdict.skipped == [] and verdict.judged == 2


def test_too_few_labels_or_no_offline_figure_is_not_judged_and_says_so() -> None:
    few = VersionQuality(version="3", role="champion", requests=50, labelled=4, accuracy=0.1, macro_f1=0.1)
    verdict = judge_watch(report(few), watch_policy(accuracy={"minimum": 0.8}), "champion", lambda *_: None)
    assert verdict.breaches == [] and verdict.skipped == ["v3: 4 labelled request(s), the watch needs 10"]
    assert verdict.judged == 0
    enough = few.model_copy(update={"labelled": 20})
    verdict = judge_watch(report(enough), watch_policy(macro_f1={"max_drop": 0.05}), "champion", lambda *_: None)
    assert verdict.breaches == [] and verdict.skipped == ["v3: no offline macro_f1 to compare with"]
    unlabelled = report(few.model_copy(update={"labelled": 0}))
    unlabelled.task = None
    assert judge_watch(unlabelled, watch_policy(accuracy={"minimum": 0.8}), "champion",
                       lambda *_: None).skipped == ["no labelled request yet"]


def test_a_regressor_is_held_to_its_error_ceiling() -> None:
    served = VersionQuality(version="2", role="champion", requests=30, labelled=30, mae=1.2, rmse=2.5)
    verdict = judge_watch(report(served, task="regression"),
                          watch_policy(rmse={"maximum": 2.0}, accuracy={"minimum": 0.9}), "champion", lambda *_: None)
    assert [(b.metric, b.live) for b in verdict.breaches] == [("rmse", 2.5)]


def log_and_label(settings: Settings, rows: list[tuple[str, str, str, bool, str | None]]) -> None:
    """(request id, version, answer, shadow, true label or None)."""
    engine = create_engine(settings.inference_log_sqlalchemy_url)
    feedback.prepare(engine)
    with engine.begin() as connection:
        connection.execute(inference_log.insert(), [InferenceRecord(
            request_id=rid, trace_id="ab" * 16, endpoint="/predict", protocol="rest", kind="sentiment",
            model_name="sentiment", model_version=version, label=answer, score=0.8, latency_ms=2.0,
            role="challenger" if shadow else "champion", shadow=shadow).model_dump()
            for rid, version, answer, shadow, _ in rows])
    for rid, _, _, shadow, truth in rows:
        if truth is not None and not shadow:
            feedback.record_feedback(engine, rid, label=truth)
    engine.dispose()


def test_snapshots_per_role_and_the_agreement_go_to_the_models_project(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, sentiment_model_name="sentiment")
    truths = ["positive", "negative", "positive", "negative"]
    log_and_label(settings, [(f"r{i}", "1", t, False, t) for i, t in enumerate(truths)]
                  + [(f"r{i}", "2", "positive", True, None) for i in range(len(truths))])
    now = datetime.now(UTC)
    window = Window(now - timedelta(hours=1), now + timedelta(minutes=1))
    saved = publish_quality(settings, "sentiment", "sentiment", "sentiment", report(), window)
    # v1 served (quality), v2 shadow (quality and agreement with v1's answers).
    assert len(saved) == 3 and {s.project for s in saved} == {"sentiment"}
    snapshots = list((settings.evidently_workspace_path).rglob("snapshots/*.json"))
    bodies = [json.loads(path.read_text()) for path in snapshots]
    tags = sorted(tuple(body["tags"]) for body in bodies)
    assert tags == [("agreement", "challenger"), ("live-quality", "challenger"), ("live-quality", "champion")]


def test_the_cli_exits_1_and_alerts_when_the_served_version_breaks_the_watch(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens: no offline
    policy = tmp_path / "policy.toml"
    policy.write_text("[live]\nwatch_min_labelled = 3\n[live.watch.accuracy]\nminimum = 0.9\n"
                      "[live.watch.macro_f1]\nmax_drop = 0.01\n")
    monkeypatch.setenv("VIGIL_PROMOTION_POLICY", str(policy))
    for name in ("VIGIL_EVIDENTLY_URL", "VIGIL_EVIDENTLY_WORKSPACE", "VIGIL_INFERENCE_LOG_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(home=tmp_path)
    log_and_label(settings, [("a", "1", "positive", False, "positive"), ("b", "1", "positive", False, "negative"),
                             ("c", "1", "negative", False, "negative"), ("d", "1", "negative", False, "positive")])
    with WebhookReceiver() as receiver:
        monkeypatch.setenv("VIGIL_ALERT_WEBHOOK", receiver.url)
        result = runner.invoke(app, ["quality", "--model", "sentiment", "--last", "1h", "--json", "-"])
    assert result.exit_code == 1, result.output
    contract = json.loads(result.stdout[: result.stdout.rindex("}") + 1])
    assert contract["versions"][0]["accuracy"] == 0.5
    assert [body["kind"] for body in receiver.bodies] == ["quality"]
    assert receiver.bodies[0]["drifted"] == ["accuracy"] and "below the minimum" in receiver.bodies[0]["summary"]
    # Without the watch, the same report is only a report.
    assert runner.invoke(app, ["quality", "--model", "sentiment", "--last", "1h", "--no-watch"]).exit_code == 0
