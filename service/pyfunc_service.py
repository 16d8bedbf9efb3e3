"""One BentoML model service per pyfunc model of VIGIL_MODELS: adaptive batching, alias following, readiness.

The classes are made when BentoML imports the API module (:func:`pyfunc_services`), from settings, because
`@bentoml.service` and `@bentoml.api` take their names and batching limits at class definition and BentoML imports
the module again in every worker, where the same settings make the same classes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import bentoml
from bentoml.exceptions import ServiceUnavailable
from bentoml.validators import ContentType

from service.http import INTERNAL_SERVICE_LOGGING, OutliveCallers
from service.model_store import ModelHolder, ModelRefused, Source, swap_counter
from service.pyfunc import PredictedRow, model_input, predicted_rows
from service.shadow import ShadowBatch, ShadowScorer, WorkerSpec
from vigil.settings import Settings, get_settings
from vigil.signature import ModelSignatureSpec, NoSignature, signature_spec

# Named media type: without it BentoML derives it from the output's JSON schema on every response (bench/RESULTS.md,
# models).
PredictedRows = Annotated[list[PredictedRow], ContentType("application/json")]


def service_name(model_name: str) -> str:
    """A BentoML service name for ``model_name`` (BentoML takes lower-case letters, digits and `-` only)."""
    return "vigil-model-" + (re.sub(r"[^a-z0-9]+", "-", model_name.lower()).strip("-") or "unnamed")


class ServedPyfunc:
    """A loaded pyfunc model with the signature that types it."""

    def __init__(self, model: Any, spec: ModelSignatureSpec, flavor: str) -> None:
        self.model = model
        self.spec = spec
        self.runtime = f"pyfunc ({flavor})"


def load_pyfunc(model_dir: Path, run_id: str, version: str, source: Source) -> ServedPyfunc:
    """Load a version through MLflow's own loader; a model without a signature is refused, with the reason.

    MLflow unpickles the model's Python objects, so this runs the version's code: registering a version is trusted
    with that (README, "Trust").
    """
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(str(model_dir))
    try:
        spec = signature_spec(model.metadata.signature)
    except NoSignature as missing:
        raise ModelRefused(f"{missing}; log the model with a signature (mlflow.models.infer_signature)") from None
    flavor = next((name for name in model.metadata.flavors if name != "python_function"), "python_function")
    return ServedPyfunc(model, spec, flavor)


def pyfunc_service(name: str, alias: str, settings: Settings) -> type:
    """The BentoML service class that serves ``name@alias``."""
    limits = settings.limits_of(name)

    @bentoml.service(name=service_name(name), workers=1, traffic={"timeout": 60}, logging=INTERNAL_SERVICE_LOGGING)
    class PyfuncModel:
        def __init__(self) -> None:
            from telemetry.metrics import get_metrics

            self.callers = OutliveCallers()  # on SIGTERM, answers the API worker's last calls before it stops
            current = get_settings()
            self.metrics = get_metrics()
            self.holder = ModelHolder(name, alias, current.model_cache_dir, current.alias_poll_seconds,
                                      on_swap=swap_counter(self.metrics), loader=load_pyfunc)
            self.holder.start()
            self.shadow_scorer = ShadowScorer(WorkerSpec("pyfunc", name, current.shadow_alias), self.holder,
                                              ) if limits.shadow_percent > 0 else None

        @bentoml.api(batchable=True, batch_dim=0, max_batch_size=limits.batch_max_size,
                     max_latency_ms=limits.batch_max_latency_ms)
        def predict(self, rows: list[dict[str, Any]]) -> PredictedRows:
            loaded = self.holder.current
            if loaded is None:
                raise ServiceUnavailable(f"model not loaded: {self.holder.status.reason}")
            served: ServedPyfunc = loaded.model
            with self.callers.call():
                prediction = served.model.predict(model_input(served.spec, rows))
            self.metrics.batch_size.observe(len(rows))
            return predicted_rows(prediction, len(rows), loaded.version)

        @bentoml.api
        async def shadow(self, rows: list[dict[str, Any]]) -> ShadowBatch:
            """``rows`` predicted by the shadow alias's version in the low-priority worker (service/shadow.py)."""
            if self.shadow_scorer is None:
                return ShadowBatch(skipped="shadow scoring is off (shadow_percent 0)")
            return await self.shadow_scorer.score(rows)

        @bentoml.api
        def describe(self) -> dict[str, Any]:
            """The holder's state, with the served version's signature as Open Inference tensors."""
            state = self.holder.describe()
            state["shadow"] = self.shadow_scorer.describe() if self.shadow_scorer is not None else None
            loaded = self.holder.current
            if loaded is not None:
                state["signature"] = loaded.model.spec.as_dict()
            return state

        def __is_ready__(self) -> bool:
            return self.holder.status.ready

    return PyfuncModel


def pyfunc_services(settings: Settings) -> dict[str, type]:
    """Model name -> its service class, for every pyfunc model of VIGIL_MODELS."""
    return {name: pyfunc_service(name, alias, settings) for name, alias in settings.served_models}
