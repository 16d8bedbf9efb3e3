"""The promotion gate of the sentiment classifier, a :data:`vigil.registry.PromotionGate`.

Registered in the ``vigil.promotion_gates`` entry-point group as ``sentiment``; `vigil models promote` finds it for
the model named by VIGIL_SENTIMENT_MODEL_NAME (see ``vigil.cli``). It compares the version against the current
holder of the alias under the promotion policy and leaves the evidence on the version:

- ``vigil.<alias>.evaluation_run_id``: the comparison run in `evaluations` (empty when there was nothing to
  compare against);
- ``vigil.<alias>.evaluation_verdict``: ``pass``, ``fail`` or ``not-needed``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from rich.console import Console

from evaluations.policy import load_policy
from evaluations.progress import progress_bars
from evaluations.sentiment import compare_sentiment
from vigil import registry
from vigil.registry import ModelReference, RegisteredVersion
from vigil.settings import get_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

EVALUATION_RUN_TAG = "vigil.{alias}.evaluation_run_id"
EVALUATION_VERDICT_TAG = "vigil.{alias}.evaluation_verdict"


def sentiment_gate(client: MlflowClient, name: str, version: str, alias: str) -> list[str] | None:
    """None when ``name`` v``version`` may take ``alias``; otherwise the policy's reasons to refuse."""
    candidate = registry.resolve(client, ModelReference(name, version=str(version)))
    try:
        current = registry.resolve(client, ModelReference(name, alias=alias))
    except registry.ModelNotFound:
        _record(client, candidate, alias, run_id="", verdict="not-needed")
        logger.info("%s has no @%s: v%s needs no comparison", name, alias, version)
        return None
    policy = load_policy(get_settings().promotion_policy)
    # The gate runs inside `vigil models promote`: bars on the terminal's stderr, gone once the verdict is in.
    with progress_bars(Console(stderr=True), transient=True) as progress:
        comparison = compare_sentiment(
            client, name, candidate=str(candidate.version), baseline=str(current.version), policy=policy,
            progress=progress, trigger=f"gate:{alias}",
        )
    _record(client, candidate, alias, run_id=comparison.run_id or "",
            verdict="pass" if comparison.passed else "fail")
    if comparison.passed:
        return None
    return [*comparison.refusals, f"evidence: MLflow run {comparison.run_id} in experiment `evaluations`"]


def _record(client: MlflowClient, model: RegisteredVersion, alias: str, run_id: str, verdict: str) -> None:
    client.set_model_version_tag(model.name, model.version, EVALUATION_RUN_TAG.format(alias=alias), run_id)
    client.set_model_version_tag(model.name, model.version, EVALUATION_VERDICT_TAG.format(alias=alias), verdict)

