"""Binary classifier metrics from row weights: one implementation for point estimates and bootstrap samples.

A point estimate weighs every row 1; a bootstrap sample weighs each row by how often it was drawn. Computing the
metrics from a (samples, rows) weight matrix keeps the bootstrap exact (a row drawn twice counts twice, ties in
ROC-AUC included) and vectorised, so 1000 paired resamples of two models take well under a second.

Labels are 0 (negative) and 1 (positive); ``p_positive`` is the model's probability of the positive class.

Expected calibration error (ECE) is the top-label ECE of Guo et al. (2017): the confidence of a prediction is the
probability of the label it predicts; confidences fall into ``bins`` equal-width bins over [0, 1], right-closed
((0, 0.1], (0.1, 0.2], …, with 0 in the first); ECE = Σ_bins (rows in bin / rows) · |accuracy - mean confidence|.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

ECE_BINS = 10
SCALAR_METRICS: tuple[str, ...] = ("accuracy", "macro_f1", "roc_auc", "ece")
# Above this many weight cells per block the bootstrap works in several blocks, to bound memory.
_BLOCK_CELLS = 2_000_000


@dataclass(frozen=True)
class Predictions:
    """What a binary classifier said about n rows, next to the truth."""

    y_true: np.ndarray  # int 0/1
    y_pred: np.ndarray  # int 0/1, the label the model chose
    p_positive: np.ndarray  # float, P(positive)

    def __post_init__(self) -> None:
        if not (len(self.y_true) == len(self.y_pred) == len(self.p_positive)):
            raise ValueError("y_true, y_pred and p_positive must have the same length")

    @classmethod
    def from_arrays(cls, y_true: object, y_pred: object, p_positive: object) -> Predictions:
        return cls(
            np.asarray(y_true, dtype=np.int64),
            np.asarray(y_pred, dtype=np.int64),
            np.asarray(p_positive, dtype=np.float64),
        )

    def __len__(self) -> int:
        return len(self.y_true)

    @property
    def confidence(self) -> np.ndarray:
        """Probability of the predicted label."""
        return np.where(self.y_pred == 1, self.p_positive, 1.0 - self.p_positive)

    @property
    def correct(self) -> np.ndarray:
        return (self.y_true == self.y_pred).astype(np.float64)

    def subset(self, mask: np.ndarray) -> Predictions:
        return Predictions(self.y_true[mask], self.y_pred[mask], self.p_positive[mask])


def bin_index(confidence: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """The ECE bin of each confidence: right-closed equal-width bins over [0, 1]."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.digitize(np.clip(confidence, 0.0, 1.0), edges[1:-1], right=True)


def weighted_metrics(predictions: Predictions, weights: np.ndarray, bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """accuracy, macro_f1, roc_auc and ece for each row of ``weights`` (shape (samples, n)); NaN where undefined."""
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    truth, chosen = predictions.y_true, predictions.y_pred
    total = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = weights @ predictions.correct / total
        return {
            "accuracy": accuracy,
            "macro_f1": _macro_f1(weights, truth, chosen),
            "roc_auc": _roc_auc(weights, truth, predictions.p_positive),
            "ece": _ece(weights, predictions, bins) / total,
        }


def _macro_f1(weights: np.ndarray, truth: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    # Like scikit-learn's average="macro": the mean F1 over the labels present in truth or prediction.
    tp = weights @ ((truth == 1) & (chosen == 1)).astype(np.float64)
    tn = weights @ ((truth == 0) & (chosen == 0)).astype(np.float64)
    fp = weights @ ((truth == 0) & (chosen == 1)).astype(np.float64)
    fn = weights @ ((truth == 1) & (chosen == 0)).astype(np.float64)
    scores, present = [], []
    for hits, misses in ((tp, fp + fn), (tn, fp + fn)):
        denominator = 2 * hits + misses
        present.append(denominator > 0)
        scores.append(np.where(denominator > 0, 2 * hits / np.where(denominator > 0, denominator, 1), 0.0))
    counted = np.sum(present, axis=0)
    return np.where(counted > 0, np.sum(np.multiply(scores, present), axis=0) / np.maximum(counted, 1), np.nan)


def _roc_auc(weights: np.ndarray, truth: np.ndarray, p_positive: np.ndarray) -> np.ndarray:
    # Mann-Whitney: the weighted share of (positive, negative) pairs ranked right, ties counted half — the area
    # under the ROC curve as scikit-learn computes it.
    order = np.argsort(p_positive, kind="stable")
    ranked = p_positive[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    ordered = weights[:, order]
    positive = np.add.reduceat(ordered * (truth[order] == 1), starts, axis=1)
    negative = np.add.reduceat(ordered * (truth[order] == 0), starts, axis=1)
    negatives_below = np.cumsum(negative, axis=1) - negative
    pairs = positive.sum(axis=1) * negative.sum(axis=1)
    right = (positive * (negatives_below + 0.5 * negative)).sum(axis=1)
    return np.where(pairs > 0, right / np.where(pairs > 0, pairs, 1), np.nan)


def _ece(weights: np.ndarray, predictions: Predictions, bins: int) -> np.ndarray:
    # Σ_bins |Σ_rows w·(correct - confidence)| equals Σ_bins |B|·|acc(B) - conf(B)|, before dividing by Σ w.
    one_hot = np.eye(bins)[bin_index(predictions.confidence, bins)]
    gaps = weights @ (one_hot * (predictions.correct - predictions.confidence)[:, None])
    return np.abs(gaps).sum(axis=1)


def point_metrics(predictions: Predictions, bins: int = ECE_BINS) -> dict[str, float | None]:
    """The metrics on the rows as they are; None where undefined (e.g. ROC-AUC with one class)."""
    values = weighted_metrics(predictions, np.ones((1, len(predictions))), bins)
    return {name: (None if np.isnan(v[0]) else float(v[0])) for name, v in values.items()}


def expected_calibration_error(predictions: Predictions, bins: int = ECE_BINS) -> float:
    return float(weighted_metrics(predictions, np.ones((1, len(predictions))), bins)["ece"][0])


def confusion_counts(predictions: Predictions) -> list[list[int]]:
    """2x2 counts, rows the true label, columns the predicted one, both in (negative, positive) order."""
    matrix = np.zeros((2, 2), dtype=np.int64)
    np.add.at(matrix, (predictions.y_true, predictions.y_pred), 1)
    return matrix.tolist()


@dataclass(frozen=True)
class ReliabilityBin:
    low: float
    high: float
    count: int
    accuracy: float | None
    confidence: float | None


def reliability_bins(predictions: Predictions, bins: int = ECE_BINS) -> list[ReliabilityBin]:
    """Per-bin accuracy and mean confidence: the points of the reliability diagram ECE summarises."""
    index = bin_index(predictions.confidence, bins)
    edges = np.linspace(0.0, 1.0, bins + 1)
    result = []
    for b in range(bins):
        mask = index == b
        count = int(mask.sum())
        result.append(ReliabilityBin(
            float(edges[b]), float(edges[b + 1]), count,
            float(predictions.correct[mask].mean()) if count else None,
            float(predictions.confidence[mask].mean()) if count else None,
        ))
    return result


def bootstrap_weights(rows: int, samples: int, seed: int) -> Iterator[np.ndarray]:
    """Blocks of resampling weights (how often each row was drawn), ``samples`` rows in all, seeded."""
    rng = np.random.default_rng(seed)
    block = max(1, min(samples, _BLOCK_CELLS // max(rows, 1)))
    done = 0
    while done < samples:
        size = min(block, samples - done)
        drawn = rng.integers(0, rows, size=(size, rows))
        flat = (drawn + np.arange(size)[:, None] * rows).ravel()
        yield np.bincount(flat, minlength=size * rows).reshape(size, rows).astype(np.float64)
        done += size


@dataclass(frozen=True)
class Interval:
    low: float | None
    high: float | None


def paired_bootstrap(
    candidate: Predictions,
    baseline: Predictions,
    samples: int = 1000,
    seed: int = 42,
    confidence: float = 0.95,
    bins: int = ECE_BINS,
) -> dict[str, Interval]:
    """Percentile confidence intervals of candidate - baseline for each metric.

    Paired: each resample draws the same rows for both models, so the interval reflects the difference between
    the models on shared data, not the two sampling errors added up.
    """
    if len(candidate) != len(baseline) or not np.array_equal(candidate.y_true, baseline.y_true):
        raise ValueError("a paired bootstrap needs both models' predictions on the same rows")
    if samples < 1 or len(candidate) == 0:
        return {name: Interval(None, None) for name in SCALAR_METRICS}
    deltas: dict[str, list[np.ndarray]] = {name: [] for name in SCALAR_METRICS}
    for weights in bootstrap_weights(len(candidate), samples, seed):
        ours, theirs = weighted_metrics(candidate, weights, bins), weighted_metrics(baseline, weights, bins)
        for name in SCALAR_METRICS:
            deltas[name].append(ours[name] - theirs[name])
    tail = (1 - confidence) / 2 * 100
    intervals = {}
    for name, blocks in deltas.items():
        values = np.concatenate(blocks)
        values = values[~np.isnan(values)]
        if len(values) == 0:
            intervals[name] = Interval(None, None)
        else:
            low, high = np.percentile(values, [tail, 100 - tail])
            intervals[name] = Interval(float(low), float(high))
    return intervals


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p95_ms: float
    mean_ms: float
    batches: int


def per_text_ms(batch_seconds: list[float], batch_sizes: list[int]) -> np.ndarray:
    """Each batch's time per text (batch time / texts in the batch), in milliseconds."""
    return np.asarray(batch_seconds, dtype=np.float64) / np.asarray(batch_sizes, dtype=np.float64) * 1000.0


def latency_per_text(batch_seconds: list[float], batch_sizes: list[int]) -> Latency:
    """Percentiles over batches of the time per text."""
    if not batch_seconds:
        return Latency(0.0, 0.0, 0.0, 0)
    per_text = per_text_ms(batch_seconds, batch_sizes)
    p50, p95 = np.percentile(per_text, [50, 95])
    return Latency(float(p50), float(p95), float(per_text.mean()), len(per_text))


def paired_bootstrap_latency(
    candidate_ms: np.ndarray, baseline_ms: np.ndarray, samples: int = 1000, seed: int = 42, confidence: float = 0.95
) -> dict[str, Interval]:
    """Intervals of candidate - baseline p50 and p95 latency, resampling the timed batches.

    Latency is measured per batch, not per row, so the batches are what is resampled; paired, because both models
    ran the same batches back to back.
    """
    if len(candidate_ms) != len(baseline_ms):
        raise ValueError("a paired bootstrap needs both models timed on the same batches")
    if samples < 1 or len(candidate_ms) == 0:
        return {"latency_p50_ms": Interval(None, None), "latency_p95_ms": Interval(None, None)}
    drawn = np.random.default_rng(seed).integers(0, len(candidate_ms), size=(samples, len(candidate_ms)))
    tail = (1 - confidence) / 2 * 100
    intervals = {}
    for name, q in (("latency_p50_ms", 50), ("latency_p95_ms", 95)):
        deltas = np.percentile(candidate_ms[drawn], q, axis=1) - np.percentile(baseline_ms[drawn], q, axis=1)
        low, high = np.percentile(deltas, [tail, 100 - tail])
        intervals[name] = Interval(float(low), float(high))
    return intervals
