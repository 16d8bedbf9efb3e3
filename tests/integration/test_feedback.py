"""Feedback by request id on the session's `vigil serve`, and `vigil monitor quality` computed from it."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
from mlflow import MlflowClient
from sklearn.metrics import accuracy_score, f1_score

from tests.conftest import wait_until
from tests.integration.conftest import INGEST_TOKEN, MODEL, Server, VigilEnv
from training.data import load_sentiment

AUTH = {"Authorization": f"Bearer {INGEST_TOKEN}"}


def labelled_texts(count: int) -> list[tuple[str, str]]:
    frame, _ = load_sentiment()
    rows = random.Random(5).sample(range(len(frame)), count)
    labels = ("negative", "positive")
    return [(str(frame.iloc[i]["text"]), labels[int(frame.iloc[i]["label"])]) for i in rows]


def test_labels_posted_by_request_id_give_the_live_quality_of_the_answers(server: Server, vigil_env: VigilEnv,
                                                                           tmp_path: Path) -> None:
    started = datetime.now(UTC) - timedelta(seconds=1)
    sent = labelled_texts(24)
    answered: list[tuple[str, str, str]] = []  # request id, answer, truth
    with httpx.Client(base_url=server.http, timeout=30) as client:
        for text, truth in sent:
            response = client.post("/predict", json={"text": text})
            assert response.status_code == 200, response.text
            body = response.json()
            answered.append((body["request_id"], body["predictions"][0]["label"], truth))

        # One at a time for the first half (right after the answers: the log row may not be written yet)...
        for request_id, _, truth in answered[:12]:
            response = client.post("/feedback", json={"request_id": request_id, "label": truth}, headers=AUTH)
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "recorded"
            assert response.json()["model"]["name"] == MODEL
        # ...the rest in bulk from a file, with an id nobody was served: reported, and the batch goes in.
        labels = tmp_path / "labels.csv"
        labels.write_text("request_id,label\n" + "".join(f"{rid},{truth}\n" for rid, _, truth in answered[12:])
                          + "nobody,positive\n")
        sent_file = vigil_env.run("feedback", "send", str(labels), "--url", server.http, extra_env=server.env,
                                  check=False)
        assert sent_file.returncode == 1, sent_file.stdout + sent_file.stderr
        assert "12 recorded, 0 unchanged, 1 refused" in sent_file.stdout

        first_id, _, first_truth = answered[0]
        again = client.post("/feedback", json={"request_id": first_id, "label": first_truth}, headers=AUTH)
        assert again.json()["status"] == "unchanged" and again.json()["revisions"] == 1
        assert client.post("/feedback", json={"request_id": "no-such-request", "label": "positive"},
                           headers=AUTH).status_code == 404
        refused = client.post("/feedback", json={"request_id": first_id, "label": "neutral"}, headers=AUTH)
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid_label"
        assert client.post("/feedback", json={"request_id": first_id, "label": "positive"}).status_code == 401

    result = vigil_env.run("monitor", "quality", "--model", MODEL, "--since", started.isoformat(), "--json", "-",
                           extra_env=server.env)
    quality = json.loads(result.stdout)
    assert quality["model"] == MODEL
    (version,) = quality["versions"]
    truths = [truth for _, _, truth in answered]
    answers = [answer for _, answer, _ in answered]
    assert version["requests"] == len(sent) and version["labelled"] == len(sent)
    assert version["accuracy"] == accuracy_score(truths, answers)
    assert abs(version["macro_f1"] - f1_score(truths, answers, average="macro")) < 1e-9

    # What production taught, as a dataset: every labelled text with its true label.
    exported = tmp_path / "labelled.csv"
    vigil_env.run("feedback", "export", MODEL, "--since", started.isoformat(), "--out", str(exported),
                  extra_env=server.env)
    table = pd.read_csv(exported)
    assert sorted(zip(table["text"], table["label"], strict=True)) == sorted(sent)


def test_feedback_on_a_kept_trace_is_attached_to_it_in_mlflow(server: Server, registry_client: MlflowClient) -> None:
    trace_id = f"{0xFEED0001:032x}"
    response = httpx.post(f"{server.http}/predict", json={"text": "Works exactly as described."},
                          headers={"traceparent": f"00-{trace_id}-{0xF00D:016x}-01"}, timeout=30)
    assert response.status_code == 200
    posted = httpx.post(f"{server.http}/feedback", headers=AUTH, timeout=30,
                        json={"request_id": response.json()["request_id"], "label": "positive"})
    assert posted.status_code == 200, posted.text

    def assessed() -> list[Any] | None:
        try:
            trace = registry_client.get_trace(f"tr-{trace_id}")
        except Exception:
            return None
        return [a for a in trace.info.assessments if a.name == "label"]

    (assessment,) = wait_until(assessed, timeout=30, interval=0.5, what="the label on the request's trace")
    assert assessment.value == "positive"
