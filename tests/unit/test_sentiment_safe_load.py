"""Vigil's own model loads as data: no pickle opened, every file checked against the digest recorded at registration.

A version whose files differ from the record (one byte of the head or of the encoder's weights, a file added or
removed) is refused before anything of it is read, with the file named, and the model holder reports the refusal
where /status shows it.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NoReturn

import numpy as np
import pytest
import torch

from service import model_store
from service.model_store import ModelHolder
from vigil import model_cache, model_digest, registry
from vigil.model_digest import ArtifactMismatch, Manifest
from vigil.sentiment_model import (
    CLASSIFIER_ARTIFACT,
    CLASSIFIER_PATH,
    HEAD_FILE,
    LEGACY_HEAD_FILE,
    UNVERIFIED,
    SentimentClassifier,
    SentimentPyfunc,
    UnreadableModel,
    load_logged,
)

TEXTS = ["Great phone, the battery lasts for days.", "The food was cold and the waiter never came back."]


class Exploit:
    """A pickle that, when loaded, creates ``marker``: what a hostile python_model.pkl or head.pt could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (str(self.marker), "w")


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest, np.ndarray]:
    """A model folder as MLflow logs the sentiment model (pyfunc wrapper + classifier artifact), its manifest as
    training records it, and the classifier's own probabilities."""
    import mlflow.pyfunc

    torch.manual_seed(3)
    classifier = SentimentClassifier.from_pretrained_encoder()
    scratch = tmp_path_factory.mktemp("trained")
    folder = classifier.save(scratch / CLASSIFIER_ARTIFACT)
    manifest = model_digest.manifest_of(folder)
    model_dir = scratch / "model"
    mlflow.pyfunc.save_model(str(model_dir), python_model=SentimentPyfunc(),
                             artifacts={CLASSIFIER_ARTIFACT: str(folder)}, pip_requirements=["torch"])
    return model_dir, manifest, classifier.predict_proba(TEXTS)


def copy_of(model_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(model_dir, tmp_path / "copy"))


def flip_one_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def forbid(*_: object, **__: object) -> NoReturn:
    raise AssertionError("unpickling was attempted")


class NoUnpickler(pickle.Unpickler):
    def load(self) -> NoReturn:
        forbid()


@pytest.fixture
def no_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every way to unpickle fails the test: pickle's, torch's and MLflow's loaders."""
    import mlflow.pyfunc

    monkeypatch.setattr(pickle, "load", forbid)
    monkeypatch.setattr(pickle, "loads", forbid)
    monkeypatch.setattr(pickle, "Unpickler", NoUnpickler)
    monkeypatch.setattr(torch, "load", forbid)
    monkeypatch.setattr(mlflow.pyfunc, "load_model", forbid)


def test_the_saved_classifier_folder_holds_only_json_and_safetensors(logged: tuple[Path, Manifest, np.ndarray]) -> None:
    from safetensors import safe_open

    folder = logged[0] / CLASSIFIER_PATH
    names = sorted(path.name for path in folder.iterdir())
    assert HEAD_FILE in names and "model.safetensors" in names and LEGACY_HEAD_FILE not in names
    for path in folder.iterdir():
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as tensors:
                assert list(tensors.keys())
        else:
            assert path.suffix == ".json", f"{path.name} is neither JSON nor safetensors"
            json.loads(path.read_text())


@pytest.mark.usefixtures("no_pickle")
def test_a_logged_version_loads_and_predicts_without_unpickling_anything(
        logged: tuple[Path, Manifest, np.ndarray], tmp_path: Path) -> None:
    model_dir, manifest, probabilities = logged
    copy = copy_of(model_dir, tmp_path)
    marker = tmp_path / "code-ran"
    # MLflow's wrapper, replaced by a hostile pickle: Vigil never opens it (it is outside the digest on purpose).
    (copy / "python_model.pkl").write_bytes(pickle.dumps(Exploit(marker)))

    classifier = load_logged(copy, manifest)

    np.testing.assert_allclose(classifier.predict_proba(TEXTS), probabilities, atol=1e-6)
    assert classifier.integrity == f"verified ({manifest.digest})"
    assert not marker.exists()


@pytest.mark.parametrize(("change", "named"), [
    ("head", f"{HEAD_FILE} changed"),
    ("encoder", "model.safetensors changed"),
    ("added", "extra.json added"),
    ("removed", "tokenizer.json missing"),
])
def test_a_changed_file_is_refused_by_name_before_anything_is_read(
        logged: tuple[Path, Manifest, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        change: str, named: str) -> None:
    model_dir, manifest, _ = logged
    folder = copy_of(model_dir, tmp_path) / CLASSIFIER_PATH
    if change == "head":
        flip_one_byte(folder / HEAD_FILE, -1)  # the last byte: a weight, not the header
    elif change == "encoder":
        flip_one_byte(folder / "model.safetensors", (folder / "model.safetensors").stat().st_size // 2)
    elif change == "added":
        (folder / "extra.json").write_text("{}")
    else:
        (folder / "tokenizer.json").unlink()
    monkeypatch.setattr(SentimentClassifier, "load", forbid)  # the check comes before any read

    with pytest.raises(ArtifactMismatch, match=named):
        load_logged(folder.parent.parent, manifest)


def test_a_version_registered_before_digests_loads_unverified_and_its_legacy_head_runs_no_code(
        logged: tuple[Path, Manifest, np.ndarray], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    model_dir, _, probabilities = logged
    copy = copy_of(model_dir, tmp_path)
    folder = copy / CLASSIFIER_PATH
    torch.save(load_file(folder / HEAD_FILE), folder / LEGACY_HEAD_FILE)  # as versions were saved before
    (folder / HEAD_FILE).unlink()

    classifier = load_logged(copy, expected=None)
    np.testing.assert_allclose(classifier.predict_proba(TEXTS), probabilities, atol=1e-6)
    assert classifier.integrity == UNVERIFIED

    marker = tmp_path / "code-ran"
    (folder / LEGACY_HEAD_FILE).write_bytes(pickle.dumps(Exploit(marker), protocol=2))
    with pytest.raises(UnreadableModel, match=f"{LEGACY_HEAD_FILE} holds more than tensors"):
        load_logged(copy, expected=None)
    assert not marker.exists()


class RegistryTags:
    """The registry's tags of each version, as MlflowClient reads and writes them."""

    def __init__(self) -> None:
        self.tags: dict[tuple[str, str], dict[str, str]] = {}

    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self.tags.setdefault((name, version), {})[key] = value

    def get_model_version(self, name: str, version: str) -> SimpleNamespace:
        return SimpleNamespace(tags=dict(self.tags.get((name, version), {})))


def test_the_registry_record_is_the_reference_and_a_changed_record_is_refused(
        logged: tuple[Path, Manifest, np.ndarray]) -> None:
    manifest = logged[1]
    client: Any = RegistryTags()
    assert model_digest.recorded(client, "sentiment", "1") is None  # registered before digests

    model_digest.record(client, "sentiment", "1", manifest)
    assert model_digest.recorded(client, "sentiment", "1") == manifest

    forged = {**manifest.files, HEAD_FILE: "0" * 64}  # the file list changed to match other files, the digest not
    client.set_model_version_tag("sentiment", "1", model_digest.FILES_TAG, json.dumps(forged))
    with pytest.raises(ArtifactMismatch, match="is not the digest of"):
        model_digest.recorded(client, "sentiment", "1")
    client.set_model_version_tag("sentiment", "1", model_digest.FILES_TAG, "not json")
    with pytest.raises(ArtifactMismatch, match="not a list of files"):
        model_digest.recorded(client, "sentiment", "1")


# --- the model holder: what /status reports -------------------------------------------------------------------


class Registry(RegistryTags):
    """Where the alias points (None: MLflow away), and the folder each version downloads from."""

    def __init__(self) -> None:
        super().__init__()
        self.version: str | None = None
        self.folders: dict[str, Path] = {}

    def connect(self, *args: Any, **kwargs: Any) -> Registry:
        if self.version is None:
            from vigil.errors import MlflowUnavailable

            raise MlflowUnavailable("http://127.0.0.1:1", "ConnectError")
        return self

    def resolve(self, client: object, reference: registry.ModelReference) -> registry.RegisteredVersion:
        assert self.version is not None
        return registry.RegisteredVersion(reference.name, self.version, reference.alias, f"run-{self.version}")

    def download(self, client: object, name: str, version: str, cache_dir: Path | None = None) -> Path:
        target = model_cache.model_dir(name, cache_dir) / version
        if not target.exists():
            shutil.copytree(self.folders[version], target)
            (target / model_cache.COMPLETE_MARKER).touch()
        return target


@pytest.fixture
def mlflow_registry(monkeypatch: pytest.MonkeyPatch) -> Registry:
    stand_in = Registry()
    monkeypatch.setattr(registry, "connect", stand_in.connect)
    monkeypatch.setattr(registry, "resolve", stand_in.resolve)
    monkeypatch.setattr(model_cache, "download_version", stand_in.download)
    return stand_in


def test_the_holder_refuses_a_tampered_version_in_status_and_keeps_serving_the_verified_one(
        logged: tuple[Path, Manifest, np.ndarray], mlflow_registry: Registry, tmp_path: Path) -> None:
    model_dir, manifest, _ = logged
    tampered = copy_of(model_dir, tmp_path / "tampered")
    flip_one_byte(tampered / CLASSIFIER_PATH / HEAD_FILE, -1)
    mlflow_registry.folders = {"1": model_dir, "2": tampered}
    client: Any = mlflow_registry
    for version in ("1", "2"):  # the same record: v2 claims to be v1's files
        model_digest.record(client, "sentiment", version, manifest)
    mlflow_registry.version = "1"
    holder = ModelHolder("sentiment", "champion", tmp_path / "cache", poll_seconds=3600)

    holder.start()
    holder.stop()
    status = holder.describe()
    assert (status["version"], status["ready"], status["integrity"]) == ("1", True, f"verified ({manifest.digest})")

    mlflow_registry.version = "2"
    assert holder.poll_once() is False
    status = holder.describe()
    assert (status["version"], status["ready"]) == ("1", True)
    assert status["reason"].startswith("sentiment v2 refused: files differ from the digest recorded at registration")
    assert f"{HEAD_FILE} changed" in status["reason"] and status["reason"].endswith("; still serving v1")


def test_offline_the_cached_copy_is_checked_against_the_record_kept_when_it_was_verified(
        logged: tuple[Path, Manifest, np.ndarray], mlflow_registry: Registry, tmp_path: Path) -> None:
    model_dir, manifest, _ = logged
    mlflow_registry.folders = {"1": model_dir}
    client: Any = mlflow_registry
    model_digest.record(client, "sentiment", "1", manifest)
    mlflow_registry.version = "1"
    cache = tmp_path / "cache"
    ModelHolder("sentiment", "champion", cache, poll_seconds=3600).poll_once()

    mlflow_registry.version = None  # MLflow away: a restart serves the cached copy, still verified
    restarted = ModelHolder("sentiment", "champion", cache, poll_seconds=3600)
    restarted.start()
    restarted.stop()
    status = restarted.describe()
    assert (status["source"], status["integrity"]) == ("cache", f"verified ({manifest.digest})")

    flip_one_byte(cache / "sentiment" / "1" / CLASSIFIER_PATH / "model.safetensors", 4096)
    again = ModelHolder("sentiment", "champion", cache, poll_seconds=3600)
    again.start()
    again.stop()
    assert again.current is None and not again.status.ready
    assert "the cached copy did not load either" in again.status.reason
    assert "model.safetensors changed" in again.status.reason


@pytest.mark.usefixtures("no_pickle")
def test_the_holder_refuses_a_version_that_is_not_vigils_sentiment_model_without_unpickling_it(
        mlflow_registry: Registry, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "MLmodel").write_text("flavors: {}\n")
    (other / "python_model.pkl").write_bytes(pickle.dumps(Exploit(tmp_path / "code-ran")))
    mlflow_registry.folders = {"1": other}
    mlflow_registry.version = "1"
    holder = ModelHolder("sentiment", "champion", tmp_path / "cache", poll_seconds=3600)
    holder.start()
    holder.stop()
    assert holder.current is None
    assert holder.status.reason == ("sentiment v1 refused: the model has no artifacts/classifier: it is not a Vigil "
                                    "sentiment model")
    assert not (tmp_path / "code-ran").exists()
    assert model_store.VERIFIED_DIR not in {path.name for path in (tmp_path / "cache" / "sentiment").iterdir()}
