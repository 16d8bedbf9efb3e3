"""The user's own models, trained with plain MLflow (`examples/train_tips.py`), served next to sentiment.

A classifier with float, int and string columns and a regressor, through Triton's HTTP client at its defaults
and its gRPC client — both built only from the metadata Vigil publishes — and through MLflow's `/invocations`,
against the same models loaded locally with MLflow's own loader.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from mlflow import MlflowClient

from telemetry.records import create_engine, read_frame
from tests.integration.conftest import MODEL, Server, VigilEnv, start_server
from tests.support.tips_example import CLASSIFIER, REGRESSOR, example


@pytest.fixture(scope="module")
def tips() -> pd.DataFrame:
    frame: pd.DataFrame = example().load_tips()
    return frame


@pytest.fixture(scope="module")
def models_server(vigil_env: VigilEnv, registry_client: MlflowClient,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Vigil serving sentiment and the two tips models, registered and aliased by the example script."""
    versions = example().train_and_register(vigil_env.tracking_uri, alias="champion")
    assert set(versions) == {CLASSIFIER, REGRESSOR}
    home = tmp_path_factory.mktemp("models-home")
    models_file = home / "models.toml"  # the classifier's own limits; the regressor keeps the globals
    models_file.write_text(f'[models."{CLASSIFIER}"]\nmax_rows_per_request = 250\nbatch_max_size = 16\n')
    env = {**vigil_env.env, "VIGIL_HOME": str(home), "VIGIL_SENTIMENT_MODEL_NAME": MODEL, "VIGIL_TRACING": "off",
           "VIGIL_MODELS": f"{MODEL}@champion,{CLASSIFIER}@champion,{REGRESSOR}@champion",
           "VIGIL_MODELS_FILE": str(models_file),
           "VIGIL_MAX_ROWS_PER_REQUEST": "300", "VIGIL_BATCH_MAX_LATENCY_MS": "10000"}
    running = start_server(env, home / "serve.log")
    yield running
    running.stop()


def local(name: str, rows: pd.DataFrame, tracking_uri: str) -> np.ndarray:
    """The model's own prediction, loaded with MLflow's loader from the registry."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    finally:
        mlflow.set_tracking_uri(previous)
    return np.asarray(model.predict(rows))


def features(name: str, tips: pd.DataFrame) -> pd.DataFrame:
    module = example()
    return tips[module.TIME_FEATURES if name == CLASSIFIER else module.TIP_FEATURES]


def as_numpy(values: pd.Series, datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([str(v).encode() for v in values], dtype=object)
    return values.to_numpy(dtype=triton_http.triton_to_np_dtype(datatype))


@pytest.mark.parametrize("name", [CLASSIFIER, REGRESSOR])
def test_triton_http_client_at_defaults_from_the_published_metadata(
        models_server: Server, vigil_env: VigilEnv, tips: pd.DataFrame, name: str) -> None:
    rows = features(name, tips)
    client = triton_http.InferenceServerClient(models_server.http.removeprefix("http://"))
    assert client.is_model_ready(name)
    metadata = client.get_model_metadata(name)
    assert [i["name"] for i in metadata["inputs"]] == list(rows.columns)
    inputs = []
    for spec in metadata["inputs"]:
        tensor = triton_http.InferInput(spec["name"], [len(rows)], spec["datatype"])
        tensor.set_data_from_numpy(as_numpy(rows[spec["name"]], spec["datatype"]))  # binary, the default
        inputs.append(tensor)
    result = client.infer(name, inputs)
    output = metadata["outputs"][0]
    served = result.as_numpy(output["name"])
    expected = local(name, rows, vigil_env.tracking_uri)
    if output["datatype"] == "BYTES":
        assert [v.decode() for v in served.ravel()] == expected.tolist()
    else:
        np.testing.assert_allclose(served.ravel(), expected, rtol=1e-9)
    assert len(result.get_response()["id"]) == 32


@pytest.mark.parametrize("name", [CLASSIFIER, REGRESSOR])
def test_triton_grpc_client_from_the_published_metadata(
        models_server: Server, vigil_env: VigilEnv, tips: pd.DataFrame, name: str) -> None:
    rows = features(name, tips).head(40)
    client = triton_grpc.InferenceServerClient(models_server.grpc_target)
    metadata = client.get_model_metadata(name)
    inputs = []
    for spec in metadata.inputs:
        tensor = triton_grpc.InferInput(spec.name, [len(rows), 1], spec.datatype)  # [N, 1] is taken too
        tensor.set_data_from_numpy(as_numpy(rows[spec.name], spec.datatype).reshape(-1, 1))
        inputs.append(tensor)
    result = client.infer(name, inputs)
    served = result.as_numpy(metadata.outputs[0].name).ravel()
    expected = local(name, rows, vigil_env.tracking_uri)
    if metadata.outputs[0].datatype == "BYTES":
        assert [v.decode() for v in served] == expected.tolist()
    else:
        np.testing.assert_allclose(served, expected, rtol=1e-9)


def test_invocations_answer_mlflows_formats_alike(models_server: Server, vigil_env: VigilEnv,
                                                  tips: pd.DataFrame) -> None:
    rows = features(CLASSIFIER, tips).head(25)
    expected = local(CLASSIFIER, rows, vigil_env.tracking_uri).tolist()
    url = f"{models_server.http}/models/{CLASSIFIER}/invocations"
    bodies = {
        "dataframe_split": {"dataframe_split": rows.to_dict(orient="split")},
        "dataframe_records": {"dataframe_records": rows.to_dict(orient="records")},
        "inputs": {"inputs": rows.to_dict(orient="list")},
        "instances": {"instances": rows.to_dict(orient="records")},
    }
    for form, body in bodies.items():
        answer = httpx.post(url, json=body, timeout=60)
        assert answer.status_code == 200, (form, answer.text)
        assert answer.json()["predictions"] == expected, form
        assert answer.json()["request_id"] == answer.headers["x-request-id"]
    csv = io.StringIO()
    rows.to_csv(csv, index=False)
    answer = httpx.post(url, content=csv.getvalue(), headers={"content-type": "text/csv"}, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"] == expected


def oip(server: Server, name: str, inputs: list[dict[str, Any]]) -> httpx.Response:
    return httpx.post(f"{server.http}/v2/models/{name}/infer", json={"inputs": inputs}, timeout=30)


def tensor(name: str, datatype: str, data: list[Any]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": [len(data)], "data": data}


def good_regressor_inputs() -> list[dict[str, Any]]:
    return [tensor("total_bill", "FP64", [16.99, 10.34]), tensor("sex", "BYTES", ["Female", "Male"]),
            tensor("smoker", "BYTES", ["No", "No"]), tensor("day", "BYTES", ["Sun", "Sun"]),
            tensor("time", "BYTES", ["Dinner", "Dinner"]), tensor("size", "INT64", [2, 3])]


def with_input(replaced: dict[str, Any]) -> list[dict[str, Any]]:
    return [replaced if t["name"] == replaced["name"] else t for t in good_regressor_inputs()]


@pytest.mark.parametrize(("inputs", "status", "named"), [
    ([t for t in good_regressor_inputs() if t["name"] != "day"], 400, "day"),
    ([*good_regressor_inputs(), tensor("weather", "BYTES", ["sunny", "rainy"])], 400, "weather"),
    (with_input(tensor("total_bill", "BYTES", ["a lot", "little"])), 400, "total_bill"),
    (with_input({"name": "size", "datatype": "INT64", "shape": [2, 2], "data": [1, 2, 3, 4]}), 400, "size"),
    (with_input(tensor("total_bill", "FP64", [16.99, "NaN"])), 400, "total_bill"),
    (with_input(tensor("size", "INT64", [2, 2.5])), 400, "size"),
])
def test_bad_inputs_are_4xx_naming_the_column(models_server: Server, inputs: list[dict[str, Any]], status: int,
                                              named: str) -> None:
    answer = oip(models_server, REGRESSOR, inputs)
    assert answer.status_code == status, answer.text
    assert set(answer.json()) == {"error"} and named in answer.json()["error"]


def test_too_many_rows_and_unknown_models_are_refused(models_server: Server) -> None:
    many = [tensor(t["name"], t["datatype"], t["data"] * 200) for t in good_regressor_inputs()]  # 400 rows > 300
    answer = oip(models_server, REGRESSOR, many)
    assert answer.status_code == 413 and "300" in answer.json()["error"]
    unknown = httpx.post(f"{models_server.http}/models/nope/invocations", json={"inputs": {}}, timeout=30)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    assert oip(models_server, REGRESSOR, good_regressor_inputs()).status_code == 200  # still serving


def test_each_model_has_its_own_row_limit_from_the_models_file(models_server: Server,
                                                                tips: pd.DataFrame) -> None:
    # The classifier's table allows 250 rows; the regressor keeps the global 300; every tips row and 16 again: 260.
    records = json.loads(pd.concat([tips, tips.head(16)]).to_json(orient="records"))
    answers = {name: httpx.post(f"{models_server.http}/models/{name}/invocations", timeout=60, json={
        "dataframe_records": [{column: row[column] for column in features(name, tips).columns} for row in records]})
        for name in (CLASSIFIER, REGRESSOR)}
    refused = answers[CLASSIFIER]
    assert refused.status_code == 413 and "250" in refused.json()["error"]["message"], refused.text
    assert answers[REGRESSOR].status_code == 200, answers[REGRESSOR].text


def test_status_lists_every_model_and_log_rows_hold_any_models_inputs(models_server: Server) -> None:
    status = httpx.get(f"{models_server.http}/status").json()["models"]
    assert set(status) == {MODEL, CLASSIFIER, REGRESSOR}
    assert all(state["ready"] and state["source"] == "registry" for state in status.values())
    assert status[REGRESSOR]["runtime"] == "pyfunc (sklearn)"
    assert httpx.get(f"{models_server.http}/v2/health/ready").json() == {"ready": True}

    answer = oip(models_server, REGRESSOR, good_regressor_inputs())
    request_id = answer.headers["x-request-id"]
    models_server.stop()  # graceful: the last rows are written
    log = read_frame(create_engine(f"sqlite:///{Path(models_server.env['VIGIL_HOME']) / 'inference_log.db'}"),
                     kind="model", model_name=REGRESSOR)
    mine = log[log["request_id"] == request_id]
    assert len(mine) == 2
    assert mine.iloc[0]["inputs"]["day"] == "Sun" and mine.iloc[0]["inputs"]["size"] == 2
    assert mine["outputs"].tolist() == [o for o in answer.json()["outputs"][0]["data"]]
