from __future__ import annotations

import socket
from pathlib import Path

from tests.conftest import free_port
from tests.integration.conftest import VigilEnv


def test_second_up_says_already_running(vigil_env: VigilEnv) -> None:
    result = vigil_env.run("mlflow", "up")
    assert "already running" in result.stdout
    status = vigil_env.run("mlflow", "status")
    assert f"running at {vigil_env.tracking_uri}" in " ".join(status.stdout.split())


def test_port_taken_by_another_process_is_reported(vigil_env: VigilEnv, tmp_path: Path) -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        result = vigil_env.run("mlflow", "up", check=False,
                               extra_env={"VIGIL_HOME": str(tmp_path), "VIGIL_MLFLOW_PORT": str(port)})
    assert result.returncode == 1
    assert f"port {port}" in result.stdout and "taken" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_unreachable_server_gives_one_clear_error(vigil_env: VigilEnv) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    for command in (("models", "list"), ("train", "sentiment", "--limit", "40", "--epochs", "1")):
        result = vigil_env.run(*command, check=False, extra_env={"MLFLOW_TRACKING_URI": closed})
        output = " ".join((result.stdout + result.stderr).split())
        assert result.returncode == 1, output
        assert f"MLflow server not reachable at {closed}" in output
        assert "vigil mlflow up" in output
        assert "Traceback" not in output


def test_status_of_a_home_without_server_exits_nonzero(vigil_env: VigilEnv, tmp_path: Path) -> None:
    result = vigil_env.run("mlflow", "status", check=False, extra_env={"VIGIL_HOME": str(tmp_path)})
    assert result.returncode == 1
    assert "stopped" in result.stdout


def test_two_homes_run_independent_servers(vigil_env: VigilEnv, tmp_path: Path) -> None:
    port = free_port()
    other = {"VIGIL_HOME": str(tmp_path), "VIGIL_MLFLOW_PORT": str(port)}
    try:
        vigil_env.run("mlflow", "up", extra_env=other, timeout=180)
        assert (tmp_path / "mlflow" / "mlflow.db").exists()
        assert "running" in vigil_env.run("mlflow", "status").stdout
        assert f"127.0.0.1:{port}" in vigil_env.run("mlflow", "status", extra_env=other).stdout
    finally:
        vigil_env.run("mlflow", "down", extra_env=other, check=False)
    assert "running" in vigil_env.run("mlflow", "status").stdout
