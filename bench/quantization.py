"""Classifier ceiling: float vs dynamic INT8 ONNX graphs, with and without length bucketing, in one process.

    make bench-quantization   (or: .venv/bin/python bench/quantization.py [--seconds 3] [--rounds 2])

Needs the embedded MLflow with a sentiment champion (`make bench-quantization` trains one when missing). The same
texts as bench/serving.py's in-process ceiling (single sentences from the dataset, shuffled with seed 0) are scored
by the champion's network exported to ONNX and by its dynamic INT8 quantization (the one the model service would
serve: MatMul weights per channel, reduced range), each at batch 1, 8 and 32, with bucketing off (every batch
padded to its longest text) and on (sorted by length, `BUCKET_SIZE` texts per ONNX call), on one intra-op thread:
texts/s per core. The cells alternate within a round and the rounds follow one another, so a burst of load from
elsewhere lands on one cell of one round; the report gives the median over the rounds. Then the sub-batch size of
bucketing at batch 32, and the macro-F1 of every graph (and of two quantization variants not served) on the
champion's own test split (its attached evaluation data, else the split rebuilt from its training run), with the
verdict the model service would reach.

Writes bench/out/quantization.json and prints a markdown table. About 2 minutes with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from training.data import load_sentiment
from vigil import model_cache, model_data, model_digest, registry
from vigil.mlflow_auth import Role, authenticate_process
from vigil.sentiment_model import (
    BUCKET_SIZE,
    EvaluationData,
    SentimentClassifier,
    evaluation_data,
    judge_quantization,
    load_logged,
    macro_f1,
    onnx_session,
    quantize_onnx,
)
from vigil.settings import get_settings

BATCHES = (1, 8, 32)
BUCKET_SIZES = (2, 4, 8, 16)  # tried at batch 32, float graph
OUT = REPO / "bench" / "out" / "quantization.json"


def champion() -> tuple[SentimentClassifier, EvaluationData, str]:
    """The champion's classifier (files checked against its digest), its test split and its version."""
    settings = get_settings()
    authenticate_process(settings, Role.serving)  # the bench only reads the registry, as the model service does
    client = registry.connect()
    found = registry.resolve(client, registry.ModelReference(settings.sentiment_model_name,
                                                             alias=settings.serve_alias))
    model_dir = model_cache.download_version(client, found.name, found.version, settings.model_cache_dir)
    classifier = load_logged(model_dir, model_digest.recorded(client, found.name, found.version))
    attached = model_data.load_attached(settings, client, found.name, found.version, "evaluation")
    if attached is not None:
        frame, info = attached
        data = evaluation_data(frame, info.fingerprint, info.target)
    else:  # a version trained before training attached its test split: rebuild the split from the run
        from evaluations.datasets import training_params
        from training.data import training_split

        split, _ = training_split(training_params(client, found.run_id))
        data = evaluation_data(split.test, "rebuilt from the training run")
    return classifier, data, found.version


def rate(classifier: SentimentClassifier, texts: list[str], batch: int, seconds: float) -> float:
    classifier.predict(texts[:batch], batch_size=batch)  # warm the shapes this cell uses
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        start = done % (len(texts) - batch)
        classifier.predict(texts[start:start + batch], batch_size=batch)
        done += batch
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="per cell and round")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    classifier, data, version = champion()
    frame, _ = load_sentiment(domains=["amazon", "yelp", "imdb"])
    texts = frame.sample(frac=1.0, random_state=0)["text"].tolist()
    scratch = Path(tempfile.mkdtemp())
    float_path = scratch / "model.onnx"
    classifier.use_onnx(float_path, threads=1)
    graphs = {"float": float_path, "int8": quantize_onnx(float_path, scratch / "model.int8.onnx")}
    variants_paths: dict[str, Path] = {}
    # Variants scored for macro-F1 only: per-tensor scales, and every op the quantizer takes by default (the
    # word-embedding Gather too) rather than MatMul only.
    from onnxruntime.quantization import QuantType, quantize_dynamic

    variants = {"int8 per tensor": {"per_channel": False, "op_types_to_quantize": ["MatMul"]},
                "int8 all ops": {"per_channel": True}}
    for variant, options in variants.items():
        variant_path = scratch / f"model.{variant.replace(' ', '-')}.onnx"
        quantize_dynamic(float_path, variant_path, reduce_range=True, weight_type=QuantType.QInt8,
                         **options)  # type: ignore[arg-type]
        variants_paths[variant] = variant_path
    sessions = {name: onnx_session(path, 1) for name, path in graphs.items()}

    cells: dict[tuple[str, str, int], list[float]] = {}
    bucket_cells: dict[int, list[float]] = {}
    for _ in range(args.rounds):
        for name, session in sessions.items():
            classifier.onnx_session = session
            for bucketing in ("off", "on"):
                classifier.bucket_size = BUCKET_SIZE if bucketing == "on" else 0
                for batch in BATCHES:
                    cells.setdefault((name, bucketing, batch), []).append(
                        rate(classifier, texts, batch, args.seconds))
        classifier.onnx_session = sessions["float"]
        for size in BUCKET_SIZES:
            classifier.bucket_size = size
            bucket_cells.setdefault(size, []).append(rate(classifier, texts, 32, args.seconds))
    classifier.bucket_size = BUCKET_SIZE

    scores: dict[str, float] = {}
    for name, path in {**graphs, **variants_paths}.items():
        classifier.onnx_session = onnx_session(path, 1)
        scores[name] = macro_f1(data.labels, [p.label for p in classifier.predict(data.texts, batch_size=32)])
    verdict = judge_quantization(scores["float"], scores["int8"], data)

    throughput = [{"graph": name, "bucketing": bucketing, "batch": batch,
                   "texts_per_second": round(statistics.median(values), 1),
                   "range": [round(min(values), 1), round(max(values), 1)]}
                  for (name, bucketing, batch), values in cells.items()]
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                 text=True).stdout.strip(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}",
        "load_average": os.getloadavg(),
        "model_version": version, "threads": 1, "seconds": args.seconds, "rounds": args.rounds,
        "bucket_size": BUCKET_SIZE, "throughput": throughput,
        "bucket_sizes_at_batch_32": {str(size): round(statistics.median(v), 1) for size, v in bucket_cells.items()},
        "macro_f1": {name: round(value, 4) for name, value in scores.items()},
        "evaluation_rows": len(data.texts), "evaluation_fingerprint": data.fingerprint,
        "verdict": verdict.model_dump(),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2))
    print(table(report))


def table(report: dict[str, Any]) -> str:
    rates = {(row["graph"], row["bucketing"], row["batch"]): row for row in report["throughput"]}
    lines = ["| graph | bucketing | " + " | ".join(f"batch {b} texts/s" for b in BATCHES) + " |",
             "| --- | --- |" + " ---: |" * len(BATCHES)]
    for graph in ("float", "int8"):
        for bucketing in ("off", "on"):
            cells = [f"{rates[(graph, bucketing, b)]['texts_per_second']:.0f} "
                     f"({rates[(graph, bucketing, b)]['range'][0]:.0f}–{rates[(graph, bucketing, b)]['range'][1]:.0f})"
                     for b in BATCHES]
            lines.append(f"| {graph} | {bucketing} | " + " | ".join(cells) + " |")
    lines += ["", "| texts per ONNX call (bucketing, batch 32, float) | "
              + " | ".join(report["bucket_sizes_at_batch_32"]) + " |",
              "| --- |" + " ---: |" * len(report["bucket_sizes_at_batch_32"]),
              "| texts/s | " + " | ".join(f"{v:.0f}" for v in report["bucket_sizes_at_batch_32"].values()) + " |",
              "", f"macro-F1 on the test split ({report['evaluation_rows']} texts): "
              + ", ".join(f"{name} {value:.4f}" for name, value in report["macro_f1"].items()),
              f"verdict: {report['verdict']['precision']} — {report['verdict']['reason']}",
              f"({report['machine']}; load average at the end {report['load_average'][0]:.2f}; "
              f"commit {report['commit']}; {report['rounds']} rounds × {report['seconds']} s per cell)"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
