"""The service while `vigil up` trains the reader in the background (issue 18, item 3): the answers it serves with
the training at the lowest CPU priority, at normal priority, and with nothing beside it — in one run.

    make bench-background    (or: .venv/bin/python bench/background.py [--rounds 2] [--seconds 6])

One `vigil serve` with the extractive generator (what answers while the reader trains) serves throughout. In each
round three conditions follow one another, their order rotated from round to round:
- idle: nothing else runs;
- lowest: `vigil train reader` started as `vigil up` starts it (`Stack.spawn(..., lowest_priority=True)`: its own
  session, nice 19, SCHED_IDLE, its autogroup at 19);
- normal: the same training in its own session at normal priority, as it would run without the lowering.
A training is measured only once it runs its steps (its processes use more than 1.5 cores over 2 s), and killed
after its condition; it registers under a name of its own, and its unfinished MLflow run is marked KILLED. In each
condition `/predict` (single sentences) and `/rag/query` (top_k 5) are loaded at concurrency 1 and 8. The report
gives the medians over rounds and each condition's p50 and throughput as a ratio to idle's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rich.console import Console
from serving import BIN, REPO, Result, rag_caller, rest_caller, run_load, start_vigil, stop

from training.data import load_sentiment
from training.reader import EXPERIMENT
from vigil.mlflow_auth import authenticate_process
from vigil.settings import get_settings
from vigil.up import Stack

CONDITIONS = ("idle", "lowest", "normal")
CONCURRENCIES = (1, 8)
TRAINED_NAME = "rag-reader-background-bench"  # the killed trainings never register, but never as the served name
BUSY_CORES = 1.5


@dataclass
class Window:
    condition: str
    target: str
    concurrency: int
    round: int
    p50_ms: float
    p99_ms: float
    throughput: float
    errors: int


def cores_used(process: psutil.Process, seconds: float = 2.0) -> float:
    """CPU the process and its children used over ``seconds``, in cores."""
    def cpu() -> float:
        total = 0.0
        for each in [process, *process.children(recursive=True)]:
            try:
                times = each.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total

    before = cpu()
    time.sleep(seconds)
    return (cpu() - before) / seconds


def start_training(stack: Stack, lowest: bool, timeout: float = 600) -> None:
    """`vigil train reader` in the background, returned once it runs its steps."""
    process = stack.spawn(["train", "reader", "--limit", "4000", "--eval-limit", "50"], "bench-background.log",
                          lowest_priority=lowest)
    watched = psutil.Process(process.pid)
    deadline = time.monotonic() + timeout
    while (used := cores_used(watched)) < BUSY_CORES:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the background training never got busy (exit {process.poll()}, "
                               f"{used:.2f} cores); see {stack.settings.home / 'logs' / 'bench-background.log'}")
    print(f"  training busy: {used:.2f} cores before the load", flush=True)


def end_runs(stack: Stack) -> None:
    """Mark the killed trainings' runs KILLED (their process ended before MLflow heard of it)."""
    from mlflow import MlflowClient

    settings = stack.settings
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return
    for run in client.search_runs([experiment.experiment_id], f"tags.`vigil.model` = '{TRAINED_NAME}' and "
                                  "attributes.status = 'RUNNING'"):
        client.set_terminated(run.info.run_id, "KILLED")


async def load(http: str, texts: list[str], questions: list[str], seconds: float) -> list[Result]:
    results = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16),
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        calls = {"predict": (rest_caller(session, f"{http}/predict"), texts),
                 "rag": (rag_caller(session, f"{http}/rag/query"), questions)}
        for target, (call, inputs) in calls.items():
            await run_load(target, 2, 1.0, inputs, call)  # settle: connections, caches
            for concurrency in CONCURRENCIES:
                results.append(await run_load(target, concurrency, seconds, inputs, call))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=6.0, help="load per target, concurrency and condition")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "background.json")
    args = parser.parse_args()
    settings = get_settings()
    authenticate_process(settings)  # as every `vigil` command logs in to the home's MLflow
    os.environ["VIGIL_READER_MODEL_NAME"] = TRAINED_NAME  # the trainings' environment
    frame, _ = load_sentiment(domains=["amazon", "yelp", "imdb"])
    texts = frame.sample(frac=1.0, random_state=0)["text"].tolist()
    if not Path(settings.milvus_target).exists():
        subprocess.run([str(BIN / "vigil"), "rag", "ingest", str(REPO / "data" / "rag" / "corpus.jsonl")], check=True)
    lines = (REPO / "data" / "rag" / "qa.jsonl").read_text().splitlines()
    questions = [json.loads(line)["question"] for line in lines if line.strip()]
    random.Random(0).shuffle(questions)
    (REPO / "bench" / "out").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VIGIL_GENERATOR": "extractive",
           "VIGIL_READER_MODEL_NAME": settings.reader_model_name,
           "VIGIL_TRACING": os.environ.get("VIGIL_TRACING", "off")}
    load_before = os.getloadavg()
    server, http_port, _ = start_vigil(env, REPO / "bench" / "out" / "background-serve.log")
    http = f"http://127.0.0.1:{http_port}"
    windows: list[Window] = []
    try:
        for number in range(1, args.rounds + 1):
            shift = (number - 1) % len(CONDITIONS)
            for condition in CONDITIONS[shift:] + CONDITIONS[:shift]:
                print(f"round {number}: {condition}", flush=True)
                stack = Stack(settings, Console())
                try:
                    if condition != "idle":
                        start_training(stack, lowest=condition == "lowest")
                    for result in asyncio.run(load(http, texts, questions, args.seconds)):
                        windows.append(Window(condition, result.target, result.concurrency, number, result.p50_ms,
                                              result.p99_ms, result.throughput, result.errors))
                        print("  " + json.dumps(asdict(windows[-1])), flush=True)
                finally:
                    stack.stop_all()
                    end_runs(stack)
    finally:
        stop(server)

    def median(condition: str, target: str, concurrency: int, attribute: str) -> float:
        return statistics.median(getattr(w, attribute) for w in windows
                                 if (w.condition, w.target, w.concurrency) == (condition, target, concurrency))

    summary = []
    for target in ("predict", "rag"):
        for concurrency in CONCURRENCIES:
            idle_p50 = median("idle", target, concurrency, "p50_ms")
            idle_throughput = median("idle", target, concurrency, "throughput")
            for condition in CONDITIONS:
                p50, throughput = (round(median(condition, target, concurrency, "p50_ms"), 1),
                                   round(median(condition, target, concurrency, "throughput"), 1))
                row = {"target": target, "concurrency": concurrency, "condition": condition, "p50_ms": p50,
                       "p99_ms": round(median(condition, target, concurrency, "p99_ms"), 1), "throughput": throughput,
                       "p50_vs_idle": round(p50 / idle_p50, 2),
                       "throughput_vs_idle": round(throughput / idle_throughput, 2),
                       "errors": sum(w.errors for w in windows if (w.condition, w.target, w.concurrency)
                                     == (condition, target, concurrency))}
                summary.append(row)
                print(f"{target:8s} c={concurrency}  {condition:7s} p50 {p50:7.1f} ms ({row['p50_vs_idle']:.2f}× "
                      f"idle)  p99 {row['p99_ms']:7.1f} ms  {throughput:6.1f}/s ({row['throughput_vs_idle']:.2f}× "
                      f"idle)  errors {row['errors']}")
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "rounds": args.rounds, "seconds": args.seconds,
        "windows": [asdict(w) for w in windows], "summary": summary,
    }
    args.out.write_text(json.dumps(report, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
