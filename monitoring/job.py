"""What every monitoring job shares: its verdict and exit code, the window's inference-log rows, publishing the
snapshot (Evidently workspace project, HTML report) and the webhook alerts. A job brings its own reports and
verdict; :mod:`monitoring.drift` and :mod:`monitoring.tokens` are the two.

Exit codes: 0 all clear, 1 alert (drift, a budget exceeded), 2 no verdict (too little data, or an error), so cron,
CI and Kubernetes can act on them. Errors are 2, never 1, so that an alert keeps meaning an alert.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import datetime
from enum import IntEnum, StrEnum
from typing import TYPE_CHECKING, Self

from pydantic import BaseModel

from monitoring.alerts import Alert, send_alert
from monitoring.workspace import HtmlPolicy, SavedSnapshot, combine, report_path, save_snapshot
from vigil.settings import Settings

if TYPE_CHECKING:
    import pandas as pd
    from evidently.core.report import Snapshot

class ExitCode(IntEnum):
    OK = 0
    ALERT = 1
    NO_VERDICT = 2  # too little data, or an error


class JobStatus(StrEnum):
    """A job's verdict and the exit code it ends with; a job declares each member as ``NAME = value, ExitCode``."""

    exit_code: ExitCode

    def __new__(cls, value: str, exit_code: ExitCode) -> Self:
        member = str.__new__(cls, value)
        member._value_ = value
        member.exit_code = exit_code
        return member


class JobResult(BaseModel):
    """The start of every job's result: the verdict and a line a person reads; the CLI's ``--json`` emits it all."""

    status: JobStatus
    message: str

    @property
    def exit_code(self) -> ExitCode:
        return self.status.exit_code


class Clock:
    """Seconds since the job started, and per phase (``laps``), for the result's timings."""

    def __init__(self) -> None:
        self.started = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.last, 3)
        self.last = now

    def total(self) -> float:
        return time.perf_counter() - self.started


def read_rows(settings: Settings, kind: str, since: datetime, until: datetime, *, model_name: str | None = None,
              model_version: str | None = None) -> pd.DataFrame:
    """The inference-log rows of ``kind`` in [since, until), oldest first; of one model version when given."""
    from telemetry import records

    engine = records.create_engine(settings.inference_log_sqlalchemy_url)
    try:
        return records.read_frame(engine, kind=kind, model_name=model_name, model_version=model_version,
                                  since=since, until=until)
    finally:
        engine.dispose()


def publish(settings: Settings, project: str, parts: list[Snapshot], verdict: dict[str, str], *, alerting: bool,
            html: HtmlPolicy, report_name: str, clock: Clock | None = None) -> SavedSnapshot:
    """One snapshot of ``parts`` into ``project``, and the HTML report as ``html`` says.

    ``verdict`` goes into the snapshot's metadata, so the UI can filter and count by it. ``html``: when to write
    the standalone report (``report_name`` under ``$VIGIL_HOME/reports``); the snapshot in the workspace holds the
    same report, so a schedule writes files only for windows that alert.
    """
    clock = clock or Clock()
    snapshot = combine(parts, verdict)
    saved = save_snapshot(settings, project, snapshot)
    clock.lap("save snapshot")
    if html == "always" or (html == "on_alert" and alerting):
        path = report_path(settings, report_name)
        snapshot.save_html(str(path))
        clock.lap("write html")
        return replace(saved, report=str(path))
    return saved


def deliver(settings: Settings, alerts: list[Alert], *, send_alerts: bool = True) -> list[bool]:
    """POST each alert to ``VIGIL_ALERT_WEBHOOK``; whether each arrived (none sent when off or no webhook)."""
    if not send_alerts or not settings.alert_webhook:
        return []
    return [send_alert(alert, settings.alert_webhook) for alert in alerts]
