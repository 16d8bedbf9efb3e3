"""RAG quality measures — pure functions over rankings and answers, reused by the eval CLI and the benchmark.

Answers are compared after SQuAD's normalisation (lower case, no punctuation, no articles): containment, exact match
and token F1 as the SQuAD evaluation script defines them. Retrieval is judged on passage ids (chunks deduplicated to the
passages they come from) with binary relevance: recall@k, MRR and nDCG@k (gain 1 / log2(rank + 1), ideal = every
gold passage ranked first).
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Sequence

from pydantic import BaseModel, Field

# One home for SQuAD's answer scoring: the reader's training and its gate judge answers with the same functions.
from vigil.reader_model import exact_match as exact_match
from vigil.reader_model import normalize_answer as normalize_answer
from vigil.reader_model import token_f1 as token_f1

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)


class RetrievalMetrics(BaseModel):
    questions: int
    recall: dict[int, float] = Field(description="k → share of questions with a relevant id in the first k.")
    mrr: float = Field(description="Mean reciprocal rank of the first relevant id within the first max(ks).")
    ndcg: dict[int, float] = Field(default_factory=dict, description="k → mean nDCG@k (binary relevance).")


def dedupe(ids: Iterable[str]) -> list[str]:
    """``ids`` in order, each once: chunk hits → the passages they come from."""
    return list(dict.fromkeys(ids))


def first_relevant_rank(ranking: Sequence[str], relevant: Collection[str], depth: int) -> int | None:
    """1-based rank of the first relevant id within the first ``depth``; None when there is none."""
    return next((rank for rank, item in enumerate(ranking[:depth], start=1) if item in relevant), None)


def ndcg_at_k(ranking: Sequence[str], relevant: Collection[str], k: int) -> float:
    """nDCG@k with binary relevance; 0 when nothing is relevant.

    ``ranking`` should hold each id once (see :func:`dedupe`): a passage retrieved twice is found once.
    """
    if k < 1:
        raise ValueError("k must be a positive rank")
    gain = sum(1.0 / math.log2(rank + 1) for rank, item in enumerate(ranking[:k], start=1) if item in relevant)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(relevant), k) + 1))
    return gain / ideal if ideal else 0.0


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
    ndcg = dict.fromkeys(ks, 0.0)
    reciprocal = 0.0
    for ranking, gold in zip(ranked, relevant, strict=True):
        for k in ks:
            ndcg[k] += ndcg_at_k(ranking, gold, k)
        first = first_relevant_rank(ranking, gold, depth)
        if first is None:
            continue
        reciprocal += 1.0 / first
        for k in ks:
            hits[k] += first <= k
    n = len(ranked)
    return RetrievalMetrics(questions=n, recall={k: (hits[k] / n if n else 0.0) for k in sorted(ks)},
                            mrr=reciprocal / n if n else 0.0,
                            ndcg={k: (ndcg[k] / n if n else 0.0) for k in sorted(ks)})


def contains_answer(answer: str, gold: Iterable[str]) -> bool:
    """Whether any gold answer appears in ``answer`` (both SQuAD-normalised)."""
    normalized = f" {normalize_answer(answer)} "
    return any(g and f" {g} " in normalized for g in (normalize_answer(x) for x in gold))


def answer_containment(answers: Sequence[str], gold: Sequence[Collection[str]]) -> float:
    """Share of answers that contain one of their gold answers."""
    if len(answers) != len(gold):
        raise ValueError(f"{len(answers)} answers but {len(gold)} gold sets")
    return sum(contains_answer(a, g) for a, g in zip(answers, gold, strict=True)) / len(answers) if answers else 0.0


# A claim counts as grounded when this share of its content words occurs in the context it cites: tolerant of a
# generator's glue words and inflections, not of a name or number the context does not hold.
GROUNDED_MIN_SUPPORT = 0.8
_CITATION_MARK = re.compile(r"\[(\d+)\]")
_CLAIM = re.compile(r"(.*?)((?:\s*\[\d+\])+|$)", re.DOTALL)


def answer_text(answer: str) -> str:
    """The answer without its citation marks: what exact match and token F1 judge (a mark's number is no word of
    the answer, and would cost every cited span its exact match)."""
    return " ".join(_CITATION_MARK.sub(" ", answer).split())


def cited_claims(answer: str) -> list[tuple[str, list[int]]]:
    """The answer's sentences, each with the 1-based citation numbers marked after it (``[n]``).

    A mark applies to every sentence since the previous mark, so "A. B. [2]" cites chunk 2 for both.
    """
    from service.rag.chunking import split_sentences

    claims: list[tuple[str, list[int]]] = []
    for match in _CLAIM.finditer(answer):
        text, marks = match.group(1), [int(n) for n in _CITATION_MARK.findall(match.group(2))]
        claims.extend((sentence, marks) for sentence in split_sentences(text) if sentence.strip())
    return claims


def _content_words(text: str) -> list[str]:
    from service.rag.store import STOP_WORDS

    return [word for word in normalize_answer(text).split() if word not in STOP_WORDS]


def claim_support(claim: str, context: str) -> float | None:
    """Share of the claim's content words (normalised, stop words dropped) found in ``context``; None if it has none."""
    words = _content_words(claim)
    if not words:
        return None
    available = set(_content_words(context))
    return sum(word in available for word in words) / len(words)


def groundedness(answer: str, contexts: Sequence[str], min_support: float = GROUNDED_MIN_SUPPORT) -> float | None:
    """Share of the answer's sentences found in the context they cite (all of ``contexts`` when unmarked).

    ``contexts`` are the citations' texts in citation order, so a mark ``[n]`` names ``contexts[n - 1]``; a mark
    outside them cites nothing. None when there is no context or no sentence with content words to judge.
    """
    if not contexts:
        return None
    judged = grounded = 0
    for claim, marks in cited_claims(answer):
        cited = [contexts[n - 1] for n in marks if 1 <= n <= len(contexts)] if marks else list(contexts)
        support = claim_support(claim, " ".join(cited))
        if support is None:
            continue
        judged += 1
        grounded += support >= min_support
    return grounded / judged if judged else None
