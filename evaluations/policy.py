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

"Worse" follows the metric: lower accuracy, macro_f1 and roc_auc; higher ece and latency. A rule may set both
limits; then both must hold.

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
}
# A threshold met to the last bit of float arithmetic (0.90 - 0.89 = 0.0100000000000000009) still passes.
_TOLERANCE = 1e-9
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_regression: float | None = Field(None, ge=0, description="absolute amount the metric may get worse")
    max_regression_ratio: float | None = Field(None, ge=0, description="share of the baseline it may get worse")
    judge: Literal["estimate", "interval"] = Field("estimate", description="point estimate or bootstrap interval")
    unless_improved: dict[str, float] = Field(
        default_factory=dict, description="metric -> margin: waive the rule when the candidate is better by more"
    )

    @model_validator(mode="after")
    def _one_limit_at_least(self) -> Rule:
        if self.max_regression is None and self.max_regression_ratio is None:
            raise ValueError("set max_regression and/or max_regression_ratio")
        return self


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
    rules: dict[str, Rule] = Field(default_factory=dict)
    source: str = Field("", exclude=True)

    @model_validator(mode="after")
    def _known_metrics(self) -> Policy:
        named = set(self.rules) | {m for rule in self.rules.values() for m in rule.unless_improved}
        unknown = sorted(named - set(HIGHER_IS_BETTER))
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; rules can name {sorted(HIGHER_IS_BETTER)}")
        return self


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
    basis = ", judged on the bootstrap interval" if rule.judge == "interval" else ""
    waivers = " and ".join(
        f"{other} is better by more than {_show(other, margin)}" for other, margin in rule.unless_improved.items()
    )
    return f"{metric}: " + " and ".join(limits) + basis + (f", unless {waivers}" if waivers else "")


def judge(policy: Policy, deltas: list[MetricDelta]) -> list[RuleVerdict]:
    """One verdict per rule, each with a reason a person can read without the policy file open."""
    by_metric = {delta.metric: delta for delta in deltas}
    verdicts = []
    for metric, rule in policy.rules.items():
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
    if failures and on_interval:
        reason = (f"{observed}: at least {_show(metric, judged)} {worse} across the whole interval, "
                  f"more than {' and '.join(failures)}")
    elif failures:
        reason = f"{observed}: {_show(metric, regression)} {worse}, more than {' and '.join(failures)}"
    elif on_interval and regression > 0:
        reason = f"{observed}: {_show(metric, regression)} {worse}, but the interval does not establish more than " \
                 "the policy allows"
    else:
        reason = f"{observed}: within the policy"
    if rule.judge == "interval" and not on_interval:
        reason += "; no bootstrap interval, judged on the estimate"
    return RuleVerdict(metric=metric, rule=stated, passed=not failures, reason=reason)
