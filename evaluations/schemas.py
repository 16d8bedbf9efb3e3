"""What an evaluation reports: the `--json` output and the `evaluation.json` artifact of its MLflow run."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from vigil.contracts import ModelIdentity


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


class _ComparisonBase(BaseModel):
    dataset: DatasetInfo
    deltas: list[MetricDelta]
    rules: list[RuleVerdict]
    passed: bool
    bootstrap_samples: int
    confidence: float
    seed: int
    policy: str = Field(description="path of the policy file applied (and the section, for a model's rules)")
    run_id: str | None = None

    @property
    def refusals(self) -> list[str]:
        return [rule.reason for rule in self.rules if not rule.passed]


class Comparison(_ComparisonBase):
    """Two versions of the sentiment classifier on the same rows."""

    candidate: SentimentEvaluation
    baseline: SentimentEvaluation


class ClassificationMetrics(BaseModel):
    accuracy: float
    macro_f1: float = Field(description="unweighted mean of the per-class F1 over the classes seen or predicted")
    roc_auc: float | None = Field(
        None, description="when the model gives a score per class (output columns named after the classes); "
                          "one-vs-rest, macro, for more than two classes")
    labels: list[str] = Field(description="the classes, in the confusion matrix's order")
    confusion_matrix: list[list[int]] = Field(description="rows: true label, columns: predicted")

    def judged(self) -> dict[str, float | None]:
        return {"accuracy": self.accuracy, "macro_f1": self.macro_f1, "roc_auc": self.roc_auc}


class RegressionMetrics(BaseModel):
    mae: float
    rmse: float
    r2: float | None = Field(description="None when the target is constant")

    def judged(self) -> dict[str, float | None]:
        return {"mae": self.mae, "rmse": self.rmse, "r2": self.r2}


class ModelEvaluation(BaseModel):
    """One version of any pyfunc model on a labelled table: the `--json` of `vigil eval model`."""

    model: ModelIdentity
    task: Literal["classification", "regression"]
    target: str
    dataset: DatasetInfo
    rows: int
    metrics: ClassificationMetrics | RegressionMetrics
    source: Literal["in-process", "endpoint", "live"] = Field(
        description="in-process / endpoint: scored by this evaluation; live: the answers the served and shadow "
                    "versions gave real requests, read from the inference log")
    endpoint: str | None = None
    run_id: str | None = Field(None, description="MLflow run in experiment `evaluations`")


class ModelComparison(_ComparisonBase):
    """Two versions of any pyfunc model on the same rows: the promotion gate's evidence."""

    task: Literal["classification", "regression"]
    candidate: ModelEvaluation
    baseline: ModelEvaluation


class RagQuestionResult(BaseModel):
    """One question of a RAG evaluation: what came back and how each evaluator scored it."""

    id: str
    question: str
    gold_answers: list[str]
    gold_passages: list[str]
    answer: str
    passages: list[str] = Field(description="passage ids of the cited chunks, ranked, each once")
    first_relevant_rank: int | None = Field(description="rank of the first gold passage in `passages`")
    scores: dict[str, float | None] = Field(description="evaluator → score (None: nothing to judge)")
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    latency_ms: float


class Distribution(BaseModel):
    mean: float
    p50: float
    p95: float


class RagMetrics(BaseModel):
    questions: int
    k: int = Field(description="chunks retrieved and read per question (top_k)")
    recall: dict[int, float] = Field(description="k → share of questions with a gold passage in the first k")
    mrr: float = Field(description="mean reciprocal rank of the first gold passage within the first k")
    ndcg: dict[int, float] = Field(description="k → mean nDCG@k, binary relevance")
    answer_containment: float = Field(description="share of answers containing a gold answer (SQuAD-normalised)")
    token_f1: float = Field(description="mean SQuAD token F1 against the best-matching gold answer")
    exact_match: float = Field(0.0, description="share of answers equal to a gold answer (SQuAD-normalised)")
    groundedness: float | None = Field(
        description="mean over questions of the share of answer sentences found in the context they cite"
    )
    grounded_questions: int = Field(description="questions whose answer had a sentence to judge")
    prompt_tokens: Distribution
    completion_tokens: Distribution
    total_tokens: Distribution
    latency_ms: Distribution = Field(description="per question, end to end as the caller saw it")


class LangSmithOutcome(BaseModel):
    status: Literal["logged", "failed", "skipped"]
    message: str
    dataset: str | None = None
    experiment: str | None = None
    url: str | None = None


class RagEvaluation(BaseModel):
    dataset: DatasetInfo
    source: Literal["in-process", "endpoint"]
    endpoint: str | None = None
    k: int
    limit: int | None = None
    generator: str = Field(description="generator name (extractive | openai)")
    generator_model: str
    embedder: ModelIdentity
    metrics: RagMetrics
    run_id: str | None = Field(None, description="MLflow run in experiment `evaluations`")
    langsmith: LangSmithOutcome | None = None
    results: list[RagQuestionResult] = Field(default_factory=list)
