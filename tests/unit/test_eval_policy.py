"""The promotion policy: parsing the TOML file and verdicts on constructed metric pairs."""

from __future__ import annotations

from pathlib import Path

import pytest

from evaluations.policy import judge
from evaluations.schemas import MetricDelta
from vigil.errors import VigilError
from vigil.policy import PROJECT_ROOT, Policy, Rule, load_policy, resolve_policy_path
from vigil.settings import get_settings

HIGHER = {"accuracy", "macro_f1", "roc_auc"}


def deltas(**pairs: tuple[float | None, float | None]) -> list[MetricDelta]:
    """metric=(candidate, baseline) → the deltas a comparison would produce."""
    return [
        MetricDelta(metric=metric, candidate=new, baseline=old,
                    delta=None if new is None or old is None else new - old,
                    ci_low=None, ci_high=None, higher_is_better=metric in HIGHER)
        for metric, (new, old) in pairs.items()
    ]


def default_policy() -> Policy:
    return load_policy(get_settings().promotion_policy)


# The example rules, all on the point estimate.
ESTIMATES = Policy(rules={
    "macro_f1": Rule(max_regression=0.01),
    "ece": Rule(max_regression=0.02),
    "latency_p95_ms": Rule(max_regression_ratio=0.20),
})


def test_the_shipped_policy_is_the_documented_one() -> None:
    policy = default_policy()
    assert policy.rules == {
        "macro_f1": Rule(max_regression=0.01),
        "ece": Rule(max_regression=0.02, judge="interval", unless_improved={"macro_f1": 0.05}),
        "latency_p95_ms": Rule(max_regression_ratio=0.20, judge="interval"),
    }
    assert policy.gate.data == "test" and policy.gate.bootstrap == 1000 and policy.gate.limit == 0


def test_policy_found_from_another_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_policy_path(Path("evaluations/policy.toml")) == PROJECT_ROOT / "evaluations/policy.toml"
    assert default_policy().rules["macro_f1"].max_regression == 0.01


def test_equal_metrics_pass() -> None:
    verdicts = judge(default_policy(), deltas(macro_f1=(0.9, 0.9), ece=(0.05, 0.05), latency_p95_ms=(10.0, 10.0)))
    assert [v.passed for v in verdicts] == [True, True, True]
    assert all("within the policy" in v.reason for v in verdicts)


def test_each_rule_fails_on_its_own_with_a_readable_reason() -> None:
    verdicts = {v.metric: v for v in judge(ESTIMATES, deltas(
        macro_f1=(0.85, 0.90), ece=(0.08, 0.05), latency_p95_ms=(12.5, 10.0)))}
    assert not verdicts["macro_f1"].passed
    assert verdicts["macro_f1"].reason.startswith("macro_f1 0.8500 vs baseline 0.9000")
    assert "0.0500 lower, more than allowed 0.0100" in verdicts["macro_f1"].reason
    assert not verdicts["ece"].passed and "0.0300 higher" in verdicts["ece"].reason
    assert not verdicts["latency_p95_ms"].passed
    assert "+25.0%" in verdicts["latency_p95_ms"].reason
    assert "allowed 20% of the baseline" in verdicts["latency_p95_ms"].reason


def test_ece_rule_allows_two_points_and_not_more() -> None:
    policy = ESTIMATES
    within = {v.metric: v for v in judge(policy, deltas(ece=(0.069, 0.05)))}
    beyond = {v.metric: v for v in judge(policy, deltas(ece=(0.0701, 0.05)))}
    assert within["ece"].passed
    assert not beyond["ece"].passed and "higher, more than allowed 0.0200" in beyond["ece"].reason


def test_improvements_always_pass() -> None:
    verdicts = judge(default_policy(), deltas(macro_f1=(0.95, 0.80), ece=(0.01, 0.20), latency_p95_ms=(1.0, 9.0)))
    assert all(v.passed for v in verdicts)


def test_a_drop_of_exactly_the_threshold_passes() -> None:
    # 0.90 - 0.89 is 0.010000000000000009 in floating point: "not lower by more than 0.01" must still hold.
    (verdict,) = [v for v in judge(default_policy(), deltas(macro_f1=(0.89, 0.90))) if v.metric == "macro_f1"]
    assert verdict.passed


def test_a_metric_that_could_not_be_measured_fails_its_rule() -> None:
    policy = Policy(rules={"roc_auc": Rule(max_regression=0.05)})
    (verdict,) = judge(policy, deltas(roc_auc=(None, 0.9)))
    assert not verdict.passed and "could not be measured" in verdict.reason


def test_both_limits_must_hold() -> None:
    policy = Policy(rules={"latency_p95_ms": Rule(max_regression=1.0, max_regression_ratio=0.5)})
    # +1.5 ms is within 50% of 10 ms but more than 1 ms.
    (verdict,) = judge(policy, deltas(latency_p95_ms=(11.5, 10.0)))
    assert not verdict.passed
    assert "allowed 1.00 ms" in verdict.reason and "50%" not in verdict.reason.split("more than")[1]


def test_the_interval_is_quoted_in_the_reason() -> None:
    delta = MetricDelta(metric="macro_f1", candidate=0.8, baseline=0.9, delta=-0.1, ci_low=-0.14, ci_high=-0.06,
                        higher_is_better=True)
    (verdict,) = judge(Policy(rules={"macro_f1": Rule(max_regression=0.01)}), [delta])
    assert "95% CI [-0.1400, -0.0600]" in verdict.reason


def interval_delta(candidate: float, baseline: float, low: float, high: float) -> list[MetricDelta]:
    return [MetricDelta(metric="ece", candidate=candidate, baseline=baseline, delta=candidate - baseline,
                        ci_low=low, ci_high=high, higher_is_better=False)]


def test_an_interval_rule_refuses_only_an_established_regression() -> None:
    policy = default_policy()  # ece: 0.02, judged on the interval
    # The weak-but-"calibrated" champion case: worse by 0.08 on the estimate, but the interval reaches below 0.02.
    (noisy,) = [v for v in judge(policy, interval_delta(0.16, 0.08, -0.02, 0.17)) if v.metric == "ece"]
    assert noisy.passed
    assert "0.0800 higher, but the interval does not establish more than the policy allows" in noisy.reason
    # Worse by at least 0.03 everywhere in the interval: refused.
    (clear,) = [v for v in judge(policy, interval_delta(0.16, 0.08, 0.03, 0.13)) if v.metric == "ece"]
    assert not clear.passed
    assert "at least 0.0300 higher across the whole interval, more than allowed 0.0200" in clear.reason
    # The same numbers on the estimate are refused.
    (estimate,) = [v for v in judge(ESTIMATES, interval_delta(0.16, 0.08, -0.02, 0.17)) if v.metric == "ece"]
    assert not estimate.passed


def test_a_guardrail_yields_to_an_established_gain() -> None:
    # The forced-in near-constant champion: far worse macro-F1, "perfect" calibration at 50% accuracy.
    ece = MetricDelta(metric="ece", candidate=0.128, baseline=0.009, delta=0.119, ci_low=0.03, ci_high=0.158,
                      higher_is_better=False)
    clear_gain = MetricDelta(metric="macro_f1", candidate=0.90, baseline=0.50, delta=0.40, ci_low=0.29,
                             ci_high=0.50, higher_is_better=True)
    noisy_gain = clear_gain.model_copy(update={"ci_low": 0.02})
    policy = default_policy()

    (waived,) = [v for v in judge(policy, [ece, clear_gain]) if v.metric == "ece"]
    assert waived.passed
    assert "waived: macro_f1 is better by at least 0.2900 (more than 0.0500)" in waived.reason
    assert "unless macro_f1 is better by more than 0.0500" in waived.rule
    # A gain the interval does not establish waives nothing.
    (kept,) = [v for v in judge(policy, [ece, noisy_gain]) if v.metric == "ece"]
    assert not kept.passed and "waived" not in kept.reason
    # Nor does a gain on a metric that was not measured.
    (unmeasured,) = [v for v in judge(policy, [ece]) if v.metric == "ece"]
    assert not unmeasured.passed


def test_a_consistent_latency_regression_fails_on_the_interval() -> None:
    slower = [MetricDelta(metric="latency_p95_ms", candidate=15.0, baseline=10.0, delta=5.0, ci_low=3.5, ci_high=6.0,
                          higher_is_better=False)]
    (verdict,) = [v for v in judge(default_policy(), slower) if v.metric == "latency_p95_ms"]
    assert not verdict.passed
    assert "at least 3.50 ms higher across the whole interval, more than allowed 20% of the baseline" in verdict.reason


def test_an_interval_rule_without_an_interval_falls_back_to_the_estimate() -> None:
    policy = Policy(rules={"macro_f1": Rule(max_regression=0.01, judge="interval")})
    (verdict,) = judge(policy, deltas(macro_f1=(0.80, 0.90)))
    assert not verdict.passed and "no bootstrap interval, judged on the estimate" in verdict.reason


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


def test_a_custom_policy_file(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, """
[gate]
data = "imdb"
limit = 200
bootstrap = 50

[rules.accuracy]
max_regression = 0.02
[rules.latency_p50_ms]
max_regression_ratio = 1.5
"""))
    assert policy.gate.data == "imdb" and policy.gate.limit == 200 and policy.gate.bootstrap == 50
    assert set(policy.rules) == {"accuracy", "latency_p50_ms"}
    assert policy.source == str(tmp_path / "policy.toml")


@pytest.mark.parametrize(("text", "message"), [
    ("[rules.f1]\nmax_regression = 0.1\n", "unknown metric"),
    ("[rules.macro_f1]\nmax_regresion = 0.1\n", "max_regresion"),
    ("[rules.macro_f1]\n", "set max_regression"),
    ("[rules.macro_f1]\nmax_regression = -0.1\n", "greater than or equal to 0"),
    ("[gate]\nbootstrap = 'many'\n", "bootstrap"),
    ("[rules.ece]\nmax_regression = 0.02\njudge = 'ci'\n", "judge"),
    ("[rules.ece]\nmax_regression = 0.02\nunless_improved = { f1 = 0.05 }\n", "unknown metric"),
    ("[rules.macro_f1\n", "not valid TOML"),
])
def test_invalid_policies_are_refused_readably(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(VigilError, match=message):
        load_policy(write(tmp_path, text))


def test_a_missing_policy_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(VigilError, match="VIGIL_PROMOTION_POLICY"):
        load_policy(tmp_path / "nowhere.toml")
