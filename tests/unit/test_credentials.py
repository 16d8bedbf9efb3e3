"""Credentials stay out of sight: URLs masked wherever Vigil shows them, the MLflow store's URI off the command line,
and what Vigil writes under VIGIL_HOME readable by its owner only."""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from tests.conftest import free_port
from vigil import cli, mlflow_server
from vigil.credentials import create_private_file, ensure_private_dir, mask_url
from vigil.settings import Settings

DATABASE_URL = "postgresql+psycopg://vigil:hunter2@db.internal:5432/vigil"
STORE_URL = "postgresql://mlflow:s3cret@db.internal/mlflow"
WEBHOOK_URL = "https://hooks.example/alerts?channel=ops&token=abc123"
# Slack's incoming webhooks carry their secret in the path, not in a parameter.
SLACK_WEBHOOK = "https://hooks.slack.com/services/T0000/B0000/XXXXSECRET"


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql+psycopg://u:p@h/db", "postgresql+psycopg://u:***@h/db"),
    (DATABASE_URL, "postgresql+psycopg://vigil:***@db.internal:5432/vigil"),
    ("mysql://u:p@ss@h/db?charset=utf8", "mysql://u:***@h/db?charset=utf8"),  # an unescaped "@" in the password
    ("redis://:pw@cache:6379/0", "redis://:***@cache:6379/0"),
    ("https://hooks.example/x?token=abc", "https://hooks.example/x?token=***"),
    (WEBHOOK_URL, "https://hooks.example/alerts?channel=ops&token=***"),
    ("https://s3.example/b/o?X-Amz-Credential=AKIA&X-Amz-Signature=f00&x-id=GetObject#part",
     "https://s3.example/b/o?X-Amz-Credential=***&X-Amz-Signature=***&x-id=GetObject#part"),
    ("https://api.example/v1?api_key=k&client_secret=s&password=p&page=2",
     "https://api.example/v1?api_key=***&client_secret=***&password=***&page=2"),
    # Nothing to hide: back exactly as given.
    ("postgresql://vigil@db.internal/vigil", "postgresql://vigil@db.internal/vigil"),
    ("sqlite:////home/me/.vigil/inference_log.db", "sqlite:////home/me/.vigil/inference_log.db"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("https://hooks.example/x?token=", "https://hooks.example/x?token="),
    ("/var/lib/vigil/artifacts", "/var/lib/vigil/artifacts"),
    ("evaluations/policy.toml", "evaluations/policy.toml"),
    ("", ""),
])
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown
    assert mask_url(shown) == shown  # masking what is masked changes nothing


@pytest.mark.parametrize(("url", "shown"), [
    (SLACK_WEBHOOK, "https://hooks.slack.com/***"),
    ("https://discord.com/api/webhooks/123/s3cr3t?wait=true", "https://discord.com/***"),
    ("https://relay:hunter2@hooks.example:8443/x?token=abc#frag", "https://relay:***@hooks.example:8443/***"),
    ("https://hooks.example?token=abc", "https://hooks.example/***"),
    # Nothing after the host: nothing to hide.
    ("https://hooks.example", "https://hooks.example"),
    ("https://hooks.example/", "https://hooks.example/"),
    ("", ""),
])
def test_mask_url_without_its_path_for_webhooks(url: str, shown: str) -> None:
    assert mask_url(url, keep_path=False) == shown
    assert mask_url(shown, keep_path=False) == shown


def test_vigil_config_prints_no_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_INFERENCE_LOG_URL", DATABASE_URL)
    monkeypatch.setenv("VIGIL_MLFLOW_BACKEND_STORE_URI", STORE_URL)
    monkeypatch.setenv("VIGIL_ALERT_WEBHOOK", WEBHOOK_URL)
    # Wide enough that no value wraps: a password split over two lines would pass a "not in" check by accident.
    monkeypatch.setattr(cli, "console", Console(width=400, force_terminal=False))
    result = CliRunner().invoke(cli.app, ["config"])
    assert result.exit_code == 0, result.output
    for secret in ("hunter2", "s3cret", "abc123"):
        assert secret not in result.output
    assert "postgresql+psycopg://vigil:***@db.internal:5432/vigil" in result.output
    assert "postgresql://mlflow:***@db.internal/mlflow" in result.output


def test_vigil_config_hides_a_webhook_secret_in_its_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_ALERT_WEBHOOK", SLACK_WEBHOOK)
    monkeypatch.setattr(cli, "console", Console(width=400, force_terminal=False))
    result = CliRunner().invoke(cli.app, ["config"])
    assert result.exit_code == 0, result.output
    assert "XXXXSECRET" not in result.output
    assert "https://hooks.slack.com/***" in result.output


def test_the_mlflow_server_reads_its_backend_store_from_its_environment_not_its_argv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlflow.cli import server as mlflow_server_cli

    monkeypatch.delenv("MLFLOW_BACKEND_STORE_URI", raising=False)

    settings = Settings(_env_file=None, home=tmp_path / "home", mlflow_backend_store_uri=STORE_URL)  # type: ignore[call-arg]
    command = mlflow_server.server_command(settings, 5123)
    assert "s3cret" not in " ".join(command.argv)
    assert command.environment["MLFLOW_BACKEND_STORE_URI"] == STORE_URL
    # What `mlflow server` makes of that argv and environment: the store, credentials and all.
    assert command.argv[1:4] == ["-m", "mlflow", "server"]
    context = mlflow_server_cli.make_context("server", command.argv[4:])
    assert context.params["backend_store_uri"] is None  # not given on the command line…
    for name, value in command.environment.items():
        monkeypatch.setenv(name, value)
    context = mlflow_server_cli.make_context("server", command.argv[4:])
    assert context.params["backend_store_uri"] == STORE_URL  # …but through the environment
    assert context.params["port"] == 5123


# Stands in for `mlflow server`: answers the health check, and reports what it was started with.
STAND_IN = """
import http.server, json, os, sys
report, port = sys.argv[1], int(sys.argv[2])
umask = os.umask(0o077)
with open(report, "w") as out:
    json.dump({"backend": os.environ.get("MLFLOW_BACKEND_STORE_URI"), "argv": sys.argv, "umask": umask}, out)

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""


@pytest.fixture
def started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Settings, Path]]:
    """``vigil mlflow up``'s own code, starting the stand-in in place of MLflow; stopped after the test."""
    report = tmp_path / "report.json"
    real_command = mlflow_server.server_command

    def stand_in(settings: Settings, port: int) -> mlflow_server.ServerCommand:
        return replace(real_command(settings, port), argv=[sys.executable, "-c", STAND_IN, str(report), str(port)])

    monkeypatch.setattr(mlflow_server, "server_command", stand_in)
    # The stand-in has no accounts to set up: the basic-auth app is tested against the real server.
    for name, value in {"VIGIL_HOME": str(tmp_path / "home"), "VIGIL_MLFLOW_PORT": str(free_port()),
                        "VIGIL_MLFLOW_BACKEND_STORE_URI": STORE_URL, "VIGIL_MLFLOW_AUTH": "false"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    try:
        yield settings, report
    finally:
        mlflow_server.down(settings)


def test_mlflow_up_passes_the_store_by_environment_and_records_it_masked(
    started: tuple[Settings, Path], monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings, report = started
    state, started_now = mlflow_server.up(settings)
    assert started_now
    launched = json.loads(report.read_text())
    assert launched["backend"] == STORE_URL
    assert "s3cret" not in " ".join(launched["argv"])
    assert launched["umask"] == 0o077  # what the server creates is private too
    recorded = mlflow_server.state_path(settings).read_text()
    assert "s3cret" not in recorded
    assert json.loads(recorded)["backend_store_uri"] == "postgresql://mlflow:***@db.internal/mlflow"
    # `vigil mlflow status` reads it back from the state file.
    monkeypatch.setattr(cli, "console", Console(width=400, force_terminal=False))
    result = CliRunner().invoke(cli.app, ["mlflow", "status"])
    assert result.exit_code == 0, result.output
    assert f"running at {state.uri}" in result.output and "backend postgresql://mlflow:***@db.internal/mlflow" in (
        result.output)


def test_vigil_home_and_what_mlflow_up_writes_there_are_private(started: tuple[Settings, Path]) -> None:
    settings, _ = started
    previous = os.umask(0o022)  # a usual umask would leave all of it readable by everyone
    try:
        mlflow_server.up(settings)
    finally:
        os.umask(previous)

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    home = settings.home
    assert mode(home) == mode(home / "mlflow") == mode(home / "mlflow" / "artifacts") == 0o700
    assert mode(home / "mlflow" / "server.json") == mode(home / "mlflow" / "server.log") == 0o600


def test_private_folders_and_files_whatever_the_umask_and_existing_ones_kept(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    (shared / "notes.txt").write_text("kept")
    previous = os.umask(0)  # the most permissive: only an explicit mode makes these private
    try:
        created = ensure_private_dir(shared / "home" / "logs")
        written = create_private_file(created / "server.log")
        kept = create_private_file(shared / "notes.txt")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((shared / "home").stat().st_mode) == stat.S_IMODE(created.stat().st_mode) == 0o700
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    # What existed before is someone's choice: neither its mode nor its content changes.
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755
    assert kept.read_text() == "kept"
    with pytest.raises(NotADirectoryError):
        ensure_private_dir(shared / "notes.txt")


def test_an_undelivered_alert_logs_the_webhook_without_its_token(caplog: pytest.LogCaptureFixture) -> None:
    from datetime import UTC, datetime

    from monitoring.alerts import Alert, send_alert

    now = datetime.now(UTC)
    alert = Alert(kind="drift", summary="drift in text_length", window_start=now, window_end=now,
                  model_name="sentiment", model_version="2", project="sentiment")
    port = free_port()  # nothing listens there
    with caplog.at_level(logging.INFO, logger="monitoring.alerts"):
        assert send_alert(alert, f"http://127.0.0.1:{port}/hooks/alerts?token=abc123", timeout=5) is False
        assert send_alert(alert, f"http://127.0.0.1:{port}/services/T0000/B0000/XXXXSECRET", timeout=5) is False
    assert caplog.text.count(f"alert webhook http://127.0.0.1:{port}/*** not reachable") == 2
    assert "abc123" not in caplog.text and "XXXXSECRET" not in caplog.text


def test_an_unreachable_mlflow_is_named_without_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    from vigil import registry
    from vigil.errors import MlflowUnavailable

    uri = f"http://vigil:hunter2@127.0.0.1:{free_port()}"  # nothing listens there
    shown = uri.replace("hunter2", "***")
    assert str(MlflowUnavailable(uri, "ConnectError")).startswith(f"MLflow server not reachable at {shown} (")
    for reach in (lambda: registry.check_reachable(uri, timeout=5),
                  lambda: registry.experiment_id("vigil-test", uri=uri, timeout=5)):
        with pytest.raises(MlflowUnavailable) as refused:
            reach()
        assert f"not reachable at {shown}" in str(refused.value) and "hunter2" not in str(refused.value)
        assert refused.value.uri == shown


def test_tracing_status_and_its_warning_name_mlflow_without_its_password(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    from telemetry import tracing

    uri = f"http://vigil:hunter2@127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with caplog.at_level(logging.WARNING, logger="telemetry"):
        built = tracing.build_tracing("t", settings=Settings(_env_file=None, tracing="otlp"))  # type: ignore[call-arg]
    try:
        (mlflow,) = built.status()["exporters"]
    finally:
        built.shutdown(1)
    assert mlflow["endpoint"] == uri.replace("hunter2", "***") + "/v1/traces"
    assert not mlflow["active"] and "vigil:***@" in mlflow["detail"]
    assert "vigil:***@" in caplog.text
    assert "hunter2" not in caplog.text + json.dumps(built.status())


def test_endpoints_with_credentials_are_named_without_them_in_errors() -> None:
    import httpx

    from evaluations.scoring import post_to_vigil
    from service.rag.errors import GeneratorUnavailable
    from service.rag.generators import OpenAIGenerator
    from vigil.contracts import PredictResponse
    from vigil.errors import VigilError

    port = free_port()  # nothing listens there
    with httpx.Client(timeout=5) as client, pytest.raises(VigilError) as refused:
        post_to_vigil(client, f"http://me:hunter2@127.0.0.1:{port}", "/predict", {"texts": ["hi"]}, PredictResponse)
    assert str(refused.value).startswith(f"Vigil endpoint http://me:***@127.0.0.1:{port} not reachable")
    generator = OpenAIGenerator(f"http://me:hunter2@127.0.0.1:{port}/v1?api_key=k3y", "m", timeout=5)
    try:
        with pytest.raises(GeneratorUnavailable) as failed:
            generator.generate("what?", [])
    finally:
        generator.close()
    assert f"the LLM at http://me:***@127.0.0.1:{port}/v1?api_key=*** is not reachable" in str(failed.value)
    assert "hunter2" not in str(failed.value) and "k3y" not in str(failed.value)


def test_folders_vigil_makes_in_its_home_are_private_whatever_the_umask(tmp_path: Path) -> None:
    from monitoring.workspace import open_workspace, report_path
    from vigil import model_cache

    settings = Settings(_env_file=None, home=tmp_path / "home")  # type: ignore[call-arg]
    previous = os.umask(0o022)  # left to the umask, every one of them would be 0755
    try:
        model_cache.remember("sentiment", "3", "champion", "run-3", cache_dir=settings.model_cache_dir)
        open_workspace(settings)
        report_path(settings, "drift.html")
    finally:
        os.umask(previous)
    home = settings.home
    made = [home, home / "models", home / "models" / "sentiment", home / "evidently", home / "reports"]
    assert {str(folder.relative_to(tmp_path)): stat.S_IMODE(folder.stat().st_mode) for folder in made} == {
        str(folder.relative_to(tmp_path)): 0o700 for folder in made}
