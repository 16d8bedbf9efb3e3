"""Evaluation's statistics over the classifier metrics of :mod:`training.metrics`: reliability bins, paired bootstrap
intervals of two models' differences, and latency per text.

The bootstrap draws its resamples as row weights and scores them all at once with
:func:`training.metrics.weighted_metrics`, the code that gives the point estimates, so an interval and the
estimate it surrounds are the same computation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from training.metrics import ECE_BINS, SCALAR_METRICS, Predictions, bin_index, weighted_metrics

# Above this many weight cells per block the bootstrap works in several blocks, to bound memory.
_BLOCK_CELLS = 2_000_000


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


Scores = Callable[[np.ndarray], dict[str, np.ndarray]]


def paired_bootstrap_of(candidate: Scores, baseline: Scores, rows: int, samples: int = 1000, seed: int = 42,
                        confidence: float = 0.95) -> dict[str, Interval]:
    """Percentile confidence intervals of candidate - baseline for each metric both score functions give.

    Each function maps a block of resampling weights (resamples × rows) to one value per resample and metric.
    Paired: each resample weighs the same rows for both models, so the interval reflects the difference between
    the models on shared data, not the two sampling errors added up.
    """
    if samples < 1 or rows == 0:
        return {}
    deltas: dict[str, list[np.ndarray]] = {}
    for weights in bootstrap_weights(rows, samples, seed):
        ours, theirs = candidate(weights), baseline(weights)
        for name in ours.keys() & theirs.keys():
            deltas.setdefault(name, []).append(ours[name] - theirs[name])
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


def paired_bootstrap(
    candidate: Predictions,
    baseline: Predictions,
    samples: int = 1000,
    seed: int = 42,
    confidence: float = 0.95,
    bins: int = ECE_BINS,
) -> dict[str, Interval]:
    """Intervals of candidate - baseline for each of the sentiment classifier's scalar metrics."""
    if len(candidate) != len(baseline) or not np.array_equal(candidate.y_true, baseline.y_true):
        raise ValueError("a paired bootstrap needs both models' predictions on the same rows")
    found = paired_bootstrap_of(lambda weights: weighted_metrics(candidate, weights, bins),
                                lambda weights: weighted_metrics(baseline, weights, bins),
                                len(candidate), samples, seed, confidence)
    return {name: found.get(name, Interval(None, None)) for name in SCALAR_METRICS}


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
