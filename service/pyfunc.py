"""Any MLflow pyfunc model with a signature, served: what crosses from the API worker to its model service and back.

The API worker decodes a request (Open Inference tensors, or MLflow's scoring formats) into **rows** — one dict per
input row, keyed by the signature's input names — validated against the signature, so one bad request never fails
the batch it would have joined. The model service batches rows from many requests, rebuilds what the model takes
(a DataFrame typed by the signature, or arrays for a tensor signature), predicts, and answers one
:class:`PredictedRow` per row with the **form** of the model's output (a DataFrame, a Series, an array, a list or a
dict of arrays). From the rows of one request the API rebuilds the prediction the model would have given that
request alone (:func:`prediction_of`), so `/invocations` answers exactly what `mlflow models serve` answers, and Open
Inference outputs are typed from the output schema (:func:`output_tensors`).

Framework-free: the BentoML service is `service.pyfunc_service`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

from service.errors import ApiError
from vigil.signature import (
    ROW_LIMIT_SOURCE,
    InvalidInput,
    ModelSignatureSpec,
    numpy_dtype,
    oip_datatype_of,
    validate_columns,
)

OutputForm = Literal["frame", "series", "array", "list", "dict"]


class PredictedRow(BaseModel):
    """One row's prediction as the model service answers it."""

    output: Any  # a dict {column: value} for the frame and dict forms, else the row's value (scalar or list)
    form: OutputForm
    version: str
    batch_size: int  # of the batch this row was predicted in, after adaptive batching


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    data: list[Any]  # flat, row-major


# --- API worker: requests -> rows -------------------------------------------------------------------------------


def rows_from_columns(spec: ModelSignatureSpec, columns: Mapping[str, Sequence[Any]], max_rows: int
                      ) -> list[dict[str, Any]]:
    """Validated rows of a column-based model from one sequence per column."""
    count = _validated(spec, columns, max_rows)
    names = list(columns)
    return [{name: _plain(columns[name][index]) for name in names} for index in range(count)]


def rows_from_tensors(spec: ModelSignatureSpec, tensors: Mapping[str, tuple[str, list[int], list[Any]]],
                      max_rows: int) -> list[dict[str, Any]]:
    """Rows from Open Inference tensors (name -> (datatype, shape, flat data)), checked against the signature."""
    expected = {field.name: field for field in spec.inputs}
    for name, (datatype, _, _) in tensors.items():
        field = expected.get(name)
        if field is None:
            raise ApiError(400, "invalid_tensor",
                           f"unknown input {name!r}; the model takes {sorted(expected)}")
        if datatype != field.datatype:
            raise ApiError(400, "invalid_tensor",
                           f"input {name!r} has datatype {datatype}; the model takes {field.datatype}")
    if not spec.tensor_based:
        columns: dict[str, list[Any]] = {}
        for name, (_, shape, data) in tensors.items():
            if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or any(d < 0 for d in shape):
                raise ApiError(400, "invalid_tensor", f"input {name!r} has shape {shape}; expected [N] or [N, 1]")
            if math.prod(shape) != len(data):
                raise ApiError(400, "invalid_tensor", f"input {name!r} has shape {shape} but holds {len(data)} "
                                                      "element(s)")
            columns[name] = data
        return rows_from_columns(spec, columns, max_rows)
    return _tensor_rows(spec, tensors, max_rows)


def _tensor_rows(spec: ModelSignatureSpec, tensors: Mapping[str, tuple[str, list[int], list[Any]]],
                 max_rows: int) -> list[dict[str, Any]]:
    missing = [field.name for field in spec.inputs if field.required and field.name not in tensors]
    if missing:
        raise ApiError(400, "invalid_tensor", f"missing input(s) {missing}")
    counts: set[int] = set()
    arrays: dict[str, np.ndarray] = {}
    by_name = {field.name: field for field in spec.inputs}
    for name, (datatype, shape, data) in tensors.items():
        field = by_name[name]
        if len(shape) != len(field.shape) or any(want not in (-1, got) for want, got in zip(field.shape, shape,
                                                                                            strict=True)):
            raise ApiError(400, "invalid_tensor", f"input {name!r} has shape {shape}; the model takes {field.shape}")
        if math.prod(shape) != len(data):
            raise ApiError(400, "invalid_tensor", f"input {name!r} has shape {shape} but holds {len(data)} element(s)")
        array = np.asarray(data, dtype=numpy_dtype(datatype)).reshape(shape)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ApiError(400, "invalid_value", f"input {name!r} holds a non-finite number")
        arrays[name] = array
        counts.add(shape[0] if shape else 1)
    if len(counts) != 1:
        raise ApiError(400, "invalid_tensor", f"inputs disagree on the number of rows: {sorted(counts)}")
    count = counts.pop()
    if count < 1:
        raise ApiError(400, "empty_request", "the request holds no rows")
    if count > max_rows:
        raise ApiError(413, "too_many_rows", f"{count} rows; the limit is {max_rows} {ROW_LIMIT_SOURCE}")
    return [{name: array[index].tolist() for name, array in arrays.items()} for index in range(count)]


def rows_from_prediction_input(spec: ModelSignatureSpec, data: Any, max_rows: int) -> list[dict[str, Any]]:
    """Rows from what MLflow's scoring-protocol parser made of a request: a DataFrame, a dict or an array."""
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        if spec.tensor_based:
            if len(spec.inputs) == 1 and len(data.columns) >= 1:
                values = data.to_numpy().tolist()
                return rows_from_tensors(spec, {spec.inputs[0].name: (
                    spec.inputs[0].datatype, [len(values), *np.asarray(values).shape[1:]],
                    np.asarray(values).ravel().tolist())}, max_rows)
            raise ApiError(400, "invalid_request", "this model takes tensors; send `inputs` or `instances`")
        return rows_from_columns(spec, {str(c): data[c].tolist() for c in data.columns}, max_rows)
    if isinstance(data, dict):
        if spec.tensor_based:
            return rows_from_tensors(spec, {name: _as_tensor(spec, name, value) for name, value in data.items()},
                                     max_rows)
        return rows_from_columns(spec, {str(k): list(np.atleast_1d(np.asarray(v, dtype=object)))
                                        for k, v in data.items()}, max_rows)
    array = np.asarray(data)
    if spec.tensor_based and len(spec.inputs) == 1:
        name = spec.inputs[0].name
        return rows_from_tensors(spec, {name: _as_tensor(spec, name, array)}, max_rows)
    if not spec.tensor_based and array.ndim == 2 and array.shape[1] == len(spec.inputs):
        return rows_from_columns(spec, {field.name: array[:, i].tolist() for i, field in enumerate(spec.inputs)},
                                 max_rows)
    raise ApiError(400, "invalid_request", f"cannot match an input of shape {list(array.shape)} to the model's "
                                           f"inputs {[field.name for field in spec.inputs]}")


def _as_tensor(spec: ModelSignatureSpec, name: str, value: Any) -> tuple[str, list[int], list[Any]]:
    by_name = {field.name: field for field in spec.inputs}
    if name not in by_name:
        raise ApiError(400, "invalid_tensor", f"unknown input {name!r}; the model takes {sorted(by_name)}")
    array = np.asarray(value)
    return by_name[name].datatype, list(array.shape), array.ravel().tolist()


def _validated(spec: ModelSignatureSpec, columns: Mapping[str, Sequence[Any]], max_rows: int) -> int:
    try:
        return validate_columns(spec, columns, max_rows)
    except InvalidInput as invalid:
        status = 413 if "limit" in str(invalid) else 400
        raise ApiError(status, "invalid_input", str(invalid)) from None


def _plain(value: Any) -> Any:
    """A JSON-able Python value (numpy scalars become Python's; NaN of an optional column becomes None)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


# --- model service: rows -> model input, model output -> rows ---------------------------------------------------


def model_input(spec: ModelSignatureSpec, rows: Sequence[Mapping[str, Any]]) -> Any:
    """What the model takes for ``rows``: a DataFrame typed by a column signature, or arrays for a tensor one."""
    import pandas as pd

    if spec.tensor_based:
        arrays = {field.name: np.asarray([row[field.name] for row in rows], dtype=numpy_dtype(field.datatype))
                  for field in spec.inputs if field.name in rows[0]}
        if len(spec.inputs) == 1 and spec.inputs[0].name.startswith("input-"):
            return arrays[spec.inputs[0].name]  # an unnamed tensor: the model takes the array itself
        return arrays
    names = [field.name for field in spec.inputs if any(field.name in row for row in rows)]
    frame = pd.DataFrame.from_records([{name: row.get(name) for name in names} for row in rows], columns=names)
    for field in spec.inputs:
        if field.name in frame and field.datatype not in ("BYTES",) and frame[field.name].notna().all():
            frame[field.name] = frame[field.name].astype(np.dtype(numpy_dtype(field.datatype)))
    return frame


def predicted_rows(prediction: Any, count: int, version: str) -> list[PredictedRow]:
    """The model's output for ``count`` rows, one :class:`PredictedRow` each."""
    import pandas as pd

    form: OutputForm
    if isinstance(prediction, pd.DataFrame):
        form = "frame"
        columns = {str(c): prediction[c].tolist() for c in prediction.columns}
        outputs: list[Any] = [{c: values[i] for c, values in columns.items()} for i in range(len(prediction))]
    elif isinstance(prediction, pd.Series):
        form, outputs = "series", prediction.tolist()
    elif isinstance(prediction, np.ndarray):
        form, outputs = "array", prediction.tolist()
    elif isinstance(prediction, dict):
        form = "dict"
        arrays = {str(k): np.asarray(v).tolist() for k, v in prediction.items()}
        outputs = [{k: values[i] for k, values in arrays.items()} for i in range(count)]
    elif isinstance(prediction, list):
        form, outputs = "list", [_plain(value) for value in prediction]
    else:
        raise TypeError(f"the model returned {type(prediction).__name__}; Vigil serves DataFrame, Series, ndarray, "
                        "dict or list outputs")
    if len(outputs) != count:
        raise ValueError(f"the model returned {len(outputs)} predictions for {count} rows")
    return [PredictedRow(output=output, form=form, version=version, batch_size=count) for output in outputs]


# --- API worker: rows -> responses ------------------------------------------------------------------------------


def prediction_of(rows: Sequence[PredictedRow]) -> Any:
    """The prediction the model would have given these rows alone, in its own form (for MLflow's JSON)."""
    import pandas as pd

    form = rows[0].form
    values = [row.output for row in rows]
    if form == "frame":
        return pd.DataFrame.from_records(values, columns=list(values[0]))
    if form == "series":
        return pd.Series(values)
    if form == "array":
        return np.asarray(values)
    if form == "dict":
        return {key: np.asarray([value[key] for value in values]) for key in values[0]}
    return values


def output_tensors(spec: ModelSignatureSpec, rows: Sequence[PredictedRow]) -> list[OutputTensor]:
    """Open Inference outputs of a request's rows, named and typed from the output schema when there is one."""
    declared = {field.name: field for field in spec.outputs}
    if rows[0].form in ("frame", "dict"):
        named = {key: np.asarray([row.output[key] for row in rows]) for key in rows[0].output}
    else:
        name = spec.outputs[0].name if len(spec.outputs) == 1 else "output-0"
        named = {name: np.asarray([row.output for row in rows])}
    tensors = []
    for name, array in named.items():
        field = declared.get(name)
        datatype = field.datatype if field is not None else oip_datatype_of(array)
        data = array.ravel().tolist()
        if datatype == "BYTES":
            data = [value if isinstance(value, str | bytes) else str(value) for value in data]
        tensors.append(OutputTensor(name, datatype, list(array.shape), data))
    return tensors



def selected_outputs(tensors: list[OutputTensor], requested: Sequence[str]) -> list[OutputTensor]:
    """The outputs a request named (all when it named none); an unknown name is a 400."""
    if not requested:
        return tensors
    by_name = {tensor.name: tensor for tensor in tensors}
    unknown = [name for name in requested if name not in by_name]
    if unknown:
        raise ApiError(400, "invalid_tensor", f"unknown output(s) {unknown}; available: {sorted(by_name)}")
    return [by_name[name] for name in requested]
