"""What observability costs: Vigil REST at concurrency 32 with tracing and the inference log on, against both off,
in one run. Tracing on is measured twice: exporting to the real MLflow server (the default, which ingests on the
same two cores) and to an OTLP endpoint that discards (bench/null_collector.py), which prices Vigil's own share.

    make bench-telemetry      (or: .venv/bin/python bench/telemetry_overhead.py [--seconds 15] [--rounds 2])

Needs the embedded stack with a champion (`make run`). The configurations alternate for --rounds rounds so a
slow moment of the machine does not land on one side only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving import BIN, REPO, Result, free_port, rest_caller, run_load, start, stop, wait_http

from training.data import load_sentiment


async def measure(url: str, texts: list[str], seconds: float, concurrency: int, name: str) -> Result:
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        call = rest_caller(session, url)
        await run_load(name, 8, 3.0, texts, call)
        return await run_load(name, concurrency, seconds, texts, call)


def run_rounds(args: argparse.Namespace, texts: list[str], configs: dict[str, dict[str, str]],
               results: dict[str, list[Result]], logs: Path) -> None:
    for round_index in range(args.rounds):
        for name, overrides in configs.items():
            http_port, grpc_port = free_port(), free_port()
            env = {**os.environ, "HF_HUB_OFFLINE": "1", **overrides}
            process = start([str(BIN / "vigil"), "serve", "--port", str(http_port), "--grpc-port", str(grpc_port)],
                            env, logs / f"overhead-{name}.log")
            try:
                wait_http(f"http://127.0.0.1:{http_port}/readyz")
                result = asyncio.run(measure(f"http://127.0.0.1:{http_port}/predict", texts, args.seconds,
                                             args.concurrency, name))
            finally:
                stop(process)
            print(f"round {round_index + 1}: {json.dumps(asdict(result))}", flush=True)
            results[name].append(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "telemetry_overhead.json")
    args = parser.parse_args()

    frame, _ = load_sentiment(domains=["amazon", "yelp", "imdb"])
    texts = frame.sample(frac=1.0, random_state=0)["text"].tolist()
    collector_port = free_port()
    configs = {
        "telemetry-on": {"VIGIL_TRACING": "otlp", "VIGIL_INFERENCE_LOG": "true"},
        "telemetry-on-null-collector": {
            "VIGIL_TRACING": "otlp", "VIGIL_INFERENCE_LOG": "true",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{collector_port}/v1/traces"},
        "telemetry-off": {"VIGIL_TRACING": "off", "VIGIL_INFERENCE_LOG": "false"},
    }
    logs = REPO / "bench" / "out"
    logs.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[Result]] = {name: [] for name in configs}
    collector = start([sys.executable, str(REPO / "bench" / "null_collector.py"), str(collector_port)],
                      dict(os.environ), logs / "null-collector.log")
    try:
        run_rounds(args, texts, configs, results, logs)
    finally:
        stop(collector)

    def best(name: str) -> Result:
        return max(results[name], key=lambda r: r.throughput)

    on, on_null, off = best("telemetry-on"), best("telemetry-on-null-collector"), best("telemetry-off")
    summary = {
        "throughput_ratio_on_vs_off": round(on.throughput / off.throughput, 3),
        "p99_ratio_on_vs_off": round(on.p99_ms / off.p99_ms, 3),
        "throughput_ratio_on_null_collector_vs_off": round(on_null.throughput / off.throughput, 3),
        "p99_ratio_on_null_collector_vs_off": round(on_null.p99_ms / off.p99_ms, 3),
    }
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "results": {name: [asdict(r) for r in rs] for name, rs in results.items()},
        "ratios": summary,
    }
    args.out.write_text(json.dumps(report, indent=2))
    print("\n| configuration | req/s | p50 ms | p99 ms | errors |\n| --- | --- | --- | --- | --- |")
    for result in (on, on_null, off):
        print(f"| {result.target} | {result.throughput} | {result.p50_ms} | {result.p99_ms} | {result.errors} |")
    print(f"\nratios (best round of each): {json.dumps(summary)}")


if __name__ == "__main__":
    main()
