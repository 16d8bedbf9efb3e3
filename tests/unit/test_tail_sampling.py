"""Tail-based sampling: which traces reach the exporters, whole, and how every decision is counted; no servers."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode, format_trace_id
from prometheus_client import REGISTRY

from service.coalescer import Coalescer
from service.errors import ApiError
from service.serving_telemetry import mark_failure, relay_keep_notices, shared_call_spans
from telemetry import propagation, semconv
from telemetry.sampling import TailSampler, TailSamplingProcessor, count_trace

MS = 1_000_000  # nanoseconds


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Process:
    """One process's provider: Vigil's sampler and tail processor over an in-memory exporter, on a fake clock."""

    def __init__(self, clock: FakeClock | None = None, *, slow_ms: float = 1000, per_second: float = 0,
                 ratio: float = 1.0, caller_per_second: float = 0, keep_all: bool = False,
                 trust_remote_parents: bool = False, max_spans: int = 1000) -> None:
        self.clock = clock or FakeClock()
        self.exporter = InMemorySpanExporter()
        self.counted: Counter[tuple[str, str]] = Counter()
        self.tail = TailSamplingProcessor(
            [SimpleSpanProcessor(self.exporter)], slow_ms=slow_ms, defer_to_caller=trust_remote_parents,
            max_spans=max_spans, clock=self.clock, count=lambda decision, reason: self.counted.update([(decision,
                                                                                                         reason)]))
        self.provider = TracerProvider(sampler=TailSampler(
            ratio=ratio, per_second=per_second, caller_per_second=caller_per_second, keep_all=keep_all,
            trust_remote_parents=trust_remote_parents, clock=self.clock))
        self.provider.add_span_processor(self.tail)
        self.tracer = self.provider.get_tracer("test")

    def request(self, *, children: int = 2, error: bool = False, status: int | None = None,
                duration_ms: float = 5, traceparent: str = "") -> str:
        """A server span with ``children`` spans under it; returns its trace id."""
        context = propagation.extract_context({"traceparent": traceparent}) if traceparent else None
        root = self.tracer.start_span("server", context=context, start_time=0)
        with trace.use_span(root, end_on_exit=False):
            for index in range(children):
                with self.tracer.start_as_current_span(f"child-{index}") as child:
                    if error and index == children - 1:
                        child.set_status(Status(StatusCode.ERROR, "model failed"))
        if status is not None:
            root.set_attribute(semconv.HTTP_STATUS_CODE, status)
        root.end(end_time=int(duration_ms * MS))
        return format_trace_id(root.get_span_context().trace_id)

    def exported(self) -> dict[str, list[ReadableSpan]]:
        by_trace: dict[str, list[ReadableSpan]] = {}
        for span in self.exporter.get_finished_spans():
            by_trace.setdefault(format_trace_id(span.context.trace_id), []).append(span)  # type: ignore[union-attr]
        return by_trace


def test_failed_requests_are_kept_whole_whatever_the_budget() -> None:
    process = Process(ratio=0)  # no uniform sample at all
    failed = process.request(error=True)
    server_error = process.request(status=503)
    refused = process.request(status=422)  # the caller's mistake is not a failure
    ordinary = process.request()
    exported = process.exported()
    assert set(exported) == {failed, server_error}
    assert sorted(span.name for span in exported[failed]) == ["child-0", "child-1", "server"]
    assert refused not in exported and ordinary not in exported
    assert process.counted == {("kept", "error"): 2, ("dropped", "unsampled"): 2}
    assert process.tail.held_spans == 0


def test_slow_requests_are_kept_whole() -> None:
    process = Process(ratio=0, slow_ms=250)
    slow = process.request(duration_ms=250)
    quick = process.request(duration_ms=249)
    assert set(process.exported()) == {slow} and quick not in process.exported()
    assert len(process.exported()[slow]) == 3
    assert process.counted == {("kept", "slow"): 1, ("dropped", "unsampled"): 1}


def test_spans_wait_for_their_root_and_go_out_together() -> None:
    process = Process(ratio=0)
    root = process.tracer.start_span("server")
    with trace.use_span(root, end_on_exit=False):
        with process.tracer.start_as_current_span("child") as child:
            child.set_status(Status(StatusCode.ERROR))
        assert process.exporter.get_finished_spans() == ()  # held: the request is not over
        assert process.tail.held_spans == 1
    root.end()
    assert [span.name for span in process.exporter.get_finished_spans()] == ["child", "server"]
    # What the exporters get is flagged sampled, as batch processors require.
    assert all(span.context.trace_flags.sampled for span in process.exporter.get_finished_spans())  # type: ignore[union-attr]


def test_the_uniform_sample_stays_within_its_budget_a_second() -> None:
    process = Process(per_second=2)
    first = [process.request() for _ in range(10)]
    assert set(process.exported()) == set(first[:2])  # the burst is one second's worth
    process.clock.now += 0.5
    second = [process.request() for _ in range(10)]
    assert set(process.exported()) == {*first[:2], second[0]}
    process.clock.now += 10  # idle time banks no more than a second
    third = [process.request() for _ in range(10)]
    assert len(set(process.exported()) & set(third)) == 2
    assert process.counted == {("kept", "sample"): 5, ("dropped", "budget"): 25}
    # Kept at their start: nothing of them was held.
    assert all(span.attributes[semconv.SAMPLING_HEAD] == "sample"  # type: ignore[index]
               for spans in process.exported().values() for span in spans if span.name == "server")


def test_a_failure_outside_the_sample_is_still_kept_and_counted_as_a_failure() -> None:
    process = Process(per_second=1)
    sampled, failed = process.request(), process.request(error=True)
    assert set(process.exported()) == {sampled, failed}
    assert process.counted == {("kept", "sample"): 1, ("kept", "error"): 1}


def test_callers_sampled_traces_are_kept_within_their_own_budget() -> None:
    process = Process(per_second=1, caller_per_second=2)
    callers = [process.request(traceparent=f"00-{n:032x}-00f067aa0ba902b7-01") for n in range(1, 5)]
    assert callers == [f"{n:032x}" for n in range(1, 5)]  # the caller's trace, recorded or not
    unsampled = process.request(traceparent=f"00-{9:032x}-00f067aa0ba902b7-00")
    failed_unsampled = process.request(traceparent=f"00-{10:032x}-00f067aa0ba902b7-00", error=True)
    new = process.request()  # the callers spent their own budget only
    assert set(process.exported()) == {*callers[:2], failed_unsampled, new}
    assert unsampled not in process.exported()
    assert process.counted == {("kept", "caller"): 2, ("dropped", "caller_budget"): 2,
                               ("dropped", "unsampled"): 1, ("kept", "error"): 1, ("kept", "sample"): 1}


def test_trace_all_keeps_every_trace() -> None:
    process = Process(ratio=0, per_second=1, keep_all=True)
    ids = [process.request() for _ in range(5)]
    ids.append(process.request(traceparent=f"00-{7:032x}-00f067aa0ba902b7-00"))
    assert set(process.exported()) == set(ids)
    assert process.counted == {("kept", "all"): 6}
    assert process.tail.held_spans == 0


def test_the_buffer_is_bounded_and_overflow_is_counted() -> None:
    process = Process(ratio=0, max_spans=5)
    roots = [process.tracer.start_span("server") for _ in range(4)]
    for root in roots:
        with trace.use_span(root, end_on_exit=False):
            for _ in range(2):
                with process.tracer.start_as_current_span("child"):
                    pass
        assert process.tail.held_spans <= 5
    assert process.counted == {("dropped", "overflow"): 2}
    # The evicted traces stay dropped, even when they fail: their first spans are gone.
    roots[0].set_status(Status(StatusCode.ERROR))
    for root in roots:
        root.end()
    assert format_trace_id(roots[0].get_span_context().trace_id) not in process.exported()
    assert process.tail.held_spans == 0


def test_a_root_that_never_ends_is_let_go() -> None:
    process = Process(ratio=0)
    root = process.tracer.start_span("server")
    with trace.use_span(root, end_on_exit=False), process.tracer.start_as_current_span("child"):
        pass
    process.clock.now += 301
    process.request()  # any span ending sweeps what is too old
    assert process.tail.held_spans == 0
    assert process.counted[("dropped", "overflow")] == 1


@contextmanager
def two_processes(**api: float) -> Iterator[tuple[Process, Process]]:
    """An API worker and a service behind it (the RAG service), sharing a clock."""
    clock = FakeClock()
    yield Process(clock, **api), Process(clock, trust_remote_parents=True)


def call_service(api: Process, rag: Process, *, api_error: bool = False, rag_error: bool = False,
                 rag_duration_ms: float = 5) -> str:
    """A request through the API worker that calls the service, the traceparent crossing as BentoML sends it."""
    root = api.tracer.start_span("server", start_time=0)
    with trace.use_span(root, end_on_exit=False), api.tracer.start_as_current_span(semconv.SPAN_RAG_REQUEST) as call:
        call.set_attribute(semconv.DOWNSTREAM_SERVICE, "vigil-rag")
        carrier = propagation.inject_traceparent({})
        served = rag.tracer.start_span("rag server", context=propagation.extract_context(carrier), start_time=0)
        with trace.use_span(served, end_on_exit=False), rag.tracer.start_as_current_span("rag.query") as query:
            if rag_error:
                query.set_status(Status(StatusCode.ERROR))
        served.end(end_time=int(rag_duration_ms * MS))
        if rag_error or api_error:
            call.set_status(Status(StatusCode.ERROR))
    root.end(end_time=int(10 * MS))
    return format_trace_id(root.get_span_context().trace_id)


def test_the_api_workers_decision_to_keep_reaches_the_service_behind_it() -> None:
    with two_processes(ratio=0) as (api, rag):
        kept = call_service(api, rag, api_error=True)  # the failure is the API worker's, after the service answered
        dropped = call_service(api, rag)
        assert set(api.exported()) == {kept}
        assert rag.exported() == {}  # the service holds its part, waiting
        notices = api.tail.drain_notices()
        assert notices == {"vigil-rag": [kept]}
        assert rag.tail.keep(notices["vigil-rag"]) == 1
        assert set(rag.exported()) == {kept}
        assert sorted(span.name for span in rag.exported()[kept]) == ["rag server", "rag.query"]
        # Undecided traces go once the wait is over; the service counts nothing (the API worker did).
        rag.clock.now += 11
        call_service(api, rag, rag_error=True)
        assert dropped not in rag.exported() and rag.tail.held_spans == 0
        assert rag.counted == {}
        assert api.counted == {("kept", "error"): 2, ("dropped", "unsampled"): 1}


def test_a_failure_in_the_service_is_kept_there_without_waiting() -> None:
    with two_processes(ratio=0) as (api, rag):
        failed = call_service(api, rag, rag_error=True)
        assert set(rag.exported()) == {failed}
        assert set(api.exported()) == {failed}
        rag.tail.keep(api.tail.drain_notices()["vigil-rag"])  # the notice for a trace kept already changes nothing
        assert len(rag.exported()[failed]) == 2


def test_a_trace_kept_at_its_start_is_kept_by_the_service_at_once() -> None:
    with two_processes(per_second=5) as (api, rag):
        sampled = call_service(api, rag)
        assert set(api.exported()) == set(rag.exported()) == {sampled}
        assert api.tail.drain_notices() == {}


def test_a_refusal_is_not_a_failure() -> None:
    process = Process(ratio=0)
    with process.tracer.start_as_current_span("server") as span:
        mark_failure(span, ApiError(422, "invalid_request", "bad"))
    with process.tracer.start_as_current_span("server") as span:
        mark_failure(span, ApiError(503, "overloaded", "busy"))
    assert [span.status.status_code for spans in process.exported().values() for span in spans] == [StatusCode.ERROR]


def test_a_coalesced_model_call_appears_in_each_requests_trace_linked_to_the_others() -> None:
    process = Process(keep_all=True)

    async def model(texts: list[str]) -> list[str]:
        await asyncio.sleep(0.01)
        return [text.upper() for text in texts]

    async def requests() -> list[str]:
        coalescer: Coalescer[str, str] = Coalescer(model, max_items=64, max_in_flight=1, tracer=process.tracer)

        async def one(text: str) -> str:
            with process.tracer.start_as_current_span("sentiment.predict"):
                return (await coalescer.submit([text]))[0]

        return list(await asyncio.gather(one("a"), one("b"), one("c")))

    assert asyncio.run(requests()) == ["A", "B", "C"]
    calls = [span for span in process.exporter.get_finished_spans() if span.name == semconv.SPAN_MODEL_CALL]
    predicts = {span.context.span_id: span for span in process.exporter.get_finished_spans()  # type: ignore[union-attr]
                if span.name == "sentiment.predict"}
    # "a" went out alone; "b" and "c" waited and shared the next call.
    assert sorted(span.attributes[semconv.COALESCED_REQUESTS] for span in calls) == [1, 2, 2]  # type: ignore[index]
    for call in calls:
        assert call.parent is not None and call.parent.span_id in predicts  # in its own request's trace
        assert predicts[call.parent.span_id].context.trace_id == call.context.trace_id  # type: ignore[union-attr]
    shared = [call for call in calls if call.attributes[semconv.COALESCED_REQUESTS] == 2]  # type: ignore[index]
    assert [link.context.span_id for link in shared[0].links] == [shared[1].context.span_id]  # type: ignore[union-attr]
    assert [link.context.span_id for link in shared[1].links] == [shared[0].context.span_id]  # type: ignore[union-attr]


def test_a_call_shared_by_many_requests_links_the_first_requests_span_to_each_other_and_back() -> None:
    # A star, not every span to every other: 2(n-1) links for n requests, any two joined through the first.
    process = Process(keep_all=True)
    predicts = [process.tracer.start_span("sentiment.predict") for _ in range(4)]
    parents = [trace.set_span_in_context(span) for span in predicts]
    with shared_call_spans(process.tracer, parents, semconv.SPAN_MODEL_CALL, {semconv.COALESCED_REQUESTS: 4}):
        current = trace.get_current_span()
    for span in predicts:
        span.end()
    calls = {span.parent.span_id: span for span in process.exporter.get_finished_spans()  # type: ignore[union-attr]
             if span.name == semconv.SPAN_MODEL_CALL}
    first, *others = [calls[span.get_span_context().span_id] for span in predicts]
    assert current.get_span_context() == first.context  # the call carries the first request's traceparent
    assert [link.context.span_id for link in first.links] == [o.context.span_id for o in others]
    for other in others:
        assert [link.context.span_id for link in other.links] == [first.context.span_id]
    assert {span.context.trace_id for span in calls.values()} == {
        span.get_span_context().trace_id for span in predicts}  # each in its own request's trace


def test_the_api_worker_relays_its_decisions_to_the_services_that_hold_spans() -> None:
    notices = [{"vigil-rag": ["a" * 32], "unknown": ["b" * 32]}, {"vigil-rag": ["c" * 32]}, {"vigil-rag": ["d" * 32]}]
    told: list[list[str]] = []

    async def keep(trace_ids: list[str]) -> int:
        told.append(trace_ids)
        if len(told) > 1:
            raise ConnectionError("the RAG service is restarting")
        return 1

    def drain() -> dict[str, list[str]]:
        return notices.pop(0) if notices else {}

    async def relay() -> None:
        task = asyncio.get_running_loop().create_task(relay_keep_notices({"vigil-rag": keep}, drain))
        while notices:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        task.cancel()

    asyncio.run(relay())  # a failed notice never ends the relay
    assert told == [["a" * 32], ["c" * 32], ["d" * 32]]


def test_each_decision_is_counted_in_prometheus_every_time_it_is_made() -> None:
    # count_trace keeps each (decision, reason) child after its first use; every later call must still count.
    def counted() -> float:
        return REGISTRY.get_sample_value("vigil_traces_total", {"decision": "dropped", "reason": "budget"}) or 0.0

    before = counted()
    for _ in range(3):
        count_trace("dropped", "budget")
    assert counted() - before == 3.0
