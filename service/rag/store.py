"""The chunk store: one Milvus collection reached through ``pymilvus.MilvusClient``.

The same code serves Milvus Lite (a local ``.db`` path, the default under ``$VIGIL_HOME/milvus``) and a Milvus
server or Zilliz Cloud (an ``http(s)://`` URI with a token). Search is hybrid by default: a dense HNSW search over
the MiniLM vectors and a BM25 full-text search over the chunk text (a Milvus schema function, so Milvus computes
the sparse vectors on insert and on query), fused with reciprocal-rank fusion. SQuAD-style questions are lexical,
and BM25 catches the rare names and numbers a small dense encoder blurs.

Milvus Lite is single-process: one process owns the directory (a file lock). Open one store per process and
close it when done; a second process gets :class:`StoreUnavailable`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from service.rag.chunking import Chunk
from service.rag.errors import StoreUnavailable
from service.rag.schemas import StoreStats
from vigil.credentials import ensure_private_dir, mask_url

if TYPE_CHECKING:
    from pymilvus import MilvusClient

    from vigil.settings import Settings

logger = logging.getLogger(__name__)

STORE_MILVUS_LITE = "milvus-lite"
STORE_MILVUS = "milvus"

# Field names of the collection.
ID = "id"
DOCUMENT_ID = "document_id"
TITLE = "title"
SOURCE = "source"
TEXT = "text"
CHUNK_INDEX = "chunk_index"
MODEL_VERSION = "embedding_model_version"
DENSE = "embedding"
SPARSE = "sparse"
OUTPUT_FIELDS = [DOCUMENT_ID, TITLE, SOURCE, TEXT, MODEL_VERSION]
# Fused (RRF) scores only encode ranks; the chunk vectors come back too, so every hit also carries its cosine
# similarity to the question, a score that means the same across modes and over time (retrieval-health drift).
HYBRID_OUTPUT_FIELDS = [*OUTPUT_FIELDS, DENSE]

# VARCHAR limits are bytes in Milvus; longer values are clipped on a character boundary.
MAX_ID_BYTES = 64
MAX_DOCUMENT_ID_BYTES = 2048
MAX_TITLE_BYTES = 2048
MAX_SOURCE_BYTES = 4096
MAX_TEXT_BYTES = 65535
MAX_VERSION_BYTES = 128

# HNSW: faster than FLAT in Milvus Lite at this corpus size with the same top-5 (bench/RESULTS.md, "RAG": "Choices
# the numbers made"), and the index a Milvus server would choose too. ef is raised to the number of candidates
# asked for.
HNSW_PARAMS = {"M": 16, "efConstruction": 200}
MIN_EF = 64
RRF_K = 60
# Candidates each route contributes to the fusion. Fewer than 10 starves RRF; many more lets chunks that are
# mediocre in both routes outrank the best of one (bench/RESULTS.md, "RAG": "Choices the numbers made").
MIN_CANDIDATES = 10
WRITE_BATCH = 256
QUERY_PAGE = 1000
QUERY_LIMIT = 16384  # Milvus's cap on offset + limit of one query

# Words that carry no evidence in BM25. Spelt out rather than Milvus's "_english_" alias, which Milvus Lite
# does not expand, so both analyse text the same way.
STOP_WORDS = (
    "a", "an", "and", "are", "as", "at", "be", "been", "but", "by", "can", "could", "did", "do", "does", "for",
    "from", "had", "has", "have", "he", "her", "hers", "him", "his", "how", "i", "if", "in", "into", "is", "it",
    "its", "me", "my", "no", "not", "of", "on", "or", "our", "she", "so", "such", "than", "that", "the", "their",
    "them", "then", "there", "these", "they", "this", "those", "to", "us", "was", "we", "were", "what", "when",
    "where", "which", "who", "whom", "whose", "why", "will", "with", "would", "you", "your",
)
ANALYZER = {"tokenizer": "standard", "filter": ["lowercase", {"type": "stop", "stop_words": list(STOP_WORDS)}]}


@dataclass(frozen=True)
class StoredChunk:
    title: str
    source: str
    index: int
    embedding_model_version: str

    def matches(self, chunk: Chunk, embedding_model_version: str) -> bool:
        """Whether re-writing ``chunk`` would change nothing (its id already pins document and text)."""
        return self == StoredChunk(_clip(chunk.title, MAX_TITLE_BYTES), _clip(chunk.source, MAX_SOURCE_BYTES),
                                   chunk.index, _clip(embedding_model_version, MAX_VERSION_BYTES))


@dataclass(frozen=True)
class Hit:
    id: str
    document_id: str
    title: str
    source: str
    text: str
    score: float  # what the ranking used: RRF fusion score (hybrid) or cosine similarity (dense)
    similarity: float  # cosine similarity of chunk and question, whatever the mode
    embedding_model_version: str


def is_lite(target: str) -> bool:
    return target.endswith(".db")


def _clip(value: str, max_bytes: int) -> str:
    encoded = value.encode("utf-8")
    return value if len(encoded) <= max_bytes else encoded[:max_bytes].decode("utf-8", errors="ignore")


def _literal(values: Iterable[str]) -> str:
    """A Milvus expression list of string literals (JSON string escapes are what Milvus accepts)."""
    return "[" + ", ".join(json.dumps(v, ensure_ascii=False) for v in values) + "]"


class _LiteUsers:
    """Stores open on each Milvus Lite path in this process: its in-process server stops with the last one.

    pymilvus shares one Milvus Lite server per path within a process, so closing one store must not pull the
    server from under another still using it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count: dict[str, int] = {}

    def acquire(self, target: str) -> None:
        key = os.path.abspath(target)
        with self._lock:
            self._count[key] = self._count.get(key, 0) + 1

    def release(self, target: str) -> bool:
        """Whether the caller was the last user."""
        key = os.path.abspath(target)
        with self._lock:
            left = self._count.get(key, 1) - 1
            if left > 0:
                self._count[key] = left
                return False
            self._count.pop(key, None)
            return True


_lite_users = _LiteUsers()


class MilvusStore:
    """Chunks with their dense vectors (and BM25 sparse vectors) in one Milvus collection."""

    def __init__(self, target: str, collection: str, *, token: str = "", dimension: int = 384,
                 hybrid: bool = True, timeout: float = 10.0) -> None:
        self.target = target
        self.collection = collection
        self.dimension = dimension
        self.kind = STORE_MILVUS_LITE if is_lite(target) else STORE_MILVUS
        self._token = token
        self._want_hybrid = hybrid
        self.hybrid = hybrid
        self._timeout = timeout
        self._client: MilvusClient | None = None
        self._lock = threading.Lock()

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def open(self) -> MilvusStore:
        """Connect, create the collection when missing, and load it. Safe to call again."""
        if self._client is not None:
            return self
        with self._lock:
            if self._client is None:
                self._client = self._connect()
                try:
                    self._ensure_collection(self._client)
                except Exception:
                    self._release(self._client)
                    self._client = None
                    raise
        return self

    def close(self) -> None:
        """Disconnect; for Milvus Lite also stop its in-process server, which releases the directory lock."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            self._release(client)

    def __enter__(self) -> MilvusStore:
        return self.open()

    def __exit__(self, *_: object) -> None:
        self.close()

    def _connect(self) -> MilvusClient:
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException

        if is_lite(self.target):
            from pathlib import Path

            try:
                ensure_private_dir(Path(self.target).parent)
            except OSError as exc:
                raise StoreUnavailable(f"Milvus Lite directory {Path(self.target).parent} cannot be created: "
                                       f"{exc.strerror or exc}") from None
        try:
            client = MilvusClient(uri=self.target, token=self._token, timeout=self._timeout)
        except MilvusException as exc:
            raise StoreUnavailable(self._unavailable_message(exc)) from None
        if is_lite(self.target):
            _lite_users.acquire(self.target)
        return client

    def _unavailable_message(self, exc: Exception) -> str:
        if is_lite(self.target):
            return (f"Milvus Lite at {self.target} cannot be opened ({getattr(exc, 'message', exc)}). Milvus Lite "
                    "is single-process: if `vigil serve` (or another vigil command) is using it, go through "
                    "the service or stop it first.")
        return (f"Milvus at {mask_url(self.target)} is not reachable ({getattr(exc, 'message', exc)}); "
                "check VIGIL_MILVUS_URI and VIGIL_MILVUS_TOKEN.")

    def _release(self, client: MilvusClient) -> None:
        try:
            client.close()
        except Exception as exc:  # closing must not mask what the caller is doing
            logger.debug("closing the Milvus client failed: %s", exc)
        if is_lite(self.target) and _lite_users.release(self.target):
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self.target)

    def _ensure_collection(self, client: MilvusClient) -> None:
        with self._errors():
            if client.has_collection(self.collection):
                fields = {f["name"] for f in client.describe_collection(self.collection)["fields"]}
                self.hybrid = self._want_hybrid and SPARSE in fields
                if self._want_hybrid and not self.hybrid:
                    logger.warning("collection %s has no BM25 field; searching dense vectors only", self.collection)
            else:
                self._create(client)
                self.hybrid = self._want_hybrid
            client.load_collection(self.collection)

    def _create(self, client: MilvusClient) -> None:
        from pymilvus import DataType, Function, FunctionType

        schema = client.create_schema(auto_id=False, enable_dynamic_field=False,
                                      description="Vigil RAG chunks (text-embedder vectors)")
        schema.add_field(ID, DataType.VARCHAR, is_primary=True, max_length=MAX_ID_BYTES)
        schema.add_field(DOCUMENT_ID, DataType.VARCHAR, max_length=MAX_DOCUMENT_ID_BYTES)
        schema.add_field(TITLE, DataType.VARCHAR, max_length=MAX_TITLE_BYTES)
        schema.add_field(SOURCE, DataType.VARCHAR, max_length=MAX_SOURCE_BYTES)
        text_options: dict[str, Any] = {"enable_analyzer": True, "analyzer_params": ANALYZER} if self._want_hybrid \
            else {}
        schema.add_field(TEXT, DataType.VARCHAR, max_length=MAX_TEXT_BYTES, **text_options)
        schema.add_field(CHUNK_INDEX, DataType.INT64)
        schema.add_field(MODEL_VERSION, DataType.VARCHAR, max_length=MAX_VERSION_BYTES)
        schema.add_field(DENSE, DataType.FLOAT_VECTOR, dim=self.dimension)
        index = client.prepare_index_params()
        index.add_index(field_name=DENSE, index_type="HNSW", metric_type="COSINE", params=HNSW_PARAMS)
        index.add_index(field_name=DOCUMENT_ID, index_type="INVERTED")
        if self._want_hybrid:
            schema.add_field(SPARSE, DataType.SPARSE_FLOAT_VECTOR)
            schema.add_function(Function(name="text_bm25", function_type=FunctionType.BM25,
                                         input_field_names=[TEXT], output_field_names=[SPARSE]))
            index.add_index(field_name=SPARSE, index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        # Strong: a query right after an ingest through the service must see the new chunks on a Milvus server.
        client.create_collection(self.collection, schema=schema, consistency_level="Strong")
        # The collection is empty, so there is nothing to wait for; waiting would poll an RPC (AllocTimestamp)
        # that Milvus Lite lacks and logs an error for.
        client.create_index(self.collection, index, sync=False)
        logger.info("created Milvus collection %s at %s (hybrid=%s)", self.collection, mask_url(self.target),
                 self._want_hybrid)

    def _errors(self) -> _MilvusErrors:
        return _MilvusErrors(self)

    @property
    def client(self) -> MilvusClient:
        if self._client is None:
            self.open()
        assert self._client is not None
        return self._client

    # --- writes ------------------------------------------------------------------------------------------------

    def stored_chunks(self, document_ids: Sequence[str]) -> dict[str, StoredChunk]:
        """What the collection holds for these documents, by chunk id (no vectors, no text)."""
        with self._errors():
            return {str(row[ID]): StoredChunk(str(row[TITLE]), str(row[SOURCE]), int(row[CHUNK_INDEX]),
                                              str(row[MODEL_VERSION]))
                    for row in self._rows_of(document_ids, [ID, TITLE, SOURCE, CHUNK_INDEX, MODEL_VERSION])}

    def upsert(self, chunks: Sequence[Chunk], vectors: np.ndarray, embedding_model_version: str) -> None:
        if len(chunks) != len(vectors):
            raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
        rows = [{
            ID: c.id,
            DOCUMENT_ID: _clip(c.document_id, MAX_DOCUMENT_ID_BYTES),
            TITLE: _clip(c.title, MAX_TITLE_BYTES),
            SOURCE: _clip(c.source, MAX_SOURCE_BYTES),
            TEXT: _clip(c.text, MAX_TEXT_BYTES),
            CHUNK_INDEX: c.index,
            MODEL_VERSION: _clip(embedding_model_version, MAX_VERSION_BYTES),
            DENSE: vector.tolist(),
        } for c, vector in zip(chunks, vectors, strict=True)]
        with self._errors():
            for begin in range(0, len(rows), WRITE_BATCH):
                self.client.upsert(self.collection, rows[begin:begin + WRITE_BATCH])

    def delete_ids(self, ids: Iterable[str]) -> int:
        ordered = sorted(set(ids))
        with self._errors():
            for begin in range(0, len(ordered), WRITE_BATCH):
                self.client.delete(self.collection, ids=ordered[begin:begin + WRITE_BATCH])
        return len(ordered)

    def delete_document(self, document_id: str) -> int:
        """Delete every chunk of ``document_id``; returns how many there were."""
        removed = self.delete_ids(self.stored_chunks([document_id]))
        if removed:
            self.flush()
        return removed

    def flush(self) -> None:
        """Seal the growing segment: Milvus Lite searches unflushed rows ~20× slower."""
        with self._errors():
            self.client.flush(self.collection)

    def _rows_of(self, document_ids: Sequence[str], fields: list[str]) -> Iterable[dict[str, Any]]:
        for begin in range(0, len(document_ids), WRITE_BATCH):
            clipped = [_clip(d, MAX_DOCUMENT_ID_BYTES) for d in document_ids[begin:begin + WRITE_BATCH]]
            yield from self._query_all(f"{DOCUMENT_ID} in {_literal(clipped)}", fields)

    def _query_all(self, expression: str, fields: list[str]) -> Iterable[dict[str, Any]]:
        expression = expression or f'{ID} != ""'
        rows = self.client.query(self.collection, filter=expression, output_fields=fields, limit=QUERY_LIMIT)
        if len(rows) < QUERY_LIMIT:
            yield from rows
            return
        # More rows than one query may return: page through them. Only then, because Milvus Lite lacks the
        # timestamp RPC the iterator asks for first and logs an error for it on every call.
        iterator = self.client.query_iterator(self.collection, batch_size=QUERY_PAGE, filter=expression,
                                              output_fields=fields)
        try:
            while page := iterator.next():
                yield from page
        finally:
            iterator.close()

    # --- reads -------------------------------------------------------------------------------------------------

    def search(self, vector: np.ndarray, text: str, limit: int, *, hybrid: bool | None = None) -> list[Hit]:
        """The ``limit`` best chunks for a question: its vector and, in hybrid mode, its words.

        ``hybrid=False`` forces a dense-only search (comparisons); ``None`` uses the collection's mode.
        """
        from pymilvus import AnnSearchRequest, RRFRanker

        candidates = max(limit, MIN_CANDIDATES)
        dense_param = {"metric_type": "COSINE", "params": {"ef": max(MIN_EF, candidates)}}
        use_hybrid = self.hybrid if hybrid is None else hybrid and self.hybrid
        with self._errors():
            if use_hybrid and text.strip():
                requests = [
                    AnnSearchRequest(data=[vector.tolist()], anns_field=DENSE, param=dense_param, limit=candidates),
                    AnnSearchRequest(data=[text], anns_field=SPARSE, param={"metric_type": "BM25"},
                                     limit=candidates),
                ]
                results = self.client.hybrid_search(self.collection, requests, ranker=RRFRanker(RRF_K),
                                                    limit=limit, output_fields=HYBRID_OUTPUT_FIELDS)
            else:
                results = self.client.search(self.collection, data=[vector.tolist()], anns_field=DENSE,
                                             search_params=dense_param, limit=limit, output_fields=OUTPUT_FIELDS)
        return [_hit(raw, vector) for raw in results[0]] if results else []

    def stats(self) -> StoreStats:
        with self._errors():
            exists = self.client.has_collection(self.collection)
            documents: set[str] = set()
            versions: set[str] = set()
            chunks = 0
            if exists:
                for row in self._query_all("", [DOCUMENT_ID, MODEL_VERSION]):
                    chunks += 1
                    documents.add(str(row[DOCUMENT_ID]))
                    versions.add(str(row[MODEL_VERSION]))
        return StoreStats(store=self.kind, target=mask_url(self.target), collection=self.collection, exists=exists,
                          chunks=chunks, documents=len(documents), embedding_model_versions=sorted(versions),
                          hybrid=self.hybrid)

    def vectors(self) -> tuple[list[str], np.ndarray]:
        """Every chunk id with its dense vector (benchmarks compare Milvus with brute force on the same vectors)."""
        with self._errors():
            rows = list(self._query_all("", [ID, DENSE]))
        return [str(r[ID]) for r in rows], np.asarray([r[DENSE] for r in rows], dtype=np.float32)

    def count(self) -> int:
        """Rows in the collection, as Milvus reports them (cheap; deleted rows may linger until compaction)."""
        with self._errors():
            return int(self.client.get_collection_stats(self.collection).get("row_count", 0))


def store_from_settings(settings: Settings, dimension: int = 384) -> MilvusStore:
    """The store ``VIGIL_MILVUS_URI`` (or Milvus Lite under ``$VIGIL_HOME/milvus``) and the collection name give."""
    return MilvusStore(settings.milvus_target, settings.rag_collection,
                       token=settings.milvus_token.get_secret_value(), dimension=dimension)


def _hit(raw: Any, question: np.ndarray) -> Hit:
    entity = raw.get("entity", {})
    score = float(raw.get("distance", raw.get("score", 0.0)))
    chunk_vector = entity.get(DENSE)
    similarity = float(np.dot(np.asarray(chunk_vector, dtype=np.float32), question)) if chunk_vector is not None \
        else score
    return Hit(
        id=str(raw.get("id", raw.get(ID))),
        document_id=str(entity.get(DOCUMENT_ID, "")),
        title=str(entity.get(TITLE, "")),
        source=str(entity.get(SOURCE, "")),
        text=str(entity.get(TEXT, "")),
        score=score,
        similarity=similarity,
        embedding_model_version=str(entity.get(MODEL_VERSION, "")),
    )


class _MilvusErrors:
    """Turns Milvus and gRPC failures into :class:`StoreUnavailable` (→ 503 on the RAG endpoints only)."""

    def __init__(self, store: MilvusStore) -> None:
        self._store = store

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _: object) -> None:
        if error is None or isinstance(error, StoreUnavailable):
            return
        from pymilvus.exceptions import MilvusException

        try:
            import grpc

            rpc_error: tuple[type[BaseException], ...] = (grpc.RpcError,)
        except ImportError:  # grpc comes with pymilvus; this only keeps the mapping total
            rpc_error = ()
        if isinstance(error, (MilvusException, ConnectionError, *rpc_error)):
            store = self._store
            raise StoreUnavailable(
                f"Milvus ({store.kind} at {mask_url(store.target)}, collection {store.collection}) failed: "
                f"{getattr(error, 'message', None) or error}"
            ) from error
