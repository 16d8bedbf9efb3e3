"""The RAG embedder: packaged MiniLM offline, and a registry version that never blocks RAG."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import free_port
from vigil.embedding import UNREGISTERED, TextEmbedder, resolve_registered_version


def test_version_is_unregistered_when_mlflow_does_not_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    assert resolve_registered_version("text-embedder") == UNREGISTERED


def test_version_is_resolved_once_and_lazily() -> None:
    calls: list[int] = []

    def resolve() -> str:
        calls.append(1)
        return "3"

    embedder = TextEmbedder(version=resolve)
    assert calls == []
    assert (embedder.version, embedder.version) == ("3", "3")
    assert calls == [1]


def test_embeddings_are_normalised_and_order_preserving() -> None:
    embedder = TextEmbedder(batch_size=2)
    texts = ["A long sentence about rivers, bridges and the towns along the Rhine.", "Short.", "Football game"]
    vectors = embedder.embed(texts)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vectors[1], embedder.embed_one("Short."), atol=1e-5)
    assert float(embedder.embed_one("Super Bowl final") @ vectors[2]) > float(
        embedder.embed_one("Super Bowl final") @ vectors[0])


def test_token_counts_exclude_special_tokens() -> None:
    embedder = TextEmbedder()
    assert embedder.count_tokens("") == 0
    assert embedder.count_tokens("hello world") == 2
    assert embedder.count_tokens_many(["hello world", "hello"]) == [2, 1]
    assert embedder.token_spans("hello world") == [(0, 5), (6, 11)]
