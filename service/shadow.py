"""Shadow scoring: a share of requests scored again by the version under the shadow alias, off the request path.

Two halves, one per process, for Vigil's sentiment model and every pyfunc model alike:

- In the API worker, :class:`ShadowQueue`: after a request is answered, :meth:`ShadowQueue.offer` puts its inputs on a
  bounded queue when its request id falls in the model's shadow share (:func:`sampled`: a hash of the id, so a replay
  of the same traffic shadows the same requests). It never waits: a full queue drops the job and counts it. One
  asyncio task drains the queue in batches, one call at a time, to the model service's ``shadow`` endpoint, and
  writes what came back to the inference log as shadow rows (the same request id and trace id, the shadow alias as
  their role). A failing call is counted and logged, never raised: the caller had its answer already.
- In the model service, :class:`ShadowScorer`: a worker process at **the lowest CPU priority** (:func:`run_worker`,
  started only when the share is above 0) holds a second :class:`~service.model_store.ModelHolder` that follows the
  shadow alias and scores the batches, one at a time, with one ONNX Runtime / torch thread. Shadow work thus takes
  only the CPU that serving leaves idle; when serving takes it all, the worker barely runs, the API worker's queue
  fills, and jobs are dropped and counted rather than slowing what is served. A process rather than a thread of the
  model service: a low-priority thread shares the service's GIL, and holds it while the scheduler keeps it off the
  core. Nothing is scored when the alias names no version, or the version that is served (/status says which).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import pickle
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from telemetry.records import InferenceRecord
from vigil.priority import run_at_lowest_priority, runs_idle
from vigil.settings import Settings

if TYPE_CHECKING:
    from service.model_store import LoadedModel, ModelHolder
    from telemetry.inference_log import InferenceLogWriter
    from telemetry.metrics import VigilMetrics

logger = logging.getLogger(__name__)

Outcome = Literal["scored", "dropped", "failed", "skipped"]
OUTCOMES: tuple[Outcome, ...] = ("scored", "dropped", "failed", "skipped")
# How long the drain task lets jobs gather before a call that would not fill a batch: one call per request at low
# load would cost the API worker (and the model service) a call's overhead per request, next to the served ones.
LINGER_SECONDS = 0.2


def sampled(request_id: str, percent: float) -> bool:
    """Whether ``request_id`` falls in a ``percent`` share (0–100); the same id always gets the same answer."""
    if percent <= 0:
        return False
    if percent >= 100:
        return True
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 10_000 < round(percent * 100)


class ShadowBatch(BaseModel):
    """The model service's answer to a shadow batch: the shadow version's outputs, one per item, or why none."""

    version: str = ""
    outputs: list[Any] = []
    skipped: str = ""  # why nothing was scored (no shadow version, the served one); empty when scored
    seconds: float = 0.0  # scoring time on the shadow thread


# --- API worker ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShadowJob:
    """One served request to score again: its ids, where it came in, and its inputs (texts or rows)."""

    request_id: str
    trace_id: str
    endpoint: str
    protocol: str
    inputs: list[Any]


# (the job, the shadow version, its outputs for the job's inputs, scoring milliseconds) -> the job's log rows
RowMaker = Callable[[ShadowJob, str, list[Any], float], list[InferenceRecord]]


class ShadowQueue:
    """The API worker's side of one model's shadow: a bounded queue of jobs and the task that drains it.

    :meth:`offer` runs on the request path and only appends to a deque (or counts a drop); everything else runs in
    :meth:`run`, one model-service call at a time, so at most one shadow batch per model is ever being scored.
    """

    def __init__(self, model: str, alias: str, percent: float, queue_size: int, max_items: int,
                 score: Callable[[list[Any]], Awaitable[ShadowBatch]], rows: RowMaker,
                 log: InferenceLogWriter | None, metrics: VigilMetrics | None = None,
                 linger_seconds: float = LINGER_SECONDS) -> None:
        self.model = model
        self.linger_seconds = linger_seconds
        self.alias = alias
        self.percent = percent
        self.queue_size = queue_size
        self.max_items = max(1, max_items)
        self._score = score
        self._rows = rows
        self._log = log
        self._metrics = metrics
        self._jobs: deque[ShadowJob] = deque()
        self._wake: asyncio.Event | None = None
        self.counts: dict[Outcome, int] = dict.fromkeys(OUTCOMES, 0)
        self.version = ""  # the shadow version that scored last
        self.reason = "nothing sampled yet"  # why the last batch was not scored; empty when it was
        self._warned = False

    @classmethod
    def of_model(cls, model: str, settings: Settings, score: Callable[[list[Any]], Awaitable[ShadowBatch]],
                 rows: RowMaker, log: InferenceLogWriter | None, metrics: VigilMetrics | None
                 ) -> ShadowQueue | None:
        """``model``'s queue as its settings say (VIGIL_SHADOW_*, its VIGIL_MODELS_FILE table); None when its share
        is 0."""
        limits = settings.limits_of(model)
        if limits.shadow_percent <= 0:
            return None
        return cls(model, settings.shadow_alias, limits.shadow_percent, settings.shadow_queue_size,
                   limits.batch_max_size, score, rows, log, metrics)

    def offer(self, job: ShadowJob) -> bool:
        """Queue ``job`` when its request is in the share; never waits. False when it was not queued."""
        if not sampled(job.request_id, self.percent):
            return False
        if len(self._jobs) >= self.queue_size:
            self._count("dropped")
            return False
        self._jobs.append(job)
        if self._wake is not None:
            self._wake.set()
        return True

    @property
    def depth(self) -> int:
        return len(self._jobs)

    def describe(self) -> dict[str, Any]:
        """What /status shows of this model's shadow (beside the model service's own account of its version)."""
        return {"alias": self.alias, "percent": self.percent, "queue_depth": self.depth,
                "queue_size": self.queue_size, "counts": dict(self.counts), "last_version": self.version or None,
                "last_reason": self.reason or None}

    async def run(self) -> None:
        """Forever: drain the queue in batches of up to ``max_items`` inputs, one call to the model service at a
        time."""
        self._wake = asyncio.Event()
        while True:
            if not self._jobs:
                self._wake.clear()
                await self._wake.wait()
            if sum(len(job.inputs) for job in self._jobs) < self.max_items:
                await asyncio.sleep(self.linger_seconds)
            await self.drain_once()

    async def drain_once(self) -> None:
        """Score the jobs at the head of the queue (as many whole jobs as fit in ``max_items`` inputs, one at
        least)."""
        jobs: list[ShadowJob] = []
        items = 0
        while self._jobs and (not jobs or items + len(self._jobs[0].inputs) <= self.max_items):
            job = self._jobs.popleft()
            jobs.append(job)
            items += len(job.inputs)
        self._set_depth()
        if not jobs:
            return
        started = time.perf_counter()
        try:
            batch = await self._score([item for job in jobs for item in job.inputs])
            if not batch.skipped and len(batch.outputs) != items:
                raise ValueError(f"the shadow answered {len(batch.outputs)} outputs for {items} inputs")
        except Exception as error:
            self._count("failed", len(jobs))
            self.reason = f"the shadow call failed: {error!r}"[:300]
            (logger.debug if self._warned else logger.warning)("shadow scoring of %s failed for %d requests: %r",
                                                               self.model, len(jobs), error)
            self._warned = True
            return
        if batch.skipped:
            self.reason = batch.skipped
            self._count("skipped", len(jobs))
            return
        self.version, self.reason = batch.version, ""
        milliseconds = (time.perf_counter() - started) * 1000
        first = 0
        for job in jobs:
            outputs = batch.outputs[first:first + len(job.inputs)]
            first += len(job.inputs)
            if self._log is not None:
                for record in self._rows(job, batch.version, outputs, milliseconds):
                    self._log.log(record)
        self._count("scored", len(jobs))

    def _count(self, outcome: Outcome, jobs: int = 1) -> None:
        self.counts[outcome] += jobs
        if self._metrics is not None:
            self._metrics.shadow.labels(model=self.model, outcome=outcome).inc(jobs)

    def _set_depth(self) -> None:
        if self._metrics is not None:
            self._metrics.shadow_queue_depth.labels(model=self.model).set(len(self._jobs))


# --- model service ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerSpec:
    """What the shadow worker process follows: Vigil's sentiment model or a pyfunc model, by name and alias."""

    kind: Literal["sentiment", "pyfunc"]
    name: str
    alias: str


class ShadowWorkerGone(RuntimeError):
    """The shadow worker process exited or stopped answering; the next batch starts another."""


def reason_not_scored(holder: ModelHolder, served_version: str) -> str:
    """Why a batch would not be scored now (no shadow version, or the one served); empty when it would."""
    shadow = holder.current
    if shadow is None:
        return holder.status.reason or f"{holder.name} has no {holder.alias!r} version"
    if shadow.version == served_version:
        return f"{holder.name}@{holder.alias} is v{shadow.version}, the version served: nothing to compare"
    return ""


def score_texts(loaded: LoadedModel, texts: Sequence[str]) -> list[Any]:
    """Vigil's classifier on ``texts``: one {label, score} each."""
    return [{"label": p.label, "score": p.score}
            for p in loaded.model.predict(list(texts), batch_size=max(len(texts), 1))]


def score_rows(loaded: LoadedModel, rows: Sequence[dict[str, Any]]) -> list[Any]:
    """A pyfunc model on ``rows`` (validated against the served version's signature): one PredictedRow each."""
    from service.pyfunc import model_input, predicted_rows

    served = loaded.model
    return [row.model_dump() for row in predicted_rows(served.model.predict(model_input(served.spec, list(rows))),
                                                        len(rows), loaded.version)]


def answer(message: tuple[Any, ...], holder: ModelHolder,
           predict: Callable[[LoadedModel, Sequence[Any]], list[Any]]) -> ShadowBatch | dict[str, Any]:
    """The worker's answer to one message: ("score", served version, items) or ("describe", served version)."""
    kind, served_version = message[0], str(message[1])
    reason = reason_not_scored(holder, served_version)
    shadow = holder.current
    if kind == "describe":
        return {"alias": holder.alias, "version": shadow.version if shadow else None, "scoring": not reason,
                "reason": reason or None, "worker_priority": os.getpriority(os.PRIO_PROCESS, 0),
                "worker_idle_class": runs_idle()}
    if reason or shadow is None:
        return ShadowBatch(skipped=reason or "no shadow version")
    started = time.perf_counter()
    outputs = predict(shadow, message[2])
    return ShadowBatch(version=shadow.version, outputs=outputs, seconds=time.perf_counter() - started)


def worker_holder(spec: WorkerSpec) -> tuple[ModelHolder, Callable[[LoadedModel, Sequence[Any]], list[Any]]]:
    """The worker's alias follower for ``spec`` (one thread for ONNX Runtime and torch), and how it scores."""
    from service.model_store import ModelHolder
    from vigil.settings import get_settings

    settings = get_settings()
    if spec.kind == "sentiment":
        import torch

        torch.set_num_threads(1)
        return ModelHolder(spec.name, spec.alias, settings.model_cache_dir, settings.alias_poll_seconds,
                           runtime=settings.model_runtime, threads=1, quantize=settings.model_quantize,
                           shadow=True), score_texts
    from service.pyfunc_service import load_pyfunc

    return ModelHolder(spec.name, spec.alias, settings.model_cache_dir, settings.alias_poll_seconds,
                       loader=load_pyfunc, shadow=True), score_rows


def run_worker() -> None:
    """The shadow worker process: read pickled messages on stdin, answer each on stdout, until stdin closes.

    Its own process, not a thread of the model service: a thread at the lowest CPU priority still shares the
    service's GIL, and while the scheduler holds it off the core (which is the point of the priority) it may hold
    the GIL the served predictions wait for. bench/RESULTS.md ("Issue 17: shadow scoring") has the measurement.
    """
    run_at_lowest_priority()  # first, before any thread exists: every thread of the process inherits it
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything a library prints goes to the service's log, never into the answers
    # Vigil's own news (loads, alias moves) at INFO; the libraries' chatter (each alias poll, the INT8 check) not.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s [%(levelname)s] [shadow-worker] %(message)s")
    for ours in ("service", "vigil"):
        logging.getLogger(ours).setLevel(logging.INFO)
    requests = sys.stdin.buffer
    spec: WorkerSpec = pickle.load(requests)
    holder, predict = worker_holder(spec)
    # The first load in the background: the worker answers (skipped, "not loaded yet") meanwhile.
    threading.Thread(target=holder.start, name="shadow-load", daemon=True).start()
    while True:
        try:
            message = pickle.load(requests)
        except EOFError:  # the model service is gone
            return
        try:
            reply: Any = answer(message, holder, predict)
        except Exception as error:  # the shadow version failed on these inputs: said, not fatal
            logger.warning("shadow scoring failed: %r", error)
            reply = error if _picklable(error) else RuntimeError(repr(error))
        pickle.dump(reply, answers)
        answers.flush()


def _picklable(value: object) -> bool:
    try:
        pickle.dumps(value)
    except Exception:
        return False
    return True


class ShadowScorer:
    """The model service's side: the version under the shadow alias, loaded and scored in a worker process that
    runs at the lowest CPU priority (:func:`run_worker`), so shadow work takes only the CPU serving leaves idle.

    ``served`` is the holder of what is served: a shadow version equal to it is not scored again. One batch at a
    time goes to the worker, from one thread of this process that only waits on the pipe.
    """

    def __init__(self, spec: WorkerSpec, served: ModelHolder, command: Sequence[str] | None = None) -> None:
        self.spec = spec
        self.served = served
        self.command = list(command or [sys.executable, "-c", "from service.shadow import run_worker; run_worker()"])
        self._process: subprocess.Popen[bytes] | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vigil-shadow")
        self._state: dict[str, Any] = {"alias": spec.alias, "version": None, "scoring": False,
                                       "reason": "the shadow worker is starting"}
        self._refresh: Future[Any] | None = None
        self._thread.submit(self._start)

    def _start(self) -> subprocess.Popen[bytes]:
        # The service's own import path, whatever its working directory: the worker imports this module.
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}
        process = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=environment)
        assert process.stdin is not None
        pickle.dump(self.spec, process.stdin)
        process.stdin.flush()
        self._process = process
        return process

    def _ask(self, message: tuple[Any, ...]) -> Any:
        process = self._process
        if process is None or process.poll() is not None:
            process = self._start()  # the first, or one after a worker that died
        assert process.stdin is not None and process.stdout is not None
        try:
            pickle.dump(message, process.stdin)
            process.stdin.flush()
            reply = pickle.load(process.stdout)
        except (EOFError, OSError, pickle.UnpicklingError) as gone:
            process.kill()
            self._process = None
            raise ShadowWorkerGone(f"the shadow worker stopped answering: {gone!r}") from None
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def _served_version(self) -> str:
        served = self.served.current
        return served.version if served is not None else ""

    async def score(self, items: Sequence[Any]) -> ShadowBatch:
        """``items`` scored by the shadow version in the worker; skipped, with the reason, when there is nothing to
        score."""
        batch: ShadowBatch = await asyncio.wrap_future(
            self._thread.submit(self._ask, ("score", self._served_version(), list(items))))
        self._state.update(version=batch.version or self._state["version"], scoring=not batch.skipped,
                           reason=batch.skipped or None)
        return batch

    def describe(self) -> dict[str, Any]:
        """The worker's account of the shadow version: asked anew, and awaited for half a second at most (readiness
        probes read it; a worker busy with a batch answers after it), else the last one known."""
        if self._refresh is None or self._refresh.done():
            self._refresh = self._thread.submit(self._ask, ("describe", self._served_version()))
            self._refresh.add_done_callback(self._remember)
        with contextlib.suppress(Exception):  # busy, starting, or gone: the last known state
            self._refresh.result(timeout=0.5)
        return dict(self._state)

    def _remember(self, answered: Future[Any]) -> None:
        error = answered.exception()
        if error is None:
            self._state = dict(answered.result())
        else:
            self._state = {**self._state, "scoring": False, "reason": f"the shadow worker did not answer: {error!r}"}

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
        self._thread.shutdown(wait=False, cancel_futures=True)
