"""Replay held-out sentences through a running Vigil service, so the drift job has real traffic to judge.

"Held-out" means not in the serving version's training split: the split is rebuilt with the training run's seed,
domains and limit (read from its MLflow run) by the function that made it, :func:`training.data.training_split`.
A domain the version never trained on (imdb, for the default amazon + yelp model) is held out entirely.

Any other served model gets its traffic from a table its user supplies (say the test rows its training script
wrote), sent as MLflow's scoring protocol to ``/models/NAME/invocations``: the same body a client of
``mlflow models serve`` sends, so the replay exercises the route real clients use.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pandas as pd
from pydantic import ValidationError

from evaluations.datasets import training_params
from evaluations.model_eval import answers_of
from evaluations.scoring import dataframe_split
from training.data import DEFAULT_DATA_DIR, DOMAIN_FILES, SplitParams, load_sentiment, training_split
from vigil import registry
from vigil.contracts import ErrorResponse, InvocationsResponse, PredictResponse
from vigil.errors import MlflowUnavailable, VigilError
from vigil.model_data import read_table
from vigil.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedSplit:
    """The split parameters of the version a service follows, as far as its training run records them."""

    params: SplitParams
    version: str | None  # None: MLflow unreachable, the settings' seed and the default domains assumed


@dataclass
class ReplayResult:
    """Requests in ``sent``/``ok``/``failed`` (what the exit code judges); rows in ``rows_*``, since a model's replay
    may send several rows per request."""

    sent: int = 0
    ok: int = 0
    failed: int = 0
    labels: Counter[str] = field(default_factory=Counter)
    served_by: Counter[str] = field(default_factory=Counter)  # "name v3" → answers (sentences, or rows)
    errors: Counter[str] = field(default_factory=Counter)
    rows_sent: int = 0
    rows_answered: int = 0
    values: list[float] = field(default_factory=list)  # a regressor's predictions: no label to count

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


# --- any served model: a table's rows to /models/NAME/invocations ----------------------------------------------------


def model_rows(path: Path, target: str | None = None) -> pd.DataFrame:
    """The model's input columns from a CSV or Parquet file; the target is dropped because the signature refuses a
    column the model does not take, so sending it would make every request a 4xx."""
    frame = read_table(path)
    if target is not None:
        if target not in frame.columns:
            columns = ", ".join(str(column) for column in frame.columns)
            raise VigilError(f"{path} has no column {target!r} to leave out as the target; its columns: {columns}")
        frame = frame.drop(columns=[target])
    if frame.columns.empty:
        raise VigilError(f"{path} has no column left to send")
    if frame.empty:
        raise VigilError(f"{path} has no rows to send")
    return frame


def pick_rows(frame: pd.DataFrame, n: int | None, seed: int | None) -> pd.DataFrame:
    """``n`` rows at random, with replacement only when the table has fewer; without ``n`` every row once.

    Every row once keeps the file's order unless a seed asks for a shuffle, so that an unseeded replay of a whole
    test file is that file, row for row.
    """
    if n is None:
        if seed is None:
            return frame.reset_index(drop=True)
        n = len(frame)
    rng = np.random.default_rng(seed)
    replace = n > len(frame)
    if replace:
        logger.warning("only %d rows; sampling %d with replacement", len(frame), n)
    picked = rng.choice(len(frame), size=n, replace=replace)
    return frame.iloc[picked].reset_index(drop=True)


def _refusal(response: httpx.Response) -> str:
    """Why a request failed, with Vigil's own message when the body is its error contract: a 422 naming the
    column tells the user what is wrong with the file, a bare status does not."""
    reason = f"HTTP {response.status_code}"
    try:
        detail = ErrorResponse.model_validate_json(response.content).error
    except ValidationError:
        return reason
    return f"{reason}: {detail.message}"


def replay_rows(
    frame: pd.DataFrame,
    name: str,
    endpoint: str,
    *,
    rows_per_request: int = 1,
    concurrency: int = 4,
    timeout: float = 30.0,
    on_done: Callable[[int], None] | None = None,
) -> ReplayResult:
    """POST ``frame`` to ``{endpoint}/models/{name}/invocations``, ``rows_per_request`` rows a request.

    Predictions that are strings, booleans or integers are counted as labels (a classifier); floats are kept in
    ``values`` (a regressor), since counting distinct floats says nothing. ``on_done`` gets the rows sent so far.
    """
    url = f"{endpoint.rstrip('/')}/models/{quote(name, safe='')}/invocations"
    size = max(1, rows_per_request)
    chunks = [frame.iloc[start:start + size] for start in range(0, len(frame), size)]
    result = ReplayResult()
    with httpx.Client(timeout=timeout, headers={"content-type": "application/json"}) as client:

        def send(chunk: pd.DataFrame) -> tuple[InvocationsResponse, list[Any]] | str:
            try:
                response = client.post(url, content=dataframe_split(chunk))
            except httpx.HTTPError as error:
                return type(error).__name__
            if not response.is_success:
                return _refusal(response)
            try:
                answer = InvocationsResponse.model_validate_json(response.content)
            except ValidationError:
                return "unexpected answer"
            try:
                predicted = answers_of(answer.predictions).values.tolist()
            except VigilError:  # several values per row (a tensor output): answered, but no label or value to count
                predicted = [None] * len(chunk)
            if len(predicted) != len(chunk):
                return "unexpected answer: predictions and rows differ in number"
            return answer, predicted

        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            for chunk, outcome in zip(chunks, pool.map(send, chunks), strict=True):
                result.sent += 1
                result.rows_sent += len(chunk)
                if isinstance(outcome, str):
                    result.failed += 1
                    result.errors[outcome] += 1
                else:
                    answer, predicted = outcome
                    result.ok += 1
                    result.rows_answered += len(chunk)
                    result.served_by[f"{answer.model.name} v{answer.model.version}"] += len(chunk)
                    for value in predicted:
                        if isinstance(value, float):
                            result.values.append(value)
                        elif isinstance(value, str | bool | int):
                            result.labels[str(value)] += 1
                if on_done:
                    on_done(result.rows_sent)
    return result
