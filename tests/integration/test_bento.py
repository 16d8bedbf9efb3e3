"""`vigil bento build` packs the champion; the built Bento serves it with MLflow out of reach."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO_ROOT, free_port, wait_until
from tests.integration.conftest import VigilEnv


# As the session's first test it also trains the models; then it builds, ships and serves a Bento.
@pytest.mark.timeout(1200)
def test_built_bento_serves_offline(vigil_env: VigilEnv, trained_twice: tuple[str, str], tmp_path: Path) -> None:
    bentoml_home = tmp_path / "bentoml"
    env = {"BENTOML_HOME": str(bentoml_home), "BENTOML_DO_NOT_TRACK": "True"}
    built = vigil_env.run("bento", "build", "--project-dir", str(REPO_ROOT), extra_env=env, timeout=600)
    tag = next(word for word in built.stdout.split() if word.startswith("vigil:"))

    # Ship it: export the Bento (model included) and import it into an empty BentoML home.
    archive = tmp_path / "vigil.bento"
    subprocess.run([sys.executable, "-m", "bentoml", "export", tag, str(archive)], env={**os.environ, **env},
                   check=True, capture_output=True)
    env["BENTOML_HOME"] = str(tmp_path / "elsewhere")
    subprocess.run([sys.executable, "-m", "bentoml", "import", str(archive)], env={**os.environ, **env},
                   check=True, capture_output=True)

    port = free_port()
    offline = {**vigil_env.env, **env, "VIGIL_HOME": str(tmp_path / "empty-home"),
               "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}", "VIGIL_GRPC_PORT": str(free_port()),
               "VIGIL_TRACING": "off"}
    log = tmp_path / "bento.log"
    process = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", tag, "--port", str(port)], env=offline,
                               stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def ready() -> bool:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout=180, interval=0.5, what="the Bento to serve")
        response = httpx.post(f"http://127.0.0.1:{port}/predict", json={"text": "Absolutely wonderful, I love it."})
        assert response.status_code == 200, response.text
        assert response.json()["predictions"][0]["label"] == "positive"
        status = httpx.get(f"http://127.0.0.1:{port}/status").json()["models"]["sentiment"]
        assert status["source"] == "bundle"
        labels = subprocess.run([sys.executable, "-m", "bentoml", "get", tag, "-o", "json"], env=offline,
                                capture_output=True, text=True, check=True).stdout
        assert f'"mlflow_version": "{status["version"]}"' in labels.replace("'", '"')
        assert '"mlflow_alias": "champion"' in labels.replace("'", '"')
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
