"""Promotion on live evidence: the candidate's shadow answers paired with the served answers by request, judged by
the policy's [live] rules; too few labelled pairs is no evidence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sklearn.metrics import f1_score

from evaluations import live
from evaluations.live import NotEnoughEvidence, compare_live, live_pairs
from telemetry import feedback
from telemetry.records import InferenceRecord, create_engine, inference_log
from vigil.policy import Policy
from vigil.settings import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", inference_log_url=f"sqlite:///{tmp_path / 'log.db'}")


def engine_of(settings: Settings) -> sa.Engine:
    engine = create_engine(settings.inference_log_sqlalchemy_url)
    feedback.prepare(engine)
    return engine


def row(request_id: str, version: str, label: str, *, shadow: bool) -> dict[str, Any]:
    return InferenceRecord(request_id=request_id, trace_id="ab" * 16, endpoint="/predict", protocol="rest",
                           kind="sentiment", model_name="sentiment", model_version=version, label=label, score=0.9,
                           latency_ms=3.0, role="challenger" if shadow else "champion", shadow=shadow).model_dump()


def serve(settings: Settings, answers: list[tuple[str, str, str | None]]) -> None:
    """Each request answered by v1 (served) and v2 (shadow), with its true label when not None."""
    engine = engine_of(settings)
    with engine.begin() as connection:
        connection.execute(inference_log.insert(), [
            r for i, (served, shadowed, _) in enumerate(answers)
            for r in (row(f"r{i}", "1", served, shadow=False), row(f"r{i}", "2", shadowed, shadow=True))])
    for i, (_, _, truth) in enumerate(answers):
        if truth is not None:
            feedback.record_feedback(engine, f"r{i}", label=truth)
    engine.dispose()


def policy(**live_section: Any) -> Policy:
    return Policy.model_validate({"gate": {"bootstrap": 200}, "live": {
        "rules": {"macro_f1": {"max_regression": 0.01}}, **live_section}})


def test_pairs_are_the_labelled_requests_both_versions_answered(settings: Settings) -> None:
    serve(settings, [("positive", "negative", "positive"), ("negative", "negative", None),
                     ("negative", "positive", "negative")])
    pairs = live_pairs(settings, "sentiment", candidate="2", baseline="1")
    assert pairs.request_ids == ["r0", "r2"]
    assert pairs.truth.tolist() == ["positive", "negative"]
    assert pairs.candidate.tolist() == ["negative", "positive"]
    assert pairs.baseline.tolist() == ["positive", "negative"]


def test_too_few_pairs_is_no_evidence_and_says_what_is_missing(settings: Settings) -> None:
    serve(settings, [("positive", "positive", "positive")] * 5)
    with pytest.raises(NotEnoughEvidence, match=r"5 labelled request\(s\).*asks for 10"):
        compare_live(None, "sentiment", "2", "1", policy(min_labelled=10), settings=settings)  # type: ignore[arg-type]


def test_a_worse_shadow_is_refused_and_a_better_one_passes(settings: Settings,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    logged: list[Any] = []
    monkeypatch.setattr(live.tracking, "log_comparison", lambda _client, comparison, trigger, _sides:
                        logged.append((comparison, trigger)))
    truths = ["positive", "negative"] * 30
    # v1 (served) is right on every request; v2 (the shadow) answers "positive" to everything.
    serve(settings, [(truth, "positive", truth) for truth in truths])
    worse = compare_live(None, "sentiment", "2", "1", policy(min_labelled=50),  # type: ignore[arg-type]
                         settings=settings, trigger="gate:champion:live")
    assert not worse.passed
    expected = f1_score(truths, ["positive"] * len(truths), average="macro")
    assert worse.candidate.metrics.macro_f1 == pytest.approx(expected)
    assert worse.baseline.metrics.macro_f1 == pytest.approx(1.0)
    assert worse.candidate.source == "live" and worse.dataset.rows == len(truths)
    assert [r.metric for r in worse.rules] == ["macro_f1"]
    assert logged[-1][1] == "gate:champion:live"
    # Judged the other way round (v1 as the candidate), the same requests pass.
    better = compare_live(None, "sentiment", "1", "2", policy(min_labelled=50),  # type: ignore[arg-type]
                          settings=settings)
    assert better.passed


def test_live_rules_of_another_task_are_skipped_and_none_left_is_an_error() -> None:
    mixed = Policy.model_validate({"live": {"rules": {"rmse": {"max_regression_ratio": 0.05}}}})
    assert list(mixed.live_rules("regression")) == ["rmse"]
    with pytest.raises(Exception, match=r"no \[live.rules"):
        mixed.live_rules("classification")


def test_a_watch_bound_on_the_wrong_side_is_refused() -> None:
    with pytest.raises(ValueError, match="lower is better"):
        Policy.model_validate({"live": {"watch": {"rmse": {"minimum": 1.0}}}})
    with pytest.raises(ValueError, match="unknown metric"):
        Policy.model_validate({"live": {"watch": {"roc_auc": {"minimum": 0.5}}}})
