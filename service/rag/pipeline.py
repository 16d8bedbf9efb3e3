"""The RAG pipeline, framework-free: ingest documents, and answer questions with citations and token usage.

The service builds one :class:`RagPipeline` per process (``RagPipeline.from_settings()``), calls ``warm_up()``
at start, and then ``query`` / ``ingest`` / ``delete`` / ``stats`` from its handlers. Heavy objects — the encoder,
the Milvus client — are built once, on first use or in ``warm_up``; nothing heavy happens at import.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from opentelemetry import trace

from service.rag.chunking import Chunk, chunk_document
from service.rag.errors import InvalidQuestion, InvalidTopK, QuestionTooLong
from service.rag.generators import Generator, ServedReader, build_generator
from service.rag.schemas import DeleteReport, StoreStats
from service.rag.store import Hit, MilvusStore, store_from_settings
from telemetry import semconv
from telemetry.redaction import text_digest
from vigil.contracts import (
    Citation,
    Document,
    FileError,
    GeneratorInfo,
    IngestReport,
    ModelIdentity,
    RagQueryResponse,
)
from vigil.credentials import mask_url
from vigil.embedding import TextEmbedder, resolve_registered_version

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from service.model_store import ReaderHolder
    from vigil.settings import Settings

logger = logging.getLogger(__name__)

MIN_TOP_K = 1
MAX_TOP_K = 50
# Chunks embedded and written together during ingest: bounds memory, and a crash leaves whole documents.
INGEST_BATCH_CHUNKS = 512

# phase ("chunk" | "embed" | "write"), done, total
IngestProgress = Callable[[str, int, int], None]


def validate_question(question: str, max_chars: int) -> str:
    """The question stripped; :class:`InvalidQuestion` (400) when empty, :class:`QuestionTooLong` (413)."""
    if not isinstance(question, str) or not question.strip():
        raise InvalidQuestion("the question is empty")
    if len(question) > max_chars:
        raise QuestionTooLong(f"the question has {len(question)} characters; at most {max_chars} are accepted "
                              "(VIGIL_RAG_MAX_QUESTION_CHARS)")
    return question.strip()


def validate_top_k(top_k: int) -> int:
    """``top_k`` itself, or :class:`InvalidTopK` (422) outside 1..50."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not MIN_TOP_K <= top_k <= MAX_TOP_K:
        raise InvalidTopK(f"top_k must be an integer from {MIN_TOP_K} to {MAX_TOP_K}, got {top_k!r}")
    return top_k


class RagPipeline:
    """Embed → retrieve → generate, and the ingest path that fills the store."""

    def __init__(self, *, embedder: TextEmbedder, store: MilvusStore, generator: Generator, settings: Settings,
                 tracer_provider: TracerProvider | None = None, reader_holder: ReaderHolder | None = None) -> None:
        self.embedder = embedder
        self.store = store
        self.generator = generator
        self.settings = settings
        self.reader_holder = reader_holder  # follows rag-reader@<alias> for the reader generator; None otherwise
        # An injected provider keeps tests off the global one; otherwise the process-wide provider applies.
        self._tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)

    @classmethod
    def from_settings(cls, settings: Settings | None = None, *, tracer_provider: TracerProvider | None = None,
                      embedder_version: str | None = None) -> RagPipeline:
        """The pipeline the settings describe; ``embedder_version`` skips asking MLflow (tests, benchmarks)."""
        from vigil.settings import get_settings

        settings = settings or get_settings()
        name = settings.embedder_model_name
        version: str | Callable[[], str] = embedder_version or (
            lambda: resolve_registered_version(name, alias=settings.serve_alias)
        )
        # The encoder runs where the classifier does (VIGIL_MODEL_RUNTIME), exported once per version into the
        # model cache; VIGIL_TORCH_THREADS sizes it either way, since the RAG service shares its cores with the API.
        embedder = TextEmbedder(name=name, version=version, runtime=settings.model_runtime,
                                onnx_dir=settings.model_cache_dir / name / "onnx", threads=settings.torch_threads)
        store = store_from_settings(settings, embedder.dimension)
        holder = None
        if settings.generator == "reader":
            from service.model_store import ReaderHolder

            # Followed like a served model: digest-checked, on the configured runtime, swapped in the background.
            # ONNX Runtime's threads as the model service sizes them: the reader reads every retrieved chunk, the
            # largest share of a query's work, and a lone query's latency needs more than one core.
            holder = ReaderHolder(settings.reader_model_name, settings.serve_alias, settings.model_cache_dir,
                                  settings.alias_poll_seconds, runtime=settings.model_runtime,
                                  threads=settings.onnx_threads or os.cpu_count() or 1)
        generator = build_generator(settings, embedder, reader=_served_reader(holder) if holder else None,
                                    waiting=(lambda: holder.status.reason) if holder else None)
        return cls(embedder=embedder, store=store, generator=generator, settings=settings,
                   tracer_provider=tracer_provider, reader_holder=holder)

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Load the encoder, resolve its registry version and open the store, so no request pays for them.

        Raises :class:`StoreUnavailable` when Milvus cannot be opened; the encoder stays loaded, and a later
        call (or the next query) tries the store again.
        """
        self.embedder.load()
        _ = self.embedder.version
        self.store.open()

    def follow_reader(self, *, wait: bool) -> None:
        """Start following the reader's alias (reader generator only). ``wait``: load the current version before
        returning (an evaluation in process); otherwise in the background, so the service answers at once —
        extractively until the reader is loaded."""
        holder = self.reader_holder
        if holder is None:
            return
        if wait:
            holder.start()
        else:
            threading.Thread(target=holder.start, name="reader-follower", daemon=True).start()

    def close(self) -> None:
        if self.reader_holder is not None:
            self.reader_holder.stop()
        self.store.close()
        close = getattr(self.generator, "close", None)
        if callable(close):
            close()

    def __enter__(self) -> RagPipeline:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def embedding_model(self) -> ModelIdentity:
        return ModelIdentity(name=self.embedder.name, version=self.embedder.version)

    @property
    def generator_info(self) -> GeneratorInfo:
        return GeneratorInfo(name=self.generator.name, model=self.generator.model)

    # --- query -------------------------------------------------------------------------------------------------

    def query(self, question: str, top_k: int | None = None) -> RagQueryResponse:
        """Answer ``question`` from the ``top_k`` best chunks, citing them, with token usage.

        Raises InvalidQuestion (400), QuestionTooLong (413), InvalidTopK (422), StoreUnavailable (503),
        GeneratorUnavailable (502), GeneratorTimeout (504).
        """
        question = validate_question(question, self.settings.rag_max_question_chars)
        top_k = validate_top_k(self.settings.rag_top_k if top_k is None else top_k)
        with self._tracer.start_as_current_span(semconv.SPAN_RAG_QUERY) as span:
            span.set_attribute(semconv.INPUT_TEXT, self._traced_text(question))
            span.set_attribute(semconv.RETRIEVAL_TOP_K, top_k)
            span.set_attribute(semconv.EMBEDDING_MODEL, self.embedder.name)
            span.set_attribute(semconv.EMBEDDING_MODEL_VERSION, self.embedder.version)
            span.set_attribute(semconv.GEN_AI_REQUEST_MODEL, self.generator.model)
            hits = self._retrieve(question, top_k)
            with self._tracer.start_as_current_span(semconv.SPAN_RAG_GENERATE) as gen_span:
                gen_span.set_attribute(semconv.GEN_AI_OPERATION_NAME, self.generator.operation)
                gen_span.set_attribute(semconv.GEN_AI_SYSTEM, self.generator.system)
                gen_span.set_attribute(semconv.GEN_AI_REQUEST_MODEL, self.generator.model)
                generation = self.generator.generate(question, hits)
                gen_span.set_attribute(semconv.GEN_AI_RESPONSE_MODEL, generation.response_model)
                gen_span.set_attribute(semconv.GEN_AI_USAGE_INPUT_TOKENS, generation.usage.prompt_tokens)
                gen_span.set_attribute(semconv.GEN_AI_USAGE_OUTPUT_TOKENS, generation.usage.completion_tokens)
                if generation.finish_reason:
                    gen_span.set_attribute(semconv.GEN_AI_RESPONSE_FINISH_REASONS, [generation.finish_reason])
            span.set_attribute(semconv.GEN_AI_USAGE_INPUT_TOKENS, generation.usage.prompt_tokens)
            span.set_attribute(semconv.GEN_AI_USAGE_OUTPUT_TOKENS, generation.usage.completion_tokens)
        return RagQueryResponse(
            answer=generation.answer,
            citations=[Citation(id=h.id, document_id=h.document_id, title=h.title, score=h.score,
                                similarity=h.similarity, text=h.text) for h in hits[:generation.contexts_used]],
            usage=generation.usage,
            generator=generation.answered_by or self.generator_info,
            model=self.embedding_model,
        )

    def retrieve(self, question: str, top_k: int) -> list[Hit]:
        """The ``top_k`` best chunks for ``question`` (traced as rag.embed + rag.retrieve); no generation."""
        return self._retrieve(question, top_k)

    def _retrieve(self, question: str, top_k: int) -> list[Hit]:
        with self._tracer.start_as_current_span(semconv.SPAN_RAG_EMBED) as span:
            span.set_attribute(semconv.GEN_AI_OPERATION_NAME, "embeddings")
            span.set_attribute(semconv.GEN_AI_REQUEST_MODEL, self.embedder.name)
            span.set_attribute(semconv.EMBEDDING_MODEL, self.embedder.name)
            span.set_attribute(semconv.EMBEDDING_MODEL_VERSION, self.embedder.version)
            vector = self.embedder.embed_one(question)
        with self._tracer.start_as_current_span(semconv.SPAN_RAG_RETRIEVE) as span:
            span.set_attribute(semconv.RETRIEVAL_STORE, self.store.kind)
            span.set_attribute(semconv.RETRIEVAL_COLLECTION, self.store.collection)
            span.set_attribute(semconv.RETRIEVAL_TOP_K, top_k)
            hits = self.store.search(vector, question, top_k)
            span.set_attribute(semconv.RETRIEVAL_HIT_IDS, [h.id for h in hits])
            span.set_attribute(semconv.RETRIEVAL_HIT_SCORES, [h.score for h in hits])
        return hits

    def _traced_text(self, text: str) -> str:
        if self.settings.trace_raw_text:
            return text
        return text_digest(text)

    # --- ingest, delete, stats -----------------------------------------------------------------------------------

    def ingest(self, documents: Sequence[Document], *, chunk_tokens: int | None = None,
               overlap_tokens: int | None = None, errors: Iterable[FileError] = (),
               progress: IngestProgress | None = None) -> IngestReport:
        """Chunk, embed and store ``documents``, replacing earlier chunks of the same document ids; then flush.

        ``errors`` are inputs that failed before reaching here (unreadable files); they are carried into the
        report so one report names every input that was not ingested.
        """
        started = time.perf_counter()
        size = chunk_tokens or self.settings.rag_chunk_tokens
        overlap = self.settings.rag_chunk_overlap_tokens if overlap_tokens is None else overlap_tokens
        problems = list(errors)
        unique = _last_of_each_id(documents, problems)
        chunked: list[tuple[Document, list[Chunk]]] = []
        for done, document in enumerate(unique, start=1):
            chunks = chunk_document(document, self.embedder, size, overlap)
            if chunks:
                chunked.append((document, chunks))
            else:
                problems.append(FileError(source=document.source or document.id,
                                          error=f"document {document.id!r} has no text to index"))
            if progress is not None:
                progress("chunk", done, len(unique))
        total = sum(len(chunks) for _, chunks in chunked)
        version = self.embedder.version
        done = embedded = removed = 0

        def advance(count: int) -> None:
            nonlocal done
            done += count
            if progress is not None:
                progress("embed", done, total)

        for group in _groups(chunked, INGEST_BATCH_CHUNKS):
            batch = [chunk for _, chunks in group for chunk in chunks]
            stored = self.store.stored_chunks([document.id for document, _ in group])
            # An unchanged chunk keeps its id, vector and row: re-ingesting an unchanged corpus embeds nothing.
            todo = [c for c in batch if c.id not in stored or not stored[c.id].matches(c, version)]
            advance(len(batch) - len(todo))
            if todo:
                self.store.upsert(todo, self.embedder.embed([c.text for c in todo], progress=advance), version)
            # New chunks are written before stale ones go, so a re-ingested document never vanishes from search.
            removed += self.store.delete_ids(set(stored) - {c.id for c in batch})
            embedded += len(todo)
        if embedded or removed:
            self.store.flush()
        if progress is not None:
            progress("write", total, total)
        report = IngestReport(documents=len(chunked), chunks=total, embedded=embedded, removed=removed,
                              skipped=len(problems), errors=problems, seconds=round(time.perf_counter() - started, 3),
                              embedding_model=self.embedding_model)
        logger.info("ingested %d documents (%d chunks, %d embedded, %d stale removed) into %s/%s in %.1f s; %d skipped",
                 report.documents, report.chunks, embedded, removed, mask_url(self.store.target),
                 self.store.collection, report.seconds, report.skipped)
        return report

    def delete(self, document_id: str) -> DeleteReport:
        """Remove every chunk of ``document_id`` (0 when it was not there)."""
        return DeleteReport(document_id=document_id, chunks_deleted=self.store.delete_document(document_id))

    def stats(self) -> StoreStats:
        return self.store.stats()


def _served_reader(holder: ReaderHolder) -> Callable[[], ServedReader | None]:
    """The reader the holder serves now, named by its registered version; None while it serves none."""
    def current() -> ServedReader | None:
        loaded = holder.current
        return ServedReader(loaded.model, f"{loaded.name} v{loaded.version}") if loaded is not None else None

    return current


def _last_of_each_id(documents: Sequence[Document], problems: list[FileError]) -> list[Document]:
    """One document per id — the last given wins, as a later re-ingest would — and the rest named as skipped."""
    last = {document.id: index for index, document in enumerate(documents)}
    unique: list[Document] = []
    for index, document in enumerate(documents):
        if last[document.id] == index:
            unique.append(document)
        else:
            problems.append(FileError(source=document.source or document.id,
                                      error=f"document id {document.id!r} repeats later in the same ingest; "
                                            "the later one was kept"))
    return unique


def _groups(chunked: list[tuple[Document, list[Chunk]]],
            max_chunks: int) -> Iterable[list[tuple[Document, list[Chunk]]]]:
    group: list[tuple[Document, list[Chunk]]] = []
    size = 0
    for item in chunked:
        if group and size + len(item[1]) > max_chunks:
            yield group
            group, size = [], 0
        group.append(item)
        size += len(item[1])
    if group:
        yield group
