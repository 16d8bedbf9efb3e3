"""The reliability (calibration) diagram of an evaluation run; the confusion matrix is training's
(:func:`training.plots.confusion_figure`), so a run and an evaluation draw it alike."""

from __future__ import annotations

from typing import Any

from evaluations.metrics import reliability_bins
from training.metrics import ECE_BINS, Predictions
from training.plots import pyplot


def reliability_figure(predictions: Predictions, ece: float, title: str, bins: int = ECE_BINS) -> Any:
    """Accuracy against mean confidence per bin; bars below the diagonal are over-confident bins."""
    plt = pyplot()
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
