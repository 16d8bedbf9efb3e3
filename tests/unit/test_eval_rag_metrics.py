"""RAG evaluation metrics against independent computations: nDCG against scikit-learn, token F1, groundedness and
the evaluation's per-question scores and aggregates against hand-worked values."""

from __future__ import annotations

import random

import numpy as np
import pytest
from sklearn.metrics import ndcg_score

from evaluations.rag import score_outputs, summarize
from evaluations.rag_metrics import (
    cited_claims,
    claim_support,
    groundedness,
    ndcg_at_k,
    retrieval_metrics,
    token_f1,
)
from evaluations.schemas import RagQuestionResult


def sklearn_ndcg(ranking: list[str], relevant: set[str], k: int) -> float:
    """The same nDCG@k by scikit-learn: retrieved ids scored by rank, gold ids never retrieved scored below
    everything, and enough irrelevant fillers between them that only retrieved ids can fill the first k."""
    fillers = [f"filler{i}" for i in range(k)]
    missed = sorted(relevant - set(ranking))
    items = [*ranking, *fillers, *missed]
    scores = [*range(len(items) + 10, len(items) + 10 - len(ranking), -1), *[0.5] * len(fillers),
              *[-1.0] * len(missed)]
    truth = [1.0 if item in relevant else 0.0 for item in items]
    return float(ndcg_score([truth], [scores], k=k))


@pytest.mark.parametrize("seed", range(25))
def test_ndcg_equals_scikit_learn(seed: int) -> None:
    rng = random.Random(seed)
    pool = [f"p{i}" for i in range(30)]
    ranking = rng.sample(pool, rng.randint(1, 12))
    relevant = set(rng.sample(pool, rng.randint(1, 4)))
    k = rng.randint(1, 10)
    assert ndcg_at_k(ranking, relevant, k) == pytest.approx(sklearn_ndcg(ranking, relevant, k), abs=1e-12)


def test_ndcg_by_hand() -> None:
    # One gold passage at rank 2: DCG = 1/log2(3), ideal DCG = 1.
    assert ndcg_at_k(["a", "gold", "c"], {"gold"}, 5) == pytest.approx(1 / np.log2(3))
    # Two gold passages, only one retrieved, at rank 1: 1 / (1 + 1/log2(3)).
    assert ndcg_at_k(["g1", "x"], {"g1", "g2"}, 5) == pytest.approx(1 / (1 + 1 / np.log2(3)))
    assert ndcg_at_k(["x", "y", "gold"], {"gold"}, 2) == 0.0
    assert ndcg_at_k(["x"], set(), 3) == 0.0
    with pytest.raises(ValueError, match="positive"):
        ndcg_at_k(["x"], {"x"}, 0)


def test_retrieval_metrics_average_ndcg_per_question() -> None:
    ranked = [["a", "gold"], ["gold"], ["n1", "n2"]]
    metrics = retrieval_metrics(ranked, [{"gold"}] * 3, ks=(1, 2))
    assert metrics.ndcg[1] == pytest.approx(1 / 3)
    assert metrics.ndcg[2] == pytest.approx((1 / np.log2(3) + 1) / 3)


@pytest.mark.parametrize(("answer", "gold", "expected"), [
    # SQuAD normalisation drops "the" and punctuation: [denver, broncos, won] vs [denver, broncos]:
    # precision 2/3, recall 1 → F1 = 2·(2/3)·1 / (2/3 + 1) = 0.8.
    ("The Denver Broncos won.", ["Denver Broncos"], 0.8),
    # The best gold answer counts: "broncos" alone gives P 1/3, R 1 → 0.5; "Denver Broncos won" gives 1.
    ("The Denver Broncos won.", ["Broncos", "Denver Broncos won"], 1.0),
    # Repeated tokens count once per occurrence on both sides: common = min(2,1) = 1 → P 1/2, R 1 → 2/3.
    ("gold gold", ["gold"], 2 / 3),
    ("Carolina Panthers", ["Denver Broncos"], 0.0),
    ("anything", [], 0.0),
    ("", ["Denver"], 0.0),
])
def test_token_f1_is_squads(answer: str, gold: list[str], expected: float) -> None:
    assert token_f1(answer, gold) == pytest.approx(expected)


CONTEXTS = [
    "Super Bowl 50 was played on February 7, 2016, at Levi's Stadium in Santa Clara, California.",
    "The Denver Broncos defeated the Carolina Panthers 24–10.",
]


def test_claims_carry_the_marks_that_follow_them() -> None:
    answer = "The Broncos won. [2] It was played in Santa Clara. In 2016. [1][2] Unmarked tail."
    assert cited_claims(answer) == [
        ("The Broncos won.", [2]), ("It was played in Santa Clara.", [1, 2]), ("In 2016.", [1, 2]),
        ("Unmarked tail.", []),
    ]


def test_extractive_answers_are_fully_grounded() -> None:
    answer = f"{CONTEXTS[1]} [2] {CONTEXTS[0]} [1]"
    assert groundedness(answer, CONTEXTS) == 1.0


def test_a_sentence_citing_the_wrong_context_or_inventing_facts_is_not_grounded() -> None:
    # Second sentence cites chunk 1, which does not hold the score; third is invented outright.
    answer = ("The Broncos defeated the Panthers. [2] The Broncos defeated the Panthers 24–10. [1] "
              "Tom Brady threw five touchdowns in 2019. [2]")
    assert groundedness(answer, CONTEXTS) == pytest.approx(1 / 3)
    # Content words of "Tom Brady threw five touchdowns 2019" — none in the cited context.
    assert claim_support("Tom Brady threw five touchdowns in 2019.", CONTEXTS[1]) == 0.0


def test_support_tolerates_glue_words_but_not_a_wrong_number() -> None:
    # Content words: broncos, defeated, panthers, 24–10 → all 4 found; stop words are not judged.
    assert claim_support("The Broncos, they defeated the Panthers 24–10", CONTEXTS[1]) == 1.0
    # broncos, defeated, panthers found; 31–10 not: 3/4 = 0.75, below the 0.8 bar.
    assert claim_support("The Broncos defeated the Panthers 31–10", CONTEXTS[1]) == pytest.approx(0.75)
    assert groundedness("The Broncos defeated the Panthers 31–10. [2]", CONTEXTS) == 0.0


def test_groundedness_is_undefined_without_context_or_claims() -> None:
    assert groundedness("Anything at all.", []) is None
    assert groundedness("It is. [1]", CONTEXTS) is None  # no content word to look for
    assert claim_support("the of a", CONTEXTS[0]) is None
    # A mark beyond the citations cites nothing, so the sentence is not grounded.
    assert groundedness("The Denver Broncos won. [7]", CONTEXTS) == 0.0


def question(qid: str, passages: list[str], gold: set[str], answer: str, latency: float) -> RagQuestionResult:
    outputs = {"answer": answer, "passages": passages, "contexts": CONTEXTS, "usage": {}}
    reference = {"answers": ["Denver Broncos"], "passage_ids": sorted(gold)}
    return RagQuestionResult(
        id=qid, question="Who won?", gold_answers=reference["answers"], gold_passages=reference["passage_ids"],
        answer=answer, passages=passages, first_relevant_rank=None, scores=score_outputs(outputs, reference, 3),
        prompt_tokens=100 + int(latency), completion_tokens=10, total_tokens=110 + int(latency), latency_ms=latency,
    )


def test_per_question_scores_and_the_summary_agree() -> None:
    results = [
        question("q1", ["gold", "x"], {"gold"}, "The Denver Broncos defeated the Carolina Panthers 24–10. [2]", 10),
        question("q2", ["x", "y", "gold"], {"gold"}, "The Carolina Panthers. [2]", 30),
        question("q3", ["x", "y", "z", "gold"], {"gold"}, "Levi's Stadium hosted it. [1]", 20),
    ]
    first, second, third = (r.scores for r in results)
    assert (first["recall_at_k"], first["reciprocal_rank"], first["ndcg_at_k"]) == (1.0, 1.0, 1.0)
    assert second["reciprocal_rank"] == pytest.approx(1 / 3)
    assert second["ndcg_at_k"] == pytest.approx(0.5)  # 1/log2(4)
    # k = 3: the gold passage at rank 4 is a miss.
    assert (third["recall_at_k"], third["reciprocal_rank"], third["ndcg_at_k"]) == (0.0, 0.0, 0.0)
    assert (first["answer_containment"], second["answer_containment"]) == (1.0, 0.0)

    # q1's answer without its citation mark normalises to 6 tokens (denver broncos defeated carolina panthers
    # 24–10), 2 of them gold: P 1/3, R 1 → F1 1/2; q2 and q3 share no token with "Denver Broncos".
    assert (first["token_f1"], second["token_f1"], third["token_f1"]) == (pytest.approx(1 / 2), 0.0, 0.0)
    assert (first["exact_match"], second["exact_match"]) == (0.0, 0.0)

    summary = summarize(results, k=3)
    assert summary.recall == {1: pytest.approx(1 / 3), 3: pytest.approx(2 / 3)}
    assert summary.mrr == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert summary.ndcg[3] == pytest.approx((1 + 0.5 + 0) / 3)
    assert summary.answer_containment == pytest.approx(1 / 3)
    assert summary.token_f1 == pytest.approx(1 / 6) and summary.exact_match == 0.0
    assert summary.latency_ms.p50 == 20.0
    assert summary.latency_ms.p95 == pytest.approx(29.0)  # sorted 10, 20, 30: rank 0.95·2 = 1.9 → 20 + 0.9·10
    assert summary.total_tokens.mean == pytest.approx(130.0)
    assert summary.grounded_questions == 3
