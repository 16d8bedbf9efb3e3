"""Evaluation runs in the MLflow experiment `evaluations`, through an explicit client (no fluent active-run state).

Tag keys shared by every evaluation run, so the MLflow UI can filter them: ``vigil.eval.kind`` (sentiment, model,
compare), ``vigil.model``, ``vigil.model_version``, ``dataset.name``, ``dataset.fingerprint``.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vigil import registry
from vigil.credentials import mask_url

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from evaluations.schemas import Comparison, ModelComparison

EXPERIMENT = "evaluations"
# MLflow accepts up to 6000 characters in a param value and 8000 in a tag; beyond that it refuses the batch.
_MAX_TAG = 5000


def experiment_id(client: MlflowClient, name: str = EXPERIMENT) -> str:
    """The id of experiment ``name`` (default `evaluations`) on ``client``'s server, created when missing."""
    return registry.experiment_id(name, uri=client.tracking_uri)


def run_url(client: MlflowClient, run_id: str) -> str:
    """Where a run of `evaluations` opens in the MLflow UI (the run id alone for a non-HTTP store)."""
    uri = str(client.tracking_uri).rstrip("/")
    if not uri.startswith(("http://", "https://")):
        return run_id
    return f"{mask_url(uri)}/#/experiments/{experiment_id(client)}/runs/{run_id}"


def metric_key(name: str) -> str:
    """A metric or tag key MLflow accepts, from e.g. a file stem used as a domain name."""
    return re.sub(r"[^0-9A-Za-z_\-./ ]", "_", name)


@contextmanager
def evaluation_run(
    client: MlflowClient, run_name: str, tags: Mapping[str, str], parent_run_id: str | None = None
) -> Iterator[str]:
    """A run in `evaluations`, FINISHED when the block completes and FAILED when it raises; yields its id."""
    all_tags = {key: str(value)[:_MAX_TAG] for key, value in tags.items()}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id(client), run_name=run_name, tags=all_tags)
    run_id = str(run.info.run_id)
    try:
        yield run_id
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")


def log_values(
    client: MlflowClient,
    run_id: str,
    metrics: Mapping[str, float | None] | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
) -> None:
    """Metrics (None skipped), params and tags in one request."""
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(metric_key(k), float(v), now, 0) for k, v in (metrics or {}).items() if v is not None],
        params=[Param(metric_key(k), str(v)[:_MAX_TAG]) for k, v in (params or {}).items()],
        tags=[RunTag(k, str(v)[:_MAX_TAG]) for k, v in (tags or {}).items()],
    )


def log_figure(client: MlflowClient, run_id: str, figure: Any, path: str) -> None:
    import matplotlib.pyplot as plt

    try:
        client.log_figure(run_id, figure, path)
    finally:
        plt.close(figure)


def log_comparison(client: MlflowClient, comparison: Comparison | ModelComparison, trigger: str,
                   log_sides: Callable[[str], None]) -> None:
    """The comparison run (deltas, verdicts, the policy applied); ``log_sides`` logs each side's evaluation as its
    child run and sets their ``run_id``."""
    new, old = comparison.candidate.model, comparison.baseline.model
    verdict = "pass" if comparison.passed else "fail"
    tags = {
        "vigil.eval.kind": "compare", "vigil.eval.trigger": trigger, "vigil.model": new.name,
        "vigil.model_version": new.version, "vigil.candidate_version": new.version,
        "vigil.baseline_version": old.version, "vigil.verdict": verdict,
        "dataset.name": comparison.dataset.name, "dataset.fingerprint": comparison.dataset.fingerprint,
    }
    with evaluation_run(client, f"compare {new.name} v{new.version} vs v{old.version}: {verdict}", tags) as run_id:
        comparison.run_id = run_id
        log_sides(run_id)
        metrics: dict[str, float | None] = {"passed": float(comparison.passed),
                                            "rules_failed": float(sum(not r.passed for r in comparison.rules))}
        for delta in comparison.deltas:
            metrics.update({
                f"candidate_{delta.metric}": delta.candidate, f"baseline_{delta.metric}": delta.baseline,
                f"delta_{delta.metric}": delta.delta, f"delta_{delta.metric}_ci_low": delta.ci_low,
                f"delta_{delta.metric}_ci_high": delta.ci_high,
            })
        log_values(
            client, run_id, metrics={k: v for k, v in metrics.items() if v is not None and math.isfinite(v)},
            params={"data": comparison.dataset.name, "data_description": comparison.dataset.description,
                    "rows": comparison.dataset.rows, "bootstrap": comparison.bootstrap_samples,
                    "confidence": comparison.confidence, "seed": comparison.seed, "policy": comparison.policy},
            tags={"vigil.candidate_run_id": comparison.candidate.run_id or "",
                  "vigil.baseline_run_id": comparison.baseline.run_id or ""},
        )
        client.log_dict(run_id, json.loads(comparison.model_dump_json()), "comparison.json")
        client.log_text(run_id, "\n".join(("PASS " if r.passed else "FAIL ") + r.reason for r in comparison.rules),
                        "verdict.txt")
        policy_file = Path(comparison.policy.split(" [", 1)[0])  # a model's rules name their section after the path
        if comparison.policy and policy_file.is_file():
            client.log_text(run_id, policy_file.read_text(encoding="utf-8"), "policy.toml")
