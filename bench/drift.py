"""Does the drift job detect drift, and how fast is it? Detection and false-alarm rates, and 100 000 rows.

    .venv/bin/python bench/drift.py [--version V] [--windows 10] [--window-rows 200] [--scale-rows 100000]

Needs the embedded MLflow server with a trained sentiment version (`make run`); no service. The version runs
in-process over held-out sentences (not in its training split, rebuilt from the run's seed, domains and limit),
and the rows are written to a fresh inference log with :mod:`telemetry.records`, as the service would write them.
Then the drift job (the same function `vigil monitor drift` calls) judges each window:

- ``mixed``: held-out amazon + yelp (the training domains), ``amazon`` and ``yelp`` alone → must not be flagged;
- ``imdb`` (a domain the version never saw) → must be flagged.

The scale run writes ``--scale-rows`` rows drawn from every sentence of the three domains (2 400 distinct texts,
so the embedding sample really has to be embedded) and times the job three ways: the version's first run
(nothing cached), the steady state (the reference's vectors cached, the window's texts new) and a repeat.
Everything lands in a temporary VIGIL_HOME; only the MLflow server is shared. Results go to stdout and, with
``--out``, to a Markdown file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np
import pandas as pd

from evaluations.replay import held_out
from monitoring.drift import DriftResult, run_drift
from monitoring.embeddings import EmbeddingCache, drift_embedder
from monitoring.reference import cache_dir, resolve_version
from monitoring.window import Window
from telemetry import records
from training.data import SplitParams, load_sentiment
from vigil.mlflow_auth import authenticate_process
from vigil.settings import Settings, get_settings

START = datetime(2025, 1, 1, tzinfo=UTC)
SCENARIOS = {"mixed": ("amazon", "yelp"), "amazon": ("amazon",), "yelp": ("yelp",), "imdb": ("imdb",)}


def predictor(settings: Settings, version: str) -> Any:
    from vigil import model_cache, registry
    from vigil.sentiment_model import SentimentPyfunc, load_registered

    name = settings.sentiment_model_name
    client = registry.connect(settings.mlflow_tracking_uri)
    folder = model_cache.download_version(client, name, version, settings.model_cache_dir)
    classifier = load_registered(client, name, version, folder)  # as data, checked against its digest
    if classifier is None:
        raise SystemExit(f"{name} v{version} is not Vigil's sentiment model")

    def predict(texts: list[str]) -> pd.DataFrame:
        unique = list(dict.fromkeys(texts))
        answers = SentimentPyfunc.output_frame(classifier.predict(unique))
        answers.index = unique
        return answers.loc[texts].reset_index(drop=True)

    return predict


def rows_for(texts: list[str], answers: pd.DataFrame, start: datetime, span: timedelta, name: str,
             version: str) -> list[dict[str, Any]]:
    step = span / max(len(texts), 1)
    return [records.InferenceRecord(
        timestamp=start + i * step, request_id=f"bench-{start.timestamp():.0f}-{i}", trace_id="", endpoint="/predict",
        protocol="rest", kind="sentiment", model_name=name, model_version=version, input_text=text,
        label=str(answers["label"].iloc[i]), score=float(answers["score"].iloc[i]), latency_ms=5.0,
    ).model_dump() for i, text in enumerate(texts)]


def write(settings: Settings, rows: list[dict[str, Any]]) -> None:
    engine = records.create_engine(settings.inference_log_sqlalchemy_url)
    with engine.begin() as connection:
        for start in range(0, len(rows), 20_000):
            connection.execute(records.inference_log.insert(), rows[start : start + 20_000])
    engine.dispose()


def check_scores(result: DriftResult) -> dict[str, float | None]:
    return {check.name: check.score for check in result.checks}


def detection(settings: Settings, version: str, split: SplitParams, windows: int, window_rows: int) -> list[dict]:
    predict = predictor(settings, version)
    pools = {domain: held_out(domain, split) for domain in ("amazon", "yelp", "imdb")}
    print("held-out sentences: " + ", ".join(f"{d} {len(p)}" for d, p in pools.items()), flush=True)
    every_text = pd.concat(pools.values())["text"].tolist()
    answers = predict(every_text)
    answers.index = every_text
    outcomes = []
    slot = 0
    for scenario, domains in SCENARIOS.items():
        pool = pd.concat([pools[d] for d in domains]).reset_index(drop=True)
        for i in range(windows):
            rng = np.random.default_rng(1000 * slot + i)
            picked = rng.choice(len(pool), size=window_rows, replace=window_rows > len(pool))
            texts = [str(pool["text"].iloc[j]) for j in picked]
            start = START + timedelta(hours=slot)
            write(settings, rows_for(texts, answers.loc[texts].reset_index(drop=True), start, timedelta(minutes=50),
                                     settings.sentiment_model_name, version))
            result = run_drift(settings, Window(start, start + timedelta(hours=1)), version=version,
                               send_alerts=False, html="never")
            outcomes.append({"scenario": scenario, "window": i, "status": result.status.value,
                             "seconds": round(result.seconds, 2), **check_scores(result),
                             "drifted": ",".join(result.drifted)})
            print(json.dumps(outcomes[-1]), flush=True)
            slot += 1
    return outcomes


def scale(settings: Settings, version: str, rows: int) -> dict[str, Any]:
    """One window of ``rows`` rows, judged three ways: first run of the version, steady state, repeat."""
    predict = predictor(settings, version)
    everything, _ = load_sentiment()
    texts_all = everything["text"].tolist()
    answers = predict(texts_all)
    answers.index = texts_all
    rng = np.random.default_rng(7)
    texts = [texts_all[i] for i in rng.integers(0, len(texts_all), size=rows)]
    start = START + timedelta(days=30)
    began = time.perf_counter()
    write(settings, rows_for(texts, answers.loc[texts].reset_index(drop=True), start, timedelta(minutes=55),
                             settings.sentiment_model_name, version))
    write_seconds = time.perf_counter() - began
    window = Window(start, start + timedelta(hours=1))
    keep = {"status", "rows", "embedded_rows", "seconds", "timings"}
    # First run of a version: the reference and the window's sample are both embedded.
    first = run_drift(settings, window, version=version, send_alerts=False)
    # Steady state: the reference's vectors are cached (every run after the version's first has them), the
    # window's texts are new.
    cache_file = settings.home / "monitoring" / "embeddings.sqlite"
    cache_file.unlink()
    reference = pd.read_parquet(cache_dir(settings, settings.sentiment_model_name, version) / "reference.parquet")
    EmbeddingCache(cache_file, drift_embedder(settings)).embed(reference["text"].astype(str).tolist())
    steady = run_drift(settings, window, version=version, send_alerts=False)
    # The same window again (overlapping windows of a schedule): every vector cached.
    repeat = run_drift(settings, window, version=version, send_alerts=False)
    return {"rows": rows, "distinct_texts": len(set(texts)), "write_seconds": round(write_seconds, 1),
            "sample": settings.drift_embedding_sample,
            "first": first.model_dump(mode="json", include=keep),
            "steady": steady.model_dump(mode="json", include=keep),
            "repeat": repeat.model_dump(mode="json", include=keep), "verdict": first.message}


def rates(outcomes: list[dict]) -> dict[str, Any]:
    flagged = Counter(o["scenario"] for o in outcomes if o["status"] == "drift")
    total = Counter(o["scenario"] for o in outcomes)
    in_domain = [s for s in SCENARIOS if s != "imdb"]
    return {
        "detection_rate": flagged["imdb"] / total["imdb"] if total["imdb"] else None,
        "false_alarm_rate": sum(flagged[s] for s in in_domain) / max(1, sum(total[s] for s in in_domain)),
        "by_scenario": {s: f"{flagged[s]}/{total[s]}" for s in SCENARIOS},
        "insufficient": sum(o["status"] == "insufficient_data" for o in outcomes),
    }


def markdown(meta: dict[str, Any], outcomes: list[dict], summary: dict[str, Any] | None,
             scales: list[dict[str, Any]]) -> str:
    lines = [f"# Drift job: detection and speed ({meta['date']})", "",
             f"Model `{meta['model']}` v{meta['version']} (trained on {meta['domains']}, seed {meta['seed']}); "
             f"{meta['machine']}; load average at start {meta['load']}. Command: `{meta['command']}`.", ""]
    if summary:
        lines += ["## Detection", "",
                  f"{meta['windows']} windows of {meta['window_rows']} rows per scenario, each judged alone against "
                  "the version's drift reference.", "",
                  f"- **detection rate (imdb flagged): {summary['detection_rate']:.0%}**",
                  f"- **false-alarm rate (held-out amazon/yelp flagged): {summary['false_alarm_rate']:.0%}**",
                  f"- flagged by scenario: {summary['by_scenario']}", "",
                  "| scenario | flagged | label PSI (median) | descriptor share (median) "
                  "| embedding AUC (median, min–max) |",
                  "| --- | --- | --- | --- | --- |"]
        frame = pd.DataFrame(outcomes)
        for scenario in SCENARIOS:
            part = frame[frame["scenario"] == scenario]
            auc = part["text embeddings"]
            lines.append(f"| {scenario} | {summary['by_scenario'][scenario]} | "
                         f"{part['predicted label share'].median():.3f} | {part['text descriptors'].median():.2f} | "
                         f"{auc.median():.3f} ({auc.min():.3f}–{auc.max():.3f}) |")
        lines += ["", f"Median job time per window: {frame['seconds'].median():.1f} s.", ""]
    for scaled in scales:
        lines += [f"## {scaled['rows']:,} rows, embedding sample {scaled['sample']}", "",
                  f"{scaled['rows']} rows ({scaled['distinct_texts']} distinct texts) in one window, written in "
                  f"{scaled['write_seconds']} s; {scaled['first']['embedded_rows']} rows embedded "
                  "(VIGIL_DRIFT_EMBEDDING_SAMPLE).", ""]
        for key, label in (("first", "first run of the version (reference and sample embedded)"),
                           ("steady", "steady state (reference vectors cached, the window's texts new)"),
                           ("repeat", "same window again (everything cached)")):
            run = scaled[key]
            lines.append(f"- **{label}: {run['seconds']:.1f} s** — "
                         + ", ".join(f"{k} {v:.1f}s" for k, v in run["timings"].items()))
        lines += [f"- verdict: {scaled['verdict']}", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--version", help="model version (default: the serving alias)")
    parser.add_argument("--windows", type=int, default=10, help="windows per scenario")
    parser.add_argument("--window-rows", type=int, default=200)
    parser.add_argument("--scale-rows", type=int, default=100_000, help="0 skips the scale run")
    parser.add_argument("--scale-samples", type=lambda v: [int(x) for x in v.split(",")], default=[2000],
                        help="embedding sample sizes to time the scale run with, e.g. 2000,1000")
    parser.add_argument("--skip-detection", action="store_true")
    parser.add_argument("--out", type=Path, help="write the Markdown results here")
    args = parser.parse_args()
    os.environ.setdefault("DO_NOT_TRACK", "1")

    shared = get_settings()
    authenticate_process(shared)  # as every `vigil` command: this home's admin
    served, client = resolve_version(shared, shared.sentiment_model_name, args.version)
    assert client is not None
    params = client.get_run(served.run_id).data.params
    split = SplitParams.from_run_params(params, default_seed=shared.seed)
    home = Path(tempfile.mkdtemp(prefix="vigil-bench-drift-"))
    settings = shared.model_copy(update={"home": home, "inference_log_url": "", "evidently_workspace": "",
                                         "evidently_url": "", "alert_webhook": ""})
    meta = {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "model": served.model_name, "version": served.version,
            "domains": ",".join(split.domains), "seed": split.seed, "windows": args.windows,
            "window_rows": args.window_rows, "load": " / ".join(f"{x:.1f}" for x in os.getloadavg()),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "command": "python bench/drift.py " + " ".join(sys.argv[1:])}
    print(f"bench home {home}; {json.dumps(meta)}", flush=True)
    outcomes = [] if args.skip_detection else detection(settings, served.version, split, args.windows,
                                                        args.window_rows)
    summary = rates(outcomes) if outcomes else None
    if summary:
        print(json.dumps(summary), flush=True)
    scales = []
    for sample in (args.scale_samples if args.scale_rows else []):
        # A home of its own per run, so "first run" means it: nothing cached by the detection windows.
        scale_settings = settings.model_copy(update={"home": Path(tempfile.mkdtemp(prefix="vigil-bench-scale-")),
                                                     "drift_embedding_sample": sample})
        scales.append(scale(scale_settings, served.version, args.scale_rows))
        print(json.dumps(scales[-1]), flush=True)
    text = markdown(meta, outcomes, summary, scales)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
