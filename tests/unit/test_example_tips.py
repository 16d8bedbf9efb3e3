"""examples/train_tips.py, the user's own script, trains and registers what it says against a local SQLite MLflow."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.models import get_model_info
from mlflow.tracking import fluent
from mlflow.tracking._model_registry import utils as registry_utils
from mlflow.tracking._tracking_service import utils as tracking_utils

from tests.conftest import REPO_ROOT

# `size` is a long on purpose (the signature should say so); MLflow hints that integers cannot hold missing values.
pytestmark = pytest.mark.filterwarnings("ignore:Hint. Inferred schema contains integer column:UserWarning")

SCRIPT = REPO_ROOT / "examples" / "train_tips.py"
MLFLOW_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID")

EXPECTED_INPUTS = {
    "tips-time": {
        "total_bill": "double",
        "tip": "double",
        "sex": "string",
        "smoker": "string",
        "day": "string",
        "size": "long",
    },
    "tips-tip": {
        "total_bill": "double",
        "sex": "string",
        "smoker": "string",
        "day": "string",
        "time": "string",
        "size": "long",
    },
}


def load_script() -> ModuleType:
    """The example is a script, not a package: import it from its path."""
    spec = importlib.util.spec_from_file_location("train_tips", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return load_script()


@pytest.fixture(scope="module")
def registered(script: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Train once for the module into a SQLite store under a temporary directory; leave MLflow's globals as found.

    The script sets the tracking and registry URIs and the experiment, as a user's script does: MLflow keeps them in
    module globals and mirrors them into environment variables for subprocesses.
    """
    home = tmp_path_factory.mktemp("tips-mlflow")
    tracking_before = tracking_utils._tracking_uri  # None unless something set it: then MLflow falls back as usual
    registry_before = registry_utils._registry_uri
    environment_before = {variable: os.environ.get(variable) for variable in MLFLOW_VARIABLES}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(home)  # with a SQLite URI, artifacts land in ./mlruns
        patch.setattr(fluent, "_active_experiment_id", fluent._active_experiment_id)
        try:
            yield script.train_and_register(f"sqlite:///{home}/mlflow.db")
        finally:
            mlflow.set_tracking_uri(tracking_before)  # None unsets it and resets MLflow's tracer provider
            mlflow.set_registry_uri(registry_before)
            for variable, value in environment_before.items():
                if value is None:
                    os.environ.pop(variable, None)
                else:
                    os.environ[variable] = value
    assert mlflow.active_run() is None


def test_the_script_imports_only_what_a_user_has() -> None:
    source = SCRIPT.read_text(encoding="utf-8")
    lines = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    imported = {line.split()[1].split(".")[0] for line in lines} - set(sys.stdlib_module_names) - {"__future__"}
    assert imported == {"mlflow", "numpy", "pandas", "plotly", "sklearn"}


def test_the_dataset_is_plotlys_tips_with_explicit_dtypes(script: ModuleType) -> None:
    tips = script.load_tips()
    assert len(tips) == 244
    assert {column: str(dtype) for column, dtype in tips.dtypes.items()} == {
        "total_bill": "float64",
        "tip": "float64",
        "sex": "object",
        "smoker": "object",
        "day": "object",
        "time": "object",
        "size": "int64",
    }


@pytest.mark.slow  # the module's store: ~5 s of training and registering on an idle 2-core machine
def test_both_models_are_registered_with_the_champion_alias(registered: dict[str, str]) -> None:
    assert registered == {"tips-time": "1", "tips-tip": "1"}
    client = mlflow.MlflowClient()
    for name, version in registered.items():
        assert str(client.get_model_version_by_alias(name, "champion").version) == version
    assert mlflow.active_run() is None


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tips-time", "tips-tip"])
def test_each_signature_names_the_columns_with_their_mlflow_types(registered: dict[str, str], name: str) -> None:
    signature = get_model_info(f"models:/{name}/{registered[name]}").signature
    assert signature is not None
    assert {column.name: column.type.name for column in signature.inputs.inputs} == EXPECTED_INPUTS[name]


@pytest.mark.slow
def test_the_classifier_says_lunch_or_dinner_and_mostly_right(registered: dict[str, str], script: ModuleType) -> None:
    tips = script.load_tips()
    predicted = np.asarray(mlflow.pyfunc.load_model("models:/tips-time@champion").predict(tips[script.TIME_FEATURES]))
    assert set(predicted) <= {"Lunch", "Dinner"}
    # measured 0.967 on all 244 rows (0.951 on the held-out quarter); always "Dinner" would score 0.721
    assert (predicted == tips["time"].to_numpy()).mean() > 0.93


@pytest.mark.slow
def test_the_regressor_predicts_finite_tips_close_enough(registered: dict[str, str], script: ModuleType) -> None:
    tips = script.load_tips()
    predicted = np.asarray(mlflow.pyfunc.load_model("models:/tips-tip@champion").predict(tips[script.TIP_FEATURES]))
    assert predicted.shape == (244,) and np.isfinite(predicted).all()
    # measured MAE 0.744 on all 244 rows (0.697 on the held-out quarter); predicting the mean tip gives 1.033
    assert np.abs(predicted - tips["tip"].to_numpy()).mean() < 0.85


def test_each_models_split_is_written_as_csv_with_its_target_last(script: ModuleType, tmp_path: Path) -> None:
    tips = script.load_tips()
    written = script.write_splits(tips, tmp_path / "tips-data")
    assert sorted(path.name for path in written) == [
        "tips-time-test.csv", "tips-time-train.csv", "tips-tip-test.csv", "tips-tip-train.csv"]
    models = (("tips-time", script.TIME_FEATURES, "time"), ("tips-tip", script.TIP_FEATURES, "tip"))
    for name, features, target in models:
        train = pd.read_csv(tmp_path / "tips-data" / f"{name}-train.csv")
        test = pd.read_csv(tmp_path / "tips-data" / f"{name}-test.csv")
        assert list(train.columns) == [*features, target] and list(test.columns) == [*features, target]
        assert (len(train), len(test)) == (183, 61)
        # the rows training held out: together they are the whole dataset, each row once
        merged = pd.concat([train, test]).sort_values([*features, target]).reset_index(drop=True)
        whole = tips[[*features, target]].sort_values([*features, target]).reset_index(drop=True)
        pd.testing.assert_frame_equal(merged, whole, check_dtype=False)
