"""Every refusal the API makes, and the one table that says which HTTP and gRPC status each error type gets.

The API refuses with :class:`ApiError` (status, stable code, message), answered as the contract's
`{"error": {"code", "message"}}` on Vigil's own routes, as the protocol's `{"error": "<message>"}` on the Open
Inference `/v2` routes, and as the mapped status code by gRPC. Errors that other layers raise by
type (the RAG pipeline's) become ApiErrors through :data:`REFUSALS`.

The RAG service runs in another process behind `bentoml.depends`, and BentoML 1.4 does not carry an exception
across: its server answers a `BentoMLException` with the exception's `error_code` as the HTTP status but replaces
the message of every 5xx with "An unexpected error has occurred", and its client raises whichever
`BentoMLException` subclass registered that status first (BentoML's own `InvalidArgument` for 400,
`ServiceUnavailable` for 503, ...), never the type that was raised. So the RAG service answers a typed error as a
response of its own (:func:`error_response`: the table's status, the contract's error body with the type's code),
and the API turns the exception BentoML's client raises for it back into that type (:func:`remote_error`).
"""

from __future__ import annotations

import grpc
from bentoml.exceptions import BentoMLException
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from service.rag.errors import (
    GeneratorTimeout,
    GeneratorUnavailable,
    InvalidQuestion,
    InvalidTopK,
    QuestionTooLong,
    RagConfigError,
    RagError,
    RagServiceUnavailable,
    StoreUnavailable,
)
from vigil.contracts import ErrorDetail, ErrorResponse


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> ErrorResponse:
        return ErrorResponse(error=ErrorDetail(code=self.code, message=self.message))

    def oip_body(self) -> OipErrorResponse:
        return OipErrorResponse(error=self.message)


class OipErrorResponse(BaseModel):
    """The Open Inference Protocol's error body, answered on every `/v2` route: its clients read `error` as a
    string (Triton's `tritonclient.http` concatenates it), so Vigil's richer body would break them."""

    error: str


def overloaded(retry_after_seconds: int = 1) -> ApiError:
    return ApiError(503, "overloaded", "the model is at capacity; retry shortly",
                    headers={"Retry-After": str(retry_after_seconds)})


def not_ready(reason: str) -> ApiError:
    return ApiError(503, "not_ready", f"the model is not ready: {reason}", headers={"Retry-After": "5"})


# Error type -> (HTTP status, code). The RAG pipeline's codes are its type names, as the API has always answered;
# a RAG service that cannot answer at all is `rag_unavailable`, which leaves /predict untouched.
REFUSALS: dict[type[Exception], tuple[int, str]] = {
    InvalidQuestion: (400, "InvalidQuestion"),
    QuestionTooLong: (413, "QuestionTooLong"),
    InvalidTopK: (422, "InvalidTopK"),
    StoreUnavailable: (503, "StoreUnavailable"),
    GeneratorUnavailable: (502, "GeneratorUnavailable"),
    GeneratorTimeout: (504, "GeneratorTimeout"),
    RagConfigError: (500, "RagConfigError"),
    RagServiceUnavailable: (503, "rag_unavailable"),
}
_BY_CODE: dict[str, type[Exception]] = {code: kind for kind, (_, code) in REFUSALS.items()}

# HTTP status -> gRPC status, for every ApiError the gRPC front answers.
GRPC_STATUS: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
    502: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def refusal(error: Exception) -> tuple[int, str]:
    """(HTTP status, code) of an error type, by its nearest entry in :data:`REFUSALS`; 500 for anything else."""
    for kind in type(error).__mro__:
        if kind in REFUSALS:
            return REFUSALS[kind]
    return 500, "internal_error"


def api_error(error: Exception) -> ApiError:
    status, code = refusal(error)
    return ApiError(status, code, str(error))


def grpc_status(status: int) -> grpc.StatusCode:
    return GRPC_STATUS.get(status, grpc.StatusCode.INTERNAL)


def error_response(error: RagError) -> Response:
    """A typed error as the RAG service answers it across `bentoml.depends` (see the module docstring)."""
    status, code = refusal(error)
    body = ErrorResponse(error=ErrorDetail(code=code, message=str(error)))
    return Response(body.model_dump_json(), status_code=status, media_type="application/json")


def remote_error(error: BentoMLException) -> RagError:
    """The typed error behind what BentoML's client raised for a RAG service answer.

    An answer that is not one of :func:`error_response`'s (BentoML's own 5xx, its overload 503) means the service
    could not answer: :class:`RagServiceUnavailable`.
    """
    try:
        detail = ErrorResponse.model_validate_json(error.message).error
    except ValidationError:
        return RagServiceUnavailable(f"the RAG service is unavailable: {error!r}")
    kind = _BY_CODE.get(detail.code)
    if kind is None or not issubclass(kind, RagError):
        return RagServiceUnavailable(f"the RAG service answered an unknown error {detail.code}: {detail.message}")
    return kind(detail.message)
