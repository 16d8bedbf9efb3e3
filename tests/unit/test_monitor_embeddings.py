"""The drift job's embeddings: the registered text-embedder RAG uses, cached under the version that made them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from monitoring.embeddings import EmbeddingCache, drift_embedder
from tests.conftest import free_port
from tests.unit.test_monitor_tokens import settings_for
from vigil.embedding import UNREGISTERED, TextEmbedder


class CountingEmbedder(TextEmbedder):
    """A text-embedder that records what it is asked to embed, and answers without loading weights."""

    def __init__(self, version: str) -> None:
        super().__init__(version=version)
        self.asked: list[list[str]] = []

    def embed(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        self.asked.append(list(texts))
        return np.stack([np.full(self.dimension, len(t), np.float32) for t in texts])


def test_vectors_are_computed_once_per_text_and_version(tmp_path: Path) -> None:
    path = tmp_path / "embeddings.sqlite"
    three = CountingEmbedder("3")
    first = EmbeddingCache(path, three).embed(["a", "bb", "a"])
    again = EmbeddingCache(path, three).embed(["bb", "a"])
    assert three.asked == [["a", "bb"]]
    assert first.shape == (3, 384) and np.array_equal(again, first[[1, 0]])

    four = CountingEmbedder("4")  # another registered version never reads version 3's vectors
    EmbeddingCache(path, four).embed(["a"])
    assert four.asked == [["a"]]


def test_the_drift_embedder_is_named_like_rags_when_mlflow_is_down(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    embedder = drift_embedder(settings_for(tmp_path))
    assert (embedder.name, embedder.version) == ("text-embedder", UNREGISTERED)
    assert embedder.label == "text-embedder vunregistered"
