"""Feedback on served requests: true labels and people's ratings, kept beside the inference log, by request id.

One append-only table in the inference log's database. A request's feedback is its newest row; a post that
changes nothing adds no row, so sending the same feedback again is harmless (the batch form is retried as a
whole), while a corrected label keeps the one it replaces. The API worker writes it (:func:`record_feedback`), the
quality job and the export read it (:func:`labelled_rows`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import sqlalchemy as sa

from telemetry.records import inference_log, metadata, served_only, shadow_only

feedback_log = sa.Table(
    "feedback_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
    sa.Column("request_id", sa.String(64), nullable=False, index=True),
    # The true value (a label, a number, or one per row of a several-row request), as JSON; null: a rating only.
    sa.Column("label", sa.JSON, nullable=True),
    sa.Column("score", sa.Float, nullable=True),
    sa.Column("comment", sa.Text, nullable=True),
)
# Feedback looks requests up by id; the log's own indexes are on time, trace and kind.
_request_index = sa.Index("ix_inference_log_request_id", inference_log.c.request_id)


def prepare(engine: sa.Engine) -> None:
    """Create the feedback table and the request-id index if this database has neither yet (idempotent)."""
    feedback_log.create(engine, checkfirst=True)
    _request_index.create(engine, checkfirst=True)


@dataclass(frozen=True)
class ServedRequest:
    """What the log holds of one request: its rows' model, version, trace and answers, in row order."""

    request_id: str
    kind: str
    model_name: str
    model_version: str
    trace_id: str
    answers: list[Any]  # the label (sentiment) or the outputs (a pyfunc model) of each row
    served_at: datetime

    @property
    def rows(self) -> int:
        return len(self.answers)


@dataclass(frozen=True)
class FeedbackState:
    label: Any
    score: float | None
    comment: str | None
    revisions: int  # how many distinct feedbacks this request has had, this one included


def find_request(engine: sa.Engine, request_id: str) -> ServedRequest | None:
    """The logged request ``request_id`` (a prediction of a model; RAG queries have rows too), or None.

    Its served rows: a shadow row (the same request id, scored by the challenger) answered nobody."""
    query = served_only(sa.select(inference_log.c.kind, inference_log.c.model_name, inference_log.c.model_version,
                                  inference_log.c.trace_id, inference_log.c.label, inference_log.c.outputs,
                                  inference_log.c.timestamp)
                        .where(inference_log.c.request_id == request_id).order_by(inference_log.c.id))
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    if not rows:
        return None
    first = rows[0]
    answers = [row.label if row.kind == "sentiment" else row.outputs for row in rows]
    served_at = first.timestamp if first.timestamp.tzinfo else first.timestamp.replace(tzinfo=UTC)  # SQLite: naive
    return ServedRequest(request_id, first.kind, first.model_name, first.model_version, first.trace_id, answers,
                         served_at)


def record_feedback(engine: sa.Engine, request_id: str, *, label: Any = None, score: float | None = None,
                    comment: str | None = None) -> tuple[FeedbackState, bool]:
    """Make ``request_id``'s feedback this one; returns its state and whether anything changed.

    A field left out (None) keeps the value it had: a rating sent after a label does not erase the label.
    """
    with engine.begin() as connection:
        latest = connection.execute(
            sa.select(feedback_log.c.label, feedback_log.c.score, feedback_log.c.comment)
            .where(feedback_log.c.request_id == request_id).order_by(feedback_log.c.id.desc()).limit(1)
        ).first()
        revisions = int(connection.execute(
            sa.select(sa.func.count()).select_from(feedback_log).where(feedback_log.c.request_id == request_id)
        ).scalar_one())
        merged = FeedbackState(
            label=label if label is not None else (latest.label if latest else None),
            score=score if score is not None else (latest.score if latest else None),
            comment=comment if comment is not None else (latest.comment if latest else None),
            revisions=revisions,
        )
        if latest is not None and (latest.label, latest.score, latest.comment) == (
                merged.label, merged.score, merged.comment):
            return merged, False
        connection.execute(feedback_log.insert().values(
            timestamp=datetime.now(UTC), request_id=request_id, label=merged.label, score=merged.score,
            comment=merged.comment))
    return FeedbackState(merged.label, merged.score, merged.comment, revisions + 1), True


def feedback_history(engine: sa.Engine, request_id: str) -> pd.DataFrame:
    """Every feedback ``request_id`` has had, oldest first."""
    query = sa.select(feedback_log).where(feedback_log.c.request_id == request_id).order_by(feedback_log.c.id)
    with engine.connect() as connection:
        return pd.read_sql(query, connection)


def labelled_rows(engine: sa.Engine, *, model_name: str, since: datetime | None = None,
                  until: datetime | None = None, shadow: bool | None = False) -> pd.DataFrame:
    """The log's rows of ``model_name`` in the window, each with its request's newest feedback (``true_label``,
    ``feedback_score``; NaN/None where there is none), oldest first. For a request of several rows, a list label
    gives each row its item and a single label the first row. Served rows only by default; ``shadow=True``: the
    shadow rows only (labelled by the same request's feedback); None: both."""
    latest_id = (sa.select(feedback_log.c.request_id, sa.func.max(feedback_log.c.id).label("latest"))
                 .group_by(feedback_log.c.request_id).subquery())
    latest = (sa.select(feedback_log.c.request_id, feedback_log.c.label.label("true_label"),
                        feedback_log.c.score.label("feedback_score"))
              .join(latest_id, feedback_log.c.id == latest_id.c.latest).subquery())
    query = (sa.select(inference_log, latest.c.true_label, latest.c.feedback_score)
             .outerjoin(latest, latest.c.request_id == inference_log.c.request_id)
             .where(inference_log.c.model_name == model_name)
             .order_by(inference_log.c.timestamp, inference_log.c.id))
    if since is not None:
        query = query.where(inference_log.c.timestamp >= since)
    if until is not None:
        query = query.where(inference_log.c.timestamp < until)
    if shadow is not None:
        query = shadow_only(query) if shadow else served_only(query)
    with engine.connect() as connection:
        frame = pd.read_sql(query, connection)
    if frame.empty:
        return frame
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    frame["true_label"] = _row_labels(frame)
    return frame


def _row_labels(frame: pd.DataFrame) -> list[Any]:
    """Each row's own true value: the item of a list label at the row's place within its request (served and
    shadow rows of one request are placed apart)."""
    shadow = frame["shadow"].fillna(False).astype(bool) if "shadow" in frame else pd.Series(False, index=frame.index)
    place = frame.groupby([frame["request_id"], shadow]).cumcount()
    labels: list[Any] = []
    for value, index in zip(frame["true_label"], place, strict=True):
        if isinstance(value, list):
            labels.append(value[index] if index < len(value) else None)
        else:
            labels.append(value if index == 0 else None)
    return labels


def logged_prediction(row: pd.Series) -> Any:
    """A log row's answer: the sentiment label, or a pyfunc row's (single) output."""
    if row["kind"] == "sentiment":
        return row["label"]
    outputs = row["outputs"]
    if isinstance(outputs, dict):
        return next(iter(outputs.values())) if len(outputs) == 1 else outputs.get("prediction")
    if isinstance(outputs, list) and len(outputs) == 1:
        return outputs[0]
    return outputs
