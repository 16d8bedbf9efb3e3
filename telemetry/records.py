"""The inference log's row: one per prediction or RAG query, the contract between the service and the jobs.

The service writes rows (through :mod:`telemetry.inference_log`'s background writer); the Evidently jobs read them
back with :func:`read_frame`. SQLite by default, PostgreSQL by SQLAlchemy URL, with the same table.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Literal

import pandas as pd
import sqlalchemy as sa
from pydantic import BaseModel, Field

metadata = sa.MetaData()

inference_log = sa.Table(
    "inference_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("trace_id", sa.String(32), nullable=False, index=True),
    sa.Column("endpoint", sa.String(128), nullable=False),
    sa.Column("protocol", sa.String(8), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False, index=True),
    sa.Column("model_name", sa.String(128), nullable=False),
    sa.Column("model_version", sa.String(32), nullable=False),
    sa.Column("input_text", sa.Text, nullable=True),
    sa.Column("label", sa.String(32), nullable=True),
    sa.Column("score", sa.Float, nullable=True),
    sa.Column("latency_ms", sa.Float, nullable=False),
    # none_as_null: an empty JSON column is SQL NULL, not the text `null` (which cost a json.dumps per column and
    # row); both read back as None.
    sa.Column("retrieved_ids", sa.JSON(none_as_null=True), nullable=True),
    sa.Column("retrieved_scores", sa.JSON(none_as_null=True), nullable=True),
    sa.Column("prompt_tokens", sa.Integer, nullable=True),
    sa.Column("completion_tokens", sa.Integer, nullable=True),
    sa.Column("total_tokens", sa.Integer, nullable=True),
    sa.Column("generator", sa.String(64), nullable=True),
    sa.Column("generator_model", sa.String(128), nullable=True),
    # Any pyfunc model's row (kind `model`): its inputs and outputs by signature name, typed by JSON.
    sa.Column("inputs", sa.JSON(none_as_null=True), nullable=True),
    sa.Column("outputs", sa.JSON(none_as_null=True), nullable=True),
    # The alias the row's version answered under: the serve alias for a served row, the shadow alias for a shadow
    # row (the same request scored again, off its path, by the challenger); null in rows of an older Vigil.
    sa.Column("role", sa.String(64), nullable=True),
    # A shadow row answered nobody: every reader of served traffic leaves it out (null: an older, served row).
    sa.Column("shadow", sa.Boolean, nullable=True),
)


def served_only(query: sa.Select[Any]) -> sa.Select[Any]:
    """``query`` without shadow rows: what the served traffic was (drift, tokens, feedback lookups, counts)."""
    return query.where(sa.or_(inference_log.c.shadow.is_(None), inference_log.c.shadow.is_(False)))


def shadow_only(query: sa.Select[Any]) -> sa.Select[Any]:
    return query.where(inference_log.c.shadow.is_(True))


# What no column of the log keeps as it is: NUL, which PostgreSQL refuses in text and JSON alike (one such row would
# fail its whole batch); the other C0 and C1 controls and DEL, which garble whoever reads the log (psql, a CSV export,
# a report); lone surrogates, which are not UTF-8 and which no driver can encode. Tab, newline and carriage return
# are ordinary text and stay.
_UNSTORABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
REPLACEMENT_CHARACTER = "\ufffd"


def storable(value: Any) -> Any:
    """``value`` fit for the log: in every string in it (nested dict keys and values, list items included), NUL, the
    other control characters but tab, newline and carriage return, and lone surrogates become U+FFFD.

    The one cleaning of a row; the writer applies it to each row through :func:`storable_row` (after redaction, so
    that a hashed text is the digest of what the request carried, the same digest as on its span).
    """
    if isinstance(value, str):
        return _UNSTORABLE.sub(REPLACEMENT_CHARACTER, value)
    if isinstance(value, dict):
        return {storable(key): storable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [storable(item) for item in value]
    return value


def storable_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row (column name -> value) with :func:`storable` values.

    The writer thread shares the API worker's interpreter with the requests: the column names need no cleaning,
    and most of a row's columns are empty or numbers, so only the values that can hold text go through it.
    """
    return {name: value if value is None or isinstance(value, _NO_TEXT) else storable(value)
            for name, value in row.items()}


_NO_TEXT = (int, float, datetime)


class InferenceRecord(BaseModel):
    """One served prediction of the sentiment model (kind ``sentiment``) or of any pyfunc model (kind ``model``,
    one row per input row), or one RAG query (kind ``rag``)."""

    timestamp: datetime = Field(default_factory=lambda: datetime.now(UTC))
    request_id: str
    trace_id: str = Field(description="32 hex digits; empty string when tracing is off")
    endpoint: str = Field(description="e.g. /predict, /v2/models/sentiment/infer, grpc:ModelInfer, /rag/query")
    protocol: Literal["rest", "grpc"]
    kind: Literal["sentiment", "rag", "model"]
    model_name: str
    model_version: str
    input_text: str | None = Field(None, description="the text or question, after redaction (keep/hash/drop)")
    label: str | None = None
    score: float | None = None
    latency_ms: float
    retrieved_ids: list[str] | None = None
    retrieved_scores: list[float] | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    generator: str | None = None
    generator_model: str | None = None
    inputs: dict[str, Any] | None = Field(None, description="a pyfunc row's inputs; strings redacted like text")
    outputs: Any = Field(None, description="a pyfunc row's prediction: a value, a list, or outputs by name")
    role: str | None = Field(None, description="the alias the version answered under (serve or shadow alias)")
    shadow: bool = Field(False, description="scored in the shadow of a served request; its answer went to nobody")


def create_engine(url: str) -> sa.Engine:
    """An engine for ``url`` with the table created; SQLite in WAL mode so readers never block the writer."""
    # hide_parameters: a failed insert's message would otherwise carry the rows, request text included, into the logs.
    engine = sa.create_engine(url, future=True, hide_parameters=True)
    if engine.dialect.name == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _wal(connection: object, _: object) -> None:
            cursor = connection.cursor()  # type: ignore[attr-defined]
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

    metadata.create_all(engine)
    _add_missing_columns(engine)
    return engine


def _add_missing_columns(engine: sa.Engine) -> None:
    """Bring a log table made by an older Vigil up to date: add the columns it lacks (all nullable), keep its rows.

    Two processes may migrate at once (the API worker and a job); the loser's ALTER fails on a column the winner
    has just added, and the table is as wanted either way.
    """
    present = {column["name"] for column in sa.inspect(engine).get_columns(inference_log.name)}
    for column in inference_log.columns:
        if column.name in present:
            continue
        kind = column.type.compile(dialect=engine.dialect)
        try:
            with engine.begin() as connection:
                connection.execute(sa.text(f'ALTER TABLE {inference_log.name} ADD COLUMN "{column.name}" {kind}'))
        except sa.exc.DBAPIError:
            if column.name not in {c["name"] for c in sa.inspect(engine).get_columns(inference_log.name)}:
                raise


def read_frame(
    engine: sa.Engine,
    *,
    kind: str | None = None,
    model_name: str | None = None,
    model_version: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
    shadow: bool | None = False,
) -> pd.DataFrame:
    """Rows of the log as a DataFrame, oldest first, filtered by kind, model, version and time window.

    Served rows only by default; ``shadow=True``: the shadow rows only; None: both.
    """
    query = sa.select(inference_log).order_by(inference_log.c.timestamp, inference_log.c.id)
    if shadow is not None:
        query = shadow_only(query) if shadow else served_only(query)
    if kind:
        query = query.where(inference_log.c.kind == kind)
    if model_name:
        query = query.where(inference_log.c.model_name == model_name)
    if model_version:
        query = query.where(inference_log.c.model_version == model_version)
    if since:
        query = query.where(inference_log.c.timestamp >= since)
    if until:
        query = query.where(inference_log.c.timestamp < until)
    if limit:
        query = query.limit(limit)
    with engine.connect() as connection:
        frame = pd.read_sql(query, connection)
    if not frame.empty:
        frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    return frame
