"""The sentiment model as its own BentoML service: adaptive batching, alias following, readiness.

Separate from the API service (composed with `bentoml.depends`) so it scales apart from HTTP handling, and so
REST and gRPC requests meet in one batcher. The batching limits come from settings when BentoML imports this
module, because `@bentoml.api` takes them at class definition.
"""

from __future__ import annotations

import os
from typing import Any

import bentoml
from bentoml.exceptions import ServiceUnavailable
from pydantic import BaseModel

from vigil.settings import get_settings

_settings = get_settings()


class ScoredText(BaseModel):
    label: str
    score: float
    version: str
    batch_size: int  # of the batch this text was scored in, after adaptive batching


def torch_threads() -> int:
    """Intra-op threads of torch (the RAG encoder; the classifier when VIGIL_MODEL_RUNTIME=torch): one by default.

    Measured on this 2-core machine: with 2 threads, MiniLM's throughput fell 20x (68 → 3 texts/s at batch 1,
    157 → 32 at batch 64) as soon as other processes (the API worker, the load) wanted a core, because OpenMP's
    threads wait on each other at every layer. One thread per model worker keeps it steady. ONNX Runtime's pool
    (VIGIL_ONNX_THREADS, spinning off) did not collapse: 2 threads under two busy-looping processes gave 167
    req/s at c=8 against 144 with one.
    """
    return max(1, int(os.environ.get("VIGIL_TORCH_THREADS", "1")))


@bentoml.service(name="vigil-sentiment", workers=1, traffic={"timeout": 60})
class SentimentModel:
    def __init__(self) -> None:
        import torch

        from service.bento import packaged_model_dir
        from service.model_store import ModelHolder
        from telemetry.metrics import get_metrics

        torch.set_num_threads(torch_threads())
        settings = get_settings()
        self.metrics = get_metrics()
        self.holder = ModelHolder(
            settings.sentiment_model_name,
            settings.serve_alias,
            settings.model_cache_dir,
            settings.alias_poll_seconds,
            bundle_dir=packaged_model_dir(),
            on_swap=self._count_swap,
            runtime=settings.model_runtime,
            threads=settings.onnx_threads or os.cpu_count() or 1,
        )
        self.holder.start()
        if self.holder.current is not None:
            # The first call through torch is several times slower than the rest: pay it before traffic.
            self.holder.current.classifier.predict(["warm up"] * 8)

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=_settings.batch_max_size,
                 max_latency_ms=_settings.batch_max_latency_ms)
    def predict(self, texts: list[str]) -> list[ScoredText]:
        model = self.holder.current
        if model is None:
            raise ServiceUnavailable(f"model not loaded: {self.holder.status.reason}")
        predictions = model.classifier.predict(texts, batch_size=max(len(texts), 1))
        self.metrics.batch_size.observe(len(texts))
        return [ScoredText(label=p.label, score=p.score, version=model.version, batch_size=len(texts))
                for p in predictions]

    def _count_swap(self, previous: Any, loaded: Any) -> None:
        self.metrics.model_loads.labels(model=loaded.name, version=loaded.version, outcome=loaded.source).inc()
        if previous is not None and previous.version != loaded.version:
            self.metrics.model_swaps.labels(model=loaded.name).inc()

    @bentoml.api
    def describe(self) -> dict[str, Any]:
        return self.holder.describe()

    def __is_ready__(self) -> bool:
        return self.holder.status.ready
