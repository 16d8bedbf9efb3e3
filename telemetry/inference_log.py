"""The inference log's writer: requests hand rows to a bounded queue, one background thread writes them in batches.

A request never waits on the database: :meth:`InferenceLogWriter.log` is a non-blocking ``put_nowait`` that drops
(and counts) a row when the queue is full. The writer thread wakes every ``flush_seconds``, or as soon as
``batch_size`` rows wait, takes everything queued and inserts it with one ``executemany`` per ``batch_size`` rows;
:meth:`InferenceLogWriter.close` wakes it for a last drain, so a graceful shutdown loses nothing. Same code for
SQLite (default) and PostgreSQL by URL.

A batch is lost only when the database stays unreachable through :data:`WRITE_ATTEMPTS` tries. When instead the
database refuses a row itself (a value it cannot store), the batch is written row by row and that row alone is
dropped, counted (``vigil_inference_log_drops_total{reason="bad_row"}``) and logged with its request id.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from telemetry.records import InferenceRecord, create_engine, inference_log, storable_row
from telemetry.redaction import TEXT_REDACTIONS, TextRedaction, redact_text
from vigil.credentials import create_private_file, ensure_private_dir, mask_url
from vigil.settings import Settings, get_settings

if TYPE_CHECKING:
    from telemetry.metrics import VigilMetrics

logger = logging.getLogger(__name__)

# A failed batch is retried this many times (the database may be restarting) before its rows are given up.
WRITE_ATTEMPTS = 3
RETRY_PAUSE_SECONDS = 1.0


class InferenceLogWriter:
    """Appends :class:`~telemetry.records.InferenceRecord` rows off the request path.

    Thread-safe; :meth:`log` may be called from any thread or an event loop. :meth:`close` blocks up to its
    timeout, so from asyncio call it through ``asyncio.to_thread``.
    """

    def __init__(
        self,
        url: str,
        *,
        queue_size: int = 10_000,
        batch_size: int = 256,
        flush_seconds: float = 0.5,
        redaction: TextRedaction = "keep",
    ) -> None:
        if redaction not in TEXT_REDACTIONS:
            raise ValueError(f"redaction must be keep, hash or drop, not {redaction!r}")
        self.url = url
        self.redaction: TextRedaction = redaction
        self._batch_size = max(1, batch_size)
        self._flush_seconds = flush_seconds
        self._queue: queue.Queue[InferenceRecord] = queue.Queue(maxsize=queue_size)
        # The writer sleeps on this, not on the queue: a thread woken per row takes the GIL from the request loop
        # hundreds of times a second; woken per batch it costs the loop almost nothing.
        self._wake = threading.Event()
        # Held only around the closed check and put_nowait, so no row slips in after the final drain.
        self._accepting = threading.Lock()
        self._closed = False
        self._written = 0
        self._dropped = 0
        self._counts = threading.Lock()
        self._metrics_failed = False
        self._engine: sa.Engine | None = None  # the writer thread's alone
        self._thread = threading.Thread(target=self._run, name="vigil-inference-log", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> InferenceLogWriter:
        """A writer for ``VIGIL_INFERENCE_LOG_*`` (SQLite under ``$VIGIL_HOME`` unless a URL is set)."""
        settings = settings or get_settings()
        return cls(
            settings.inference_log_sqlalchemy_url,
            queue_size=settings.inference_log_queue_size,
            batch_size=settings.inference_log_batch_size,
            flush_seconds=settings.inference_log_flush_seconds,
            redaction=settings.inference_log_redaction,
        )

    # --- request path ------------------------------------------------------------------------------------

    def log(self, record: InferenceRecord) -> bool:
        """Queue ``record`` for writing without waiting; False when it was dropped (queue full or closed)."""
        with self._accepting:
            if self._closed:
                reason = "closed"
            else:
                try:
                    self._queue.put_nowait(record)
                except queue.Full:
                    reason = "queue_full"
                else:
                    if self._queue.qsize() >= self._batch_size and not self._wake.is_set():
                        self._wake.set()
                    return True
        self._count_dropped(1, reason)
        return False

    # --- lifecycle ---------------------------------------------------------------------------------------

    def close(self, timeout: float = 10.0) -> bool:
        """Stop accepting rows, write everything queued, and wait up to ``timeout`` s; True when all is written."""
        with self._accepting:
            already = self._closed
            self._closed = True
        self._wake.set()
        self._thread.join(timeout)
        finished = not self._thread.is_alive()
        if not finished and not already:
            logger.warning("inference log: %d rows still queued after %.1fs; they may be lost",
                           self._queue.qsize(), timeout)
        return finished

    @property
    def written(self) -> int:
        return self._written

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    # --- writer thread -----------------------------------------------------------------------------------

    def _run(self) -> None:
        self._engine = self._connect()
        try:
            while True:
                self._wake.wait(self._flush_seconds)
                self._wake.clear()
                # Rows are queued under the same lock that sets the flag, so once it is seen, this drain is the last.
                closing = self._closed
                rows = [self._row(record) for record in self._drain()]
                for start in range(0, len(rows), self._batch_size):
                    self._write(rows[start:start + self._batch_size])
                self._set_queue_depth()
                if closing:
                    break
        except Exception:  # a bug here must not take the process down, but it must be visible
            logger.exception("inference-log writer stopped unexpectedly")
        finally:
            if self._engine is not None:
                self._engine.dispose()

    def _drain(self) -> list[InferenceRecord]:
        records: list[InferenceRecord] = []
        while True:
            try:
                records.append(self._queue.get_nowait())
            except queue.Empty:
                return records

    def _row(self, record: InferenceRecord) -> dict[str, Any]:
        row = record.model_dump()
        row["input_text"] = redact_text(record.input_text, self.redaction)
        if record.inputs is not None and self.redaction != "keep":
            row["inputs"] = {name: redact_text(value, self.redaction) if isinstance(value, str) else value
                             for name, value in record.inputs.items()}
        # After redaction: a hashed text stays the digest of what the request carried, as on its span.
        return storable_row(row)

    def _connect(self) -> sa.Engine | None:
        error: Exception | None = None
        # Two tries: workers starting together race to create the table, and the loser's second try succeeds.
        for _ in range(2):
            try:
                url = sa.make_url(self.url)
                if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
                    # Request text: readable by the owner only (SQLite gives its WAL files the same mode).
                    database = Path(url.database)
                    ensure_private_dir(database.parent)
                    create_private_file(database)
                return create_engine(self.url)
            except Exception as failure:
                error = failure
        # Retried at the next write: the database may come up after the service.
        logger.warning("inference log: cannot open %s yet (%s)", mask_url(self.url), error)
        return None

    def _write(self, rows: list[dict[str, Any]]) -> None:
        """Insert ``rows`` in one transaction; when the database refuses one of them, insert them one by one, so
        that only the refused rows are lost."""
        try:
            self._insert(rows)
            return
        except _Refused:
            pass
        for index, row in enumerate(rows):
            try:
                written = self._insert([row])
            except _Refused as refused:
                self._count_dropped(1, "bad_row")
                logger.warning("inference log: dropped the row of request %s, which the database refuses: %s",
                               row.get("request_id"), refused)
                continue
            if not written:  # the database went away meanwhile; the rows after this one would fare no better
                self._count_dropped(len(rows) - index - 1, "write_error")
                return

    def _insert(self, rows: list[dict[str, Any]]) -> bool:
        """Insert ``rows`` in one transaction, trying again while the database is unreachable; False when it gave
        up (the rows are counted as dropped). Raises :class:`_Refused` at once when the rows themselves are refused:
        trying again cannot help."""
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            if self._engine is None:
                self._engine = self._connect()
            if self._engine is not None:
                try:
                    with self._engine.begin() as connection:
                        connection.execute(inference_log.insert(), rows)
                except Exception as error:
                    if _refuses_the_rows(error):
                        raise _Refused(error) from error
                    logger.warning("inference log: writing %d rows failed (attempt %d/%d): %s",
                                   len(rows), attempt, WRITE_ATTEMPTS, error)
                else:
                    self._count_written(len(rows))
                    return True
            if attempt < WRITE_ATTEMPTS and not self._closed:
                time.sleep(RETRY_PAUSE_SECONDS)
        self._count_dropped(len(rows), "write_error")
        logger.error("inference log: gave up on %d rows", len(rows))
        return False

    # --- counters ----------------------------------------------------------------------------------------

    def _count_written(self, count: int) -> None:
        with self._counts:
            self._written += count
        self._metric(lambda m: m.inference_log_writes.inc(count))

    def _count_dropped(self, count: int, reason: str) -> None:
        with self._counts:
            self._dropped += count
        self._metric(lambda m: m.inference_log_drops.labels(reason=reason).inc(count))

    def _set_queue_depth(self) -> None:
        depth = self._queue.qsize()
        self._metric(lambda m: m.inference_log_queue_depth.set(depth))

    def _metric(self, update: Callable[[VigilMetrics], object]) -> None:
        # The log's own counters stay exact; Prometheus is best effort and must never fail a request.
        try:
            from telemetry.metrics import get_metrics

            update(get_metrics())
        except Exception:
            if not self._metrics_failed:
                self._metrics_failed = True
                logger.warning("inference log: metrics unavailable", exc_info=True)


class _Refused(Exception):
    """The database refused the rows themselves; the message is the database's (or the driver's), without the rows."""

    def __init__(self, error: Exception) -> None:
        cause = error.orig if isinstance(error, sa.exc.StatementError) and error.orig is not None else error
        super().__init__(f"{type(cause).__name__}: {cause}"[:300])


def _refuses_the_rows(error: Exception) -> bool:
    """Whether ``error`` is about the rows (a value the database or its driver cannot take), not about reaching the
    database (down, restarting, locked, a connection lost): only the latter is worth trying again."""
    if isinstance(error, sa.exc.DBAPIError):
        # IntegrityError: a constraint (NOT NULL, a length on PostgreSQL); DataError: a value the column's type refuses
        # (NUL in text, NaN in JSON on PostgreSQL). A lost connection is neither, whatever the driver calls it.
        return isinstance(error, sa.exc.IntegrityError | sa.exc.DataError) and not error.connection_invalidated
    # Raised while binding the values, before the database is asked: JSON that cannot be serialised (wrapped in a
    # StatementError), or a driver refusing a string (psycopg2's NUL, sqlite3's lone surrogate: a ValueError).
    return isinstance(error, sa.exc.StatementError | TypeError | ValueError)
