"""Shadow scoring: the sampling by request id, the API worker's bounded queue, the model service's low-priority
scorer, the shadow rows in the log (and out of every reader of served traffic), and live quality per version and
role with the shadow's agreement."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sklearn.metrics import accuracy_score, f1_score

from monitoring.quality import labelled_dataset, measure_quality
from monitoring.window import Window
from service.shadow import (
    ShadowBatch,
    ShadowJob,
    ShadowQueue,
    ShadowScorer,
    WorkerSpec,
    answer,
    sampled,
)
from telemetry import feedback
from telemetry.records import InferenceRecord, create_engine, inference_log, read_frame
from tests.conftest import wait_until
from vigil.priority import LOWEST_NICE
from vigil.settings import Settings


def test_the_share_is_chosen_by_request_id_the_same_way_every_time() -> None:
    ids = [f"request-{index}" for index in range(20_000)]
    chosen = [request_id for request_id in ids if sampled(request_id, 25)]
    assert 0.23 < len(chosen) / len(ids) < 0.27
    assert chosen == [request_id for request_id in ids if sampled(request_id, 25)]  # a replay picks the same
    assert not any(sampled(request_id, 0) for request_id in ids[:1000])
    assert all(sampled(request_id, 100) for request_id in ids[:1000])
    # A larger share keeps every request a smaller one chose: raising the percent only adds requests.
    assert set(chosen) <= {request_id for request_id in ids if sampled(request_id, 50)}


@dataclass
class Log:
    records: list[InferenceRecord] = field(default_factory=list)

    def log(self, record: InferenceRecord) -> bool:
        self.records.append(record)
        return True


def rows_of(job: ShadowJob, version: str, outputs: list[Any], milliseconds: float) -> list[InferenceRecord]:
    return [InferenceRecord(request_id=job.request_id, trace_id=job.trace_id, endpoint=job.endpoint,
                            protocol="rest", kind="sentiment", model_name="m", model_version=version,
                            input_text=text, label=output, latency_ms=milliseconds, role="challenger", shadow=True)
            for text, output in zip(job.inputs, outputs, strict=True)]


def job(request_id: str, *texts: str) -> ShadowJob:
    return ShadowJob(request_id, "ab" * 16, "/predict", "rest", list(texts))


def queue_of(score: Any, queue_size: int = 3, max_items: int = 64, log: Log | None = None) -> ShadowQueue:
    return ShadowQueue("m", "challenger", 100, queue_size, max_items, score, rows_of, log,  # type: ignore[arg-type]
                       None, linger_seconds=0.0)


async def never_called(items: list[Any]) -> ShadowBatch:
    raise AssertionError("nothing is scored on the request path")


def test_a_full_queue_drops_the_new_job_counts_it_and_never_waits() -> None:
    queue = queue_of(never_called, queue_size=3)
    # No event loop, no drain task: offer only appends, so it cannot wait on anything.
    assert [queue.offer(job(f"r{i}", "text")) for i in range(5)] == [True, True, True, False, False]
    assert queue.depth == 3
    assert queue.counts == {"scored": 0, "dropped": 2, "failed": 0, "skipped": 0}
    outside = ShadowQueue("m", "challenger", 0, 3, 64, never_called, rows_of, None, None)
    assert not outside.offer(job("r", "text")) and outside.depth == 0  # 0 %: not sampled, not counted


def test_a_drain_scores_whole_jobs_in_one_call_and_logs_each_with_its_own_ids() -> None:
    calls: list[list[Any]] = []

    async def score(items: list[Any]) -> ShadowBatch:
        calls.append(items)
        return ShadowBatch(version="7", outputs=[f"label of {item}" for item in items])

    log = Log()
    queue = queue_of(score, queue_size=10, max_items=3, log=log)
    for request_id, texts in (("a", ["a1", "a2"]), ("b", ["b1"]), ("c", ["c1", "c2"])):
        queue.offer(job(request_id, *texts))
    asyncio.run(queue.drain_once())
    assert calls == [["a1", "a2", "b1"]]  # whole jobs, up to max_items inputs
    asyncio.run(queue.drain_once())
    assert calls[-1] == ["c1", "c2"] and queue.depth == 0
    assert [(r.request_id, r.input_text, r.label, r.model_version, r.shadow) for r in log.records] == [
        ("a", "a1", "label of a1", "7", True), ("a", "a2", "label of a2", "7", True),
        ("b", "b1", "label of b1", "7", True), ("c", "c1", "label of c1", "7", True),
        ("c", "c2", "label of c2", "7", True)]
    assert queue.counts["scored"] == 3 and queue.describe()["last_version"] == "7"


def test_a_failing_or_skipped_shadow_is_counted_and_logged_never_raised() -> None:
    async def fails(items: list[Any]) -> ShadowBatch:
        raise ConnectionError("model service away")

    log = Log()
    queue = queue_of(fails, log=log)
    queue.offer(job("a", "text"))
    asyncio.run(queue.drain_once())
    assert queue.counts["failed"] == 1 and "model service away" in queue.describe()["last_reason"]

    async def skips(items: list[Any]) -> ShadowBatch:
        return ShadowBatch(skipped="no challenger")

    queue = queue_of(skips, log=log)
    queue.offer(job("b", "text"))
    asyncio.run(queue.drain_once())
    assert queue.counts["skipped"] == 1 and queue.describe()["last_reason"] == "no challenger"

    async def short(items: list[Any]) -> ShadowBatch:
        return ShadowBatch(version="2", outputs=[])  # fewer answers than inputs: nothing half-logged

    queue = queue_of(short, log=log)
    queue.offer(job("c", "text"))
    asyncio.run(queue.drain_once())
    assert queue.counts["failed"] == 1 and log.records == []


def test_the_drain_task_wakes_for_new_jobs() -> None:
    scored = asyncio.Event()

    async def score(items: list[Any]) -> ShadowBatch:
        scored.set()
        return ShadowBatch(version="2", outputs=items)

    async def scenario() -> ShadowQueue:
        queue = queue_of(score, log=Log())
        task = asyncio.get_running_loop().create_task(queue.run())
        await asyncio.sleep(0.01)  # the task waits for work
        queue.offer(job("a", "text"))
        await asyncio.wait_for(scored.wait(), timeout=5)
        task.cancel()
        return queue

    assert asyncio.run(scenario()).counts["scored"] == 1


@dataclass
class Loaded:
    version: str
    model: Any = None


@dataclass
class FakeHolder:
    name: str = "m"
    alias: str = "challenger"
    current: Loaded | None = None
    status: Any = None


def test_the_worker_skips_without_a_challenger_or_with_the_served_version_and_scores_otherwise() -> None:
    holder = FakeHolder(status=type("Status", (), {"reason": "m has no alias 'challenger'"})())

    def predict(model: Any, items: Any) -> list[Any]:
        return [f"{model.version}:{item}" for item in items]

    missing = answer(("score", "1", ["x"]), holder, predict)  # type: ignore[arg-type]
    assert isinstance(missing, ShadowBatch) and missing.skipped == "m has no alias 'challenger'"
    holder.current = Loaded("1")
    same = answer(("score", "1", ["x"]), holder, predict)  # type: ignore[arg-type]
    assert isinstance(same, ShadowBatch) and "the version served" in same.skipped and same.outputs == []
    described = answer(("describe", "1"), holder, predict)  # type: ignore[arg-type]
    assert isinstance(described, dict) and described["scoring"] is False and described["version"] == "1"
    holder.current = Loaded("2")
    batch = answer(("score", "1", ["x", "y"]), holder, predict)  # type: ignore[arg-type]
    assert isinstance(batch, ShadowBatch) and (batch.version, batch.outputs, batch.skipped) == ("2", ["2:x", "2:y"],
                                                                                               "")


def test_the_worker_process_runs_at_the_lowest_priority_and_says_why_it_scores_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No registry here: the worker's alias follower cannot resolve `challenger`, and every batch is skipped.
    monkeypatch.setenv("VIGIL_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("VIGIL_MODEL_RUNTIME", "torch")
    served = FakeHolder(alias="champion", current=Loaded("1"))
    scorer = ShadowScorer(WorkerSpec("sentiment", "m", "challenger"), served)  # type: ignore[arg-type]
    try:
        state = wait_until(lambda: (s := scorer.describe()).get("worker_priority") is not None and s, timeout=90,
                           what="the worker to answer")
        assert state["worker_priority"] == LOWEST_NICE and state["worker_idle_class"] is True
        assert state["scoring"] is False and state["version"] is None
        assert os.getpriority(os.PRIO_PROCESS, 0) < LOWEST_NICE  # the service's own priority is untouched
        batch = asyncio.run(scorer.score(["a text"]))
        assert batch.skipped and batch.outputs == []
    finally:
        scorer.stop()


# --- the log, its readers, and live quality ---------------------------------------------------------------------


def row(request_id: str, label: str, version: str, shadow: bool = False) -> InferenceRecord:
    return InferenceRecord(request_id=request_id, trace_id="ab" * 16, endpoint="/predict", protocol="rest",
                           kind="sentiment", model_name="sentiment", model_version=version, input_text="text",
                           label=label, score=0.8, latency_ms=1.0, role="challenger" if shadow else "champion",
                           shadow=shadow)


def log_rows(engine: sa.Engine, *records: InferenceRecord) -> None:
    with engine.begin() as connection:
        connection.execute(inference_log.insert(), [r.model_dump() for r in records])


def test_an_old_log_gains_the_role_columns_and_its_rows_still_count_as_served(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = sa.create_engine(url)
    with old.begin() as connection:
        connection.execute(sa.text(
            "CREATE TABLE inference_log (id INTEGER PRIMARY KEY, timestamp DATETIME NOT NULL, request_id VARCHAR(64) "
            "NOT NULL, trace_id VARCHAR(32) NOT NULL, endpoint VARCHAR(128) NOT NULL, protocol VARCHAR(8) NOT NULL, "
            "kind VARCHAR(16) NOT NULL, model_name VARCHAR(128) NOT NULL, model_version VARCHAR(32) NOT NULL, "
            "label VARCHAR(32), latency_ms FLOAT NOT NULL)"))
        connection.execute(sa.text(
            "INSERT INTO inference_log (timestamp, request_id, trace_id, endpoint, protocol, kind, model_name, "
            "model_version, label, latency_ms) VALUES ('2026-12-01 10:00:00', 'old', '', '/predict', 'rest', "
            "'sentiment', 'sentiment', '1', 'positive', 1.0)"))
    old.dispose()
    engine = create_engine(url)
    columns = {column["name"] for column in sa.inspect(engine).get_columns("inference_log")}
    assert {"role", "shadow"} <= columns
    log_rows(engine, row("new", "negative", "2", shadow=True))
    assert read_frame(engine)["request_id"].tolist() == ["old"]
    assert read_frame(engine, shadow=True)["request_id"].tolist() == ["new"]
    assert len(read_frame(engine, shadow=None)) == 2


def test_feedback_finds_the_served_rows_of_a_request_never_its_shadow_rows(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'log.db'}")
    feedback.prepare(engine)
    log_rows(engine, row("r", "positive", "1"), row("r", "negative", "2", shadow=True),
             row("only-shadowed", "negative", "2", shadow=True))
    found = feedback.find_request(engine, "r")
    assert found is not None and found.answers == ["positive"] and found.model_version == "1"
    assert feedback.find_request(engine, "only-shadowed") is None


def test_live_quality_groups_by_version_and_role_and_gives_the_shadows_agreement(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, sentiment_model_name="sentiment")
    engine = create_engine(settings.inference_log_sqlalchemy_url)
    feedback.prepare(engine)
    # request id: (champion's answer, challenger's answer or None when not shadowed, true label or None)
    traffic = {"a": ("positive", "positive", "positive"), "b": ("negative", "positive", "positive"),
               "c": ("negative", "negative", "negative"), "d": ("positive", "negative", None),
               "e": ("positive", None, "negative")}
    for request_id, (served, shadow, truth) in traffic.items():
        log_rows(engine, row(request_id, served, "1"))
        if shadow is not None:
            log_rows(engine, row(request_id, shadow, "2", shadow=True))
        if truth is not None:
            feedback.record_feedback(engine, request_id, label=truth)
    now = datetime.now(UTC)
    window = Window(now - timedelta(hours=1), now + timedelta(minutes=1))
    champion, challenger = measure_quality(settings, "sentiment", window).contract()["versions"]

    assert (champion["version"], champion["role"], champion["requests"], champion["labelled"]) == ("1", "champion",
                                                                                                   5, 4)
    assert champion["agreement_with_champion"] is None
    truths, answers = ["positive", "positive", "negative", "negative"], ["positive", "negative", "negative",
                                                                          "positive"]
    assert champion["accuracy"] == pytest.approx(accuracy_score(truths, answers))

    assert (challenger["version"], challenger["role"], challenger["requests"], challenger["labelled"]) == (
        "2", "challenger", 4, 3)
    assert challenger["agreement_with_champion"] == pytest.approx(2 / 4)  # a and c agree; b and d do not
    truths, answers = ["positive", "positive", "negative"], ["positive", "positive", "negative"]
    assert challenger["accuracy"] == pytest.approx(accuracy_score(truths, answers))
    assert challenger["macro_f1"] == pytest.approx(f1_score(truths, answers, average="macro"))

    dataset, _ = labelled_dataset(settings, "sentiment", window)
    assert sorted(dataset["request_id"]) == ["a", "b", "c", "e"]  # served rows only: the shadow answered nobody


def test_a_shadowed_regressor_gets_its_errors_and_no_agreement(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    engine = create_engine(settings.inference_log_sqlalchemy_url)
    feedback.prepare(engine)

    def tip(request_id: str, value: float, version: str, shadow: bool = False) -> InferenceRecord:
        return InferenceRecord(request_id=request_id, trace_id="", endpoint="/models/tips/invocations",
                               protocol="rest", kind="model", model_name="tips", model_version=version,
                               inputs={"total_bill": 10.0}, outputs=value, latency_ms=1.0,
                               role="challenger" if shadow else "champion", shadow=shadow)

    log_rows(engine, tip("a", 1.5, "1"), tip("a", 2.5, "2", shadow=True), tip("b", 3.25, "1"),
             tip("b", 3.0, "2", shadow=True))
    feedback.record_feedback(engine, "a", label=2.0)
    feedback.record_feedback(engine, "b", label=3.0)
    now = datetime.now(UTC)
    report = measure_quality(settings, "tips", Window(now - timedelta(hours=1), now + timedelta(minutes=1)))
    champion, challenger = report.contract()["versions"]
    assert report.task == "regression"
    assert champion["mae"] == pytest.approx((0.5 + 0.25) / 2) and challenger["mae"] == pytest.approx(0.25)
    assert challenger["role"] == "challenger" and challenger["agreement_with_champion"] is None


def test_a_pyfunc_challenger_answers_one_predicted_row_per_row() -> None:
    import pandas as pd
    from mlflow.models import infer_signature

    from service.model_store import LoadedModel
    from service.pyfunc import PredictedRow
    from service.pyfunc_service import ServedPyfunc
    from service.shadow import score_rows
    from vigil.signature import signature_spec

    class Threshold:
        def predict(self, frame: pd.DataFrame) -> pd.Series:
            return frame["total_bill"] > 20.0

    spec = signature_spec(infer_signature(pd.DataFrame({"total_bill": [10.0, 30.0]}), pd.Series([False, True])))
    loaded = LoadedModel("tips", "3", "challenger", "", "registry", ServedPyfunc(Threshold(), spec, "sklearn"))
    rows = [PredictedRow.model_validate(row) for row in score_rows(loaded, [{"total_bill": 12.5},
                                                                           {"total_bill": 42.0}])]
    assert [(row.output, row.version, row.batch_size) for row in rows] == [(False, "3", 2), (True, "3", 2)]
