"""OpenTelemetry for every Vigil process: one tracer provider, exporters chosen by settings, bounded shutdown.

:func:`setup_tracing` is the one entry point; :func:`get_tracer` hands out tracers of the provider it installed,
and :func:`text_attribute` puts request text on a span as ``VIGIL_TRACE_RAW_TEXT`` says. Where spans go is
:mod:`telemetry.exporters`, which traces are kept :mod:`telemetry.sampling`, a caller's ``traceparent``
:mod:`telemetry.propagation`, span and attribute names :mod:`telemetry.semconv`.

Telemetry never blocks or fails a request: exports run on background threads behind bounded queues, and
:func:`shutdown_tracing` returns within its bound even when an endpoint is down.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

from telemetry import semconv
from telemetry.exporters import CountingBatchSpanProcessor, ExporterStatus, span_processors
from telemetry.redaction import text_digest
from telemetry.sampling import TailSamplingProcessor, sampler_from_settings
from vigil.settings import Settings, get_settings

logger = logging.getLogger(__name__)


class Tracing:
    """A tracer provider with Vigil's exporters attached. :func:`setup_tracing` keeps one per process."""

    def __init__(
        self, provider: TracerProvider, *, mode: str, settings: Settings, owns_provider: bool,
        exporters: list[ExporterStatus], processors: list[CountingBatchSpanProcessor],
        tail: TailSamplingProcessor | None = None,
    ) -> None:
        self.provider = provider
        self.mode = mode
        self.tail = tail
        self.trace_all = settings.trace_all
        self.slow_ms = settings.trace_slow_ms
        self.sample_ratio = settings.trace_sample_ratio
        self.max_traces_per_second = settings.trace_max_per_second
        self.max_remote_traces_per_second = settings.trace_remote_max_per_second
        self.raw_text = settings.trace_raw_text
        self.exporters = exporters
        self._processors = processors
        self._owns_provider = owns_provider
        self._shutdown_lock = threading.Lock()
        self._is_shut_down = False

    def status(self) -> dict[str, Any]:
        """Mode, exporters and their counters; ``degraded`` when a configured exporter could not start."""
        return {
            "mode": self.mode,
            "trace_all": self.trace_all,
            "slow_ms": self.slow_ms,
            "sample_ratio": self.sample_ratio,
            "max_traces_per_second": self.max_traces_per_second,
            "max_remote_traces_per_second": self.max_remote_traces_per_second,
            "degraded": any(not exporter.active for exporter in self.exporters),
            "shut_down": self._is_shut_down,
            "exporters": [exporter.as_dict() for exporter in self.exporters],
            "held_spans": self.tail.held_spans if self.tail is not None else 0,
        }

    def shutdown(self, timeout_seconds: float = 3.0) -> bool:
        """Flush and stop every exporter, in parallel, giving up after ``timeout_seconds``.

        The SDK's own shutdown waits up to 30 s per processor, one after another, and an OTLP exporter retries
        against an absent endpoint until its timeout; neither may hold a process that is exiting. Returns
        whether everything finished in time; what did not is abandoned on daemon threads.
        """
        with self._shutdown_lock:
            if self._is_shut_down:
                return True
            self._is_shut_down = True
        deadline = time.monotonic() + timeout_seconds
        # Vigil's exporters side by side, so one absent endpoint does not hold back the others' flush.
        stuck = _stop_all([(p.name, p) for p in self._processors], deadline)
        if stuck:
            for processor in self._processors:
                # Interrupts the OTLP client's retry back-off so the abandoned threads end soon after.
                processor.guarded_exporter.shutdown()
        if self._owns_provider:
            # Whatever else was added to the provider; Vigil's processors are already stopped (or abandoned).
            others = _stop_all([("other span processors", self.provider)], deadline)
            stuck = stuck or others
        if stuck:
            logger.warning("tracing shutdown gave up after %.1fs on %s; their unsent spans are lost",
                           timeout_seconds, ", ".join(stuck))
        return not stuck


def _stop_all(targets: list[tuple[str, SpanProcessor | TracerProvider]], deadline: float) -> list[str]:
    """Shut ``targets`` down on daemon threads; the names of those still running at ``deadline``."""
    stoppers: list[tuple[str, threading.Thread]] = []
    for name, target in targets:
        thread = threading.Thread(target=_shutdown_quietly, args=(target,), name=f"vigil-trace-stop-{name}",
                                  daemon=True)
        try:
            thread.start()
        except RuntimeError:  # no new threads during interpreter finalization
            _shutdown_quietly(target)
            continue
        stoppers.append((name, thread))
    for _, thread in stoppers:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [name for name, thread in stoppers if thread.is_alive()]


def _shutdown_quietly(target: SpanProcessor | TracerProvider) -> None:
    try:
        target.shutdown()
    except Exception:
        logger.debug("span processor failed to shut down", exc_info=True)


def vigil_version() -> str:
    """The installed Vigil's version (``service.version`` of every span)."""
    try:
        return version("vigil")
    except PackageNotFoundError:
        return "0+unknown"


def _resource(service_name: str, settings: Settings) -> Resource:
    return Resource.create({
        SERVICE_NAME: service_name,
        SERVICE_VERSION: vigil_version(),
        semconv.DEPLOYMENT_ENVIRONMENT: settings.environment,
        semconv.DEPLOYMENT_ENVIRONMENT_NAME: settings.environment,
    })


def build_tracing(
    service_name: str, *, settings: Settings | None = None, tracer_provider: TracerProvider | None = None,
    trust_remote_parents: bool = False,
) -> Tracing:
    """A provider with the exporters ``settings`` ask for, without installing it globally (tests use this).

    Spans reach the exporters through one :class:`~telemetry.sampling.TailSamplingProcessor`. An injected
    ``tracer_provider`` keeps its own resource and sampler; Vigil only adds that processor to it (with a sampler
    that flags every trace sampled, everything passes straight through). ``trust_remote_parents``: a service only
    Vigil's API worker calls (see :mod:`telemetry.sampling`).
    """
    settings = settings or get_settings()
    owns_provider = tracer_provider is None
    if tracer_provider is None:
        # "off" still hands out valid, non-recording spans so context propagates, at almost no cost.
        sampler = sampler_from_settings(settings, trust_remote_parents=trust_remote_parents)
        tracer_provider = TracerProvider(resource=_resource(service_name, settings), sampler=sampler,
                                         shutdown_on_exit=False)
    exporters, processors = span_processors(settings)
    tail = None
    if processors:
        tail = TailSamplingProcessor(processors, slow_ms=settings.trace_slow_ms, defer_to_caller=trust_remote_parents)
        tracer_provider.add_span_processor(tail)
    return Tracing(
        tracer_provider, mode=settings.tracing, settings=settings, owns_provider=owns_provider,
        exporters=exporters, processors=processors, tail=tail,
    )


_lock = threading.Lock()
_active: Tracing | None = None


def setup_tracing(
    service_name: str, *, settings: Settings | None = None, tracer_provider: TracerProvider | None = None,
    trust_remote_parents: bool = False,
) -> TracerProvider:
    """Install this process's tracer provider with Vigil's exporters; a second call returns the first provider.

    Pass ``tracer_provider`` to use a provider you built (tests pass one with an in-memory exporter); an SDK
    provider someone else already installed globally is used the same way, so there stays one per process.
    Shutdown is registered at exit with the bound of :func:`shutdown_tracing`. ``trust_remote_parents=True`` in a
    service only Vigil's API worker calls: its callers' trace flags are the API worker's sampling decisions, and it
    waits for the API worker's :func:`keep_traces` on the pending ones (see :mod:`telemetry.sampling`).
    """
    global _active
    with _lock:
        if _active is not None:
            return _active.provider
        installed = trace.get_tracer_provider()
        if tracer_provider is None and isinstance(installed, TracerProvider):
            tracer_provider = installed
        tracing = build_tracing(service_name, settings=settings, tracer_provider=tracer_provider,
                                trust_remote_parents=trust_remote_parents)
        if installed is not tracing.provider:
            trace.set_tracer_provider(tracing.provider)
            if trace.get_tracer_provider() is not tracing.provider:
                logger.warning("another tracer provider is already installed; Vigil's spans may not be exported")
        _active = tracing
        atexit.register(shutdown_tracing)
        logger.info("tracing: %s", ", ".join(f"{e.name}→{e.endpoint}" for e in tracing.exporters)
                    or tracing.mode)
        return tracing.provider


def shutdown_tracing(timeout_seconds: float = 3.0) -> bool:
    """Flush and stop the process's exporters within ``timeout_seconds``; True when nothing was abandoned."""
    tracing = _active
    return True if tracing is None else tracing.shutdown(timeout_seconds)


def keep_traces(trace_ids: list[str]) -> int:
    """In a service behind the API worker: the API worker kept these pending traces; export what is held of them.
    Returns how many were held here."""
    tracing = _active
    return 0 if tracing is None or tracing.tail is None else tracing.tail.keep(trace_ids)


def drain_keep_notices() -> dict[str, list[str]]:
    """In the API worker: downstream service -> the pending traces it holds that were kept here, since last asked
    (for :func:`keep_traces` in that service)."""
    tracing = _active
    return {} if tracing is None or tracing.tail is None else tracing.tail.drain_notices()


def tracing_status() -> dict[str, Any]:
    """Readiness details: mode, exporters, whether one is degraded, export failures and dropped spans."""
    tracing = _active
    if tracing is None:
        return {"mode": "not set up", "degraded": False, "exporters": []}
    return tracing.status()


def get_tracer(name: str) -> trace.Tracer:
    """A tracer of the process's provider (a no-op one until :func:`setup_tracing` ran)."""
    return trace.get_tracer(name, vigil_version())


def text_attribute(text: str) -> str:
    """Request text as a span attribute: the text itself, or its :func:`~telemetry.redaction.text_digest`."""
    tracing = _active
    raw = tracing.raw_text if tracing is not None else get_settings().trace_raw_text
    return text if raw else text_digest(text)
