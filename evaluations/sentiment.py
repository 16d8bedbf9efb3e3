"""Evaluate a sentiment classifier version, or compare two, and log the evidence to MLflow (`evaluations`).

Runs: `vigil.eval.kind=sentiment` for one version (metrics, plots, predictions, `evaluation.json`);
`vigil.eval.kind=compare` for a comparison (deltas with bootstrap intervals, the verdict per rule,
`comparison.json`, the policy applied), with each side's evaluation as a child run.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from evaluations import tracking
from evaluations.datasets import EvalData, resolve_data, training_params
from evaluations.metrics import Interval, latency_per_text, paired_bootstrap, paired_bootstrap_latency, per_text_ms
from evaluations.plots import reliability_figure
from evaluations.policy import judge
from evaluations.schemas import (
    ClassifierMetrics,
    Comparison,
    DatasetInfo,
    LatencyStats,
    MetricDelta,
    SentimentEvaluation,
)
from evaluations.scoring import (
    MAX_TEXTS_PER_REQUEST,
    EndpointPredictor,
    InProcessPredictor,
    Predictor,
    ProgressCallback,
    Scored,
    score,
)
from training.metrics import ECE_BINS, Predictions, confusion_counts, point_metrics
from training.plots import confusion_figure
from vigil import registry
from vigil.contracts import ModelIdentity
from vigil.credentials import mask_url
from vigil.policy import HIGHER_IS_BETTER, SENTIMENT_METRICS, Policy
from vigil.registry import RegisteredVersion
from vigil.settings import get_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

IN_PROCESS_BATCH = 32


@dataclass
class _Scoring:
    """One version's answers on the data, with what the report and the run need."""

    model: RegisteredVersion
    scored: Scored
    predictions: Predictions
    evaluation: SentimentEvaluation


def _dataset_info(data: EvalData) -> DatasetInfo:
    description = data.description + "".join(f"; {note}" for note in data.notes)
    return DatasetInfo(name=data.name, fingerprint=data.fingerprint, rows=len(data.frame), domains=data.domains,
                       description=description)


def _summarize(
    model: RegisteredVersion, data: EvalData, scored: Scored, batch_size: int, endpoint: str | None = None
) -> _Scoring:
    """The metrics of one version's answers on ``data``."""
    predictions = Predictions.from_arrays(data.frame["label"].to_numpy(), scored.y_pred, scored.p_positive)
    values = point_metrics(predictions)
    domains = data.frame["domain"].astype(str).to_numpy()
    per_domain = {}
    for domain in data.domains:
        f1 = point_metrics(predictions.subset(domains == domain))["macro_f1"]
        if f1 is not None:
            per_domain[domain] = f1
    latency = latency_per_text(scored.batch_seconds, scored.batch_sizes)
    source = "endpoint" if endpoint else "in-process"
    metrics = ClassifierMetrics(
        rows=len(predictions), accuracy=values["accuracy"] or 0.0, macro_f1=values["macro_f1"] or 0.0,
        roc_auc=values["roc_auc"], ece=values["ece"] or 0.0, ece_bins=ECE_BINS, per_domain_macro_f1=per_domain,
        confusion_matrix=confusion_counts(predictions),
        latency=LatencyStats(p50_ms=latency.p50_ms, p95_ms=latency.p95_ms, mean_ms=latency.mean_ms,
                             batches=latency.batches, batch_size=batch_size, source=source),
    )
    evaluation = SentimentEvaluation(
        model=ModelIdentity(name=model.name, version=model.version, alias=model.alias),
        dataset=_dataset_info(data), metrics=metrics, source=source, endpoint=mask_url(endpoint) if endpoint else None,
    )
    return _Scoring(model, scored, predictions, evaluation)


def _log_evaluation(
    client: MlflowClient, data: EvalData, result: _Scoring, parent_run_id: str | None = None,
    extra_tags: dict[str, str] | None = None,
) -> str:
    evaluation, metrics = result.evaluation, result.evaluation.metrics
    name = f"eval {evaluation.model.name} v{evaluation.model.version} on {data.name}"
    tags = {
        "vigil.eval.kind": "sentiment",
        "vigil.model": evaluation.model.name,
        "vigil.model_version": evaluation.model.version,
        "vigil.model_alias": evaluation.model.alias or "",
        "vigil.eval.source": evaluation.source,
        "dataset.name": data.name,
        "dataset.fingerprint": data.fingerprint,
        **(extra_tags or {}),
    }
    with tracking.evaluation_run(client, name, tags, parent_run_id) as run_id:
        evaluation.run_id = run_id
        tracking.log_values(
            client, run_id,
            metrics={
                "rows": metrics.rows, "accuracy": metrics.accuracy, "macro_f1": metrics.macro_f1,
                "roc_auc": metrics.roc_auc, "ece": metrics.ece, "latency_p50_ms": metrics.latency.p50_ms,
                "latency_p95_ms": metrics.latency.p95_ms, "latency_mean_ms": metrics.latency.mean_ms,
                **{f"{domain}_macro_f1": f1 for domain, f1 in metrics.per_domain_macro_f1.items()},
            },
            params={
                "data": data.name, "data_description": evaluation.dataset.description, "rows": metrics.rows,
                "batch_size": metrics.latency.batch_size, "ece_bins": metrics.ece_bins,
                "source": evaluation.source, "endpoint": evaluation.endpoint or "",
            },
        )
        title = f"{evaluation.model.name} v{evaluation.model.version} on {data.name}"
        tracking.log_figure(client, run_id, confusion_figure(metrics.confusion_matrix, title),
                            "plots/confusion_matrix.png")
        tracking.log_figure(client, run_id, reliability_figure(result.predictions, metrics.ece, title),
                            "plots/calibration.png")
        client.log_dict(run_id, json.loads(evaluation.model_dump_json()), "evaluation.json")
        rows = pd.DataFrame({
            "text": data.frame["text"].to_numpy(), "domain": data.frame["domain"].to_numpy(),
            "label": data.frame["label"].to_numpy(), "predicted": result.scored.y_pred,
            "predicted_label": result.scored.labels, "score": result.scored.scores,
            "p_positive": result.scored.p_positive,
        })
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / "predictions.parquet"
            rows.to_parquet(path)
            client.log_artifact(run_id, str(path), "predictions")
    return run_id


def _load(model: RegisteredVersion, progress: ProgressCallback | None) -> InProcessPredictor:
    phase = f"loading {model.name} v{model.version}"
    if progress:
        progress(phase, 0, 1)
    predictor = InProcessPredictor.load(model)
    if progress:
        progress(phase, 1, 1)
    return predictor


def evaluate_sentiment(
    client: MlflowClient,
    model: str,
    data: str = "test",
    *,
    endpoint: str | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
    progress: ProgressCallback | None = None,
) -> SentimentEvaluation:
    """Score one version (by `name@alias` or `name/version`) on ``data`` and log the run; the report, with its id.

    With ``endpoint`` the predictions come from a running Vigil's `POST /predict`; it must serve that version.
    """
    resolved = registry.resolve(client, model, default_name=get_settings().sentiment_model_name)
    eval_data = resolve_data(data, [training_params(client, resolved.run_id)], limit)
    predictor: Predictor
    if endpoint:
        size = min(batch_size or MAX_TEXTS_PER_REQUEST, MAX_TEXTS_PER_REQUEST)
        predictor = EndpointPredictor(endpoint, expected=resolved)
    else:
        size = batch_size or IN_PROCESS_BATCH
        predictor = _load(resolved, progress)
    texts = eval_data.frame["text"].tolist()
    try:
        (scored,) = score([predictor], texts, size, progress, phase=f"scoring v{resolved.version}")
    finally:
        if isinstance(predictor, EndpointPredictor):
            predictor.close()
    result = _summarize(resolved, eval_data, scored, size, endpoint)
    _log_evaluation(client, eval_data, result, extra_tags={"vigil.eval.endpoint": mask_url(endpoint or "")})
    logger.info("evaluated %s v%s on %s: run %s", resolved.name, resolved.version, eval_data.name,
                result.evaluation.run_id)
    return result.evaluation


def compare_sentiment(
    client: MlflowClient,
    name: str,
    candidate: str,
    baseline: str,
    policy: Policy,
    *,
    data: str | None = None,
    limit: int | None = None,
    bootstrap: int | None = None,
    batch_size: int | None = None,
    progress: ProgressCallback | None = None,
    trigger: str = "cli",
) -> Comparison:
    """Both versions on the same rows, deltas with paired-bootstrap intervals, and the policy's verdict.

    ``candidate`` and ``baseline`` are aliases or versions of ``name`` (or full `name@alias` / `name/version`);
    options left None come from the policy's [gate] section, so the CLI reproduces what the gate decides.
    """
    settings = get_settings()
    gate = policy.gate
    data = data or gate.data
    limit = gate.limit if limit is None else limit
    samples = gate.bootstrap if bootstrap is None else bootstrap
    size = batch_size or gate.batch_size
    new = registry.resolve(client, candidate, default_name=name)
    old = registry.resolve(client, baseline, default_name=name)
    eval_data = resolve_data(
        data, [training_params(client, new.run_id), training_params(client, old.run_id)], limit or None
    )
    predictors = [_load(new, progress), _load(old, progress)]
    texts = eval_data.frame["text"].tolist()
    scored_new, scored_old = score(predictors, texts, size, progress,
                                   phase=f"scoring v{new.version} and v{old.version}", repeats=gate.timing_repeats)
    ours, theirs = _summarize(new, eval_data, scored_new, size), _summarize(old, eval_data, scored_old, size)
    if progress:
        progress("bootstrap", 0, 1)
    intervals = paired_bootstrap(ours.predictions, theirs.predictions, samples, settings.seed, gate.confidence)
    intervals.update(paired_bootstrap_latency(
        per_text_ms(scored_new.batch_seconds, scored_new.batch_sizes),
        per_text_ms(scored_old.batch_seconds, scored_old.batch_sizes), samples, settings.seed, gate.confidence,
    ))
    if progress:
        progress("bootstrap", 1, 1)
    deltas = _deltas(ours.evaluation.metrics, theirs.evaluation.metrics, intervals)
    verdicts = judge(policy, deltas)
    comparison = Comparison(
        candidate=ours.evaluation, baseline=theirs.evaluation, dataset=_dataset_info(eval_data), deltas=deltas,
        rules=verdicts, passed=all(v.passed for v in verdicts), bootstrap_samples=samples,
        confidence=gate.confidence, seed=settings.seed, policy=policy.source,
    )
    _log_comparison(client, eval_data, comparison, ours, theirs, trigger)
    logger.info("compared %s v%s with v%s: %s (run %s)", name, new.version, old.version,
                "pass" if comparison.passed else "fail", comparison.run_id)
    return comparison


def _deltas(
    candidate: ClassifierMetrics, baseline: ClassifierMetrics, intervals: dict[str, Interval]
) -> list[MetricDelta]:
    ours, theirs = candidate.judged(), baseline.judged()
    deltas = []
    for metric in SENTIMENT_METRICS:
        new, old = ours.get(metric), theirs.get(metric)
        interval = intervals.get(metric, Interval(None, None))
        deltas.append(MetricDelta(
            metric=metric, candidate=new, baseline=old,
            delta=None if new is None or old is None else new - old,
            ci_low=interval.low, ci_high=interval.high,
            higher_is_better=HIGHER_IS_BETTER[metric],
        ))
    return deltas


def _log_comparison(
    client: MlflowClient, data: EvalData, comparison: Comparison, ours: _Scoring, theirs: _Scoring, trigger: str
) -> None:
    def log_sides(parent_run_id: str) -> None:
        comparison.candidate.run_id = _log_evaluation(client, data, ours, parent_run_id,
                                                      {"vigil.eval.role": "candidate"})
        comparison.baseline.run_id = _log_evaluation(client, data, theirs, parent_run_id,
                                                     {"vigil.eval.role": "baseline"})

    tracking.log_comparison(client, comparison, trigger, log_sides)
