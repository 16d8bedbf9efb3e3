"""Judging a comparison under the promotion policy: one verdict per rule, with a reason a person can read.

The policy file itself — its format, its sections and their checks — is read by :mod:`vigil.policy`, in the core,
because the live-quality watch of ``vigil monitor quality`` reads it too.
"""

from __future__ import annotations

import math

from evaluations.schemas import MetricDelta, RuleVerdict
from vigil.policy import HIGHER_IS_BETTER, Policy, Rule

# A threshold met to the last bit of float arithmetic (0.90 - 0.89 = 0.0100000000000000009) still passes.
_TOLERANCE = 1e-9


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
