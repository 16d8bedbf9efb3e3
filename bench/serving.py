"""Serving benchmark: Vigil REST and gRPC vs. the in-process ceiling and the seed's Flask design, in one run.

    make bench-serving        (or: .venv/bin/python bench/serving.py [--seconds 10] [--variant LABEL:VAR=VALUE])

Needs the embedded stack with a champion and the RAG corpus (`make bench-serving` brings up what is missing).
Every target serves the same model version and answers the same request mix (single sentences from the dataset);
the load generator runs on the same machine, so the figures that matter are the ratios between targets measured
in this one run. One server runs at a time: Vigil (REST, gRPC, then `/rag/query` at concurrency 1 and 8), each
`--variant` (the same server started with other settings, REST only), then Flask under gunicorn.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import grpc
import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from service.oip import grpc_service_pb2 as pb
from service.oip import grpc_service_pb2_grpc as pb_grpc
from training.data import load_sentiment

BIN = Path(sys.executable).parent
Request = TypeVar("Request")


@dataclass
class Result:
    target: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    throughput: float
    p50_ms: float
    p99_ms: float


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_http(url: str, timeout: float = 180, method: str = "GET") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            body = {"text": "ready?"} if method == "POST" else None
            if httpx.request(method, url, json=body, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


async def run_load(name: str, concurrency: int, seconds: float, texts: Sequence[Request],
                   call: Callable[[Request], Awaitable[bool]]) -> Result:
    """``concurrency`` workers send the requests of ``texts`` in turn with ``call`` for ``seconds``."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    counter = 0

    async def worker() -> None:
        nonlocal errors, counter
        while time.perf_counter() < deadline:
            text = texts[counter % len(texts)]
            counter += 1
            started = time.perf_counter()
            ok = await call(text)
            latencies.append(time.perf_counter() - started)
            errors += 0 if ok else 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ok_count = len(latencies) - errors
    return Result(name, concurrency, len(latencies), errors, round(elapsed, 2), round(ok_count / elapsed, 1),
                  round(percentile(latencies, 0.50) * 1000, 1), round(percentile(latencies, 0.99) * 1000, 1))


def rest_caller(session: aiohttp.ClientSession, url: str) -> Callable[[str], Awaitable[bool]]:
    # aiohttp rather than httpx: the load generator shares the two cores with the servers, and aiohttp spends
    # about half of httpx's CPU per request.
    async def call(text: str) -> bool:
        try:
            async with session.post(url, json={"text": text}) as response:
                await response.read()
                return response.status == 200
        except aiohttp.ClientError:
            return False

    return call


def rag_caller(session: aiohttp.ClientSession, url: str) -> Callable[[str], Awaitable[bool]]:
    async def call(question: str) -> bool:
        try:
            async with session.post(url, json={"question": question, "top_k": 5}) as response:
                await response.read()
                return response.status == 200
        except aiohttp.ClientError:
            return False

    return call


def grpc_caller(stub: pb_grpc.GRPCInferenceServiceStub) -> Callable[[str], Awaitable[bool]]:
    async def call(text: str) -> bool:
        request = pb.ModelInferRequest(model_name="sentiment")
        tensor = request.inputs.add(name="text", datatype="BYTES", shape=[1])
        tensor.contents.bytes_contents.append(text.encode())
        try:
            await stub.ModelInfer(request, timeout=30)
            return True
        except grpc.aio.AioRpcError:
            return False

    return call


def in_process_ceiling(model_dir: Path, texts: list[str], seconds: float) -> list[dict[str, Any]]:
    """The same model called directly, on each runtime, thread count and batch size: what any server approaches."""
    import torch

    from vigil.sentiment_model import load_logged

    classifier = load_logged(model_dir, expected=None)  # the holder that downloaded it checked its digest
    onnx_path = Path(tempfile.mkdtemp()) / "model.onnx"
    rows: list[dict[str, Any]] = []
    for runtime in ("torch", "onnx"):
        for threads in sorted({1, os.cpu_count() or 1}):
            torch.set_num_threads(threads)
            classifier.onnx_session = None
            if runtime == "onnx":
                classifier.use_onnx(onnx_path, threads)
            classifier.predict(texts[:8])
            for batch in (1, 8, 16, 32, 64):
                done = 0
                started = time.perf_counter()
                while time.perf_counter() - started < seconds:
                    start = done % (len(texts) - batch)
                    classifier.predict(texts[start:start + batch], batch_size=batch)
                    done += batch
                elapsed = time.perf_counter() - started
                rows.append({"runtime": runtime, "threads": threads, "batch": batch,
                             "texts_per_second": round(done / elapsed, 1)})
    return rows


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    # What outlives the group's leader (a server stuck in a failed start) must not hold ports and cores.
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline:
            os.killpg(process.pid, 0)  # ProcessLookupError once the group is empty
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def start_vigil(env: dict[str, str], log: Path, attempts: int = 3) -> tuple[subprocess.Popen[bytes], int, int]:
    """`vigil serve` on fresh ports, ready; returns (process, http port, grpc port).

    A port `free_port` found free can be taken as a client's source port before the server binds it, which fails
    the start; another pair of ports is then tried.
    """
    for attempt in range(1, attempts + 1):
        http_port, grpc_port = free_port(), free_port()
        process = start([str(BIN / "vigil"), "serve", "--port", str(http_port), "--grpc-port", str(grpc_port)],
                        env, log)
        try:
            wait_http(f"http://127.0.0.1:{http_port}/readyz", timeout=120)
            return process, http_port, grpc_port
        except RuntimeError:
            stop(process)
            if attempt == attempts:
                raise
            print(f"vigil serve did not come up (see {log}); trying other ports", flush=True)
    raise AssertionError("unreachable")


async def measure(args: argparse.Namespace, texts: list[str], targets: dict[str, str],
                  rag: tuple[str, list[str]] | None = None) -> list[Result]:
    """Warm up, then load each target at each concurrency. Targets: name → REST URL or `grpc://host:port`;
    ``rag``: the `/rag/query` URL and the questions to ask it, at concurrency 1 and 8."""
    results: list[Result] = []
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        for name, url in targets.items():
            channel = None
            if url.startswith("grpc://"):
                channel = grpc.aio.insecure_channel(url.removeprefix("grpc://"))
                call = grpc_caller(pb_grpc.GRPCInferenceServiceStub(channel))
            else:
                call = rest_caller(session, url)
            await run_load(name, 8, 2.0, texts, call)  # warm up: connections, batcher statistics
            for concurrency in args.concurrency:
                result = await run_load(name, concurrency, args.seconds, texts, call)
                print(json.dumps(asdict(result)), flush=True)
                results.append(result)
            if channel is not None:
                await channel.close()
        if rag is not None:
            url, questions = rag
            call = rag_caller(session, url)
            await run_load("vigil-rag", 2, 2.0, questions, call)
            for concurrency in (1, 8):
                result = await run_load("vigil-rag", concurrency, args.seconds, questions, call)
                print(json.dumps(asdict(result)), flush=True)
                results.append(result)
    return results


def measure_vigil(args: argparse.Namespace, texts: list[str], env: dict[str, str], name: str,
                  with_grpc: bool, questions: list[str] | None = None) -> list[Result]:
    """Start one `vigil serve` with ``env``, load it, stop it: one server on the cores at a time."""
    vigil, http_port, grpc_port = start_vigil(env, REPO / "bench" / "out" / f"{name}-serve.log")
    try:
        targets = {f"{name}-rest": f"http://127.0.0.1:{http_port}/predict"}
        if with_grpc:
            targets[f"{name}-grpc"] = f"grpc://127.0.0.1:{grpc_port}"
        rag = (f"http://127.0.0.1:{http_port}/rag/query", questions) if questions else None
        return asyncio.run(measure(args, texts, targets, rag))
    finally:
        stop(vigil)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="load duration per target and concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL:VAR=VALUE[,VAR=VALUE]",
                        help="also measure REST on a server started with these settings, e.g. "
                             "torch:VIGIL_MODEL_RUNTIME=torch (repeatable)")
    parser.add_argument("--no-rag", action="store_true", help="skip `/rag/query` (needs the corpus ingested)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "serving.json")
    args = parser.parse_args()

    from service.model_store import ModelHolder
    from vigil.settings import get_settings

    settings = get_settings()
    holder = ModelHolder(settings.sentiment_model_name, settings.serve_alias, settings.model_cache_dir, 3600)
    holder.poll_once()
    served = holder.require()
    model_dir = (holder.cache_dir / served.version).resolve()  # gunicorn runs from bench/
    frame, _ = load_sentiment(domains=["amazon", "yelp", "imdb"])
    texts = frame.sample(frac=1.0, random_state=0)["text"].tolist()

    print(f"model {served.name} v{served.version}; in-process ceiling…", flush=True)
    ceiling = in_process_ceiling(model_dir, texts, seconds=min(args.seconds, 5.0))
    print(json.dumps(ceiling), flush=True)
    del holder, served

    logs = REPO / "bench" / "out"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VIGIL_TRACING": os.environ.get("VIGIL_TRACING", "off")}
    questions = None
    if not args.no_rag:
        if not Path(settings.milvus_target).exists():
            subprocess.run([str(BIN / "vigil"), "rag", "ingest", str(REPO / "data" / "rag" / "corpus.jsonl")],
                           check=True)
        lines = (REPO / "data" / "rag" / "qa.jsonl").read_text().splitlines()
        questions = [json.loads(line)["question"] for line in lines if line.strip()]
        random.Random(0).shuffle(questions)
    results = measure_vigil(args, texts, env, "vigil", with_grpc=True, questions=questions)
    for variant in args.variant:
        label, _, assignments = variant.partition(":")
        overrides = dict(pair.split("=", 1) for pair in assignments.split(",") if pair)
        results += measure_vigil(args, texts, {**env, **overrides}, f"vigil[{label}]", with_grpc=False)

    flask_port = free_port()
    workers = "2"  # the same number of processes as Vigil's (API + model)
    flask = start([str(BIN / "gunicorn"), "-w", workers, "-b", f"127.0.0.1:{flask_port}", "--chdir",
                   str(REPO / "bench"), "flask_baseline:app"],
                  {**env, "VIGIL_BENCH_MODEL_DIR": str(model_dir), "VIGIL_TORCH_THREADS": "1",
                   "PYTHONPATH": str(REPO)}, logs / "flask.log")
    try:
        wait_http(f"http://127.0.0.1:{flask_port}/predict", method="POST")
        results += asyncio.run(measure(args, texts, {"flask-gunicorn": f"http://127.0.0.1:{flask_port}/predict"}))
    finally:
        stop(flask)

    best_ceiling = max(row["texts_per_second"] for row in ceiling if row["runtime"] == settings.model_runtime)
    by = {(r.target, r.concurrency): r for r in results}
    summary = {}
    top = max(args.concurrency)
    if ("vigil-rest", top) in by and ("flask-gunicorn", top) in by:
        summary = {
            f"rest_vs_flask_throughput_c{top}": round(by["vigil-rest", top].throughput
                                                     / by["flask-gunicorn", top].throughput, 2),
            f"rest_vs_ceiling_c{top}": round(by["vigil-rest", top].throughput / best_ceiling, 2),
            f"grpc_vs_rest_throughput_c{top}": round(by["vigil-grpc", top].throughput
                                                    / by["vigil-rest", top].throughput, 2),
        }
        if ("vigil-rest", 1) in by:
            summary["rest_vs_flask_p50_c1"] = round(by["vigil-rest", 1].p50_ms / by["flask-gunicorn", 1].p50_ms, 2)
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "model_version": texts and model_dir.name,
        "ceiling": ceiling,
        "results": [asdict(r) for r in results],
        "ratios": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print("\n| target | concurrency | req/s | p50 ms | p99 ms | errors |\n| --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r.target} | {r.concurrency} | {r.throughput} | {r.p50_ms} | {r.p99_ms} | {r.errors} |")
    print(f"\nin-process ceiling (texts/s by batch): {ceiling}\nratios: {json.dumps(summary)}")


if __name__ == "__main__":
    main()
