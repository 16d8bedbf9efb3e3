"""Alerts: one JSON body, POSTed to ``VIGIL_ALERT_WEBHOOK`` when a job finds drift, an exceeded budget or live
quality that broke the policy.

Delivery is best effort by design: a webhook that is down is logged and the job goes on, so its exit code still
says what it found.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field

from vigil.credentials import mask_url

logger = logging.getLogger(__name__)

AlertKind = Literal["drift", "token_budget", "retrieval_drift", "quality"]


class Alert(BaseModel):
    """What a receiver (Slack relay, PagerDuty, a chat bot…) gets; stable field names, ISO timestamps."""

    kind: AlertKind
    summary: str = Field(description="one line a person can read in a notification")
    drifted: list[str] = Field(default_factory=list, description="what drifted or was exceeded, e.g. column names")
    window_start: datetime
    window_end: datetime
    model_name: str
    model_version: str
    project: str = Field(description="Evidently project of the snapshot")
    snapshot_id: str | None = None
    report: str | None = Field(None, description="where the HTML report lies")
    details: dict[str, float | int | str] = Field(default_factory=dict)
    source: str = "vigil.monitoring"
    timestamp: datetime = Field(default_factory=lambda: datetime.now(UTC))


def send_alert(alert: Alert, url: str, timeout: float = 5.0) -> bool:
    """POST ``alert`` to ``url``; True when the receiver answered 2xx. Never raises."""
    if not url:
        return False
    import httpx

    shown = mask_url(url, keep_path=False)  # a webhook carries its secret in its path (Slack) or query
    try:
        response = httpx.post(url, json=alert.model_dump(mode="json"), timeout=timeout)
    except httpx.HTTPError as error:
        logger.warning("alert webhook %s not reachable (%s); %s alert not delivered", shown, type(error).__name__,
                       alert.kind)
        return False
    if response.is_success:
        logger.info("%s alert delivered to %s", alert.kind, shown)
        return True
    logger.warning("alert webhook %s answered %s; %s alert not delivered", shown, response.status_code, alert.kind)
    return False
