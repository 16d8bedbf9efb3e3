"""`POST /feedback`: ground truth and ratings for served requests, checked against what the request was.

The API worker looks the request up in the inference log (a 404 when it never was), checks the label against
what that model can answer (a sentiment label, a value of the type a pyfunc model's rows answered, one per row of a
several-row request; none for a RAG answer, which takes a rating), stores it beside the prediction
(:mod:`telemetry.feedback`), then, off the caller's path, attaches it to the request's MLflow trace as an
assessment when the trace was kept. The database calls run in a thread: the event loop serves predictions.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import threading
import time
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from service.errors import ApiError
from telemetry import feedback as store
from telemetry.records import create_engine
from vigil.contracts import ErrorDetail, Feedback, FeedbackBatchReport, FeedbackRecorded, ModelIdentity
from vigil.sentiment_model import LABELS

logger = logging.getLogger(__name__)

# Seconds after the feedback at which its trace is looked for in MLflow: spans are exported in batches (every few
# seconds), and a trace tail sampling dropped never arrives.
RETRY_AFTER = (1.0, 3.0, 6.0, 12.0, 25.0, 45.0)
TRACE_ASSESSMENT_NAME = "label"
RATING_ASSESSMENT_NAME = "rating"


class UnknownRequest(ApiError):
    def __init__(self, request_id: str) -> None:
        super().__init__(404, "unknown_request", f"no served request has the id {request_id!r} in the inference log")


def refused_label(message: str) -> ApiError:
    return ApiError(422, "invalid_label", message)


def check_label(request: store.ServedRequest, item: Feedback) -> None:
    """Refuse a label the request's model could not have answered, or a feedback that carries nothing."""
    if item.label is None and item.score is None and item.comment is None:
        raise refused_label("send a `label`, a `score` or a `comment`")
    if item.label is None:
        return
    if request.kind == "rag":
        raise refused_label("a RAG answer takes a `score` (and a `comment`), not a `label`")
    labels = item.label if isinstance(item.label, list) else [item.label]
    if len(labels) != request.rows and (isinstance(item.label, list) or request.rows > 1):
        raise refused_label(f"the request had {request.rows} rows: send one label per row, in order "
                            f"({len(labels)} sent)")
    for index, (label, answer) in enumerate(zip(labels, request.answers, strict=False)):
        where = f"label {index}" if request.rows > 1 else "the label"
        if request.kind == "sentiment":
            if label not in LABELS:
                raise refused_label(f"{where} {label!r} is not one {request.model_name} answers: one of "
                                    f"{', '.join(LABELS)}")
        elif not _same_kind(label, _single_output(answer)):
            raise refused_label(f"{where} {label!r} is not a value {request.model_name} answers "
                                f"(it answered {_single_output(answer)!r})")


def _single_output(answer: Any) -> Any:
    # A model with one named output logs {name: value}; its label is the value.
    if isinstance(answer, dict) and len(answer) == 1:
        return next(iter(answer.values()))
    return answer


def _same_kind(label: Any, answer: Any) -> bool:
    def kind(value: Any) -> str:
        if isinstance(value, bool):
            return "bool"
        if isinstance(value, int | float):
            return "number" if math.isfinite(value) else "nan"
        return type(value).__name__

    return kind(label) == kind(answer) and kind(label) in {"bool", "number", "str"}


class LiveCounts:
    """Prometheus' view of live quality: each labelled row of a served request counted right or wrong against what
    its version answered (``vigil_feedback_total``), and the share right per version since this worker started
    (``vigil_live_accuracy``). `vigil monitor quality` is the full account, per window and with the shadow."""

    def __init__(self) -> None:
        from telemetry.metrics import get_metrics

        self.metrics = get_metrics()
        self._right: dict[tuple[str, str], list[int]] = {}  # (model, version) -> [right, labelled]

    def count(self, request: store.ServedRequest, item: Feedback) -> None:
        model, version = request.model_name, request.model_version
        if item.label is None:
            self.metrics.feedback.labels(model, version, "rating").inc()
            return
        labels = item.label if isinstance(item.label, list) else [item.label]
        for label, answer in zip(labels, request.answers, strict=False):
            answered = _single_output(answer)
            if isinstance(label, float) and not label.is_integer():
                self.metrics.feedback.labels(model, version, "value").inc()
                continue
            right = str(label) == str(answered)
            self.metrics.feedback.labels(model, version, "correct" if right else "wrong").inc()
            tally = self._right.setdefault((model, version), [0, 0])
            tally[0] += right
            tally[1] += 1
            self.metrics.live_accuracy.labels(model, version).set(tally[0] / tally[1])


class FeedbackDesk:
    """Takes feedback for the requests of one inference log (``url``); the engine is made on first use."""

    def __init__(self, url: str, tracking_uri: str | None, flush_seconds: float) -> None:
        self.url = url
        self.tracking_uri = tracking_uri
        # The log is written in batches off the request path: feedback sent right after its answer may arrive
        # before the row does. An id not found is looked up again until two flushes have passed.
        self.row_wait_seconds = 2 * flush_seconds + 0.5
        self._engine: sa.Engine | None = None
        self._engine_lock = threading.Lock()
        self.assessments = TraceAssessments(tracking_uri) if tracking_uri else None
        self.live = LiveCounts()

    def _connected(self) -> sa.Engine:
        with self._engine_lock:
            if self._engine is None:
                engine = create_engine(self.url)
                store.prepare(engine)
                self._engine = engine
            return self._engine

    async def submit(self, item: Feedback) -> FeedbackRecorded:
        """Record ``item``; ApiError 404 for an unknown request, 422 for a label its model could not answer."""
        request = await asyncio.to_thread(self._find, item.request_id)
        check_label(request, item)
        state, changed = await asyncio.to_thread(store.record_feedback, self._connected(), item.request_id,
                                                 label=item.label, score=item.score, comment=item.comment)
        if changed and request.trace_id and self.assessments is not None:
            self.assessments.submit(request.trace_id, item, request.served_at)
        if changed and state.revisions == 1:  # a request counts once, with its first feedback
            self.live.count(request, item)
        return FeedbackRecorded(request_id=item.request_id, status="recorded" if changed else "unchanged",
                                revisions=state.revisions,
                                model=ModelIdentity(name=request.model_name, version=request.model_version))

    async def submit_many(self, items: list[Feedback]) -> FeedbackBatchReport:
        """Each item on its own: an unknown id or a refused label is reported in its result, not raised."""
        results: list[FeedbackRecorded] = []
        for item in items:
            try:
                results.append(await self.submit(item))
            except ApiError as error:
                results.append(FeedbackRecorded(request_id=item.request_id, status="refused",
                                                error=ErrorDetail(code=error.code, message=error.message)))
        return FeedbackBatchReport(
            results=results,
            recorded=sum(r.status == "recorded" for r in results),
            unchanged=sum(r.status == "unchanged" for r in results),
            refused=sum(r.status == "refused" for r in results),
        )

    def _find(self, request_id: str) -> store.ServedRequest:
        engine = self._connected()
        deadline = time.monotonic() + self.row_wait_seconds
        while True:
            found = store.find_request(engine, request_id)
            if found is not None:
                return found
            if time.monotonic() >= deadline:
                raise UnknownRequest(request_id)
            time.sleep(0.1)

    async def close(self) -> None:
        if self.assessments is not None:
            await asyncio.to_thread(self.assessments.close)
        if self._engine is not None:
            self._engine.dispose()


class TraceAssessments:
    """Attaches feedback to the request's MLflow trace, from one background thread, never on the caller's path.

    A kept trace reaches MLflow a few seconds after its request (spans are exported in batches), and a trace tail
    sampling dropped never does; so feedback on a recent request is tried at :data:`RETRY_AFTER` seconds after the
    request was served until its trace is there, then given up (counted as not traced: the inference log has the
    feedback either way). Feedback on an older request, whose trace is in MLflow or never will be, is tried once.
    """

    def __init__(self, tracking_uri: str, queue_size: int = 10_000) -> None:
        self.tracking_uri = tracking_uri
        self.attached = 0
        self.not_traced = 0
        self.dropped = 0
        self._queue_size = queue_size
        # (due, order, trace id, feedback, attempt, last attempt): attempts index RETRY_AFTER
        self._due: list[tuple[float, int, str, Feedback, int, int]] = []
        self._order = 0
        self._condition = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="vigil-feedback-assessments", daemon=True)
        self._thread.start()

    def submit(self, trace_id: str, item: Feedback, served_at: datetime) -> None:
        """Attach ``item`` to ``trace_id``'s trace; looked for again only while its export may still be on the way."""
        age = (datetime.now(UTC) - served_at).total_seconds()
        first = 0 if age > RETRY_AFTER[-1] else next(i for i, after in enumerate(RETRY_AFTER) if after >= age)
        last = first if age > RETRY_AFTER[-1] else len(RETRY_AFTER) - 1
        self._schedule(time.monotonic() + max(RETRY_AFTER[first] - age, 0.0), trace_id, item, first, last)

    def _schedule(self, due: float, trace_id: str, item: Feedback, attempt: int, last: int) -> None:
        with self._condition:
            if self._closed or len(self._due) >= self._queue_size:
                self.dropped += 1
                return
            self._order += 1
            heapq.heappush(self._due, (due, self._order, trace_id, item, attempt, last))
            self._condition.notify()

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._closed and (not self._due or self._due[0][0] > time.monotonic()):
                    self._condition.wait(timeout=self._due[0][0] - time.monotonic() if self._due else None)
                if self._closed:
                    return
                _, _, trace_id, item, attempt, last = heapq.heappop(self._due)
            if self._attach(trace_id, item):
                self.attached += 1
            elif attempt < last:
                self._schedule(time.monotonic() + RETRY_AFTER[attempt + 1] - RETRY_AFTER[attempt], trace_id, item,
                               attempt + 1, last)
            else:
                self.not_traced += 1

    def _attach(self, trace_id: str, item: Feedback) -> bool:
        from mlflow.entities import AssessmentSource, AssessmentSourceType
        from mlflow.entities import Feedback as Assessment
        from mlflow.tracing.client import TracingClient

        source = AssessmentSource(source_type=AssessmentSourceType.HUMAN, source_id="vigil-feedback")
        mlflow_id = f"tr-{trace_id}"
        try:
            client = TracingClient(self.tracking_uri)
            client.get_trace_info(mlflow_id)  # not there (yet): tried again later
            if item.label is not None:
                client.log_assessment(mlflow_id, Assessment(name=TRACE_ASSESSMENT_NAME, value=item.label,
                                                            source=source))
            if item.score is not None:
                client.log_assessment(mlflow_id, Assessment(name=RATING_ASSESSMENT_NAME, value=item.score,
                                                            source=source, rationale=item.comment))
        except Exception as error:  # the trace was not kept (yet), or MLflow is away
            logger.debug("feedback not attached to trace %s: %s", mlflow_id, error)
            return False
        return True

    def close(self) -> None:
        """Stop; what is still waiting for its trace is left to the inference log."""
        with self._condition:
            self._closed = True
            self._condition.notify()
        self._thread.join(timeout=5)
