"""Evaluate the RAG pipeline on QA pairs and log the evidence to MLflow (`evaluations`) and, when set up, LangSmith.

Every question is asked once, as a user would ask it — ``pipeline.query(question, k)`` in process, or
``POST {endpoint}/rag/query`` against a running Vigil — and everything is judged on that one answer: retrieval on
the passages of the chunks it cites (the chunks the generator read), the answer against the gold answers, and
groundedness against the cited text. Both sources therefore give the same figures for the same store.

The evaluators are one function, :func:`score_outputs`; LangSmith gets the same function wrapped as its evaluator,
fed the answers already measured, so the two never disagree and no question is asked twice.

Run: `vigil.eval.kind=rag`, with metrics, params, `evaluation.json` (the report) and `results.json` (one row per
question, an MLflow table).
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import httpx
import numpy as np

from evaluations import tracking
from evaluations.datasets import QAData, QAItem, resolve_qa
from evaluations.rag_metrics import (
    answer_containment,
    answer_text,
    contains_answer,
    dedupe,
    exact_match,
    first_relevant_rank,
    groundedness,
    ndcg_at_k,
    retrieval_metrics,
    token_f1,
)
from evaluations.schemas import (
    DatasetInfo,
    Distribution,
    LangSmithOutcome,
    RagEvaluation,
    RagMetrics,
    RagQuestionResult,
)
from evaluations.scoring import ProgressCallback, post_to_vigil
from vigil.contracts import Citation, GeneratorInfo, ModelIdentity, RagQueryResponse, Usage
from vigil.credentials import mask_url
from vigil.errors import VigilError
from vigil.settings import get_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from service.rag.pipeline import RagPipeline
    from vigil.settings import Settings

logger = logging.getLogger(__name__)

QUERY_PATH = "/rag/query"
# Ranks reported besides k itself, where they fit under it.
REPORTED_KS = (1, 3, 5, 10)
EVALUATORS = ("recall_at_k", "reciprocal_rank", "ndcg_at_k", "answer_containment", "exact_match", "token_f1",
              "groundedness")


# --- asking -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answered:
    """One answer as the caller received it, and how long the caller waited."""

    answer: str
    citations: list[Citation]
    usage: Usage
    generator: GeneratorInfo
    embedding_model: ModelIdentity
    seconds: float


class Answerer(Protocol):
    source: str

    def ask(self, question: str, top_k: int) -> Answered: ...

    def close(self) -> None: ...


class EndpointAnswerer:
    """A running Vigil, over HTTP."""

    source = "endpoint"

    def __init__(self, url: str, timeout: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self._client = httpx.Client(timeout=timeout)

    def ask(self, question: str, top_k: int) -> Answered:
        started = time.perf_counter()
        body = post_to_vigil(self._client, self.url, QUERY_PATH, {"question": question, "top_k": top_k},
                             RagQueryResponse)
        seconds = time.perf_counter() - started
        return Answered(body.answer, body.citations, body.usage, body.generator, body.model, seconds)

    def close(self) -> None:
        self._client.close()


class InProcessAnswerer:
    """The RAG pipeline of this process, on the configured Milvus store."""

    source = "in-process"

    def __init__(self, pipeline: RagPipeline) -> None:
        self.pipeline = pipeline

    @classmethod
    def open(cls, settings: Settings) -> InProcessAnswerer:
        """The pipeline the settings describe, warmed up; a clear error when its store is taken or empty."""
        from service.rag.client import service_is_up, service_url
        from service.rag.errors import StoreUnavailable
        from service.rag.pipeline import RagPipeline
        from service.rag.store import is_lite

        lite = is_lite(settings.milvus_target)
        url = service_url(settings.http_port)
        hint = f"evaluate the running service instead: vigil eval rag --endpoint {url} …"
        # Milvus Lite is single-process: a running `vigil serve` holds the store's lock.
        if lite and service_is_up(url):
            raise VigilError(f"a Vigil service is running at {url} and owns the Milvus Lite store "
                             f"{settings.milvus_target}; {hint}")
        logging.getLogger("milvus_lite.server_manager").setLevel(logging.CRITICAL)
        pipeline = RagPipeline.from_settings(settings)
        try:
            pipeline.warm_up()
            # The reader the service would serve (rag-reader@<alias>), loaded before the first question.
            pipeline.follow_reader(wait=True)
            chunks = pipeline.stats().chunks
        except StoreUnavailable as error:
            pipeline.close()
            raise VigilError(f"{error}\nWith `vigil serve` running, {hint}" if lite else str(error)) from None
        if not chunks:
            pipeline.close()
            raise VigilError(f"the RAG collection {settings.rag_collection} at {settings.milvus_target} is empty; "
                             "ingest documents first (vigil rag ingest data/rag/corpus.jsonl).")
        return cls(pipeline)

    def ask(self, question: str, top_k: int) -> Answered:
        started = time.perf_counter()
        answer = self.pipeline.query(question, top_k)
        seconds = time.perf_counter() - started
        return Answered(answer.answer, answer.citations, answer.usage, answer.generator, answer.model, seconds)

    def close(self) -> None:
        self.pipeline.close()


# --- judging ------------------------------------------------------------------------------------------------------


def outputs_of(answered: Answered) -> dict[str, Any]:
    """What the evaluators judge of an answer (also the LangSmith run's outputs)."""
    return {
        "answer": answered.answer,
        "passages": dedupe(c.document_id for c in answered.citations),
        "contexts": [c.text for c in answered.citations],
        "usage": answered.usage.model_dump(),
    }


def reference_of(item: QAItem) -> dict[str, Any]:
    """The gold side of a question (also the LangSmith example's outputs)."""
    return {"answers": list(item.answers), "passage_ids": list(item.passage_ids)}


def score_outputs(outputs: Mapping[str, Any], reference: Mapping[str, Any], k: int) -> dict[str, float | None]:
    """Every evaluator on one answer; None where there is nothing to judge (groundedness without context)."""
    passages, gold = list(outputs["passages"]), set(reference["passage_ids"])
    first = first_relevant_rank(passages, gold, k)
    return {
        "recall_at_k": float(first is not None),
        "reciprocal_rank": 1.0 / first if first else 0.0,
        "ndcg_at_k": ndcg_at_k(passages, gold, k),
        "answer_containment": float(contains_answer(outputs["answer"], reference["answers"])),
        "exact_match": exact_match(answer_text(outputs["answer"]), reference["answers"]),
        "token_f1": token_f1(answer_text(outputs["answer"]), reference["answers"]),
        "groundedness": groundedness(outputs["answer"], list(outputs["contexts"])),
    }


def distribution(values: Sequence[float]) -> Distribution:
    if not values:
        return Distribution(mean=0.0, p50=0.0, p95=0.0)
    array = np.asarray(values, dtype=np.float64)
    p50, p95 = np.percentile(array, [50, 95])
    return Distribution(mean=float(array.mean()), p50=float(p50), p95=float(p95))


def summarize(results: Sequence[RagQuestionResult], k: int) -> RagMetrics:
    """The evaluation's figures from its per-question results."""
    ks = sorted({*(r for r in REPORTED_KS if r <= k), k})
    retrieval = retrieval_metrics([r.passages for r in results], [set(r.gold_passages) for r in results], ks)
    grounded = [score for r in results if (score := r.scores.get("groundedness")) is not None]
    return RagMetrics(
        questions=len(results),
        k=k,
        recall=retrieval.recall,
        mrr=retrieval.mrr,
        ndcg=retrieval.ndcg,
        answer_containment=answer_containment([r.answer for r in results], [r.gold_answers for r in results]),
        token_f1=float(np.mean([r.scores["token_f1"] or 0.0 for r in results])) if results else 0.0,
        exact_match=float(np.mean([r.scores.get("exact_match") or 0.0 for r in results])) if results else 0.0,
        groundedness=float(np.mean(grounded)) if grounded else None,
        grounded_questions=len(grounded),
        prompt_tokens=distribution([r.prompt_tokens for r in results]),
        completion_tokens=distribution([r.completion_tokens for r in results]),
        total_tokens=distribution([r.total_tokens for r in results]),
        latency_ms=distribution([r.latency_ms for r in results]),
    )


def ask_all(
    answerer: Answerer, items: Sequence[QAItem], k: int, progress: ProgressCallback | None = None
) -> tuple[list[RagQuestionResult], list[Answered]]:
    """Each question once, judged on the spot."""
    results: list[RagQuestionResult] = []
    answers: list[Answered] = []
    phase = f"asking {len(items)} questions ({answerer.source})"
    if progress:
        progress(phase, 0, len(items))
    for done, item in enumerate(items, start=1):
        answered = answerer.ask(item.question, k)
        outputs = outputs_of(answered)
        results.append(RagQuestionResult(
            id=item.id, question=item.question, gold_answers=list(item.answers),
            gold_passages=list(item.passage_ids), answer=answered.answer, passages=outputs["passages"],
            first_relevant_rank=first_relevant_rank(outputs["passages"], set(item.passage_ids), k),
            scores=score_outputs(outputs, reference_of(item), k),
            prompt_tokens=answered.usage.prompt_tokens, completion_tokens=answered.usage.completion_tokens,
            total_tokens=answered.usage.total_tokens, latency_ms=answered.seconds * 1000.0,
        ))
        answers.append(answered)
        if progress:
            progress(phase, done, len(items))
    return results, answers


# --- the evaluation -----------------------------------------------------------------------------------------------


def measure_rag(
    answerer: Answerer,
    data: QAData,
    k: int,
    *,
    endpoint: str | None = None,
    limit: int | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[RagEvaluation, list[Answered]]:
    """Ask ``data``'s questions once each through ``answerer`` with top_k ``k``; the report and the answers.

    Records nothing anywhere (see :func:`evaluate_rag` for the logged run) and leaves ``answerer`` open.
    """
    results, answers = ask_all(answerer, data.items, k, progress)
    first = answers[0]
    report = RagEvaluation(
        dataset=DatasetInfo(name=str(data.path), fingerprint=data.fingerprint, rows=len(data.items),
                            domains=data.documents, description=data.description),
        source="endpoint" if answerer.source == "endpoint" else "in-process",
        endpoint=mask_url(endpoint) if endpoint else None, k=k, limit=limit,
        generator=first.generator.name, generator_model=first.generator.model,
        embedder=ModelIdentity(name=first.embedding_model.name, version=first.embedding_model.version),
        metrics=summarize(results, k), results=results,
    )
    return report, answers


QASplit = Literal["all", "held-out", "train"]


def resolve_split_qa(dataset: Path, split: QASplit = "all", limit: int | None = None,
                     seed: int | None = None) -> QAData:
    """``dataset``'s questions on one side of the span reader's split by article (:mod:`training.reader`, the one
    place the split is made): ``held-out`` are the questions whose passages no reader version was trained on.
    ``limit`` samples (seeded) after the split, so ``--limit 400 --split held-out`` asks 400 held-out questions."""
    if split == "all":
        return resolve_qa(dataset, limit, seed)
    from training.reader import in_split

    data = resolve_qa(dataset)
    items = [item for item in data.items if in_split(item.passage_ids, split)]
    if not items:
        raise VigilError(f"{dataset} has no questions on the {split} side of the reader's split")
    seed = get_settings().seed if seed is None else seed
    if limit is not None and limit < len(items):
        items = random.Random(seed).sample(items, limit)
    description = f"{dataset} ({len(items)} questions of the reader's {split} split by article"
    description += f", a sample of {limit} with seed {seed})" if limit and len(items) == limit else ")"
    return QAData(dataset, items, description)


def evaluate_rag(
    client: MlflowClient,
    dataset: Path,
    *,
    endpoint: str | None = None,
    k: int = 5,
    limit: int | None = None,
    progress: ProgressCallback | None = None,
    answerer: Answerer | None = None,
    split: QASplit = "all",
) -> RagEvaluation:
    """Ask ``dataset``'s questions (``limit`` of them, seeded; ``split``: one side of the reader's split) with top_k
    ``k`` and log the run; the report.

    With ``endpoint`` the answers come from a running Vigil's ``POST /rag/query``; otherwise from the pipeline of
    this process (``answerer`` replaces both, for callers that hold a pipeline already).
    """
    from service.rag.pipeline import validate_top_k

    settings = get_settings()
    validate_top_k(k)
    data = resolve_split_qa(dataset, split, limit)
    if answerer is None:
        answerer = EndpointAnswerer(endpoint) if endpoint else InProcessAnswerer.open(settings)
    try:
        report, answers = measure_rag(answerer, data, k, endpoint=endpoint, limit=limit, progress=progress)
    finally:
        answerer.close()
    _log_run(client, data, report)
    if settings.langsmith_api_key.get_secret_value():
        if progress:
            progress("LangSmith", 0, 1)
        report.langsmith = log_to_langsmith(settings, data, report, answers)
        if progress:
            progress("LangSmith", 1, 1)
        client.set_tag(report.run_id or "", "vigil.langsmith", report.langsmith.status)
    else:
        report.langsmith = LangSmithOutcome(status="skipped", message="LANGSMITH_API_KEY not set: evaluated locally")
    logger.info("RAG evaluation of %d questions (%s): run %s", len(report.results), report.source, report.run_id)
    return report


def flat_metrics(metrics: RagMetrics) -> dict[str, float | None]:
    """The figures as MLflow metric keys."""
    values: dict[str, float | None] = {
        "questions": metrics.questions, "mrr": metrics.mrr, "answer_containment": metrics.answer_containment,
        "token_f1": metrics.token_f1, "exact_match": metrics.exact_match, "groundedness": metrics.groundedness,
    }
    values.update({f"recall_at_{k}": v for k, v in metrics.recall.items()})
    values.update({f"ndcg_at_{k}": v for k, v in metrics.ndcg.items()})
    for name in ("prompt_tokens", "completion_tokens", "total_tokens", "latency_ms"):
        stats: Distribution = getattr(metrics, name)
        unit = name.removesuffix("_ms")
        suffix = "_ms" if name == "latency_ms" else ""
        values.update({f"{unit}_mean{suffix}": stats.mean, f"{unit}_p50{suffix}": stats.p50,
                       f"{unit}_p95{suffix}": stats.p95})
    return values


def _log_run(client: MlflowClient, data: QAData, report: RagEvaluation) -> None:
    import pandas as pd

    tags = {
        "vigil.eval.kind": "rag",
        "vigil.eval.source": report.source,
        "vigil.eval.endpoint": report.endpoint or "",
        "vigil.model": report.embedder.name,
        "vigil.model_version": report.embedder.version,
        "vigil.rag.embedder": report.embedder.name,
        "vigil.rag.embedder_version": report.embedder.version,
        "vigil.rag.generator": report.generator,
        "vigil.rag.generator_model": report.generator_model,
        "vigil.rag.k": str(report.k),
        "vigil.rag.limit": str(report.limit or ""),
        "dataset.name": report.dataset.name,
        "dataset.fingerprint": report.dataset.fingerprint,
    }
    name = f"eval rag k={report.k} on {data.path.name} ({report.dataset.rows} questions, {report.source})"
    with tracking.evaluation_run(client, name, tags) as run_id:
        report.run_id = run_id
        tracking.log_values(
            client, run_id, metrics=flat_metrics(report.metrics),
            params={"dataset": report.dataset.name, "data_description": report.dataset.description,
                    "questions": report.dataset.rows, "k": report.k, "limit": report.limit or "",
                    "seed": get_settings().seed, "source": report.source, "endpoint": report.endpoint or "",
                    "generator": report.generator, "generator_model": report.generator_model,
                    "embedder": report.embedder.name, "embedder_version": report.embedder.version},
        )
        client.log_dict(run_id, json.loads(report.model_dump_json()), "evaluation.json")
        rows = pd.DataFrame([{
            "id": r.id, "question": r.question, "answer": r.answer, "gold_answers": " | ".join(r.gold_answers),
            "gold_passages": " ".join(r.gold_passages), "passages": " ".join(r.passages),
            "first_relevant_rank": r.first_relevant_rank, **r.scores, "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens, "total_tokens": r.total_tokens, "latency_ms": r.latency_ms,
        } for r in report.results])
        client.log_table(run_id, rows, "results.json")


# --- LangSmith ----------------------------------------------------------------------------------------------------


def langsmith_evaluator(k: int) -> Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]:
    """:func:`score_outputs` in the shape LangSmith's ``evaluate`` calls: one feedback per evaluator."""

    def vigil_rag(outputs: dict[str, Any], reference_outputs: dict[str, Any]) -> dict[str, Any]:
        scores = score_outputs(outputs, reference_outputs, k)
        return {"results": [{"key": key, "score": value} for key, value in scores.items() if value is not None]}

    return vigil_rag


def log_to_langsmith(
    settings: Settings, data: QAData, report: RagEvaluation, answers: Sequence[Answered],
    timeout_ms: int = 10_000,
) -> LangSmithOutcome:
    """The questions as a LangSmith dataset (one per content fingerprint) and these answers as an experiment.

    Never raises: LangSmith is a second home for the figures, and MLflow has them already.
    """
    endpoint = settings.langsmith_endpoint
    dataset_name = f"vigil-rag-{data.path.stem}-{data.fingerprint}"
    # The client logs every retry and failure at length; one message below says what happened.
    noisy = [logging.getLogger(name) for name in ("langsmith", "urllib3.connectionpool")]
    levels = [log.level for log in noisy]
    for log in noisy:
        log.setLevel(logging.CRITICAL)
    try:
        return _log_to_langsmith(settings, data, report, answers, dataset_name, timeout_ms)
    except Exception as error:  # whatever LangSmith does, the local evaluation stands
        reason = (str(error).splitlines() or [""])[0][:200]
        message = (f"LangSmith at {mask_url(endpoint)} failed ({type(error).__name__}: {reason}); "
                   "the evaluation ran locally and is in MLflow")
        logger.warning(message)
        return LangSmithOutcome(status="failed", message=message, dataset=dataset_name)
    finally:
        for log, level in zip(noisy, levels, strict=True):
            log.setLevel(level)


def _log_to_langsmith(
    settings: Settings, data: QAData, report: RagEvaluation, answers: Sequence[Answered], dataset_name: str,
    timeout_ms: int,
) -> LangSmithOutcome:
    from langsmith import Client
    from langsmith.evaluation import evaluate
    from urllib3.util.retry import Retry

    # Runs and feedback go up from the client's background thread, which only logs what LangSmith refuses.
    dropped: list[Exception] = []
    client = Client(api_url=settings.langsmith_endpoint, api_key=settings.langsmith_api_key.get_secret_value(),
                    timeout_ms=timeout_ms, retry_config=Retry(total=1, backoff_factor=0.2),
                    tracing_error_callback=dropped.append)
    if not client.has_dataset(dataset_name=dataset_name):
        created = client.create_dataset(dataset_name, description=f"Vigil RAG QA: {data.description}")
        client.create_examples(dataset_id=created.id, examples=[
            {"inputs": {"id": item.id, "question": item.question}, "outputs": reference_of(item),
             "metadata": {"qa_id": item.id}} for item in data.items])
    # The answers measured above, not new ones: LangSmith scores exactly what MLflow recorded.
    by_id = {item.id: outputs_of(answered) for item, answered in zip(data.items, answers, strict=True)}

    def target(inputs: dict[str, Any]) -> dict[str, Any]:
        return by_id[inputs["id"]]

    # evaluate() prints the experiment's link to stdout, which belongs to the report (`--json -`).
    with contextlib.redirect_stdout(sys.stderr):
        results = evaluate(
            target, data=dataset_name, evaluators=[langsmith_evaluator(report.k)], client=client,
            experiment_prefix=f"vigil-rag-{report.generator}-k{report.k}",
            description=f"vigil eval rag ({report.source}); MLflow run {report.run_id}",
            metadata={"source": report.source, "endpoint": report.endpoint or "", "k": report.k,
                      "generator": report.generator, "generator_model": report.generator_model,
                      "embedder": report.embedder.name, "embedder_version": report.embedder.version,
                      "dataset_fingerprint": data.fingerprint, "mlflow_run_id": report.run_id or ""},
            max_concurrency=0, blocking=True,
        )
    # A blocking evaluate() keeps an error met while running the experiment instead of raising it.
    results.wait()
    experiment = str(getattr(results, "experiment_name", "") or "")
    client.flush()
    if dropped:
        raise RuntimeError(f"experiment {experiment}: {len(dropped)} upload(s) of runs and feedback refused, "
                           f"first: {dropped[0]}")
    return LangSmithOutcome(status="logged", message=f"dataset {dataset_name}, experiment {experiment}",
                        dataset=dataset_name, experiment=experiment)


# --- the span reader: two versions on the held-out questions (the promotion gate) ---------------------------------

# Held-out questions both readers answer in the gate: enough to tell a worse reader (the paired interval of the F1
# difference is reported), few enough that a promotion takes a minute on this machine.
READER_GATE_QUESTIONS = 300
# When the policy has no [models."<reader>"] rules: a reader may lose at most this much held-out token F1.
DEFAULT_READER_MAX_REGRESSION = 0.02


@dataclass(frozen=True)
class ReaderComparison:
    """The gate's verdict on a reader version against the alias's holder, and the run that holds the evidence."""

    run_id: str
    passed: bool
    refusals: list[str]
    candidate: dict[str, float]
    baseline: dict[str, float]


def reader_scores(reader: Any, items: Sequence[Any]) -> dict[str, np.ndarray]:
    """Per question, exact match and token F1 of ``reader`` on the question's own passage."""
    exact, f1 = [], []
    for example in items:
        span = reader.answer(example.question, example.context)
        text = span.text if span else ""
        exact.append(exact_match(text, example.answers))
        f1.append(token_f1(text, example.answers))
    return {"exact_match": np.asarray(exact), "token_f1": np.asarray(f1)}


def compare_readers(client: MlflowClient, name: str, candidate: str, baseline: str, *, trigger: str,
                    questions: int | None = None,
                    progress: ProgressCallback | None = None) -> ReaderComparison:
    """Both reader versions on the same held-out questions (the reader's split by article; ``questions`` of them,
    else the policy's [gate] limit, else :data:`READER_GATE_QUESTIONS`), judged by the policy's
    ``[models."<name>"]`` rules (token F1 within 0.02 of the baseline's when it has none); logged to `evaluations`.
    Each version is read as data after its files match its recorded digest."""
    from evaluations.policy import judge
    from evaluations.schemas import MetricDelta
    from training.reader import reader_split, sample
    from vigil import model_cache
    from vigil.policy import Rule, load_policy
    from vigil.reader_model import load_registered

    settings = get_settings()
    policy = load_policy(settings.promotion_policy)
    section = policy.models.get(name)
    rules = section.rules if section and section.rules else {
        "token_f1": Rule(max_regression=DEFAULT_READER_MAX_REGRESSION)}
    items = sample(reader_split().held_out, questions or policy.gate.limit or READER_GATE_QUESTIONS, settings.seed)
    scores: dict[str, dict[str, np.ndarray]] = {}
    for role, version in (("candidate", candidate), ("baseline", baseline)):
        if progress:
            progress(f"reading {len(items)} held-out questions with v{version}", 0, 1)
        folder = model_cache.download_version(client, name, version, settings.model_cache_dir)
        scores[role] = reader_scores(load_registered(client, name, version, folder), items)
        if progress:
            progress(f"reading {len(items)} held-out questions with v{version}", 1, 1)
    rng = np.random.default_rng(settings.seed)
    resamples = rng.integers(0, len(items), size=(policy.gate.bootstrap, len(items))) if policy.gate.bootstrap else None
    tail = (1 - policy.gate.confidence) / 2 * 100
    deltas = []
    for metric in ("exact_match", "token_f1"):
        ours, theirs = scores["candidate"][metric], scores["baseline"][metric]
        low = high = None
        if resamples is not None and len(items):
            differences = (ours[resamples] - theirs[resamples]).mean(axis=1)
            low, high = (float(x) for x in np.percentile(differences, [tail, 100 - tail]))
        deltas.append(MetricDelta(metric=metric, candidate=float(ours.mean()), baseline=float(theirs.mean()),
                                  delta=float(ours.mean() - theirs.mean()), ci_low=low, ci_high=high,
                                  higher_is_better=True))
    verdicts = judge(policy, deltas, rules)
    passed = all(verdict.passed for verdict in verdicts)
    tags = {"vigil.eval.kind": "reader-comparison", "vigil.model": name, "vigil.candidate_version": candidate,
            "vigil.baseline_version": baseline, "vigil.eval.trigger": trigger,
            "vigil.eval.verdict": "pass" if passed else "fail"}
    with tracking.evaluation_run(client, f"compare {name} v{candidate} vs v{baseline} ({len(items)} held-out "
                                         "questions)", tags) as run_id:
        metrics: dict[str, float | None] = {}
        for delta in deltas:
            metrics.update({f"candidate_{delta.metric}": delta.candidate, f"baseline_{delta.metric}": delta.baseline,
                            f"delta_{delta.metric}": delta.delta})
        tracking.log_values(client, run_id, metrics=metrics, params={
            "questions": len(items), "split": "held-out (reader's split by article)", "seed": settings.seed,
            "policy": str(policy.source), "bootstrap": policy.gate.bootstrap})
        client.log_dict(run_id, {"deltas": [d.model_dump() for d in deltas],
                                 "rules": [v.model_dump() for v in verdicts]}, "comparison.json")
    return ReaderComparison(run_id, passed, [v.reason for v in verdicts if not v.passed],
                            {d.metric: float(d.candidate or 0.0) for d in deltas},
                            {d.metric: float(d.baseline or 0.0) for d in deltas})
