"""Retrieval metrics and answer containment on tiny hand-made rankings."""

from __future__ import annotations

import pytest

from evaluations.rag_metrics import answer_containment, contains_answer, dedupe, retrieval_metrics


def test_recall_at_k_and_mrr() -> None:
    ranked = [["a", "b", "c"], ["x", "y", "gold"], ["n1", "n2", "n3"], ["g", "z"]]
    relevant = [{"a"}, {"gold"}, {"missing"}, {"g", "z"}]
    metrics = retrieval_metrics(ranked, relevant, ks=(1, 3))
    assert metrics.questions == 4
    assert metrics.recall == {1: 0.5, 3: 0.75}
    assert metrics.mrr == pytest.approx((1 + 1 / 3 + 0 + 1) / 4)


def test_mrr_only_looks_as_deep_as_the_largest_k() -> None:
    metrics = retrieval_metrics([["n", "n2", "gold"]], [{"gold"}], ks=(1, 2))
    assert metrics.recall == {1: 0.0, 2: 0.0}
    assert metrics.mrr == 0.0


def test_mismatched_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="rankings"):
        retrieval_metrics([["a"]], [], ks=(1,))
    with pytest.raises(ValueError, match="positive"):
        retrieval_metrics([["a"]], [{"a"}], ks=(0,))


def test_dedupe_keeps_the_first_occurrence() -> None:
    assert dedupe(["p1", "p2", "p1", "p3", "p2"]) == ["p1", "p2", "p3"]


def test_containment_uses_squad_normalisation_and_word_boundaries() -> None:
    assert contains_answer("The Denver Broncos won the game. [2]", ["Denver Broncos"])
    assert contains_answer("It was the golden anniversary.", ['"golden anniversary"'])
    assert contains_answer("They played in Santa Clara, California.", ["Santa Clara"])
    assert not contains_answer("It cost 1500 dollars.", ["150"])
    assert not contains_answer("Nothing relevant.", ["Broncos", ""])
    assert answer_containment(["Broncos won", "Panthers lost"], [["Broncos"], ["Broncos"]]) == 0.5
    assert answer_containment([], []) == 0.0
