"""The drift loop of a user's own model, end to end: train and register the tips models with the example script,
attach each one's training split as its reference with `vigil models reference`, send traffic to `vigil serve`, and
judge it with `vigil monitor drift --model NAME` — held-out rows exit 0, shifted rows exit 1."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pandas as pd
import pytest
from mlflow import MlflowClient
from sklearn.model_selection import train_test_split

from telemetry.records import create_engine, read_frame
from tests.conftest import wait_until
from tests.integration.conftest import MODEL, Server, VigilEnv, start_server
from tests.support.tips_example import CLASSIFIER, REGRESSOR, example

TARGETS = {CLASSIFIER: "time", REGRESSOR: "tip"}
ROWS_PER_REQUEST = 4
MIN_ROWS = 100


def features(name: str) -> list[str]:
    module = example()
    return list(module.TIME_FEATURES if name == CLASSIFIER else module.TIP_FEATURES)


def split(name: str, tips: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The training and held-out rows of examples/train_tips.py (stratified on time for the classifier)."""
    train, test = train_test_split(tips, test_size=0.25, random_state=42,
                                   stratify=tips["time"] if name == CLASSIFIER else None)
    return train, test


@pytest.fixture(scope="module")
def tips() -> pd.DataFrame:
    frame: pd.DataFrame = example().load_tips()
    return frame


@pytest.fixture(scope="module")
def drift_server(vigil_env: VigilEnv, registry_client: MlflowClient, tips: pd.DataFrame,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Vigil serving both tips models, each with its training split attached as its drift reference."""
    versions = example().train_and_register(vigil_env.tracking_uri, alias="champion")
    assert set(versions) == {CLASSIFIER, REGRESSOR}
    home = tmp_path_factory.mktemp("model-drift-home")
    env = {**vigil_env.env, "VIGIL_HOME": str(home), "VIGIL_SENTIMENT_MODEL_NAME": MODEL, "VIGIL_TRACING": "off",
           "VIGIL_MODELS": f"{MODEL}@champion,{CLASSIFIER}@champion,{REGRESSOR}@champion",
           "VIGIL_BATCH_MAX_LATENCY_MS": "10000", "VIGIL_ALERT_WEBHOOK": ""}
    for name, target in TARGETS.items():
        train, _ = split(name, tips)
        path = home / f"{name}-train.csv"
        train[[*features(name), target]].to_csv(path, index=False)
        attached = vigil_env.run("models", "reference", name, "--data", str(path), "--target", target,
                                 extra_env=env)
        assert f"{name} v{versions[name]}" in attached.stdout, attached.stdout
    running = start_server(env, home / "serve.log")
    yield running
    running.stop()


def logged_rows(server: Server, name: str, since: datetime) -> int:
    log = read_frame(create_engine(f"sqlite:///{Path(server.env['VIGIL_HOME']) / 'inference_log.db'}"),
                     kind="model", model_name=name, since=since)
    return len(log)


def send(server: Server, name: str, rows: pd.DataFrame) -> datetime:
    """``rows`` through MLflow's `/invocations`, a few per request; returns when they are all in the log."""
    since = datetime.now(UTC)
    records = json.loads(rows[features(name)].to_json(orient="records"))
    url = f"{server.http}/models/{name}/invocations"
    with httpx.Client(timeout=60) as client:
        for first in range(0, len(records), ROWS_PER_REQUEST):
            answer = client.post(url, json={"dataframe_records": records[first:first + ROWS_PER_REQUEST]})
            assert answer.status_code == 200, answer.text
    wait_until(lambda: logged_rows(server, name, since) >= len(records), timeout=60,
               what=f"{len(records)} log rows of {name}")
    return since


def drift(vigil_env: VigilEnv, server: Server, name: str, since: datetime) -> subprocess.CompletedProcess[str]:
    return vigil_env.run("monitor", "drift", "--model", name, "--since", since.isoformat(), "--min-rows",
                         str(MIN_ROWS), "--json", check=False, extra_env=server.env)


def shifted(name: str, tips: pd.DataFrame) -> pd.DataFrame:
    """A realistic shift for each model: dinner-only traffic for the classifier, large parties for the regressor."""
    if name == CLASSIFIER:
        return tips[tips["time"] == "Dinner"]
    return tips[tips["size"] >= 4]


@pytest.mark.parametrize("name", [CLASSIFIER, REGRESSOR])
def test_held_out_traffic_is_no_drift_and_shifted_traffic_is_drift(
        drift_server: Server, vigil_env: VigilEnv, tips: pd.DataFrame, name: str) -> None:
    _, test = split(name, tips)
    held_out = pd.concat([test, test])  # 122 rows: the held-out split (61 rows) twice
    since = send(drift_server, name, held_out)
    calm = drift(vigil_env, drift_server, name, since)
    assert calm.returncode == 0, calm.stdout + calm.stderr
    verdict = json.loads(calm.stdout)
    assert verdict["status"] == "no_drift" and verdict["rows"] == len(held_out) and verdict["project"] == name
    assert verdict["task"] == ("classification" if name == CLASSIFIER else "regression")

    moved = shifted(name, tips)
    since = send(drift_server, name, moved if len(moved) >= MIN_ROWS else pd.concat([moved] * 3))
    alarm = drift(vigil_env, drift_server, name, since)
    assert alarm.returncode == 1, alarm.stdout + alarm.stderr
    verdict = json.loads(alarm.stdout)
    assert verdict["status"] == "drift" and verdict["drifted"]
    voted = {check["name"] for check in verdict["checks"] if check["drifted"] and check["votes"]}
    assert voted & {"inputs", "prediction"}, verdict["checks"]
