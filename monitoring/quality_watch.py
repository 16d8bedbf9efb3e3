"""The watch on live quality: the served version's live figures against the policy's ``[live.watch]``, a webhook
alert when they break it, and one snapshot per role in the model's Evidently project for the dashboard.

``vigil monitor quality`` measures (:mod:`monitoring.quality`), then judges here: a served version with at least
``watch_min_labelled`` labelled requests breaks the watch when a live figure is below its ``minimum`` (above its
``maximum``), or worse than the version's offline figure by more than ``max_drop``. The offline figure is the
version's newest evaluation run in experiment `evaluations` that measured the metric, else its training run's
``test_<metric>``. The exit code follows the monitoring jobs': 1 alert, 0 clear, 2 no verdict.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pandas as pd
from pydantic import BaseModel

from monitoring.alerts import Alert
from monitoring.quality import QualityReport, VersionQuality
from monitoring.window import Window
from monitoring.workspace import SavedSnapshot, save_snapshot
from telemetry import feedback
from telemetry.records import create_engine
from vigil.policy import HIGHER_IS_BETTER, Policy
from vigil.settings import Settings

if TYPE_CHECKING:
    from evidently.core.report import Snapshot
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

# The snapshots' tags: the dashboard's series select by them (a drift panel's series carry none of these metrics).
QUALITY_TAG = "live-quality"
AGREEMENT_TAG = "agreement"

OfflineFigure = Callable[[str, str], "tuple[float, str] | None"]  # (version, metric) -> (value, where it came from)


class Breach(BaseModel):
    version: str
    metric: str
    live: float
    reason: str


class WatchVerdict(BaseModel):
    breaches: list[Breach]
    skipped: list[str]  # what was not judged, and why
    judged: int  # figures compared with a rule


def judge_watch(report: QualityReport, policy: Policy, served_role: str, offline: OfflineFigure) -> WatchVerdict:
    """The breaches of the served version(s) in ``report``, what was not judged and why, and how much was."""
    breaches: list[Breach] = []
    skipped: list[str] = []
    judged = 0
    if report.task is None:
        return WatchVerdict(breaches=[], skipped=["no labelled request yet"], judged=0)
    rules = policy.watch_rules(report.task)
    if not rules:
        return WatchVerdict(breaches=[], skipped=[f"no [live.watch] rule for a {report.task} model"], judged=0)
    needed = policy.live.watch_min_labelled
    for entry in report.versions:
        if entry.role != served_role:
            continue
        if entry.labelled < needed:
            skipped.append(f"v{entry.version}: {entry.labelled} labelled request(s), the watch needs {needed}")
            continue
        for metric, rule in rules.items():
            live = getattr(entry, metric, None)
            if live is None:
                skipped.append(f"v{entry.version}: no live {metric}")
                continue
            breaches += _breaches(entry, metric, float(live), rule.minimum, rule.maximum, rule.max_drop, offline,
                                  skipped)
            judged += 1
    return WatchVerdict(breaches=breaches, skipped=skipped, judged=judged)


def _breaches(entry: VersionQuality, metric: str, live: float, minimum: float | None, maximum: float | None,
              max_drop: float | None, offline: OfflineFigure, skipped: list[str]) -> list[Breach]:
    found = []
    shown = f"v{entry.version} live {metric} {live:.4f} on {entry.labelled} labelled requests"
    if minimum is not None and live < minimum:
        found.append(Breach(version=entry.version, metric=metric, live=live,
                            reason=f"{shown} is below the minimum {minimum:.4f}"))
    if maximum is not None and live > maximum:
        found.append(Breach(version=entry.version, metric=metric, live=live,
                            reason=f"{shown} is above the maximum {maximum:.4f}"))
    if max_drop is not None:
        figure = offline(entry.version, metric)
        if figure is None:
            skipped.append(f"v{entry.version}: no offline {metric} to compare with")
        else:
            value, source = figure
            drop = (value - live) if HIGHER_IS_BETTER[metric] else (live - value)
            if drop > max_drop:
                found.append(Breach(version=entry.version, metric=metric, live=live, reason=(
                    f"{shown} is {drop:.4f} worse than offline ({value:.4f}, {source}); the policy allows "
                    f"{max_drop:.4f}")))
    return found


def offline_figures(client: MlflowClient, name: str) -> OfflineFigure:
    """(version, metric) -> the version's offline figure and where it came from, looked up once per pair."""
    known: dict[tuple[str, str], tuple[float, str] | None] = {}

    def figure(version: str, metric: str) -> tuple[float, str] | None:
        if (version, metric) not in known:
            known[(version, metric)] = _offline_figure(client, name, version, metric)
        return known[(version, metric)]

    return figure


def _offline_figure(client: MlflowClient, name: str, version: str, metric: str) -> tuple[float, str] | None:
    experiment = client.get_experiment_by_name("evaluations")
    if experiment is not None:
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string=(f"tags.`vigil.model` = '{name}' AND tags.`vigil.model_version` = '{version}' "
                           "AND tags.`vigil.eval.kind` IN ('model', 'sentiment')"),
            order_by=["attributes.start_time DESC"], max_results=20)
        for run in runs:
            if metric in run.data.metrics and run.data.tags.get("vigil.eval.source") != "live":
                return run.data.metrics[metric], f"evaluation run {run.info.run_id}"
    run_id = client.get_model_version(name, version).run_id
    if run_id:
        metrics = client.get_run(run_id).data.metrics
        if f"test_{metric}" in metrics:
            return metrics[f"test_{metric}"], f"training run {run_id}, test split"
    return None


def quality_alert(model: str, report: QualityReport, breaches: list[Breach], project: str,
                  saved: SavedSnapshot | None) -> Alert:
    return Alert(kind="quality", summary=f"{model}: live quality broke the policy — {breaches[0].reason}",
                 drifted=sorted({breach.metric for breach in breaches}),
                 window_start=pd.Timestamp(report.window_start).to_pydatetime(),
                 window_end=pd.Timestamp(report.window_end).to_pydatetime(), model_name=model,
                 model_version=breaches[0].version, project=project,
                 snapshot_id=saved.snapshot_id if saved else None,
                 details={f"v{b.version} {b.metric}": round(b.live, 4) for b in breaches})


# --- the snapshots ---------------------------------------------------------------------------------------------


def publish_quality(settings: Settings, model: str, logged_name: str, project: str, report: QualityReport,
                    window: Window) -> list[SavedSnapshot]:
    """One snapshot per (version, role) with labelled requests — accuracy and F1 by label, or MAE and RMSE — and
    one of each shadow version's agreement with the served answers, into ``project``."""
    if report.task is None:
        return []
    engine = create_engine(settings.inference_log_sqlalchemy_url)
    try:
        feedback.prepare(engine)
        rows = feedback.labelled_rows(engine, model_name=logged_name, since=window.since, until=window.until,
                                      shadow=None)
    finally:
        engine.dispose()
    if rows.empty:
        return []
    rows = rows.assign(prediction=[feedback.logged_prediction(row) for _, row in rows.iterrows()])
    shadow = rows["shadow"].fillna(False).astype(bool) if "shadow" in rows else pd.Series(False, index=rows.index)
    rows = rows.assign(is_shadow=shadow, place=rows.groupby([rows["request_id"], shadow]).cumcount())
    saved = []
    when = window.until.replace(tzinfo=None)
    served = rows[~rows["is_shadow"]]
    for (version, is_shadow), part in rows.groupby(["model_version", "is_shadow"], sort=False):
        role = str(part["role"].dropna().iloc[0]) if "role" in part and part["role"].notna().any() else (
            "shadow" if is_shadow else settings.serve_alias)
        meta = {"model": model, "version": str(version), "role": role}
        labelled = part[part["true_label"].notna()]
        if not labelled.empty:
            snapshot = _figures(report.task, labelled["true_label"], labelled["prediction"], when, meta,
                                [QUALITY_TAG, role])
            saved.append(save_snapshot(settings, project, snapshot))
        if is_shadow:
            paired = part.merge(served[["request_id", "place", "prediction"]], on=["request_id", "place"],
                                suffixes=("", "_served"))
            if not paired.empty and report.task == "classification":
                snapshot = _figures("classification", paired["prediction_served"], paired["prediction"], when,
                                    meta, [AGREEMENT_TAG, role])
                saved.append(save_snapshot(settings, project, snapshot))
    return saved


def _figures(task: str, truth: pd.Series, predicted: pd.Series, when: Any, meta: dict[str, str],
             tags: list[str]) -> Snapshot:
    from evidently import BinaryClassification, DataDefinition, Dataset, MulticlassClassification, Regression, Report
    from evidently.metrics import MAE, RMSE, Accuracy, F1ByLabel

    if task == "regression":
        frame = pd.DataFrame({"truth": pd.to_numeric(truth).to_numpy(), "prediction": pd.to_numeric(predicted)
                              .to_numpy()})
        definition = DataDefinition(numerical_columns=["truth", "prediction"],
                                    regression=[Regression(target="truth", prediction="prediction")])
        metrics: list[Any] = [MAE(), RMSE()]
    else:
        frame = pd.DataFrame({"truth": truth.astype(str).to_numpy(), "prediction": predicted.astype(str).to_numpy()})
        labels = sorted(set(frame["truth"]) | set(frame["prediction"]))
        # Evidently reads two classes as a binary task, which needs its positive label named.
        kind = (BinaryClassification(target="truth", prediction_labels="prediction", pos_label=labels[-1])
                if len(labels) == 2 else MulticlassClassification(target="truth", prediction_labels="prediction"))
        definition = DataDefinition(categorical_columns=["truth", "prediction"], classification=[kind])
        metrics = [Accuracy(), F1ByLabel()] if len(labels) > 1 else [Accuracy()]
    return Report(metrics).run(Dataset.from_pandas(frame, data_definition=definition), None, timestamp=when,
                               metadata=meta, tags=tags)
