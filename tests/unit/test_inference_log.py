"""The inference-log writer against SQLite files in tmp_path."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
import stat
import threading
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY

from telemetry.inference_log import InferenceLogWriter
from telemetry.records import InferenceRecord, read_frame
from telemetry.redaction import text_digest
from tests.conftest import wait_until
from vigil.settings import Settings


def record(index: int, text: str = "the battery lasts for days") -> InferenceRecord:
    return InferenceRecord(
        request_id=f"req-{index}", trace_id=f"{index:032x}", endpoint="/predict", protocol="rest",
        kind="sentiment", model_name="sentiment", model_version="2", input_text=text, label="positive",
        score=0.97, latency_ms=3.5,
    )


def rows(url: str) -> list[dict[str, object]]:
    # A plain engine: the test reads, and must not race the writer to create the table.
    if not Path(url.removeprefix("sqlite:///")).exists():
        return []
    engine = sa.create_engine(url)
    try:
        if not sa.inspect(engine).has_table("inference_log"):
            return []
        return read_frame(engine).to_dict("records")  # type: ignore[return-value]
    finally:
        engine.dispose()


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'log' / 'inference.db'}"


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_every_row_is_written_exactly_once(url: str) -> None:
    writes_before = counter("vigil_inference_log_writes_total")
    writer = InferenceLogWriter(url, batch_size=64, flush_seconds=0.05)
    assert all(writer.log(record(i)) for i in range(500))
    assert writer.close(timeout=30)
    assert counter("vigil_inference_log_writes_total") - writes_before == 500
    assert REGISTRY.get_sample_value("vigil_inference_log_queue_depth") == 0.0
    written = rows(url)
    assert sorted(r["request_id"] for r in written) == sorted(f"req-{i}" for i in range(500))
    assert (writer.written, writer.dropped) == (500, 0)
    first = next(r for r in written if r["request_id"] == "req-7")
    assert (first["trace_id"], first["model_version"], first["label"]) == (f"{7:032x}", "2", "positive")


def test_rows_are_flushed_on_time_without_close(url: str) -> None:
    writer = InferenceLogWriter(url, batch_size=1000, flush_seconds=0.1)
    for i in range(3):
        writer.log(record(i))
    wait_until(lambda: len(rows(url)) == 3, timeout=10, what="a timed flush")
    writer.close()


def test_a_full_batch_is_written_before_the_flush_interval(url: str) -> None:
    # An hour between timed flushes: only the batch size can have woken the writer.
    writer = InferenceLogWriter(url, batch_size=5, flush_seconds=3600)
    for i in range(5):
        writer.log(record(i))
    wait_until(lambda: writer.written == 5, timeout=10, what="a batch-size flush")
    assert sorted(r["request_id"] for r in rows(url)) == [f"req-{i}" for i in range(5)]
    writer.log(record(5))
    assert writer.close(timeout=30)
    assert writer.written == 6


@pytest.mark.parametrize(("redaction", "expected"), [
    ("keep", "the battery lasts for days"),
    ("hash", "sha256:" + hashlib.sha256(b"the battery lasts for days").hexdigest()),
    ("drop", None),
])
def test_redaction(url: str, redaction: str, expected: str | None) -> None:
    writer = InferenceLogWriter(url, redaction=redaction)  # type: ignore[arg-type]
    writer.log(record(1))
    writer.close()
    (row,) = rows(url)
    assert row["input_text"] == expected


def test_close_writes_everything_queued(url: str) -> None:
    # Neither size nor time would flush these: only close() does.
    closed_before = counter("vigil_inference_log_drops_total", reason="closed")
    writer = InferenceLogWriter(url, batch_size=100_000, flush_seconds=3600)
    for i in range(1000):
        writer.log(record(i))
    assert writer.close(timeout=30)
    assert len(rows(url)) == 1000
    assert writer.log(record(1001)) is False
    assert writer.dropped == 1
    assert counter("vigil_inference_log_drops_total", reason="closed") - closed_before == 1


def test_a_full_queue_drops_and_counts_without_waiting(url: str) -> None:
    drops_before = counter("vigil_inference_log_drops_total", reason="queue_full")
    writer = InferenceLogWriter(url, queue_size=5, batch_size=1, flush_seconds=0.05)
    writer.log(record(0))
    wait_until(lambda: writer.written == 1, timeout=10, what="the table to exist")
    # Another connection holds the write lock, so the writer's next insert waits and the queue fills up.
    blocker = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        writer.log(record(1))
        wait_until(lambda: writer.queued == 0, timeout=10, what="the writer to take the row")
        accepted = [writer.log(record(i)) for i in range(2, 7)]
        refused = [writer.log(record(i)) for i in range(7, 17)]
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert accepted == [True] * 5
    assert refused == [False] * 10
    assert writer.close(timeout=30)
    assert (writer.written, writer.dropped) == (7, 10)
    assert len(rows(url)) == 7
    assert counter("vigil_inference_log_drops_total", reason="queue_full") - drops_before == 10


def test_threads_and_event_loops_log_concurrently(url: str) -> None:
    writer = InferenceLogWriter(url, batch_size=50, flush_seconds=0.05)

    def from_thread(offset: int) -> None:
        for i in range(200):
            writer.log(record(offset + i))

    async def from_loop() -> None:
        for i in range(200):
            assert writer.log(record(10_000 + i))
            await asyncio.sleep(0)

    threads = [threading.Thread(target=from_thread, args=(n * 1000,)) for n in range(4)]
    for thread in threads:
        thread.start()
    asyncio.run(from_loop())
    for thread in threads:
        thread.join()
    assert writer.close(timeout=30)
    ids = [r["request_id"] for r in rows(url)]
    assert len(ids) == len(set(ids)) == 1000


def test_from_settings_writes_under_vigil_home(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, home=tmp_path / "home", inference_log_redaction="drop")  # type: ignore[call-arg]
    writer = InferenceLogWriter.from_settings(settings)
    assert writer.redaction == "drop"
    writer.log(record(1))
    writer.close()
    assert (tmp_path / "home" / "inference_log.db").exists()
    (row,) = rows(settings.inference_log_sqlalchemy_url)
    assert row["input_text"] is None


def test_an_unreachable_database_never_blocks_logging(tmp_path: Path) -> None:
    # A directory where the database file should be: every connection fails, log() still answers at once.
    (tmp_path / "db").mkdir()
    failed_before = counter("vigil_inference_log_drops_total", reason="write_error")
    writer = InferenceLogWriter(f"sqlite:///{tmp_path / 'db'}", queue_size=10, flush_seconds=0.05)
    assert writer.log(record(1)) is True
    writer.close(timeout=30)
    assert writer.written == 0
    assert writer.dropped == 1
    assert counter("vigil_inference_log_drops_total", reason="write_error") - failed_before == 1


def test_a_log_made_before_pyfunc_rows_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    database = tmp_path / "old.db"
    with sqlite3.connect(database) as old:  # the table as Vigil made it before the inputs/outputs columns
        old.execute("CREATE TABLE inference_log (id INTEGER PRIMARY KEY, timestamp DATETIME NOT NULL, "
                    "request_id VARCHAR(64) NOT NULL, trace_id VARCHAR(32) NOT NULL, endpoint VARCHAR(128) NOT NULL, "
                    "protocol VARCHAR(8) NOT NULL, kind VARCHAR(16) NOT NULL, model_name VARCHAR(128) NOT NULL, "
                    "model_version VARCHAR(32) NOT NULL, input_text TEXT, label VARCHAR(32), score FLOAT, "
                    "latency_ms FLOAT NOT NULL, retrieved_ids JSON, retrieved_scores JSON, prompt_tokens INTEGER, "
                    "completion_tokens INTEGER, total_tokens INTEGER, generator VARCHAR(64), "
                    "generator_model VARCHAR(128))")
        old.execute("INSERT INTO inference_log (timestamp, request_id, trace_id, endpoint, protocol, kind, "
                    "model_name, model_version, input_text, label, score, latency_ms) VALUES "
                    "('2026-12-01 10:00:00', 'old-1', '', '/predict', 'rest', 'sentiment', 'sentiment', '1', "
                    "'kept', 'positive', 0.9, 3.0)")
    url = f"sqlite:///{database}"
    writer = InferenceLogWriter(url, flush_seconds=0.05, redaction="hash")
    writer.log(InferenceRecord(request_id="new-1", trace_id="", endpoint="/v2/models/tips-tip/infer",
                               protocol="rest", kind="model", model_name="tips-tip", model_version="2",
                               latency_ms=1.0, inputs={"day": "Sun", "total_bill": 16.99}, outputs=1.01))
    assert writer.close(timeout=10)

    logged = rows(url)
    assert [row["request_id"] for row in logged] == ["old-1", "new-1"]
    assert (logged[0]["input_text"], logged[0]["label"], logged[0]["inputs"]) == ("kept", "positive", None)
    digest = "sha256:" + hashlib.sha256(b"Sun").hexdigest()  # string inputs are redacted like request text
    assert logged[1]["inputs"] == {"day": digest, "total_bill": 16.99} and logged[1]["outputs"] == 1.01


def test_nul_and_control_characters_are_replaced_in_the_text_and_inside_json(url: str) -> None:
    # NUL would make PostgreSQL refuse the row (text and JSON alike); tab, newline and carriage return are text.
    text = "nul\x00 bell\x07 escape\x1b[31m del\x7f surrogate\ud800 tab\tnewline\ncr\r end"
    writer = InferenceLogWriter(url, flush_seconds=0.05)
    writer.log(InferenceRecord(
        request_id="req-control", trace_id="", endpoint="/v2/models/notes/infer", protocol="rest", kind="model",
        model_name="notes", model_version="1", input_text=text, latency_ms=1.0,
        inputs={"note": "a\x00b", "tags": ["x\x01", "ok"], "nested": {"k\x00ey": "v\x02"}, "count": 3},
        outputs={"summary": "fine\x00", "score": 0.5},
    ))
    assert writer.close(timeout=30)
    assert (writer.written, writer.dropped) == (1, 0)
    (row,) = rows(url)
    assert row["input_text"] == "nul� bell� escape�[31m del� surrogate� tab\tnewline\ncr\r end"
    assert row["inputs"] == {"note": "a�b", "tags": ["x�", "ok"], "nested": {"k�ey": "v�"}, "count": 3}
    assert row["outputs"] == {"summary": "fine�", "score": 0.5}


def test_a_hashed_text_is_the_digest_of_what_the_request_carried(url: str) -> None:
    # The span of the same request carries text_digest of the raw text; the log row must match it.
    writer = InferenceLogWriter(url, redaction="hash")
    writer.log(record(1, text="nul\x00 inside"))
    assert writer.close(timeout=30)
    (row,) = rows(url)
    assert row["input_text"] == text_digest("nul\x00 inside")


def test_a_row_the_database_refuses_is_dropped_alone_and_logged_once_with_its_request_id(
    url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    bad_before = counter("vigil_inference_log_drops_total", reason="bad_row")
    # A model that answers numpy scalars: JSON cannot serialise its output, so the database never gets that row.
    refused = InferenceRecord(
        request_id="req-numpy", trace_id="", endpoint="/v2/models/notes/infer", protocol="rest", kind="model",
        model_name="notes", model_version="1", input_text="private words", latency_ms=1.0,
        inputs={"note": "private words"}, outputs=np.float32(0.5),
    )
    # One batch: neither size nor time flushes before close().
    writer = InferenceLogWriter(url, batch_size=100, flush_seconds=3600)
    for index in range(6):
        writer.log(refused if index == 2 else record(index))
    with caplog.at_level(logging.INFO, logger="telemetry.inference_log"):
        assert writer.close(timeout=30)
    assert sorted(r["request_id"] for r in rows(url)) == ["req-0", "req-1", "req-3", "req-4", "req-5"]
    assert (writer.written, writer.dropped) == (5, 1)
    assert counter("vigil_inference_log_drops_total", reason="bad_row") - bad_before == 1
    # Once, naming the request, without retries (trying again cannot help) and without the row's text.
    (message,) = [r.getMessage() for r in caplog.records if r.name == "telemetry.inference_log"]
    assert "req-numpy" in message and "not JSON serializable" in message
    assert "private words" not in caplog.text


def test_the_log_file_and_the_folders_the_writer_creates_are_private(tmp_path: Path) -> None:
    database = tmp_path / "home" / "logs" / "inference.db"
    writer = InferenceLogWriter(f"sqlite:///{database}", flush_seconds=0.05)
    writer.log(record(1))
    assert writer.close(timeout=30)
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    assert stat.S_IMODE(database.parent.stat().st_mode) == stat.S_IMODE((tmp_path / "home").stat().st_mode) == 0o700


def test_empty_json_columns_are_null_in_the_database_and_none_when_read(url: str) -> None:
    # SQL NULL rather than the JSON text `null`: no serialisation per empty column and row, the same None for readers.
    writer = InferenceLogWriter(url, flush_seconds=0.05)
    writer.log(record(1))
    writer.log(InferenceRecord(
        request_id="req-rag", trace_id="", endpoint="/rag/query", protocol="rest", kind="rag", model_name="embedder",
        model_version="1", input_text="why?", latency_ms=2.0, retrieved_ids=["d1"], retrieved_scores=[0.5],
    ))
    assert writer.close(timeout=30)
    with sqlite3.connect(url.removeprefix("sqlite:///")) as connection:
        stored = dict(connection.execute(
            "SELECT request_id, retrieved_ids IS NULL AND retrieved_scores IS NULL AND inputs IS NULL "
            "AND outputs IS NULL FROM inference_log").fetchall())
    assert stored == {"req-1": 1, "req-rag": 0}
    read = {row["request_id"]: row for row in rows(url)}
    assert read["req-1"]["retrieved_ids"] is None and read["req-1"]["outputs"] is None
    assert read["req-rag"]["retrieved_ids"] == ["d1"] and read["req-rag"]["retrieved_scores"] == [0.5]
