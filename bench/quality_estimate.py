"""How far the confidence-based estimate of live quality lands from the realised figures — in domain and drifted.

    .venv/bin/python bench/quality_estimate.py [--model sentiment] [--alias champion] [--window 200] [--windows 30]

`vigil monitor quality` reports, beside the accuracy and macro-F1 of the labelled requests, what the model's own
confidence expects them to be before any label arrives (`monitoring.quality.confidence_estimate`, NannyML's CBPE).
This scores the served version once, in process, on its own held-out test split (the traffic it was trained for)
and on a domain it never saw (imdb: drifted traffic), then draws `--windows` windows of `--window` rows from each
and compares, per window, the estimate with the realised figure. Needs the embedded MLflow with the model.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from monitoring.quality import classification_figures, confidence_estimate
from training.data import SplitParams, load_sentiment, training_split
from vigil import model_cache, registry
from vigil.mlflow_auth import authenticate_process
from vigil.sentiment_model import LABELS, load_registered
from vigil.settings import get_settings


def scored(frame: pd.DataFrame, classifier: object) -> pd.DataFrame:
    predictions = classifier.predict(frame["text"].tolist())  # type: ignore[attr-defined]
    return pd.DataFrame({"truth": [LABELS[int(v)] for v in frame["label"]],
                         "prediction": [p.label for p in predictions], "score": [p.score for p in predictions]})


def windows(rows: pd.DataFrame, size: int, count: int, seed: int) -> list[dict[str, float]]:
    picker = random.Random(seed)
    measured = []
    for _ in range(count):
        window = rows.iloc[picker.sample(range(len(rows)), min(size, len(rows)))]
        accuracy, macro_f1 = classification_figures(window["truth"].tolist(), window["prediction"].tolist())
        estimated_accuracy, estimated_f1 = confidence_estimate(window["prediction"].tolist(),
                                                               window["score"].tolist(), LABELS)
        measured.append({"accuracy": accuracy, "estimated_accuracy": estimated_accuracy, "macro_f1": macro_f1,
                         "estimated_macro_f1": estimated_f1})
    return measured


def summary(name: str, rows: pd.DataFrame, measured: list[dict[str, float]]) -> dict[str, object]:
    accuracy, macro_f1 = classification_figures(rows["truth"].tolist(), rows["prediction"].tolist())
    estimated_accuracy, estimated_f1 = confidence_estimate(rows["prediction"].tolist(), rows["score"].tolist(),
                                                           LABELS)
    frame = pd.DataFrame(measured)
    accuracy_error = (frame["estimated_accuracy"] - frame["accuracy"]).to_numpy()
    f1_error = (frame["estimated_macro_f1"] - frame["macro_f1"]).to_numpy()
    return {"traffic": name, "rows": len(rows), "accuracy": accuracy, "estimated_accuracy": estimated_accuracy,
            "macro_f1": macro_f1, "estimated_macro_f1": estimated_f1,
            "window_accuracy_mae": float(np.abs(accuracy_error).mean()),
            "window_accuracy_bias": float(accuracy_error.mean()),
            "window_macro_f1_mae": float(np.abs(f1_error).mean()),
            "window_macro_f1_bias": float(f1_error.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="sentiment")
    parser.add_argument("--alias", default="champion")
    parser.add_argument("--window", type=int, default=200, help="rows per window (labelled requests)")
    parser.add_argument("--windows", type=int, default=30)
    parser.add_argument("--drifted", type=int, default=1000, help="imdb rows scored as drifted traffic")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "quality_estimate.json")
    args = parser.parse_args()

    settings = get_settings()
    authenticate_process(settings)
    client = registry.connect()
    found = registry.resolve(client, registry.ModelReference(args.model, alias=args.alias))
    folder = model_cache.download_version(client, args.model, found.version, settings.model_cache_dir)
    classifier = load_registered(client, args.model, found.version, folder)
    if classifier is None:
        raise SystemExit(f"{args.model} v{found.version} is not Vigil's sentiment model")
    run = client.get_run(found.run_id or "")
    params = SplitParams.from_run_params(run.data.params, default_seed=42)
    split, _ = training_split(params)
    unseen = [d for d in ("imdb", "amazon", "yelp") if d not in params.domains]
    drifted_source, _ = load_sentiment(domains=unseen)
    drifted = drifted_source.sample(n=min(args.drifted, len(drifted_source)), random_state=7)

    results = []
    for name, frame in ((f"held-out test split ({params.describe()})", split.test),
                        (f"drifted: {', '.join(unseen)}, never trained on", drifted)):
        rows = scored(frame, classifier)
        results.append(summary(name, rows, windows(rows, args.window, args.windows, seed=3)))

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=REPO, check=False).stdout.strip()
    record = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.machine(),
              "python": platform.python_version(), "commit": commit, "model": f"{args.model} v{found.version}",
              "window": args.window, "windows": args.windows, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    print(f"{record['model']} · {record['date']} · commit {commit} · {args.windows} windows of {args.window} rows\n")
    print("| traffic | rows | accuracy | estimated | macro-F1 | estimated | window error, accuracy (mean abs / bias) "
          "| window error, macro-F1 (mean abs / bias) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['traffic']} | {r['rows']} | {r['accuracy']:.3f} | {r['estimated_accuracy']:.3f} | "
              f"{r['macro_f1']:.3f} | {r['estimated_macro_f1']:.3f} | {r['window_accuracy_mae']:.3f} / "
              f"{r['window_accuracy_bias']:+.3f} | {r['window_macro_f1_mae']:.3f} / {r['window_macro_f1_bias']:+.3f} |")


if __name__ == "__main__":
    main()
