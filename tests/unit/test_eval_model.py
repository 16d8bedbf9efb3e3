"""Any model's evaluation without a server: answers of every pyfunc output form, the task, the metrics against
scikit-learn (point estimates and weighted resamples), ROC-AUC from per-class scores, and the policy's model rules."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)

from evaluations.metrics import paired_bootstrap_of
from evaluations.model_eval import (
    Answers,
    answers_of,
    classification_scores,
    encode_labels,
    infer_task,
    measure,
    regression_scores,
)
from evaluations.policy import judge
from evaluations.schemas import ClassificationMetrics, MetricDelta, RegressionMetrics
from evaluations.scoring import dataframe_split
from vigil.errors import VigilError
from vigil.policy import Policy, Rule


@pytest.mark.parametrize("prediction", [
    np.array(["a", "b"]),
    np.array([["a"], ["b"]]),
    pd.Series(["a", "b"], index=[7, 9]),
    ["a", "b"],
    pd.DataFrame({"label": ["a", "b"], "a": [0.9, 0.2], "b": [0.1, 0.8]}),
    [{"label": "a", "a": 0.9, "b": 0.1}, {"label": "b", "a": 0.2, "b": 0.8}],  # MLflow's JSON of that table
    {"label": ["a", "b"], "a": [0.9, 0.2], "b": [0.1, 0.8]},
])
def test_every_output_form_gives_one_answer_per_row(prediction: object) -> None:
    answers = answers_of(prediction)
    assert answers.values.tolist() == ["a", "b"]
    if answers.extra is not None:
        assert answers.extra.to_dict("list") == {"a": [0.9, 0.2], "b": [0.1, 0.8]}


def test_several_values_per_row_have_no_single_answer() -> None:
    with pytest.raises(VigilError, match="values per row"):
        answers_of(np.zeros((3, 4)))


@pytest.mark.parametrize(("truth", "predicted", "task"), [
    (["Lunch", "Dinner"], ["Dinner", "Dinner"], "classification"),
    ([True, False], [True, True], "classification"),
    ([0, 1, 2], [0, 2, 2], "classification"),
    ([1.5, 3.0, 2.25], [1.4, 2.9, 2.5], "regression"),
    (list(range(30)), list(range(30)), "regression"),  # whole numbers, but more of them than classes go
])
def test_the_task_is_told_from_the_target_and_the_predictions(truth: list[object], predicted: list[object],
                                                             task: str) -> None:
    assert infer_task(pd.Series(truth), pd.Series(predicted)) == task


def random_labels(rows: int, seed: int) -> tuple[pd.Series, pd.Series]:
    rng = np.random.default_rng(seed)
    truth = rng.choice(["cat", "dog", "eel"], size=rows, p=[0.5, 0.3, 0.2])
    predicted = np.where(rng.random(rows) < 0.7, truth, rng.choice(["cat", "dog", "eel", "fox"], size=rows))
    return pd.Series(truth), pd.Series(predicted)


def test_classification_figures_equal_scikit_learns_with_and_without_weights() -> None:
    truth, predicted = random_labels(300, seed=1)
    metrics = measure("classification", truth, Answers(predicted))
    assert isinstance(metrics, ClassificationMetrics)
    assert metrics.accuracy == pytest.approx(accuracy_score(truth, predicted), abs=1e-12)
    assert metrics.macro_f1 == pytest.approx(f1_score(truth, predicted, average="macro"), abs=1e-12)
    assert metrics.labels == ["cat", "dog", "eel", "fox"]
    assert np.sum(metrics.confusion_matrix) == 300 and metrics.roc_auc is None

    # A resample is a weighting of the rows: the same figures as scikit-learn's on the rows drawn.
    encoded = encode_labels(truth, predicted)
    rng = np.random.default_rng(2)
    drawn = rng.integers(0, 300, size=300)
    weights = np.bincount(drawn, minlength=300)[None, :].astype(float)
    scores = classification_scores(encoded, weights)
    assert scores["accuracy"][0] == pytest.approx(accuracy_score(truth[drawn], predicted[drawn]), abs=1e-12)
    assert scores["macro_f1"][0] == pytest.approx(f1_score(truth[drawn], predicted[drawn], average="macro"),
                                                  abs=1e-12)


def test_regression_figures_equal_scikit_learns_with_and_without_weights() -> None:
    rng = np.random.default_rng(3)
    truth = rng.normal(3, 1.4, size=200)
    predicted = truth + rng.normal(0.2, 0.8, size=200)
    metrics = measure("regression", pd.Series(truth), Answers(pd.Series(predicted)))
    assert isinstance(metrics, RegressionMetrics)
    assert metrics.mae == pytest.approx(mean_absolute_error(truth, predicted), abs=1e-12)
    assert metrics.rmse == pytest.approx(math.sqrt(mean_squared_error(truth, predicted)), abs=1e-12)
    assert metrics.r2 == pytest.approx(r2_score(truth, predicted), abs=1e-12)

    drawn = rng.integers(0, 200, size=200)
    weights = np.bincount(drawn, minlength=200)[None, :].astype(float)
    scores = regression_scores(truth, predicted, weights)
    assert scores["rmse"][0] == pytest.approx(math.sqrt(mean_squared_error(truth[drawn], predicted[drawn])))
    assert scores["r2"][0] == pytest.approx(r2_score(truth[drawn], predicted[drawn]))


def test_a_constant_target_has_no_r2_and_a_text_prediction_is_no_quantity() -> None:
    assert measure("regression", pd.Series([2.0, 2.0]), Answers(pd.Series([1.0, 3.0]))).r2 is None  # type: ignore[union-attr]
    with pytest.raises(VigilError, match="not a number in row 1"):
        measure("regression", pd.Series([2.0, 2.0]), Answers(pd.Series(["1.0", "many"])))


def test_roc_auc_comes_from_scores_named_after_the_classes() -> None:
    truth = pd.Series(["no", "yes", "yes", "no", "yes"])
    table = pd.DataFrame({"label": ["no", "yes", "no", "no", "yes"], "no": [0.8, 0.3, 0.6, 0.9, 0.1],
                          "yes": [0.2, 0.7, 0.4, 0.1, 0.9]})
    metrics = measure("classification", truth, answers_of(table))
    assert metrics.roc_auc == pytest.approx(roc_auc_score(truth == "yes", table["yes"]))  # type: ignore[union-attr]
    unnamed = answers_of(table.rename(columns={"yes": "p1", "no": "p0"}))
    assert measure("classification", truth, unnamed).roc_auc is None  # type: ignore[union-attr]


def test_paired_intervals_of_a_model_against_itself_are_zero_and_a_worse_one_is_below() -> None:
    truth, predicted = random_labels(200, seed=4)
    good = encode_labels(truth, predicted)
    constant = encode_labels(truth, pd.Series(["cat"] * 200))
    same = paired_bootstrap_of(lambda w: classification_scores(good, w), lambda w: classification_scores(good, w),
                               200, samples=200, seed=1)
    assert same["accuracy"].low == same["accuracy"].high == 0.0
    worse = paired_bootstrap_of(lambda w: classification_scores(constant, w),
                                lambda w: classification_scores(good, w), 200, samples=200, seed=1)
    assert worse["macro_f1"].high is not None and worse["macro_f1"].high < 0


def test_dataframe_split_is_plain_json_with_nulls() -> None:
    frame = pd.DataFrame({"x": [1.5, float("nan")], "n": np.array([1, 2], dtype="int64"), "s": ["a", None]})
    payload = json.loads(dataframe_split(frame))["dataframe_split"]
    assert payload == {"columns": ["x", "n", "s"], "data": [[1.5, 1, "a"], [None, 2, None]]}
    assert all(type(value) in (float, int, str, type(None)) for row in payload["data"] for value in row)


# --- the policy's rules for any model ----------------------------------------------------------------------------


def policy(**sections: object) -> Policy:
    return Policy.model_validate({"rules": {}, **sections, "source": "policy.toml"})


def test_a_models_own_rules_win_over_its_tasks() -> None:
    chosen = policy(tasks={"regression": {"rules": {"rmse": {"max_regression_ratio": 0.05}}}},
                    models={"tips-tip": {"task": "regression", "rules": {"r2": {"minimum": 0.3}}}})
    assert chosen.rules_for("other", "regression") == ({"rmse": Rule(max_regression_ratio=0.05)},
                                                       "policy.toml [tasks.regression]")
    rules, where = chosen.rules_for("tips-tip", "regression")
    assert set(rules) == {"r2"} and where.endswith("[models.'tips-tip']")
    assert chosen.task_of("tips-tip") == "regression" and chosen.task_of("other") is None
    with pytest.raises(VigilError, match=r"no rules for x \(classification\)"):
        chosen.rules_for("x", "classification")


@pytest.mark.parametrize(("sections", "problem"), [
    ({"tasks": {"regression": {"rules": {"accuracy": {"max_regression": 0.1}}}}}, "unknown metric"),
    ({"tasks": {"classification": {"rules": {"macro_f1": {"maximum": 0.9}}}}}, "bound it with minimum"),
    ({"tasks": {"regression": {"rules": {"rmse": {"minimum": 0.9}}}}}, "bound it with maximum"),
    ({"rules": {"mae": {"max_regression": 0.1}}}, "unknown metric"),  # the sentiment rules name its own metrics
    ({"tasks": {"regression": {"rules": {"rmse": {}}}}}, "set max_regression"),
])
def test_misplaced_rules_are_refused_when_the_policy_loads(sections: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        policy(**sections)


def test_a_minimum_refuses_a_candidate_below_it_whatever_the_baseline() -> None:
    rules = {"r2": Rule(minimum=0.3)}
    low = MetricDelta(metric="r2", candidate=0.25, baseline=0.20, delta=0.05, higher_is_better=True)
    (verdict,) = judge(policy(), [low], rules)
    assert not verdict.passed and "below the minimum 0.3000" in verdict.reason
    high = low.model_copy(update={"candidate": 0.35, "delta": 0.15})
    (verdict,) = judge(policy(), [high], rules)
    assert verdict.passed
