"""A dropped pooled connection to a dependency service costs one retry, not a failed request."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from service.http import retry_once_on_dropped_connection


class Flaky:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise aiohttp.ServerDisconnectedError()
        return "answer"


def test_one_dropped_connection_is_retried() -> None:
    call = Flaky(failures=1)
    assert asyncio.run(retry_once_on_dropped_connection(call)) == "answer"
    assert call.calls == 2


def test_a_service_that_keeps_dropping_fails_after_one_retry() -> None:
    call = Flaky(failures=5)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        asyncio.run(retry_once_on_dropped_connection(call))
    assert call.calls == 2


def test_other_errors_are_not_retried() -> None:
    calls = 0

    async def refuses() -> str:
        nonlocal calls
        calls += 1
        raise ValueError("bad input")

    with pytest.raises(ValueError):
        asyncio.run(retry_once_on_dropped_connection(refuses))
    assert calls == 1
