"""Held-out sentences, a model's rows, and the replay client, against real local HTTP servers."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from evaluations.cli import app as eval_app
from evaluations.replay import choose, held_out, model_rows, pick_rows, replay, replay_rows
from evaluations.scoring import dataframe_split
from service.invocations import parse_invocation
from tests.conftest import free_port
from tests.support.local_http import respond, serve_in_thread, stop_serving
from training.data import SplitParams, limit_stratified, load_sentiment, split_sentiment
from vigil.errors import VigilError


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


# --- any served model: rows to /models/NAME/invocations --------------------------------------------------------------


def _strict_json(raw: bytes) -> Any:
    """Parse as the JSON standard does: NaN and Infinity, which Python's json would accept, are refused."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(raw, parse_constant=refuse)


def _by_lunch_or_dinner(row: dict[str, Any]) -> Any:
    return "Dinner" if row["total_bill"] > 20 else "Lunch"


class FakeModelServer:
    """A real HTTP server answering ``/models/NAME/invocations`` like Vigil: MLflow's ``{"predictions": ...}`` with
    the answering version and a request id, or Vigil's error body — 422 for a row whose ``size`` is missing, 404 for
    a model it does not serve. ``predict`` makes one row's prediction; ``shape`` how the predictions are written."""

    def __init__(self, name: str, predict: Callable[[dict[str, Any]], Any] = _by_lunch_or_dinner,
                 shape: str = "values") -> None:
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []  # every request's, answered or not
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                with owner.lock:
                    owner.paths.append(self.path)
                if self.path != f"/models/{name}/invocations":
                    respond(self, 404, json.dumps({"error": {"code": "model_not_found",
                                                             "message": f"no model at {self.path}"}}).encode())
                    return
                body = _strict_json(raw)
                with owner.lock:
                    owner.bodies.append(body)
                split = body["dataframe_split"]
                rows = [dict(zip(split["columns"], values, strict=True)) for values in split["data"]]
                missing = [i for i, row in enumerate(rows) if row.get("size") is None]
                if missing:
                    error = {"code": "invalid_input", "message": f"column 'size' has no value in row {missing[0]}"}
                    respond(self, 422, json.dumps({"error": error}).encode())
                    return
                predictions = [predict(row) for row in rows]
                written: Any = predictions
                if shape == "records":
                    written = [{"out": p, "other": 0} for p in predictions]
                elif shape == "columns":
                    written = {"out": predictions, "other": [0] * len(predictions)}
                answer = {"predictions": written, "model": {"name": name, "version": "2"}, "request_id": "r-1"}
                respond(self, 200, json.dumps(answer).encode())

            def log_message(self, *args: object) -> None:
                pass

        self.server = serve_in_thread(Handler, "fake-model-server")
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeModelServer:
        return self

    def __exit__(self, *exc: object) -> None:
        stop_serving(self.server)

    def sent_rows(self) -> list[dict[str, Any]]:
        return [dict(zip(body["dataframe_split"]["columns"], values, strict=True))
                for body in self.bodies for values in body["dataframe_split"]["data"]]


TIPS = pd.DataFrame({
    "total_bill": [16.99, 0.1 + 0.2, 21.01, 1e-12, 23.68],
    "size": [2.0, 3.0, math.nan, 4.0, 2.0],  # row 2 has none: the server refuses the request holding it
    "day": ["Sun", "Sun", "Sat", "Thur", "Sun"],
    "smoker": [np.bool_(True), np.bool_(False), np.bool_(True), np.bool_(False), np.bool_(False)],
})


def test_the_body_is_the_same_table_to_mlflows_own_parser() -> None:
    rows = TIPS.assign(day=["Sun", "Sun", None, "Thur", "Sun"], party=[1, 2, 3, 4, 5])
    parsed = parse_invocation(dataframe_split(rows), "application/json")  # what Vigil and `mlflow models serve` run
    pd.testing.assert_frame_equal(parsed, rows)  # dtypes, exact floats, NaN and None included


def test_replay_rows_sends_dataframe_split_in_batches_and_counts_what_came_back() -> None:
    done: list[int] = []
    with FakeModelServer("tips-time") as server:
        result = replay_rows(TIPS, "tips-time", server.url + "/", rows_per_request=2, concurrency=2,
                             on_done=done.append)

    assert all(set(body) == {"dataframe_split"} for body in server.bodies)
    assert all(body["dataframe_split"]["columns"] == list(TIPS.columns) for body in server.bodies)
    assert sorted(len(body["dataframe_split"]["data"]) for body in server.bodies) == [1, 2, 2]
    sent = sorted(server.sent_rows(), key=lambda row: TIPS["total_bill"].tolist().index(row["total_bill"]))
    assert [row["total_bill"] for row in sent] == TIPS["total_bill"].tolist()  # exact, 1e-12 and 0.1 + 0.2 too
    assert sent[2]["size"] is None  # NaN went as null; the body parsed as strict JSON
    assert [row["smoker"] for row in sent] == [True, False, True, False, False]  # numpy booleans as JSON ones

    assert (result.sent, result.ok, result.failed, result.exit_code) == (3, 2, 1, 1)
    assert (result.rows_sent, result.rows_answered) == (5, 3)
    assert result.labels == {"Lunch": 2, "Dinner": 1}  # rows 0, 1 and 4: the refused request held rows 2 and 3
    assert result.served_by == {"tips-time v2": 3} and result.values == []
    assert result.errors == {"HTTP 422: column 'size' has no value in row 0": 1}
    assert done == [2, 4, 5]


@pytest.mark.parametrize("shape", ["values", "records", "columns"])
def test_replay_rows_keeps_a_regressors_values_in_any_form_mlflow_writes(shape: str) -> None:
    rows = TIPS.dropna().reset_index(drop=True)
    with FakeModelServer("tips-tip", predict=lambda row: row["total_bill"] * 0.15, shape=shape) as server:
        result = replay_rows(rows, "tips-tip", server.url, rows_per_request=3, concurrency=1)
    assert len(server.bodies) == 2 and result.exit_code == 0
    assert result.values == pytest.approx([bill * 0.15 for bill in rows["total_bill"]])
    assert not result.labels and result.served_by == {"tips-tip v2": 4}


def test_replay_rows_counts_integer_and_boolean_predictions_as_labels() -> None:
    rows = TIPS.dropna()
    with FakeModelServer("big-party", predict=lambda row: row["size"] >= 3) as server:
        booleans = replay_rows(rows, "big-party", server.url)
    with FakeModelServer("party-size", predict=lambda row: int(row["size"])) as server:
        integers = replay_rows(rows, "party-size", server.url)
    assert booleans.labels == {"True": 2, "False": 2} and booleans.values == []
    assert integers.labels == {"2": 2, "3": 1, "4": 1} and integers.values == []


def test_replay_rows_reports_a_model_that_is_not_served_and_a_service_that_is_down() -> None:
    with FakeModelServer("tips-time") as server:
        unknown = replay_rows(TIPS.head(2), "tips-timer", server.url)
    assert (unknown.failed, unknown.rows_answered, unknown.exit_code) == (2, 0, 2)
    assert unknown.errors == {"HTTP 404: no model at /models/tips-timer/invocations": 2}
    down = replay_rows(TIPS.head(1), "tips-time", f"http://127.0.0.1:{free_port()}", timeout=2)
    assert down.exit_code == 2 and down.errors == {"ConnectError": 1}


def test_model_rows_drop_the_target_and_refuse_one_the_file_lacks(tmp_path: Path) -> None:
    csv, parquet = tmp_path / "tips.csv", tmp_path / "tips.parquet"
    TIPS.assign(time="Dinner").to_csv(csv, index=False)
    TIPS.assign(time="Dinner").to_parquet(parquet, index=False)
    for path in (csv, parquet):
        assert list(model_rows(path, "time").columns) == list(TIPS.columns)
        assert list(model_rows(path).columns) == [*TIPS.columns, "time"]
    with pytest.raises(VigilError, match=r"no column 'tip' .*its columns: total_bill, size, day, smoker, time"):
        model_rows(csv, "tip")


def test_pick_rows_sends_every_row_once_unless_told_otherwise() -> None:
    rows = pd.DataFrame({"x": range(10)})
    assert pick_rows(rows, None, None)["x"].tolist() == list(range(10))  # the file, row for row
    shuffled = pick_rows(rows, None, seed=4)["x"].tolist()
    assert sorted(shuffled) == list(range(10)) and shuffled != list(range(10))
    assert shuffled == pick_rows(rows, None, seed=4)["x"].tolist()
    assert len(set(pick_rows(rows, 7, seed=1)["x"])) == 7  # no repeats while there are rows enough
    assert len(pick_rows(rows, 25, seed=1)) == 25


def _tips_file(tmp_path: Path) -> Path:
    path = tmp_path / "tips-time-test.csv"
    TIPS.dropna().assign(time=["Dinner", "Lunch", "Lunch", "Dinner"]).to_csv(path, index=False)
    return path


def test_eval_replay_command_sends_a_files_rows_to_a_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_HOME", str(tmp_path))
    data = _tips_file(tmp_path)
    with FakeModelServer("tips-time") as server:
        result = CliRunner().invoke(eval_app, ["replay", "--model", "tips-time", "--data", str(data), "--target",
                                               "time", "--n", "6", "--rows-per-request", "4", "--seed", "2",
                                               "--endpoint", server.url])
    assert result.exit_code == 0, result.output
    assert sorted(len(body["dataframe_split"]["data"]) for body in server.bodies) == [2, 4]
    assert all(body["dataframe_split"]["columns"] == list(TIPS.columns) for body in server.bodies)  # no "time"
    assert "6 rows answered" in result.output and "tips-time v2 (6 rows)" in result.output
    assert "Dinner" in result.output and "Lunch" in result.output


def test_eval_replay_command_names_refused_rows_and_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_HOME", str(tmp_path))
    data = tmp_path / "tips-tip-test.csv"
    TIPS.assign(tip=1.0).to_csv(data, index=False)
    with FakeModelServer("tips-tip", predict=lambda row: row["total_bill"] * 0.15) as server:
        result = CliRunner().invoke(eval_app, ["replay", "--model", "tips-tip", "--data", str(data), "--target",
                                               "tip", "--endpoint", server.url])
    assert result.exit_code == 1, result.output
    assert len(server.bodies) == 5 and "4 rows answered, 1 requests failed" in result.output
    assert "HTTP 422: column 'size' has no value in row 0 ×1" in result.output
    assert "mean " in result.output and "of 4 values" in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["--domain", "imdb", "--model", "tips-time", "--data", "{data}"], "not both"),
    ([], "give --domain amazon|imdb|yelp"),
    (["--model", "tips-time"], "--model and --data go together"),
    (["--data", "{data}"], "--model and --data go together"),
    (["--domain", "imdb", "--target", "time"], "--target and --rows-per-request go with --model"),
    (["--model", "sentiment", "--data", "{data}"], "replay it with --domain"),
    (["--model", "tips-time", "--data", "{data}", "--target", "tip"], "no column 'tip'"),
    (["--model", "tips-time", "--data", "{missing}"], "no such file"),
])
def test_eval_replay_command_refuses_unclear_input_with_exit_2(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIGIL_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    files = {"data": str(_tips_file(tmp_path)), "missing": str(tmp_path / "absent.csv")}
    with FakeModelServer("tips-time") as server:
        result = CliRunner().invoke(eval_app, ["replay", *(arg.format(**files) for arg in args), "--endpoint",
                                               server.url])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())  # rich wraps long lines
    assert server.paths == []  # refused before anything was sent, to /predict or a model
