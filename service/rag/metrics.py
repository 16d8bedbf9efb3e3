"""RAG quality measures — pure functions over rankings and answers, reused by the eval CLI and the benchmark."""

from __future__ import annotations

import re
import string
from collections.abc import Collection, Iterable, Sequence

from pydantic import BaseModel, Field

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)


class RetrievalMetrics(BaseModel):
    questions: int
    recall: dict[int, float] = Field(description="k → share of questions with a relevant id in the first k.")
    mrr: float = Field(description="Mean reciprocal rank of the first relevant id within the first max(ks).")


def dedupe(ids: Iterable[str]) -> list[str]:
    """``ids`` in order, each once: chunk hits → the passages they come from."""
    return list(dict.fromkeys(ids))


def retrieval_metrics(ranked: Sequence[Sequence[str]], relevant: Sequence[Collection[str]],
                      ks: Sequence[int] = DEFAULT_KS) -> RetrievalMetrics:
    """Recall@k and MRR of rankings against the relevant ids of each question.

    ``ranked[i]`` is question i's ranking (e.g. passage ids, deduplicated), ``relevant[i]`` its gold ids.
    A question without any relevant id counts as a miss.
    """
    if len(ranked) != len(relevant):
        raise ValueError(f"{len(ranked)} rankings but {len(relevant)} relevance sets")
    if not ks or min(ks) < 1:
        raise ValueError("ks must be positive ranks")
    depth = max(ks)
    hits = dict.fromkeys(ks, 0)
    reciprocal = 0.0
    for ranking, gold in zip(ranked, relevant, strict=True):
        first = next((rank for rank, item in enumerate(ranking[:depth], start=1) if item in gold), None)
        if first is None:
            continue
        reciprocal += 1.0 / first
        for k in ks:
            hits[k] += first <= k
    n = len(ranked)
    return RetrievalMetrics(questions=n, recall={k: (hits[k] / n if n else 0.0) for k in sorted(ks)},
                            mrr=reciprocal / n if n else 0.0)


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def contains_answer(answer: str, gold: Iterable[str]) -> bool:
    """Whether any gold answer appears in ``answer`` (both SQuAD-normalised)."""
    normalized = f" {normalize_answer(answer)} "
    return any(g and f" {g} " in normalized for g in (normalize_answer(x) for x in gold))


def answer_containment(answers: Sequence[str], gold: Sequence[Collection[str]]) -> float:
    """Share of answers that contain one of their gold answers."""
    if len(answers) != len(gold):
        raise ValueError(f"{len(answers)} answers but {len(gold)} gold sets")
    return sum(contains_answer(a, g) for a, g in zip(answers, gold, strict=True)) / len(answers) if answers else 0.0
