"""Feedback by request id on the session's `vigil serve`, and `vigil monitor quality` computed from it, with a
challenger shadowing every request (the session's server runs with VIGIL_SHADOW_PERCENT=100)."""

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

from telemetry.records import create_engine, read_frame
from tests.conftest import wait_until
from tests.integration.conftest import INGEST_TOKEN, MODEL, Server, VigilEnv, register_weak
from training.data import load_sentiment

AUTH = {"Authorization": f"Bearer {INGEST_TOKEN}"}


def labelled_texts(count: int) -> list[tuple[str, str]]:
    frame, _ = load_sentiment()
    rows = random.Random(5).sample(range(len(frame)), count)
    labels = ("negative", "positive")
    return [(str(frame.iloc[i]["text"]), labels[int(frame.iloc[i]["label"])]) for i in rows]


def shadow_state(server: Server) -> dict[str, Any]:
    state: dict[str, Any] = httpx.get(f"{server.http}/status", timeout=10).json()["models"][MODEL]["shadow"]
    return state


def give_a_weak_challenger(registry_client: MlflowClient, weak_trained: str) -> str:
    """A weak version, trained on 40 sentences for one epoch (the session's `weak_trained`, copied), becomes the
    challenger as training makes every new version; made after a copy of `sentiment` v2 exists as this model's v2
    (the version the serving tests move the champion to by number), so that stays a good one."""
    versions = {v.version for v in registry_client.search_model_versions(f"name='{MODEL}'")}
    if "2" not in versions:
        registry_client.copy_model_version("models:/sentiment/2", MODEL)
    register_weak(registry_client, weak_trained, MODEL)
    return str(registry_client.get_model_version_by_alias(MODEL, "challenger").version)


def shadow_rows(server: Server, since: datetime) -> pd.DataFrame:
    engine = create_engine(f"sqlite:///{Path(server.env['VIGIL_HOME']) / 'inference_log.db'}")
    try:
        return read_frame(engine, kind="sentiment", model_name=MODEL, since=since, shadow=True)
    finally:
        engine.dispose()


def test_labels_posted_by_request_id_give_the_live_quality_of_the_answers_and_of_the_shadow(
        server: Server, vigil_env: VigilEnv, registry_client: MlflowClient, weak_trained: str, tmp_path: Path
) -> None:
    champion = str(registry_client.get_model_version_by_alias(MODEL, "champion").version)
    assert shadow_state(server)["scoring"] is False  # no challenger yet: every request shadowed, none scored
    challenger = give_a_weak_challenger(registry_client, weak_trained)
    try:
        wait_until(lambda: shadow_state(server)["version"] == challenger and shadow_state(server)["scoring"],
                   timeout=180, interval=0.5, what=f"the shadow to follow {MODEL}@challenger (v{challenger})")
        labelled = check_the_loop(server, vigil_env, tmp_path, champion, challenger)
        check_promotion_on_live_evidence(server, vigil_env, registry_client, tmp_path, champion, challenger,
                                         labelled)
    finally:
        registry_client.delete_registered_model_alias(MODEL, "challenger")
    wait_until(lambda: shadow_state(server)["version"] is None, timeout=60, what="the shadow to let go")


def check_the_loop(server: Server, vigil_env: VigilEnv, tmp_path: Path, champion: str, challenger: str) -> int:
    """The Done-when of live quality; returns how many requests were labelled (each also scored in the shadow)."""
    started = datetime.now(UTC) - timedelta(seconds=1)
    sent = labelled_texts(24)
    answered: list[tuple[str, str, str]] = []  # request id, answer, truth
    with httpx.Client(base_url=server.http, timeout=30) as client:
        for text, truth in sent:
            response = client.post("/predict", json={"text": text})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["model"]["version"] == champion  # the shadow answers nobody
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

    # Every request was scored in the shadow, off its path: one row each, with its request id and the challenger's
    # version and role.
    ids = [request_id for request_id, _, _ in answered]

    def all_shadowed() -> list[pd.DataFrame]:
        rows = shadow_rows(server, started)
        rows = rows[rows["request_id"].isin(ids)] if not rows.empty else rows
        return [rows] if len(rows) == len(ids) else []

    (shadowed,) = wait_until(all_shadowed, timeout=120, what="a shadow row for every request")
    shadowed = shadowed.set_index("request_id")
    assert set(shadowed["model_version"]) == {challenger} and set(shadowed["role"]) == {"challenger"}
    shadow_answers = [str(shadowed.loc[request_id, "label"]) for request_id in ids]
    counts = shadow_state(server)["counts"]
    assert counts["scored"] >= len(ids) and counts["failed"] == 0, counts

    result = vigil_env.run("monitor", "quality", "--model", MODEL, "--since", started.isoformat(), "--json", "-",
                           extra_env=server.env)
    quality = json.loads(result.stdout)
    assert quality["model"] == MODEL
    served, shadow = quality["versions"]
    truths = [truth for _, _, truth in answered]
    answers = [answer for _, answer, _ in answered]
    assert (served["version"], served["role"]) == (champion, "champion")
    assert served["requests"] == len(sent) and served["labelled"] == len(sent)
    assert served["accuracy"] == accuracy_score(truths, answers)
    assert abs(served["macro_f1"] - f1_score(truths, answers, average="macro")) < 1e-9
    assert served["agreement_with_champion"] is None
    assert (shadow["version"], shadow["role"]) == (challenger, "challenger")
    assert shadow["requests"] == len(sent) and shadow["labelled"] == len(sent)
    agreed = sum(a == b for a, b in zip(shadow_answers, answers, strict=True)) / len(answers)
    assert abs(shadow["agreement_with_champion"] - agreed) < 1e-9
    assert shadow["accuracy"] == accuracy_score(truths, shadow_answers)
    assert abs(shadow["macro_f1"] - f1_score(truths, shadow_answers, average="macro")) < 1e-9

    # What production taught, as a dataset: every labelled text with its true label.
    exported = tmp_path / "labelled.csv"
    vigil_env.run("feedback", "export", MODEL, "--since", started.isoformat(), "--out", str(exported),
                  extra_env=server.env)
    table = pd.read_csv(exported)
    assert sorted(zip(table["text"], table["label"], strict=True)) == sorted(sent)
    return len(sent)


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


def check_promotion_on_live_evidence(server: Server, vigil_env: VigilEnv, registry_client: MlflowClient,
                                     tmp_path: Path, champion: str, challenger: str, labelled: int) -> None:
    """`vigil models promote --evidence live` judges the shadow on the requests just labelled: refused as no
    evidence under the shipped minimum count, then judged on them — and refused by a floor no model meets — under a
    policy with a smaller one, with the pairs and the verdict recorded in MLflow and the champion left in place."""
    log = {"VIGIL_INFERENCE_LOG_URL": f"sqlite:///{Path(server.env['VIGIL_HOME']) / 'inference_log.db'}"}
    promote = ("models", "promote", MODEL, "--version", challenger, "--evidence", "live", "--reason", "live test")
    too_few = vigil_env.run(*promote, check=False, extra_env=log)
    assert too_few.returncode == 1
    assert f"{labelled} labelled request(s) were answered by both v{challenger} and v{champion}" in " ".join(
        too_few.stdout.split()), too_few.stdout
    tags = registry_client.get_model_version(MODEL, challenger).tags
    assert tags["vigil.champion.live_evaluation_verdict"] == "not-enough-evidence"

    policy = tmp_path / "live-policy.toml"
    policy.write_text(f"[live]\nmin_labelled = {labelled}\n[live.rules.macro_f1]\nminimum = 1.01\n")
    judged = vigil_env.run(*promote, check=False, extra_env={**log, "VIGIL_PROMOTION_POLICY": str(policy)})
    assert judged.returncode == 1 and "below the minimum" in judged.stdout, judged.stdout
    tags = registry_client.get_model_version(MODEL, challenger).tags
    assert tags["vigil.champion.live_evaluation_verdict"] == "fail"
    run = registry_client.get_run(tags["vigil.champion.live_evaluation_run_id"])
    assert run.data.tags["vigil.eval.trigger"] == "gate:champion:live" and run.data.params["rows"] == str(labelled)
    pairs = json.loads(Path(registry_client.download_artifacts(run.info.run_id, "live_pairs.json",
                                                               str(tmp_path))).read_text())
    assert len(pairs["request_ids"]) == labelled
    refusal = registry_client.get_run(tags["vigil.champion.refusal_run_id"])
    assert refusal.data.tags["vigil.evidence"] == "live"
    assert refusal.data.tags["vigil.live_evaluation_run_id"] == run.info.run_id
    assert str(registry_client.get_model_version_by_alias(MODEL, "champion").version) == champion
