"""Feedback beside the inference log, the label checks of `POST /feedback`, and live quality computed from them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sklearn.metrics import accuracy_score, f1_score

from monitoring.feedback_cli import read_feedback_file
from monitoring.quality import (
    classification_figures,
    confidence_estimate,
    infer_task,
    labelled_dataset,
    measure_quality,
    regression_figures,
)
from monitoring.window import Window
from service import feedback as service_feedback
from service.errors import ApiError
from service.feedback import check_label
from telemetry import feedback
from telemetry.records import InferenceRecord, create_engine, inference_log
from tests.conftest import wait_until
from vigil.contracts import Feedback
from vigil.settings import Settings


@pytest.fixture
def engine(tmp_path: Path) -> sa.Engine:
    created = create_engine(f"sqlite:///{tmp_path / 'log.db'}")
    feedback.prepare(created)
    return created


def log_rows(engine: sa.Engine, *records: InferenceRecord) -> None:
    with engine.begin() as connection:
        connection.execute(inference_log.insert(), [r.model_dump() for r in records])


def sentiment_row(request_id: str, label: str, version: str = "1", model: str = "sentiment") -> InferenceRecord:
    return InferenceRecord(request_id=request_id, trace_id="ab" * 16, endpoint="/predict", protocol="rest",
                           kind="sentiment", model_name=model, model_version=version, label=label, score=0.9,
                           latency_ms=3.0)


def model_row(request_id: str, output: object, version: str = "1") -> InferenceRecord:
    return InferenceRecord(request_id=request_id, trace_id="", endpoint="/models/tips/invocations", protocol="rest",
                           kind="model", model_name="tips", model_version=version, inputs={"total_bill": 10.0},
                           outputs=output, latency_ms=2.0)


def test_the_same_feedback_twice_changes_nothing_and_a_new_one_keeps_the_old(engine: sa.Engine) -> None:
    log_rows(engine, sentiment_row("r1", "positive"))
    state, changed = feedback.record_feedback(engine, "r1", label="negative")
    assert changed and state.revisions == 1
    state, changed = feedback.record_feedback(engine, "r1", label="negative")
    assert not changed and state.revisions == 1
    state, changed = feedback.record_feedback(engine, "r1", score=0.5)  # a rating keeps the label
    assert changed and state.label == "negative" and state.score == 0.5 and state.revisions == 2
    state, changed = feedback.record_feedback(engine, "r1", label="positive")
    assert changed and state.revisions == 3
    history = feedback.feedback_history(engine, "r1")
    assert history["label"].tolist() == ["negative", "negative", "positive"]


def test_a_logged_request_is_found_with_its_answers_and_an_unknown_one_is_not(engine: sa.Engine) -> None:
    log_rows(engine, model_row("multi", {"tip": 1.5}), model_row("multi", {"tip": 2.5}))
    found = feedback.find_request(engine, "multi")
    assert found is not None and found.kind == "model" and found.rows == 2
    assert found.answers == [{"tip": 1.5}, {"tip": 2.5}]
    assert feedback.find_request(engine, "never-served") is None


def served(kind: str, answers: list[object]) -> feedback.ServedRequest:
    return feedback.ServedRequest("r", kind, "m", "1", "", answers, datetime.now(UTC))


@pytest.mark.parametrize(("request_", "item", "refused"), [
    (served("sentiment", ["positive"]), Feedback(request_id="r", label="negative"), False),
    (served("sentiment", ["positive"]), Feedback(request_id="r", label="neutral"), True),
    (served("sentiment", ["positive"]), Feedback(request_id="r", label=1), True),
    (served("model", [{"tip": 1.5}]), Feedback(request_id="r", label=2.0), False),
    (served("model", [{"tip": 1.5}]), Feedback(request_id="r", label="two"), True),
    (served("model", [1.5, 2.0]), Feedback(request_id="r", label=[1.0, 3.0]), False),
    (served("model", [1.5, 2.0]), Feedback(request_id="r", label=1.0), True),  # two rows, one label
    (served("model", [1.5, 2.0]), Feedback(request_id="r", label=[1.0]), True),
    (served("rag", [None]), Feedback(request_id="r", score=1.0, comment="good"), False),
    (served("rag", [None]), Feedback(request_id="r", label="Denver Broncos"), True),
    (served("sentiment", ["positive"]), Feedback(request_id="r"), True),  # nothing to record
])
def test_labels_a_model_could_not_answer_are_refused(request_: feedback.ServedRequest, item: Feedback,
                                                     refused: bool) -> None:
    if refused:
        with pytest.raises(ApiError) as error:
            check_label(request_, item)
        assert error.value.status == 422
    else:
        check_label(request_, item)


def test_classification_figures_match_scikit_learn() -> None:
    truth = ["a", "b", "a", "c", "b", "a", "c"]
    predicted = ["a", "a", "a", "c", "b", "b", "b"]
    accuracy, macro_f1 = classification_figures(truth, predicted)
    assert accuracy == pytest.approx(accuracy_score(truth, predicted))
    assert macro_f1 == pytest.approx(f1_score(truth, predicted, average="macro"))


def test_regression_figures_and_the_task_read_from_the_labels() -> None:
    mae, rmse = regression_figures([1.0, 2.0, 4.0], [1.5, 2.0, 2.0])
    assert mae == pytest.approx(2.5 / 3) and rmse == pytest.approx(((0.25 + 4.0) / 3) ** 0.5)
    assert infer_task(["positive"], ["negative"]) == "classification"
    assert infer_task([0, 1, 1], [1, 1, 0]) == "classification"
    assert infer_task([1.25, 3.5], [1.0, 3.0]) == "regression"


def test_live_quality_per_version_counts_every_request_and_scores_the_labelled(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, sentiment_model_name="sentiment")
    engine = create_engine(settings.inference_log_sqlalchemy_url)
    feedback.prepare(engine)
    answers = {"a": ("positive", "positive"), "b": ("negative", "positive"), "c": ("negative", "negative"),
               "d": ("positive", None)}  # request id: (answer, true label or None)
    log_rows(engine, *(sentiment_row(rid, answer, version="2") for rid, (answer, _) in answers.items()),
             sentiment_row("old", "positive", version="1"))
    for rid, (_, truth) in answers.items():
        if truth is not None:
            feedback.record_feedback(engine, rid, label=truth)
    feedback.record_feedback(engine, "old", label="negative")
    now = datetime.now(UTC)
    report = measure_quality(settings, "sentiment", Window(now - timedelta(hours=1), now + timedelta(minutes=1)))
    contract = report.contract()
    assert contract["model"] == "sentiment"
    by_version = {v["version"]: v for v in contract["versions"]}
    assert set(by_version["2"]) == {"version", "role", "requests", "labelled", "accuracy", "macro_f1",
                                    "agreement_with_champion", "estimated_accuracy", "estimated_macro_f1"}
    assert by_version["2"]["estimated_accuracy"] == pytest.approx(0.9)  # every row was answered with score 0.9
    assert by_version["2"]["requests"] == 4 and by_version["2"]["labelled"] == 3
    truths, predicted = ["positive", "positive", "negative"], ["positive", "negative", "negative"]
    assert by_version["2"]["accuracy"] == pytest.approx(accuracy_score(truths, predicted))
    assert by_version["2"]["macro_f1"] == pytest.approx(f1_score(truths, predicted, average="macro"))
    assert by_version["1"]["accuracy"] == 0.0 and by_version["1"]["labelled"] == 1


def test_a_list_label_gives_each_row_of_a_request_its_own(engine: sa.Engine) -> None:
    log_rows(engine, model_row("multi", {"tip": 1.0}), model_row("multi", {"tip": 2.0}), model_row("one", 3.0))
    feedback.record_feedback(engine, "multi", label=[1.5, 2.0])
    feedback.record_feedback(engine, "one", label=4.0)
    rows = feedback.labelled_rows(engine, model_name="tips")
    assert rows["true_label"].tolist() == [1.5, 2.0, 4.0]


def test_labelled_requests_export_as_a_training_table_without_redacted_texts(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, sentiment_model_name="sentiment")
    engine = create_engine(settings.inference_log_sqlalchemy_url)
    feedback.prepare(engine)
    kept = sentiment_row("kept", "positive").model_copy(update={"input_text": "Lovely screen."})
    hashed = sentiment_row("hashed", "positive").model_copy(update={"input_text": "sha256:" + "0" * 64})
    unlabelled = sentiment_row("unlabelled", "positive").model_copy(update={"input_text": "Fine."})
    log_rows(engine, kept, hashed, unlabelled)
    feedback.record_feedback(engine, "kept", label="negative")
    feedback.record_feedback(engine, "hashed", label="negative")
    now = datetime.now(UTC)
    dataset, withheld = labelled_dataset(settings, "sentiment", Window(now - timedelta(hours=1), now))
    assert dataset[["text", "label", "request_id"]].values.tolist() == [["Lovely screen.", "negative", "kept"]]
    assert withheld == 1


def test_a_pyfunc_models_labelled_rows_export_with_their_inputs(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    log = create_engine(settings.inference_log_sqlalchemy_url)
    feedback.prepare(log)
    log_rows(log, model_row("t1", {"tip": 1.0}))
    feedback.record_feedback(log, "t1", label=1.75)
    now = datetime.now(UTC)
    dataset, withheld = labelled_dataset(settings, "tips", Window(now - timedelta(hours=1), now))
    assert dataset[["total_bill", "label"]].values.tolist() == [[10.0, 1.75]] and withheld == 0


def test_a_feedback_file_reads_as_csv_or_json_lines(tmp_path: Path) -> None:
    csv = tmp_path / "labels.csv"
    csv.write_text("request_id,label,score\n0001,positive,\n0002,,0.5\n")
    items = read_feedback_file(csv)
    assert [(i.request_id, i.label, i.score) for i in items] == [("0001", "positive", None), ("0002", None, 0.5)]
    lines = tmp_path / "labels.jsonl"
    lines.write_text('{"request_id": "a", "label": 2.5}\n{"request_id": "b", "label": "x", "comment": "late"}\n')
    assert [(i.request_id, i.label, i.comment) for i in read_feedback_file(lines)] == [("a", 2.5, None),
                                                                                       ("b", "x", "late")]


def test_the_confidence_estimate_is_the_expected_confusion_matrix_of_the_scores() -> None:
    predictions = ["positive", "positive", "negative", "negative"]
    scores = [0.9, 0.6, 0.8, 0.7]
    accuracy, macro_f1 = confidence_estimate(predictions, scores, ("negative", "positive"))
    assert accuracy == pytest.approx(0.75)
    # positive: TP 1.5, FP 0.5, FN 0.5 (the negatives' doubt); negative: TP 1.5, FP 0.5, FN 0.5
    assert macro_f1 == pytest.approx(3.0 / 4.0)
    # A certain model expects to be right; the estimate of one that always hedges is a coin.
    assert confidence_estimate(predictions, [1.0] * 4, ("negative", "positive")) == (1.0, 1.0)
    assert confidence_estimate(predictions, [0.5] * 4, ("negative", "positive"))[0] == 0.5


def test_an_attachment_waits_for_a_recent_trace_and_tries_an_old_one_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_feedback, "RETRY_AFTER", (0.05, 0.1, 0.15, 0.2))
    tries: dict[str, int] = {}

    def attach(trace_id: str, item: Feedback) -> bool:
        tries[trace_id] = tries.get(trace_id, 0) + 1
        return trace_id == "recent" and tries[trace_id] == 3  # its export lands between the 2nd and 3rd look

    assessments = service_feedback.TraceAssessments("http://127.0.0.1:9")
    monkeypatch.setattr(assessments, "_attach", attach)
    now = datetime.now(UTC)
    item = Feedback(request_id="r", label="positive")
    assessments.submit("recent", item, now)
    assessments.submit("dropped", item, now)
    assessments.submit("old", item, now - timedelta(hours=1))
    wait_until(lambda: assessments.attached + assessments.not_traced == 3, timeout=5, what="every attachment judged")
    assessments.close()
    assert tries == {"recent": 3, "dropped": 4, "old": 1}
    assert (assessments.attached, assessments.not_traced) == (1, 2)


def test_first_labels_are_counted_right_or_wrong_per_version_for_prometheus(tmp_path: Path) -> None:
    from telemetry.metrics import get_metrics

    url = f"sqlite:///{tmp_path / 'log.db'}"
    engine = create_engine(url)
    feedback.prepare(engine)
    log_rows(engine, sentiment_row("p1", "positive", version="7", model="live-counts"),
             sentiment_row("p2", "negative", version="7", model="live-counts"),
             sentiment_row("p3", "positive", version="7", model="live-counts"))
    desk = service_feedback.FeedbackDesk(url, tracking_uri=None, flush_seconds=0.1)
    metrics = get_metrics()

    def counted(outcome: str) -> float:
        return float(metrics.feedback.labels("live-counts", "7", outcome)._value.get())

    import asyncio

    async def post() -> None:
        await desk.submit(Feedback(request_id="p1", label="positive"))
        await desk.submit(Feedback(request_id="p2", label="positive"))
        await desk.submit(Feedback(request_id="p2", label="negative"))  # a correction: the request counted once
        await desk.submit(Feedback(request_id="p3", score=1.0, comment="fine"))

    asyncio.run(post())
    assert (counted("correct"), counted("wrong"), counted("rating")) == (1.0, 1.0, 1.0)
    assert metrics.live_accuracy.labels("live-counts", "7")._value.get() == 0.5
