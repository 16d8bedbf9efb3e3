"""The serving bench compares gRPC and REST at c=1 fairly: the two protocols take turns at each concurrency, each
after settling at that concurrency, and the c=1 target holds only when gRPC wins three rounds in a row.

No server: the load generator is replaced by a recorder, so these tests check the order and the arithmetic only.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "serving.py"


@pytest.fixture(scope="module")
def serving() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_serving", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def result(serving: ModuleType, target: str, concurrency: int, p50: float, round_: int,
           throughput: float = 100.0) -> Any:
    return serving.Result(target, concurrency, 100, 0, 1.0, throughput, p50, p50 * 2, round_)


def test_rest_and_grpc_take_turns_at_each_concurrency(serving: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[tuple[str, int, float]] = []

    async def recorded(name: str, concurrency: int, seconds: float, texts: Sequence[str],
                       call: Callable[[str], Awaitable[bool]]) -> Any:
        loads.append((name, concurrency, seconds))
        return result(serving, name, concurrency, 5.0, 1)

    monkeypatch.setattr(serving, "run_load", recorded)
    args = argparse.Namespace(concurrency=[1, 32], seconds=5.0)
    targets = {"vigil-rest": "http://127.0.0.1:1/predict", "vigil-grpc": "grpc://127.0.0.1:1"}
    results = asyncio.run(serving.measure(args, ["a text"], targets))

    measured = [(r.target, r.concurrency) for r in results]
    assert measured == [("vigil-rest", 1), ("vigil-grpc", 1), ("vigil-rest", 32), ("vigil-grpc", 32)]
    for index, (name, concurrency, seconds) in enumerate(loads):
        if seconds == args.seconds:  # each measurement follows a settling load of its own target and concurrency
            assert loads[index - 1] == (name, concurrency, serving.SETTLE_SECONDS)

def test_the_grpc_target_needs_three_rounds_in_a_row(serving: ModuleType) -> None:
    rounds = [(1, 9.0, 10.0), (2, 11.0, 10.0), (3, 9.5, 10.0), (4, 9.0, 10.0), (5, 9.9, 10.0)]
    results = [r for n, grpc_p50, rest_p50 in rounds
               for r in (result(serving, "vigil-grpc", 1, grpc_p50, n), result(serving, "vigil-rest", 1, rest_p50, n))]
    check = next(c for c in serving.target_checks(serving.spreads(results), results, [])
                 if c.name.startswith("gRPC c=1"))
    assert check.value == 0.95  # medians 9.5 / 10.0
    assert check.met is True
    assert "4 of 5 rounds, longest run 3" in check.detail

    broken = results[:6]  # rounds 1-3: gRPC loses round 2, so no three in a row
    check = next(c for c in serving.target_checks(serving.spreads(broken), broken, [])
                 if c.name.startswith("gRPC c=1"))
    assert check.met is False


def test_ratios_come_from_medians_and_the_float_onnx_ceiling(serving: ModuleType) -> None:
    results = [result(serving, "vigil-rest", 32, 10.0, n, throughput) for n, throughput in ((1, 500), (2, 800),
                                                                                             (3, 600))]
    results += [result(serving, "flask-gunicorn", 32, 10.0, n, throughput) for n, throughput in ((1, 200), (2, 100),
                                                                                                 (3, 300))]
    ceiling = [{"runtime": "onnx", "batch": 16, "texts_per_second": 750.0},
               {"runtime": "torch", "batch": 16, "texts_per_second": 2000.0}]
    rows = serving.spreads(results)
    rest = next(r for r in rows if r.target == "vigil-rest")
    assert (rest.throughput, rest.throughput_range) == (600.0, (500, 800))
    checks = {c.name.split(" / ")[1].split()[0]: c for c in serving.target_checks(rows, results, ceiling)
              if c.name.startswith("REST")}
    assert checks["Flask"].value == 3.0 and checks["Flask"].met is True  # 600 / 200
    assert checks["float"].value == 0.8 and checks["float"].met is True  # 600 / 750, torch's figure ignored


def test_targets_parse_to_the_canonical_order_and_refuse_unknown_names(serving: ModuleType) -> None:
    assert serving.parse_targets("grpc, rest") == ("rest", "grpc")
    with pytest.raises(argparse.ArgumentTypeError, match="unknown targets"):
        serving.parse_targets("rest,soap")
