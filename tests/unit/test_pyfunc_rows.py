"""A pyfunc model's signature as Open Inference tensors, and the rows that cross to its model service and back."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from mlflow.models import infer_signature
from mlflow.types import ColSpec, Schema

from service.errors import ApiError
from service.pyfunc import (
    PredictedRow,
    model_input,
    output_tensors,
    predicted_rows,
    prediction_of,
    rows_from_tensors,
    selected_outputs,
)
from vigil.contracts import InvocationsResponse, ModelIdentity
from vigil.signature import InvalidInput, NoSignature, signature_spec, validate_columns

FRAME = pd.DataFrame({
    "amount": np.array([1.5, 2.0], dtype="float64"), "ratio": np.array([0.5, 0.25], dtype="float32"),
    "count": np.array([3, 4], dtype="int64"), "small": np.array([1, 2], dtype="int32"),
    "flag": [True, False], "city": ["Paris", "Oslo"], "a/b c": [0.1, 0.2],
})


def test_a_column_signature_gives_one_typed_input_per_column_with_its_own_name() -> None:
    spec = signature_spec(infer_signature(FRAME, np.array(["yes", "no"])))
    assert [(f.name, f.datatype, f.shape) for f in spec.inputs] == [
        ("amount", "FP64", [-1]), ("ratio", "FP32", [-1]), ("count", "INT64", [-1]), ("small", "INT32", [-1]),
        ("flag", "BOOL", [-1]), ("city", "BYTES", [-1]), ("a/b c", "FP64", [-1])]
    assert not spec.tensor_based
    # MLflow names no output of an array prediction: it gets a stable name by its place.
    assert [(f.name, f.datatype) for f in spec.outputs] == [("output-0", "BYTES")]


def test_a_tensor_signature_keeps_its_shape_and_a_missing_one_is_refused() -> None:
    spec = signature_spec(infer_signature(np.zeros((2, 4), dtype="float32"), np.zeros(2)))
    assert spec.tensor_based
    assert [(f.name, f.datatype, f.shape) for f in spec.inputs] == [("input-0", "FP32", [-1, 4])]
    assert [(f.name, f.datatype) for f in spec.outputs] == [("output-0", "FP64")]
    with pytest.raises(NoSignature):
        signature_spec(None)


@pytest.mark.parametrize(("columns", "named", "fragment"), [
    ({"amount": [1.0], "extra": [1]}, "extra", "unknown column"),
    ({"count": [1]}, "amount", "missing column"),
    ({"amount": ["x"], "count": [1]}, "amount", "expected a number"),
    ({"amount": [float("nan")], "count": [1]}, "amount", "a value is required"),
    ({"amount": [float("inf")], "count": [1]}, "amount", "finite"),
    ({"amount": [1.0], "count": [1.5]}, "count", "expected an integer"),
    ({"amount": [1.0], "count": [True]}, "count", "expected a number"),
])
def test_a_value_the_model_cannot_take_is_refused_naming_its_column(columns: dict[str, list[object]], named: str,
                                                                     fragment: str) -> None:
    spec = signature_spec(infer_signature(pd.DataFrame({"amount": [1.0], "count": np.array([1], dtype="int64")})))
    with pytest.raises(InvalidInput) as refused:
        validate_columns(spec, columns, max_rows=10)
    assert refused.value.column == named and fragment in str(refused.value) and repr(named) in str(refused.value)


def test_an_optional_column_may_be_missing_or_empty_and_rows_are_bounded() -> None:
    spec = signature_spec(infer_signature(pd.DataFrame({"x": [1.0]})))
    optional = type(spec)([type(spec.inputs[0])("x", "FP64", [-1], "double", required=False)], [], False)
    assert validate_columns(optional, {"x": [None, float("nan")]}, max_rows=10) == 2
    with pytest.raises(InvalidInput, match="limit is 1"):
        validate_columns(spec, {"x": [1.0, 2.0]}, max_rows=1)
    explicit = signature_spec(type(infer_signature(pd.DataFrame({"x": [1.0]})))(
        inputs=Schema([ColSpec("double", "x", required=False)])))
    assert explicit.inputs[0].required is False


def test_open_inference_tensors_become_typed_rows_and_a_frame_for_the_model() -> None:
    spec = signature_spec(infer_signature(pd.DataFrame({"amount": [1.0], "city": ["Oslo"],
                                                        "count": np.array([1], dtype="int64")})))
    rows = rows_from_tensors(spec, {"amount": ("FP64", [2, 1], [1, 2.5]), "city": ("BYTES", [2], ["a", "b"]),
                                    "count": ("INT64", [2], [3, 4])}, max_rows=10)
    assert rows == [{"amount": 1, "city": "a", "count": 3}, {"amount": 2.5, "city": "b", "count": 4}]
    frame = model_input(spec, rows)
    assert list(frame.columns) == ["amount", "city", "count"]
    assert (str(frame["amount"].dtype), str(frame["count"].dtype)) == ("float64", "int64")
    with pytest.raises(ApiError, match="the model takes FP64"):
        rows_from_tensors(spec, {"amount": ("FP32", [1], [1.0])}, max_rows=10)


@pytest.mark.parametrize(("prediction", "expected_json_shape"), [
    (np.array([0.5, 1.5]), [0.5, 1.5]),
    (pd.Series(["a", "b"]), [{"0": "a"}, {"0": "b"}]),  # MLflow writes a Series as the records of a frame
    (pd.DataFrame({"p": [0.1, 0.9], "label": ["x", "y"]}), [{"p": 0.1, "label": "x"}, {"p": 0.9, "label": "y"}]),
    ({"p": np.array([0.1, 0.9])}, {"p": [0.1, 0.9]}),
    ([1, 2], [1, 2]),
])
def test_a_requests_rows_rebuild_the_models_own_prediction(prediction: object, expected_json_shape: object) -> None:
    from service.invocations import predictions_json

    rows = predicted_rows(prediction, 2, "7")
    assert all(isinstance(row, PredictedRow) and row.version == "7" for row in rows)
    answered = ModelIdentity(name="m", version="7")
    rebuilt = predictions_json(prediction_of(rows), "r-1", answered)
    direct = predictions_json(prediction, "r-1", answered)  # what MLflow's own code writes for the whole prediction
    assert rebuilt == direct
    assert json.loads(rebuilt)["predictions"] == expected_json_shape
    parsed = InvocationsResponse.model_validate_json(rebuilt)  # the contract every client reads it with
    assert parsed.model == answered and parsed.request_id == "r-1"


def test_outputs_are_named_and_typed_from_the_output_schema() -> None:
    spec = signature_spec(infer_signature(pd.DataFrame({"x": [1.0]}), np.array([1.0])))
    tensors = output_tensors(spec, predicted_rows(np.array([0.25, 0.75]), 2, "1"))
    assert [(t.name, t.datatype, t.shape, t.data) for t in tensors] == [("output-0", "FP64", [2], [0.25, 0.75])]
    frame = output_tensors(spec, predicted_rows(pd.DataFrame({"p": [0.1, 0.9], "label": ["x", "y"]}), 2, "1"))
    assert [(t.name, t.datatype) for t in frame] == [("p", "FP64"), ("label", "BYTES")]
    assert [t.name for t in selected_outputs(frame, ["label"])] == ["label"]
    with pytest.raises(ApiError, match="unknown output"):
        selected_outputs(frame, ["nope"])
