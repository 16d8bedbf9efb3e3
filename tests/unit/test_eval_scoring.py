"""Model references, evaluation data, the scoring loop, and the HTTP client against a real local server."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from evaluations.datasets import from_file, held_out_split, resolve_data
from evaluations.scoring import (
    BatchOutput,
    EndpointPredictor,
    positive_probability,
    score,
)
from tests.support.local_http import respond, serve_in_thread, stop_serving
from training.data import SplitParams, fingerprint, limit_stratified, load_sentiment, split_sentiment
from vigil.errors import VigilError
from vigil.registry import ModelReference, RegisteredVersion


@pytest.mark.parametrize(("text", "expected"), [
    ("sentiment@challenger", ModelReference("sentiment", alias="challenger")),
    ("sentiment/3", ModelReference("sentiment", version="3")),
    ("models:/other@champion", ModelReference("other", alias="champion")),
    ("champion", ModelReference("default", alias="champion")),
    ("7", ModelReference("default", version="7")),
])
def test_model_references(text: str, expected: ModelReference) -> None:
    assert ModelReference.parse(text, default_name="default") == expected


def test_test_split_is_the_one_training_made() -> None:
    params = SplitParams(seed=11, domains=("amazon", "yelp"), limit=600)
    frame, _ = load_sentiment(domains=["amazon", "yelp"])
    expected = split_sentiment(limit_stratified(frame, 600, 11), 11).test
    data = resolve_data("test", [params])
    assert data.frame["text"].tolist() == expected["text"].tolist()
    assert data.fingerprint == fingerprint(expected)
    assert "seed 11, limit 600" in data.description


def test_versions_trained_differently_share_only_rows_neither_saw() -> None:
    good = SplitParams(seed=11, limit=600)
    weak = SplitParams(seed=42, limit=40)
    data = held_out_split([good, weak])
    seen = _trained_on(good) | _trained_on(weak)
    assert len(data.frame) > 100
    assert not set(data.frame["text"]) & seen
    assert held_out_split([good, good]).frame.equals(held_out_split([good]).frame)


def _trained_on(params: SplitParams) -> set[str]:
    frame, _ = load_sentiment(domains=list(params.domains))
    split = split_sentiment(limit_stratified(frame, params.limit, params.seed) if params.limit else frame, params.seed)
    return set(split.train["text"]) | set(split.validation["text"])


def test_out_of_domain_data_and_limit() -> None:
    data = resolve_data("imdb", [SplitParams(seed=42)], limit=100, seed=42)
    assert len(data.frame) == 100 and data.domains == ["imdb"]
    assert set(data.frame["label"]) == {0, 1}
    assert not data.notes
    trained = resolve_data("imdb", [SplitParams(seed=42, domains=("imdb",))], limit=10)
    assert "not out-of-domain" in trained.notes[0]


def test_a_sentence_label_file(tmp_path: Path) -> None:
    path = tmp_path / "support.tsv"
    path.write_text("Works great.\t1\nbroken line\nAwful, returned it.\t0\nFine\t1\n")
    data = from_file(path)
    assert data.frame["label"].tolist() == [1, 0, 1]
    assert data.domains == ["support"]
    assert "1 malformed" in data.notes[0]
    with pytest.raises(VigilError, match="no data file"):
        resolve_data(str(tmp_path / "missing.tsv"), [])


class Recorder:
    """A predictor that answers by a rule and records the order it was called in."""

    source = "in-process"

    def __init__(self, name: str, calls: list[str], version: str = "1") -> None:
        self.name, self.calls, self.version = name, calls, version

    def warm_up(self, texts: Sequence[str]) -> None:
        self.calls.append(f"{self.name}:warm")

    def predict(self, texts: Sequence[str]) -> BatchOutput:
        self.calls.append(self.name)
        labels = ["positive" if "good" in t else "negative" for t in texts]
        return BatchOutput(labels, [0.8] * len(texts), "m", self.version)


def test_scoring_interleaves_models_and_alternates_who_goes_first() -> None:
    calls: list[str] = []
    texts = ["good", "bad", "good one", "bad one", "good again"]
    progress: list[tuple[str, int, int]] = []
    first, second = score([Recorder("a", calls), Recorder("b", calls)], texts, batch_size=2,
                          progress=lambda phase, done, total: progress.append((phase, done, total)))
    assert calls == ["a:warm", "b:warm", "a", "b", "b", "a", "a", "b"]
    assert first.y_pred.tolist() == [1, 0, 1, 0, 1]
    assert np.allclose(first.p_positive, [0.8, 0.2, 0.8, 0.2, 0.8])
    assert first.batch_sizes == [2, 2, 1] and len(first.batch_seconds) == 3
    assert second.labels == first.labels
    assert progress[-1] == ("scoring", 5, 5)


def test_repeated_timing_mirrors_the_order_and_keeps_the_first_answers() -> None:
    calls: list[str] = []
    first, _ = score([Recorder("a", calls), Recorder("b", calls)], ["good", "bad", "good"], batch_size=2, repeats=2)
    assert calls == ["a:warm", "b:warm", "a", "b", "b", "a", "b", "a", "a", "b"]
    assert first.labels == ["positive", "negative", "positive"] and len(first.batch_seconds) == 2


def test_positive_probability_from_label_and_score() -> None:
    assert positive_probability("positive", 0.9) == 0.9
    assert positive_probability("negative", 0.9) == pytest.approx(0.1)


class _StandIn(BaseHTTPRequestHandler):
    """A service answering the /predict contract with fixed rules, and recording request sizes."""

    sizes: ClassVar[list[int]] = []
    version = "4"
    overloaded_answers = 0  # how many requests to refuse first with 503 + Retry-After, as a busy batcher does

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        texts = body["texts"]
        type(self).sizes.append(len(texts))
        if type(self).overloaded_answers > 0:
            type(self).overloaded_answers -= 1
            refusal = {"error": {"code": "overloaded", "message": "the model service is at capacity"}}
            self.send_response(503)
            self.send_header("Retry-After", "0")
            payload = json.dumps(refusal).encode()
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        if self.path != "/predict" or len(texts) > 256:
            self.send_response(413)
            self.end_headers()
            return
        answer = {
            "predictions": [{"label": "positive" if "good" in t else "negative", "score": 0.75} for t in texts],
            "model": {"name": "sentiment", "version": type(self).version},
        }
        payload = json.dumps(answer).encode()
        respond(self, 200, payload)

    def log_message(self, *args: object) -> None:  # keep test output clean
        return None


@pytest.fixture()
def stand_in() -> Iterator[str]:
    _StandIn.sizes = []
    _StandIn.overloaded_answers = 0
    server = serve_in_thread(_StandIn, "vigil-predict-stand-in")
    yield f"http://127.0.0.1:{server.server_address[1]}"
    stop_serving(server)


def test_endpoint_client_chunks_requests_and_checks_the_version(stand_in: str) -> None:
    texts = [f"good {i}" if i % 3 else f"bad {i}" for i in range(600)]
    expected = RegisteredVersion("sentiment", "4", "champion", None)
    (scored,) = score([EndpointPredictor(stand_in, expected=expected)], texts, batch_size=256)
    assert _StandIn.sizes == [256, 256, 88]
    assert scored.model_version == "4"
    assert scored.y_pred.tolist() == [int(i % 3 != 0) for i in range(600)]
    assert np.allclose(scored.p_positive, [0.75 if i % 3 else 0.25 for i in range(600)])

    with pytest.raises(VigilError, match=r"serves sentiment v4, not sentiment v5 \(@champion\)"):
        EndpointPredictor(stand_in, expected=RegisteredVersion("sentiment", "5", "champion", None)).predict(["good"])


def test_endpoint_errors_are_readable(stand_in: str) -> None:
    with pytest.raises(VigilError, match="answered 413"):
        EndpointPredictor(stand_in + "/nothing-here").predict(["good"])
    with pytest.raises(VigilError, match="not reachable"):
        EndpointPredictor("http://127.0.0.1:9").predict(["good"])


def test_an_overloaded_service_is_asked_again_a_bounded_number_of_times(stand_in: str) -> None:
    _StandIn.overloaded_answers = 2
    output = EndpointPredictor(stand_in).predict(["good", "bad"])
    assert output.labels == ["positive", "negative"] and _StandIn.sizes == [2, 2, 2]

    _StandIn.sizes, _StandIn.overloaded_answers = [], 10
    with pytest.raises(VigilError, match=r"answered 503: overloaded: the model service is at capacity"):
        EndpointPredictor(stand_in).predict(["good"])
    assert len(_StandIn.sizes) == 4  # the first request and three retries

