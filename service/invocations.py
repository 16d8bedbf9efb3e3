"""MLflow's scoring protocol (`POST /models/{name}/invocations`), parsed and answered by MLflow's own code.

`mlflow models serve` reads `dataframe_split`, `dataframe_records`, `instances` and `inputs` JSON and `text/csv`
with the functions of `mlflow.pyfunc.scoring_server`, and writes `{"predictions": ...}` with its
`predictions_to_json`; Vigil calls the same functions, so its users' clients only change the URL.
"""

from __future__ import annotations

import io
from typing import Any

import orjson

from service.errors import ApiError
from vigil.contracts import ModelIdentity


def parse_invocation(body: bytes, content_type: str) -> Any:
    """The model input MLflow's scoring server makes of ``body``: a DataFrame, a dict of arrays or an array."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    mime_type, _, parameters = content_type.partition(";")
    mime_type = mime_type.strip().lower() or scoring_server.CONTENT_TYPE_JSON
    if parameters.strip() and parameters.strip().lower().replace(" ", "") not in ("charset=utf-8",):
        raise ApiError(415, "unsupported_media_type", f"only UTF-8 is accepted, not {content_type!r}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_encoding", "the request body is not valid UTF-8") from None
    try:
        if mime_type == scoring_server.CONTENT_TYPE_CSV:
            return scoring_server.parse_csv_input(io.StringIO(text))
        if mime_type != scoring_server.CONTENT_TYPE_JSON:
            raise ApiError(415, "unsupported_media_type",
                           f"send application/json or text/csv, not {content_type!r}")
        try:
            decoded = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise ApiError(400, "invalid_json", "the request body is not valid JSON") from None
        if not isinstance(decoded, dict):
            raise ApiError(400, "invalid_request", "the body must be a JSON object with one of dataframe_split, "
                                                   "dataframe_records, instances or inputs")
        return scoring_server.infer_and_parse_data(
            {key: value for key, value in decoded.items() if key in scoring_server.SUPPORTED_FORMATS})
    except MlflowException as refused:
        raise ApiError(400, "invalid_request", refused.message.split("\n")[0]) from None


def predictions_json(prediction: Any, request_id: str, model: ModelIdentity) -> bytes:
    """`{"predictions": ...}` exactly as `mlflow models serve` writes it, with the request's id and the version that
    answered beside it (:class:`vigil.contracts.InvocationsResponse`)."""
    from mlflow.pyfunc import scoring_server

    written = io.StringIO()
    scoring_server.predictions_to_json(prediction, written,
                                       metadata={"request_id": request_id, "model": model.model_dump()})
    return written.getvalue().encode()
