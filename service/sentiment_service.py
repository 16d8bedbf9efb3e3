"""The sentiment model as its own BentoML service: adaptive batching, alias following, readiness.

Separate from the API service (composed with `bentoml.depends`) so it scales apart from HTTP handling, and so
REST and gRPC requests meet in one batcher. The batching limits come from settings when BentoML imports this
module, because `@bentoml.api` takes them at class definition.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import bentoml
from bentoml.exceptions import ServiceUnavailable
from bentoml.validators import ContentType
from pydantic import BaseModel

from service.http import INTERNAL_SERVICE_LOGGING, OutliveCallers
from service.shadow import ShadowBatch, ShadowScorer, WorkerSpec
from vigil.settings import get_settings

# Read at import, once: `@bentoml.api` takes the batching limits at class definition, and BentoML imports this
# module in each worker before any instance exists.
_settings = get_settings()
_batching = _settings.limits_of(_settings.sentiment_model_name)


class ScoredText(BaseModel):
    label: str
    score: float
    version: str
    batch_size: int  # of the batch this text was scored in, after adaptive batching
    precision: str = "float"  # of the graph that scored it: float | int8 (VIGIL_MODEL_QUANTIZE)


# Named media type: without it BentoML derives it from the output's JSON schema on every response (bench/RESULTS.md,
# models).
ScoredTexts = Annotated[list[ScoredText], ContentType("application/json")]


@bentoml.service(name="vigil-sentiment", workers=1, traffic={"timeout": 60}, logging=INTERNAL_SERVICE_LOGGING)
class SentimentModel:
    def __init__(self) -> None:
        import torch

        from service.bento import packaged_model_dir
        from service.model_store import ModelHolder, swap_counter
        from telemetry.metrics import get_metrics

        self.callers = OutliveCallers()  # on SIGTERM, answers the API worker's last calls before it stops
        settings = get_settings()
        torch.set_num_threads(settings.torch_threads)
        self.metrics = get_metrics()
        self.holder = ModelHolder(
            settings.sentiment_model_name,
            settings.serve_alias,
            settings.model_cache_dir,
            settings.alias_poll_seconds,
            bundle_dir=packaged_model_dir(),
            on_swap=swap_counter(self.metrics),
            runtime=settings.model_runtime,
            threads=settings.onnx_threads or os.cpu_count() or 1,
            quantize=settings.model_quantize,
        )
        self.holder.start()
        if self.holder.current is not None:
            # The first call through torch is several times slower than the rest: pay it before traffic.
            self.holder.current.model.predict(["warm up"] * 8)
        # The challenger is loaded (in its own low-priority process) only when some traffic is to be shadowed.
        self.shadow_scorer = ShadowScorer(
            WorkerSpec("sentiment", settings.sentiment_model_name, settings.shadow_alias), self.holder,
        ) if _batching.shadow_percent > 0 else None

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=_batching.batch_max_size,
                 max_latency_ms=_batching.batch_max_latency_ms)
    def predict(self, texts: list[str]) -> ScoredTexts:
        model = self.holder.current
        if model is None:
            raise ServiceUnavailable(f"model not loaded: {self.holder.status.reason}")
        with self.callers.call():
            predictions = model.model.predict(texts, batch_size=max(len(texts), 1))
        self.metrics.batch_size.observe(len(texts))
        precision = getattr(model.model, "precision", "float")
        return [ScoredText(label=p.label, score=p.score, version=model.version, batch_size=len(texts),
                           precision=precision) for p in predictions]


    @bentoml.api
    async def shadow(self, texts: list[str]) -> ShadowBatch:
        """``texts`` scored by the shadow alias's version in the low-priority worker (service/shadow.py); skipped,
        with the reason, when there is none or it is the served version."""
        if self.shadow_scorer is None:
            return ShadowBatch(skipped="shadow scoring is off (VIGIL_SHADOW_PERCENT=0)")
        return await self.shadow_scorer.score(texts)

    @bentoml.api
    def describe(self) -> dict[str, Any]:
        state = self.holder.describe()
        state["shadow"] = self.shadow_scorer.describe() if self.shadow_scorer is not None else None
        return state

    def __is_ready__(self) -> bool:
        return self.holder.status.ready
