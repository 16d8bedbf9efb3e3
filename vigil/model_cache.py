"""The local copy of registered model versions, and the last-known-good pointer a service restarts from.

Layout under the cache root (``Settings.model_cache_dir``, ``$VIGIL_HOME/models``)::

    <name>/<version>/              one MLflow model folder, whole once it holds ``.complete``
    <name>/last_known_good.json    the version last loaded from the registry (name, version, alias, run id)

A version is downloaded once and never changes (registry versions are immutable), so a complete folder is reused
as it is. The pointer is what lets a service start with MLflow unreachable: it serves the version it last had.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from vigil.credentials import ensure_private_dir
from vigil.settings import get_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

LAST_KNOWN_GOOD = "last_known_good.json"
COMPLETE_MARKER = ".complete"


class LastKnownGood(BaseModel):
    """The pointer file: which version of ``name`` a restart without MLflow serves."""

    name: str
    version: str
    alias: str
    run_id: str = ""
    saved_at: str = ""


def model_dir(name: str, cache_dir: Path | None = None) -> Path:
    """The folder of ``name``'s cached versions (and anything else cached per model, e.g. ONNX exports)."""
    return (cache_dir or get_settings().model_cache_dir) / name


def download_version(client: MlflowClient, name: str, version: str, cache_dir: Path | None = None) -> Path:
    """The local MLflow model folder of ``name`` v``version``, downloaded through ``client`` unless cached.

    The download lands in a private staging folder renamed into place when whole, so a crash leaves no half
    model behind and two processes fetching the same version do not step on each other.
    """
    import mlflow.artifacts

    root = model_dir(name, cache_dir)
    target = root / str(version)
    if (target / COMPLETE_MARKER).exists():
        return target
    ensure_private_dir(root)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", suffix=".partial", dir=root))
    try:
        # The tracking URI is passed explicitly: MLflow would otherwise resolve `mlflow-artifacts:` locations
        # against its process-wide URI.
        # MLflow puts a folder's files under a sub-folder named like the folder's last path part; it says which.
        downloaded = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=_artifact_location(client, name, str(version)), dst_path=str(staging),
            tracking_uri=client.tracking_uri))
        (downloaded / COMPLETE_MARKER).touch()
        if (target / COMPLETE_MARKER).exists():
            return target  # another process finished first; its copy is the same version
        shutil.rmtree(target, ignore_errors=True)  # an incomplete copy from before a crash
        try:
            downloaded.rename(target)
        except OSError:
            if not (target / COMPLETE_MARKER).exists():
                raise  # not a race lost to another process
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _artifact_location(client: MlflowClient, name: str, version: str) -> str:
    """Where the files of a version live, asked through ``client``.

    Not ``models:/name/version``: MLflow resolves that form against its process-wide registry URI only.
    """
    location = str(client.get_model_version_download_uri(name, version))
    if location.startswith("models:/"):
        # MLflow 3 may answer with the logged model behind the version; its artifacts hold the files.
        model_id = location.removeprefix("models:/").split("/", 1)[0]
        location = str(client.get_logged_model(model_id).artifact_location)
    return location


def remember(name: str, version: str, alias: str, run_id: str, cache_dir: Path | None = None) -> None:
    """Record ``name`` v``version`` as the last known good one (after it loaded from the registry)."""
    pointer = LastKnownGood(name=name, version=str(version), alias=alias, run_id=run_id,
                            saved_at=datetime.now(UTC).isoformat(timespec="seconds"))
    root = model_dir(name, cache_dir)
    ensure_private_dir(root)
    staging = root / f".{LAST_KNOWN_GOOD}.partial"
    staging.write_text(pointer.model_dump_json(indent=2))
    staging.replace(root / LAST_KNOWN_GOOD)  # a reader sees the old pointer or the new one, never half


def last_known_good(name: str, cache_dir: Path | None = None) -> tuple[LastKnownGood, Path] | None:
    """The last known good version of ``name`` and its folder, or None when there is no whole cached copy."""
    root = model_dir(name, cache_dir)
    pointer_file = root / LAST_KNOWN_GOOD
    if not pointer_file.exists():
        return None
    try:
        pointer = LastKnownGood.model_validate_json(pointer_file.read_text())
    except ValidationError:
        logger.warning("%s is unreadable; ignoring it", pointer_file)
        return None
    folder = root / pointer.version
    if not (folder / COMPLETE_MARKER).exists():
        logger.warning("%s names v%s, which is not in the cache", pointer_file, pointer.version)
        return None
    return pointer, folder


def load_predictor(client: MlflowClient, name: str, version: str,
                   cache_dir: Path | None = None) -> Callable[[Any], Any]:
    """``name`` v``version``'s predict function, loaded in this process through the cache.

    Vigil's sentiment model is read as data, checked against the digest recorded at registration; any other version
    is loaded by MLflow, which unpickles its code (README, "Trust"). The one way for jobs and evaluations to load one.
    """
    import mlflow.pyfunc

    from vigil.sentiment_model import SentimentPyfunc, load_registered, texts_from_input

    folder = download_version(client, name, version, cache_dir)
    classifier = load_registered(client, name, version, folder)
    if classifier is None:
        predict: Callable[[Any], Any] = mlflow.pyfunc.load_model(str(folder)).predict
        return predict
    loaded = classifier

    def predict_sentiment(inputs: Any) -> Any:
        return SentimentPyfunc.output_frame(loaded.predict(texts_from_input(inputs)))

    return predict_sentiment
