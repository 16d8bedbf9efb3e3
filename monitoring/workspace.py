"""The Evidently workspace the jobs write to: local (``$VIGIL_HOME/evidently``) or a remote Evidently UI by URL."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from vigil.credentials import ensure_private_dir, mask_url
from vigil.errors import VigilError
from vigil.settings import Settings

if TYPE_CHECKING:
    from evidently.core.report import Snapshot
    from evidently.ui.workspace import Project, WorkspaceBase

logger = logging.getLogger(__name__)

# When a job writes its standalone HTML report: every run, only runs that alert (drift, budget), or never.
HtmlPolicy = Literal["always", "on_alert", "never"]

PROJECT_DESCRIPTIONS = {
    "sentiment": "Vigil: drift of the served sentiment model's inputs (descriptors, embeddings) and predictions.",
    "rag": "Vigil: RAG token usage, cost against the daily budget, and retrieval health (top-1 score).",
}


@dataclass(frozen=True)
class SavedSnapshot:
    project: str
    snapshot_id: str
    location: str  # a file path (local workspace) or a URL (remote UI)
    report: str | None = None  # the standalone HTML report, when one was written beside it


def open_workspace(settings: Settings) -> WorkspaceBase:
    """The remote Evidently UI when ``VIGIL_EVIDENTLY_URL`` is set, else the local workspace directory."""
    if settings.evidently_url:
        from evidently.ui.workspace import RemoteWorkspace

        try:
            return RemoteWorkspace(settings.evidently_url.rstrip("/"))
        except Exception as error:  # requests' and evidently's errors alike: the message names the URL
            raise VigilError(f"Evidently UI not reachable at {mask_url(settings.evidently_url)}: {error}") from None
    from evidently.ui.workspace import Workspace

    path = settings.evidently_workspace_path
    ensure_private_dir(path)
    return Workspace(str(path.resolve()))


def ensure_project(workspace: WorkspaceBase, name: str) -> Project:
    """The project called ``name``, created when missing (names are unique in Vigil's workspaces)."""
    found = workspace.search_project(name)
    if found:
        return found[0]
    project = workspace.create_project(name, description=PROJECT_DESCRIPTIONS.get(name))
    logger.info("created Evidently project %s (%s)", name, project.id)
    return project


def combine(parts: list[Snapshot], metadata: dict[str, str] | None = None) -> Snapshot:
    """One snapshot holding the metrics, widgets and tests of several reports run on different datasets.

    The drift job compares three datasets (every row's prediction, the text rows' descriptors, a sample's
    embeddings); one snapshot per job run keeps the project's history one point per window. ``metadata`` is added
    to the first part's (the verdict, known only once every part ran).
    """
    from evidently.core.metric_types import metric_tests_widget
    from evidently.core.report import Snapshot, metric_tests_stats

    models = [part.to_snapshot_model() for part in parts]
    merged = models[0].copy(deep=True)
    merged.metadata = {**merged.metadata, **(metadata or {})}
    for model in models[1:]:
        merged.metric_results.update(model.metric_results)
        merged.top_level_metrics.extend(model.top_level_metrics)
        merged.widgets.extend(model.widgets)
    tests = [test for metric in merged.top_level_metrics for test in merged.metric_results[metric].tests]
    merged.tests_widgets = [metric_tests_stats(tests), metric_tests_widget(tests)] if tests else []
    return Snapshot.load_model(merged)


def save_snapshot(settings: Settings, project_name: str, snapshot: Snapshot) -> SavedSnapshot:
    """Add ``snapshot`` to ``project_name`` (created when missing) and say where it went."""
    workspace = open_workspace(settings)
    project = ensure_project(workspace, project_name)
    reference = workspace.add_run(project.id, snapshot)
    location = str(reference.url)
    if settings.evidently_url and not location.startswith("http"):
        location = f"{settings.evidently_url.rstrip('/')}/projects/{project.id}/reports/{reference.id}"
    if not settings.evidently_url:
        _tell_local_ui(settings, str(project.id))
    return SavedSnapshot(project_name, str(reference.id), location)


def _tell_local_ui(settings: Settings, project_id: str) -> None:
    """Ask a running `vigil monitor ui` to re-read the project's snapshots.

    A local `evidently ui` reads the workspace once at start; without this a schedule's new snapshots would not
    appear until someone pressed "reload" or restarted it. Best effort: no UI running is the common case.
    """
    import httpx

    url = f"http://127.0.0.1:{settings.evidently_ui_port}/api/projects/{project_id}/reload"
    try:
        httpx.get(url, timeout=1.0)
    except httpx.HTTPError:
        logger.debug("no Evidently UI answered at %s", url)


def report_path(settings: Settings, name: str) -> Path:
    """Where an HTML report called ``name`` goes: ``$VIGIL_HOME/reports``."""
    directory = settings.home / "reports"
    ensure_private_dir(directory)
    return (directory / name).resolve()
