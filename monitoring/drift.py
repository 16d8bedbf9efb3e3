"""The sentiment drift job: the served version's inference-log rows in a window against its training reference.

Three comparisons, each an Evidently 0.7 report on its own dataset, combined into one snapshot per window:

- **predictions** (every row): the label share and the score distribution (``ValueDrift``, ``CategoryCount``);
- **descriptors** (rows whose text was logged): length, word count, … from :mod:`vigil.text_features`,
  ``ValueDrift`` per descriptor and ``DriftedColumnsCount`` over them;
- **embeddings** (a sample of those rows, ``VIGIL_DRIFT_EMBEDDING_SAMPLE``): ``EmbeddingsDrift`` used explicitly
  — ``DataDriftPreset(embeddings=...)`` silently ignores embeddings — on `text-embedder` vectors (the encoder RAG
  uses, named by its registered version; :mod:`monitoring.embeddings`) of the served texts and of the reference
  texts. The reference's own ``embedding`` column holds the *fine-tuned* classifier's vectors, which are tuned on
  those very texts; comparing them with anything else would show drift that is only training.

The verdict is *drift* when the descriptors drift as a set (at least half of them, Evidently's dataset-drift rule),
when the embeddings drift, or when the predicted label share shifts (PSI). The score distribution is reported but
not voted: the reference scores come from the training texts, on which the classifier is more confident than on
any unseen text, so it would flag every window.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field
from threadpoolctl import threadpool_limits

from monitoring.alerts import Alert
from monitoring.embeddings import EmbeddingCache, drift_embedder
from monitoring.job import Clock, ExitCode, JobResult, JobStatus, deliver, publish, read_rows
from monitoring.reference import ServedVersion, load_reference, resolve_version
from monitoring.window import Window
from monitoring.workspace import HtmlPolicy
from telemetry.redaction import is_text_digest
from vigil.settings import Settings
from vigil.text_features import FEATURE_COLUMNS, describe

if TYPE_CHECKING:
    from evidently.core.report import Snapshot

logger = logging.getLogger(__name__)

PROJECT = "sentiment"
EMBEDDINGS_NAME = "text_embedder"
# Domain-classifier ROC AUC above which the embeddings count as drifted. Evidently's default (0.55) flags any
# change of mix: a window of amazon-only reviews against an amazon+yelp reference scores above it, a
# sub-population that is half the reference reaching up to 1 - 0.5/2 = 0.75. Above 0.8 the window holds text the
# reference does not cover. The scores of both cases: bench/RESULTS.md, drift section.
EMBEDDING_AUC_THRESHOLD = 0.8
# Evidently's dataset-drift rule: the descriptors drift as a set when at least this share of them drifts.
DESCRIPTOR_DRIFT_SHARE = 0.5
# Label share is judged by effect size (PSI), not by a p-value: a 5 % test would raise a false alarm every 20
# windows, i.e. several a day on a 15-minute schedule. PSI > 0.2 is the usual "significant shift"; from a 50/50
# reference that is a share beyond about 72/28.
LABEL_PSI_THRESHOLD = 0.2
LABEL_COLUMN = "prediction"
SCORE_COLUMN = "score"


class DriftStatus(JobStatus):
    NO_DRIFT = "no_drift", ExitCode.OK
    DRIFT = "drift", ExitCode.ALERT
    INSUFFICIENT = "insufficient_data", ExitCode.NO_VERDICT  # too little data; errors raise, and the CLI exits 2


class Check(BaseModel):
    """One line of the verdict: a comparison, whether it drifted (None: not evaluated), and why."""

    name: str
    drifted: bool | None
    score: float | None = None
    threshold: float | None = None
    method: str = ""
    votes: bool = Field(True, description="whether this check can make the verdict 'drift'")
    detail: str = ""


class DriftResult(JobResult):
    """What one run of the drift job found; the CLI prints it and ``--json`` emits it as is."""

    status: DriftStatus
    message: str
    model_name: str
    model_version: str
    window_start: datetime
    window_end: datetime
    rows: int = 0
    text_rows: int = 0
    redacted_rows: int = 0
    embedded_rows: int = 0
    checks: list[Check] = Field(default_factory=list)
    drifted: list[str] = Field(default_factory=list, description="descriptors and checks that drifted")
    project: str = PROJECT
    snapshot_id: str | None = None
    snapshot_location: str | None = None
    report: str | None = None
    alert_delivered: bool | None = None
    seconds: float = 0.0
    timings: dict[str, float] = Field(default_factory=dict, description="seconds per phase")


def usable_text(value: object) -> bool:
    """Whether a logged ``input_text`` is the text itself, not a redaction (None, empty, or a text digest)."""
    if not isinstance(value, str) or not value.strip():
        return False
    return not is_text_digest(value.strip())


def describe_texts(texts: Sequence[str]) -> pd.DataFrame:
    """Descriptor columns for ``texts``, each distinct text described once (served traffic repeats itself)."""
    unique = list(dict.fromkeys(texts))
    table = pd.DataFrame([describe(t) for t in unique], columns=list(FEATURE_COLUMNS), index=unique)
    return table.loc[list(texts)].reset_index(drop=True)


def run_drift(
    settings: Settings,
    window: Window,
    *,
    version: str | None = None,
    min_rows: int | None = None,
    project: str = PROJECT,
    send_alerts: bool = True,
    html: HtmlPolicy = "always",
) -> DriftResult:
    """Run the drift job for ``settings.sentiment_model_name`` over ``window``; never raises for bad data.

    ``html``: when to write the standalone HTML report (:func:`monitoring.job.publish`).
    """
    clock = Clock()
    model_name = settings.sentiment_model_name
    min_rows = settings.drift_min_rows if min_rows is None else min_rows
    served, client = resolve_version(settings, model_name, version)
    base = {"model_name": model_name, "model_version": served.version, "window_start": window.since,
            "window_end": window.until, "project": project}

    rows = read_rows(settings, "sentiment", window.since, window.until, model_name=model_name,
                     model_version=served.version)
    rows = rows[rows["label"].notna()].reset_index(drop=True) if len(rows) else rows
    clock.lap("read rows")
    if len(rows) < min_rows:
        return DriftResult(
            status=DriftStatus.INSUFFICIENT, rows=len(rows), seconds=clock.total(), timings=clock.laps,
            message=f"too few rows for a verdict: {len(rows)} of {model_name} v{served.version} in the window, "
                    f"{min_rows} needed (--min-rows). No drift verdict.",
            **base,
        )

    reference = load_reference(settings, served, client)
    clock.lap("load reference")
    text_mask = rows["input_text"].map(usable_text)
    texts = rows.loc[text_mask, "input_text"].astype(str).tolist()
    result = DriftResult(status=DriftStatus.NO_DRIFT, message="", rows=len(rows), text_rows=len(texts),
                         redacted_rows=int((~text_mask).sum()), **base)
    # Too few texts: the descriptors and embeddings are not judged, and MLflow is not asked for the embedder.
    embedder = drift_embedder(settings) if len(texts) >= min_rows else None
    meta = _metadata(served, window, result, embedder.label if embedder else "")
    tags = ["drift", f"model:{model_name}", f"version:{served.version}"]

    parts = [_prediction_report(rows, reference, window, meta, tags)]
    clock.lap("prediction drift")
    if embedder is not None:
        parts.append(_descriptor_report(texts, reference, window, meta, tags))
        clock.lap("descriptor drift")
        sample = _sample(texts, settings.drift_embedding_sample, settings.seed)
        result.embedded_rows = len(sample)
        cache = EmbeddingCache(settings.home / "monitoring" / "embeddings.sqlite", embedder)
        reference_texts = _sample(reference["text"].astype(str).tolist(), settings.drift_embedding_sample,
                                  settings.seed)
        vectors = cache.embed(reference_texts), cache.embed(sample)
        clock.lap("embed texts")
        parts.append(_embedding_report(*vectors, window, meta, tags))
        clock.lap("embedding drift")
    results = [found for part in parts for found in _results(part)]
    result.checks = _checks(results, result, min_rows)
    result.drifted = _drifted(results, result.checks)
    drifted = any(check.drifted and check.votes for check in result.checks)
    result.status = DriftStatus.DRIFT if drifted else DriftStatus.NO_DRIFT
    result.message = _message(result)

    published = publish(settings, project, parts, {"verdict": result.status.value, "drifted": ",".join(result.drifted)},
                        alerting=drifted, html=html, clock=clock,
                        report_name=f"drift-{model_name}-v{served.version}-{window.slug()}.html")
    result.snapshot_id, result.snapshot_location, result.report = (published.snapshot_id, published.location,
                                                                   published.report)
    delivered = deliver(settings, [_alert(result)] if drifted else [], send_alerts=send_alerts)
    result.alert_delivered = delivered[0] if delivered else None
    result.seconds, result.timings = clock.total(), clock.laps
    return result


def _metadata(served: ServedVersion, window: Window, result: DriftResult, embedder: str) -> dict[str, Any]:
    return {
        "job": "drift", "model_name": served.model_name, "model_version": served.version,
        "model_alias": served.alias or "", "reference_run_id": served.run_id,
        "window_start": window.since.isoformat(), "window_end": window.until.isoformat(),
        "rows": str(result.rows), "text_rows": str(result.text_rows), "redacted_rows": str(result.redacted_rows),
        "embedder": embedder,
    }


def _run(metrics: list[Any], current: pd.DataFrame, reference: pd.DataFrame, definition: Any, window: Window,
         meta: dict[str, Any], tags: list[str]) -> Snapshot:
    from evidently import Dataset, Report

    report = Report(metrics, include_tests=True)
    return report.run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
        timestamp=window.until.replace(tzinfo=None), metadata=dict(meta), tags=list(tags),
    )


def _prediction_report(rows: pd.DataFrame, reference: pd.DataFrame, window: Window, meta: dict[str, Any],
                       tags: list[str]) -> Snapshot:
    from evidently import DataDefinition
    from evidently.metrics import CategoryCount, MeanValue, RowCount, ValueDrift

    columns = [LABEL_COLUMN, SCORE_COLUMN]
    current = pd.DataFrame({LABEL_COLUMN: rows["label"].astype(str), SCORE_COLUMN: rows["score"].astype(float)})
    labels = sorted(set(reference[LABEL_COLUMN].astype(str)) | set(current[LABEL_COLUMN]))
    # tests=[] on the descriptive metrics: their default tests ("row count equals the reference's ± 10 %") are
    # not verdicts and would only fill the report's test summary with failures.
    metrics: list[Any] = [RowCount(tests=[]),
                          ValueDrift(column=LABEL_COLUMN, method="psi", threshold=LABEL_PSI_THRESHOLD),
                          ValueDrift(column=SCORE_COLUMN), MeanValue(column=SCORE_COLUMN, tests=[])]
    metrics += [CategoryCount(column=LABEL_COLUMN, categories=[label], tests=[]) for label in labels]
    definition = DataDefinition(categorical_columns=[LABEL_COLUMN], numerical_columns=[SCORE_COLUMN])
    return _run(metrics, current, reference[columns].astype({LABEL_COLUMN: str, SCORE_COLUMN: float}), definition,
                window, meta, tags)


def _descriptor_report(texts: list[str], reference: pd.DataFrame, window: Window, meta: dict[str, Any],
                       tags: list[str]) -> Snapshot:
    from evidently import DataDefinition
    from evidently.metrics import DriftedColumnsCount, MeanValue, ValueDrift

    columns = list(FEATURE_COLUMNS)
    # The reference's stored descriptors are recomputed from its texts so both sides come from today's code.
    reference_descriptors = describe_texts(reference["text"].astype(str).tolist())
    metrics: list[Any] = [DriftedColumnsCount(columns=columns, drift_share=DESCRIPTOR_DRIFT_SHARE)]
    metrics += [ValueDrift(column=column) for column in columns]
    metrics += [MeanValue(column=column, tests=[]) for column in ("text_length", "word_count")]
    return _run(metrics, describe_texts(texts), reference_descriptors, DataDefinition(numerical_columns=columns),
                window, meta, tags)


def _embedding_report(reference_vectors: np.ndarray, current_vectors: np.ndarray, window: Window,
                      meta: dict[str, Any], tags: list[str]) -> Snapshot:
    from evidently import DataDefinition
    from evidently.metrics import EmbeddingsDrift
    from evidently.metrics.embeddings import ModelDriftMethod
    from evidently.tests import lte

    columns = [f"e{i:03d}" for i in range(reference_vectors.shape[1])]
    metric = EmbeddingsDrift(embeddings_name=EMBEDDINGS_NAME,
                             drift_method=ModelDriftMethod(threshold=EMBEDDING_AUC_THRESHOLD),
                             tests=[lte(EMBEDDING_AUC_THRESHOLD)])
    definition = DataDefinition(numerical_columns=columns, embeddings={EMBEDDINGS_NAME: columns})
    # The metric draws its widget with t-SNE, whose OpenMP threads spin-wait when the cores are busy (the job
    # shares its machine with the service): one thread is much faster then (bench/RESULTS.md, drift section).
    with threadpool_limits(limits=1, user_api="openmp"):
        return _run([metric], pd.DataFrame(current_vectors, columns=columns),
                    pd.DataFrame(reference_vectors, columns=columns), definition, window, meta, tags)


def _sample(texts: list[str], size: int, seed: int) -> list[str]:
    if len(texts) <= size:
        return texts
    chosen = np.random.default_rng(seed).choice(len(texts), size=size, replace=False)
    return [texts[i] for i in sorted(chosen)]


Results = list[tuple[dict[str, Any], Any]]  # (metric params, metric result) of every metric of a report


def _results(snapshot: Snapshot) -> Results:
    return [(result.metric_value_location.metric.params, result) for result in snapshot.metric_results.values()
            if result.metric_value_location is not None]


def _failed(result: Any) -> bool:
    from evidently.legacy.tests.base_test import TestStatus

    return any(test.status == TestStatus.FAIL for test in result.tests)


def _value_drift(results: Results, column: str) -> tuple[dict[str, Any], Any] | None:
    for params, result in results:
        if params.get("type", "").endswith(":ValueDrift") and params.get("column") == column:
            return params, result
    return None


def _checks(results: Results, result: DriftResult, min_rows: int) -> list[Check]:
    checks: list[Check] = []
    for column, name, votes in ((LABEL_COLUMN, "predicted label share", True),
                                (SCORE_COLUMN, "prediction score", False)):
        found = _value_drift(results, column)
        if found:
            params, value = found
            checks.append(Check(name=name, drifted=_failed(value), score=float(value.value),
                                threshold=_float(params.get("threshold")), method=str(params.get("method", "")),
                                votes=votes, detail=f"{result.rows} rows"
                                + ("" if votes else "; informational: reference scores are on training texts")))
    skipped = (f"not evaluated: {result.text_rows} of {result.rows} rows carry usable text "
               f"({result.redacted_rows} redacted by hash/drop or empty), {min_rows} needed")
    descriptors = next(((p, r) for p, r in results if p.get("type", "").endswith(":DriftedColumnsCount")),
                       None)
    if descriptors:
        _, count = descriptors
        drifted_columns = [c for c in FEATURE_COLUMNS if (found := _value_drift(results, c)) and _failed(found[1])]
        checks.append(Check(name="text descriptors", drifted=_failed(count), score=float(count.share.value),
                            threshold=DESCRIPTOR_DRIFT_SHARE, method="share of drifted descriptors",
                            detail=", ".join(drifted_columns) or "none drifted"))
    else:
        checks.append(Check(name="text descriptors", drifted=None, detail=skipped))
    embeddings = next(((p, r) for p, r in results if p.get("type", "").endswith(":EmbeddingsDrift")), None)
    if embeddings:
        _, value = embeddings
        checks.append(Check(name="text embeddings", drifted=_failed(value), score=float(value.value),
                            threshold=EMBEDDING_AUC_THRESHOLD, method="domain classifier ROC AUC",
                            detail=f"{result.embedded_rows} sampled rows vs reference, MiniLM"))
    else:
        checks.append(Check(name="text embeddings", drifted=None, detail=skipped))
    return checks


def _drifted(results: Results, checks: list[Check]) -> list[str]:
    names = [check.name for check in checks if check.drifted]
    names += [f"descriptor:{c}" for c in FEATURE_COLUMNS if (found := _value_drift(results, c)) and _failed(found[1])]
    return names


def _float(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _message(result: DriftResult) -> str:
    subject = f"{result.model_name} v{result.model_version}, {result.rows} rows"
    skipped = [c.name for c in result.checks if c.drifted is None]
    partial = f" ({', '.join(skipped)} not evaluated: text redacted)" if skipped else ""
    if result.status is DriftStatus.DRIFT:
        voted = [c.name for c in result.checks if c.drifted and c.votes]
        return f"drift detected in {subject}: {', '.join(voted)}{partial}"
    return f"no drift in {subject}{partial}"


def _alert(result: DriftResult) -> Alert:
    details: dict[str, float | int | str] = {"rows": result.rows, "text_rows": result.text_rows}
    for check in result.checks:
        if check.score is not None:
            details[check.name] = round(check.score, 4)
    return Alert(kind="drift", summary=result.message, drifted=result.drifted, window_start=result.window_start,
                 window_end=result.window_end, model_name=result.model_name, model_version=result.model_version,
                 project=result.project, snapshot_id=result.snapshot_id, report=result.report, details=details)
