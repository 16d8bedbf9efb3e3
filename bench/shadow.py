"""Shadow scoring's cost: Vigil REST with every request shadowed (VIGIL_SHADOW_PERCENT=100) against none, one run.

    make bench-shadow        (or: .venv/bin/python bench/shadow.py [--rounds 3] [--seconds 5])

Serves `sentiment-shadow-bench`: v1 (champion) and v2 (challenger) are copies of `sentiment@champion`, made here
the first time, so the shadow scores a model exactly as heavy as the served one, under a name nothing else moves.
A round starts `vigil serve` with the shadow at 0 %, then at 100 % (the order alternates between rounds), and loads
each at concurrency 1 and 32 (bench/serving.py's load generator, single sentences, after a 2 s warm-up and 1 s at
each concurrency before it is measured). At 100 % the server is first given time to load the challenger. For each
window, the shadow jobs scored, dropped and left queued come from /status. The report gives the medians over the
rounds and issue 17's targets: at c=32 the 100 % throughput at least 0.90 of the 0 % one, and at c=1 a p50 within
the spread the 0 % p50 has between rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving import REPO, SETTLE_SECONDS, Result, rest_caller, run_load, start_vigil, stop

from training.data import load_sentiment
from vigil.mlflow_auth import Role, authenticate_process
from vigil.settings import get_settings

MODEL = "sentiment-shadow-bench"
PERCENTS = (0, 100)


@dataclass
class Window:
    percent: int
    concurrency: int
    round: int
    throughput: float
    p50_ms: float
    p99_ms: float
    errors: int
    scored: int
    dropped: int
    failed: int
    skipped: int
    queued_at_end: int


def prepare_model() -> None:
    """`MODEL` v1 (champion) and v2 (challenger), copies of `sentiment@champion`, once."""
    from mlflow import MlflowClient

    settings = get_settings()
    authenticate_process(settings, Role.admin)
    client = MlflowClient(settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)
    versions = {v.version for v in client.search_model_versions(f"name='{MODEL}'")}
    source = client.get_model_version_by_alias(settings.sentiment_model_name, "champion")
    for _ in range(len(versions), 2):
        client.copy_model_version(f"models:/{settings.sentiment_model_name}/{source.version}", MODEL)
    client.set_registered_model_alias(MODEL, "champion", "1")
    client.set_registered_model_alias(MODEL, "challenger", "2")


def shadow_of(http: str) -> dict[str, Any]:
    state: dict[str, Any] = httpx.get(f"{http}/status", timeout=10).json()["models"][MODEL].get("shadow") or {}
    return state


def counts(http: str) -> dict[str, int]:
    state = shadow_of(http)
    return {**dict.fromkeys(("scored", "dropped", "failed", "skipped"), 0), **state.get("counts", {}),
            "queued": int(state.get("queue_depth") or 0)}


async def load(http: str, texts: list[str], concurrencies: list[int], seconds: float, percent: int,
               number: int) -> list[Window]:
    windows: list[Window] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64),
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        call = rest_caller(session, f"{http}/predict")
        await run_load("warm-up", 8, 2.0, texts, call)
        for concurrency in concurrencies:
            await run_load("settle", concurrency, SETTLE_SECONDS, texts, call)
            before = counts(http)
            result: Result = await run_load(f"shadow-{percent}", concurrency, seconds, texts, call)
            after = counts(http)
            moved = {key: after[key] - before[key] for key in ("scored", "dropped", "failed", "skipped")}
            window = Window(percent, concurrency, number, result.throughput, result.p50_ms, result.p99_ms,
                            result.errors, **moved, queued_at_end=after["queued"])
            print(json.dumps(asdict(window)), flush=True)
            windows.append(window)
    return windows


def measure(percent: int, number: int, texts: list[str], concurrencies: list[int], seconds: float) -> list[Window]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VIGIL_TRACING": "off", "VIGIL_SENTIMENT_MODEL_NAME": MODEL,
           "VIGIL_SHADOW_PERCENT": str(percent)}
    process, http_port, _ = start_vigil(env, REPO / "bench" / "out" / f"shadow-{percent}-serve.log")
    http = f"http://127.0.0.1:{http_port}"
    try:
        if percent:
            deadline = time.monotonic() + 120
            while not shadow_of(http).get("scoring"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the shadow never scored: {shadow_of(http)}")
                time.sleep(0.5)
        return asyncio.run(load(http, texts, concurrencies, seconds, percent, number))
    finally:
        stop(process)


def median_of(windows: list[Window], percent: int, concurrency: int, attribute: str) -> tuple[float, float, float]:
    values = [float(getattr(w, attribute)) for w in windows if (w.percent, w.concurrency) == (percent, concurrency)]
    return statistics.median(values), min(values), max(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="load duration per concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "shadow.json")
    args = parser.parse_args()
    prepare_model()
    frame, _ = load_sentiment(domains=["amazon", "yelp", "imdb"])
    texts = frame.sample(frac=1.0, random_state=0)["text"].tolist()
    (REPO / "bench" / "out").mkdir(parents=True, exist_ok=True)
    windows: list[Window] = []
    for number in range(1, args.rounds + 1):
        print(f"round {number} of {args.rounds}", flush=True)
        for percent in PERCENTS if number % 2 else tuple(reversed(PERCENTS)):
            windows += measure(percent, number, texts, args.concurrency, args.seconds)

    summary = []
    for concurrency in args.concurrency:
        for percent in PERCENTS:
            throughput = median_of(windows, percent, concurrency, "throughput")
            p50 = median_of(windows, percent, concurrency, "p50_ms")
            mine = [w for w in windows if (w.percent, w.concurrency) == (percent, concurrency)]
            summary.append({"percent": percent, "concurrency": concurrency, "throughput": throughput,
                            "p50_ms": p50, "scored": sum(w.scored for w in mine),
                            "dropped": sum(w.dropped for w in mine), "failed": sum(w.failed for w in mine)})
            print(f"shadow {percent:3d} %  c={concurrency:<3d} {throughput[0]:7.1f} req/s ({throughput[1]:.1f}–"
                  f"{throughput[2]:.1f})  p50 {p50[0]:6.1f} ms ({p50[1]:.1f}–{p50[2]:.1f})  shadow jobs scored "
                  f"{summary[-1]['scored']}, dropped {summary[-1]['dropped']}, failed {summary[-1]['failed']}")
    top, single = max(args.concurrency), min(args.concurrency)
    ratio = median_of(windows, 100, top, "throughput")[0] / median_of(windows, 0, top, "throughput")[0]
    p50_on, p50_off = median_of(windows, 100, single, "p50_ms"), median_of(windows, 0, single, "p50_ms")
    print(f"c={top}: throughput with shadow 100 % / 0 % = {ratio:.3f} (target ≥ 0.90)")
    print(f"c={single}: p50 {p50_on[0]:.1f} ms with shadow vs {p50_off[0]:.1f} ms without (rounds without: "
          f"{p50_off[1]:.1f}–{p50_off[2]:.1f} ms)")
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "load_average_at_end": os.getloadavg(),
        "rounds": args.rounds, "seconds": args.seconds,
        "windows": [asdict(w) for w in windows], "summary": summary,
        "throughput_ratio_at_top": ratio,
    }
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
