"""The RAG usage job: tokens, cost and retrieval health from the inference log (kind ``rag``).

- **Tokens**: totals, per-query p50/p95 and a per generator/model breakdown of the window.
- **Cost**: tokens × ``VIGIL_TOKEN_PRICES_PER_1K`` (price per 1000 tokens, looked up by generator model, then by
  generator); rows whose model has no price are counted, not guessed.
- **Budget**: tokens per UTC calendar day, for every day the window touches (whole days up to the window's end,
  so a 1-hour window still checks today's spend), against ``VIGIL_TOKEN_BUDGET_DAILY``.
- **Retrieval health**: the top-1 score (``retrieved_scores[0]``) against a stored *baseline*: the first window
  that had enough scored queries, kept under ``$VIGIL_HOME/monitoring/rag_baseline.parquet`` until replaced with
  ``--rebaseline``. A stored baseline rather than "the first day of the log": it survives log retention and
  cannot move under the comparison; re-baseline after a deliberate change (new embedder, new corpus).

The snapshot goes to the Evidently project ``rag``; an exceeded budget or drifted top-1 score exits 1 and alerts.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, Field

from monitoring.alerts import Alert
from monitoring.job import Clock, ExitCode, JobResult, JobStatus, deliver, publish, read_rows
from monitoring.window import Window
from monitoring.workspace import HtmlPolicy
from vigil.credentials import ensure_private_dir
from vigil.settings import Settings

logger = logging.getLogger(__name__)

PROJECT = "rag"
TOP1_COLUMN = "top1_score"
COST_COLUMN = "cost_estimate"
TOKEN_COLUMNS = ("prompt_tokens", "completion_tokens", "total_tokens")


class TokenStatus(JobStatus):
    OK = "ok", ExitCode.OK
    ALERT = "alert", ExitCode.ALERT
    INSUFFICIENT = "insufficient_data", ExitCode.NO_VERDICT  # no queries; errors raise, and the CLI exits 2


class GeneratorUsage(BaseModel):
    generator: str
    generator_model: str
    queries: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    price_per_1k: float | None
    cost: float | None


class DayUsage(BaseModel):
    day: date
    total_tokens: int
    budget: int
    exceeded: bool


class RetrievalHealth(BaseModel):
    rows: int
    baseline_rows: int = 0
    baseline_window: str = ""
    top1_mean: float | None = None
    top1_p50: float | None = None
    baseline_top1_mean: float | None = None
    drift_score: float | None = None
    threshold: float | None = None
    method: str = ""
    drifted: bool | None = None
    detail: str = ""


class TokenResult(JobResult):
    """What one run of the tokens job found; the CLI prints it and ``--json`` emits it as is."""

    status: TokenStatus
    message: str
    window_start: datetime
    window_end: datetime
    queries: int = 0
    models: list[str] = Field(default_factory=list, description="name@version of the pipelines that answered")
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    p50_tokens: float | None = None
    p95_tokens: float | None = None
    by_generator: list[GeneratorUsage] = Field(default_factory=list)
    cost: float = 0.0
    unpriced_queries: int = 0
    budget: int = 0
    days: list[DayUsage] = Field(default_factory=list)
    budget_exceeded: bool = False
    retrieval: RetrievalHealth | None = None
    project: str = PROJECT
    snapshot_id: str | None = None
    snapshot_location: str | None = None
    report: str | None = None
    alerts_delivered: list[bool] = Field(default_factory=list)
    seconds: float = 0.0


def price_for(prices: dict[str, float], generator: str, generator_model: str) -> float | None:
    """Price per 1000 tokens: by generator model first (``gpt-4o-mini``), then by generator (``extractive``)."""
    for key in (generator_model, generator):
        if key and key in prices:
            return float(prices[key])
    return None


def usage_frame(rows: pd.DataFrame, prices: dict[str, float]) -> pd.DataFrame:
    """One row per RAG query: token counts, top-1 score and cost estimate (NaN when no price is known)."""
    frame = pd.DataFrame(index=rows.index)
    for column in ("prompt_tokens", "completion_tokens"):
        frame[column] = pd.to_numeric(rows[column], errors="coerce").fillna(0).astype(int)
    total = pd.to_numeric(rows["total_tokens"], errors="coerce")
    frame["total_tokens"] = total.fillna(frame["prompt_tokens"] + frame["completion_tokens"]).astype(int)
    frame["generator"] = rows["generator"].fillna("unknown").astype(str)
    frame["generator_model"] = rows["generator_model"].fillna("").astype(str)
    frame[TOP1_COLUMN] = rows["retrieved_scores"].map(_top1)
    price = [price_for(prices, g, m) for g, m in zip(frame["generator"], frame["generator_model"], strict=True)]
    frame[COST_COLUMN] = [t / 1000 * p if p is not None else float("nan")
                          for t, p in zip(frame["total_tokens"], price, strict=True)]
    frame["timestamp"] = rows["timestamp"]
    return frame.reset_index(drop=True)


def _top1(scores: object) -> float:
    if isinstance(scores, str):  # some drivers hand JSON columns back as text
        scores = json.loads(scores)
    if isinstance(scores, list) and scores:
        return float(scores[0])
    return float("nan")


def run_tokens(
    settings: Settings,
    window: Window,
    *,
    min_rows: int | None = None,
    rebaseline: bool = False,
    send_alerts: bool = True,
    html: HtmlPolicy = "always",
) -> TokenResult:
    """Run the token-usage job over ``window``; never raises for bad data."""
    clock = Clock()
    min_rows = settings.drift_min_rows if min_rows is None else min_rows
    # Whole days from the first day the window touches, so the budget sees each day's full spend so far.
    day_start = datetime.combine(window.since.astimezone(UTC).date(), datetime.min.time(), tzinfo=UTC)
    days_rows = read_rows(settings, "rag", day_start, window.until)
    result = TokenResult(status=TokenStatus.OK, message="", window_start=window.since, window_end=window.until,
                         budget=settings.token_budget_daily)
    if days_rows.empty:
        result.status = TokenStatus.INSUFFICIENT
        result.message = "no RAG queries in the inference log for this window; nothing to report."
        return result
    all_usage = usage_frame(days_rows, settings.token_prices_per_1k)
    in_window = (days_rows["timestamp"] >= pd.Timestamp(window.since)).to_numpy()
    usage = all_usage[in_window].reset_index(drop=True)
    result.days = _days(all_usage, window, settings.token_budget_daily)
    result.budget_exceeded = any(day.exceeded for day in result.days)
    # Name the pipelines that answered in the window; in a quiet window, those that spent the day's budget.
    answering = days_rows[in_window] if in_window.any() else days_rows
    result.models = sorted({f"{n}@{v}" for n, v in zip(answering["model_name"], answering["model_version"],
                                                          strict=True)})
    if usage.empty:
        # A quiet window says nothing about usage, but the day's spend can still be over budget.
        result.status = TokenStatus.ALERT if result.budget_exceeded else TokenStatus.INSUFFICIENT
        result.message = "no RAG queries in this window; " + (
            _budget_text(result) if result.budget_exceeded else "nothing to report.")
        result.alerts_delivered = deliver(settings, _alerts(result), send_alerts=send_alerts)
        return result

    _summarise(result, usage, settings)
    baseline = _load_baseline(settings)
    current_scores = usage[TOP1_COLUMN].dropna()
    result.retrieval = RetrievalHealth(rows=len(current_scores))
    if (rebaseline or baseline is None) and _store_baseline(settings, usage, window, min_rows, result.retrieval):
        baseline = None  # a window is not compared with itself

    snapshot = _report(usage, baseline, window, result, min_rows)
    _read_retrieval(snapshot, result.retrieval, baseline, min_rows)
    alerting = result.budget_exceeded or bool(result.retrieval.drifted)
    result.status = TokenStatus.ALERT if alerting else TokenStatus.OK
    result.message = _message(result)

    published = publish(settings, PROJECT, [snapshot], {"verdict": result.status.value,
                                                        "budget_exceeded": str(result.budget_exceeded).lower()},
                        alerting=alerting, html=html, report_name=f"tokens-{window.slug()}.html", clock=clock)
    result.snapshot_id, result.snapshot_location, result.report = (published.snapshot_id, published.location,
                                                                   published.report)
    result.alerts_delivered = deliver(settings, _alerts(result), send_alerts=send_alerts)
    result.seconds = clock.total()
    return result


def _summarise(result: TokenResult, usage: pd.DataFrame, settings: Settings) -> None:
    result.queries = len(usage)
    for column in TOKEN_COLUMNS:
        setattr(result, column, int(usage[column].sum()))
    result.p50_tokens = float(usage["total_tokens"].quantile(0.5))
    result.p95_tokens = float(usage["total_tokens"].quantile(0.95))
    result.cost = float(usage[COST_COLUMN].sum(skipna=True))
    result.unpriced_queries = int(usage[COST_COLUMN].isna().sum())
    for (generator, model), group in usage.groupby(["generator", "generator_model"], sort=True):
        price = price_for(settings.token_prices_per_1k, str(generator), str(model))
        total = int(group["total_tokens"].sum())
        result.by_generator.append(GeneratorUsage(
            generator=str(generator), generator_model=str(model) or "-", queries=len(group),
            prompt_tokens=int(group["prompt_tokens"].sum()), completion_tokens=int(group["completion_tokens"].sum()),
            total_tokens=total, price_per_1k=price, cost=None if price is None else total / 1000 * price,
        ))


def _days(usage: pd.DataFrame, window: Window, budget: int) -> list[DayUsage]:
    per_day = usage.groupby(usage["timestamp"].dt.tz_convert(UTC).dt.date)["total_tokens"].sum()
    days: list[DayUsage] = []
    day = window.since.astimezone(UTC).date()
    last = (window.until - timedelta(microseconds=1)).astimezone(UTC).date()
    while day <= last:
        total = int(per_day.get(day, 0))
        days.append(DayUsage(day=day, total_tokens=total, budget=budget, exceeded=budget > 0 and total > budget))
        day += timedelta(days=1)
    return days


def _baseline_path(settings: Settings) -> tuple[Path, Path]:
    directory = settings.home / "monitoring"
    return directory / "rag_baseline.parquet", directory / "rag_baseline.json"


def _load_baseline(settings: Settings) -> pd.DataFrame | None:
    data, _ = _baseline_path(settings)
    return pd.read_parquet(data) if data.exists() else None


def baseline_info(settings: Settings) -> dict[str, Any]:
    _, meta = _baseline_path(settings)
    return json.loads(meta.read_text()) if meta.exists() else {}


def _store_baseline(settings: Settings, usage: pd.DataFrame, window: Window, min_rows: int,
                    health: RetrievalHealth) -> bool:
    """Make the window's scored queries the baseline, when there are enough of them; says whether it did."""
    scored = usage[usage[TOP1_COLUMN].notna()]
    if len(scored) < min_rows:
        health.detail = (f"no baseline yet: {len(scored)} scored queries in the window, {min_rows} needed to "
                         "establish one")
        return False
    data, meta = _baseline_path(settings)
    ensure_private_dir(data.parent)
    scored.drop(columns=["timestamp"]).to_parquet(data)
    meta.write_text(json.dumps({"window": window.label(), "rows": len(scored),
                                "created": datetime.now(UTC).isoformat(timespec="seconds")}))
    health.baseline_rows = len(scored)
    health.baseline_window = window.label()
    health.detail = "baseline established from this window; later windows are compared with it"
    logger.info("stored the RAG retrieval baseline (%d queries, %s)", len(scored), window.label())
    return True


def _report(usage: pd.DataFrame, baseline: pd.DataFrame | None, window: Window, result: TokenResult,
            min_rows: int) -> Any:
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import CategoryCount, MeanValue, QuantileValue, RowCount, SumValue, ValueDrift

    numeric = [*TOKEN_COLUMNS, TOP1_COLUMN, COST_COLUMN]
    columns = [*numeric, "generator", "generator_model"]
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=["generator", "generator_model"])
    # Only the top-1 drift is a verdict; the descriptive metrics get no (default, reference-equality) tests.
    metrics: list[Any] = [RowCount(tests=[])]
    metrics += [SumValue(column=column, tests=[]) for column in (*TOKEN_COLUMNS, COST_COLUMN)]
    metrics += [QuantileValue(column="total_tokens", quantile=q, tests=[]) for q in (0.5, 0.95)]
    metrics += [MeanValue(column="total_tokens", tests=[])]
    metrics += [CategoryCount(column="generator", categories=[g], tests=[])
                for g in sorted(usage["generator"].unique())]
    scored = usage[TOP1_COLUMN].notna().sum()
    if scored:
        metrics += [MeanValue(column=TOP1_COLUMN, tests=[]), QuantileValue(column=TOP1_COLUMN, quantile=0.5, tests=[])]
    reference = None
    if baseline is not None and scored >= min_rows:
        metrics.append(ValueDrift(column=TOP1_COLUMN))
        reference = Dataset.from_pandas(baseline[columns], data_definition=definition)
    meta = {"job": "tokens", "window_start": window.since.isoformat(), "window_end": window.until.isoformat(),
            "queries": str(len(usage)), "budget_daily": str(result.budget),
            "budget_exceeded": str(result.budget_exceeded).lower()}
    return Report(metrics, include_tests=True).run(
        Dataset.from_pandas(usage[columns], data_definition=definition), reference,
        timestamp=window.until.replace(tzinfo=None), metadata=meta, tags=["tokens"],
    )


def _read_retrieval(snapshot: Any, health: RetrievalHealth, baseline: pd.DataFrame | None, min_rows: int) -> None:
    from evidently.legacy.tests.base_test import TestStatus

    for result in snapshot.metric_results.values():
        params = result.metric_value_location.metric.params
        kind = params.get("type", "")
        if params.get("column") != TOP1_COLUMN:
            continue
        if kind.endswith(":MeanValue"):
            health.top1_mean = float(result.value)
        elif kind.endswith(":QuantileValue"):
            health.top1_p50 = float(result.value)
        elif kind.endswith(":ValueDrift"):
            health.drift_score = float(result.value)
            health.threshold = float(params["threshold"]) if params.get("threshold") is not None else None
            health.method = str(params.get("method", ""))
            health.drifted = any(test.status == TestStatus.FAIL for test in result.tests)
    if baseline is not None:
        health.baseline_rows = len(baseline)
        health.baseline_top1_mean = float(baseline[TOP1_COLUMN].mean())
        if health.drifted is None:
            health.detail = f"not compared: {health.rows} scored queries in the window, {min_rows} needed"
        else:
            health.detail = "top-1 score distribution vs the stored baseline"


def _budget_text(result: TokenResult) -> str:
    return "daily budget exceeded on " + ", ".join(
        f"{d.day.isoformat()} ({d.total_tokens} > {d.budget})" for d in result.days if d.exceeded)


def _message(result: TokenResult) -> str:
    parts = [f"{result.queries} RAG queries, {result.total_tokens} tokens (p95 {result.p95_tokens or 0:.0f}/query), "
             f"est. cost {result.cost:.4f}"]
    if result.budget_exceeded:
        parts.append(_budget_text(result))
    if result.retrieval and result.retrieval.drifted:
        parts.append("top-1 retrieval score drifted from its baseline")
    return "; ".join(parts)


def _alerts(result: TokenResult) -> list[Alert]:
    alerts: list[Alert] = []
    names = sorted({model.rsplit("@", 1)[0] for model in result.models})
    versions = sorted({model.rsplit("@", 1)[1] for model in result.models})
    generators = ", ".join(f"{g.generator}/{g.generator_model}" for g in result.by_generator)
    common: dict[str, Any] = {
        "window_start": result.window_start, "window_end": result.window_end, "model_name": ", ".join(names),
        "model_version": ", ".join(versions), "project": result.project, "snapshot_id": result.snapshot_id,
        "report": result.report,
    }
    exceeded = [day for day in result.days if day.exceeded]
    if exceeded:
        alerts.append(Alert(kind="token_budget", summary=result.message or _budget_text(result),
                            drifted=[f"tokens {d.day.isoformat()}" for d in exceeded],
                            details={"budget_daily": result.budget, "total_tokens": result.total_tokens,
                                     "generators": generators,
                                     **{d.day.isoformat(): d.total_tokens for d in exceeded}}, **common))
    if result.retrieval and result.retrieval.drifted:
        alerts.append(Alert(kind="retrieval_drift", summary="top-1 retrieval score drifted from its baseline",
                            drifted=[TOP1_COLUMN],
                            details={"drift_score": result.retrieval.drift_score or 0.0,
                                     "top1_mean": result.retrieval.top1_mean or 0.0,
                                     "baseline_top1_mean": result.retrieval.baseline_top1_mean or 0.0},
                            **common))
    return alerts
