"""The promotion policy: how much worse than the baseline a candidate may be, per metric, read from TOML.

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

import math
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from evaluations.schemas import MetricDelta, RuleVerdict
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
}
# What each kind of model is measured on: the sentiment classifier, and any other model by its task.
SENTIMENT_METRICS = ("accuracy", "macro_f1", "roc_auc", "ece", "latency_p50_ms", "latency_p95_ms")
Task = Literal["classification", "regression"]
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "macro_f1", "roc_auc"),
    "regression": ("mae", "rmse", "r2"),
}
# A threshold met to the last bit of float arithmetic (0.90 - 0.89 = 0.0100000000000000009) still passes.
_TOLERANCE = 1e-9
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
                metric for metrics in TASK_METRICS.values() for metric in metrics))
            _check_rules(section.rules, allowed, f"models.{name}.rules")
        return self

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


def _show(metric: str, value: float) -> str:
    return f"{value:.2f} ms" if metric.startswith("latency") else f"{value:.4f}"


def describe_rule(metric: str, rule: Rule) -> str:
    worse = "lower" if HIGHER_IS_BETTER[metric] else "higher"
    limits = []
    if rule.max_regression is not None:
        limits.append(f"at most {_show(metric, rule.max_regression)} {worse} than the baseline")
    if rule.max_regression_ratio is not None:
        limits.append(f"at most {rule.max_regression_ratio:.0%} {worse} than the baseline")
    if rule.minimum is not None:
        limits.append(f"at least {_show(metric, rule.minimum)}")
    if rule.maximum is not None:
        limits.append(f"at most {_show(metric, rule.maximum)}")
    basis = ", judged on the bootstrap interval" if rule.judge == "interval" else ""
    waivers = " and ".join(
        f"{other} is better by more than {_show(other, margin)}" for other, margin in rule.unless_improved.items()
    )
    return f"{metric}: " + " and ".join(limits) + basis + (f", unless {waivers}" if waivers else "")


def judge(policy: Policy, deltas: list[MetricDelta], rules: dict[str, Rule] | None = None) -> list[RuleVerdict]:
    """One verdict per rule (``rules``, default the policy's sentiment rules), each with a reason a person can read
    without the policy file open."""
    by_metric = {delta.metric: delta for delta in deltas}
    verdicts = []
    for metric, rule in (policy.rules if rules is None else rules).items():
        delta = by_metric.get(metric)
        stated = describe_rule(metric, rule)
        if delta is None or delta.candidate is None or delta.baseline is None or (
            math.isnan(delta.candidate) or math.isnan(delta.baseline)
        ):
            verdicts.append(RuleVerdict(metric=metric, rule=stated, passed=False,
                                        reason=f"{metric} could not be measured for both versions on this data"))
            continue
        verdict = _judge_one(metric, rule, delta, stated, policy.gate.confidence)
        if not verdict.passed and rule.unless_improved:
            verdict = _waive(verdict, rule, by_metric)
        verdicts.append(verdict)
    return verdicts


def _established_improvement(delta: MetricDelta | None) -> float | None:
    """How much better the candidate is at the least (interval's worst end when there is one); None: unknown."""
    if delta is None or delta.delta is None:
        return None
    if delta.ci_low is not None and delta.ci_high is not None:
        return delta.ci_low if delta.higher_is_better else -delta.ci_high
    return delta.delta if delta.higher_is_better else -delta.delta


def _waive(verdict: RuleVerdict, rule: Rule, by_metric: dict[str, MetricDelta]) -> RuleVerdict:
    """A failed guardrail passes when every named metric shows the candidate better by more than its margin.

    The trade-off people make by hand: a near-constant champion answering ~0.5 is "well calibrated", and without
    this no real classifier could replace it on an ECE rule.
    """
    shown = []
    for metric, margin in rule.unless_improved.items():
        improvement = _established_improvement(by_metric.get(metric))
        if improvement is None or improvement <= margin:
            return verdict
        shown.append(f"{metric} is better by at least {_show(metric, improvement)} (more than {_show(metric, margin)})")
    return verdict.model_copy(update={"passed": True, "reason": f"{verdict.reason}; waived: {', '.join(shown)}"})


def _judge_one(metric: str, rule: Rule, delta: MetricDelta, stated: str, confidence: float) -> RuleVerdict:
    assert delta.candidate is not None and delta.baseline is not None
    candidate, baseline = delta.candidate, delta.baseline
    higher = HIGHER_IS_BETTER[metric]
    worse = "lower" if higher else "higher"
    # How much worse the candidate is (negative: better), by the estimate or by the interval's kindest end.
    regression = (baseline - candidate) if higher else (candidate - baseline)
    on_interval = rule.judge == "interval" and delta.ci_low is not None and delta.ci_high is not None
    if on_interval:
        assert delta.ci_low is not None and delta.ci_high is not None
        judged = -delta.ci_high if higher else delta.ci_low
    else:
        judged = regression
    failures = []
    if rule.max_regression is not None and judged > rule.max_regression + _TOLERANCE:
        failures.append(f"allowed {_show(metric, rule.max_regression)}")
    if rule.max_regression_ratio is not None and judged > rule.max_regression_ratio * abs(baseline) + _TOLERANCE:
        failures.append(f"allowed {rule.max_regression_ratio:.0%} of the baseline")
    # A bound is on the candidate's own value, judged on the estimate: it is a floor for the model, not a change.
    below = rule.minimum is not None and candidate < rule.minimum - _TOLERANCE
    above = rule.maximum is not None and candidate > rule.maximum + _TOLERANCE
    change = candidate - baseline
    relative = f", {change / abs(baseline):+.1%}" if baseline else ""
    interval = ""
    if delta.ci_low is not None and delta.ci_high is not None:
        digits = 2 if metric.startswith("latency") else 4
        interval = f", {confidence:.0%} CI [{delta.ci_low:+.{digits}f}, {delta.ci_high:+.{digits}f}]"
    observed = (
        f"{metric} {_show(metric, candidate)} vs baseline {_show(metric, baseline)} "
        f"(Δ {change:+.4g}{relative}{interval})"
    )
    bound = ""
    if below:
        bound = f"{metric} {_show(metric, candidate)} is below the minimum {_show(metric, rule.minimum or 0.0)}"
    elif above:
        bound = f"{metric} {_show(metric, candidate)} is above the maximum {_show(metric, rule.maximum or 0.0)}"
    if failures and on_interval:
        reason = (f"{observed}: at least {_show(metric, judged)} {worse} across the whole interval, "
                  f"more than {' and '.join(failures)}")
    elif failures:
        reason = f"{observed}: {_show(metric, regression)} {worse}, more than {' and '.join(failures)}"
    elif bound:
        reason = observed
    elif on_interval and regression > 0:
        reason = f"{observed}: {_show(metric, regression)} {worse}, but the interval does not establish more than " \
                 "the policy allows"
    else:
        reason = f"{observed}: within the policy"
    if bound:
        reason += f"; {bound}" if failures else f": {bound}"
    if rule.judge == "interval" and not on_interval:
        reason += "; no bootstrap interval, judged on the estimate"
    return RuleVerdict(metric=metric, rule=stated, passed=not (failures or bound), reason=reason)
