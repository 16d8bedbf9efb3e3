"""Binary classifier metrics from row weights: one implementation for training, evaluation and the bootstrap.

Training logs its validation and test figures with :func:`point_metrics` and :func:`confusion_counts`, and
``vigil eval`` scores a version with the same two, so a run's ``test_macro_f1`` and an evaluation's ``macro_f1``
are one computation. A point estimate weighs every row 1; a bootstrap sample (``evaluations.metrics``) weighs each
row by how often it was drawn. Computing the metrics from a (samples, rows) weight matrix keeps the bootstrap exact
(a row drawn twice counts twice, ties in ROC-AUC included) and vectorised.

Labels are 0 (negative) and 1 (positive); ``p_positive`` is the model's probability of the positive class.

Expected calibration error (ECE) is the top-label ECE of Guo et al. (2017): the confidence of a prediction is the
probability of the label it predicts; confidences fall into ``bins`` equal-width bins over [0, 1], right-closed
((0, 0.1], (0.1, 0.2], …, with 0 in the first); ECE = Σ_bins (rows in bin / rows) · |accuracy - mean confidence|.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ECE_BINS = 10
SCALAR_METRICS: tuple[str, ...] = ("accuracy", "macro_f1", "roc_auc", "ece")


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

    @classmethod
    def from_probabilities(cls, y_true: object, probabilities: np.ndarray) -> Predictions:
        """From a classifier's (rows, 2) class probabilities: the likelier label is the one it chose."""
        return cls.from_arrays(y_true, probabilities.argmax(axis=1), probabilities[:, 1])

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


def confusion_counts(predictions: Predictions) -> list[list[int]]:
    """2x2 counts, rows the true label, columns the predicted one, both in (negative, positive) order."""
    matrix = np.zeros((2, 2), dtype=np.int64)
    np.add.at(matrix, (predictions.y_true, predictions.y_pred), 1)
    return matrix.tolist()
