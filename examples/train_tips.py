"""Train two small scikit-learn models on the "tips" dataset and register them in MLflow.

Written the way a user who knows MLflow and scikit-learn, and nothing of Vigil, would write it:

* ``tips-time``, a classifier: was the meal "Lunch" or "Dinner"?
* ``tips-tip``, a regressor: how much was the tip?

Each is logged with a signature and an input example, registered under its name, and the new version gets the alias
``champion`` (or the one given with ``--alias``). Each model's training and test rows (its features and its target)
are written as CSV files to ``--data-dir``, for whatever comes next: a drift reference, an evaluation, a replay.

    python examples/train_tips.py [--tracking-uri URI] [--alias champion] [--data-dir tips-data]

The tracking URI defaults to $MLFLOW_TRACKING_URI, else http://127.0.0.1:5000.
"""

from __future__ import annotations

import argparse
import os
from importlib import metadata
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import plotly.data
from mlflow.models import infer_signature
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, mean_squared_error, r2_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

EXPERIMENT = "tips"
SEED = 42
TEST_SIZE = 0.25

FLOAT_COLUMNS = ["total_bill", "tip"]
INT_COLUMNS = ["size"]
STRING_COLUMNS = ["sex", "smoker", "day", "time"]

# What the models need to load and predict, pinned to the versions they were trained with (MLflow saves scikit-learn
# models with skops).
REQUIRED_PACKAGES = ("mlflow", "scikit-learn", "skops", "scipy", "pandas", "numpy")
PIP_REQUIREMENTS = [f"{package}=={metadata.version(package)}" for package in REQUIRED_PACKAGES]

TIME_MODEL = "tips-time"
TIME_FEATURES = ["total_bill", "tip", "sex", "smoker", "day", "size"]
TIP_MODEL = "tips-tip"
TIP_FEATURES = ["total_bill", "sex", "smoker", "day", "time", "size"]


def load_tips() -> pd.DataFrame:
    """The 244-row tips dataset bundled with plotly, with explicit dtypes so the signatures say double/long/string."""
    tips: pd.DataFrame = plotly.data.tips()
    tips[FLOAT_COLUMNS] = tips[FLOAT_COLUMNS].astype("float64")
    tips[INT_COLUMNS] = tips[INT_COLUMNS].astype("int64")
    tips[STRING_COLUMNS] = tips[STRING_COLUMNS].astype(str)
    return tips


def make_pipeline(features: list[str], estimator: LogisticRegression | Ridge) -> Pipeline:
    """One-hot encode the string columns and scale the numeric ones in front of ``estimator``."""
    categorical = [column for column in features if column in STRING_COLUMNS]
    numeric = [column for column in features if column not in STRING_COLUMNS]
    preprocess = ColumnTransformer(
        [
            ("categorical", OneHotEncoder(handle_unknown="ignore"), categorical),
            ("numeric", StandardScaler(), numeric),
        ]
    )
    return Pipeline([("preprocess", preprocess), ("model", estimator)])


def log_and_register(model: Pipeline, x_train: pd.DataFrame, name: str, metrics: dict[str, float]) -> str:
    """Log ``model`` in its own run of the current experiment, register it as ``name``; return the new version."""
    with mlflow.start_run(run_name=name):
        mlflow.log_params({"features": ",".join(x_train.columns), "seed": SEED, "test_size": TEST_SIZE})
        mlflow.log_metrics(metrics)
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(x_train, model.predict(x_train)),
            input_example=x_train.head(5),
            registered_model_name=name,
            # Pinned here rather than inferred: inference loads the model in a subprocess (seconds), and would pin
            # every package that happens to be imported in this environment.
            pip_requirements=PIP_REQUIREMENTS,
        )
    return str(info.registered_model_version)


def split(tips: pd.DataFrame, target: str, stratify: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The training and test rows of one model (the same split its training uses)."""
    train, test = train_test_split(tips, test_size=TEST_SIZE, random_state=SEED,
                                   stratify=tips[target] if stratify else None)
    return train, test


def train_time_classifier(tips: pd.DataFrame) -> tuple[Pipeline, pd.DataFrame, dict[str, float]]:
    x, y = tips[TIME_FEATURES], tips["time"]
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=TEST_SIZE, random_state=SEED, stratify=y)
    model = make_pipeline(TIME_FEATURES, LogisticRegression(max_iter=1000))
    model.fit(x_train, y_train)
    predicted = model.predict(x_test)
    metrics = {
        "accuracy": float(accuracy_score(y_test, predicted)),
        "f1_macro": float(f1_score(y_test, predicted, average="macro")),
    }
    return model, x_train, metrics


def train_tip_regressor(tips: pd.DataFrame) -> tuple[Pipeline, pd.DataFrame, dict[str, float]]:
    x, y = tips[TIP_FEATURES], tips["tip"]
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=TEST_SIZE, random_state=SEED)
    model = make_pipeline(TIP_FEATURES, Ridge(alpha=1.0))
    model.fit(x_train, y_train)
    predicted = model.predict(x_test)
    metrics = {
        "mae": float(mean_absolute_error(y_test, predicted)),
        "rmse": float(np.sqrt(mean_squared_error(y_test, predicted))),
        "r2": float(r2_score(y_test, predicted)),
    }
    return model, x_train, metrics


def write_splits(tips: pd.DataFrame, data_dir: Path) -> list[Path]:
    """Each model's training and test rows, its features then its target, as ``<model>-train.csv`` / ``-test.csv``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, features, target, stratify in ((TIME_MODEL, TIME_FEATURES, "time", True),
                                             (TIP_MODEL, TIP_FEATURES, "tip", False)):
        for part, rows in zip(("train", "test"), split(tips, target, stratify), strict=True):
            path = data_dir / f"{name}-{part}.csv"
            rows[[*features, target]].to_csv(path, index=False)
            written.append(path)
    return written


def train_and_register(tracking_uri: str, alias: str = "champion") -> dict[str, str]:
    """Train both models, register them and point ``alias`` at the new versions; return {model name: version}."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    mlflow.set_experiment(EXPERIMENT)
    client = mlflow.MlflowClient()
    tips = load_tips()

    versions: dict[str, str] = {}
    for name, train in ((TIME_MODEL, train_time_classifier), (TIP_MODEL, train_tip_regressor)):
        model, x_train, metrics = train(tips)
        version = log_and_register(model, x_train, name, metrics)
        client.set_registered_model_alias(name, alias, version)
        versions[name] = version
        shown = ", ".join(f"{metric}={value:.3f}" for metric, value in metrics.items())
        print(f"registered {name} version {version} as @{alias}: test {shown}")  # noqa: T201
    return versions


def main() -> None:
    parser = argparse.ArgumentParser(description="Train and register the tips models in MLflow.")
    parser.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI") or "http://127.0.0.1:5000",
        help="MLflow tracking server (default: $MLFLOW_TRACKING_URI, else http://127.0.0.1:5000)",
    )
    parser.add_argument("--alias", default="champion", help="alias to point at the new versions (default: champion)")
    parser.add_argument("--data-dir", type=Path, default=Path("tips-data"),
                        help="where each model's training and test rows go as CSV (default: ./tips-data)")
    args = parser.parse_args()
    train_and_register(args.tracking_uri, args.alias)
    written = write_splits(load_tips(), args.data_dir)
    print(f"wrote {', '.join(str(path) for path in written)}")  # noqa: T201


if __name__ == "__main__":
    main()
