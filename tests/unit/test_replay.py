"""Held-out sentences and the replay client, against a real local HTTP server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from evaluations.cli import app as eval_app
from evaluations.replay import choose, held_out, replay
from tests.conftest import free_port
from tests.support.local_http import respond
from training.data import SplitParams, limit_stratified, load_sentiment, split_sentiment


@pytest.mark.parametrize("limit", [0, 300])
def test_held_out_sentences_are_not_in_the_training_split(limit: int) -> None:
    split = SplitParams(seed=11, domains=("amazon", "yelp"), limit=limit or None)
    trained, _ = load_sentiment(domains=["amazon", "yelp"])
    if limit:
        trained = limit_stratified(trained, limit, 11)
    train_texts = set(split_sentiment(trained, 11).train["text"])

    for domain in ("amazon", "yelp"):
        sentences = held_out(domain, split)
        assert len(sentences) > 100 and set(sentences["domain"]) == {domain}
        assert not set(sentences["text"]) & train_texts
    everything, _ = load_sentiment(domains=["imdb"])
    assert len(held_out("imdb", split)) == len(everything)  # never trained on: all of it is held out


def test_choose_samples_and_only_repeats_when_it_must() -> None:
    sentences = pd.DataFrame({"text": [f"s{i}" for i in range(10)]})
    assert len(set(choose(sentences, 10, seed=1))) == 10
    assert len(choose(sentences, 25, seed=1)) == 25
    assert choose(sentences, 5, seed=3) == choose(sentences, 5, seed=3)


class FakeService:
    """A real HTTP server answering /predict like Vigil does; ``fail_every`` makes some answers 503."""

    def __init__(self, fail_every: int = 0) -> None:
        self.texts: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.texts.append(body["text"])
                if fail_every and len(owner.texts) % fail_every == 0:
                    self.send_response(503)
                    self.end_headers()
                    return
                answer = {"predictions": [{"label": "positive" if "good" in body["text"] else "negative",
                                           "score": 0.9}], "model": {"name": "sentiment", "version": "4"}}
                payload = json.dumps(answer).encode()
                respond(self, 200, payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeService:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def service() -> Iterator[FakeService]:
    with FakeService() as running:
        yield running


def test_replay_posts_every_text_and_counts_the_answers(service: FakeService) -> None:
    texts = ["good phone", "bad food", "good service", "meh"]
    done: list[int] = []
    result = replay(texts, service.url + "/", concurrency=2, on_done=done.append)
    assert sorted(service.texts) == sorted(texts)
    assert (result.sent, result.ok, result.failed, result.exit_code) == (4, 4, 0, 0)
    assert result.labels == {"positive": 2, "negative": 2}
    assert result.served_by == {"sentiment v4": 4} and done[-1] == 4


def test_replay_reports_failures() -> None:
    with FakeService(fail_every=2) as flaky:
        result = replay(["a", "b", "c", "d"], flaky.url, concurrency=1)
    assert (result.ok, result.failed, result.exit_code) == (2, 2, 1)
    assert result.errors == {"HTTP 503": 2}
    down = replay(["a"], f"http://127.0.0.1:{free_port()}", timeout=2)
    assert down.exit_code == 2 and down.errors == {"ConnectError": 1}


def test_eval_replay_command_sends_held_out_imdb_sentences(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with FakeService() as service:
        result = CliRunner().invoke(eval_app, ["replay", "--domain", "imdb", "--n", "5", "--endpoint", service.url,
                                                "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert len(service.texts) == 5 and "5 answered" in result.output and "sentiment v4" in result.output
    assert "assumed split" in result.output  # MLflow is down: settings' seed and amazon,yelp
