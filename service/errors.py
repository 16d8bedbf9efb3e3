"""One error type for every refusal the API makes, carrying its HTTP status and a stable code."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


def overloaded(retry_after_seconds: int = 1) -> ApiError:
    return ApiError(503, "overloaded", "the model is at capacity; retry shortly",
                    headers={"Retry-After": str(retry_after_seconds)})


def not_ready(reason: str) -> ApiError:
    return ApiError(503, "not_ready", f"the model is not ready: {reason}", headers={"Retry-After": "5"})
