"""Does a user model's drift job tell shifted traffic from in-distribution traffic, and how fast is it on 100 000 rows?

    .venv/bin/python bench/model_drift.py [--windows 20] [--window-rows 200] [--scale-rows 100000]

Fully in-process: no MLflow server, no service. The two tips models of `examples/train_tips.py` are trained here
exactly as the script trains them (same split: test_size 0.25, random_state 42, stratified on `time` for the
classifier); each model's training split is its reference and its predictions on it the reference predictions, as
`vigil models reference` and the job's prediction cache would give. Then :func:`monitoring.model_drift.judge` (what
`vigil monitor drift --model NAME` computes once the rows are read) judges windows of ``--window-rows`` rows drawn
with replacement from:

- ``held-out``: the test split (61 rows), in distribution → must not be flagged (several seeds: false alarms);
- sub-populations of all 244 rows: ``dinner``, ``lunch``, ``weekend`` (Sat/Sun), ``parties>=4``, and the held-out
  rows with ``bills x1.5`` (total_bill and tip scaled) → realistic shifts, should be flagged; ``bills x1.1`` is a
  small shift, reported to show where detection ends.

The scale run writes ``--scale-rows`` rows of the regressor to a SQLite inference log with :mod:`telemetry.records`
under a temporary VIGIL_HOME, as the service writes them, and times :func:`monitoring.model_drift.judge_window` (the
job after the reference is loaded: read, decode, report, snapshot) per phase. Results go to stdout as Markdown and
to ``bench/out/model_drift.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pandas as pd
from mlflow.models import infer_signature
from sklearn.model_selection import train_test_split

from monitoring.model_drift import AttachedReference, judge, judge_window
from monitoring.reference import ServedVersion
from monitoring.window import Window
from telemetry import records
from tests.support.tips_example import CLASSIFIER, REGRESSOR, example
from vigil.settings import Settings
from vigil.signature import signature_spec

START = datetime(2025, 1, 1, tzinfo=UTC)
IN_DISTRIBUTION = "held-out"


def scenarios(tips: pd.DataFrame, test: pd.DataFrame) -> dict[str, pd.DataFrame]:
    scaled = {factor: test.assign(total_bill=test["total_bill"] * factor, tip=test["tip"] * factor)
              for factor in (1.1, 1.5)}
    return {IN_DISTRIBUTION: test, "dinner": tips[tips["time"] == "Dinner"], "lunch": tips[tips["time"] == "Lunch"],
            "weekend": tips[tips["day"].isin(["Sat", "Sun"])], "parties>=4": tips[tips["size"] >= 4],
            "bills x1.5": scaled[1.5], "bills x1.1": scaled[1.1]}


def prepared(name: str, tips: pd.DataFrame) -> tuple[Any, AttachedReference, pd.DataFrame, list[str]]:
    """The model trained as the example trains it, its reference (training split) and its held-out rows."""
    module = example()
    train = module.train_time_classifier if name == CLASSIFIER else module.train_tip_regressor
    features = module.TIME_FEATURES if name == CLASSIFIER else module.TIP_FEATURES
    model, x_train, _ = train(tips)
    _, test = train_test_split(tips, test_size=module.TEST_SIZE, random_state=module.SEED,
                               stratify=tips["time"] if name == CLASSIFIER else None)
    reference_frame = x_train.reset_index(drop=True)
    spec = signature_spec(infer_signature(x_train, model.predict(x_train)))
    predictions = pd.Series(model.predict(reference_frame))
    return model, AttachedReference(reference_frame, predictions, spec, f"bench-{name}"), test, features


def traffic(model: Any, pool: pd.DataFrame, features: list[str], rows: int, seed: int) -> pd.DataFrame:
    """``rows`` rows drawn with replacement from ``pool``, with the model's predictions: what the log would hold."""
    picked = pool[features].sample(n=rows, replace=True, random_state=seed).reset_index(drop=True)
    return picked.assign(prediction=model.predict(picked))


def detection(windows: int, window_rows: int) -> list[dict[str, Any]]:
    tips = example().load_tips()
    outcomes = []
    window = Window(START, START + timedelta(hours=1))
    for name in (CLASSIFIER, REGRESSOR):
        model, reference, test, features = prepared(name, tips)
        for scenario, pool in scenarios(tips, test).items():
            for seed in range(windows):
                current = traffic(model, pool, features, window_rows, seed)
                found = judge(current, reference.frame, reference.predictions, reference.spec, window,
                              model_name=name, model_version="bench")
                outcomes.append({"model": name, "scenario": scenario, "seed": seed, "pool": len(pool),
                                 "status": found["status"].value,
                                 **{check.name: check.score for check in found["checks"]},
                                 "threshold": next(c.threshold for c in found["checks"]
                                                   if c.method.startswith("Wasserstein")),
                                 "drifted": ",".join(found["drifted"])})
        print(f"{name}: {windows} windows x {len(scenarios(tips, test))} scenarios judged", file=sys.stderr)
    return outcomes


def scale(rows: int) -> dict[str, Any]:
    tips = example().load_tips()
    model, reference, test, features = prepared(REGRESSOR, tips)
    home = Path(tempfile.mkdtemp(prefix="vigil-bench-model-drift-"))
    settings = Settings(_env_file=None, home=home, inference_log_url="", evidently_workspace="", evidently_url="",
                        alert_webhook="")
    current = traffic(model, test, features, rows, seed=7)
    inputs = current[features].to_dict(orient="records")
    step = timedelta(minutes=55) / rows
    began = time.perf_counter()
    logged = [records.InferenceRecord(
        timestamp=START + i * step, request_id=f"bench-{i}", trace_id="", endpoint=f"/models/{REGRESSOR}/invocations",
        protocol="rest", kind="model", model_name=REGRESSOR, model_version="1", latency_ms=2.0, inputs=inputs[i],
        outputs=float(current["prediction"].iloc[i])).model_dump() for i in range(rows)]
    engine = records.create_engine(settings.inference_log_sqlalchemy_url)
    with engine.begin() as connection:
        for first in range(0, rows, 20_000):
            connection.execute(records.inference_log.insert(), logged[first:first + 20_000])
    engine.dispose()
    write_seconds = time.perf_counter() - began
    served = ServedVersion(REGRESSOR, "1", "bench-run", "champion")
    window = Window(START, START + timedelta(hours=1))
    runs = {policy: judge_window(settings, served, window, reference, send_alerts=False, html=policy)
            for policy in ("on_alert", "always")}
    return {"rows": rows, "write_seconds": round(write_seconds, 1), "verdict": runs["on_alert"].message,
            **{policy: {"seconds": round(run.seconds, 2), "timings": run.timings} for policy, run in runs.items()}}


def markdown(meta: dict[str, Any], outcomes: list[dict[str, Any]], scaled: dict[str, Any] | None) -> str:
    lines = [f"# Drift of the user's own models: detection and speed ({meta['date']})", "",
             f"{meta['machine']}; load average at start {meta['load']}. Command: `{meta['command']}`. "
             f"{meta['windows']} windows of {meta['window_rows']} rows per scenario (drawn with replacement from the "
             "pool), each judged alone against the model's training split.", ""]
    if outcomes:
        frame = pd.DataFrame(outcomes)
        for name in (CLASSIFIER, REGRESSOR):
            part = frame[frame["model"] == name]
            columns = [c for c in part.columns if c.startswith("input ") and part[c].notna().any()]
            lines += [f"## {name}", "",
                      "| scenario | pool rows | flagged | inputs share (median, max) | prediction (median, max) | "
                      "column scores, median (max) |", "| --- | --- | --- | --- | --- | --- |"]
            for scenario, rows in part.groupby("scenario", sort=False):
                flagged = int((rows["status"] == "drift").sum())
                per_column = ", ".join(f"{c.removeprefix('input ')} {rows[c].median():.2f} ({rows[c].max():.2f})"
                                       for c in columns)
                lines.append(f"| {scenario} | {rows['pool'].iloc[0]} | {flagged}/{len(rows)} | "
                             f"{rows['inputs'].median():.2f}, {rows['inputs'].max():.2f} | "
                             f"{rows['prediction'].median():.3f}, {rows['prediction'].max():.3f} | {per_column} |")
            thresholds = part.groupby("scenario", sort=False)["threshold"].median()
            lines += ["", "Numeric-column threshold per scenario (3.0 x the noise of its distinct rows; categorical "
                      "2.0 x): " + ", ".join(f"{s} {t:.3f}" for s, t in thresholds.items()), ""]
    if scaled:
        lines += [f"## {scaled['rows']:,} logged rows of {REGRESSOR}", "",
                  f"Written in {scaled['write_seconds']} s (not part of the job).", ""]
        for policy in ("on_alert", "always"):
            run = scaled[policy]
            lines.append(f"- **html={policy}: {run['seconds']:.1f} s** — "
                         + ", ".join(f"{k} {v:.2f}s" for k, v in run["timings"].items()))
        lines += [f"- verdict: {scaled['verdict']}", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=20, help="windows (seeds) per scenario")
    parser.add_argument("--window-rows", type=int, default=200)
    parser.add_argument("--scale-rows", type=int, default=100_000, help="0 skips the scale run")
    parser.add_argument("--skip-detection", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "model_drift.json")
    args = parser.parse_args()
    os.environ.setdefault("DO_NOT_TRACK", "1")
    meta = {"date": f"{datetime.now(UTC):%Y-%m-%d}", "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "load": f"{os.getloadavg()[0]:.1f}", "windows": args.windows, "window_rows": args.window_rows,
            "command": "python " + " ".join(["bench/model_drift.py", *sys.argv[1:]])}
    outcomes = [] if args.skip_detection else detection(args.windows, args.window_rows)
    scaled = scale(args.scale_rows) if args.scale_rows else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "detection": outcomes, "scale": scaled}, indent=2, default=str))
    sys.stdout.write(markdown(meta, outcomes, scaled) + "\n")


if __name__ == "__main__":
    main()
