"""`vigil traces …`: read back what happened to requests."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.tree import Tree

from telemetry import semconv
from vigil.credentials import mask_url
from vigil.errors import VigilError
from vigil.settings import get_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Trace

app = typer.Typer(help="Recent traces from the configured backend.", no_args_is_help=True)


# The callback keeps `tail` a sub-command when this app runs on its own (tests), as it is under `vigil`.
@app.callback()
def traces() -> None:
    """Recent traces from the configured backend."""

# What a person looks for first on a span: which model answered, and what generation cost.
KEY_ATTRIBUTES = (
    semconv.MODEL_NAME,
    semconv.MODEL_VERSION,
    semconv.MODEL_ALIAS,
    semconv.BATCH_SIZE,
    semconv.PROTOCOL,
    semconv.REQUEST_ID,
    semconv.RETRIEVAL_TOP_K,
    semconv.GEN_AI_REQUEST_MODEL,
    semconv.GEN_AI_USAGE_INPUT_TOKENS,
    semconv.GEN_AI_USAGE_OUTPUT_TOKENS,
    semconv.HTTP_ROUTE,
    semconv.HTTP_RESPONSE_STATUS_CODE,
    semconv.RPC_METHOD,
)
TRACE_ID = re.compile(r"^(?:tr-)?([0-9a-f]{32})$")


@dataclass(frozen=True)
class SpanView:
    """The parts of a stored span the tree shows."""

    span_id: str
    parent_id: str | None
    name: str
    start_ns: int
    end_ns: int | None
    error: bool = False
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def duration_ms(self) -> float | None:
        return None if self.end_ns is None else (self.end_ns - self.start_ns) / 1e6


def span_label(span: SpanView) -> str:
    duration = "…" if span.duration_ms is None else f"{span.duration_ms:.1f} ms"
    name = f"[red]{escape(span.name)}[/]" if span.error else f"[bold]{escape(span.name)}[/]"
    keys = [(key, span.attributes[key]) for key in KEY_ATTRIBUTES if span.attributes.get(key) not in (None, "")]
    keys += sorted((key, value) for key, value in span.attributes.items()
                   if key.startswith(semconv.LABEL_COUNTS_PREFIX))
    details = "  ".join(f"[dim]{escape(key)}[/]={escape(str(value))}" for key, value in keys)
    return f"{name}  [cyan]{duration}[/]" + (f"  {details}" if details else "")


def span_tree(title: str, spans: Sequence[SpanView]) -> Tree:
    """Spans under their parents, siblings by start time; spans whose parent is elsewhere sit at the top."""
    tree = Tree(title)
    known = {span.span_id for span in spans}
    children: dict[str | None, list[SpanView]] = {}
    for span in spans:
        parent = span.parent_id if span.parent_id in known else None
        children.setdefault(parent, []).append(span)

    def add(node: Tree, parent: str | None) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: s.start_ns):
            add(node.add(span_label(span)), span.span_id)

    add(tree, None)
    return tree


def _span_views(trace: Trace) -> list[SpanView]:
    from mlflow.entities import SpanStatusCode

    views = []
    for span in trace.data.spans:
        views.append(SpanView(
            span_id=span.span_id, parent_id=span.parent_id, name=span.name, start_ns=span.start_time_ns,
            end_ns=span.end_time_ns, error=span.status.status_code == SpanStatusCode.ERROR,
            attributes=dict(span.attributes or {}),
        ))
    return views


def _trace_title(trace: Trace) -> str:
    info = trace.info
    started = datetime.fromtimestamp(info.request_time / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    duration = "" if info.execution_duration is None else f" · {info.execution_duration} ms"
    return f"[bold magenta]{escape(info.trace_id)}[/] · {started}{duration} · {escape(str(info.state))}"


def _client() -> tuple[MlflowClient, str]:
    from vigil import registry

    settings = get_settings()
    client = registry.connect()
    experiment = client.get_experiment_by_name(settings.traces_experiment)
    if experiment is None:
        raise VigilError(
            f"no traces yet: experiment {settings.traces_experiment!r} does not exist on "
            f"{mask_url(registry.tracking_uri())} (it is created when a Vigil process starts with VIGIL_TRACING=otlp)."
        )
    return client, experiment.experiment_id


def _fetch(client: MlflowClient, experiment_id: str, limit: int, trace_id: str | None) -> Iterable[Trace]:
    from mlflow.exceptions import MlflowException

    try:
        if trace_id is None:
            return client.search_traces(locations=[experiment_id], max_results=limit,
                                        order_by=["timestamp_ms DESC"])
        return [client.get_trace(trace_id, display=False)]
    except MlflowException as error:
        if trace_id is not None:
            raise VigilError(f"trace {trace_id} not found in experiment {experiment_id}: {error.message}") from None
        raise VigilError(f"reading traces from MLflow failed: {error.message}") from None


@app.command("tail")
def tail(
    limit: int = typer.Option(10, "--limit", "-n", min=1, max=500, help="How many recent traces."),
    trace_id: str | None = typer.Option(None, "--trace-id", help="One trace: 32 hex digits or tr-<hex>."),
) -> None:
    """Recent traces from the MLflow trace store, newest first, as trees of spans."""
    wanted = None
    if trace_id is not None:
        match = TRACE_ID.match(trace_id.strip().lower())
        if match is None:
            raise VigilError(f"{trace_id!r} is not a trace id: expected 32 hex digits, optionally as tr-<hex>.")
        wanted = f"tr-{match.group(1)}"
    client, experiment_id = _client()
    traces = list(_fetch(client, experiment_id, limit, wanted))
    console = Console()
    if not traces:
        console.print(f"no traces in experiment {get_settings().traces_experiment} yet")
        return
    for trace in traces:
        console.print(span_tree(_trace_title(trace), _span_views(trace)))
