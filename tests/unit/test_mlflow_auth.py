"""The managed MLflow server's accounts: generated once, private, passed by environment, chosen per process."""

from __future__ import annotations

import configparser
import os
import shlex
import stat
from pathlib import Path

import pytest

from vigil import mlflow_auth, mlflow_server
from vigil.errors import VigilError
from vigil.mlflow_auth import Role
from vigil.settings import Settings

VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in (*VARIABLES, "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    return Settings(_env_file=None, home=tmp_path / "home", mlflow_port=5123)  # type: ignore[call-arg]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_accounts_are_generated_once_strong_and_private(settings: Settings) -> None:
    first = mlflow_auth.ensure_credentials(settings)
    again = mlflow_auth.ensure_credentials(settings)
    assert first == again
    assert first.admin.username == "admin" and first.serving.username == "vigil-serving"
    assert len({first.admin.password, first.serving.password, first.flask_secret_key}) == 3
    assert min(len(first.admin.password), len(first.serving.password)) >= 32
    assert mode(mlflow_auth.credentials_path(settings)) == 0o600
    assert mode(settings.home) == 0o700


def test_a_lost_credentials_file_beside_an_existing_user_store_is_refused(settings: Settings) -> None:
    mlflow_auth.ensure_credentials(settings)
    (settings.mlflow_dir / mlflow_auth.AUTH_DATABASE_FILE).write_bytes(b"")
    mlflow_auth.credentials_path(settings).unlink()
    with pytest.raises(VigilError, match="restore the credentials file"):
        mlflow_auth.ensure_credentials(settings)


def test_the_server_starts_the_auth_app_with_its_secrets_in_the_environment_only(settings: Settings) -> None:
    command = mlflow_server.server_command(settings, 5123)
    credentials = mlflow_auth.ensure_credentials(settings)
    argv = " ".join(command.argv)
    assert command.argv[-2:] == ["--app-name", "basic-auth"]
    for secret in (credentials.admin.password, credentials.serving.password, credentials.flask_secret_key):
        assert secret not in argv
    assert command.environment["MLFLOW_AUTH_ADMIN_PASSWORD"] == credentials.admin.password
    assert command.environment["MLFLOW_FLASK_SERVER_SECRET_KEY"] == credentials.flask_secret_key
    config_path = Path(command.environment["MLFLOW_AUTH_CONFIG_PATH"])
    assert mode(config_path) == 0o600
    config = configparser.ConfigParser()
    config.read(config_path)
    assert config["mlflow"]["default_permission"] == "READ"
    assert config["mlflow"]["admin_username"] == "admin"
    assert config["mlflow"]["database_uri"].endswith("/mlflow/basic_auth.db")
    assert int(config["mlflow"]["auth_cache_ttl_seconds"]) > 0
    assert credentials.admin.password not in config_path.read_text()


def test_auth_can_be_turned_off(settings: Settings) -> None:
    off = settings.model_copy(update={"mlflow_auth": False})
    command = mlflow_server.server_command(off, 5123)
    assert "--app-name" not in command.argv
    assert set(command.environment) == {"MLFLOW_BACKEND_STORE_URI"}


def test_commands_use_the_admin_and_services_the_read_only_account(
    settings: Settings, monkeypatch: pytest.MonkeyPatch,
) -> None:
    credentials = mlflow_auth.ensure_credentials(settings)
    mlflow_auth.authenticate_process(settings, Role.admin)
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "admin"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == credentials.admin.password
    # A service never keeps more than read access, whatever its parent process held.
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "a-token-of-the-parent")
    mlflow_auth.authenticate_process(settings, Role.serving)
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "vigil-serving"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == credentials.serving.password
    assert "MLFLOW_TRACKING_TOKEN" not in os.environ


def test_credentials_a_person_set_win_for_commands(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    mlflow_auth.ensure_credentials(settings)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "her-own-password")
    mlflow_auth.authenticate_process(settings, Role.admin)
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "alice"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "her-own-password"


def test_another_server_never_gets_this_homes_accounts(settings: Settings) -> None:
    mlflow_auth.ensure_credentials(settings)
    elsewhere = settings.model_copy(update={"mlflow_tracking_uri": "https://mlflow.example.com"})
    assert not mlflow_auth.manages(elsewhere)
    assert mlflow_auth.environment_for(elsewhere, Role.admin) == {}
    mlflow_auth.authenticate_process(elsewhere, Role.admin)
    assert "MLFLOW_TRACKING_USERNAME" not in os.environ
    assert mlflow_auth.manages(settings)
    assert mlflow_auth.manages(settings, "http://localhost:5123/")


def test_exports_are_shell_lines_that_set_the_clients_variables(settings: Settings) -> None:
    with pytest.raises(VigilError, match="vigil mlflow up"):
        mlflow_auth.exports(settings)
    credentials = mlflow_auth.ensure_credentials(settings)
    for role in Role:
        words = shlex.split(mlflow_auth.exports(settings, role))
        assert words[0] == "export"
        variables = dict(word.split("=", 1) for word in words[1:])
        account = credentials.account(role)
        assert variables == {"MLFLOW_TRACKING_USERNAME": account.username,
                             "MLFLOW_TRACKING_PASSWORD": account.password}


def test_vigil_serve_gives_the_services_the_read_only_account(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    from service import cli as service_cli
    from vigil import registry
    from vigil.errors import MlflowUnavailable
    from vigil.settings import get_settings

    monkeypatch.setenv("VIGIL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VIGIL_MLFLOW_PORT", "5123")
    monkeypatch.setenv("VIGIL_API_TOKEN", "x" * 32)
    for name in (*VARIABLES, "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "the-admins-token")
    get_settings.cache_clear()
    credentials = mlflow_auth.ensure_credentials(get_settings())

    def mlflow_down(uri: str | None = None, timeout: float = 0) -> None:
        raise MlflowUnavailable(uri or "", "ConnectError")

    launched: dict[str, str] = {}

    class Process:
        def __init__(self, command: list[str], env: dict[str, str]) -> None:
            launched.update(env)

        def wait(self) -> int:
            return 0

    monkeypatch.setattr(registry, "check_reachable", mlflow_down)
    monkeypatch.setattr(service_cli.subprocess, "Popen", Process)
    # `vigil serve` forwards SIGTERM to its child; this process keeps its own handler.
    monkeypatch.setattr(service_cli.signal, "signal", lambda *_: None)
    try:
        result = CliRunner().invoke(service_cli.app, [])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert launched["MLFLOW_TRACKING_USERNAME"] == "vigil-serving"
    assert launched["MLFLOW_TRACKING_PASSWORD"] == credentials.serving.password
    assert "MLFLOW_TRACKING_TOKEN" not in launched
