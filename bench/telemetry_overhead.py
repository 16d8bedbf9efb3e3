"""What observability costs: Vigil REST at concurrency 32 with tracing and the inference log on, against both off,
in one run. Tracing on is measured four ways: the default (tail sampling: every request counted and logged, the
traces of failed and slow requests and a uniform sample of VIGIL_TRACE_MAX_PER_SECOND kept, into the real MLflow
server on the same two cores), every trace into that MLflow (VIGIL_TRACE_ALL=true, the behaviour before tail
sampling), and every trace to an OTLP endpoint that discards (bench/null_collector.py), which prices Vigil's own
share; and the default with no uniform sample (telemetry-on-budget-0: only failed and slow traces kept).

    make bench-telemetry      (or: .venv/bin/python bench/telemetry_overhead.py [--seconds 20] [--rounds 5]
                               [--configs telemetry-on,telemetry-on-budget-0])

Needs the embedded stack with a champion (`make run`). The configurations alternate for --rounds rounds, each on a
fresh server, so a slow moment of the machine does not land on one side only; the summary takes each
configuration's median round, because single 15 s rounds of the same configuration spread by ±15% here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving import REPO, Result, free_port, rest_caller, run_load, start, start_vigil, stop

from training.data import load_sentiment
from vigil.mlflow_server import read_state
from vigil.settings import get_settings

# What tells how much of the load reached the trace store: summed over the server's workers.
TELEMETRY_SERIES = ("vigil_traces_total{decision=kept}", "vigil_traces_total{decision=dropped}",
                    "vigil_spans_dropped_total", "vigil_span_export_failures_total", "vigil_inference_log_writes_total",
                    # The model worker's batches: their mean size is what its CPU per request depends on.
                    "vigil_batch_size_sum", "vigil_batch_size_count")


# What each configuration sets on top of the environment; {collector_port} is bench/null_collector.py's.
CONFIGS: dict[str, dict[str, str]] = {
    "telemetry-on": {"VIGIL_TRACING": "otlp", "VIGIL_INFERENCE_LOG": "true"},
    # The default with no uniform sample: only failed and slow traces (and callers' sampled ones) are kept.
    # (VIGIL_TRACE_MAX_PER_SECOND=0 would mean no limit, every trace kept.)
    "telemetry-on-budget-0": {"VIGIL_TRACING": "otlp", "VIGIL_INFERENCE_LOG": "true", "VIGIL_TRACE_SAMPLE_RATIO": "0"},
    "telemetry-on-every-trace": {"VIGIL_TRACING": "otlp", "VIGIL_INFERENCE_LOG": "true", "VIGIL_TRACE_ALL": "true"},
    "telemetry-on-null-collector": {
        "VIGIL_TRACING": "otlp", "VIGIL_INFERENCE_LOG": "true", "VIGIL_TRACE_ALL": "true",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:{collector_port}/v1/traces"},
    "telemetry-off": {"VIGIL_TRACING": "off", "VIGIL_INFERENCE_LOG": "false"},
}


@dataclass
class Round:
    result: Result
    telemetry: dict[str, float]
    cpu_ms_per_request: dict[str, float]


def process_groups(server_pid: int, collector_pid: int) -> dict[str, list[psutil.Process]]:
    """The processes whose CPU time is counted, by role: Vigil's workers, the trace backends, the load generator."""
    groups: dict[str, list[psutil.Process]] = {"load generator": [psutil.Process()]}
    server = psutil.Process(server_pid)
    for child in [server, *server.children(recursive=True)]:
        command = " ".join(child.cmdline())
        role = ("model worker" if "--service-name vigil-sentiment" in command
                else "rag worker" if "--service-name vigil-rag" in command
                else "api worker" if "--service-name vigil " in command
                else "serve supervisors")
        groups.setdefault(role, []).append(child)
    mlflow = read_state(get_settings())
    if mlflow is not None and psutil.pid_exists(mlflow.pid):
        parent = psutil.Process(mlflow.pid)
        groups["mlflow server"] = [parent, *parent.children(recursive=True)]
    groups["null collector"] = [psutil.Process(collector_pid)]
    return groups


def cpu_seconds(groups: dict[str, list[psutil.Process]]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for role, processes in groups.items():
        total = 0.0
        for process in processes:
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
        totals[role] = total
    return totals


async def measure(base_url: str, texts: list[str], seconds: float, concurrency: int, name: str,
                  groups: dict[str, list[psutil.Process]]) -> Round:
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        call = rest_caller(session, f"{base_url}/predict")
        await run_load(name, 8, 3.0, texts, call)
        before, cpu_before = await scrape(session, base_url), cpu_seconds(groups)
        result = await run_load(name, concurrency, seconds, texts, call)
        cpu_after, after = cpu_seconds(groups), await scrape(session, base_url)
    served = max(1, result.requests)
    return Round(
        result,
        {series: after.get(series, 0.0) - before.get(series, 0.0) for series in TELEMETRY_SERIES},
        {role: round((cpu_after[role] - cpu_before[role]) * 1000 / served, 3) for role in cpu_before},
    )


async def scrape(session: aiohttp.ClientSession, base_url: str) -> dict[str, float]:
    async with session.get(f"{base_url}/metrics") as response:
        text = await response.text()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"^(vigil_[a-z_]+_(?:total|sum|count))(\{[^}]*\})? ([0-9.e+-]+)$", line)
        if match:
            name, labels, value = match.group(1), match.group(2) or "", float(match.group(3))
            totals[name] = totals.get(name, 0.0) + value
            if decision := re.search(r'decision="([a-z]+)"', labels):  # the tail-sampling decisions, apart
                key = f"{name}{{decision={decision.group(1)}}}"
                totals[key] = totals.get(key, 0.0) + value
    return totals


def run_rounds(args: argparse.Namespace, texts: list[str], configs: dict[str, dict[str, str]],
               results: dict[str, list[Round]], logs: Path, collector_pid: int) -> None:
    for round_index in range(args.rounds):
        for name, overrides in configs.items():
            env = {**os.environ, "HF_HUB_OFFLINE": "1", **overrides}
            process, http_port, _ = start_vigil(env, logs / f"overhead-{name}.log")
            try:
                groups = process_groups(process.pid, collector_pid)
                measured = asyncio.run(measure(f"http://127.0.0.1:{http_port}", texts, args.seconds,
                                               args.concurrency, name, groups))
            finally:
                stop(process)
            print(f"round {round_index + 1}: {json.dumps(asdict(measured))}", flush=True)
            results[name].append(measured)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "telemetry_overhead.json")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help=f"comma-separated, of: {', '.join(CONFIGS)} (telemetry-off is always measured)")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.configs.split(",") if name.strip()]
    if unknown := sorted(set(chosen) - set(CONFIGS)):
        parser.error(f"unknown configurations: {', '.join(unknown)}")

    frame, _ = load_sentiment(domains=["amazon", "yelp", "imdb"])
    texts = frame.sample(frac=1.0, random_state=0)["text"].tolist()
    collector_port = free_port()
    configs = {name: {key: value.format(collector_port=collector_port) for key, value in CONFIGS[name].items()}
               for name in CONFIGS if name in chosen or name == "telemetry-off"}
    logs = REPO / "bench" / "out"
    logs.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[Round]] = {name: [] for name in configs}
    collector = start([sys.executable, str(REPO / "bench" / "null_collector.py"), str(collector_port)],
                      dict(os.environ), logs / "null-collector.log")
    try:
        run_rounds(args, texts, configs, results, logs, collector.pid)
    finally:
        stop(collector)

    medians = {name: summarise(rounds) for name, rounds in results.items()}
    off = medians["telemetry-off"]
    ratios = {
        name: {"throughput": round(median["throughput"] / off["throughput"], 3),
               "p99": round(median["p99_ms"] / off["p99_ms"], 3)}
        for name, median in medians.items() if name != "telemetry-off"
    }
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "rounds": {name: [asdict(r) for r in rounds] for name, rounds in results.items()},
        "medians": medians,
        "ratios_against_off": ratios,
    }
    args.out.write_text(json.dumps(report, indent=2))
    print("\n| configuration | req/s | p50 ms | p99 ms | req/s range | p99 range | traces kept | traces dropped "
          "| spans dropped | mean batch |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, median in medians.items():
        print(f"| {name} | {median['throughput']} | {median['p50_ms']} | {median['p99_ms']} | "
              f"{median['throughput_min']}-{median['throughput_max']} | {median['p99_min']}-{median['p99_max']} | "
              f"{median['traces_kept']:.0f} | {median['traces_dropped']:.0f} | {median['spans_dropped']:.0f} | "
              f"{median['mean_batch_size']} |")
    print(f"\nratios of medians against off: {json.dumps(ratios)}")
    roles = sorted({role for rounds in results.values() for r in rounds for role in r.cpu_ms_per_request})
    print("\nCPU ms per request (median round):\n| configuration | " + " | ".join(roles) + " |\n"
          + "| --- " * (len(roles) + 1) + "|")
    for name, median in medians.items():
        print(f"| {name} | " + " | ".join(f"{median['cpu_ms_per_request'][role]:.2f}" for role in roles) + " |")


def summarise(rounds: list[Round]) -> dict[str, Any]:
    """Medians over the rounds (each figure on its own), with the spread, and telemetry counters summed."""
    results = [r.result for r in rounds]
    throughputs = [r.throughput for r in results]
    p99s = [r.p99_ms for r in results]
    return {
        "throughput": round(statistics.median(throughputs), 1),
        "p50_ms": round(statistics.median(r.p50_ms for r in results), 1),
        "p99_ms": round(statistics.median(p99s), 1),
        "throughput_min": min(throughputs), "throughput_max": max(throughputs),
        "p99_min": min(p99s), "p99_max": max(p99s),
        "errors": sum(r.errors for r in results),
        "traces_kept": sum(r.telemetry["vigil_traces_total{decision=kept}"] for r in rounds),
        "traces_dropped": sum(r.telemetry["vigil_traces_total{decision=dropped}"] for r in rounds),
        "spans_dropped": sum(r.telemetry["vigil_spans_dropped_total"] for r in rounds),
        "mean_batch_size": round(sum(r.telemetry["vigil_batch_size_sum"] for r in rounds)
                                 / max(1.0, sum(r.telemetry["vigil_batch_size_count"] for r in rounds)), 1),
        "cpu_ms_per_request": {
            role: round(statistics.median(r.cpu_ms_per_request.get(role, 0.0) for r in rounds), 3)
            for role in {role for r in rounds for role in r.cpu_ms_per_request}
        },
    }


if __name__ == "__main__":
    main()
