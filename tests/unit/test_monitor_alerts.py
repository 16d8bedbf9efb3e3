"""Alert delivery to a real local HTTP receiver: the body, a receiver that fails, a receiver that is down."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from monitoring.alerts import Alert, send_alert
from tests.conftest import free_port


class WebhookReceiver:
    """A local HTTP server in a thread that records every POSTed JSON body and answers ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.status = status
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as running:
        yield running


def _alert() -> Alert:
    return Alert(kind="drift", summary="drift detected in sentiment v3", drifted=["text embeddings"],
                 window_start=datetime(2025, 1, 1, 10, tzinfo=UTC), window_end=datetime(2025, 1, 1, 11, tzinfo=UTC),
                 model_name="sentiment", model_version="3", project="sentiment", snapshot_id="abc",
                 report="/tmp/r.html", details={"rows": 150})


def test_alert_body_reaches_the_webhook(receiver: WebhookReceiver) -> None:
    assert send_alert(_alert(), receiver.url) is True
    [body] = receiver.bodies
    received = Alert.model_validate(body)
    assert received == _alert().model_copy(update={"timestamp": received.timestamp})
    assert body["window_start"] == "2025-01-01T10:00:00Z" and body["model_version"] == "3"
    assert {"kind", "drifted", "window_start", "window_end", "model_name", "model_version", "snapshot_id",
            "report", "timestamp"} <= set(body)


def test_a_failing_webhook_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    with WebhookReceiver(status=500) as failing, caplog.at_level(logging.WARNING, "monitoring.alerts"):
        assert send_alert(_alert(), failing.url) is False
    assert "answered 500" in caplog.text


def test_a_down_webhook_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "monitoring.alerts"):
        assert send_alert(_alert(), f"http://127.0.0.1:{free_port()}/hook", timeout=2) is False
    assert "not reachable" in caplog.text


def test_no_webhook_configured_sends_nothing() -> None:
    assert send_alert(_alert(), "") is False
