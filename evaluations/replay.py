"""Replay held-out sentences through a running Vigil service, so the drift job has real traffic to judge.

"Held-out" means not in the serving version's training split: the split is rebuilt with the training run's seed,
domains and limit (read from its MLflow run) by the function that made it, :func:`training.data.training_split`.
A domain the version never trained on (imdb, for the default amazon + yelp model) is held out entirely.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
from pydantic import ValidationError

from evaluations.datasets import training_params
from training.data import DEFAULT_DATA_DIR, DOMAIN_FILES, SplitParams, load_sentiment, training_split
from vigil import registry
from vigil.contracts import PredictResponse
from vigil.errors import MlflowUnavailable, VigilError
from vigil.settings import Settings

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class ServedSplit:
    """The split parameters of the version a service follows, as far as its training run records them."""

    params: SplitParams
    version: str | None  # None: MLflow unreachable, the settings' seed and the default domains assumed


@dataclass
class ReplayResult:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    labels: Counter[str] = field(default_factory=Counter)
    served_by: Counter[str] = field(default_factory=Counter)  # "name v3" → answers
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def exit_code(self) -> int:
        if self.sent and self.ok == self.sent:
            return 0
        return 1 if self.ok else 2


def served_split(settings: Settings) -> ServedSplit:
    """Seed, domains and limit of the version the service follows (``VIGIL_SERVE_ALIAS``)."""
    name = settings.sentiment_model_name
    try:
        client = registry.connect(settings.mlflow_tracking_uri)
    except MlflowUnavailable as error:
        assumed = SplitParams(seed=settings.seed)
        logger.warning("%s; assuming %s for the held-out split", error, assumed.describe())
        return ServedSplit(assumed, None)
    try:
        served = registry.resolve(client, registry.ModelReference(name, alias=settings.serve_alias))
    except registry.ModelNotFound:
        raise VigilError(f"{name}@{settings.serve_alias} does not exist: nothing serves, nothing to replay "
                         "against.") from None
    return ServedSplit(training_params(client, served.run_id), str(served.version))


def held_out(domain: str, params: SplitParams, data_dir: Path = DEFAULT_DATA_DIR) -> pd.DataFrame:
    """Sentences of ``domain`` (text, label, domain) that the version's training split does not train on."""
    if domain not in DOMAIN_FILES:
        raise VigilError(f"unknown domain {domain!r}; choose from {', '.join(DOMAIN_FILES)}")
    pool, _ = load_sentiment(data_dir, [domain])
    if domain not in params.domains:
        return pool
    split, _ = training_split(params, data_dir)
    train_texts = set(split.train["text"])
    return pool[~pool["text"].isin(train_texts)].reset_index(drop=True)


def choose(sentences: pd.DataFrame, n: int, seed: int | None) -> list[str]:
    """``n`` sentences at random; with replacement only when fewer than ``n`` are held out."""
    rng = np.random.default_rng(seed)
    replace = n > len(sentences)
    if replace:
        logger.warning("only %d held-out sentences; sampling %d with replacement", len(sentences), n)
    picked = rng.choice(len(sentences), size=n, replace=replace)
    return [str(sentences["text"].iloc[i]) for i in picked]


def replay(
    texts: list[str],
    endpoint: str,
    *,
    concurrency: int = 4,
    timeout: float = 30.0,
    on_done: Callable[[int], None] | None = None,
) -> ReplayResult:
    """POST each text to ``{endpoint}/predict`` as ``{"text": ...}``; counts answers and labels."""
    url = f"{endpoint.rstrip('/')}/predict"
    result = ReplayResult()
    with httpx.Client(timeout=timeout) as client:

        def send(text: str) -> PredictResponse | str:
            try:
                response = client.post(url, json={"text": text})
            except httpx.HTTPError as error:
                return type(error).__name__
            if not response.is_success:
                return f"HTTP {response.status_code}"
            try:
                return PredictResponse.model_validate_json(response.content)
            except ValidationError:
                return "unexpected answer"

        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            for answer in pool.map(send, texts):
                result.sent += 1
                if isinstance(answer, str):
                    result.failed += 1
                    result.errors[answer] += 1
                    continue
                result.ok += 1
                result.labels.update(p.label for p in answer.predictions)
                result.served_by[f"{answer.model.name} v{answer.model.version}"] += 1
                if on_done:
                    on_done(result.sent)
    return result
