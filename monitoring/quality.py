"""Live quality per model version, from the requests that received their true label (`POST /feedback`).

Reads the inference log joined with each request's newest feedback (:func:`telemetry.feedback.labelled_rows`)
and computes, per version and role (the alias it answered under: the serve alias, or the shadow alias for the rows
scored in the shadow of served requests, service/shadow.py): requests, labelled requests, and accuracy + macro-F1
(classifiers) or MAE + RMSE (regressors) over the labelled ones. A shadow version also gets its agreement with the
champion: the share of its rows whose answer equals the served answer of the same request (and row), so both are
judged on the same requests and the same labels. The JSON form is the issue's contract,
``{"model", "versions": [{"version", "role", "requests", "labelled", ...}]}``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel

from monitoring.window import Window
from telemetry import feedback
from telemetry.records import create_engine
from telemetry.redaction import is_text_digest
from vigil.sentiment_model import LABELS
from vigil.settings import Settings

Task = Literal["classification", "regression"]
# A numeric answer is read as a class when every value is a whole number and there are at most this many of them.
MAX_NUMERIC_CLASSES = 20


class VersionQuality(BaseModel):
    version: str
    role: str
    requests: int
    labelled: int
    accuracy: float | None = None
    macro_f1: float | None = None
    mae: float | None = None
    rmse: float | None = None
    agreement_with_champion: float | None = None
    # Before labels arrive: what the model's own confidence says its accuracy and macro-F1 are (over every request).
    estimated_accuracy: float | None = None
    estimated_macro_f1: float | None = None


class QualityReport(BaseModel):
    model: str
    task: Task | None
    window_start: str
    window_end: str
    versions: list[VersionQuality]

    def contract(self) -> dict[str, Any]:
        """The JSON the CLI prints: per version the task's two figures, nothing of the other task's."""
        keep = {"classification": ("accuracy", "macro_f1", "estimated_accuracy", "estimated_macro_f1"),
                "regression": ("mae", "rmse")}[self.task or "classification"]
        common = ("version", "role", "requests", "labelled")
        return {"model": self.model, "versions": [
            {key: getattr(v, key) for key in (*common, *keep, "agreement_with_champion")} for v in self.versions]}


def infer_task(truths: list[Any], predictions: list[Any]) -> Task:
    values = [v for v in [*truths, *predictions] if v is not None]
    if any(isinstance(v, str | bool) for v in values):
        return "classification"
    numbers = [float(v) for v in values if isinstance(v, int | float)]
    if numbers and all(n.is_integer() for n in numbers) and len(set(numbers)) <= MAX_NUMERIC_CLASSES:
        return "classification"
    return "regression"


def classification_figures(truths: list[Any], predictions: list[Any]) -> tuple[float, float]:
    """Accuracy and macro-F1 (over every class seen as truth or prediction), the figures offline evaluation uses."""
    truth = [str(v) for v in truths]
    predicted = [str(v) for v in predictions]
    accuracy = float(np.mean([t == p for t, p in zip(truth, predicted, strict=True)]))
    scores = []
    for label in sorted(set(truth) | set(predicted)):
        true_positive = sum(t == label and p == label for t, p in zip(truth, predicted, strict=True))
        predicted_count = sum(p == label for p in predicted)
        actual_count = sum(t == label for t in truth)
        precision = true_positive / predicted_count if predicted_count else 0.0
        recall = true_positive / actual_count if actual_count else 0.0
        scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return accuracy, float(np.mean(scores))


def confidence_estimate(predictions: list[str], scores: list[float], classes: tuple[str, ...]) -> tuple[float, float]:
    """Accuracy and macro-F1 expected from a binary classifier's confidence alone, before any label arrives.

    Confidence-based performance estimation (NannyML's CBPE): a row predicted with probability ``p`` is right with
    probability ``p``, so its expected contribution to the confusion matrix is ``p`` to its predicted class's true
    positives and ``1 - p`` to that class's false positives and the other class's false negatives. The sums give the
    expected accuracy and per-class F1. Exact for calibrated probabilities; how far it lands from the realised
    figures on this model is measured in bench/RESULTS.md.
    """
    if len(classes) != 2:
        raise ValueError(f"the estimate needs exactly two classes, not {len(classes)}")
    confidence = np.asarray(scores, dtype=float)
    predicted = np.asarray(predictions)
    f1s = []
    for label in classes:
        mine = predicted == label
        true_positive = float(confidence[mine].sum())
        false_positive = float((1 - confidence[mine]).sum())
        false_negative = float((1 - confidence[~mine]).sum())
        denominator = 2 * true_positive + false_positive + false_negative
        f1s.append(2 * true_positive / denominator if denominator else 0.0)
    return float(confidence.mean()), float(np.mean(f1s))


def regression_figures(truths: list[Any], predictions: list[Any]) -> tuple[float, float]:
    errors = np.asarray(predictions, dtype=float) - np.asarray(truths, dtype=float)
    return float(np.mean(np.abs(errors))), float(math.sqrt(float(np.mean(errors**2))))


def agreement(shadow: pd.DataFrame, served: pd.DataFrame) -> float | None:
    """Share of ``shadow``'s rows whose prediction equals the served prediction of the same request and row (the
    rows of each are in request order); None when no shadow row has its served one."""
    def keyed(frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"request_id": frame["request_id"], "place": frame.groupby("request_id").cumcount(),
                             "prediction": [str(p) for p in frame["prediction"]]})

    pairs = keyed(shadow).merge(keyed(served), on=["request_id", "place"], suffixes=("_shadow", "_served"))
    if pairs.empty:
        return None
    return float((pairs["prediction_shadow"] == pairs["prediction_served"]).mean())


def measure_quality(settings: Settings, model: str, window: Window, task: Task | None = None) -> QualityReport:
    """Live quality of ``model`` in ``window``: one entry per version and role (served, or scored in the shadow)."""
    rows = _labelled_rows(settings, model, window, shadow=None)
    report = QualityReport(model=model, task=task, window_start=window.since.isoformat(),
                           window_end=window.until.isoformat(), versions=[])
    if rows.empty:
        return report
    rows["prediction"] = [feedback.logged_prediction(row) for _, row in rows.iterrows()]
    is_shadow = (rows["shadow"].fillna(False).astype(bool) if "shadow" in rows
                 else pd.Series(False, index=rows.index))
    # Rows of an older Vigil have no role: they were served, under the alias the model is served by.
    serve_alias = settings.alias_of(_logged_name(settings, model))
    roles = rows["role"] if "role" in rows else pd.Series(None, index=rows.index, dtype=object)
    rows["role"] = [role if isinstance(role, str) and role else (settings.shadow_alias if shadow else serve_alias)
                    for role, shadow in zip(roles, is_shadow, strict=True)]
    rows["is_shadow"] = is_shadow
    labelled = rows[rows["true_label"].notna() & ~is_shadow]
    if report.task is None and not labelled.empty:
        report.task = infer_task(labelled["true_label"].tolist(), labelled["prediction"].tolist())
    all_served = rows[~is_shadow]
    entries: list[tuple[bool, VersionQuality]] = []
    for (version, role, shadow), served in rows.groupby(["model_version", "role", "is_shadow"], sort=False):
        entry = VersionQuality(version=str(version), role=str(role), requests=int(served["request_id"].nunique()),
                               labelled=int(served.loc[served["true_label"].notna(), "request_id"].nunique()))
        if shadow and report.task != "regression":  # a regressor's answers never quite agree: its MAE says more
            entry.agreement_with_champion = agreement(served, all_served)
        if (served["kind"] == "sentiment").all() and served["score"].notna().all():
            entry.estimated_accuracy, entry.estimated_macro_f1 = confidence_estimate(
                served["label"].astype(str).tolist(), served["score"].astype(float).tolist(), LABELS)
        truth = served.loc[served["true_label"].notna()]
        if not truth.empty:
            truths, predictions = truth["true_label"].tolist(), truth["prediction"].tolist()
            if report.task == "regression":
                entry.mae, entry.rmse = regression_figures(truths, predictions)
            else:
                entry.accuracy, entry.macro_f1 = classification_figures(truths, predictions)
        entries.append((bool(shadow), entry))
    # Served versions first, then the shadow's, each in version order.
    entries.sort(key=lambda pair: (pair[0], _version_order(pair[1].version)))
    report.versions = [entry for _, entry in entries]
    return report


def labelled_dataset(settings: Settings, model: str, window: Window) -> tuple[pd.DataFrame, int]:
    """The labelled requests of ``model`` in ``window`` as a training table — the inputs (``text`` for Vigil's
    sentiment model, the signature's columns for a pyfunc model) and ``label`` — with the request id, version and
    time it was served; and how many labelled rows were left out because their text was redacted from the log."""
    rows = _labelled_rows(settings, model, window)
    served = ["request_id", "model_version", "timestamp"]
    if rows.empty:
        return pd.DataFrame(columns=["text", "label", *served]), 0
    labelled = rows[rows["true_label"].notna()]
    if (labelled["kind"] == "sentiment").all():
        logged = labelled["input_text"]
        kept = labelled[[text is not None and not is_text_digest(str(text)) for text in logged]]
        dataset = pd.DataFrame({"text": kept["input_text"], "label": kept["true_label"]})
    else:
        kept = labelled
        dataset = pd.DataFrame([dict(inputs or {}) for inputs in kept["inputs"]], index=kept.index)
        dataset["label"] = kept["true_label"]
    for column in served:
        dataset[column] = kept[column].astype(str) if column == "timestamp" else kept[column]
    return dataset.reset_index(drop=True), len(labelled) - len(kept)


def _labelled_rows(settings: Settings, model: str, window: Window, shadow: bool | None = False) -> pd.DataFrame:
    engine = create_engine(settings.inference_log_sqlalchemy_url)
    try:
        feedback.prepare(engine)
        return feedback.labelled_rows(engine, model_name=_logged_name(settings, model), since=window.since,
                                      until=window.until, shadow=shadow)
    finally:
        engine.dispose()


def _logged_name(settings: Settings, model: str) -> str:
    # `sentiment` is the CLI's name for Vigil's own model, whatever VIGIL_SENTIMENT_MODEL_NAME registers it as.
    return settings.sentiment_model_name if model == "sentiment" else model


def _version_order(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (0, version)

