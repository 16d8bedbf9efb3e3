"""The promotion policy file: how much worse than the baseline a candidate may be, per metric, read from TOML.

Format (see ``evaluations/policy.toml``)::

    [gate]                        # what the gate (and `vigil eval compare` by default) evaluates on
    data = "test"                 # test | a domain (imdb) | a sentence<TAB>label file
    limit = 0                     # rows scored; 0: all
    bootstrap = 1000              # paired bootstrap resamples for the confidence intervals
    batch_size = 32
    timing_repeats = 2            # each batch runs this often per model (A B B A); the fastest time counts

    [rules.macro_f1]
    max_regression = 0.01         # absolute: candidate ≥ baseline - 0.01
    [rules.ece]
    max_regression = 0.02
    judge = "interval"            # refuse only when the whole bootstrap interval is beyond 0.02
    unless_improved = { macro_f1 = 0.05 }
    [rules.latency_p95_ms]
    max_regression_ratio = 0.20   # relative: candidate ≤ baseline x 1.20
    judge = "interval"

"Worse" follows the metric: lower accuracy, macro_f1, roc_auc and r2; higher ece, latency, mae and rmse. A rule may
set several limits; then all must hold. ``minimum`` (metrics where higher is better) and ``maximum`` (where lower is
better) bound the candidate's own value, whatever the baseline's.

Any other model (a user's pyfunc model) is judged by the rules of its task, or by its own section::

    [tasks.classification.rules.macro_f1]     # every classifier: accuracy | macro_f1 | roc_auc
    max_regression = 0.02
    [tasks.regression.rules.rmse]             # every regressor: mae | rmse | r2
    max_regression_ratio = 0.05
    [models."tips-tip"]                       # one model: its rules replace its task's
    task = "regression"                       # optional: the task, when it cannot be told from the data
    [models."tips-tip".rules.r2]
    minimum = 0.3

The [gate] section's bootstrap and confidence apply to them too.

``judge`` says what a rule compares with its limit:
- ``"estimate"`` (default): the point estimate of the change;
- ``"interval"``: the most favourable end of the paired-bootstrap interval, so the rule refuses only a regression
  the data establishes. Meant for figures whose noise dwarfs the tolerance. ECE: the 95% interval of the ECE
  difference of two versions was 0.19 wide on a 113-row held-out set, ten times a 0.02 tolerance, and a
  near-constant classifier scores a low ECE by answering ~0.5 for everything. Latency: on a shared 2-core machine
  the p95 of one version timed against itself ranged from 0.5x to 1.5x. Latency intervals resample the timed
  batches (both versions ran the same batches back to back), the others resample rows.

``unless_improved = { macro_f1 = 0.05 }`` waives a failed rule when the candidate is better on each named metric by
more than its margin (at the interval's worst end when there is one): the trade-off of a guardrail against a clear
gain. Without it, a near-constant champion that answers ~0.5 for everything, "perfectly calibrated" at 50%
accuracy, would block every real classifier on an ECE rule.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vigil.errors import VigilError

HIGHER_IS_BETTER: dict[str, bool] = {
    "accuracy": True,
    "macro_f1": True,
    "roc_auc": True,
    "ece": False,
    "latency_p50_ms": False,
    "latency_p95_ms": False,
    "mae": False,
    "rmse": False,
    "r2": True,
    "exact_match": True,
    "token_f1": True,
}
# What each kind of model is measured on: the sentiment classifier, and any other model by its task.
SENTIMENT_METRICS = ("accuracy", "macro_f1", "roc_auc", "ece", "latency_p50_ms", "latency_p95_ms")
Task = Literal["classification", "regression"]
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "macro_f1", "roc_auc"),
    "regression": ("mae", "rmse", "r2"),
}
# The RAG span reader's, judged in its own [models."rag-reader"] section (SQuAD answer scores on held-out questions).
READER_METRICS = ("exact_match", "token_f1")
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_regression: float | None = Field(None, ge=0, description="absolute amount the metric may get worse")
    max_regression_ratio: float | None = Field(None, ge=0, description="share of the baseline it may get worse")
    minimum: float | None = Field(None, description="lowest value the candidate may have (higher-is-better metrics)")
    maximum: float | None = Field(None, description="highest value the candidate may have (lower-is-better metrics)")
    judge: Literal["estimate", "interval"] = Field("estimate", description="point estimate or bootstrap interval")
    unless_improved: dict[str, float] = Field(
        default_factory=dict, description="metric -> margin: waive the rule when the candidate is better by more"
    )

    @model_validator(mode="after")
    def _one_limit_at_least(self) -> Rule:
        if all(limit is None for limit in (self.max_regression, self.max_regression_ratio, self.minimum,
                                           self.maximum)):
            raise ValueError("set max_regression, max_regression_ratio, minimum and/or maximum")
        return self


def _check_rules(rules: dict[str, Rule], allowed: tuple[str, ...], where: str) -> None:
    named = set(rules) | {m for rule in rules.values() for m in rule.unless_improved}
    unknown = sorted(named - set(allowed))
    if unknown:
        raise ValueError(f"{where}: unknown metric(s) {unknown}; rules can name {sorted(allowed)}")
    for metric, rule in rules.items():
        if rule.minimum is not None and not HIGHER_IS_BETTER[metric]:
            raise ValueError(f"{where}.{metric}: lower is better, so bound it with maximum, not minimum")
        if rule.maximum is not None and HIGHER_IS_BETTER[metric]:
            raise ValueError(f"{where}.{metric}: higher is better, so bound it with minimum, not maximum")


class ModelRules(BaseModel):
    """The rules of one task, or of one model (``[models.NAME]``), which may also fix its task."""

    model_config = ConfigDict(extra="forbid")

    task: Task | None = None
    rules: dict[str, Rule] = Field(default_factory=dict)


# Metrics a live comparison or watch can be made on: what the inference log and the posted labels give (no
# latency from the log's side, no per-class scores for ROC-AUC or ECE).
LIVE_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "macro_f1"),
    "regression": ("mae", "rmse", "r2"),
}
ANY_LIVE_METRIC = tuple(dict.fromkeys(metric for metrics in LIVE_METRICS.values() for metric in metrics))


class WatchRule(BaseModel):
    """What the served version's live figure must keep: a floor (or ceiling), and at most so much worse than its
    offline evaluation."""

    model_config = ConfigDict(extra="forbid")

    minimum: float | None = Field(None, description="lowest live value (higher-is-better metrics)")
    maximum: float | None = Field(None, description="highest live value (lower-is-better metrics)")
    max_drop: float | None = Field(None, ge=0, description="absolute amount worse than the version's offline figure")

    @model_validator(mode="after")
    def _one_limit_at_least(self) -> WatchRule:
        if all(limit is None for limit in (self.minimum, self.maximum, self.max_drop)):
            raise ValueError("set minimum, maximum and/or max_drop")
        return self


class LiveSettings(BaseModel):
    """``[live]``: promotion on live evidence, and the watch on the served version's live quality."""

    model_config = ConfigDict(extra="forbid")

    min_labelled: int = Field(100, ge=1, description="labelled requests both versions scored, for a live verdict")
    rules: dict[str, Rule] = Field(default_factory=dict, description="candidate vs holder on the same requests")
    watch_min_labelled: int = Field(30, ge=1, description="labelled requests before the watch judges a version")
    watch: dict[str, WatchRule] = Field(default_factory=dict, description="the served version's live figures")


class GateSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: str = "test"
    limit: int = Field(0, ge=0)
    bootstrap: int = Field(1000, ge=0)
    batch_size: int = Field(32, ge=1)
    timing_repeats: int = Field(2, ge=1, description="runs of each batch per model; the fastest counts")
    confidence: float = Field(0.95, gt=0, lt=1)


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gate: GateSettings = Field(default_factory=GateSettings)
    rules: dict[str, Rule] = Field(default_factory=dict, description="the sentiment classifier's rules")
    tasks: dict[Task, ModelRules] = Field(default_factory=dict, description="any other model's, by its task")
    models: dict[str, ModelRules] = Field(default_factory=dict, description="one model's, over its task's")
    live: LiveSettings = Field(default_factory=LiveSettings)
    source: str = Field("", exclude=True)

    @model_validator(mode="after")
    def _known_metrics(self) -> Policy:
        _check_rules(self.rules, SENTIMENT_METRICS, "rules")
        for task, section in self.tasks.items():
            if section.task not in (None, task):
                raise ValueError(f"tasks.{task}: a task section cannot name another task")
            _check_rules(section.rules, TASK_METRICS[task], f"tasks.{task}.rules")
        for name, section in self.models.items():
            allowed = TASK_METRICS[section.task] if section.task else tuple(dict.fromkeys(
                [*(metric for metrics in TASK_METRICS.values() for metric in metrics), *READER_METRICS]))
            _check_rules(section.rules, allowed, f"models.{name}.rules")
        _check_rules(self.live.rules, ANY_LIVE_METRIC, "live.rules")
        unknown = sorted(set(self.live.watch) - set(ANY_LIVE_METRIC))
        if unknown:
            raise ValueError(f"live.watch: unknown metric(s) {unknown}; the watch can name {list(ANY_LIVE_METRIC)}")
        for metric, watch in self.live.watch.items():
            if watch.minimum is not None and not HIGHER_IS_BETTER[metric]:
                raise ValueError(f"live.watch.{metric}: lower is better, so bound it with maximum, not minimum")
            if watch.maximum is not None and HIGHER_IS_BETTER[metric]:
                raise ValueError(f"live.watch.{metric}: higher is better, so bound it with minimum, not maximum")
        return self

    def live_rules(self, task: Task) -> dict[str, Rule]:
        """The ``[live.rules]`` that apply to a model of ``task`` (a rule on another task's metric is skipped)."""
        rules = {metric: rule for metric, rule in self.live.rules.items() if metric in LIVE_METRICS[task]}
        if not rules:
            raise VigilError(f"promotion policy {self.source or '(built in)'} has no [live.rules.<metric>] for a "
                             f"{task} model ({', '.join(LIVE_METRICS[task])})")
        return rules

    def watch_rules(self, task: Task) -> dict[str, WatchRule]:
        """The ``[live.watch]`` rules that apply to a model of ``task``."""
        return {metric: rule for metric, rule in self.live.watch.items() if metric in LIVE_METRICS[task]}

    def task_of(self, name: str) -> Task | None:
        """The task the policy fixes for model ``name``, if it does."""
        section = self.models.get(name)
        return section.task if section else None

    def rules_for(self, name: str, task: Task) -> tuple[dict[str, Rule], str]:
        """The rules that judge model ``name`` — its own section, else its task's — and where they were found."""
        if name in self.models and self.models[name].rules:
            rules, where = self.models[name].rules, f"models.{name!r}"
        elif task in self.tasks and self.tasks[task].rules:
            rules, where = self.tasks[task].rules, f"tasks.{task}"
        else:
            raise VigilError(f"promotion policy {self.source or '(built in)'} has no rules for {name} "
                             f"({task}): add [tasks.{task}.rules.<metric>] or [models.{name!r}.rules.<metric>]")
        misplaced = sorted(set(rules) - set(TASK_METRICS[task]))
        if misplaced:
            raise VigilError(f"promotion policy {where} names {misplaced}, which a {task} model is not "
                             f"measured on ({', '.join(TASK_METRICS[task])})")
        return rules, f"{self.source} [{where}]"


def resolve_policy_path(path: Path) -> Path:
    """A relative path is tried from the working directory, then from the project root (where the default lies)."""
    if path.is_absolute() or path.exists():
        return path
    return PROJECT_ROOT / path


def load_policy(path: Path) -> Policy:
    """Parse and validate a policy file; a readable :class:`VigilError` when it is missing or wrong."""
    resolved = resolve_policy_path(path)
    try:
        raw = tomllib.loads(resolved.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VigilError(f"promotion policy {path} not found (VIGIL_PROMOTION_POLICY).") from None
    except tomllib.TOMLDecodeError as error:
        raise VigilError(f"promotion policy {resolved} is not valid TOML: {error}") from None
    try:
        return Policy.model_validate({**raw, "source": str(resolved)})
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in issue['loc'])}: {issue['msg']}" for issue in error.errors()
        )
        raise VigilError(f"promotion policy {resolved} is invalid: {problems}") from None


