"""Live evidence for a promotion: two versions judged on the real requests both answered, by their true labels.

The served version answered each request; the candidate scored the same request as its shadow
(``VIGIL_SHADOW_PERCENT``); the true label came back by request id (``POST /feedback``). Both versions' answers
are read from the inference log, paired row by row on the same requests, and judged by the policy's
``[live.rules]`` with paired-bootstrap intervals, the way an offline comparison is judged on a labelled table. Fewer
than ``[live] min_labelled`` such requests is no evidence: the gate refuses and says what is missing.

The comparison is logged in experiment `evaluations` like an offline one (``vigil.eval.kind=compare``, trigger
``gate:<alias>:live``), each side with ``source="live"``, and the pairs it judged as ``live_pairs.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import pandas as pd

from evaluations import tracking
from evaluations.metrics import paired_bootstrap_of
from evaluations.model_eval import Answers, infer_task, measure, metric_deltas, resampled_scores
from evaluations.policy import judge
from evaluations.schemas import DatasetInfo, ModelComparison, ModelEvaluation
from telemetry import feedback
from telemetry.records import create_engine
from vigil.contracts import ModelIdentity
from vigil.policy import Policy, Task
from vigil.settings import Settings, get_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LivePairs:
    """The labelled rows both versions answered: one row per (request, place within it)."""

    request_ids: list[str]
    truth: pd.Series
    candidate: pd.Series
    baseline: pd.Series

    def __len__(self) -> int:
        return len(self.truth)

    def fingerprint(self) -> str:
        keyed = sorted(zip(self.request_ids, self.truth.astype(str), strict=True))
        return hashlib.sha256(json.dumps(keyed).encode()).hexdigest()[:16]


def live_pairs(settings: Settings, name: str, candidate: str, baseline: str,
               since: datetime | None = None) -> LivePairs:
    """The rows of ``name`` that versions ``candidate`` and ``baseline`` both answered and that have a true label,
    whichever of the two served and which shadowed."""
    engine = create_engine(settings.inference_log_sqlalchemy_url)
    try:
        feedback.prepare(engine)
        rows = feedback.labelled_rows(engine, model_name=name, since=since, shadow=None)
    finally:
        engine.dispose()
    empty = LivePairs([], pd.Series(dtype=object), pd.Series(dtype=object), pd.Series(dtype=object))
    if rows.empty:
        return empty
    shadow = rows["shadow"].fillna(False).astype(bool) if "shadow" in rows else pd.Series(False, index=rows.index)
    rows = rows.assign(place=rows.groupby([rows["request_id"], shadow]).cumcount())
    rows = rows[rows["true_label"].notna()]
    if rows.empty:
        return empty
    rows = rows.assign(answer=[feedback.logged_prediction(row) for _, row in rows.iterrows()])
    key = ["request_id", "place"]

    def side(version: str) -> pd.DataFrame:
        mine = rows[rows["model_version"].astype(str) == str(version)]
        return mine.drop_duplicates(key, keep="last")[[*key, "true_label", "answer"]]

    paired = side(candidate).merge(side(baseline)[[*key, "answer"]], on=key, suffixes=("_candidate", "_baseline"))
    return LivePairs(request_ids=paired["request_id"].astype(str).tolist(),
                     truth=paired["true_label"].reset_index(drop=True),
                     candidate=paired["answer_candidate"].reset_index(drop=True),
                     baseline=paired["answer_baseline"].reset_index(drop=True))


class NotEnoughEvidence(Exception):
    """Too few labelled requests answered by both versions for a live verdict."""


def compare_live(client: MlflowClient, name: str, candidate: str, baseline: str, policy: Policy, *,
                 since: datetime | None = None, trigger: str = "cli",
                 settings: Settings | None = None) -> ModelComparison:
    """``candidate`` against ``baseline`` on the labelled requests both answered, under ``[live.rules]``; logged.

    Raises :class:`NotEnoughEvidence` below ``[live] min_labelled`` pairs (nothing is logged then).
    """
    settings = settings or get_settings()
    pairs = live_pairs(settings, name, candidate, baseline, since)
    needed = policy.live.min_labelled
    if len(pairs) < needed:
        raise NotEnoughEvidence(
            f"live evidence: {len(pairs)} labelled request(s) were answered by both v{candidate} and v{baseline} of "
            f"{name}; the policy asks for {needed} ([live] min_labelled). Shadow the candidate "
            "(VIGIL_SHADOW_PERCENT) and post the true labels (POST /feedback), or judge offline (--evidence offline)")
    task: Task = policy.task_of(name) or infer_task(pairs.truth, pairs.baseline)
    rules = policy.live_rules(task)
    answers = Answers(pairs.candidate), Answers(pairs.baseline)
    described = (f"{len(pairs)} labelled live requests of {name} answered by both v{candidate} and v{baseline}"
                 + (f" since {since.isoformat(timespec='seconds')}" if since else ""))
    dataset = DatasetInfo(name="live", fingerprint=pairs.fingerprint(), rows=len(pairs), domains=[],
                          description=described)
    sides = [ModelEvaluation(model=ModelIdentity(name=name, version=str(version), alias=None), task=task,
                             target="true label (POST /feedback)", dataset=dataset, rows=len(pairs),
                             metrics=measure(task, pairs.truth, side), source="live")
             for version, side in zip((candidate, baseline), answers, strict=True)]
    samples = policy.gate.bootstrap
    intervals = paired_bootstrap_of(resampled_scores(task, pairs.truth, answers[0]),
                                    resampled_scores(task, pairs.truth, answers[1]), len(pairs), samples,
                                    settings.seed, policy.gate.confidence)
    deltas = metric_deltas(task, sides[0], sides[1], intervals)
    verdicts = judge(policy, [d for d in deltas if d.metric in rules], rules)
    comparison = ModelComparison(
        task=task, candidate=sides[0], baseline=sides[1], dataset=dataset, deltas=deltas, rules=verdicts,
        passed=all(v.passed for v in verdicts), bootstrap_samples=samples, confidence=policy.gate.confidence,
        seed=settings.seed, policy=f"{policy.source} [live]")

    def log_pairs(run_id: str) -> None:
        client.log_dict(run_id, {"request_ids": pairs.request_ids, "truth": pairs.truth.tolist(),
                                 f"v{candidate}": pairs.candidate.tolist(), f"v{baseline}": pairs.baseline.tolist()},
                        "live_pairs.json")

    tracking.log_comparison(client, comparison, trigger, log_pairs)
    logger.info("compared %s v%s with v%s on %d live requests: %s (run %s)", name, candidate, baseline, len(pairs),
                "pass" if comparison.passed else "fail", comparison.run_id)
    return comparison
