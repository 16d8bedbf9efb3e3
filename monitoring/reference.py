"""Which model version serves, and the drift reference its training run logged, cached under ``$VIGIL_HOME``.

The reference is immutable per version (it is an artifact of the version's run), so once downloaded it is read
from the cache and the drift job of a pinned ``--version`` runs even while MLflow is down.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from vigil import registry
from vigil.credentials import ensure_private_dir
from vigil.errors import MlflowUnavailable, VigilError
from vigil.settings import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

# Where training logs the reference inside the version's run (training.sentiment writes it; monitoring may not
# import training, so the path is repeated here).
REFERENCE_ARTIFACT = "drift_reference/reference.parquet"


@dataclass(frozen=True)
class ServedVersion:
    model_name: str
    version: str
    run_id: str
    alias: str | None  # the alias it was resolved from, None when pinned with --version


def cache_dir(settings: Settings, model_name: str, version: str) -> Path:
    return settings.home / "monitoring" / "references" / model_name / str(version)


def resolve_version(
    settings: Settings, model_name: str, version: str | None, alias: str | None = None
) -> tuple[ServedVersion, MlflowClient | None]:
    """The version to watch: ``version`` when given, else the one the serving alias points at (``alias``, by
    default ``VIGIL_SERVE_ALIAS``: sentiment's; a model of VIGIL_MODELS passes its own, ``settings.alias_of``).

    Without ``version`` the registry must answer (:class:`MlflowUnavailable` otherwise); with it, a cached
    reference is enough, so the client returned may be None.
    """
    if version is not None:
        cached = _read_meta(settings, model_name, version)
        try:
            client = registry.connect(settings.mlflow_tracking_uri)
        except MlflowUnavailable:
            if cached:
                logger.warning("MLflow unreachable; using the cached reference of %s v%s", model_name, version)
                return ServedVersion(model_name, str(version), cached, None), None
            raise
        found = registry.resolve(client, registry.ModelReference(model_name, version=str(version)))
        return ServedVersion(model_name, found.version, str(found.run_id), None), client
    client = registry.connect(settings.mlflow_tracking_uri)
    alias = alias or settings.serve_alias
    try:
        served = registry.resolve(client, registry.ModelReference(model_name, alias=alias))
    except registry.ModelNotFound:
        raise VigilError(f"{model_name}@{alias} does not exist: train and promote a version, "
                         "or pass --version.") from None
    return ServedVersion(model_name, served.version, str(served.run_id), alias), client


def load_reference(settings: Settings, served: ServedVersion, client: MlflowClient | None) -> pd.DataFrame:
    """The drift reference of ``served``'s run, downloaded once and then read from the cache."""
    directory = cache_dir(settings, served.model_name, served.version)
    cached = directory / Path(REFERENCE_ARTIFACT).name
    if not cached.exists():
        if client is None:
            raise VigilError(f"no cached drift reference for {served.model_name} v{served.version} and MLflow is "
                             "not reachable.")
        from mlflow.exceptions import MlflowException

        ensure_private_dir(directory)
        with tempfile.TemporaryDirectory() as scratch:
            try:
                downloaded = client.download_artifacts(served.run_id, REFERENCE_ARTIFACT, scratch)
            except (MlflowException, OSError) as error:
                raise VigilError(f"run {served.run_id} of {served.model_name} v{served.version} has no "
                                 f"{REFERENCE_ARTIFACT} ({type(error).__name__}); retrain the version.") from None
            # Copy then rename, so a job killed mid-download never leaves a truncated cache behind.
            partial = cached.with_suffix(".partial")
            shutil.copyfile(downloaded, partial)
            partial.replace(cached)
        (directory / "meta.json").write_text(json.dumps({"run_id": served.run_id}))
        logger.info("cached the drift reference of %s v%s in %s", served.model_name, served.version, directory)
    return pd.read_parquet(cached)


def _read_meta(settings: Settings, model_name: str, version: str) -> str | None:
    meta = cache_dir(settings, model_name, version) / "meta.json"
    if not meta.exists() or not (meta.parent / Path(REFERENCE_ARTIFACT).name).exists():
        return None
    return str(json.loads(meta.read_text()).get("run_id", "")) or None
