"""Driving a running `vigil serve` in the integration tests: a server of a test's own, and a load generator.

The load generator keeps ``clients`` concurrent callers busy (aiohttp, each sending its next request as soon as its
last one is answered) and judges every answer: a 200 must have a right body, name its request id in the body and
in ``x-request-id`` alike; a 503 counts as a refusal only where the run allows it; anything else is a failure.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
import pytest
from pydantic import ValidationError

from service.errors import OipErrorResponse
from service.oip.rest import InferResponse
from tests.integration.conftest import Server, start_server
from vigil.contracts import ErrorResponse, PredictResponse

# No request may take longer: a queue that never drains fails the test instead of hanging it.
REQUEST_TIMEOUT_SECONDS = 60

# Obvious reviews, so that each one's label is stable across batches and versions.
SENTENCES = (
    "I love this phone, it works great and the battery lasts forever.",
    "Terrible quality, it broke after one day. Waste of money.",
    "Absolutely wonderful film, the cast is brilliant.",
    "The worst customer service I have ever had, never again.",
    "Great value, fast delivery and it does exactly what it says.",
    "It stopped working after a week and the refund was refused.",
    "A delightful little cafe with friendly staff and lovely coffee.",
    "Boring, far too long and the ending made no sense at all.",
)
LABELS = {"positive", "negative"}
REQUEST_ID_HEADER = "x-request-id"

# A service under test load traces as production would be told to, with a cap: uncapped, the load tests sent
# ~15 000 traces into the session's MLflow and LangSmith stand-in, and the tests after them waited on that backlog.
LOADED_TRACES_PER_SECOND = 20


@contextmanager
def own_server(live_server: Server, tmp_path_factory: pytest.TempPathFactory, name: str,
               **settings: str) -> Iterator[Server]:
    """The session's service again, in a home of its own, traces capped, with ``settings`` over its environment."""
    home = tmp_path_factory.mktemp(name)
    env = {**live_server.env, "VIGIL_HOME": str(home), "VIGIL_TRACE_MAX_PER_SECOND": str(LOADED_TRACES_PER_SECOND),
           **settings}
    running = start_server(env, home / "serve.log")
    try:
        yield running
    finally:
        running.stop()


def metric(server: Server, sample: str, **labels: str) -> float:
    """The sum of the service's ``/metrics`` samples named ``sample`` whose labels include ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    families = text_string_to_metric_families(httpx.get(f"{server.http}/metrics", timeout=10).text)
    return sum(s.value for family in families for s in family.samples
               if s.name == sample and labels.items() <= s.labels.items())


# --- routes ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answered:
    """What a 200 answer says."""

    version: str
    label: str
    request_id: str | None = None  # the body's own, where the route's body carries one


@dataclass(frozen=True)
class Route:
    """A prediction route: the n-th request's body, and what a 200 answer to it says."""

    path: str
    body: Callable[[int], dict[str, Any]]
    answer: Callable[[int, bytes], Answered]
    refusal: Callable[[bytes], str]  # the reason a refusal's body gives


def sentence(n: int) -> str:
    return SENTENCES[n % len(SENTENCES)]


def predict_route(model: str) -> Route:
    def answer(n: int, body: bytes) -> Answered:
        parsed = PredictResponse.model_validate_json(body)
        if parsed.model.name != model or len(parsed.predictions) != 1:
            raise ValueError(f"not one prediction of {model}")
        return Answered(parsed.model.version, parsed.predictions[0].label, parsed.request_id)

    return Route("/predict", lambda n: {"text": sentence(n)}, answer,
                 lambda body: ErrorResponse.model_validate_json(body).error.code)


def infer_route(model: str) -> Route:
    def body(n: int) -> dict[str, Any]:
        return {"id": f"load-{n}", "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                               "data": [sentence(n)]}]}

    def answer(n: int, raw: bytes) -> Answered:
        parsed = InferResponse.model_validate_json(raw)
        outputs = {output.name: output.data for output in parsed.outputs}
        # The id ties the answer to its own request: a mix-up between concurrent requests would show here.
        if parsed.model_name != model or parsed.id != f"load-{n}" or len(outputs.get("score", [])) != 1:
            raise ValueError(f"not the answer of {model} to request load-{n}")
        (label,) = outputs["label"]
        return Answered(parsed.model_version, label)

    return Route(f"/v2/models/{model}/infer", body, answer,
                 lambda raw: OipErrorResponse.model_validate_json(raw).error)


# --- the load generator ----------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What a load run got back. Appended to by the run's event loop; read by the test's thread as it goes."""

    answered: int = 0  # 200s with a right body
    versions: list[str] = field(default_factory=list)  # of each 200, in the order they arrived
    request_ids: list[str] = field(default_factory=list)  # of each 200 (its x-request-id), in the same order
    answered_at: list[float] = field(default_factory=list)  # time.monotonic() each 200 arrived, in the same order
    latencies_ms: list[float] = field(default_factory=list)  # of each 200, from sending to the whole body read
    refused: Counter[str] = field(default_factory=Counter)  # 503s where allowed, by reason
    unanswered: Counter[str] = field(default_factory=Counter)  # no answer where allowed, by exception type
    failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        unanswered = f", {sum(self.unanswered.values())} unanswered {dict(self.unanswered)}" if self.unanswered else ""
        return (f"{self.answered} requests answered, {sum(self.refused.values())} refused with 503 "
                f"{dict(self.refused)}{unanswered}, {len(self.failures)} failed; first failures: {self.failures[:5]}")

    def latencies(self) -> str:
        """Median, 99th percentile and maximum of the answered requests' latencies."""
        if not self.latencies_ms:
            return "no answers"
        ordered = sorted(self.latencies_ms)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return f"p50 {statistics.median(ordered):.0f} ms, p99 {p99:.0f} ms, max {ordered[-1]:.0f} ms"


def load(tally: Tally, base_url: str, routes: Sequence[Route], clients: int, keep_going: Callable[[int], bool],
         *, expected_labels: dict[str, str] | None = None, may_refuse: Callable[[], bool] | bool = False,
         may_go_unanswered: Callable[[], bool] | None = None) -> None:
    """``clients`` concurrent callers, each sending its next request as soon as its last one is answered, for as
    long as ``keep_going(n)`` allows the n-th request of the run; routes take turns. Blocks until all are done.

    ``may_refuse``: a 503 with ``Retry-After`` to a request sent while it is (or returns) True is a refusal, counted
    in ``refused``, not a failure. ``may_go_unanswered``: a request sent while it returns True that gets no answer
    (connection refused or dropped) is counted in ``unanswered``, not as a failure; a timeout always is one.
    """
    refuse = may_refuse if callable(may_refuse) else (lambda: may_refuse)
    asyncio.run(_load(tally, base_url, routes, clients, keep_going, expected_labels, refuse,
                      may_go_unanswered or (lambda: False)))


async def _load(tally: Tally, base_url: str, routes: Sequence[Route], clients: int,
                keep_going: Callable[[int], bool], expected_labels: dict[str, str] | None,
                may_refuse: Callable[[], bool], may_go_unanswered: Callable[[], bool]) -> None:
    numbers = itertools.count()

    def judge(route: Route, n: int, response: aiohttp.ClientResponse, body: bytes, latency_ms: float,
              refusal_allowed: bool) -> str | None:
        """None for a right answer; else what was wrong with it."""
        status, retry_after = response.status, response.headers.get("Retry-After")
        try:
            if status == 200:
                answered = route.answer(n, body)
                wanted = expected_labels[sentence(n)] if expected_labels else None
                if answered.label not in LABELS or (wanted and answered.label != wanted):
                    return f"label {answered.label!r} for {sentence(n)!r}, expected {wanted or LABELS}"
                request_id = response.headers.get(REQUEST_ID_HEADER, "")
                if not request_id or answered.request_id not in (None, request_id):
                    return f"request id {answered.request_id!r} in the body, {request_id!r} in {REQUEST_ID_HEADER}"
                tally.answered += 1
                tally.versions.append(answered.version)
                tally.request_ids.append(request_id)
                tally.answered_at.append(time.monotonic())
                tally.latencies_ms.append(latency_ms)
                return None
            if status == 503 and retry_after and refusal_allowed:
                tally.refused[route.refusal(body)] += 1
                return None
        except (ValidationError, ValueError) as wrong:
            return f"{wrong}: {body[:300]!r}"
        return f"{status} (Retry-After {retry_after!r}): {body[:300]!r}"

    async def client(session: aiohttp.ClientSession) -> None:
        while keep_going(n := next(numbers)):
            route = routes[n % len(routes)]
            refusal_allowed, unanswered_allowed = may_refuse(), may_go_unanswered()
            started = time.perf_counter()
            try:
                async with session.post(route.path, json=route.body(n)) as response:
                    body = await response.read()
                    problem = judge(route, n, response, body, (time.perf_counter() - started) * 1000,
                                    refusal_allowed)
            except (aiohttp.ClientConnectionError, TimeoutError) as error:
                if unanswered_allowed and not isinstance(error, TimeoutError):
                    tally.unanswered[type(error).__name__] += 1
                    await asyncio.sleep(0.05)  # a closed port answers at once: no busy loop against it
                    continue
                problem = f"no answer: {error!r}"
            except aiohttp.ClientError as error:
                problem = f"no answer: {error!r}"
            if problem:
                tally.failures.append(f"POST {route.path} #{n}: {problem}")

    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
    async with aiohttp.ClientSession(base_url, connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))


def for_seconds(seconds: float) -> Callable[[int], bool]:
    deadline = time.monotonic() + seconds
    return lambda _: time.monotonic() < deadline


@contextmanager
def background_load(base_url: str, routes: Sequence[Route], clients: int, **options: Any) -> Iterator[Tally]:
    """:func:`load` on a thread of its own until the ``with`` block ends; the tally fills as answers arrive."""
    tally = Tally()
    stop = threading.Event()
    thread = threading.Thread(target=load, args=(tally, base_url, routes, clients, lambda _: not stop.is_set()),
                              kwargs=options, name="load", daemon=True)
    thread.start()
    try:
        yield tally
    finally:
        stop.set()
        thread.join(timeout=REQUEST_TIMEOUT_SECONDS + 30)
        if thread.is_alive():
            tally.failures.append("the load clients did not stop")
