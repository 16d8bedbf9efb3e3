"""Real servers for the integration tests, started once per session in a temporary VIGIL_HOME."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import VIGIL_BIN, free_port


@dataclass(frozen=True)
class VigilEnv:
    home: Path
    tracking_uri: str
    env: dict[str, str]

    def run(self, *args: str, check: bool = True, timeout: float = 600,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run the real `vigil` command against this session's home and server."""
        result = subprocess.run(
            [VIGIL_BIN, *args], env={**self.env, **(extra_env or {})}, capture_output=True, text=True,
            timeout=timeout, check=False,
        )
        if check and result.returncode != 0:
            command = " ".join(args)
            raise AssertionError(f"vigil {command} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result


@pytest.fixture(scope="session")
def vigil_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VigilEnv]:
    """A real `mlflow server` on a free port, managed by `vigil mlflow up/down`."""
    home = tmp_path_factory.mktemp("vigil-home")
    port = free_port()
    env = {
        **os.environ,
        "VIGIL_HOME": str(home),
        "VIGIL_MLFLOW_PORT": str(port),
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
        "VIGIL_OPERATOR": "pytest",
        "HF_HUB_OFFLINE": "1",
    }
    session = VigilEnv(home, f"http://127.0.0.1:{port}", env)
    session.run("mlflow", "up", timeout=180)
    previous = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "VIGIL_HOME")}
    os.environ["MLFLOW_TRACKING_URI"] = session.tracking_uri
    os.environ["VIGIL_HOME"] = str(home)
    yield session
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    session.run("mlflow", "down", check=False)


# Small but real: enough data and epochs that obvious sentences are labelled right, in well under a minute.
TRAIN_ARGS = ("train", "sentiment", "--limit", "600", "--epochs", "3", "--seed", "11")


@pytest.fixture(scope="session")
def trained_twice(vigil_env: VigilEnv) -> tuple[str, str]:
    """Two versions of `sentiment` trained with the same seed and data: (first, second)."""
    vigil_env.run(*TRAIN_ARGS)
    vigil_env.run(*TRAIN_ARGS)
    return "1", "2"
