"""Datasets attached to a model version: checked against the signature, fingerprinted, stored with the run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.models import infer_signature
from mlflow.tracking._model_registry import utils as registry_utils
from sklearn.linear_model import LinearRegression

from vigil import model_data
from vigil.errors import VigilError
from vigil.settings import Settings
from vigil.signature import FieldSpec, ModelSignatureSpec

pytestmark = pytest.mark.filterwarnings("ignore:Hint. Inferred schema contains integer column:UserWarning")

SPEC = ModelSignatureSpec(
    inputs=[FieldSpec("bill", "FP64", [-1], "double"), FieldSpec("size", "INT64", [-1], "long"),
            FieldSpec("day", "BYTES", [-1], "string")],
    outputs=[], tensor_based=False,
)


def table(**overrides: list[object]) -> pd.DataFrame:
    columns: dict[str, list[object]] = {"bill": [10.5, 20.0], "size": [2, 3], "day": ["Sun", "Sat"],
                                        "tip": [1.5, 3.0]}
    columns.update(overrides)
    return pd.DataFrame(columns)


def test_a_table_is_typed_in_signature_order_with_its_target_last() -> None:
    conformed = model_data.conform(table(size=["2", "3"])[["tip", "day", "size", "bill"]], SPEC, target="tip")
    assert list(conformed.columns) == ["bill", "size", "day", "tip"]
    assert str(conformed["size"].dtype) == "int64" and conformed["size"].tolist() == [2, 3]
    assert conformed["day"].tolist() == ["Sun", "Sat"]


@pytest.mark.parametrize(("frame", "target", "column"), [
    (table().drop(columns=["size"]), "tip", "size"),  # an input missing
    (table(extra=[1, 2]), "tip", "extra"),  # a column the model does not have
    (table(), None, "tip"),  # the target not named: it is not an input
    (table(), "label", "label"),  # a target that is not there
    (table(bill=["ten", 20.0]), "tip", "bill"),  # not a number
    (table(size=[2.5, 3]), "tip", "size"),  # a fraction in a long column
    (table(tip=[1.0, None]), "tip", "tip"),  # a target without a value
])
def test_what_does_not_fit_the_signature_is_refused_by_name(frame: pd.DataFrame, target: str | None,
                                                            column: str) -> None:
    with pytest.raises(model_data.DatasetRefused) as refused:
        model_data.conform(frame, SPEC, target=target)
    assert refused.value.column == column
    assert repr(column) in str(refused.value)


def test_a_tensor_signature_takes_no_table() -> None:
    tensors = ModelSignatureSpec(inputs=[FieldSpec("x", "FP32", [-1, 4], "float32")], outputs=[], tensor_based=True)
    with pytest.raises(model_data.DatasetRefused, match="tensor signature"):
        model_data.conform(table(), tensors)


def test_the_fingerprint_follows_values_and_order_not_the_index() -> None:
    frame = table()
    assert model_data.fingerprint(frame) == model_data.fingerprint(frame.set_axis([7, 9]))
    assert model_data.fingerprint(frame) != model_data.fingerprint(frame.iloc[::-1].reset_index(drop=True))
    assert model_data.fingerprint(frame) != model_data.fingerprint(table(tip=[1.5, 3.01]))


def test_csv_and_parquet_are_read_and_other_files_refused(tmp_path: Path) -> None:
    frame = table()
    frame.to_csv(tmp_path / "rows.csv", index=False)
    frame.to_parquet(tmp_path / "rows.parquet", index=False)
    (tmp_path / "rows.json").write_text("{}")
    pd.testing.assert_frame_equal(model_data.read_table(tmp_path / "rows.csv"), frame)
    pd.testing.assert_frame_equal(model_data.read_table(tmp_path / "rows.parquet"), frame)
    with pytest.raises(VigilError, match=r"csv or \.parquet"):
        model_data.read_table(tmp_path / "rows.json")
    with pytest.raises(VigilError, match="no such file"):
        model_data.read_table(tmp_path / "missing.csv")


@pytest.fixture
def registered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[mlflow.MlflowClient, str]]:
    """A regressor logged and registered with plain MLflow in a SQLite store of its own; MLflow's globals restored."""
    monkeypatch.chdir(tmp_path)  # a SQLite store keeps its artifacts in ./mlruns
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # An earlier test may have left MLflow's global registry URI pointing at its own store: set both, restore both.
    before = mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI"), registry_utils._registry_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    frame = table().drop(columns=["day"])
    features = frame[["bill", "size"]]
    model = LinearRegression().fit(features, frame["tip"])
    try:
        with mlflow.start_run():
            mlflow.sklearn.log_model(model, name="model", signature=infer_signature(features, model.predict(features)),
                                     registered_model_name="bills")
        yield mlflow.MlflowClient(uri), uri
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[2])
        if before[1] is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.mark.slow  # logs and registers a model (a few seconds)
def test_a_dataset_attaches_to_the_versions_run_and_loads_back_from_the_cache(
        registered: tuple[mlflow.MlflowClient, str], tmp_path: Path) -> None:
    client, _ = registered
    settings = Settings(home=tmp_path / "home")
    assert model_data.load_attached(settings, client, "bills", "1", "reference") is None
    frame = pd.DataFrame({"tip": [1.0, 2.0, 3.0], "size": [1, 2, 3], "bill": [5.0, 11.0, 14.0]})
    info, run_id = model_data.attach(client, "bills", "1", frame, role="reference", target="tip", source="rows.csv")
    assert run_id == client.get_model_version("bills", "1").run_id
    assert info.rows == 3 and info.columns == ["bill", "size", "tip"] and info.target == "tip"
    tags = client.get_model_version("bills", "1").tags
    assert tags[model_data.FINGERPRINT_TAG.format(role="reference")] == info.fingerprint

    loaded = model_data.load_attached(settings, client, "bills", "1", "reference")
    assert loaded is not None and loaded[1] == info
    np.testing.assert_allclose(loaded[0]["bill"], [5.0, 11.0, 14.0])
    # MLflow unreachable: the cached copy answers; another role was never attached.
    cached = model_data.load_attached(settings, None, "bills", "1", "reference")
    assert cached is not None and cached[1].fingerprint == info.fingerprint
    assert model_data.load_attached(settings, client, "bills", "1", "evaluation") is None

    # Re-attached with other rows: the new fingerprint replaces the cached copy.
    info2, _ = model_data.attach(client, "bills", "1", frame.iloc[:2], role="reference", target="tip", source="b.csv")
    reloaded = model_data.load_attached(settings, client, "bills", "1", "reference")
    assert reloaded is not None and reloaded[1].fingerprint == info2.fingerprint != info.fingerprint
    assert len(reloaded[0]) == 2


@pytest.mark.slow
def test_a_column_the_model_lacks_is_refused_at_attach(registered: tuple[mlflow.MlflowClient, str]) -> None:
    client, _ = registered
    frame = pd.DataFrame({"tip": [1.0], "size": [1], "bill": [5.0], "day": ["Sun"]})
    with pytest.raises(model_data.DatasetRefused, match="'day'"):
        model_data.attach(client, "bills", "1", frame, role="reference", target="tip", source="rows.csv")


@pytest.mark.slow
def test_training_code_logs_the_same_dataset_inside_its_run(tmp_path: Path,
                                                           registered: tuple[mlflow.MlflowClient, str]) -> None:
    client, _ = registered
    frame = pd.DataFrame({"bill": [5.0, 11.0], "size": [1, 2], "tip": [1.0, 2.0]})
    features = frame[["bill", "size"]]
    model = LinearRegression().fit(features, frame["tip"])
    signature = infer_signature(features, model.predict(features))
    with mlflow.start_run():
        info = model_data.log_dataset(frame, role="evaluation", target="tip", signature=signature)
        logged = mlflow.sklearn.log_model(model, name="model", signature=signature, registered_model_name="bills")
    version = str(logged.registered_model_version)
    assert version == "2"  # the fixture's store: its first version is the fixture's own
    loaded = model_data.load_attached(Settings(home=tmp_path / "home"), client, "bills", version, "evaluation")
    assert loaded is not None and loaded[1].fingerprint == info.fingerprint and loaded[1].source == "training"
    with pytest.raises(VigilError, match="active MLflow run"):
        model_data.log_dataset(frame)
