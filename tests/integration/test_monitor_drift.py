"""`vigil monitor drift` end to end: a real model version, real inference-log rows, real Evidently, real UI.

A `sentiment-drift` version is registered on the session's MLflow server (its own registered name, so the aliases
other tests move on `sentiment` are left alone): a copy of the session's trained `sentiment` v1, its run, files,
drift reference and digest, registered as training registers a new version (a model trained here would show
nothing more, at the cost of a training in every CI run). Its predictions over held-out sentences become
inference-log rows in three windows: unseen imdb reviews, held-out amazon/yelp reviews, and too few rows.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from evaluations.replay import held_out
from monitoring.workspace import save_snapshot
from telemetry import records
from tests.conftest import CHROMIUM, VIGIL_BIN, free_port, wait_until
from tests.integration.conftest import VigilEnv
from tests.unit.test_monitor_alerts import WebhookReceiver
from tests.unit.test_monitor_tokens import settings_for
from training.data import SplitParams

if TYPE_CHECKING:
    from evidently.sdk.models import DashboardModel

MODEL = "sentiment-drift"
ROWS = 150


@dataclass(frozen=True)
class DriftSetup:
    env: VigilEnv
    version: str
    extra_env: dict[str, str]
    workspace: Path
    webhook: WebhookReceiver
    windows: dict[str, tuple[str, str]]  # name → (--since, --until)

    def drift(self, window: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        since, until = self.windows[window]
        return self.env.run("monitor", "drift", "--model", "sentiment", "--since", since, "--until", until,
                            "--min-rows", "100", *args, check=False, extra_env={**self.extra_env, **env})


def said(result: subprocess.CompletedProcess[str]) -> str:
    """The command's output with rich's line wrapping undone."""
    return " ".join(result.stdout.split())


def _rows(texts: list[str], predictions: pd.DataFrame, start: datetime, version: str) -> list[dict[str, Any]]:
    return [records.InferenceRecord(
        timestamp=start + timedelta(seconds=10 * i), request_id=f"it-{start:%H}-{i}", trace_id="",
        endpoint="/predict", protocol="rest", kind="sentiment", model_name=MODEL, model_version=version,
        input_text=text, label=str(predictions["label"].iloc[i]), score=float(predictions["score"].iloc[i]),
        latency_ms=4.0,
    ).model_dump() for i, text in enumerate(texts)]


@pytest.fixture(scope="module")
def setup(vigil_env: VigilEnv, trained_twice: tuple[str, str],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[DriftSetup]:
    from vigil import registry

    client = MlflowClient(vigil_env.tracking_uri, vigil_env.tracking_uri)
    copy = client.copy_model_version(f"models:/sentiment/{trained_twice[0]}", MODEL)
    registry.register_initial_aliases(client, MODEL, str(copy.version), reason="a copy of the trained sentiment")
    served = client.get_model_version_by_alias(MODEL, "champion")
    params = client.get_run(str(served.run_id)).data.params
    split = SplitParams.from_run_params(params, default_seed=42)

    mlflow.set_tracking_uri(vigil_env.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}/{served.version}")
    in_domain = pd.concat([held_out("amazon", split), held_out("yelp", split)]).sample(ROWS, random_state=1)
    imdb = held_out("imdb", split).sample(ROWS, random_state=1)
    start = (datetime.now(UTC) - timedelta(hours=6)).replace(minute=0, second=0, microsecond=0)
    starts = {"imdb": start, "in_domain": start + timedelta(hours=1), "few": start + timedelta(hours=2)}
    texts = {"imdb": imdb["text"].tolist(), "in_domain": in_domain["text"].tolist(),
             "few": in_domain["text"].tolist()[:30]}

    base = tmp_path_factory.mktemp("monitor-drift")
    log_url = f"sqlite:///{base / 'inference_log.db'}"
    engine = records.create_engine(log_url)
    with engine.begin() as connection:
        for name, window_texts in texts.items():
            predictions = model.predict(pd.DataFrame({"text": window_texts}))
            connection.execute(records.inference_log.insert(),
                               _rows(window_texts, predictions, starts[name], str(served.version)))
    engine.dispose()

    with WebhookReceiver() as webhook:
        yield DriftSetup(
            env=vigil_env, version=str(served.version), workspace=base / "evidently", webhook=webhook,
            extra_env={"VIGIL_SENTIMENT_MODEL_NAME": MODEL, "VIGIL_INFERENCE_LOG_URL": log_url,
                       "VIGIL_EVIDENTLY_WORKSPACE": str(base / "evidently"), "VIGIL_ALERT_WEBHOOK": webhook.url},
            windows={name: (at.isoformat(), (at + timedelta(hours=1)).isoformat()) for name, at in starts.items()},
        )


@pytest.fixture(scope="module")
def imdb_run(setup: DriftSetup) -> subprocess.CompletedProcess[str]:
    return setup.drift("imdb")


def test_unseen_domain_is_drift_with_snapshot_report_and_alert(
    setup: DriftSetup, imdb_run: subprocess.CompletedProcess[str]
) -> None:
    from evidently.ui.workspace import Workspace

    assert imdb_run.returncode == 1, imdb_run.stdout + imdb_run.stderr
    assert "drift detected" in said(imdb_run) and "text embeddings" in said(imdb_run)

    [alert] = [body for body in setup.webhook.bodies if body["window_start"].startswith(setup.windows["imdb"][0][:13])]
    assert alert["kind"] == "drift" and alert["model_name"] == MODEL and alert["model_version"] == setup.version
    assert "text embeddings" in alert["drifted"] and alert["details"]["rows"] == ROWS
    assert alert["report"] and Path(alert["report"]).read_text().count("<html") == 1

    workspace = Workspace(str(setup.workspace))
    [project] = workspace.search_project("sentiment")
    stored = workspace.get_run(project.id, alert["snapshot_id"])
    assert stored is not None
    assert stored.metadata["verdict"] == "drift" and stored.metadata["model_version"] == setup.version
    kinds = {r.metric_value_location.metric.params["type"].rsplit(":", 1)[-1] for r in stored.metric_results.values()}
    assert {"EmbeddingsDrift", "DriftedColumnsCount", "ValueDrift", "CategoryCount", "RowCount"} <= kinds
    [embedding] = [r for r in stored.metric_results.values()
                   if r.metric_value_location.metric.params["type"].endswith(":EmbeddingsDrift")]
    assert embedding.value > 0.8 and [t.status.value for t in embedding.tests] == ["FAIL"]
    # Only verdicts are tests: no "row count equals the reference's" noise in the report's test summary.
    tested = {t.metric_config.params["type"].rsplit(":", 1)[-1] for r in stored.metric_results.values()
              for t in r.tests}
    assert tested <= {"EmbeddingsDrift", "DriftedColumnsCount", "ValueDrift"}


def test_held_out_in_domain_traffic_is_no_drift_even_with_mlflow_down(
    setup: DriftSetup, imdb_run: subprocess.CompletedProcess[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from monitoring.drift import DriftStatus, run_drift
    from monitoring.window import resolve_window

    # In-process (the exit codes of the command are covered by the other tests). The imdb run cached this
    # version's reference, so a pinned version needs no MLflow.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # it wins over the field
    settings = settings_for(setup.env.home, sentiment_model_name=MODEL, drift_min_rows=100,
                            inference_log_url=setup.extra_env["VIGIL_INFERENCE_LOG_URL"],
                            evidently_workspace=str(setup.workspace), alert_webhook=setup.webhook.url)
    result = run_drift(settings, resolve_window(*setup.windows["in_domain"]), version=setup.version)

    assert result.status is DriftStatus.NO_DRIFT and result.exit_code == 0, result.message
    assert result.rows == result.text_rows == result.embedded_rows == ROWS
    assert all(check.drifted is False for check in result.checks if check.votes)
    assert result.alert_delivered is None and result.snapshot_id


def test_too_few_rows_gives_no_verdict(setup: DriftSetup) -> None:
    result = setup.drift("few")
    assert result.returncode == 2
    assert "too few rows" in said(result) and "30 of sentiment-drift" in said(result)


def test_serving_version_unknown_without_mlflow(setup: DriftSetup) -> None:
    result = setup.drift("imdb", MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 2
    assert "MLflow server not reachable" in said(result)


@pytest.fixture(scope="module")
def ui(setup: DriftSetup, imdb_run: subprocess.CompletedProcess[str],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`vigil monitor ui` on a free port; it execs `evidently ui`, so the pid we started is the server's."""
    port = free_port()
    log = tmp_path_factory.mktemp("evidently-ui") / "ui.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [VIGIL_BIN, "monitor", "ui", "--port", str(port)], env={**setup.env.env, **setup.extra_env},
            stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"

    def projects() -> list[dict[str, Any]] | None:
        if process.poll() is not None:
            raise AssertionError(f"evidently ui exited {process.returncode}: {log.read_text()[-2000:]}")
        try:
            answer = httpx.get(f"{base}/api/projects", timeout=2)
        except httpx.HTTPError:
            return None
        return answer.json() if answer.status_code == 200 else None

    try:
        wait_until(projects, timeout=90, interval=0.5, what="evidently ui")
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def _project(base: str, name: str) -> dict[str, Any]:
    [project] = [p for p in httpx.get(f"{base}/api/projects", timeout=5).json() if p["name"] == name]
    return project


def test_evidently_ui_serves_the_projects_dashboards_and_drift_points(ui: str, setup: DriftSetup) -> None:
    sentiment = _project(ui, "sentiment")
    _project(ui, "rag")  # `vigil monitor ui` sets up both projects' dashboards first
    dashboard = httpx.get(f"{ui}/api/v2/dashboards/{sentiment['id']}", timeout=5).json()
    panels = {panel["title"]: panel for panel in dashboard["panels"]}
    assert {"Drift share over time", "Embedding drift score", "Prediction label share"} <= set(panels)

    embedding = panels["Embedding drift score"]["values"][0]
    series = httpx.post(f"{ui}/api/v2/snapshots/{sentiment['id']}/data_series_batch", timeout=10, json={
        "series_filter": [{"tags": [], "metadata": {}, "metric": embedding["metric"],
                           "metric_labels": embedding["metric_labels"]}]}).json()
    values = [v for s in series["series"] for v in s["values"] if v is not None]
    assert values and max(values) > 0.8  # the imdb window's domain-classifier AUC
    snapshots = httpx.get(f"{ui}/api/projects/{sentiment['id']}/snapshots", timeout=5).json()
    assert any(s["metadata"].get("verdict") == "drift" for s in snapshots)


def test_a_running_ui_sees_new_snapshots_without_restart(ui: str, setup: DriftSetup) -> None:
    from evidently import Report
    from evidently.metrics import RowCount

    sentiment = _project(ui, "sentiment")

    def count() -> int:
        return len(httpx.get(f"{ui}/api/projects/{sentiment['id']}/snapshots", timeout=5).json())

    before = count()
    settings = settings_for(setup.env.home, evidently_workspace=str(setup.workspace),
                            evidently_ui_port=int(ui.rsplit(":", 1)[1]))
    save_snapshot(settings, "sentiment", Report([RowCount(tests=[])]).run(pd.DataFrame({"x": [1, 2, 3]})))
    wait_until(lambda: count() == before + 1, timeout=10, what="the new snapshot in the UI")


def test_jobs_write_to_a_remote_evidently_ui(ui: str, tmp_path: Path) -> None:
    """With VIGIL_EVIDENTLY_URL set, snapshots and dashboards go through the UI's API (RemoteWorkspace)."""
    from monitoring.dashboards import ensure_dashboards
    from monitoring.tokens import run_tokens
    from monitoring.window import Window
    from tests.unit.test_monitor_tokens import mixed_day, write

    settings = settings_for(tmp_path, evidently_url=ui, drift_min_rows=20)
    rag = _project(ui, "rag")
    before = len(httpx.get(f"{ui}/api/projects/{rag['id']}/snapshots", timeout=5).json())
    day = datetime(2025, 3, 1, tzinfo=UTC)
    write(settings, mixed_day(day, 0.8))

    result = run_tokens(settings, Window(day, day + timedelta(days=1)))
    assert [info.project_id for info in ensure_dashboards(settings)] == [_project(ui, "sentiment")["id"], rag["id"]]

    assert result.exit_code == 0 and result.snapshot_location and result.snapshot_location.startswith(ui)
    snapshots = httpx.get(f"{ui}/api/projects/{rag['id']}/snapshots", timeout=5).json()
    assert len(snapshots) == before + 1 and any(s["metadata"].get("job") == "tokens" for s in snapshots)


# The panels issue 6 asks for, by project; each must be drawn with data in the browser.
BROWSER_PANELS = {
    "sentiment": ("Drift share over time", "Drifted descriptors", "Embedding drift score", "Prediction label share"),
    "rag": ("Tokens per day", "Tokens per query p95", "Top-1 retrieval score"),
}


class DevToolsError(Exception):
    """The browser answered a DevTools call with an error."""


class DevTools:
    """Headless Debian chromium driven over the DevTools protocol on `--remote-debugging-pipe` (fds 3 and 4)."""

    # This closed network refuses Chromium's background connections: no networking but the page's own.
    FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync")

    def __init__(self, profile: Path, log: Path) -> None:
        # Above 9 so that moving them to 3 and 4 in the child cannot close one with the other.
        command_read, self._command = os.pipe()
        self._answers, answer_write = os.pipe()
        command_read, answer_write = (_move_above_9(fd) for fd in (command_read, answer_write))
        self.log = log
        with log.open("wb") as stderr:
            self.process = subprocess.Popen(
                ["bash", "-c", f'exec "$0" "$@" 3<&{command_read} 4>&{answer_write} {command_read}<&- '
                 f"{answer_write}>&-", CHROMIUM, *self.FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe"],
                pass_fds=(command_read, answer_write), stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                start_new_session=True,
            )
        os.close(command_read)
        os.close(answer_write)
        self._buffer = b""
        self._last_id = 0

    def call(self, method: str, session: str | None = None, timeout: float = 30, **params: Any) -> dict[str, Any]:
        self._last_id += 1
        message: dict[str, Any] = {"id": self._last_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._command, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:  # answers and events, each ended by a NUL
                raw, self._buffer = self._buffer.split(b"\0", 1)
                answer = json.loads(raw)
                if answer.get("id") == self._last_id:
                    if "error" in answer:
                        raise DevToolsError(f"{method}: {answer['error']}")
                    result: dict[str, Any] = answer["result"]
                    return result
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._answers], [], [], left)[0]:
                raise AssertionError(f"chromium: no answer to {method} in {timeout} s")
            chunk = os.read(self._answers, 1 << 20)
            if not chunk:
                raise AssertionError(f"chromium exited: {self.log.read_text(errors='replace')[-2000:]}")
            self._buffer += chunk

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
            self.process.wait(timeout=20)
        except (AssertionError, DevToolsError, OSError, subprocess.TimeoutExpired):
            pass
        finally:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
            os.close(self._command)
            os.close(self._answers)


def _move_above_9(fd: int) -> int:
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return moved


# What each panel (MUI card) of the page shows: title, legend, bar heights by series, line paths.
_CARDS_JS = """JSON.stringify([...document.querySelectorAll('.MuiCard-root')].map(card => ({
  title: (card.querySelector('h5')?.textContent ?? '').trim(),
  legend: [...card.querySelectorAll('.MuiChartsLegend-label')].map(e => e.textContent),
  bars: [...card.querySelectorAll('rect.MuiBarElement-root')].map(e => [
    [...e.classList].find(c => c.startsWith('MuiBarElement-series-')), Number(e.getAttribute('height'))]),
  lines: [...card.querySelectorAll('path.MuiLineElement-root')].map(e => e.getAttribute('d') ?? ''),
})))"""


def _panel_problems(cards: list[dict[str, Any]], model: DashboardModel, titles: tuple[str, ...]) -> list[str]:
    """What is missing for each panel to be drawn from data; empty when all are."""
    drawn = {card["title"]: card for card in cards}
    problems = []
    for title in titles:
        [panel] = [p for p in model.panels if p.title == title]
        legends = {value.legend for value in panel.values}
        card = drawn.get(title)
        if card is None:
            problems.append(f"{title}: no panel")
        elif set(card["legend"]) != legends:
            problems.append(f"{title}: legend {card['legend']}, expected {sorted(map(str, legends))}")
        elif panel.plot_params["plot_type"] == "bar":
            series = {name for name, height in card["bars"] if height > 0}
            if len(series) != len(legends):
                problems.append(f"{title}: bars of {len(series)} of {len(legends)} series: {card['bars']}")
        elif len(card["lines"]) != len(legends) or not all("L" in d or "C" in d for d in card["lines"]):
            problems.append(f"{title}: lines through fewer than two points: {card['lines']}")
    return problems


@pytest.fixture(scope="module")
def dashboards_with_data(ui: str, setup: DriftSetup, imdb_run: subprocess.CompletedProcess[str],
                         tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Both projects with at least two job runs each, so every line has a segment and every bar chart bars."""
    from monitoring.drift import run_drift
    from monitoring.tokens import run_tokens
    from monitoring.window import Window, resolve_window
    from tests.unit.test_monitor_tokens import mixed_day, write

    sentiment, rag = _project(ui, "sentiment"), _project(ui, "rag")
    snapshots = httpx.get(f"{ui}/api/projects/{sentiment['id']}/snapshots", timeout=5).json()
    if sum("verdict" in s["metadata"] for s in snapshots) < 2:  # the in-domain test may not have run
        settings = settings_for(setup.env.home, sentiment_model_name=MODEL, drift_min_rows=100, evidently_url=ui,
                                inference_log_url=setup.extra_env["VIGIL_INFERENCE_LOG_URL"])
        result = run_drift(settings, resolve_window(*setup.windows["in_domain"]), version=setup.version)
        assert result.snapshot_id, result.message

    settings = settings_for(tmp_path_factory.mktemp("browser-tokens"), evidently_url=ui)
    for offset, top1 in ((0, 0.8), (1, 0.6)):
        day = datetime(2025, 4, 1, tzinfo=UTC) + timedelta(days=offset)
        write(settings, mixed_day(day, top1, seed=offset))
        assert run_tokens(settings, Window(day, day + timedelta(days=1))).snapshot_id
    return {"sentiment": str(sentiment["id"]), "rag": str(rag["id"])}


@pytest.mark.browser
@pytest.mark.parametrize("project", sorted(BROWSER_PANELS))
def test_dashboard_page_renders_in_headless_chromium(
    ui: str, dashboards_with_data: dict[str, str], project: str, tmp_path: Path
) -> None:
    """Evidently's UI is a JavaScript app: the page, once its scripts have fetched the dashboard and the data
    series, holds each panel as a card with its legend and its chart drawn from the snapshots — bars of non-zero
    height for every series, lines through at least two points (two job runs). A screenshot is left beside."""
    from monitoring.dashboards import rag_dashboard, sentiment_dashboard

    model = {"sentiment": sentiment_dashboard, "rag": rag_dashboard}[project]()
    url = f"{ui}/projects/{dashboards_with_data[project]}"
    browser = DevTools(tmp_path / "profile", tmp_path / "chromium.log")
    try:
        target = browser.call("Target.createTarget", url="about:blank")["targetId"]
        page = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        browser.call("Emulation.setDeviceMetricsOverride", page, width=1400, height=3000, deviceScaleFactor=1,
                     mobile=False)
        # The charts skip their grow-in animation, so what is drawn is final as soon as it is there.
        browser.call("Emulation.setEmulatedMedia", page,
                     features=[{"name": "prefers-reduced-motion", "value": "reduce"}])
        browser.call("Page.navigate", page, url=url)

        problems = ["not looked yet"]
        deadline = time.monotonic() + 60
        while problems and time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                answer = browser.call("Runtime.evaluate", page, expression=_CARDS_JS, returnByValue=True)
            except DevToolsError:  # the page between two documents
                continue
            cards = json.loads(answer["result"].get("value", "[]"))
            problems = _panel_problems(cards, model, BROWSER_PANELS[project])
        screenshot = browser.call("Page.captureScreenshot", page, format="png")["data"]
        (tmp_path / f"{project}.png").write_bytes(base64.b64decode(screenshot))
    finally:
        browser.close()
    assert not problems, f"{url} (screenshot {tmp_path / f'{project}.png'}): {problems}"
