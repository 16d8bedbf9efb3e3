"""The promotion gates, each a :data:`vigil.registry.PromotionGate`: the sentiment classifier's, the RAG span reader's,
and any other model's.

Registered in the ``vigil.promotion_gates`` entry-point group as ``sentiment`` (found for the model named by
VIGIL_SENTIMENT_MODEL_NAME), ``rag-reader`` (the span reader) and ``model`` (any other model but the text embedder;
see ``vigil.cli``). Each compares
the version against the current holder of the alias under the promotion policy and leaves the evidence on the
version:

- ``vigil.<alias>.evaluation_run_id``: the comparison run in `evaluations` (empty when there was nothing to
  compare against);
- ``vigil.<alias>.evaluation_verdict``: ``pass``, ``fail`` or ``not-needed``;
- with live evidence (``vigil models promote --evidence live|both``, :mod:`evaluations.live`):
  ``vigil.<alias>.live_evaluation_run_id`` and ``vigil.<alias>.live_evaluation_verdict`` (``pass``, ``fail`` or
  ``not-enough-evidence``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from evaluations.live import NotEnoughEvidence, compare_live
from evaluations.model_eval import compare_models
from evaluations.progress import progress_bars
from evaluations.rag import ReaderComparison, compare_readers
from evaluations.schemas import Comparison, ModelComparison
from evaluations.scoring import ProgressCallback
from evaluations.sentiment import compare_sentiment
from vigil import registry
from vigil.errors import VigilError
from vigil.policy import Policy, load_policy
from vigil.registry import Evidence, GateData, ModelReference, RegisteredVersion
from vigil.settings import get_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

EVALUATION_RUN_TAG = "vigil.{alias}.evaluation_run_id"
EVALUATION_VERDICT_TAG = "vigil.{alias}.evaluation_verdict"
LIVE_EVALUATION_RUN_TAG = "vigil.{alias}.live_evaluation_run_id"
LIVE_EVALUATION_VERDICT_TAG = "vigil.{alias}.live_evaluation_verdict"


def sentiment_gate(client: MlflowClient, name: str, version: str, alias: str,
                   data: GateData | None = None) -> list[str] | None:
    """None when the sentiment classifier ``name`` v``version`` may take ``alias``; otherwise the policy's reasons.

    It is judged on ``data.data`` (test, a domain, or a sentence<TAB>label file) when given, else on the policy's
    [gate] data.
    """
    if data is not None and data.target:
        raise VigilError("the sentiment classifier's data carries its own labels: --data test|imdb|FILE, no --target")

    def compare(candidate: RegisteredVersion, current: RegisteredVersion, policy: Policy,
                progress: ProgressCallback | None) -> Comparison:
        return compare_sentiment(client, name, candidate=str(candidate.version), baseline=str(current.version),
                                 policy=policy, data=data.data if data else None, progress=progress,
                                 trigger=f"gate:{alias}")

    return _gate(client, name, version, alias, compare, data.evidence if data else "offline")


def model_gate(client: MlflowClient, name: str, version: str, alias: str,
               data: GateData | None = None) -> list[str] | None:
    """None when any other model's ``name`` v``version`` may take ``alias``; otherwise the policy's reasons.

    Both versions are scored on ``data`` (a CSV or Parquet file and its target column) when given, else on the
    candidate's attached evaluation dataset, under the rules the policy gives this model or its task.
    """
    def compare(candidate: RegisteredVersion, current: RegisteredVersion, policy: Policy,
                progress: ProgressCallback | None) -> ModelComparison:
        return compare_models(client, name, str(candidate.version), str(current.version), policy,
                              data=Path(data.data) if data and data.data else None,
                              target=data.target if data else None, progress=progress, trigger=f"gate:{alias}")

    return _gate(client, name, version, alias, compare, data.evidence if data else "offline")


def reader_gate(client: MlflowClient, name: str, version: str, alias: str,
                data: GateData | None = None) -> list[str] | None:
    """None when the RAG span reader ``name`` v``version`` may take ``alias``; otherwise the policy's reasons.

    Both versions answer the same held-out questions (the reader's split by article, :mod:`training.reader`), each
    on its own passage; a candidate whose token F1 is lower than the holder's beyond the policy's
    ``[models."<name>"]`` rules is refused.
    """
    if data is not None and (data.data or data.target):
        raise VigilError("the reader is judged on its held-out questions; --data and --target do not apply")

    def compare(candidate: RegisteredVersion, current: RegisteredVersion, policy: Policy,
                progress: ProgressCallback | None) -> ReaderComparison:
        return compare_readers(client, name, str(candidate.version), str(current.version), trigger=f"gate:{alias}",
                               progress=progress)

    return _gate(client, name, version, alias, compare)


def _gate(client: MlflowClient, name: str, version: str, alias: str,
          compare: Callable[[RegisteredVersion, RegisteredVersion, Policy, ProgressCallback | None],
                            Comparison | ModelComparison | ReaderComparison],
          evidence: Evidence = "offline") -> list[str] | None:
    candidate = registry.resolve(client, ModelReference(name, version=str(version)))
    try:
        current = registry.resolve(client, ModelReference(name, alias=alias))
    except registry.ModelNotFound:
        _record(client, candidate, alias, run_id="", verdict="not-needed")
        logger.info("%s has no @%s: v%s needs no comparison", name, alias, version)
        return None
    policy = load_policy(get_settings().promotion_policy)
    refusals: list[str] = []
    if evidence in ("offline", "both"):
        # The gate runs inside `vigil models promote`: bars on the terminal's stderr, gone once the verdict is in.
        with progress_bars(Console(stderr=True), transient=True) as progress:
            comparison = compare(candidate, current, policy, progress)
        _record(client, candidate, alias, run_id=comparison.run_id or "",
                verdict="pass" if comparison.passed else "fail")
        if not comparison.passed:
            refusals += [*comparison.refusals,
                         f"evidence: MLflow run {comparison.run_id} in experiment `evaluations`"]
    if evidence in ("live", "both"):
        refusals += _live_refusals(client, candidate, current, alias, policy)
    return refusals or None


def _live_refusals(client: MlflowClient, candidate: RegisteredVersion, current: RegisteredVersion, alias: str,
                   policy: Policy) -> list[str]:
    """The live comparison's reasons to refuse (none: it passed), its verdict recorded on the candidate."""
    try:
        comparison = compare_live(client, candidate.name, str(candidate.version), str(current.version), policy,
                                  trigger=f"gate:{alias}:live")
    except NotEnoughEvidence as missing:
        _record(client, candidate, alias, run_id="", verdict="not-enough-evidence", live=True)
        return [str(missing)]
    _record(client, candidate, alias, run_id=comparison.run_id or "",
            verdict="pass" if comparison.passed else "fail", live=True)
    if comparison.passed:
        return []
    return [*comparison.refusals, f"live evidence: MLflow run {comparison.run_id} in experiment `evaluations`"]


def _record(client: MlflowClient, model: RegisteredVersion, alias: str, run_id: str, verdict: str,
            live: bool = False) -> None:
    run_tag, verdict_tag = (LIVE_EVALUATION_RUN_TAG, LIVE_EVALUATION_VERDICT_TAG) if live else (
        EVALUATION_RUN_TAG, EVALUATION_VERDICT_TAG)
    client.set_model_version_tag(model.name, model.version, run_tag.format(alias=alias), run_id)
    client.set_model_version_tag(model.name, model.version, verdict_tag.format(alias=alias), verdict)

