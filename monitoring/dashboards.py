"""The Evidently UI dashboards of the projects the jobs write to: ``sentiment``, ``rag``, and one per model of
VIGIL_MODELS (named after the model, :mod:`monitoring.model_drift`).

Panels plot the metrics the jobs put in their snapshots, one point per job run. Panel and tab ids are derived from
their titles, so running ``vigil monitor dashboards`` again rewrites the same panels instead of adding copies.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from monitoring import drift, model_drift, tokens
from monitoring.quality_watch import AGREEMENT_TAG, QUALITY_TAG
from monitoring.workspace import ensure_project, open_workspace
from vigil.settings import Settings
from vigil.text_features import FEATURE_COLUMNS

if TYPE_CHECKING:
    from evidently.sdk.models import DashboardModel, DashboardPanelPlot, PanelMetric

_NAMESPACE = uuid.UUID("5b0f3c2e-8f7a-4c1e-9d59-7a1c0e4b6f10")
_METRIC = "evidently:metric_v2:"


@dataclass(frozen=True)
class DashboardInfo:
    project: str
    project_id: str
    tabs: list[str]
    panels: list[str]


def _id(*parts: str) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, "/".join(parts))


def _series(metric: str, legend: str, tags: list[str] | None = None, **labels: str) -> PanelMetric:
    from evidently.sdk.models import PanelMetric

    return PanelMetric(legend=legend, metric=_METRIC + metric, metric_labels=labels, tags=tags or [])


def quality_panels(project: str, served: str, shadow: str, task: str) -> list[DashboardPanelPlot]:
    """Live quality from labelled requests (`vigil monitor quality`): the served and the shadow version over time,
    and how often the shadow agreed with the served answer. Series select the quality snapshots by their tags."""
    tagged = (QUALITY_TAG, served), (QUALITY_TAG, shadow)
    if task == "regression":
        errors = [_series(metric, f"{role} {metric}", [tag, role]) for metric in ("RMSE", "MAE")
                  for tag, role in tagged]
        return [_panel(project, "Live error per role", "line", errors, size="full",
                       subtitle="on requests whose true value came back (POST /feedback)")]
    return [
        _panel(project, "Live accuracy per role", "line",
               [_series("Accuracy", f"{role} accuracy", [tag, role]) for tag, role in tagged], size="full",
               subtitle=f"on requests whose true label came back (POST /feedback); {served}: the served version, "
                        f"{shadow}: its shadow"),
        _panel(project, "Shadow agreement with the served answer", "line",
               [_series("Accuracy", "agreement", [AGREEMENT_TAG, shadow])],
               subtitle="share of labelled requests where the shadow answered what the served version answered"),
    ]


def _panel(project: str, title: str, kind: str, values: list[PanelMetric], *, subtitle: str = "",
           size: str = "half", aggregation: str = "last") -> DashboardPanelPlot:
    from evidently.sdk.models import DashboardPanelPlot

    params: dict[str, object] = {"plot_type": kind}
    if kind == "counter":
        params["aggregation"] = aggregation
    if kind == "bar":
        params["is_stacked"] = False
    return DashboardPanelPlot(id=_id(project, title), title=title, subtitle=subtitle or None, size=size,
                              values=values, plot_params=params)


def sentiment_dashboard(labels: tuple[str, ...] = ("negative", "positive"),
                        quality: list[DashboardPanelPlot] | None = None) -> DashboardModel:
    """Drift of the served sentiment model: descriptors, embeddings, predictions."""
    p = drift.PROJECT
    label_column, score_column = drift.LABEL_COLUMN, drift.SCORE_COLUMN
    overview = [
        _panel(p, "Rows in the last window", "counter", [_series("RowCount", "rows")]),
        _panel(p, "Share of drifted descriptors (last window)", "counter",
               [_series("DriftedColumnsCount", "share", value_type="share")]),
        _panel(p, "Drift share over time", "line", [_series("DriftedColumnsCount", "share of drifted descriptors",
                                                            value_type="share")],
               subtitle=f"drift when ≥ {drift.DESCRIPTOR_DRIFT_SHARE:.0%} of the text descriptors drift",
               size="full"),
        _panel(p, "Embedding drift score", "line", [_series("EmbeddingsDrift", "ROC AUC")],
               subtitle=f"domain classifier on MiniLM embeddings; drift above {drift.EMBEDDING_AUC_THRESHOLD}"),
        _panel(p, "Drifted descriptors", "bar", [_series("DriftedColumnsCount", "drifted descriptors",
                                                         value_type="count")],
               subtitle=f"of {len(FEATURE_COLUMNS)} text descriptors"),
        _panel(p, "Descriptor drift scores", "line",
               [_series("ValueDrift", column, column=column) for column in FEATURE_COLUMNS],
               subtitle="K-S p-value (< 0.05 = drift) up to 1000 rows, Wasserstein distance (> 0.1) above",
               size="full"),
    ]
    predictions = [
        _panel(p, "Prediction label share", "line",
               [_series("CategoryCount", label, column=label_column, categories=str([label]), value_type="share")
                for label in labels], size="full"),
        _panel(p, "Prediction drift scores", "line",
               [_series("ValueDrift", "label", column=label_column),
                _series("ValueDrift", "score", column=score_column)],
               subtitle=f"label share: PSI (> {drift.LABEL_PSI_THRESHOLD} = drift); score: informational"),
        _panel(p, "Mean prediction score", "line", [_series("MeanValue", "mean score", column=score_column)]),
        _panel(p, "Mean text length", "line",
               [_series("MeanValue", "characters", column="text_length"),
                _series("MeanValue", "words", column="word_count")]),
    ]
    return _one_tab(p, "Sentiment drift", overview + predictions + (quality or []))


def model_dashboard(name: str, quality: list[DashboardPanelPlot] | None = None) -> DashboardModel:
    """Drift of one served pyfunc model: the share of drifted input columns, each column's score, the prediction.

    Series select by metric and labels only, so the panels fit any model's columns without asking MLflow for its
    signature: a series without a ``column`` label plots every column's.
    """
    column = model_drift.PREDICTION_COLUMN
    panels = [
        _panel(name, "Rows in the last window", "counter", [_series("RowCount", "rows")]),
        _panel(name, "Share of drifted input columns", "line",
               [_series("DriftedColumnsCount", "share", value_type="share")],
               subtitle=f"drift when ≥ {model_drift.COLUMN_DRIFT_SHARE:.0%} of the input columns drift"),
        _panel(name, "Prediction drift score (last window)", "counter",
               [_series("ValueDrift", "prediction", column=column)]),
        _panel(name, "Prediction drift over time", "line", [_series("ValueDrift", "prediction", column=column)],
               subtitle=f"classifier: label share PSI (> {model_drift.LABEL_PSI_THRESHOLD} = drift); regressor: "
                        "Wasserstein distance in reference standard deviations", size="full"),
        _panel(name, "Input column drift scores", "line", [_series("ValueDrift", "drift score")],
               subtitle="numeric: Wasserstein (normed); categorical: Jensen-Shannon; each against a threshold that "
                        f"follows the window's size; drift when ≥ {model_drift.COLUMN_DRIFT_SHARE:.0%} of the "
                        "columns drift", size="full"),
        _panel(name, "Mean prediction (regressor)", "line", [_series("MeanValue", "mean", column=column)]),
        _panel(name, "Predicted label share (classifier)", "line",
               [_series("CategoryCount", "share", column=column, value_type="share")]),
    ]
    return _one_tab(name, f"{name} drift", panels + (quality or []))


def rag_dashboard() -> DashboardModel:
    """Token usage, cost and retrieval health of the RAG pipeline."""
    p = tokens.PROJECT
    top1 = tokens.TOP1_COLUMN
    usage = [
        _panel(p, "Queries (last window)", "counter", [_series("RowCount", "queries")]),
        _panel(p, "Tokens (last window)", "counter", [_series("SumValue", "tokens", column="total_tokens")]),
        _panel(p, "Tokens per day", "bar",
               [_series("SumValue", "prompt", column="prompt_tokens"),
                _series("SumValue", "completion", column="completion_tokens"),
                _series("SumValue", "total", column="total_tokens")],
               subtitle="one bar per job run; with the default --last 24h that is tokens per day", size="full"),
        _panel(p, "Tokens per query p95", "line",
               [_series("QuantileValue", "p95", column="total_tokens", quantile="0.95"),
                _series("QuantileValue", "p50", column="total_tokens", quantile="0.5")]),
        _panel(p, "Estimated cost", "line", [_series("SumValue", "cost", column=tokens.COST_COLUMN)],
               subtitle="tokens × VIGIL_TOKEN_PRICES_PER_1K"),
    ]
    retrieval = [
        _panel(p, "Top-1 retrieval score", "line",
               [_series("MeanValue", "mean", column=top1), _series("QuantileValue", "median", column=top1,
                                                                   quantile="0.5")], size="full"),
        _panel(p, "Top-1 score drift vs baseline", "line", [_series("ValueDrift", "drift score", column=top1)],
               subtitle="against the stored baseline window", size="full"),
    ]
    return _one_tab(p, "RAG usage and retrieval", usage + retrieval)


def _one_tab(project: str, title: str, panels: list[DashboardPanelPlot]) -> DashboardModel:
    # One tab: the Evidently OSS UI refuses dashboards with several ("not supported in Evidently OSS").
    from evidently.sdk.models import DashboardModel, DashboardTabModel

    tab = DashboardTabModel(id=_id(project, "tab", title), title=title, panels=[panel.id for panel in panels])
    return DashboardModel(tabs=[tab], panels=panels)


def ensure_dashboards(settings: Settings) -> list[DashboardInfo]:
    """Create the projects when missing and (re)write their dashboards; idempotent."""
    workspace = open_workspace(settings)
    made: list[DashboardInfo] = []
    roles = settings.serve_alias, settings.shadow_alias
    dashboards = [(drift.PROJECT, sentiment_dashboard(quality=quality_panels(drift.PROJECT, *roles,
                                                                             "classification"))),
                  (tokens.PROJECT, rag_dashboard())]
    # A served model's task is not known here: its error and accuracy panels both, the empty ones stay blank.
    dashboards += [(name, model_dashboard(name, quality=[
        *quality_panels(name, alias, settings.shadow_alias, "classification"),
        *quality_panels(name, alias, settings.shadow_alias, "regression")]))
        for name, alias in settings.served_models]
    for name, model in dashboards:
        project = ensure_project(workspace, name)
        workspace.save_dashboard(project.id, model)
        made.append(DashboardInfo(name, str(project.id), [str(t.title) for t in model.tabs],
                                  [panel.title for panel in model.panels]))
    return made
