"""Evidently UI dashboards in a real local workspace, and the Grafana dashboard's metric names."""

from __future__ import annotations

import json
import re
from pathlib import Path

from monitoring.dashboards import ensure_dashboards
from tests.unit.test_monitor_tokens import settings_for

GRAFANA = Path(__file__).resolve().parents[2] / "monitoring" / "dashboards" / "grafana-vigil.json"


def test_projects_and_panels_are_created_once_and_updated_in_place(tmp_path: Path) -> None:
    from evidently.ui.workspace import Workspace

    settings = settings_for(tmp_path)
    first = ensure_dashboards(settings)
    second = ensure_dashboards(settings)

    assert [(d.project, d.project_id) for d in first] == [(d.project, d.project_id) for d in second]
    workspace = Workspace(str(settings.evidently_workspace_path))
    assert sorted(p.name for p in workspace.list_projects()) == ["rag", "sentiment"]
    titles: set[str] = set()
    for info in second:
        model = workspace.get_dashboard(info.project_id)
        ids = [panel.id for panel in model.panels]
        assert len(ids) == len(set(ids)) == len(info.panels)  # rewritten, not appended
        assert len(model.tabs) == 1 and set(model.tabs[0].panels) == set(ids)  # OSS UI: one tab only
        titles |= {panel.title for panel in model.panels}
    required = {"Drift share over time", "Drifted descriptors", "Embedding drift score", "Prediction label share",
                "Tokens per day", "Tokens per query p95", "Top-1 retrieval score"}
    assert required <= titles


def test_grafana_dashboard_queries_the_service_metrics() -> None:
    dashboard = json.loads(GRAFANA.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    text = "\n".join(exprs)
    for name in ("vigil_predictions_total", "vigil_batch_size_bucket", "vigil_requests_rejected_total",
                 "vigil_rag_prompt_tokens_total", "vigil_rag_completion_tokens_total",
                 "vigil_rag_retrieval_seconds_bucket", "vigil_model_swaps_total", "vigil_inference_log_drops_total",
                 "bentoml_service_request_duration_seconds_bucket", "bentoml_service_request_total"):
        assert name in text, name
    for label in ("model", "version", "label", "reason", "generator"):
        assert f"{label}" in text
    # Every series the dashboard reads is one Vigil or BentoML exports; a typo would show an empty panel.
    names = set(re.findall(r"\b((?:vigil|bentoml)_[a-z_]+)", text))
    known = re.compile(r"^(vigil_(predictions|model_swaps|model_loads|requests_rejected|rag_prompt_tokens|"
                       r"rag_completion_tokens|inference_log_drops|inference_log_writes|span_export_failures|"
                       r"spans_dropped)_total|vigil_(batch_size|rag_retrieval_seconds)_(bucket|sum|count)|"
                       r"vigil_inference_log_queue_depth|bentoml_service_(request_total|request_in_progress|"
                       r"last_request_timestamp_seconds|(request_duration_seconds|adaptive_batch_size)_bucket))$")
    assert all(known.match(name) for name in names), sorted(n for n in names if not known.match(n))
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"] == "vigil-overview"
