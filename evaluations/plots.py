"""The figures of an evaluation run: the confusion matrix and the reliability (calibration) diagram."""

from __future__ import annotations

from typing import Any

import numpy as np

from evaluations.metrics import ECE_BINS, Predictions, reliability_bins
from vigil.sentiment_model import LABELS


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    return plt


def confusion_figure(matrix: list[list[int]], title: str) -> Any:
    plt = _pyplot()
    counts = np.asarray(matrix)
    figure, axis = plt.subplots(figsize=(4, 4))
    axis.imshow(counts, cmap="Blues")
    axis.set_xticks([0, 1], LABELS)
    axis.set_yticks([0, 1], LABELS)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    for (row, column), count in np.ndenumerate(counts):
        axis.text(column, row, str(count), ha="center", va="center",
                  color="white" if count > counts.max() / 2 else "black")
    figure.tight_layout()
    return figure


def reliability_figure(predictions: Predictions, ece: float, title: str, bins: int = ECE_BINS) -> Any:
    """Accuracy against mean confidence per bin; bars below the diagonal are over-confident bins."""
    plt = _pyplot()
    figure, (upper, lower) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, height_ratios=[3, 1])
    points = reliability_bins(predictions, bins)
    width = 1.0 / bins
    filled = [p for p in points if p.count]
    upper.bar([p.low for p in filled], [p.accuracy or 0.0 for p in filled], width=width, align="edge",
              edgecolor="black", color="tab:blue", label="accuracy")
    upper.plot([p.confidence for p in filled], [p.confidence for p in filled], "o", color="tab:red",
               label="mean confidence")
    upper.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    upper.set_ylim(0, 1)
    upper.set_ylabel("accuracy")
    upper.set_title(f"{title} (ECE {ece:.4f}, {bins} bins)")
    upper.legend(loc="upper left", fontsize="small")
    lower.bar([p.low for p in points], [p.count for p in points], width=width, align="edge", color="tab:grey")
    lower.set_xlim(0, 1)
    lower.set_xlabel("confidence (probability of the predicted label)")
    lower.set_ylabel("rows")
    figure.tight_layout()
    return figure
