"""The served model: resolved by registry alias, cached locally, followed without downtime.

One :class:`ModelHolder` per model-service process. It loads ``models:/<name>@<alias>``, keeps a local copy of every
version it loaded under ``$VIGIL_HOME/models/<name>/<version>`` plus a last-known-good pointer, and polls the alias:
a moved alias loads the new version in a background thread and swaps one reference. Requests take the reference
once, so in-flight work finishes on the model it started with.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vigil import registry
from vigil.errors import VigilError
from vigil.sentiment_model import SentimentClassifier

logger = logging.getLogger(__name__)

LAST_KNOWN_GOOD = "last_known_good.json"
COMPLETE_MARKER = ".complete"


@dataclass(frozen=True)
class LoadedModel:
    name: str
    version: str
    alias: str
    run_id: str
    source: str  # "registry" (fresh from MLflow), "cache" (last known good) or "bundle" (inside a Bento)
    classifier: SentimentClassifier = field(repr=False)
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


@dataclass
class HolderStatus:
    ready: bool = False
    degraded: bool = False
    reason: str = "not loaded yet"
    loads: int = 0
    swaps: int = 0
    last_poll_error: str = ""


def load_model_dir(model_dir: Path) -> SentimentClassifier:
    """Load a downloaded MLflow model folder through MLflow's own loader, then take its classifier."""
    import mlflow.pyfunc

    pyfunc_model = mlflow.pyfunc.load_model(str(model_dir))
    classifier = pyfunc_model.unwrap_python_model().classifier
    if not isinstance(classifier, SentimentClassifier):
        raise VigilError(f"{model_dir} is not a Vigil sentiment model")
    return classifier


class ModelHolder:
    """Holds the current model of one registered name and follows one alias."""

    def __init__(
        self,
        name: str,
        alias: str,
        cache_dir: Path,
        poll_seconds: float,
        bundle_dir: Path | None = None,
        on_swap: Any = None,
        runtime: str = "torch",
        threads: int = 1,
    ) -> None:
        self.name = name
        self.alias = alias
        self.cache_dir = cache_dir / name
        self.poll_seconds = poll_seconds
        self.bundle_dir = bundle_dir
        self.on_swap = on_swap
        self.runtime = runtime
        self.threads = threads
        self.status = HolderStatus()
        self._current: LoadedModel | None = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._load_lock = threading.Lock()

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    def require(self) -> LoadedModel:
        model = self._current
        if model is None:
            raise VigilError(f"{self.name} is not loaded: {self.status.reason}")
        return model

    # --- loading ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Load the alias (or the last known good copy) and start following the alias."""
        try:
            self.poll_once()
        except Exception as error:
            self._fall_back(str(error))
        if self._poller is None:
            self._poller = threading.Thread(target=self._poll_forever, name=f"alias-poller-{self.name}", daemon=True)
            self._poller.start()

    def stop(self) -> None:
        self._stop.set()

    def poll_once(self) -> bool:
        """Check the alias once; load and swap when it points elsewhere. Returns True on a swap."""
        client = registry.connect()
        version = client.get_model_version_by_alias(self.name, self.alias)
        current = self._current
        if current is not None and current.version == str(version.version) and current.source != "cache":
            return False
        if current is not None and current.version == str(version.version):
            # Served from cache while MLflow was away; the registry agrees, so it is no longer degraded.
            self._current = LoadedModel(self.name, current.version, self.alias, current.run_id, "registry",
                                        current.classifier)
            self._mark_ready(degraded=False, reason="")
            return False
        with self._load_lock:
            model_dir = self._download(str(version.version))
            classifier = self._load(model_dir, version.run_id or "", str(version.version))
            loaded = LoadedModel(self.name, str(version.version), self.alias, version.run_id or "", "registry",
                                 classifier)
            self._swap(loaded)
            self._remember(loaded)
        return True

    def _download(self, version: str) -> Path:
        import mlflow.artifacts

        target = self.cache_dir / version
        if (target / COMPLETE_MARKER).exists():
            return target
        staging = self.cache_dir / f".{version}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{self.name}/{version}", dst_path=str(staging),
                                            tracking_uri=registry.tracking_uri())
        (staging / COMPLETE_MARKER).touch()
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        return target

    def _load(self, model_dir: Path, run_id: str, version: str) -> SentimentClassifier:
        """The classifier in ``model_dir``, on the configured runtime; torch when the ONNX path fails."""
        classifier = load_model_dir(model_dir)
        key = run_id or f"v{version}"
        if self.runtime == "onnx":
            try:
                # Exported once per run id into the cache, never into the model folder (a Bento's is read-only).
                classifier.use_onnx(self.cache_dir / "onnx" / f"{key}.onnx", self.threads)
            except Exception:
                logger.exception("ONNX Runtime unavailable for %s; serving with torch", key)
        return classifier

    def _swap(self, loaded: LoadedModel) -> None:
        previous = self._current
        self._current = loaded  # one reference assignment: requests see the old or the new model, never half
        self.status.loads += 1
        if previous is not None and previous.version != loaded.version:
            self.status.swaps += 1
            logger.info("%s@%s moved: v%s → v%s", self.name, self.alias, previous.version, loaded.version)
        else:
            logger.info("%s@%s loaded: v%s (%s)", self.name, self.alias, loaded.version, loaded.source)
        self._mark_ready(degraded=loaded.source == "cache",
                         reason="" if loaded.source != "cache" else self.status.reason)
        if self.on_swap is not None:
            self.on_swap(previous, loaded)

    def _remember(self, loaded: LoadedModel) -> None:
        pointer = {"name": loaded.name, "version": loaded.version, "alias": loaded.alias, "run_id": loaded.run_id,
                   "saved_at": datetime.now(UTC).isoformat(timespec="seconds")}
        (self.cache_dir / LAST_KNOWN_GOOD).write_text(json.dumps(pointer, indent=2))

    def _fall_back(self, error: str) -> None:
        pointer_file = self.cache_dir / LAST_KNOWN_GOOD
        if pointer_file.exists():
            pointer = json.loads(pointer_file.read_text())
            model_dir = self.cache_dir / pointer["version"]
            reason = f"MLflow unreachable ({error}); serving cached v{pointer['version']}"
            self.status.reason = reason
            logger.warning(reason)
            loaded = LoadedModel(self.name, pointer["version"], self.alias, pointer.get("run_id", ""), "cache",
                                 self._load(model_dir, pointer.get("run_id", ""), pointer["version"]))
            self._swap(loaded)
            return
        if self.bundle_dir is not None and (self.bundle_dir / "MLmodel").exists():
            meta = json.loads((self.bundle_dir / "vigil_bundle.json").read_text())
            loaded = LoadedModel(self.name, meta["version"], meta.get("alias", self.alias), meta.get("run_id", ""),
                                 "bundle",
                                 self._load(self.bundle_dir, meta.get("run_id", ""), meta["version"]))
            self._swap(loaded)
            self._mark_ready(degraded=False, reason="")
            return
        self.status.ready = False
        self.status.reason = f"no cached model and MLflow unreachable: {error}"
        logger.error(self.status.reason)

    def _mark_ready(self, degraded: bool, reason: str) -> None:
        self.status.ready = True
        self.status.degraded = degraded
        self.status.reason = reason

    def _poll_forever(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll_once()
                self.status.last_poll_error = ""
            except Exception as error:
                self.status.last_poll_error = str(error)
                if self._current is None:
                    try:
                        self._fall_back(str(error))
                    except Exception:
                        logger.exception("loading the cached model failed")
                else:
                    logger.warning("alias poll failed, still serving v%s: %s", self._current.version, error)

    def describe(self) -> dict[str, Any]:
        model = self._current
        return {
            "name": self.name,
            "alias": self.alias,
            "version": model.version if model else None,
            "run_id": model.run_id if model else None,
            "source": model.source if model else None,
            "runtime": model.classifier.runtime if model else None,
            "loaded_at": model.loaded_at if model else None,
            "ready": self.status.ready,
            "degraded": self.status.degraded,
            "reason": self.status.reason,
            "loads": self.status.loads,
            "swaps": self.status.swaps,
            "last_poll_error": self.status.last_poll_error,
            "poll_seconds": self.poll_seconds,
            "checked_at": time.time(),
        }
