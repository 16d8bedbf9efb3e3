"""Datasets attached to a model version — its drift reference and its evaluation data — for any MLflow model.

A dataset is a table of the model's input columns (and, optionally, its target), checked against the version's
signature, fingerprinted, and stored with the version's run in MLflow as ``vigil_data/<role>.parquet`` beside a
``<role>.json`` description. Two ways in, one layout:

- ``vigil models reference NAME --data FILE`` (:func:`attach`) after the fact, for a model trained by anyone;
- :func:`log_dataset` from training code, inside the run that logs the model.

The drift job reads the ``reference`` role, the evaluation and the promotion gate the ``evaluation`` role
(:func:`load_attached`), each cached under ``$VIGIL_HOME/datasets`` by fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from vigil.credentials import ensure_private_dir
from vigil.errors import VigilError
from vigil.signature import ModelSignatureSpec, signature_spec

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.models import ModelSignature

    from vigil.settings import Settings

Role = Literal["reference", "evaluation"]
ROLES: tuple[Role, ...] = ("reference", "evaluation")
ARTIFACT_DIR = "vigil_data"
# Version tags naming the attached dataset; a re-attach changes the fingerprint, which invalidates the cache.
FINGERPRINT_TAG = "vigil.data.{role}.fingerprint"
RUN_TAG = "vigil.data.{role}.run_id"
DATASETS_EXPERIMENT = "vigil-datasets"  # for versions registered without a run of their own

NUMERIC_TYPES = {"double", "float", "long", "integer"}
INTEGER_TYPES = {"long", "integer"}


class DatasetRefused(VigilError):
    """A table that does not fit the model's signature; ``column`` names the column at fault."""

    def __init__(self, message: str, column: str | None = None) -> None:
        super().__init__(message)
        self.column = column


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is: its role, target, size, columns and fingerprint, and where it came from."""

    role: str
    target: str | None
    rows: int
    columns: list[str]
    fingerprint: str
    source: str


def read_table(path: Path) -> pd.DataFrame:
    """A CSV or Parquet file as a DataFrame; a clear error for anything else."""
    if not path.is_file():
        raise VigilError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix in {".csv", ".txt"}:
            return pd.read_csv(path)
    except (ValueError, OSError) as unreadable:
        raise VigilError(f"{path}: not a readable {suffix[1:]} table ({unreadable})") from None
    raise VigilError(f"{path}: give a .csv or .parquet file")


def fingerprint(frame: pd.DataFrame) -> str:
    """A digest of the table's columns and values (row order included), stable across runs and machines."""
    digest = hashlib.sha256(json.dumps([str(c) for c in frame.columns]).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def version_spec(client: MlflowClient, name: str, version: str) -> ModelSignatureSpec:
    """The signature of ``name`` v``version``, read from its MLmodel file without loading the model."""
    from mlflow.models import Model

    source = client.get_model_version_download_uri(name, version)
    with tempfile.TemporaryDirectory() as scratch:
        import mlflow.artifacts

        path = mlflow.artifacts.download_artifacts(artifact_uri=f"{source.rstrip('/')}/MLmodel", dst_path=scratch,
                                                   tracking_uri=client.tracking_uri)
        return signature_spec(Model.load(path).signature)


def conform(frame: pd.DataFrame, spec: ModelSignatureSpec, target: str | None = None) -> pd.DataFrame:
    """``frame`` as the model's input columns typed by its signature (signature order), then the target.

    Refused with the column's name: a missing input, a column the model does not have (other than ``target``), a
    value the column's type cannot hold. Only column signatures can be checked column by column.
    """
    if spec.tensor_based:
        raise DatasetRefused("the model has a tensor signature: only column-based models take a table")
    if target is not None and target not in frame.columns:
        raise DatasetRefused(f"target column {target!r} is not in the table; it has {list(frame.columns)}", target)
    inputs = {field.name: field for field in spec.inputs}
    missing = [name for name, field in inputs.items() if field.required and name not in frame.columns]
    if missing:
        raise DatasetRefused(f"missing column(s) {missing}: the model takes {list(inputs)}", missing[0])
    unknown = [str(c) for c in frame.columns if c not in inputs and c != target]
    if unknown:
        raise DatasetRefused(f"column(s) {unknown} are not inputs of the model (it takes {list(inputs)}); "
                             "drop them, or name the target with --target", unknown[0])
    if frame.empty:
        raise DatasetRefused("the table has no rows")
    typed = pd.DataFrame(index=frame.index)
    for name, field in inputs.items():
        if name in frame.columns:
            typed[name] = _typed_column(frame[name], name, field.mlflow_type)
    if target is not None:
        typed[target] = frame[target]
        if typed[target].isna().any():
            raise DatasetRefused(f"target column {target!r} has empty values", target)
    return typed.reset_index(drop=True)


def _typed_column(values: pd.Series, name: str, mlflow_type: str) -> pd.Series:
    if mlflow_type in NUMERIC_TYPES:
        numbers = pd.to_numeric(values, errors="coerce")
        bad = values.notna() & numbers.isna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DatasetRefused(f"column {name!r} row {row}: {values.iloc[row]!r} is not a number "
                                 f"({mlflow_type})", name)
        if mlflow_type in INTEGER_TYPES:
            present = numbers.dropna()
            if not np.all(np.equal(np.mod(present, 1), 0)):
                raise DatasetRefused(f"column {name!r} holds fractions; the model takes {mlflow_type}", name)
            return numbers.astype("Int64" if numbers.isna().any() else "int64")
        return numbers.astype("float64")
    if mlflow_type == "boolean":
        if not values.map(lambda v: isinstance(v, bool | np.bool_) or v is None).all():
            raise DatasetRefused(f"column {name!r} holds non-boolean values", name)
        return values.astype(bool)
    return values.map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))


def describe(frame: pd.DataFrame, role: Role, target: str | None, source: str) -> DatasetInfo:
    return DatasetInfo(role=role, target=target, rows=len(frame), columns=[str(c) for c in frame.columns],
                       fingerprint=fingerprint(frame), source=source)


def _write(directory: Path, frame: pd.DataFrame, info: DatasetInfo) -> None:
    frame.to_parquet(directory / f"{info.role}.parquet", index=False)
    (directory / f"{info.role}.json").write_text(json.dumps(asdict(info), indent=2))


def log_dataset(frame: pd.DataFrame, *, role: Role = "reference", target: str | None = None,
                signature: ModelSignature | None = None, source: str = "training") -> DatasetInfo:
    """Log ``frame`` as the ``role`` dataset of the active MLflow run — from training code, before the model
    version is registered from that run. With ``signature`` (the one the model is logged with) it is checked and
    typed as :func:`attach` would."""
    import mlflow

    if mlflow.active_run() is None:
        raise VigilError("log_dataset needs an active MLflow run: call it inside `with mlflow.start_run():`")
    if role not in ROLES:
        raise VigilError(f"role must be one of {ROLES}")
    table = conform(frame, signature_spec(signature), target) if signature is not None else frame.reset_index(drop=True)
    info = describe(table, role, target, source)
    with tempfile.TemporaryDirectory() as scratch:
        _write(Path(scratch), table, info)
        mlflow.log_artifacts(scratch, ARTIFACT_DIR)
    return info


def attach(client: MlflowClient, name: str, version: str, frame: pd.DataFrame, *, role: Role,
           target: str | None, source: str) -> tuple[DatasetInfo, str]:
    """Check ``frame`` against ``name`` v``version``'s signature and store it with the version's run.

    Returns the dataset's description and the run that holds it (a run of experiment `vigil-datasets` when the
    version was registered without one). The version's tags name the run and the fingerprint.
    """
    if role not in ROLES:
        raise VigilError(f"role must be one of {ROLES}")
    table = conform(frame, version_spec(client, name, version), target)
    info = describe(table, role, target, source)
    found = client.get_model_version(name, version)
    run_id = found.run_id
    if not run_id:
        from vigil import registry

        experiment = registry.experiment_id(DATASETS_EXPERIMENT, uri=client.tracking_uri)
        run_id = client.create_run(experiment, run_name=f"{name} v{version} datasets").info.run_id
        client.set_terminated(run_id)
    with tempfile.TemporaryDirectory() as scratch:
        _write(Path(scratch), table, info)
        client.log_artifacts(run_id, scratch, ARTIFACT_DIR)
    client.set_model_version_tag(name, version, RUN_TAG.format(role=role), run_id)
    client.set_model_version_tag(name, version, FINGERPRINT_TAG.format(role=role), info.fingerprint)
    return info, str(run_id)


def load_attached(settings: Settings, client: MlflowClient | None, name: str, version: str,
                  role: Role) -> tuple[pd.DataFrame, DatasetInfo] | None:
    """The ``role`` dataset of ``name`` v``version``, or None when none is attached.

    Read from ``$VIGIL_HOME/datasets`` when the cached copy has the fingerprint the version's tags name (or, with
    MLflow unreachable — ``client`` None — whatever copy is cached).
    """
    directory = settings.home / "datasets" / name / str(version)
    cached_info = directory / f"{role}.json"
    if client is None:
        if not cached_info.exists():
            return None
        return _read(directory, role)
    from mlflow.exceptions import MlflowException

    tags = client.get_model_version(name, version).tags
    run_id = tags.get(RUN_TAG.format(role=role)) or client.get_model_version(name, version).run_id
    wanted = tags.get(FINGERPRINT_TAG.format(role=role))
    if cached_info.exists() and (wanted is None or json.loads(cached_info.read_text())["fingerprint"] == wanted):
        return _read(directory, role)
    if not run_id:
        return None
    with tempfile.TemporaryDirectory() as scratch:
        try:
            downloaded = Path(client.download_artifacts(run_id, ARTIFACT_DIR, scratch))
        except (MlflowException, OSError):
            return None
        if not (downloaded / f"{role}.json").exists():
            return None
        ensure_private_dir(directory)
        for suffix in (".parquet", ".json"):  # copy, then rename: a killed job never leaves half a file
            partial = directory / f"{role}{suffix}.partial"
            shutil.copyfile(downloaded / f"{role}{suffix}", partial)
            partial.replace(directory / f"{role}{suffix}")
    return _read(directory, role)


def _read(directory: Path, role: str) -> tuple[pd.DataFrame, DatasetInfo]:
    info = DatasetInfo(**json.loads((directory / f"{role}.json").read_text()))
    return pd.read_parquet(directory / f"{role}.parquet"), info
