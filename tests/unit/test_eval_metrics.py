"""Classifier metrics (training's and evaluation's) against scikit-learn and a hand-written ECE, and the paired
bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, roc_auc_score

from evaluations.metrics import (
    bootstrap_weights,
    latency_per_text,
    paired_bootstrap,
    paired_bootstrap_latency,
    per_text_ms,
    reliability_bins,
)
from training.metrics import Predictions, bin_index, confusion_counts, point_metrics, weighted_metrics


def ece_by_hand(truth: np.ndarray, chosen: np.ndarray, p_positive: np.ndarray, bins: int = 10) -> float:
    """Top-label ECE written out plainly: right-closed bins (0 in the first), weight = share of rows in the bin."""
    confidence = [p if c == 1 else 1 - p for p, c in zip(p_positive.tolist(), chosen.tolist(), strict=True)]
    total = 0.0
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        members = [i for i, c in enumerate(confidence) if low < c <= high or (b == 0 and c == 0)]
        if members:
            accuracy = sum(int(truth[i] == chosen[i]) for i in members) / len(members)
            mean_confidence = sum(confidence[i] for i in members) / len(members)
            total += len(members) / len(confidence) * abs(accuracy - mean_confidence)
    return total


def sklearn_metrics(predictions: Predictions) -> dict[str, float]:
    """accuracy, macro_f1, roc_auc by scikit-learn and ece by hand: what the code under test must give."""
    truth, chosen, p = predictions.y_true, predictions.y_pred, predictions.p_positive
    return {"accuracy": float(accuracy_score(truth, chosen)),
            "macro_f1": float(f1_score(truth, chosen, average="macro")),
            "roc_auc": float(roc_auc_score(truth, p)), "ece": ece_by_hand(truth, chosen, p)}


def random_predictions(seed: int, rows: int, noise: float = 0.3, decimals: int | None = 2) -> Predictions:
    """A plausible classifier: scores loosely follow the truth; rounding makes ties, which ROC-AUC must handle."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, rows)
    p_positive = np.clip(truth * 0.6 + 0.2 + rng.normal(0, noise, rows), 0, 1)
    if decimals is not None:
        p_positive = np.round(p_positive, decimals)
    return Predictions.from_arrays(truth, (p_positive > 0.5).astype(int), p_positive)


@pytest.mark.parametrize("seed", range(12))
def test_point_metrics_equal_scikit_learn(seed: int) -> None:
    predictions = random_predictions(seed, rows=50 + 37 * seed)
    ours = point_metrics(predictions)
    truth, chosen = predictions.y_true, predictions.y_pred
    assert ours["accuracy"] == pytest.approx(accuracy_score(truth, chosen), abs=1e-12)
    assert ours["macro_f1"] == pytest.approx(f1_score(truth, chosen, average="macro"), abs=1e-12)
    assert ours["roc_auc"] == pytest.approx(roc_auc_score(truth, predictions.p_positive), abs=1e-12)
    assert confusion_counts(predictions) == confusion_matrix(truth, chosen, labels=[0, 1]).tolist()


def test_degenerate_cases_follow_scikit_learn() -> None:
    # A model that always says positive: F1 of the negative class is 0, and it still counts in the macro mean.
    always = Predictions.from_arrays([0, 1, 1, 0, 1], [1, 1, 1, 1, 1], [0.6, 0.9, 0.7, 0.8, 0.55])
    assert point_metrics(always)["macro_f1"] == pytest.approx(
        f1_score(always.y_true, always.y_pred, average="macro", zero_division=0))
    # One class only: macro-F1 over the one label present, ROC-AUC undefined.
    one_class = Predictions.from_arrays([1, 1, 1], [1, 0, 1], [0.9, 0.4, 0.8])
    values = point_metrics(one_class)
    assert values["macro_f1"] == pytest.approx(f1_score(one_class.y_true, one_class.y_pred, average="macro"))
    assert values["roc_auc"] is None


@pytest.mark.parametrize("decimals", [2, None])
def test_weights_count_rows_like_repeating_them(decimals: int | None) -> None:
    """A bootstrap sample weighs a row by how often it was drawn; that must equal repeating the row."""
    predictions = random_predictions(3, rows=80, decimals=decimals)
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 4, size=(5, 80))
    weighted = weighted_metrics(predictions, counts)
    for sample, row_counts in enumerate(counts):
        drawn = np.repeat(np.arange(80), row_counts)
        truth, chosen, p = predictions.y_true[drawn], predictions.y_pred[drawn], predictions.p_positive[drawn]
        assert weighted["accuracy"][sample] == pytest.approx(accuracy_score(truth, chosen))
        assert weighted["macro_f1"][sample] == pytest.approx(f1_score(truth, chosen, average="macro"))
        assert weighted["roc_auc"][sample] == pytest.approx(roc_auc_score(truth, p))
        if decimals is None:  # rounded scores can sit exactly on a bin edge, where float edges may disagree
            assert weighted["ece"][sample] == pytest.approx(ece_by_hand(truth, chosen, p))


def test_ece_on_a_hand_computed_case() -> None:
    # Confidence = probability of the predicted label.
    #   bin (0.5, 0.6]: 0.55 right, 0.55 wrong        → accuracy 0.5,  confidence 0.55 → gap 0.05, weight 2/6
    #   bin (0.8, 0.9]: 0.9 right x3 (one via P(pos)=0.1) → accuracy 1.0, confidence 0.9  → gap 0.10, weight 3/6
    #   bin (0.6, 0.7]: 0.7 wrong                      → accuracy 0.0,  confidence 0.7  → gap 0.70, weight 1/6
    # ECE = 2/6·0.05 + 3/6·0.10 + 1/6·0.70 = 0.1833…
    predictions = Predictions.from_arrays(
        y_true=[1, 0, 1, 1, 0, 0],
        y_pred=[1, 1, 1, 1, 0, 1],
        p_positive=[0.55, 0.55, 0.9, 0.9, 0.1, 0.7],
    )
    assert point_metrics(predictions)["ece"] == pytest.approx(2 / 6 * 0.05 + 3 / 6 * 0.10 + 1 / 6 * 0.70)


def test_ece_is_zero_when_confidence_matches_accuracy() -> None:
    # Four predictions at confidence 0.75, three of them right.
    predictions = Predictions.from_arrays([1, 1, 1, 0], [1, 1, 1, 1], [0.75] * 4)
    assert point_metrics(predictions)["ece"] == pytest.approx(0.0, abs=1e-12)


def test_bins_are_right_closed_and_equal_width() -> None:
    assert bin_index(np.array([0.0, 0.1, 0.1000001, 0.7, 0.75, 1.0])).tolist() == [0, 0, 1, 6, 7, 9]
    bins = reliability_bins(Predictions.from_arrays([1, 0], [1, 1], [0.95, 0.65]))
    assert [b.count for b in bins] == [0, 0, 0, 0, 0, 0, 1, 0, 0, 1]
    assert bins[9].accuracy == 1.0 and bins[6].accuracy == 0.0
    assert bins[6].low == pytest.approx(0.6) and bins[6].high == pytest.approx(0.7)


def test_paired_bootstrap_interval_contains_the_estimate_and_is_seeded() -> None:
    better = random_predictions(1, rows=300, noise=0.2)
    rng = np.random.default_rng(9)
    noisy = np.clip(better.p_positive + rng.normal(0, 0.25, 300), 0, 1)
    worse = Predictions(better.y_true, (noisy > 0.5).astype(np.int64), noisy)

    first = paired_bootstrap(better, worse, samples=500, seed=7)
    again = paired_bootstrap(better, worse, samples=500, seed=7)
    other = paired_bootstrap(better, worse, samples=500, seed=8)
    assert first == again
    assert first != other
    ours, theirs = sklearn_metrics(better), sklearn_metrics(worse)
    for metric in ("accuracy", "macro_f1", "roc_auc", "ece"):
        delta = ours[metric] - theirs[metric]
        interval = first[metric]
        assert interval.low is not None and interval.high is not None
        assert interval.low <= delta <= interval.high, metric
    # The better model is clearly better: its macro-F1 interval lies above zero.
    assert first["macro_f1"].low is not None and first["macro_f1"].low > 0


def test_paired_bootstrap_of_a_model_against_itself_is_exactly_zero() -> None:
    predictions = random_predictions(4, rows=120)
    for interval in paired_bootstrap(predictions, predictions, samples=200, seed=1).values():
        assert (interval.low, interval.high) == (0.0, 0.0)


def test_paired_bootstrap_refuses_different_rows() -> None:
    with pytest.raises(ValueError, match="same rows"):
        paired_bootstrap(random_predictions(1, rows=10), random_predictions(2, rows=10), samples=10)


def test_bootstrap_weights_draw_every_sample_with_n_rows() -> None:
    blocks = list(bootstrap_weights(rows=7, samples=25, seed=3))
    weights = np.concatenate(blocks)
    assert weights.shape == (25, 7)
    assert (weights.sum(axis=1) == 7).all()
    again = np.concatenate(list(bootstrap_weights(rows=7, samples=25, seed=3)))
    assert np.array_equal(weights, again)


def test_latency_is_time_per_text_over_batches() -> None:
    latency = latency_per_text([0.32, 0.64, 0.08], [32, 32, 8])  # 10 ms, 20 ms, 10 ms per text
    assert latency.batches == 3
    assert latency.p50_ms == pytest.approx(10.0)
    assert latency.p95_ms == pytest.approx(19.0)  # sorted 10, 10, 20: rank 0.95·2 = 1.9 → 10 + 0.9·10
    assert latency.mean_ms == pytest.approx(40.0 / 3)


def test_latency_interval_separates_a_slower_model_from_noise() -> None:
    # The same model timed twice on a busy machine: each batch's time scattered by the same kind of noise.
    rng = np.random.default_rng(5)
    cost = per_text_ms(list(rng.uniform(0.25, 0.35, 8)), [32] * 8)
    baseline = cost * rng.uniform(0.6, 1.5, 8)
    noisy_twin = cost * rng.uniform(0.6, 1.5, 8)
    twice_as_slow = baseline * rng.uniform(1.9, 2.1, 8)

    twin = paired_bootstrap_latency(noisy_twin, baseline, samples=500, seed=3)["latency_p95_ms"]
    slow = paired_bootstrap_latency(twice_as_slow, baseline, samples=500, seed=3)["latency_p95_ms"]
    assert twin.low is not None and twin.high is not None and twin.low < 0 < twin.high
    p95 = float(np.percentile(baseline, 95))
    assert slow.low is not None and slow.low > 0.2 * p95, "every resample shows the slowdown"
    assert paired_bootstrap_latency(twice_as_slow, baseline, samples=500, seed=3)["latency_p95_ms"] == slow


def test_training_logs_the_figures_evaluation_computes() -> None:
    """`vigil train` and `vigil eval` share one implementation; both must equal scikit-learn."""
    from training.sentiment import classification_metrics

    predictions = random_predictions(6, rows=200, decimals=None)
    probabilities = np.column_stack([1 - predictions.p_positive, predictions.p_positive])
    logged = classification_metrics(predictions.y_true, probabilities, "test_")
    expected = sklearn_metrics(predictions)
    assert logged == {f"test_{name}": pytest.approx(expected[name], abs=1e-12)
                      for name in ("accuracy", "macro_f1", "roc_auc")}
    one_class = classification_metrics(np.array([1, 1]), np.array([[0.2, 0.8], [0.6, 0.4]]), "ood_")
    assert set(one_class) == {"ood_accuracy", "ood_macro_f1"}  # ROC-AUC is undefined with one class
