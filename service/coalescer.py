"""Merging concurrent prediction calls in the API worker before they cross to the model service.

Every call to the model service is an HTTP round trip between processes (aiohttp, serialisation, the model
worker's own request handling) that costs about as much CPU as the model itself now spends on a text — on two
cores, paid once per request it caps throughput long before the model does. So the API worker sends what is
waiting as one call, keeping a small number of calls in flight: a lone request goes out at once (no added latency
on a quiet server), and under load each round trip carries every request that arrived while the last one was out.
The model service's adaptive batcher still forms the batches the model runs; this only cuts the trips.

Given a tracer, each request's trace shows the call that served it: a ``model.call`` span per request sharing the
call, linked to the first request's one (`service.serving_telemetry.shared_call_spans`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from opentelemetry import context as otel_context
from opentelemetry.trace import Tracer

from service.serving_telemetry import shared_call_spans
from telemetry import semconv

Item = TypeVar("Item")
Result = TypeVar("Result")


class Coalescer(Generic[Item, Result]):
    """Sends concurrent ``submit`` calls to ``call`` together; each caller gets back the results for its items."""

    def __init__(
        self,
        call: Callable[[list[Item]], Awaitable[Sequence[Result]]],
        max_items: int,
        max_in_flight: int = 2,
        tracer: Tracer | None = None,
    ) -> None:
        self._call = call
        self.max_items = max_items
        self.max_in_flight = max_in_flight
        self._tracer = tracer
        self._waiting: deque[tuple[list[Item], asyncio.Future[list[Result]]]] = deque()
        self._contexts: dict[asyncio.Future[list[Result]], otel_context.Context] = {}  # each request's span
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def submit(self, items: list[Item]) -> list[Result]:
        future: asyncio.Future[list[Result]] = asyncio.get_running_loop().create_future()
        if self._tracer is not None:
            self._contexts[future] = otel_context.get_current()
        self._waiting.append((items, future))
        self._dispatch()
        try:
            return await future
        finally:
            self._contexts.pop(future, None)

    def _dispatch(self) -> None:
        while self._waiting and self._in_flight < self.max_in_flight:
            group = [self._waiting.popleft()]
            size = len(group[0][0])
            # Whole requests only, and never more than one batch's worth unless a single request is larger.
            while self._waiting and size + len(self._waiting[0][0]) <= self.max_items:
                items, future = self._waiting.popleft()
                group.append((items, future))
                size += len(items)
            live = [(items, future) for items, future in group if not future.done()]  # cancelled callers left
            if not live:
                continue
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._send(live))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, group: list[tuple[list[Item], asyncio.Future[list[Result]]]]) -> None:
        try:
            merged = [item for items, _ in group for item in items]
            results = list(await self._traced_call(merged, group))
            if len(results) != len(merged):
                raise RuntimeError(f"the model answered {len(results)} results for {len(merged)} texts")
            start = 0
            for items, future in group:
                if not future.done():
                    future.set_result(results[start:start + len(items)])
                start += len(items)
        except asyncio.CancelledError:
            for _, future in group:
                future.cancel()
            raise
        except Exception as error:  # every caller of the group sees the call's failure as its own
            for _, future in group:
                if not future.done():
                    future.set_exception(error)
        finally:
            self._in_flight -= 1
            self._dispatch()

    async def _traced_call(self, merged: list[Item],
                           group: list[tuple[list[Item], asyncio.Future[list[Result]]]]) -> Sequence[Result]:
        parents = [self._contexts[future] for _, future in group if future in self._contexts]
        if self._tracer is None or not parents:
            return await self._call(merged)
        attributes = {semconv.COALESCED_REQUESTS: len(group), semconv.COALESCED_ITEMS: len(merged)}
        with shared_call_spans(self._tracer, parents, semconv.SPAN_MODEL_CALL, attributes):
            return await self._call(merged)
