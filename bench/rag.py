"""RAG benchmark: retrieval latency of Milvus Lite against brute-force NumPy over the same vectors, in-process
end-to-end query latency, and retrieval/answer quality on the shipped QA pairs — in one run.

    .venv/bin/python bench/rag.py [--questions 500] [--qa-sample 1000 | --qa-sample 0 (all)] [--k 5] [--out FILE]

Quality is `vigil eval rag`'s evaluator (`evaluations.rag.measure_rag`) run in process, without an MLflow run:
each question asked once with top_k=k and judged on the chunks that answer cites — once on the served hybrid
search, once with the store's BM25 route off (dense only), for the record of what BM25 adds.

It ingests the whole shipped corpus into a fresh Milvus Lite under a temporary VIGIL_HOME (see bench/RESULTS.md
for how long that takes), unless --home points at one that already holds it. The HTTP end-to-end figures
(`/rag/query` at concurrency 1 and 8) belong to the serving benchmark.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from evaluations.datasets import load_qa, resolve_qa
from evaluations.rag import InProcessAnswerer, measure_rag
from evaluations.schemas import RagMetrics
from service.rag.documents import read_paths
from service.rag.pipeline import RagPipeline
from vigil.settings import Settings

CORPUS = REPO / "data" / "rag" / "corpus.jsonl"
QA = REPO / "data" / "rag" / "qa.jsonl"
TOP_K = 5
WARM_UP = 20


def percentiles(samples_ms: list[float]) -> tuple[float, float]:
    return round(float(np.percentile(samples_ms, 50)), 2), round(float(np.percentile(samples_ms, 99)), 2)


def timed(calls: list[Callable[[], object]]) -> list[float]:
    for call in calls[:WARM_UP]:
        call()
    samples = []
    for call in calls:
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=500, help="Questions timed per latency figure.")
    parser.add_argument("--qa-sample", type=int, default=1000, help="Questions scored for quality (0: all 7347).")
    parser.add_argument("--k", type=int, default=TOP_K, help="top_k of the quality queries, as `vigil eval rag --k`.")
    parser.add_argument("--home", type=Path, default=None, help="VIGIL_HOME to use (default: a fresh temp dir).")
    parser.add_argument("--torch-threads", type=int, default=int(os.environ.get("VIGIL_TORCH_THREADS", "1")),
                        help="Intra-op threads of the encoder, either runtime (default VIGIL_TORCH_THREADS or 1).")
    parser.add_argument("--out", type=Path, default=None, help="Also write the Markdown tables here.")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.torch_threads)
    load_before = os.getloadavg()
    home = args.home or Path(tempfile.mkdtemp(prefix="vigil-bench-rag-"))
    # The extractive generator, as measured before the span reader (bench/reader.py compares the two).
    settings = Settings(_env_file=None, home=home, torch_threads=args.torch_threads, generator="extractive")
    pipeline = RagPipeline.from_settings(settings, embedder_version="bench")
    pipeline.warm_up()
    corpus = read_paths([CORPUS]).documents
    ingest_seconds = None
    if pipeline.stats().documents < len(corpus):
        print(f"ingesting {len(corpus)} passages into {settings.milvus_target} …", flush=True)
        report = pipeline.ingest(corpus)
        ingest_seconds = report.seconds
        print(f"  {report.documents} documents, {report.chunks} chunks in {report.seconds:.1f} s", flush=True)
    stats = pipeline.stats()

    questions = [q.question for q in load_qa(QA, sample=args.questions, seed=7)]
    question_vectors = pipeline.embedder.embed(questions)
    chunk_ids, matrix = pipeline.store.vectors()
    store = pipeline.store

    print("timing retrieval …", flush=True)
    pairs = list(zip(question_vectors, questions, strict=True))
    numpy_ms = timed([partial(brute_force, matrix, v) for v in question_vectors])
    dense_ms = timed([partial(store.search, v, q, TOP_K, hybrid=False) for v, q in pairs])
    hybrid_ms = timed([partial(store.search, v, q, TOP_K) for v, q in pairs])
    embed_ms = timed([partial(pipeline.embedder.embed_one, q) for q in questions])
    print("timing end-to-end queries …", flush=True)
    query_ms = timed([partial(pipeline.query, q, TOP_K) for q in questions])

    agree = sum(
        set(np.argsort(-(matrix @ v))[:TOP_K].tolist()) == {chunk_ids.index(h.id) for h in
                                                               store.search(v, q, TOP_K, hybrid=False)}
        for v, q in zip(question_vectors[:100], questions[:100], strict=True)
    )

    data = resolve_qa(QA, limit=args.qa_sample or None, seed=42)
    answerer = InProcessAnswerer(pipeline)
    print(f"scoring quality on {len(data.items)} questions, top_k={args.k} …", flush=True)
    started = time.perf_counter()
    hybrid, _ = measure_rag(answerer, data, args.k, limit=args.qa_sample or None, progress=every_thousand)
    quality_seconds = time.perf_counter() - started
    # The same pipeline with the store's BM25 route switched off: what dense retrieval alone finds.
    pipeline.store.hybrid = False
    print("scoring quality again, dense only …", flush=True)
    dense, _ = measure_rag(answerer, data, args.k, limit=args.qa_sample or None, progress=every_thousand)
    pipeline.close()

    lines = report_lines(stats.chunks, stats.documents, ingest_seconds, numpy_ms, dense_ms, hybrid_ms, embed_ms,
                         query_ms, agree, hybrid.metrics, dense.metrics, quality_seconds, args, load_before,
                         pipeline.embedder.runtime)
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")


def every_thousand(phase: str, done: int, total: int) -> None:
    if done and (done % 1000 == 0 or done == total):
        print(f"  {phase}: {done}/{total}", flush=True)


def brute_force(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """The floor: exact top-k by cosine (the vectors are normalised) with one matrix-vector product."""
    return np.argpartition(-(matrix @ vector), TOP_K)[:TOP_K]


def report_lines(chunks: int, documents: int, ingest_seconds: float | None, numpy_ms: list[float],
                 dense_ms: list[float], hybrid_ms: list[float], embed_ms: list[float], query_ms: list[float],
                 agree: int, hybrid: RagMetrics, dense: RagMetrics, quality_seconds: float,
                 args: argparse.Namespace, load_before: tuple[float, float, float], runtime: str) -> list[str]:
    load_after = os.getloadavg()
    k = hybrid.k
    rows = [
        ("NumPy brute force, dense (floor)", numpy_ms),
        ("Milvus Lite dense (HNSW)", dense_ms),
        ("Milvus Lite hybrid (HNSW + BM25, RRF) — served", hybrid_ms),
        ("question embedding (MiniLM)", embed_ms),
        ("end-to-end `RagPipeline.query`, extractive", query_ms),
    ]
    ranks = sorted(hybrid.recall)

    def quality_row(name: str, m: RagMetrics) -> str:
        grounded = "–" if m.groundedness is None else f"{m.groundedness:.3f}"
        return (f"| {name} | " + " | ".join(f"{m.recall[r]:.3f}" for r in ranks)
                + f" | {m.mrr:.3f} | {m.ndcg[k]:.3f} | {m.answer_containment:.3f} | {m.token_f1:.3f} | {grounded} |")

    lines = [
        f"Measured {datetime.now(UTC).date().isoformat()} on {platform.machine()} with {os.cpu_count()} cores "
        f"({platform.python_implementation()} {platform.python_version()}), encoder on {runtime} "
        f"(VIGIL_MODEL_RUNTIME), {args.torch_threads} thread(s); "
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after (other work shares this machine).",
        "",
        f"Corpus: {documents} passages → {chunks} chunks"
        + (f", ingested in {ingest_seconds:.0f} s" if ingest_seconds is not None else "") + ".",
        "",
        f"| latency, {args.questions} questions, top-{TOP_K} | p50 ms | p99 ms |",
        "| --- | --- | --- |",
        *[f"| {name} | {percentiles(ms)[0]} | {percentiles(ms)[1]} |" for name, ms in rows],
        "",
        f"Milvus Lite dense top-{TOP_K} equals the brute-force top-{TOP_K} for {agree}/100 questions.",
        "",
        f"| quality, {hybrid.questions} questions, top_k={k} | "
        + " | ".join(f"recall@{r}" for r in ranks)
        + f" | MRR@{k} | nDCG@{k} | answer containment | token F1 | groundedness |",
        "| --- | " + " | ".join("---" for _ in ranks) + " | --- | --- | --- | --- | --- |",
        quality_row("hybrid (served)", hybrid),
        quality_row("dense only", dense),
        "",
        f"Hybrid, per question: prompt tokens mean {hybrid.prompt_tokens.mean:.0f} "
        f"(p95 {hybrid.prompt_tokens.p95:.0f}), "
        f"answer tokens mean {hybrid.completion_tokens.mean:.0f}; query latency p50 {hybrid.latency_ms.p50:.1f} ms, "
        f"p95 {hybrid.latency_ms.p95:.1f} ms; {hybrid.grounded_questions} questions judged for groundedness. "
        f"Scored in {quality_seconds:.0f} s.",
    ]
    return lines


if __name__ == "__main__":
    random.seed(0)
    main()
