"""Serving benchmark: Vigil REST and gRPC vs. the in-process ceiling and the seed's Flask design, in one run.

    make bench-serving        (or: .venv/bin/python bench/serving.py [--rounds 3] [--seconds 5]
                               [--targets rest,grpc,rag,variants,flask,ceiling] [--variant LABEL:VAR=VALUE])

Needs the embedded stack with a champion and the RAG corpus (`make bench-serving` brings up what is missing).
Every target serves the same model version and answers the same request mix (single sentences from the dataset);
the load generator runs on the same machine, so the figures that matter are the ratios between targets measured
in this one run. One server runs at a time. A round is: Vigil (REST and gRPC taking turns at each concurrency, then
`/rag/query` at concurrency 1 and 8), each `--variant` (the same server started with other settings, REST only),
then Flask under gunicorn; the rounds follow one another, so the targets alternate and a burst of load from
elsewhere on the machine lands on one round of one target rather than on all of one target. The report gives, per
target and concurrency, the median over the rounds and the range, and issue 16's targets computed from those
medians (gRPC vs REST at c=1 also round by round). The in-process ceiling is measured once, before the rounds.

Chosen so that the default `make bench-serving` (3 rounds, three variants) stays within 20 minutes on 2 cores:
5 s per target and concurrency (after a 2 s warm-up per target, and 1 s at each concurrency before it is
measured), the variants at c=32 only (the throughput target's concurrency; `--variant-concurrency`), 3 s per cell
of the in-process ceiling. Each round starts its servers afresh, which also keeps a slow start from being hidden.
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
import statistics
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
    round: int = 1


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


CEILING_SECONDS = 3.0  # per runtime, thread count and batch: 20 cells, measured once per run


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


def progress(result: Result) -> str:
    """A result as it comes in (its round is set by `run_round`, which prints the round first)."""
    return json.dumps({key: value for key, value in asdict(result).items() if key != "round"})


SETTLE_SECONDS = 1.0


async def measure(args: argparse.Namespace, texts: list[str], targets: dict[str, str],
                  rag: tuple[str, list[str]] | None = None,
                  concurrencies: Sequence[int] | None = None) -> list[Result]:
    """Warm up, then load each target at each concurrency. Targets: name → REST URL or `grpc://host:port`;
    ``rag``: the `/rag/query` URL and the questions to ask it, at concurrency 1 and 8.

    The targets of one server take turns at each concurrency (REST c=1, gRPC c=1, REST c=8, …), so the two figures
    a ratio compares are taken seconds apart rather than after the other concurrencies, when the machine's load
    may have moved. Each measurement follows SETTLE_SECONDS at its own concurrency: the model service's adaptive
    batcher sets how long it waits for company from the waits it has just seen, so no figure starts from the
    statistics another load left behind.
    """
    results: list[Result] = []
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        callers: dict[str, Callable[[str], Awaitable[bool]]] = {}
        channels: list[grpc.aio.Channel] = []
        for name, url in targets.items():
            if url.startswith("grpc://"):
                channels.append(grpc.aio.insecure_channel(url.removeprefix("grpc://")))
                callers[name] = grpc_caller(pb_grpc.GRPCInferenceServiceStub(channels[-1]))
            else:
                callers[name] = rest_caller(session, url)
            await run_load(name, 8, 2.0, texts, callers[name])  # warm up: connections, batcher statistics
        for concurrency in concurrencies or args.concurrency:
            for name, call in callers.items():
                await run_load(name, concurrency, SETTLE_SECONDS, texts, call)
                result = await run_load(name, concurrency, args.seconds, texts, call)
                print(progress(result), flush=True)
                results.append(result)
        for channel in channels:
            await channel.close()
        if rag is not None:
            url, questions = rag
            call = rag_caller(session, url)
            await run_load("vigil-rag", 2, 2.0, questions, call)
            for concurrency in (1, 8):
                result = await run_load("vigil-rag", concurrency, args.seconds, questions, call)
                print(progress(result), flush=True)
                results.append(result)
    return results


def measure_vigil(args: argparse.Namespace, texts: list[str], env: dict[str, str], name: str, with_rest: bool,
                  with_grpc: bool, questions: list[str] | None = None,
                  concurrencies: Sequence[int] | None = None) -> list[Result]:
    """Start one `vigil serve` with ``env``, load it, stop it: one server on the cores at a time."""
    vigil, http_port, grpc_port = start_vigil(env, REPO / "bench" / "out" / f"{name}-serve.log")
    try:
        targets = {f"{name}-rest": f"http://127.0.0.1:{http_port}/predict"} if with_rest else {}
        if with_grpc:
            targets[f"{name}-grpc"] = f"grpc://127.0.0.1:{grpc_port}"
        rag = (f"http://127.0.0.1:{http_port}/rag/query", questions) if questions else None
        return asyncio.run(measure(args, texts, targets, rag, concurrencies))
    finally:
        stop(vigil)


TARGETS = ("rest", "grpc", "rag", "variants", "flask", "ceiling")


def parse_targets(value: str) -> tuple[str, ...]:
    """``--targets rest,grpc`` → the named targets in their canonical order; unknown names are an error."""
    names = {name.strip() for name in value.split(",") if name.strip()}
    if unknown := names - set(TARGETS):
        raise argparse.ArgumentTypeError(f"unknown targets {sorted(unknown)}; choose from {','.join(TARGETS)}")
    if not names:
        raise argparse.ArgumentTypeError("no target named")
    return tuple(name for name in TARGETS if name in names)


def measure_flask(args: argparse.Namespace, texts: list[str], env: dict[str, str], model_dir: Path) -> list[Result]:
    """The seed's Flask design under gunicorn, started, loaded and stopped."""
    flask_port = free_port()
    workers = "2"  # the same number of processes as Vigil's (API + model)
    flask = start([str(BIN / "gunicorn"), "-w", workers, "-b", f"127.0.0.1:{flask_port}", "--chdir",
                   str(REPO / "bench"), "flask_baseline:app"],
                  {**env, "VIGIL_BENCH_MODEL_DIR": str(model_dir), "VIGIL_TORCH_THREADS": "1",
                   "PYTHONPATH": str(REPO)}, REPO / "bench" / "out" / "flask.log")
    try:
        wait_http(f"http://127.0.0.1:{flask_port}/predict", method="POST")
        return asyncio.run(measure(args, texts, {"flask-gunicorn": f"http://127.0.0.1:{flask_port}/predict"}))
    finally:
        stop(flask)


REST_TOP = 32  # the concurrency the throughput targets are stated at


@dataclass
class Spread:
    """One target at one concurrency over the rounds: the medians and the range (min, max) of each figure."""

    target: str
    concurrency: int
    rounds: int
    errors: int
    throughput: float
    p50_ms: float
    p99_ms: float
    throughput_range: tuple[float, float]
    p50_range: tuple[float, float]
    p99_range: tuple[float, float]


def spreads(results: Sequence[Result]) -> list[Spread]:
    """Per target and concurrency (in the order first measured): median and range of each figure over rounds."""
    groups: dict[tuple[str, int], list[Result]] = {}
    for result in results:
        groups.setdefault((result.target, result.concurrency), []).append(result)
    rows = []
    for (target, concurrency), group in groups.items():
        throughput = [r.throughput for r in group]
        p50 = [r.p50_ms for r in group]
        p99 = [r.p99_ms for r in group]
        rows.append(Spread(target, concurrency, len(group), sum(r.errors for r in group),
                           round(statistics.median(throughput), 1), round(statistics.median(p50), 1),
                           round(statistics.median(p99), 1), (min(throughput), max(throughput)),
                           (min(p50), max(p50)), (min(p99), max(p99))))
    return rows


@dataclass
class Check:
    """One of issue 16's targets, computed from the medians of this run."""

    name: str
    value: float | None  # None: a target it needs was not measured
    goal: str
    met: bool | None
    detail: str = ""


def longest_streak(flags: Sequence[bool]) -> int:
    best = current = 0
    for flag in flags:
        current = current + 1 if flag else 0
        best = max(best, current)
    return best


def target_checks(rows: Sequence[Spread], results: Sequence[Result], ceiling: Sequence[dict[str, Any]]
                  ) -> list[Check]:
    """Issue 16's serving targets from the medians (`rows`); gRPC vs REST at c=1 round by round as well."""
    median = {(row.target, row.concurrency): row for row in rows}

    def ratio(name: str, goal: str, upper: bool, bound: float, numerator: float | None,
              denominator: float | None, detail: str = "") -> Check:
        if numerator is None or denominator is None or not denominator:
            return Check(name, None, goal, None, "not measured")
        value = round(numerator / denominator, 2)
        return Check(name, value, goal, value <= bound if upper else value >= bound, detail)

    def figure(target: str, concurrency: int, attribute: str) -> float | None:
        row = median.get((target, concurrency))
        return None if row is None else float(getattr(row, attribute))

    onnx = [row["texts_per_second"] for row in ceiling if row["runtime"] == "onnx"]
    best = max(onnx, default=None)
    rest_top = figure("vigil-rest", REST_TOP, "throughput")
    checks = [
        ratio(f"REST c={REST_TOP} / Flask c={REST_TOP} req/s", "≥ 2.5", False, 2.5, rest_top,
              figure("flask-gunicorn", REST_TOP, "throughput")),
        ratio(f"REST c={REST_TOP} req/s / float ONNX in-process ceiling (best batch)", "≥ 0.80", False, 0.80,
              rest_top, best),
    ]
    by_round: dict[int, dict[str, float]] = {}
    for result in results:
        if result.concurrency == 1 and result.target in ("vigil-rest", "vigil-grpc"):
            by_round.setdefault(result.round, {})[result.target] = result.p50_ms
    paired = [p50s for _, p50s in sorted(by_round.items()) if len(p50s) == 2]
    flags = [p50s["vigil-grpc"] <= p50s["vigil-rest"] for p50s in paired]
    grpc_c1 = ratio("gRPC c=1 p50 / REST c=1 p50", "≤ 1.00, 3 rounds in a row", True, 1.0,
                    figure("vigil-grpc", 1, "p50_ms"), figure("vigil-rest", 1, "p50_ms"),
                    f"met in {sum(flags)} of {len(flags)} rounds, longest run {longest_streak(flags)}")
    if grpc_c1.met is not None:
        grpc_c1.met = grpc_c1.met and longest_streak(flags) >= 3
    checks.append(grpc_c1)
    rag_c8 = figure("vigil-rag", 8, "throughput")
    rag_c1 = figure("vigil-rag", 1, "p50_ms")
    checks.append(Check("RAG c=8 q/s", rag_c8, "≥ 100", None if rag_c8 is None else rag_c8 >= 100))
    checks.append(Check("RAG c=1 p50 ms", rag_c1, "≤ 20", None if rag_c1 is None else rag_c1 <= 20))
    return checks


def print_report(rows: Sequence[Spread], checks: Sequence[Check], ceiling: Sequence[dict[str, Any]]) -> None:
    print("\n| target | concurrency | rounds | req/s (range) | p50 ms (range) | p99 ms (range) | errors |\n"
          "| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r.target} | {r.concurrency} | {r.rounds} "
              f"| {r.throughput} ({r.throughput_range[0]}–{r.throughput_range[1]}) "
              f"| {r.p50_ms} ({r.p50_range[0]}–{r.p50_range[1]}) "
              f"| {r.p99_ms} ({r.p99_range[0]}–{r.p99_range[1]}) | {r.errors} |")
    print("\n| target (medians of this run) | value | goal | met |\n| --- | --- | --- | --- |")
    for check in checks:
        met = "—" if check.met is None else ("yes" if check.met else "**no**")
        detail = f" ({check.detail})" if check.detail else ""
        print(f"| {check.name} | {'—' if check.value is None else check.value} | {check.goal} | {met}{detail} |")
    if ceiling:
        print(f"\nin-process ceiling (texts/s by batch): {json.dumps(ceiling)}")


def run_round(args: argparse.Namespace, number: int, texts: list[str], env: dict[str, str],
              questions: list[str] | None, model_dir: Path) -> list[Result]:
    """One round: each server target in turn (Vigil REST, gRPC, RAG; the variants; Flask), one server at a time."""
    results: list[Result] = []
    if {"rest", "grpc"} & set(args.targets) or questions:
        results += measure_vigil(args, texts, env, "vigil", with_rest="rest" in args.targets,
                                 with_grpc="grpc" in args.targets, questions=questions)
    for variant in args.variant if "variants" in args.targets else []:
        label, _, assignments = variant.partition(":")
        overrides = dict(pair.split("=", 1) for pair in assignments.split(",") if pair)
        results += measure_vigil(args, texts, {**env, **overrides}, f"vigil[{label}]", with_rest=True,
                                 with_grpc=False, concurrencies=args.variant_concurrency)
    if "flask" in args.targets:
        results += measure_flask(args, texts, env, model_dir)
    for result in results:
        result.round = number
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="load duration per target and concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, REST_TOP])
    parser.add_argument("--rounds", type=int, default=3, help="rounds alternating the server targets; the report "
                                                              "gives the median and range over them")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL:VAR=VALUE[,VAR=VALUE]",
                        help="also measure REST on a server started with these settings, e.g. "
                             "torch:VIGIL_MODEL_RUNTIME=torch (repeatable)")
    parser.add_argument("--variant-concurrency", type=int, nargs="+", default=[REST_TOP],
                        help="the concurrencies of the variants (default: the throughput target's alone)")
    parser.add_argument("--targets", type=parse_targets, default=TARGETS,
                        help=f"comma-separated subset of {','.join(TARGETS)} (default: all)")
    parser.add_argument("--no-rag", action="store_true", help="skip `/rag/query` (as leaving rag out of --targets)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "serving.json")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    from service.model_store import ModelHolder
    from vigil.mlflow_auth import Role, authenticate_process
    from vigil.settings import get_settings

    settings = get_settings()
    authenticate_process(settings, Role.serving)  # the bench only reads the registry, as the servers do
    holder = ModelHolder(settings.sentiment_model_name, settings.serve_alias, settings.model_cache_dir, 3600)
    holder.poll_once()
    served = holder.require()
    model_dir = (holder.cache_dir / served.version).resolve()  # gunicorn runs from bench/
    frame, _ = load_sentiment(domains=["amazon", "yelp", "imdb"])
    texts = frame.sample(frac=1.0, random_state=0)["text"].tolist()

    ceiling: list[dict[str, Any]] = []
    if "ceiling" in args.targets:
        print(f"model {served.name} v{served.version}; in-process ceiling…", flush=True)
        ceiling = in_process_ceiling(model_dir, texts, seconds=min(args.seconds, CEILING_SECONDS))
        print(json.dumps(ceiling), flush=True)
    del holder, served

    (REPO / "bench" / "out").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VIGIL_TRACING": os.environ.get("VIGIL_TRACING", "off")}
    questions = None
    if "rag" in args.targets and not args.no_rag:
        if not Path(settings.milvus_target).exists():
            subprocess.run([str(BIN / "vigil"), "rag", "ingest", str(REPO / "data" / "rag" / "corpus.jsonl")],
                           check=True)
        lines = (REPO / "data" / "rag" / "qa.jsonl").read_text().splitlines()
        questions = [json.loads(line)["question"] for line in lines if line.strip()]
        random.Random(0).shuffle(questions)
    results: list[Result] = []
    for number in range(1, args.rounds + 1):
        print(f"round {number} of {args.rounds}", flush=True)
        results += run_round(args, number, texts, env, questions, model_dir)

    rows = spreads(results)
    checks = target_checks(rows, results, ceiling)
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "load_average_at_end": os.getloadavg(),
        "model_version": model_dir.name,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "ceiling": ceiling,
        "results": [asdict(r) for r in results],
        "medians": [asdict(r) for r in rows],
        "targets": [asdict(c) for c in checks],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print_report(rows, checks, ceiling)


if __name__ == "__main__":
    main()
