"""The reliability (calibration) diagram of an evaluation run and the residual plot of a regressor's; the confusion
matrix is training's (:func:`training.plots.confusion_figure`), so a run and an evaluation draw it alike."""

from __future__ import annotations

from typing import Any

import numpy as np

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


def residual_figure(truth: np.ndarray, predicted: np.ndarray, title: str, rmse: float) -> Any:
    """Predicted against true values (on the diagonal when right), and the residuals against the prediction: a
    curve or a funnel there is what one RMSE hides."""
    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
    left.scatter(truth, predicted, s=10, alpha=0.6)
    low, high = float(min(truth.min(), predicted.min())), float(max(truth.max(), predicted.max()))
    left.plot([low, high], [low, high], "--", color="grey")
    left.set_xlabel("true")
    left.set_ylabel("predicted")
    left.set_title(f"{title} (RMSE {rmse:.4g})")
    right.scatter(predicted, predicted - truth, s=10, alpha=0.6)
    right.axhline(0, linestyle="--", color="grey")
    right.set_xlabel("predicted")
    right.set_ylabel("residual (predicted - true)")
    figure.tight_layout()
    return figure
