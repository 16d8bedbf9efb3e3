"""`vigil monitor …`: Evidently drift and token-usage jobs, dashboards, the Evidently UI, alerts, scheduling.

The jobs exit 0 (all clear), 1 (drift, or a budget exceeded) and 2 (too little data, or an error): see
:mod:`monitoring.job`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from monitoring.job import ExitCode, JobResult
from vigil.credentials import mask_url
from vigil.errors import VigilError
from vigil.settings import Settings, get_settings

if TYPE_CHECKING:
    from monitoring.drift import DriftResult
    from monitoring.model_drift import ModelDriftResult
    from monitoring.quality import QualityReport
    from monitoring.tokens import TokenResult
    from monitoring.window import Window
    from monitoring.workspace import HtmlPolicy

logger = logging.getLogger(__name__)
console = Console()
app = typer.Typer(help="Drift and token-usage monitoring with Evidently.", no_args_is_help=True)

JOBS = ("drift", "tokens")
Result = TypeVar("Result", bound=JobResult)
# The window options every job takes; --last differs per job (its default window).
Since = Annotated[str | None, typer.Option("--since", help="Window start: ISO time, or a duration ago (2h).")]
Until = Annotated[str | None, typer.Option("--until", help="Window end (default now).")]


def _quiet_libraries() -> None:
    # Vigil runs offline: no usage telemetry from Evidently.
    os.environ.setdefault("DO_NOT_TRACK", "1")


def _usage_error(message: str) -> typer.Exit:
    # Printed and exit 2 here rather than typer.BadParameter: the job's exit code must not depend on how the
    # caller's entry point renders click's exceptions.
    console.print(f"[red]usage error:[/] {message}", highlight=False)
    return typer.Exit(ExitCode.NO_VERDICT)


def _window(since: str | None, until: str | None, last: str | None, default_last: str) -> Window:
    from monitoring.window import resolve_window

    try:
        return resolve_window(since, until, last, default_last=default_last)
    except ValueError as error:
        raise _usage_error(str(error)) from None


def _fail(error: BaseException) -> typer.Exit:
    """Report ``error`` and return exit 2: a failed job must never read as "drift" (1)."""
    if isinstance(error, VigilError):
        console.print(f"[red]error:[/] {error}", highlight=False)
    else:
        logger.debug("monitoring job failed", exc_info=error)
        console.print(f"[red]error:[/] {type(error).__name__}: {error}", highlight=False)
    return typer.Exit(ExitCode.NO_VERDICT)


def _run_job(job: Callable[[], Result], show: Callable[[Result], None], as_json: bool,
             spinner: str | None = None) -> NoReturn:
    """Run a job, show its result (a table, or ``--json``) and exit with its code; an error is 2, never 1."""
    try:
        if spinner:
            with console.status(spinner):
                result = job()
        else:
            result = job()
    except Exception as error:
        raise _fail(error) from None
    if as_json:
        console.print_json(result.model_dump_json())
    else:
        show(result)
    raise typer.Exit(result.exit_code)


def _print_outcome(result: DriftResult | ModelDriftResult | TokenResult, delivered: list[bool]) -> None:
    """The verdict line, where the snapshot and the report went, and whether each alert arrived."""
    colour = "red" if result.exit_code == ExitCode.ALERT else "green"
    console.print(f"[{colour}]{result.message}[/]", highlight=False)
    console.print(f"snapshot {result.snapshot_id} in project '{result.project}': {result.snapshot_location}",
                  highlight=False)
    if result.report:
        console.print(f"report: {result.report}", highlight=False)
    for arrived in delivered:
        console.print("alert: " + ("delivered" if arrived else "[yellow]webhook failed (logged)[/]"))


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.2e}" if value and abs(value) < 10 ** -digits else f"{value:.{digits}f}"


# --- drift ---------------------------------------------------------------------------------------------------


def is_sentiment(settings: Settings, model: str) -> bool:
    return model in {"sentiment", settings.sentiment_model_name}


def run_drift_job(settings: Settings, window: Window, version: str | None, min_rows: int | None,
                  html: HtmlPolicy = "always", model: str = "sentiment") -> DriftResult | ModelDriftResult:
    """The sentiment model's drift job (texts, descriptors, embeddings), or any other model's (its reference)."""
    if is_sentiment(settings, model):
        from monitoring.drift import run_drift

        return run_drift(settings, window, version=version, min_rows=min_rows, html=html)
    from monitoring.model_drift import run_model_drift

    return run_model_drift(settings, model, window, version=version, min_rows=min_rows, html=html)


def print_drift(result: DriftResult | ModelDriftResult) -> None:
    from monitoring.drift import DriftResult, DriftStatus

    title = (f"{result.model_name} v{result.model_version} · {result.window_start:%Y-%m-%d %H:%M} → "
             f"{result.window_end:%Y-%m-%d %H:%M} UTC · {result.rows} rows")
    if result.status is DriftStatus.INSUFFICIENT:
        console.print(f"[yellow]no verdict[/] — {result.message}", highlight=False)
        return
    if isinstance(result, DriftResult):
        subtitle = (f"{result.text_rows} with text, {result.redacted_rows} redacted, "
                    f"{result.embedded_rows} embedded")
    else:
        subtitle = (f"{result.task}; reference {result.reference_rows} rows "
                    f"(fingerprint {result.reference_fingerprint})")
    table = Table("check", "verdict", "score", "threshold", "method", "detail", title=title, caption=subtitle)
    for check in result.checks:
        if check.drifted is None:
            verdict = "[dim]not evaluated[/]"
        elif check.drifted:
            verdict = "[red]drift[/]" if check.votes else "[yellow]shifted (info)[/]"
        else:
            verdict = "[green]ok[/]"
        table.add_row(check.name, verdict, _fmt(check.score), _fmt(check.threshold), check.method, check.detail)
    console.print(table)
    _print_outcome(result, [] if result.alert_delivered is None else [result.alert_delivered])


@app.command("drift")
def drift_command(
    model: str = typer.Option("sentiment", "--model", help="Which model to watch: sentiment, or any model of "
                              "VIGIL_MODELS (drift against the reference attached with `vigil models reference`)."),
    version: str | None = typer.Option(None, "--version", help="Version to judge (default: the one the model's "
                                       "serving alias points at: its VIGIL_MODELS entry, else VIGIL_SERVE_ALIAS)."),
    since: Since = None,
    until: Until = None,
    last: str | None = typer.Option(None, "--last", help="Window length, e.g. 1h (default 1h, ending now)."),
    min_rows: int | None = typer.Option(None, "--min-rows", min=1, help="Fewest rows for a verdict "
                                        "(default VIGIL_DRIFT_MIN_ROWS)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON instead of a table."),
) -> None:
    """Drift of a served model's traffic against its reference; exit 0 ok, 1 drift, 2 no verdict."""
    _quiet_libraries()
    window = _window(since, until, last, "1h")
    settings = get_settings()
    _run_job(lambda: run_drift_job(settings, window, version, min_rows, model=model), print_drift, as_json,
             spinner=f"drift job for {model} …")


# --- tokens --------------------------------------------------------------------------------------------------


def print_tokens(result: TokenResult) -> None:
    from monitoring.tokens import TokenStatus

    if result.status is TokenStatus.INSUFFICIENT:
        console.print(f"[yellow]no data[/] — {result.message}", highlight=False)
        return
    title = (f"RAG usage · {result.window_start:%Y-%m-%d %H:%M} → {result.window_end:%Y-%m-%d %H:%M} UTC · "
             f"{result.queries} queries")
    table = Table("generator", "model", "queries", "prompt", "completion", "total", "price/1k", "cost", title=title)
    for usage in result.by_generator:
        table.add_row(usage.generator, usage.generator_model, str(usage.queries), str(usage.prompt_tokens),
                      str(usage.completion_tokens), str(usage.total_tokens),
                      "[yellow]no price[/]" if usage.price_per_1k is None else f"{usage.price_per_1k:g}",
                      "-" if usage.cost is None else f"{usage.cost:.4f}")
    table.add_row("[b]all[/]", "", str(result.queries), str(result.prompt_tokens), str(result.completion_tokens),
                  str(result.total_tokens), "", f"{result.cost:.4f}")
    console.print(table)
    console.print(f"tokens per query: p50 {_fmt(result.p50_tokens, 0)}, p95 {_fmt(result.p95_tokens, 0)}")
    budget = Table("day (UTC)", "tokens", "budget", "status", title="daily budget")
    for day in result.days:
        status = "[red]exceeded[/]" if day.exceeded else ("[dim]off[/]" if not day.budget else "[green]ok[/]")
        budget.add_row(day.day.isoformat(), str(day.total_tokens), str(day.budget or "-"), status)
    console.print(budget)
    health = result.retrieval
    if health is not None:
        verdict = ("[dim]not compared[/]" if health.drifted is None
                   else "[red]drift[/]" if health.drifted else "[green]ok[/]")
        console.print(f"retrieval top-1 score: mean {_fmt(health.top1_mean)} "
                      f"(baseline {_fmt(health.baseline_top1_mean)}, {health.baseline_rows} queries) · {verdict} · "
                      f"{health.method} {_fmt(health.drift_score)} · {health.detail}", highlight=False)
    _print_outcome(result, result.alerts_delivered)


def run_tokens_job(settings: Settings, window: Window, min_rows: int | None, rebaseline: bool,
                   html: HtmlPolicy = "always") -> TokenResult:
    from monitoring.tokens import run_tokens

    return run_tokens(settings, window, min_rows=min_rows, rebaseline=rebaseline, html=html)


@app.command("tokens")
def tokens_command(
    since: Since = None,
    until: Until = None,
    last: str | None = typer.Option(None, "--last", help="Window length (default 24h, ending now)."),
    min_rows: int | None = typer.Option(None, "--min-rows", min=1, help="Fewest scored queries to compare or "
                                        "establish the retrieval baseline (default VIGIL_DRIFT_MIN_ROWS)."),
    rebaseline: bool = typer.Option(False, "--rebaseline", help="Make this window the retrieval baseline."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON instead of tables."),
) -> None:
    """RAG token usage, cost, daily budget and retrieval health; exit 0 ok, 1 alert, 2 no data or error."""
    _quiet_libraries()
    window = _window(since, until, last, "24h")
    settings = get_settings()
    _run_job(lambda: run_tokens_job(settings, window, min_rows, rebaseline), print_tokens, as_json)


# --- live quality --------------------------------------------------------------------------------------------


@app.command("quality")
def quality_command(
    model: str = typer.Option("sentiment", "--model", help="A served model's name (`sentiment`: Vigil's own)."),
    since: Since = None,
    until: Until = None,
    last: str | None = typer.Option(None, "--last", help="Window length (default 24h, ending now)."),
    task: str | None = typer.Option(None, "--task", help="classification or regression (default: read from the "
                                    "labels: strings, booleans and a few whole numbers are classes)."),
    json_out: str | None = typer.Option(None, "--json", metavar="OUT", help="Write the JSON result to OUT "
                                        "(`-`: standard output) instead of printing a table."),
    watch: bool = typer.Option(True, "--watch/--no-watch", help="Judge the served version by the policy's "
                               "[live.watch] (exit 1 and a webhook alert when broken), and write the snapshots."),
) -> None:
    """Live quality per version, from requests whose true label came back through `POST /feedback`: accuracy and
    macro-F1 (classifiers) or MAE and RMSE (regressors), with request and labelled counts, and the shadow's
    agreement with the served answers. Exit 0 clear, 1 the policy's [live.watch] broken, 2 no requests or an
    error."""
    from monitoring.quality import measure_quality

    if task not in (None, "classification", "regression"):
        raise _usage_error(f"--task must be classification or regression, not {task!r}")
    window = _window(since, until, last, "24h")
    settings = get_settings()
    try:
        report = measure_quality(settings, model, window, task)  # type: ignore[arg-type]
    except Exception as error:
        raise _fail(error) from None
    # With the JSON on standard output, everything else goes to standard error.
    out = Console(stderr=True) if json_out == "-" else console
    if json_out is not None:
        text = json.dumps(report.contract(), indent=2)
        if json_out == "-":
            sys.stdout.write(text + "\n")
        else:
            Path(json_out).write_text(text + "\n")
            out.print(f"written to {json_out}", highlight=False)
    else:
        table = Table(title=f"{model} · live quality · {window.label()} · {report.task or 'no labels yet'}")
        figures = (("mae", "rmse") if report.task == "regression"
                   else ("accuracy", "macro_f1", "estimated_accuracy", "estimated_macro_f1"))
        for column in ("version", "role", "requests", "labelled", *figures, "agreement_with_champion"):
            table.add_column(column)
        for entry in report.versions:
            table.add_row(entry.version, entry.role, str(entry.requests), str(entry.labelled),
                          *(_fmt(getattr(entry, figure)) for figure in figures),
                          _fmt(entry.agreement_with_champion))
        out.print(table)
    if not report.versions:
        raise typer.Exit(ExitCode.NO_VERDICT)
    if not watch:
        raise typer.Exit(ExitCode.OK)
    try:
        breached = _watch_quality(settings, model, report, window, out)
    except Exception as error:
        raise _fail(error) from None
    raise typer.Exit(ExitCode.ALERT if breached else ExitCode.OK)


def _watch_quality(settings: Settings, model: str, report: QualityReport, window: Window, out: Console) -> bool:
    """Snapshots into the model's project, the [live.watch] verdict printed, the alert sent; True: breached."""
    from monitoring import drift
    from monitoring.job import deliver
    from monitoring.quality_watch import judge_watch, offline_figures, publish_quality, quality_alert
    from vigil import registry
    from vigil.policy import load_policy

    _quiet_libraries()
    policy = load_policy(settings.promotion_policy)
    logged_name = settings.sentiment_model_name if is_sentiment(settings, model) else model
    project = drift.PROJECT if is_sentiment(settings, model) else model
    saved = []
    try:
        saved = publish_quality(settings, model, logged_name, project, report, window)
    except Exception as error:  # the dashboard is a view; the verdict and the alert still matter
        logger.warning("live-quality snapshots not written: %s", error)
        out.print(f"[yellow]snapshots not written:[/] {error}", highlight=False)
    for snapshot in saved:
        out.print(f"snapshot {snapshot.snapshot_id} in project '{project}': {snapshot.location}", highlight=False)
    try:
        offline = offline_figures(registry.connect(), logged_name)
    except Exception as error:  # MLflow down: the bounds still hold, only the drop against offline is unknown
        out.print(f"[yellow]no offline figures (MLflow: {error}); max_drop not judged[/]", highlight=False)

        def offline(version: str, metric: str) -> tuple[float, str] | None:
            return None

    verdict = judge_watch(report, policy, settings.alias_of(logged_name), offline)
    for line in verdict.skipped:
        out.print(f"watch: {line}", style="dim", markup=False, highlight=False)
    if not verdict.breaches:
        if verdict.judged:
            out.print("live quality within the policy's [live.watch]", style="green", markup=False, highlight=False)
        return False
    for breach in verdict.breaches:
        out.print(f"live quality: {breach.reason}", style="red", markup=False, highlight=False)
    alert = quality_alert(model, report, verdict.breaches, project, saved[0] if saved else None)
    for arrived in deliver(settings, [alert]):
        out.print("alert: " + ("delivered" if arrived else "[yellow]webhook failed (logged)[/]"))
    return True


# --- dashboards and UI ---------------------------------------------------------------------------------------


@app.command("dashboards")
def dashboards_command() -> None:
    """Create or update the Evidently UI projects (`sentiment`, `rag`, one per model of VIGIL_MODELS) and panels."""
    from monitoring.dashboards import ensure_dashboards

    _quiet_libraries()
    settings = get_settings()
    try:
        made = ensure_dashboards(settings)
    except Exception as error:
        raise _fail(error) from None
    where = mask_url(settings.evidently_url) or str(settings.evidently_workspace_path)
    for info in made:
        console.print(f"[green]{info.project}[/] ({info.project_id}): tabs {', '.join(info.tabs)}; "
                      f"{len(info.panels)} panels", highlight=False)
    console.print(f"workspace: {where}", highlight=False)


@app.command("ui")
def ui_command(
    port: int | None = typer.Option(None, "--port", help="Port (default VIGIL_EVIDENTLY_UI_PORT)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind; 0.0.0.0 to expose it."),
) -> None:
    """Run `evidently ui` on the workspace in the foreground (Ctrl-C stops it); dashboards are set up first."""
    from monitoring.dashboards import ensure_dashboards

    _quiet_libraries()
    settings = get_settings()
    if settings.evidently_url:
        console.print(f"snapshots go to the remote Evidently UI at {mask_url(settings.evidently_url)}; open it there "
                      "(unset VIGIL_EVIDENTLY_URL to serve the local workspace).", highlight=False)
        raise typer.Exit(0)
    try:
        ensure_dashboards(settings)
    except Exception as error:
        raise _fail(error) from None
    port = port or settings.evidently_ui_port
    workspace = str(settings.evidently_workspace_path.resolve())
    console.print(f"Evidently UI on http://{host}:{port} (workspace {workspace}); Ctrl-C stops it.",
                  highlight=False)
    sys.stdout.flush()
    # exec, not a child process: signals (Ctrl-C, SIGTERM from a supervisor) reach the server itself.
    os.execve(sys.executable, [sys.executable, "-m", "evidently.cli", "ui", "--workspace", workspace,
                               "--host", host, "--port", str(port)], {**os.environ, "DO_NOT_TRACK": "1"})


# --- schedule ------------------------------------------------------------------------------------------------


def _parse_jobs(jobs: str) -> list[str]:
    chosen = [job.strip() for job in jobs.split(",") if job.strip()]
    unknown = sorted(set(chosen) - set(JOBS))
    if unknown or not chosen:
        raise _usage_error(f"unknown job(s) {unknown}; choose from {', '.join(JOBS)}")
    return chosen


def run_once(jobs: list[str], drift_window: str, tokens_window: str) -> dict[str, int]:
    """Each job once, over the window ending now; an exception is that job's exit 2, never the schedule's end."""
    from monitoring.window import resolve_window

    settings = get_settings()
    codes: dict[str, int] = {}
    # The drift job runs for sentiment ("drift") and for every other model of VIGIL_MODELS ("drift:<name>").
    runs: list[tuple[str, str | None]] = [(job, None) for job in jobs if job != "drift"]
    if "drift" in jobs:
        runs = [("drift", None), *((f"drift:{name}", name) for name, _ in settings.served_models), *runs]
    for job, model in runs:
        started = time.perf_counter()
        try:
            if job.startswith("drift"):
                # HTML files only for windows that alert: the workspace's snapshot holds the same report, and
                # a 15-minute schedule runs 96 times a day.
                drift = run_drift_job(settings, resolve_window(last=drift_window), None, None, "on_alert",
                                      model=model or "sentiment")
                codes[job], summary = drift.exit_code, drift.message
            else:
                usage = run_tokens_job(settings, resolve_window(last=tokens_window), None, False, "on_alert")
                codes[job], summary = usage.exit_code, usage.message
        except Exception as error:
            logger.debug("%s job failed", job, exc_info=error)
            codes[job], summary = ExitCode.NO_VERDICT, f"error: {type(error).__name__}: {error}"
        colour = {0: "green", 1: "red"}.get(codes[job], "yellow")
        console.print(f"{datetime.now():%H:%M:%S} [{colour}]{job} → {codes[job]}[/] "
                      f"({time.perf_counter() - started:.1f}s) {summary}", highlight=False)
    return codes


@app.command("schedule")
def schedule_command(
    every: str = typer.Option("15m", "--every", help="Interval between runs, e.g. 15m, 1h."),
    jobs: str = typer.Option("drift,tokens", "--jobs", help="Comma-separated: drift, tokens."),
    drift_window: str = typer.Option("1h", "--drift-window", help="Window of each drift run, ending now."),
    tokens_window: str = typer.Option("24h", "--tokens-window", help="Window of each tokens run, ending now."),
    runs: int = typer.Option(0, "--runs", min=0, help="Stop after N rounds (0: until Ctrl-C)."),
) -> None:
    """Run the jobs every interval until stopped (Ctrl-C); a failing job is reported and retried next round."""
    from monitoring.dashboards import ensure_dashboards
    from monitoring.window import parse_duration

    _quiet_libraries()
    chosen = _parse_jobs(jobs)
    try:
        interval = parse_duration(every).total_seconds()
        parse_duration(drift_window), parse_duration(tokens_window)
    except ValueError as error:
        raise _usage_error(str(error)) from None
    try:
        ensure_dashboards(get_settings())
    except Exception as error:
        logger.warning("dashboards not set up (%s); the jobs run anyway", error)
    console.print(f"running {', '.join(chosen)} every {every}; Ctrl-C stops.", highlight=False)
    done = 0
    try:
        while True:
            started = time.monotonic()
            run_once(chosen, drift_window, tokens_window)
            done += 1
            if runs and done >= runs:
                break
            # Fixed-rate ticks: a slow run shortens the pause instead of shifting every later run.
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
    except KeyboardInterrupt:
        console.print(f"stopped after {done} round(s).")
    raise typer.Exit(0)
