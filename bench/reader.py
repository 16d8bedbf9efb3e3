"""Span reader benchmark (issue 18): `/rag/query` with the reader against the extractive generator, and the exact
match and token F1 of both on the reader's held-out questions — in one run.

    make bench-reader      (or: .venv/bin/python bench/reader.py [--questions 400] [--seconds 10] [--rounds 1])

Needs the embedded stack with `rag-reader@champion` registered (`vigil train reader`) and the RAG corpus ingested.
Quality first, in process on the same store (`vigil eval rag`'s evaluator, `measure_rag`, no MLflow run): the same
seeded sample of held-out questions (the reader's split by article: passages no reader version was trained on) asked
through the pipeline with each variant (the reader's default reading, two sentences with their neighbours, every
chunk whole, the extractive generator), top_k 5, plus the reader alone on each question's own passage (what the
promotion gate compares). Then latency over HTTP: one `vigil serve` per variant, one at a time, each loaded at
concurrency 1 and 8 with the same shuffled questions after a warm-up; rounds alternate the variants.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from serving import Result, rag_caller, run_load, start_vigil, stop

from evaluations.rag import InProcessAnswerer, measure_rag, reader_scores, resolve_split_qa
from service.rag.generators import ReaderGenerator
from service.rag.pipeline import RagPipeline
from training.reader import QA_FILE, reader_split, sample
from vigil.mlflow_auth import authenticate_process
from vigil.settings import Settings, get_settings

TOP_K = 5
README_QUESTIONS = ("Which NFL team represented the AFC at Super Bowl 50?", "Who won Super Bowl 50?")
# Each variant's settings (as VIGIL_* variables for the servers): the reader on the best-matching sentence with one
# sentence either side (the default), on the two best-matching sentences with theirs, on every retrieved chunk
# whole, and the extractive generator.
VARIANTS: dict[str, dict[str, str]] = {
    "reader": {"VIGIL_GENERATOR": "reader"},
    "reader, 2 sentences": {"VIGIL_GENERATOR": "reader", "VIGIL_RAG_READER_SENTENCES": "2"},
    "reader, whole chunks": {"VIGIL_GENERATOR": "reader", "VIGIL_RAG_READER_WHOLE_CHUNKS": str(TOP_K)},
    "extractive": {"VIGIL_GENERATOR": "extractive"},
}


def quality(args: argparse.Namespace) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, str]]]:
    """EM / F1 / containment of each generator through the pipeline, and of the reader alone, on the same questions;
    and each generator's answers to the README's example questions."""
    figures: dict[str, dict[str, float]] = {}
    answers: dict[str, dict[str, str]] = {}
    data = resolve_split_qa(QA_FILE, "held-out", args.questions, seed=7)
    for variant, variables in VARIANTS.items():
        generator = variables["VIGIL_GENERATOR"]
        overrides: dict[str, Any] = {key.removeprefix("VIGIL_").lower(): value for key, value in variables.items()}
        settings = Settings(**overrides)
        pipeline = RagPipeline.from_settings(settings)
        pipeline.warm_up()
        pipeline.follow_reader(wait=True)
        if generator == "reader":
            assert pipeline.reader_holder is not None and pipeline.reader_holder.current is not None, \
                "no rag-reader@champion to benchmark: run `vigil train reader` first"
            served = pipeline.reader_holder.current
            figures["reader version"] = {"version": float(served.version)}
        print(f"quality: {len(data.items)} held-out questions with the {variant} generator …", flush=True)
        started = time.perf_counter()
        report, _ = measure_rag(InProcessAnswerer(pipeline), data, TOP_K, limit=args.questions)
        m = report.metrics
        figures[variant] = {"exact_match": m.exact_match, "token_f1": m.token_f1,
                              "answer_containment": m.answer_containment, "recall_at_5": m.recall[TOP_K],
                              "completion_tokens": m.completion_tokens.mean, "latency_p50_ms": m.latency_ms.p50,
                              "seconds": time.perf_counter() - started}
        if variant == "reader":
            assert isinstance(pipeline.generator, ReaderGenerator)
            # How many answers the reader gave, and how many fell back to the extractive generator.
            figures["reader answers"] = {key: float(value) for key, value in pipeline.generator.answers.items()}
            by_id = {item.id for item in data.items}
            examples = [e for e in reader_split().held_out if e.id in by_id] or sample(reader_split().held_out,
                                                                                     args.questions, 7)
            scores = reader_scores(served.model, examples)
            figures["reader alone, gold passage"] = {"exact_match": float(scores["exact_match"].mean()),
                                                     "token_f1": float(scores["token_f1"].mean()),
                                                     "questions": float(len(examples))}
        # The README's example questions (their article is on the training side), as a newcomer asks them.
        answers[variant] = {question: pipeline.query(question).answer for question in README_QUESTIONS}
        pipeline.close()
    return figures, answers


def wait_for_generator(http: str, generator: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = httpx.get(f"{http}/status", timeout=30).json().get("rag_generator") or {}
        if state.get("answering") == generator:
            return
        time.sleep(1)
    raise RuntimeError(f"the RAG service did not answer with the {generator} generator within {timeout}s")


async def load(url: str, questions: list[str], seconds: float, generator: str) -> list[Result]:
    results = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16),
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        call = rag_caller(session, url)
        await run_load(generator, 2, 3.0, questions, call)  # warm up: connections, first runs of encoder and reader
        for concurrency in (1, 8):
            result = await run_load(generator, concurrency, seconds, questions, call)
            print(json.dumps(asdict(result)), flush=True)
            results.append(result)
    return results


def latency(args: argparse.Namespace, questions: list[str]) -> list[Result]:
    (REPO / "bench" / "out").mkdir(parents=True, exist_ok=True)
    results: list[Result] = []
    for number in range(1, args.rounds + 1):
        for variant, variables in VARIANTS.items():
            env = {**os.environ, "HF_HUB_OFFLINE": "1", **variables,
                   "VIGIL_TRACING": os.environ.get("VIGIL_TRACING", "off")}
            slug = variant.replace(", ", "-").replace(" ", "-")
            process, http_port, _ = start_vigil(env, REPO / "bench" / "out" / f"reader-{slug}-serve.log")
            try:
                http = f"http://127.0.0.1:{http_port}"
                wait_for_generator(http, variables["VIGIL_GENERATOR"])
                for result in asyncio.run(load(f"{http}/rag/query", questions, args.seconds, variant)):
                    result.round = number
                    results.append(result)
            finally:
                stop(process)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=400, help="Held-out questions scored per generator.")
    parser.add_argument("--seconds", type=float, default=10.0, help="Seconds of load per generator and concurrency.")
    parser.add_argument("--rounds", type=int, default=1, help="Rounds of the two servers, alternating.")
    parser.add_argument("--skip-latency", action="store_true", help="Quality only.")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "reader.json")
    args = parser.parse_args()
    authenticate_process(get_settings())  # as every `vigil` command logs in to the home's MLflow
    load_before = os.getloadavg()
    figures, readme_answers = quality(args)
    print(json.dumps({"quality": figures, "README questions": readme_answers}, indent=2), flush=True)
    questions = [item.question for item in resolve_split_qa(QA_FILE, "held-out", seed=11).items]
    random.Random(0).shuffle(questions)
    results = [] if args.skip_latency else latency(args, questions)
    medians = {f"{g} c={c}": {"p50_ms": statistics.median(r.p50_ms for r in results if (r.target, r.concurrency)
                                                          == (g, c)),
                              "p99_ms": statistics.median(r.p99_ms for r in results if (r.target, r.concurrency)
                                                          == (g, c)),
                              "throughput": statistics.median(r.throughput for r in results
                                                              if (r.target, r.concurrency) == (g, c)),
                              "errors": sum(r.errors for r in results if (r.target, r.concurrency) == (g, c))}
               for g in VARIANTS for c in (1, 8) if any((r.target, r.concurrency) == (g, c) for r in results)}
    reader_f1, extractive_f1 = figures["reader"]["token_f1"], figures["extractive"]["token_f1"]
    reader_p50 = medians.get("reader c=1", {}).get("p50_ms")
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "runtime": get_settings().model_runtime,
        "quality": figures, "README questions": readme_answers, "latency": medians,
        "results": [asdict(r) for r in results],
        "targets": {"reader F1 >= 0.55": reader_f1 >= 0.55,
                    "reader F1 >= 3x extractive": reader_f1 >= 3 * extractive_f1,
                    "reader p50 c=1 <= 60 ms": None if reader_p50 is None else reader_p50 <= 60},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("latency", "targets")}, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
