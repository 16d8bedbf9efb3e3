"""The alias follower: every change of the served model goes through one swap, counted and announced."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service import model_store
from service.model_store import ModelHolder, ModelRefused, Source, Swap
from service.pyfunc_service import load_pyfunc
from vigil import model_cache, model_digest, registry
from vigil.errors import MlflowUnavailable


class Registry:
    """Where the alias points, or None while MLflow is away."""

    def __init__(self) -> None:
        self.version: str | None = None

    def connect(self, *args: Any, **kwargs: Any) -> object:
        if self.version is None:
            raise MlflowUnavailable("http://127.0.0.1:1", "ConnectError")
        return object()

    def resolve(self, client: object, reference: registry.ModelReference) -> registry.RegisteredVersion:
        assert self.version is not None
        return registry.RegisteredVersion(reference.name, self.version, reference.alias, f"run-{self.version}")


@pytest.fixture
def mlflow(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Registry:
    stand_in = Registry()
    monkeypatch.setattr(registry, "connect", stand_in.connect)
    monkeypatch.setattr(registry, "resolve", stand_in.resolve)

    def download(client: object, name: str, version: str, cache_dir: Path | None = None) -> Path:
        folder = model_cache.model_dir(name, cache_dir) / version
        folder.mkdir(parents=True, exist_ok=True)
        (folder / model_cache.COMPLETE_MARKER).touch()
        return folder

    monkeypatch.setattr(model_cache, "download_version", download)
    # Each load gives a new object, so a swap can tell new weights from a relabelled model.
    monkeypatch.setattr(model_store, "load_logged", lambda folder, expected: object())
    monkeypatch.setattr(model_digest, "recorded", lambda client, name, version: None)
    return stand_in


def test_every_change_goes_through_one_swap(mlflow: Registry, tmp_path: Path) -> None:
    download = model_cache.download_version
    mlflow.version = "1"
    download(object(), "sentiment", "1", tmp_path)
    model_cache.remember("sentiment", "1", "champion", "run-1", tmp_path)
    mlflow.version = None
    swaps: list[Swap] = []
    holder = ModelHolder("sentiment", "champion", tmp_path, poll_seconds=3600, on_swap=swaps.append)

    holder.start()  # MLflow away: the last known good copy, degraded
    holder.stop()
    first = holder.require()
    assert (first.version, first.source, holder.status.degraded) == ("1", "cache", True)
    assert "MLflow unreachable" in holder.status.reason

    mlflow.version = "1"  # back, and it agrees: no new load, no longer degraded, still announced
    assert holder.poll_once() is False
    assert (holder.require().source, holder.status.degraded) == ("registry", False)
    assert holder.require().model is first.model

    mlflow.version = "2"  # the alias moved
    assert holder.poll_once() is True
    assert holder.poll_once() is False  # nothing moved since

    assert [(s.current.version, s.current.source, s.loaded, s.moved) for s in swaps] == [
        ("1", "cache", True, False), ("1", "registry", False, False), ("2", "registry", True, True)]
    assert (holder.status.loads, holder.status.swaps) == (2, 1)
    pointer = model_cache.last_known_good("sentiment", tmp_path)
    assert pointer is not None and pointer[0].version == "2"


def test_no_cache_and_no_mlflow_is_not_ready(mlflow: Registry, tmp_path: Path) -> None:
    swaps: list[Swap] = []
    holder = ModelHolder("sentiment", "champion", tmp_path, poll_seconds=3600, on_swap=swaps.append)
    holder.start()
    holder.stop()
    assert holder.current is None and not holder.status.ready and not swaps
    assert "no cached model" in holder.status.reason


def test_a_version_that_cannot_be_served_is_refused_with_the_reason_and_the_next_one_loads(
        mlflow: Registry, tmp_path: Path) -> None:
    loads: list[str] = []

    def loader(folder: Path, run_id: str, version: str, source: Source) -> object:
        loads.append(version)
        if version == "1":
            raise ModelRefused("the model has no signature")
        return object()

    mlflow.version = "1"
    holder = ModelHolder("tabular", "champion", tmp_path, poll_seconds=3600, loader=loader)
    holder.start()
    holder.stop()
    assert holder.current is None and not holder.status.ready
    assert holder.status.reason == "tabular v1 refused: the model has no signature"
    assert holder.poll_once() is False and loads == ["1"]  # refused once, not loaded again at every poll

    mlflow.version = "2"
    assert holder.poll_once() is True
    assert (holder.require().version, holder.status.ready, holder.status.reason) == ("2", True, "")
    assert model_cache.last_known_good("tabular", tmp_path) is not None


def test_load_pyfunc_refuses_a_model_logged_without_a_signature(tmp_path: Path) -> None:
    import mlflow.pyfunc

    class Doubler(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input):  # type: ignore[no-untyped-def]  # no hints: no signature
            return model_input * 2

    mlflow.pyfunc.save_model(str(tmp_path / "unsigned"), python_model=Doubler())
    with pytest.raises(ModelRefused, match="no signature"):
        load_pyfunc(tmp_path / "unsigned", "", "1", "registry")
