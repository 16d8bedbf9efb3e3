"""Serving the user's own model: Vigil against `mlflow models serve` on the same model, and what more models cost.

    make bench-models        (or: .venv/bin/python bench/models.py [--seconds 10] [--rounds 2])

Needs the embedded stack with a sentiment champion and the example models of `examples/train_tips.py` (`make
bench-models` brings up what is missing). The model is the example regressor `tips-tip@champion`; every request
carries one row of the tips dataset (in turn, the same rows for every target), the way an online caller sends it.

Each round, one server at a time on the cores:
1. `vigil serve` with ``VIGIL_MODELS=sentiment@champion,tips-tip@champion,tips-time@champion``: the regressor over
   Open Inference REST (JSON tensors typed from the metadata Vigil publishes), Open Inference gRPC and MLflow's
   `/invocations` (`dataframe_records`) at each concurrency, then sentiment's `/predict` at the top concurrency;
2. `vigil serve` with sentiment alone: sentiment's `/predict` at the top concurrency;
3. `mlflow models serve -m models:/tips-tip@champion --env-manager local`, at its default of one worker and with as
   many workers as cores: `/invocations` with the same bodies.
Rounds alternate the servers, so a drift of the machine's speed shows as a spread between rounds, not as a ratio.
Ratios are taken within each round. Tracing is off for every server and Vigil's inference log is on (MLflow's server
has none), as in `bench/serving.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import httpx
from serving import REPO, Result, free_port, rest_caller, run_load, start, start_vigil, stop

from service.oip import grpc_service_pb2 as pb
from service.oip import grpc_service_pb2_grpc as pb_grpc
from training.data import load_sentiment
from vigil.mlflow_auth import authenticate_process
from vigil.settings import get_settings

BIN = Path(sys.executable).parent
MODEL = "tips-tip"
EXTRA_MODELS = f"{MODEL}@champion,tips-time@champion"
OUT = REPO / "bench" / "out"

# Open Inference datatype -> the field of gRPC's InferTensorContents that carries it.
GRPC_CONTENTS = {"FP64": "fp64_contents", "FP32": "fp32_contents", "INT64": "int64_contents",
                 "INT32": "int_contents", "BOOL": "bool_contents", "BYTES": "bytes_contents"}


def ensure_example_models(tracking_uri: str) -> None:
    """Train and register the example models with `examples/train_tips.py` when the registry lacks them."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri)
    try:
        for name in (MODEL, "tips-time"):
            client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        subprocess.run([sys.executable, str(REPO / "examples" / "train_tips.py"), "--tracking-uri", tracking_uri],
                       check=True)


def signature_columns(tracking_uri: str) -> list[str]:
    """The regressor's input columns, in its signature's order, as MLflow's own client reads them."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    signature = mlflow.models.get_model_info(f"models:/{MODEL}@champion").signature
    return list(signature.inputs.input_names())


def tips_rows() -> list[dict[str, Any]]:
    """The rows of the tips dataset as plain JSON values, shuffled once."""
    import plotly.data

    tips = plotly.data.tips().sample(frac=1.0, random_state=0)
    return json.loads(tips.to_json(orient="records"))


def open_inference_bodies(metadata: dict[str, Any], rows: list[dict[str, Any]]) -> list[bytes]:
    """One Open Inference REST request per row: one [1]-shaped tensor per input the model's metadata lists."""
    bodies = []
    for row in rows:
        inputs = [{"name": tensor["name"], "datatype": tensor["datatype"], "shape": [1], "data": [row[tensor["name"]]]}
                  for tensor in metadata["inputs"]]
        bodies.append(json.dumps({"inputs": inputs}).encode())
    return bodies


def grpc_requests(metadata: dict[str, Any], rows: list[dict[str, Any]]) -> list[pb.ModelInferRequest]:
    """The same requests as gRPC ModelInfer messages, typed from the same metadata."""
    requests = []
    for row in rows:
        request = pb.ModelInferRequest(model_name=MODEL)
        for tensor in metadata["inputs"]:
            value = row[tensor["name"]]
            entry = request.inputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=[1])
            contents = getattr(entry.contents, GRPC_CONTENTS[tensor["datatype"]])
            contents.append(value.encode() if isinstance(value, str) else value)
        requests.append(request)
    return requests


def invocation_bodies(rows: list[dict[str, Any]], columns: list[str]) -> list[bytes]:
    """MLflow's scoring protocol, one `dataframe_records` request per row."""
    return [json.dumps({"dataframe_records": [{column: row[column] for column in columns}]}).encode()
            for row in rows]


def body_caller(session: aiohttp.ClientSession, url: str) -> Callable[[bytes], Awaitable[bool]]:
    headers = {"content-type": "application/json"}

    async def call(body: bytes) -> bool:
        try:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                return response.status == 200
        except aiohttp.ClientError:
            return False

    return call


def message_caller(stub: pb_grpc.GRPCInferenceServiceStub) -> Callable[[pb.ModelInferRequest], Awaitable[bool]]:
    async def call(request: pb.ModelInferRequest) -> bool:
        try:
            await stub.ModelInfer(request, timeout=30)
            return True
        except grpc.aio.AioRpcError:
            return False

    return call


async def load_each(label: str, concurrencies: list[int], seconds: float, requests: list[Any],
                    call: Callable[[Any], Awaitable[bool]], round_number: int) -> list[dict[str, Any]]:
    """Warm up, then load one target at each concurrency; one dict per measurement, printed as it comes."""
    await run_load(label, 8, 2.0, requests, call)  # connections, batcher statistics, lazy imports
    measured = []
    for concurrency in concurrencies:
        result: Result = await run_load(label, concurrency, seconds, requests, call)
        row = {"round": round_number, **asdict(result)}
        print(json.dumps(row), flush=True)
        measured.append(row)
    return measured


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64), timeout=aiohttp.ClientTimeout(total=60))


def measure_vigil_models(args: argparse.Namespace, env: dict[str, str], rows: list[dict[str, Any]],
                         texts: list[str], round_number: int) -> list[dict[str, Any]]:
    """Vigil with sentiment and the two example models: the regressor over its three protocols, then sentiment."""
    vigil, http_port, grpc_port = start_vigil({**env, "VIGIL_MODELS": f"sentiment@champion,{EXTRA_MODELS}"},
                                              OUT / "models-vigil-serve.log")
    base = f"http://127.0.0.1:{http_port}"
    try:
        metadata = httpx.get(f"{base}/v2/models/{MODEL}", timeout=10).json()
        columns = [tensor["name"] for tensor in metadata["inputs"]]

        async def measure() -> list[dict[str, Any]]:
            results = []
            async with session() as http:
                results += await load_each("vigil-oip-rest", args.concurrency, args.seconds,
                                           open_inference_bodies(metadata, rows),
                                           body_caller(http, f"{base}/v2/models/{MODEL}/infer"), round_number)
                async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                    results += await load_each("vigil-oip-grpc", args.concurrency, args.seconds,
                                               grpc_requests(metadata, rows),
                                               message_caller(pb_grpc.GRPCInferenceServiceStub(channel)),
                                               round_number)
                results += await load_each("vigil-invocations", args.concurrency, args.seconds,
                                           invocation_bodies(rows, columns),
                                           body_caller(http, f"{base}/models/{MODEL}/invocations"), round_number)
                results += await load_each("sentiment-rest[+2 models]", [max(args.concurrency)], args.seconds,
                                           texts, rest_caller(http, f"{base}/predict"), round_number)
            return results

        return asyncio.run(measure())
    finally:
        stop(vigil)


def measure_vigil_sentiment(args: argparse.Namespace, env: dict[str, str], texts: list[str],
                            round_number: int) -> list[dict[str, Any]]:
    vigil, http_port, _ = start_vigil({**env, "VIGIL_MODELS": "sentiment@champion"},
                                      OUT / "models-sentiment-serve.log")
    try:
        async def measure() -> list[dict[str, Any]]:
            async with session() as http:
                return await load_each("sentiment-rest[alone]", [max(args.concurrency)], args.seconds, texts,
                                       rest_caller(http, f"http://127.0.0.1:{http_port}/predict"), round_number)

        return asyncio.run(measure())
    finally:
        stop(vigil)


def wait_ping(server: subprocess.Popen[bytes], url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout}s (exit code {server.poll()})")


def measure_mlflow(args: argparse.Namespace, env: dict[str, str], rows: list[dict[str, Any]], columns: list[str],
                   workers: int, round_number: int) -> list[dict[str, Any]]:
    """`mlflow models serve` on the same registered version, in this venv (`--env-manager local`)."""
    port = free_port()
    server = start([str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL}@champion", "--env-manager",
                    "local", "-p", str(port), "-w", str(workers)], env, OUT / f"models-mlflow-{workers}.log")
    try:
        wait_ping(server, f"http://127.0.0.1:{port}/ping")

        async def measure() -> list[dict[str, Any]]:
            async with session() as http:
                label = "mlflow-serve" if workers == 1 else f"mlflow-serve[{workers} workers]"
                return await load_each(label, args.concurrency, args.seconds, invocation_bodies(rows, columns),
                                       body_caller(http, f"http://127.0.0.1:{port}/invocations"), round_number)

        return asyncio.run(measure())
    finally:
        stop(server)


def ratios(results: list[dict[str, Any]], concurrencies: list[int]) -> dict[str, Any]:
    """Per round: Vigil's protocols against `mlflow models serve` (one worker), and sentiment with and without
    the extra models; then the mean over rounds."""
    top = max(concurrencies)
    per_round: dict[int, dict[str, float]] = {}
    by = {(r["round"], r["target"], r["concurrency"]): r for r in results}
    for round_number in sorted({r["round"] for r in results}):
        baseline = by.get((round_number, "mlflow-serve", top))
        baseline_c1 = by.get((round_number, "mlflow-serve", 1))
        figures: dict[str, float] = {}
        for target in ("vigil-oip-rest", "vigil-oip-grpc", "vigil-invocations"):
            mine, mine_c1 = by.get((round_number, target, top)), by.get((round_number, target, 1))
            if mine and baseline and baseline["throughput"]:
                figures[f"{target}_vs_mlflow_throughput_c{top}"] = round(mine["throughput"] / baseline["throughput"],
                                                                         2)
            if mine_c1 and baseline_c1 and baseline_c1["p50_ms"]:
                figures[f"{target}_vs_mlflow_p50_c1"] = round(mine_c1["p50_ms"] / baseline_c1["p50_ms"], 2)
        crowded = by.get((round_number, "sentiment-rest[+2 models]", top))
        alone = by.get((round_number, "sentiment-rest[alone]", top))
        if crowded and alone and alone["throughput"]:
            figures[f"sentiment_with_2_models_vs_alone_throughput_c{top}"] = round(
                crowded["throughput"] / alone["throughput"], 2)
        per_round[round_number] = figures
    names = sorted({name for figures in per_round.values() for name in figures})
    mean = {name: round(statistics.fmean(f[name] for f in per_round.values() if name in f), 2) for name in names}
    return {"per_round": per_round, "mean": mean}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="load duration per target and concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=2, help="times every server is measured, alternating")
    parser.add_argument("--out", type=Path, default=OUT / "models.json")
    args = parser.parse_args()

    settings = get_settings()
    authenticate_process(settings)  # as every `vigil` command: this home's admin, for MLflow's client and children
    ensure_example_models(settings.mlflow_tracking_uri)
    rows = tips_rows()
    columns = signature_columns(settings.mlflow_tracking_uri)
    frame, _ = load_sentiment(domains=["amazon", "yelp", "imdb"])
    texts = frame.sample(frac=1.0, random_state=0)["text"].tolist()
    OUT.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VIGIL_TRACING": "off",
           "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
           # `mlflow models serve` runs `uvicorn` from PATH: this venv's, as `--env-manager local` means.
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    cores = os.cpu_count() or 1

    results: list[dict[str, Any]] = []
    for round_number in range(1, args.rounds + 1):
        print(f"round {round_number} of {args.rounds}", flush=True)
        results += measure_vigil_models(args, env, rows, texts, round_number)
        results += measure_vigil_sentiment(args, env, texts, round_number)
        for workers in sorted({1, cores}):
            results += measure_mlflow(args, env, rows, columns, workers, round_number)

    summary = ratios(results, args.concurrency)
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {cores} cores, {platform.python_version()}",
        "model": f"{MODEL}@champion",
        "results": results,
        "ratios": summary,
    }
    args.out.write_text(json.dumps(report, indent=2))
    print("\n| round | target | concurrency | req/s | p50 ms | p99 ms | errors |\n"
          "| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['round']} | {r['target']} | {r['concurrency']} | {r['throughput']} | {r['p50_ms']} | "
              f"{r['p99_ms']} | {r['errors']} |")
    print(f"\nratios: {json.dumps(summary, indent=2)}")


if __name__ == "__main__":
    main()
