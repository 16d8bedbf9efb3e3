"""The served model: resolved by registry alias, cached locally, followed without downtime.

One :class:`ModelHolder` per model-service process. It resolves ``<name>@<alias>`` and downloads the version
through the core (:mod:`vigil.registry`, :mod:`vigil.model_cache`: a local copy of every version it loaded under
``$VIGIL_HOME/models/<name>/<version>`` plus a last-known-good pointer), and polls the alias: a moved alias loads
the new version in a background thread and swaps one reference. Requests take the reference once, so in-flight
work finishes on the model it started with.

Vigil's own model is read as data, never unpickled, and only after its files match the digest recorded when the
version was registered (:mod:`vigil.model_digest`); a version whose files differ is refused, and /status says which.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from vigil import model_cache, model_data, model_digest, registry
from vigil.credentials import ensure_private_dir
from vigil.errors import VigilError
from vigil.model_digest import ArtifactMismatch, Manifest
from vigil.reader_model import SpanReader, UnreadableReader
from vigil.reader_model import load_logged as load_reader
from vigil.sentiment_model import (
    EvaluationData,
    QuantizationVerdict,
    SentimentClassifier,
    UnreadableModel,
    choose_precision,
    evaluation_data,
    load_logged,
)

if TYPE_CHECKING:
    from telemetry.metrics import VigilMetrics

logger = logging.getLogger(__name__)

BUNDLE_META = "vigil_bundle.json"
# Beside the cached versions: the manifest each version was verified against, for loading it again offline.
VERIFIED_DIR = "verified"
# Where a served model came from: fresh from MLflow, the last known good copy, or inside a Bento.
Source = Literal["registry", "cache", "bundle"]


@dataclass(frozen=True)
class LoadedModel:
    name: str
    version: str
    alias: str
    run_id: str
    source: Source
    model: Any = field(repr=False)  # what the loader made of the version: Vigil's classifier, or a pyfunc model
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


@dataclass(frozen=True)
class Swap:
    """One change of the served reference, as the holder's callback sees it."""

    previous: LoadedModel | None
    current: LoadedModel
    loaded: bool  # new weights were loaded (False: the same model, only its source changed)
    moved: bool  # the served version changed


class BundleMeta(BaseModel):
    """What a Bento records about the model packed with it (written by :mod:`service.bento`)."""

    name: str
    version: str
    alias: str
    run_id: str = ""
    # The registry's digest record of the version, copied when the Bento was built; None: none was recorded.
    manifest: Manifest | None = None


@dataclass
class HolderStatus:
    ready: bool = False
    degraded: bool = False
    reason: str = "not loaded yet"
    loads: int = 0
    swaps: int = 0
    last_poll_error: str = ""


# (model folder, run id, version, where the folder came from) -> the loaded model; raises ModelRefused when the
# version cannot be served.
Loader = Callable[[Path, str, str, Source], Any]


class ModelRefused(VigilError):
    """A registered version that cannot be served (no signature, files unlike its digest); the reason goes to
    /status."""


def swap_counter(metrics: VigilMetrics) -> Callable[[Swap], None]:
    """An ``on_swap`` callback that counts loads (by where the version came from) and moves of the alias."""

    def count(swap: Swap) -> None:
        model = swap.current
        if swap.loaded:
            metrics.model_loads.labels(model=model.name, version=model.version, outcome=model.source).inc()
        if swap.moved:
            metrics.model_swaps.labels(model=model.name).inc()

    return count


class ModelHolder:
    """Holds the current model of one registered name and follows one alias.

    Every change of the served model goes through :meth:`_swap` — the first load, a moved alias, the fall back to
    the cache or the bundle, and the registry confirming a cached version — so the counters, the readiness and the
    ``on_swap`` callback never miss one.
    """

    def __init__(
        self,
        name: str,
        alias: str,
        cache_dir: Path,
        poll_seconds: float,
        bundle_dir: Path | None = None,
        on_swap: Callable[[Swap], None] | None = None,
        runtime: str = "torch",
        threads: int = 1,
        loader: Loader | None = None,
        quantize: bool = False,
        shadow: bool = False,
        optional: bool = False,
    ) -> None:
        self.name = name
        self.alias = alias
        self.cache_root = cache_dir
        self.cache_dir = model_cache.model_dir(name, cache_dir)
        self.poll_seconds = poll_seconds
        self.bundle_dir = bundle_dir
        self.on_swap = on_swap
        self.runtime = runtime
        self.threads = threads
        self.quantize = quantize  # consider the INT8 graph on ONNX (served only when it scores as well)
        # A shadow holder (service/shadow.py) follows the challenger's alias: it never touches the last-known-good
        # pointer (that is the served version's, for a restart without MLflow) and never falls back to a cached or
        # packed copy.
        self.shadow = shadow
        # An optional model (the shadow's, the RAG reader) may have no version under its alias: the holder then
        # serves nothing, and lets go of its model when the alias is removed rather than keep the last one.
        self.optional = optional or shadow
        self._loader: Loader = loader or self._load_sentiment
        self._refused_version: str | None = None  # loaded once and refused: not loaded again until the alias moves
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
            if self.shadow:
                self.status.ready = False
                self.status.reason = f"{self.name}@{self.alias} not loaded: {error}"
                logger.warning(self.status.reason)
            else:
                try:
                    self._fall_back(str(error))
                except Exception as fallback_error:  # a service without its model still starts, and says why
                    self.status.ready = False
                    self.status.reason = f"{error}; the cached copy did not load either: {fallback_error}"
                    logger.exception(self.status.reason)
        if self._poller is None:
            self._poller = threading.Thread(target=self._poll_forever, name=f"alias-poller-{self.name}", daemon=True)
            self._poller.start()

    def stop(self) -> None:
        self._stop.set()

    def poll_once(self) -> bool:
        """Check the alias once; load and swap when it points elsewhere. Returns True when new weights loaded."""
        client = registry.connect()
        try:
            found = registry.resolve(client, registry.ModelReference(self.name, alias=self.alias))
        except registry.ModelNotFound as missing:
            if not self.optional:
                raise
            with self._load_lock:
                if self._current is not None:
                    logger.info("%s@%s removed: dropping v%s", self.name, self.alias, self._current.version)
                self._current = None
                self.status.ready = False
                self.status.reason = f"no {self.name}@{self.alias} to serve: {missing}"
            return False
        with self._load_lock:
            current = self._current
            if current is not None and current.version == found.version:
                if current.source == "cache":
                    # Served from cache while MLflow was away; the registry agrees, so it is no longer degraded.
                    self._swap(replace(current, source="registry"))
                return False
            if found.version == self._refused_version:
                return False
            model_dir = model_cache.download_version(client, self.name, found.version, self.cache_root)
            run_id = found.run_id or ""
            try:
                loaded = self._loader(model_dir, run_id, found.version, "registry")
            except ModelRefused as refused:
                self._refuse(found.version, str(refused))
                return False
            self._refused_version = None
            self._swap(LoadedModel(self.name, found.version, self.alias, run_id, "registry", loaded))
            if not self.shadow:
                model_cache.remember(self.name, found.version, self.alias, run_id, self.cache_root)
        return True

    def _refuse(self, version: str, reason: str) -> None:
        """``version`` cannot be served: say why, and keep serving what is served (if anything)."""
        self._refused_version = version
        current = self._current
        self.status.reason = f"{self.name} v{version} refused: {reason}" + (
            f"; still serving v{current.version}" if current is not None else "")
        logger.error(self.status.reason)

    def _load_sentiment(self, model_dir: Path, run_id: str, version: str, source: Source) -> SentimentClassifier:
        """Vigil's classifier in ``model_dir``, read as data (never through MLflow's pickled wrapper) after its files
        are checked against the digest recorded for the version; on the configured runtime, torch when the ONNX
        path fails. Files unlike the digest refuse the version, naming them."""
        classifier: SentimentClassifier = self._read_checked(load_logged, model_dir, version, source,
                                                             (ArtifactMismatch, UnreadableModel))
        key = run_id or f"v{version}"
        if self.runtime == "onnx":
            onnx_path = self.cache_dir / "onnx" / f"{key}.onnx"
            try:
                # Exported once per run id into the cache, never into the model folder (a Bento's is read-only).
                classifier.use_onnx(onnx_path, self.threads)
            except Exception:
                logger.exception("ONNX Runtime unavailable for %s; serving with torch", key)
            else:
                if self.quantize:
                    self._choose_precision(classifier, onnx_path, version, source)
        return classifier

    def _choose_precision(self, classifier: SentimentClassifier, onnx_path: Path, version: str,
                          source: Source) -> None:
        """INT8 when it scores as well as float on the version's own test split; a failure here serves float."""
        def evaluation() -> EvaluationData | None:
            from vigil.settings import get_settings

            attached = model_data.load_attached(get_settings(), registry.connect(), self.name, version, "evaluation")
            if attached is None:
                return None
            frame, info = attached
            return evaluation_data(frame, info.fingerprint, info.target)

        try:
            # Without MLflow (cache, bundle) only a verdict kept from an earlier load can choose INT8.
            choose_precision(classifier, onnx_path, self.threads, evaluation if source == "registry" else None)
        except Exception as error:
            logger.exception("the INT8 check of %s v%s failed; serving float", self.name, version)
            classifier.quantization = QuantizationVerdict(precision="float", reason=f"the INT8 check failed: {error}")

    def _read_checked(self, read: Callable[[Path, Manifest | None], Any], model_dir: Path, version: str,
                      source: Source, refusals: tuple[type[Exception], ...]) -> Any:
        """``read(model_dir, expected)`` after the version's recorded digest manifest is found; ``refusals`` (files
        unlike the digest, an unreadable model) refuse the version. A manifest read from the registry is kept for
        a restart without MLflow."""
        try:
            expected = self._recorded_manifest(version, source)
            model = read(model_dir, expected)
        except refusals as refused:
            raise ModelRefused(str(refused)) from None
        if expected is not None and source == "registry":
            self._remember_manifest(version, expected)
        return model

    def _recorded_manifest(self, version: str, source: Source) -> Manifest | None:
        """What ``version``'s files are checked against: the registry's record; without MLflow, the copy of it kept
        when the version was verified (cache) or packed into the Bento (bundle)."""
        if source == "registry":
            return model_digest.recorded(registry.connect(), self.name, version)
        if source == "cache":
            kept = self.cache_dir / VERIFIED_DIR / f"{version}.json"
            return Manifest.model_validate_json(kept.read_text()) if kept.exists() else None
        assert self.bundle_dir is not None
        return BundleMeta.model_validate_json((self.bundle_dir / BUNDLE_META).read_text()).manifest

    def _remember_manifest(self, version: str, manifest: Manifest) -> None:
        kept = self.cache_dir / VERIFIED_DIR / f"{version}.json"
        ensure_private_dir(kept.parent)
        staging = kept.with_name(f".{kept.name}.partial")
        staging.write_text(manifest.model_dump_json(indent=2))
        staging.replace(kept)  # a reader sees the whole record or none

    def _swap(self, new: LoadedModel, reason: str = "") -> None:
        """Serve ``new``: the one place the reference changes, counted and announced."""
        previous = self._current
        self._current = new  # one reference assignment: requests see the old or the new model, never half
        swap = Swap(previous, new, loaded=previous is None or new.model is not previous.model,
                    moved=previous is not None and previous.version != new.version)
        if swap.loaded:
            self.status.loads += 1
        if swap.moved:
            assert previous is not None
            self.status.swaps += 1
            logger.info("%s@%s moved: v%s → v%s", self.name, self.alias, previous.version, new.version)
        else:
            logger.info("%s@%s serving v%s (%s)", self.name, self.alias, new.version, new.source)
        # A cached copy is served in degraded mode (it may be stale); the registry's or a Bento's is not.
        self._mark_ready(degraded=new.source == "cache", reason=reason)
        if self.on_swap is not None:
            self.on_swap(swap)

    def _fall_back(self, error: str) -> None:
        """MLflow did not answer: serve the last known good copy, else the Bento's own, else stay not ready."""
        cached = model_cache.last_known_good(self.name, self.cache_root)
        if cached is not None:
            pointer, model_dir = cached
            reason = f"MLflow unreachable ({error}); serving cached v{pointer.version}"
            logger.warning(reason)
            self._swap(LoadedModel(self.name, pointer.version, self.alias, pointer.run_id, "cache",
                                   self._loader(model_dir, pointer.run_id, pointer.version, "cache")),
                       reason=reason)
            return
        if self.bundle_dir is not None and (self.bundle_dir / "MLmodel").exists():
            meta = BundleMeta.model_validate_json((self.bundle_dir / BUNDLE_META).read_text())
            self._swap(LoadedModel(self.name, meta.version, meta.alias or self.alias, meta.run_id, "bundle",
                                   self._loader(self.bundle_dir, meta.run_id, meta.version, "bundle")))
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
                current = self._current
                if current is not None:
                    logger.warning("alias poll failed, still serving v%s: %s", current.version, error)
                elif not self.shadow:
                    try:
                        self._fall_back(str(error))
                    except Exception:
                        logger.exception("loading the cached model failed")

    def _precision(self, model: LoadedModel | None) -> dict[str, Any]:
        """The served graph's precision and why: both macro-F1s and their difference when INT8 was checked."""
        precision = getattr(model.model, "precision", None) if model else None
        verdict: QuantizationVerdict | None = getattr(model.model, "quantization", None) if model else None
        if verdict is not None:
            return {"precision": precision, "quantization": verdict.model_dump()}
        reason = "off (VIGIL_MODEL_QUANTIZE=false)" if not self.quantize else "INT8 needs the onnx runtime"
        return {"precision": precision, "quantization": {"precision": precision, "reason": reason}
                if precision is not None else None}

    def describe(self) -> dict[str, Any]:
        model = self._current
        return {
            "name": self.name,
            "alias": self.alias,
            "version": model.version if model else None,
            "run_id": model.run_id if model else None,
            "source": model.source if model else None,
            "runtime": getattr(model.model, "runtime", None) if model else None,
            **self._precision(model),
            # Vigil's own model: whether its files matched the digest recorded at registration.
            "integrity": getattr(model.model, "integrity", None) if model else None,
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


class ReaderHolder(ModelHolder):
    """Follows the RAG span reader (``rag-reader@<alias>``), an optional model: while the alias names no version the
    holder serves nothing and the RAG service answers with its extractive generator. A removed alias drops the
    reader rather than keeping the last one, and never brings back a cached copy: the registry says none is wanted.
    Files are checked against the version's digest like the classifier's, then the reader runs on ONNX Runtime
    when the runtime asks for it (torch when the export fails its check)."""

    def __init__(self, name: str, alias: str, cache_dir: Path, poll_seconds: float, runtime: str = "torch",
                 threads: int = 1) -> None:
        super().__init__(name, alias, cache_dir, poll_seconds, runtime=runtime, threads=threads,
                         loader=self._load_reader, optional=True)

    def _load_reader(self, model_dir: Path, run_id: str, version: str, source: Source) -> SpanReader:
        reader: SpanReader = self._read_checked(load_reader, model_dir, version, source,
                                                (ArtifactMismatch, UnreadableReader))
        if self.runtime == "onnx":
            try:
                # Exported once per run id into the cache, as the classifier is.
                reader.use_onnx(self.cache_dir / "onnx" / f"{run_id or f'v{version}'}.onnx", self.threads)
            except Exception:
                logger.exception("ONNX Runtime unavailable for %s v%s; reading with torch", self.name, version)
        return reader
