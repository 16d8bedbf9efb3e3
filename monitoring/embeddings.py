"""Text-embedder vectors for the drift job, with a content-addressed cache under ``$VIGIL_HOME``.

The vectors are `text-embedder`'s (:class:`vigil.embedding.TextEmbedder`, the encoder RAG embeds with), named by
the registered version RAG records. Embedding is the job's expensive step (bench/RESULTS.md, drift section), and
the same texts come back: the reference on every run, overlapping windows of a schedule, repeated requests.
Vectors are therefore stored by (embedder version, text) hash and computed only for texts never seen before.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from vigil.credentials import ensure_private_dir
from vigil.embedding import EMBEDDING_DIM, TextEmbedder, resolve_registered_version
from vigil.settings import Settings

logger = logging.getLogger(__name__)

# Larger batches than a RAG query's: the job embeds hundreds of texts at once.
BATCH_SIZE = 64


def drift_embedder(settings: Settings) -> TextEmbedder:
    """`text-embedder` at the serving alias, as RAG resolves it; ``unregistered`` when MLflow cannot say."""
    name = settings.embedder_model_name
    version = resolve_registered_version(name, alias=settings.serve_alias, tracking_uri=settings.mlflow_tracking_uri)
    return _embedder(name, version)


@lru_cache(maxsize=1)
def _embedder(name: str, version: str) -> TextEmbedder:
    # One loaded encoder per process: a schedule's runs reuse it until the registered version changes.
    return TextEmbedder(name=name, version=version, batch_size=BATCH_SIZE)


def encode(embedder: TextEmbedder, texts: Sequence[str]) -> np.ndarray:
    """``embedder``'s vectors for ``texts`` (n, 384), computed on one torch thread.

    One thread: the job shares its machine with the service, and torch's spinning worker threads collapse when
    the cores are busy (bench/RESULTS.md, drift section, "Where the time goes"). It also leaves the service a core.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return embedder.embed(texts)
    finally:
        torch.set_num_threads(threads)


class EmbeddingCache:
    """(embedder version, text) → vector, in one SQLite file; safe to share between a schedule and ad-hoc runs."""

    def __init__(self, path: Path, embedder: TextEmbedder) -> None:
        self.path = path
        self.embedder = embedder
        ensure_private_dir(path.parent)
        with self._connect() as connection:
            connection.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vector BLOB NOT NULL)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def _key(self, text: str) -> str:
        # The registered version is part of every key, so another encoder never reads stale vectors.
        return hashlib.sha256(f"{self.embedder.label}\0{text}".encode()).hexdigest()

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
            logger.info("embedding %d new texts with %s (%d cached)", len(missing), self.embedder.label,
                        len(set(keys)) - len(missing))
            vectors = encode(self.embedder, list(missing.values()))
            fresh = dict(zip(missing.keys(), vectors, strict=True))
            with self._connect() as connection:
                connection.executemany("INSERT OR REPLACE INTO vectors (key, vector) VALUES (?, ?)",
                                       [(key, vector.tobytes()) for key, vector in fresh.items()])
            found.update(fresh)
        if not keys:
            return np.zeros((0, EMBEDDING_DIM), np.float32)
        return np.stack([found[key] for key in keys])
