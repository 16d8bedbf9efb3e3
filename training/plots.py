"""Figures logged with a classifier's metrics; the confusion matrix is drawn alike by training and evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vigil.sentiment_model import LABELS


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend, imported on first use (it is slow to import, and no run needs a
    display: servers and CI have none)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_figure(matrix: list[list[int]], title: str, labels: Sequence[str] = LABELS) -> Any:
    """Confusion counts (the sentiment classifier's 2x2 of :func:`training.metrics.confusion_counts` by default),
    true label down, predicted across."""
    plt = pyplot()
    counts = np.asarray(matrix)
    figure, axis = plt.subplots(figsize=(4, 4))
    axis.imshow(counts, cmap="Blues")
    ticks = list(range(len(labels)))
    axis.set_xticks(ticks, list(labels), rotation=45 if len(labels) > 4 else 0)
    axis.set_yticks(ticks, list(labels))
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    for (row, column), count in np.ndenumerate(counts):
        axis.text(column, row, str(count), ha="center", va="center",
                  color="white" if count > counts.max() / 2 else "black")
    figure.tight_layout()
    return figure
