"""A pyfunc model's MLflow signature as what Vigil serves: Open Inference tensors, and the checks of a request.

The signature types everything a served model publishes and accepts: one OIP input per column (or per tensor of a
tensor signature) with the signature's own name, its datatype and shape; outputs named and typed from the output
schema. :func:`validate_columns` refuses what the model could not take, naming the column and the row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from vigil.errors import VigilError

if TYPE_CHECKING:
    from mlflow.models import ModelSignature
    from mlflow.types import Schema


ROW_LIMIT_SOURCE = "(max_rows_per_request: the model's VIGIL_MODELS_FILE table, else VIGIL_MAX_ROWS_PER_REQUEST)"


class NoSignature(VigilError):
    """The model cannot be typed: it has no signature, or one Vigil cannot serve."""


class InvalidInput(VigilError):
    """A request the signature refuses; ``column`` names the input at fault (None when it is the whole request)."""

    def __init__(self, message: str, column: str | None = None) -> None:
        super().__init__(message)
        self.column = column


@dataclass(frozen=True)
class FieldSpec:
    """One Open Inference tensor as the model metadata publishes it."""

    name: str
    datatype: str  # BOOL, INT8..INT64, UINT8..UINT64, FP16, FP32, FP64, BYTES
    shape: list[int]  # -1: any size (the rows, for a column)
    mlflow_type: str
    required: bool = True


@dataclass(frozen=True)
class ModelSignatureSpec:
    inputs: list[FieldSpec]
    outputs: list[FieldSpec]  # empty when the model logged no output schema: typed from its predictions then
    tensor_based: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# MLflow column types -> OIP datatypes. A datetime travels as its ISO text, binary as bytes: both BYTES.
COLUMN_DATATYPES = {
    "double": "FP64", "float": "FP32", "long": "INT64", "integer": "INT32", "boolean": "BOOL",
    "string": "BYTES", "binary": "BYTES", "datetime": "BYTES",
}
NUMPY_DATATYPES = {
    "float64": "FP64", "float32": "FP32", "float16": "FP16", "int64": "INT64", "int32": "INT32", "int16": "INT16",
    "int8": "INT8", "uint64": "UINT64", "uint32": "UINT32", "uint16": "UINT16", "uint8": "UINT8", "bool": "BOOL",
}
_NUMPY_OF = {datatype: name for name, datatype in NUMPY_DATATYPES.items()}


def signature_spec(signature: ModelSignature | None) -> ModelSignatureSpec:
    """The Open Inference tensors of a model's signature; NoSignature when there is none to serve by."""
    if signature is None or signature.inputs is None:
        raise NoSignature("the model has no signature")
    inputs = _fields(signature.inputs, "input")
    outputs = _fields(signature.outputs, "output") if signature.outputs is not None else []
    return ModelSignatureSpec(inputs, outputs, tensor_based=signature.inputs.is_tensor_spec())


def _fields(schema: Schema, prefix: str) -> list[FieldSpec]:
    from mlflow.types import ColSpec, TensorSpec

    fields = []
    for position, item in enumerate(schema.inputs):
        name = item.name if item.name is not None else f"{prefix}-{position}"  # unnamed: a stable name by place
        required = bool(getattr(item, "required", True))
        if isinstance(item, TensorSpec):
            datatype = oip_datatype_of_dtype(str(item.type))
            fields.append(FieldSpec(name, datatype, [int(d) for d in item.shape], str(item.type), required))
        elif isinstance(item, ColSpec) and str(getattr(item.type, "name", item.type)) in COLUMN_DATATYPES:
            mlflow_type = str(item.type.name)  # type: ignore[union-attr]
            fields.append(FieldSpec(name, COLUMN_DATATYPES[mlflow_type], [-1], mlflow_type, required))
        else:
            raise NoSignature(f"{prefix} {name!r} has type {item.type}, which Vigil does not serve yet "
                              "(arrays, objects and maps of MLflow 3 signatures)")
    return fields


def oip_datatype_of_dtype(dtype: str) -> str:
    """The OIP datatype of a numpy dtype name; strings and objects are BYTES."""
    return NUMPY_DATATYPES.get(dtype, "BYTES")


def oip_datatype_of(array: Any) -> str:
    """The OIP datatype of a numpy array (for predictions without an output schema)."""
    return oip_datatype_of_dtype(str(array.dtype))


def numpy_dtype(datatype: str) -> str:
    """The numpy dtype of an OIP datatype (``object`` for BYTES)."""
    return _NUMPY_OF.get(datatype, "object")


def validate_columns(spec: ModelSignatureSpec, columns: Mapping[str, Sequence[Any]], max_rows: int) -> int:
    """Check one sequence per column against a column signature; the number of rows, or InvalidInput."""
    expected = {field.name: field for field in spec.inputs}
    unknown = [name for name in columns if name not in expected]
    if unknown:
        raise InvalidInput(f"unknown column(s) {unknown}; the model takes {list(expected)}", unknown[0])
    missing = [field.name for field in spec.inputs if field.required and field.name not in columns]
    if missing:
        raise InvalidInput(f"missing column(s) {missing}; the model takes {list(expected)}", missing[0])
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        raise InvalidInput(f"columns differ in length: {lengths}")
    count = next(iter(lengths.values()), 0)
    if count < 1:
        raise InvalidInput("the request holds no rows")
    if count > max_rows:
        raise InvalidInput(f"{count} rows; the limit is {max_rows} {ROW_LIMIT_SOURCE}")
    for name, values in columns.items():
        field = expected[name]
        for row, value in enumerate(values):
            problem = _value_problem(field, value)
            if problem:
                raise InvalidInput(f"column {name!r} row {row}: {problem}", name)
    return count


def _value_problem(field: FieldSpec, value: Any) -> str:
    """Why ``value`` cannot go in ``field``, or "" when it can."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "" if not field.required else f"a value is required ({field.datatype})"
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()  # a numpy scalar
    kind = field.datatype
    if kind == "BYTES":
        return "" if isinstance(value, str | bytes) else f"expected a string, got {type(value).__name__} {value!r}"
    if kind == "BOOL":
        return "" if isinstance(value, bool) else f"expected a boolean, got {type(value).__name__} {value!r}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"expected a number ({kind}), got {type(value).__name__} {value!r}"
    if kind.startswith(("INT", "UINT")):
        if isinstance(value, float) and not value.is_integer():
            return f"expected an integer ({kind}), got {value!r}"
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return f"expected a finite number ({kind}), got {value!r}"
    return ""
