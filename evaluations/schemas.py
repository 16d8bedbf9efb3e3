"""What an evaluation reports: the `--json` output and the `evaluation.json` artifact of its MLflow run."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ModelIdentity(BaseModel):
    name: str
    version: str
    alias: str | None = Field(None, description="the alias the version was asked for by, if any")


class DatasetInfo(BaseModel):
    name: str = Field(description="test | a domain name | a file path")
    fingerprint: str = Field(description="training.data.fingerprint of the rows scored")
    rows: int
    domains: list[str]
    description: str


class LatencyStats(BaseModel):
    p50_ms: float = Field(description="median over batches of batch time / texts in the batch")
    p95_ms: float
    mean_ms: float
    batches: int
    batch_size: int
    source: Literal["in-process", "endpoint"]


class ClassifierMetrics(BaseModel):
    rows: int
    accuracy: float
    macro_f1: float
    roc_auc: float | None = Field(description="None when the data holds one class only")
    ece: float = Field(description="top-label expected calibration error, equal-width bins")
    ece_bins: int
    per_domain_macro_f1: dict[str, float]
    confusion_matrix: list[list[int]] = Field(description="rows: true label, columns: predicted; negative, positive")
    latency: LatencyStats

    def judged(self) -> dict[str, float | None]:
        """The scalar metrics a promotion policy can name."""
        return {
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "roc_auc": self.roc_auc,
            "ece": self.ece,
            "latency_p50_ms": self.latency.p50_ms,
            "latency_p95_ms": self.latency.p95_ms,
        }


class SentimentEvaluation(BaseModel):
    model: ModelIdentity
    dataset: DatasetInfo
    metrics: ClassifierMetrics
    source: Literal["in-process", "endpoint"]
    endpoint: str | None = None
    run_id: str | None = Field(None, description="MLflow run in experiment `evaluations`")


class MetricDelta(BaseModel):
    metric: str
    candidate: float | None
    baseline: float | None
    delta: float | None = Field(description="candidate - baseline")
    ci_low: float | None = Field(
        None, description="paired-bootstrap interval of the delta (rows resampled; timed batches for latency)"
    )
    ci_high: float | None = None
    higher_is_better: bool


class RuleVerdict(BaseModel):
    metric: str
    rule: str = Field(description="the rule as the policy states it")
    passed: bool
    reason: str


class Comparison(BaseModel):
    candidate: SentimentEvaluation
    baseline: SentimentEvaluation
    dataset: DatasetInfo
    deltas: list[MetricDelta]
    rules: list[RuleVerdict]
    passed: bool
    bootstrap_samples: int
    confidence: float
    seed: int
    policy: str = Field(description="path of the policy file applied")
    run_id: str | None = None

    @property
    def refusals(self) -> list[str]:
        return [rule.reason for rule in self.rules if not rule.passed]
