"""Evaluate any registered pyfunc model on a labelled table, and compare two versions under the promotion policy.

The table is a file (CSV or Parquet: the model's input columns and the target) or the version's attached
`evaluation` dataset (``vigil models reference NAME --role evaluation``), typed by the version's signature.
Predictions come from the version loaded in this process, or from a running Vigil's `/models/NAME/invocations`;
both are reduced to one label or value per row (and a score per class when the model gives them), so the figures
are the same whichever way they were obtained.

The metrics are weighted sums (:func:`classification_scores`, :func:`regression_scores`): with unit weights they
are the point estimates, with bootstrap weights the resamples of a paired interval — one computation for both.

Runs in experiment `evaluations`: ``vigil.eval.kind=model`` for one version (metrics, a confusion-matrix or a
residual plot, the predictions, ``evaluation.json``), ``vigil.eval.kind=compare`` for a comparison, with each
side's evaluation as a child run.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote

import httpx
import numpy as np
import pandas as pd

from evaluations import tracking
from evaluations.metrics import Interval, paired_bootstrap_of
from evaluations.plots import residual_figure
from evaluations.policy import judge
from evaluations.schemas import (
    ClassificationMetrics,
    DatasetInfo,
    MetricDelta,
    ModelComparison,
    ModelEvaluation,
    RegressionMetrics,
)
from evaluations.scoring import ProgressCallback, check_identity, dataframe_split, post_to_vigil
from training.plots import confusion_figure
from vigil import model_cache, model_data, registry
from vigil.contracts import InvocationsResponse, ModelIdentity
from vigil.credentials import mask_url
from vigil.errors import VigilError
from vigil.policy import HIGHER_IS_BETTER, TASK_METRICS, Policy, Task
from vigil.registry import RegisteredVersion
from vigil.settings import get_settings
from vigil.signature import ModelSignatureSpec

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

# An integer prediction with at most this many distinct values (with the target's) is a label, not a quantity.
MAX_CLASSES = 20
# Rows per `/invocations` request: under the service's default VIGIL_MAX_ROWS_PER_REQUEST (1024) and small enough
# that one request stays within a batch's latency budget.
ENDPOINT_ROWS = 256
IN_PROCESS_ROWS = 4096


# --- the labelled table ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelledTable:
    """Rows to score: the table as given (inputs and target) and where it came from."""

    frame: pd.DataFrame
    target: str
    info: DatasetInfo
    # Signatures already read, by version: reading one downloads the version's MLmodel file.
    specs: dict[str, ModelSignatureSpec] = field(default_factory=dict)

    @property
    def truth(self) -> pd.Series:
        return self.frame[self.target].reset_index(drop=True)

    def inputs_for(self, client: MlflowClient, model: RegisteredVersion) -> pd.DataFrame:
        """The input columns typed by ``model``'s own signature (two versions may type a column differently)."""
        if model.version not in self.specs:
            self.specs[model.version] = model_data.version_spec(client, model.name, model.version)
        return model_data.conform(self.frame, self.specs[model.version], self.target).drop(columns=[self.target])


def labelled_table(client: MlflowClient, model: RegisteredVersion, data: Path | None,
                   target: str | None) -> LabelledTable:
    """``data`` with its ``target`` column, or without ``data`` the version's attached evaluation dataset."""
    if data is not None:
        if not target:
            raise VigilError("--target: name the column of the file that holds the true label or value")
        frame = model_data.read_table(data)
        spec = model_data.version_spec(client, model.name, model.version)
        typed = model_data.conform(frame, spec, target)  # refuses a file the model cannot take, naming the column
        return LabelledTable(typed, target, DatasetInfo(
            name=data.name, fingerprint=model_data.fingerprint(typed), rows=len(typed), domains=[],
            description=f"{data} ({len(typed)} rows, target {target})"), {model.version: spec})
    attached = model_data.load_attached(get_settings(), client, model.name, model.version, "evaluation")
    if attached is None:
        raise VigilError(
            f"{model.name} v{model.version} has no evaluation dataset: pass --data FILE --target COL, or attach one "
            f"with `vigil models reference {model.name} --version {model.version} --data FILE --target COL "
            "--role evaluation`")
    frame, info = attached
    if info.target is None:
        raise VigilError(f"the evaluation dataset of {model.name} v{model.version} has no target column; attach it "
                         "again with --target COL")
    if target and target != info.target:
        raise VigilError(f"the evaluation dataset of {model.name} v{model.version} has target {info.target!r}, "
                         f"not {target!r}")
    return LabelledTable(frame, info.target, DatasetInfo(
        name=f"{model.name} v{model.version} evaluation", fingerprint=info.fingerprint, rows=info.rows, domains=[],
        description=f"the evaluation dataset attached to {model.name} v{model.version} ({info.source}, "
                    f"{info.rows} rows, target {info.target})"))


# --- predictions ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answers:
    """A model's answer per row: its label or value, and its numeric side columns (scores per class, maybe)."""

    values: pd.Series
    extra: pd.DataFrame | None = None

    @staticmethod
    def concat(parts: Sequence[Answers]) -> Answers:
        values = pd.concat([part.values for part in parts], ignore_index=True)
        extras = [part.extra for part in parts]
        if any(extra is None for extra in extras):
            return Answers(values)
        return Answers(values, pd.concat(cast(list[pd.DataFrame], extras), ignore_index=True))


def answers_of(prediction: Any) -> Answers:
    """One label or value per row from whatever a pyfunc model returns, or MLflow's JSON of it.

    A table's first column is the answer; its other numeric columns ride along (a classifier's per-class scores
    are columns named after its classes). A tensor output of several values per row has no single answer.
    """
    if isinstance(prediction, list) and prediction and isinstance(prediction[0], dict):
        prediction = pd.DataFrame.from_records(prediction)
    elif isinstance(prediction, dict):
        prediction = pd.DataFrame({key: np.asarray(value).ravel() for key, value in prediction.items()})
    if isinstance(prediction, pd.DataFrame):
        if prediction.shape[1] == 0:
            raise VigilError("the model answered a table without columns")
        rest = prediction.iloc[:, 1:].select_dtypes("number")
        return Answers(prediction.iloc[:, 0].reset_index(drop=True),
                       rest.reset_index(drop=True) if rest.shape[1] else None)
    if isinstance(prediction, pd.Series):
        return Answers(prediction.reset_index(drop=True))
    array = np.asarray(prediction)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise VigilError(f"the model answers {array.shape[1:]} values per row; an evaluation needs one label or "
                         "value per row (or a table whose first column is it)")
    return Answers(pd.Series(array))


class LoadedVersion:
    """A version loaded into this process through the local model cache.

    Vigil's sentiment model is read as data, checked against the digest recorded at registration; any other version
    is loaded by MLflow, which unpickles its code (README, "Trust").
    """

    source = "in-process"

    def __init__(self, client: MlflowClient, model: RegisteredVersion) -> None:
        self.model = model
        self._predict = model_cache.load_predictor(client, model.name, model.version)

    def answers(self, inputs: pd.DataFrame, progress: ProgressCallback | None = None) -> Answers:
        parts = []
        for start in range(0, len(inputs), IN_PROCESS_ROWS):
            parts.append(answers_of(self._predict(inputs.iloc[start:start + IN_PROCESS_ROWS])))
            if progress:
                progress(f"scoring v{self.model.version}", min(start + IN_PROCESS_ROWS, len(inputs)), len(inputs))
        return Answers.concat(parts)


class ServedVersion:
    """A version as a running Vigil serves it, asked through MLflow's scoring protocol."""

    source = "endpoint"

    def __init__(self, url: str, model: RegisteredVersion, timeout: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self._shown_url = mask_url(self.url)
        self.model = model
        self.timeout = timeout

    def answers(self, inputs: pd.DataFrame, progress: ProgressCallback | None = None) -> Answers:
        path = f"/models/{quote(self.model.name, safe='')}/invocations"
        parts = []
        with httpx.Client(timeout=self.timeout) as client:
            for start in range(0, len(inputs), ENDPOINT_ROWS):
                chunk = inputs.iloc[start:start + ENDPOINT_ROWS]
                answer = post_to_vigil(client, self.url, path, dataframe_split(chunk), InvocationsResponse)
                check_identity(answer.model.name, answer.model.version, self.model, self._shown_url)
                part = answers_of(answer.predictions)
                if len(part.values) != len(chunk):
                    raise VigilError(f"{self._shown_url}{path} answered {len(part.values)} predictions for "
                                     f"{len(chunk)} rows")
                parts.append(part)
                if progress:
                    progress(f"scoring v{self.model.version} at {self._shown_url}", start + len(chunk), len(inputs))
        return Answers.concat(parts)


# --- metrics --------------------------------------------------------------------------------------------------


def infer_task(truth: pd.Series, predicted: pd.Series) -> Task:
    """classification for labels (text, booleans, a few whole numbers), regression for quantities."""
    for values in (predicted, truth):
        if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
            return "classification"
    numbers = np.concatenate([predicted.to_numpy(dtype=float), truth.to_numpy(dtype=float)])
    whole = bool(np.all(np.isfinite(numbers)) and np.all(numbers == np.round(numbers)))
    if whole and len(np.unique(numbers)) <= MAX_CLASSES:
        return "classification"
    return "regression"


@dataclass(frozen=True)
class Encoded:
    """Labels as class indices, so weighted counts are matrix products."""

    classes: list[Any]
    truth: np.ndarray
    predicted: np.ndarray

    @property
    def names(self) -> list[str]:
        return [str(c) for c in self.classes]


def encode_labels(truth: pd.Series, predicted: pd.Series) -> Encoded:
    """Both columns over one sorted class list; compared as text when either is text."""
    textual = not (pd.api.types.is_numeric_dtype(truth) and pd.api.types.is_numeric_dtype(predicted))
    left = truth.astype(str) if textual else truth
    right = predicted.astype(str) if textual else predicted
    classes = sorted(set(left.tolist()) | set(right.tolist()))
    index = {label: position for position, label in enumerate(classes)}
    return Encoded(classes, np.array([index[v] for v in left]), np.array([index[v] for v in right]))


def classification_scores(encoded: Encoded, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy and macro-F1 for each row of ``weights`` (resamples × rows); macro-F1 averages the classes that
    occur (true or predicted) in the weighted rows, as scikit-learn's does over the labels it sees."""
    count = len(encoded.classes)
    total = weights.sum(axis=1)
    truth, predicted = np.eye(count)[encoded.truth], np.eye(count)[encoded.predicted]
    true_positive = weights @ (truth * predicted)
    occurs = weights @ truth + weights @ predicted  # 2·TP + FP + FN per class
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(occurs > 0, 2 * true_positive / occurs, np.nan)
    return {"accuracy": weights @ (encoded.truth == encoded.predicted) / total,
            "macro_f1": np.nanmean(f1, axis=1)}


def regression_scores(truth: np.ndarray, predicted: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """MAE, RMSE and R² for each row of ``weights`` (resamples × rows); R² is NaN where the target is constant."""
    total = weights.sum(axis=1)
    residual = predicted - truth
    squared = weights @ residual**2
    mean = weights @ truth / total
    spread = (weights * (truth[None, :] - mean[:, None]) ** 2).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = np.where(spread > 0, 1 - squared / spread, np.nan)
    return {"mae": weights @ np.abs(residual) / total, "rmse": np.sqrt(squared / total), "r2": r2}


def roc_auc(encoded: Encoded, extra: pd.DataFrame | None) -> float | None:
    """ROC-AUC from the model's per-class scores (columns named after the classes); None without them."""
    if extra is None:
        return None
    columns = {str(column): column for column in extra.columns}
    present = sorted(set(encoded.truth.tolist()))
    if len(present) < 2 or not all(name in columns for name in encoded.names):
        return None
    from sklearn.metrics import roc_auc_score

    scores = extra[[columns[name] for name in encoded.names]].to_numpy(dtype=float)
    if len(encoded.classes) == 2:
        return float(roc_auc_score(encoded.truth == 1, scores[:, 1]))
    if len(present) < len(encoded.classes):
        return None  # one-vs-rest needs every class among the true labels
    return float(roc_auc_score(encoded.truth, scores, multi_class="ovr", labels=list(range(len(encoded.classes)))))


def _value(values: dict[str, np.ndarray], name: str) -> float | None:
    number = float(values[name][0])
    return None if math.isnan(number) else number


def measure(task: Task, truth: pd.Series, answers: Answers) -> ClassificationMetrics | RegressionMetrics:
    """The task's metrics of ``answers`` against ``truth`` (the point estimates)."""
    ones = np.ones((1, len(truth)))
    if task == "classification":
        encoded = encode_labels(truth, answers.values)
        point = classification_scores(encoded, ones)
        matrix = np.zeros((len(encoded.classes),) * 2, dtype=int)
        np.add.at(matrix, (encoded.truth, encoded.predicted), 1)
        return ClassificationMetrics(accuracy=float(point["accuracy"][0]), macro_f1=float(point["macro_f1"][0]),
                                     roc_auc=roc_auc(encoded, answers.extra), labels=encoded.names,
                                     confusion_matrix=matrix.tolist())
    expected, predicted = _as_numbers(truth, "target"), _as_numbers(answers.values, "prediction")
    point = regression_scores(expected, predicted, ones)
    return RegressionMetrics(mae=float(point["mae"][0]), rmse=float(point["rmse"][0]), r2=_value(point, "r2"))


def _as_numbers(values: pd.Series, what: str) -> np.ndarray:
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    if np.isnan(numbers).any():
        raise VigilError(f"a regression needs a number in every row: the {what} is not a number in row "
                         f"{int(np.flatnonzero(np.isnan(numbers))[0])}")
    return numbers


def resampled_scores(task: Task, truth: pd.Series, answers: Answers) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    if task == "classification":
        encoded = encode_labels(truth, answers.values)
        return lambda weights: classification_scores(encoded, weights)
    expected, predicted = _as_numbers(truth, "target"), _as_numbers(answers.values, "prediction")
    return lambda weights: regression_scores(expected, predicted, weights)


# --- one version ----------------------------------------------------------------------------------------------


def _identity(model: RegisteredVersion) -> ModelIdentity:
    return ModelIdentity(name=model.name, version=model.version, alias=model.alias)


def _log_evaluation(client: MlflowClient, table: LabelledTable, inputs: pd.DataFrame, evaluation: ModelEvaluation,
                    answers: Answers, parent_run_id: str | None = None,
                    extra_tags: dict[str, str] | None = None) -> str:
    model, data = evaluation.model, evaluation.dataset
    tags = {
        "vigil.eval.kind": "model", "vigil.eval.task": evaluation.task, "vigil.model": model.name,
        "vigil.model_version": model.version, "vigil.model_alias": model.alias or "",
        "vigil.eval.source": evaluation.source, "vigil.eval.endpoint": evaluation.endpoint or "",
        "dataset.name": data.name, "dataset.fingerprint": data.fingerprint, **(extra_tags or {}),
    }
    title = f"{model.name} v{model.version} on {data.name}"
    with tracking.evaluation_run(client, f"eval {title}", tags, parent_run_id) as run_id:
        evaluation.run_id = run_id
        tracking.log_values(
            client, run_id, metrics={"rows": evaluation.rows, **evaluation.metrics.judged()},
            params={"data": data.name, "data_description": data.description, "target": evaluation.target,
                    "task": evaluation.task, "rows": evaluation.rows, "source": evaluation.source,
                    "endpoint": evaluation.endpoint or ""},
        )
        metrics = evaluation.metrics
        if isinstance(metrics, ClassificationMetrics):
            tracking.log_figure(client, run_id, confusion_figure(metrics.confusion_matrix, title, metrics.labels),
                                "plots/confusion_matrix.png")
        else:
            tracking.log_figure(client, run_id, residual_figure(
                _as_numbers(table.truth, "target"), _as_numbers(answers.values, "prediction"), title,
                metrics.rmse), "plots/residuals.png")
        client.log_dict(run_id, json.loads(evaluation.model_dump_json()), "evaluation.json")
        rows = inputs.reset_index(drop=True).assign(**{table.target: table.truth, "predicted": answers.values})
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / "predictions.parquet"
            rows.astype({column: str for column in rows.columns if rows[column].dtype == object}).to_parquet(path)
            client.log_artifact(run_id, str(path), "predictions")
    return run_id


def evaluate_model(client: MlflowClient, model: str, *, data: Path | None = None, target: str | None = None,
                   task: Task | None = None, endpoint: str | None = None,
                   progress: ProgressCallback | None = None) -> ModelEvaluation:
    """Score one version (`name@alias` or `name/version`) on a labelled table and log the run; the report.

    With ``endpoint`` the predictions come from a running Vigil, which must serve that version.
    """
    resolved = registry.resolve(client, model)
    table = labelled_table(client, resolved, data, target)
    inputs = table.inputs_for(client, resolved)
    predictor = ServedVersion(endpoint, resolved) if endpoint else LoadedVersion(client, resolved)
    answers = predictor.answers(inputs, progress)
    chosen = task or infer_task(table.truth, answers.values)
    evaluation = ModelEvaluation(
        model=_identity(resolved), task=chosen, target=table.target, dataset=table.info, rows=len(inputs),
        metrics=measure(chosen, table.truth, answers), source="endpoint" if endpoint else "in-process",
        endpoint=mask_url(endpoint) if endpoint else None)
    _log_evaluation(client, table, inputs, evaluation, answers)
    logger.info("evaluated %s v%s on %s: run %s", resolved.name, resolved.version, table.info.name,
                evaluation.run_id)
    return evaluation


# --- two versions ---------------------------------------------------------------------------------------------


def compare_models(client: MlflowClient, name: str, candidate: str, baseline: str, policy: Policy, *,
                   data: Path | None = None, target: str | None = None, task: Task | None = None,
                   bootstrap: int | None = None, progress: ProgressCallback | None = None,
                   trigger: str = "cli") -> ModelComparison:
    """Both versions on the same rows (``data``, else the candidate's evaluation dataset), deltas with paired
    bootstrap intervals, and the verdict of the rules the policy gives this model or its task."""
    settings = get_settings()
    new = registry.resolve(client, candidate, default_name=name)
    old = registry.resolve(client, baseline, default_name=name)
    table = labelled_table(client, new, data, target)
    sides = []
    for model in (new, old):
        inputs = table.inputs_for(client, model)
        if progress:
            progress(f"loading {model.name} v{model.version}", 0, 1)
        sides.append((model, inputs, LoadedVersion(client, model).answers(inputs, progress)))
    chosen = task or policy.task_of(name) or infer_task(table.truth, sides[0][2].values)
    rules, where = policy.rules_for(name, chosen)
    evaluations = [ModelEvaluation(model=_identity(model), task=chosen, target=table.target, dataset=table.info,
                                   rows=len(inputs), metrics=measure(chosen, table.truth, answers),
                                   source="in-process") for model, inputs, answers in sides]
    samples = policy.gate.bootstrap if bootstrap is None else bootstrap
    intervals = paired_bootstrap_of(resampled_scores(chosen, table.truth, sides[0][2]),
                                    resampled_scores(chosen, table.truth, sides[1][2]), len(table.truth), samples,
                                    settings.seed, policy.gate.confidence)
    deltas = metric_deltas(chosen, evaluations[0], evaluations[1], intervals)
    verdicts = judge(policy, deltas, rules)
    comparison = ModelComparison(
        task=chosen, candidate=evaluations[0], baseline=evaluations[1], dataset=table.info, deltas=deltas,
        rules=verdicts, passed=all(v.passed for v in verdicts), bootstrap_samples=samples,
        confidence=policy.gate.confidence, seed=settings.seed, policy=where)

    def log_sides(parent_run_id: str) -> None:
        for evaluation, (_, inputs, answers), role in zip(evaluations, sides, ("candidate", "baseline"), strict=True):
            _log_evaluation(client, table, inputs, evaluation, answers, parent_run_id, {"vigil.eval.role": role})

    tracking.log_comparison(client, comparison, trigger, log_sides)
    logger.info("compared %s v%s with v%s: %s (run %s)", name, new.version, old.version,
                "pass" if comparison.passed else "fail", comparison.run_id)
    return comparison


def metric_deltas(task: Task, candidate: ModelEvaluation, baseline: ModelEvaluation,
            intervals: dict[str, Interval]) -> list[MetricDelta]:
    ours, theirs = candidate.metrics.judged(), baseline.metrics.judged()
    deltas = []
    for metric in TASK_METRICS[task]:
        new, old = ours.get(metric), theirs.get(metric)
        interval = intervals.get(metric, Interval(None, None))
        deltas.append(MetricDelta(metric=metric, candidate=new, baseline=old,
                                  delta=None if new is None or old is None else new - old,
                                  ci_low=interval.low, ci_high=interval.high,
                                  higher_is_better=HIGHER_IS_BETTER[metric]))
    return deltas
