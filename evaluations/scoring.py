"""A registered version's predictions: loaded in-process or from a running Vigil over HTTP (and the JSON of a
table's rows in MLflow's scoring protocol, for any model).

Both paths reduce a prediction to the service's contract — a label and the probability of that label — so the
numbers computed from them are the same for the same version, whichever way they were obtained.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import httpx
import numpy as np
import pandas as pd
from pydantic import BaseModel, ValidationError

from vigil import model_cache, registry
from vigil.contracts import ErrorResponse, PredictResponse
from vigil.credentials import mask_url
from vigil.errors import VigilError
from vigil.registry import RegisteredVersion
from vigil.sentiment_model import LABELS, load_registered

logger = logging.getLogger(__name__)
Answer = TypeVar("Answer", bound=BaseModel)

POSITIVE = LABELS[1]
# The service refuses requests with more texts than this (VIGIL_MAX_TEXTS_PER_REQUEST defaults to it too).
MAX_TEXTS_PER_REQUEST = 256

# Called as (phase, completed, total) so the CLI can draw progress without the evaluation knowing about rich.
ProgressCallback = Callable[[str, int, int], None]


@dataclass(frozen=True)
class BatchOutput:
    labels: list[str]
    scores: list[float]  # probability of the predicted label
    model_name: str
    model_version: str


class Predictor(Protocol):
    source: str  # "in-process" | "endpoint"

    def warm_up(self, texts: Sequence[str]) -> None: ...

    def predict(self, texts: Sequence[str]) -> BatchOutput: ...


class InProcessPredictor:
    """A registered version loaded into this process."""

    source = "in-process"

    def __init__(self, model: RegisteredVersion, predict: Callable[[list[str]], tuple[list[str], list[float]]]) -> None:
        self.model = model
        self._predict = predict

    @classmethod
    def load(cls, model: RegisteredVersion) -> InProcessPredictor:
        """Load the version (through the local model cache). Vigil's sentiment model is read as data, checked
        against the digest recorded at registration, and called directly, skipping pandas round trips; any other
        version answers through the pyfunc contract, loaded by MLflow (which unpickles its code)."""
        import mlflow.pyfunc
        import pandas as pd

        client = registry.connect()
        folder = model_cache.download_version(client, model.name, model.version)
        classifier = load_registered(client, model.name, model.version, folder)
        if classifier is not None:
            loaded = classifier

            def predict(texts: list[str]) -> tuple[list[str], list[float]]:
                predictions = loaded.predict(texts, batch_size=max(len(texts), 1))
                return [p.label for p in predictions], [p.score for p in predictions]
        else:
            pyfunc = mlflow.pyfunc.load_model(str(folder))

            def predict(texts: list[str]) -> tuple[list[str], list[float]]:
                frame = pyfunc.predict(pd.DataFrame({"text": texts}))
                return [str(v) for v in frame["label"]], [float(v) for v in frame["score"]]
        return cls(model, predict)

    def warm_up(self, texts: Sequence[str]) -> None:
        # The first forward pass allocates; timing it would charge that to one batch of one model.
        self._predict(list(texts[:2]))

    def predict(self, texts: Sequence[str]) -> BatchOutput:
        labels, scores = self._predict(list(texts))
        return BatchOutput(labels, scores, self.model.name, self.model.version)


# A busy service answers 503 with Retry-After (its batcher is full or a batch would miss its latency budget); both
# endpoints are reads, so the same request is sent again, a bounded number of times.
OVERLOADED_RETRIES = 3
MAX_RETRY_AFTER_SECONDS = 5.0


def post_to_vigil(client: httpx.Client, url: str, path: str, payload: dict[str, object] | bytes,
                  schema: type[Answer], sleep: Callable[[float], None] = time.sleep) -> Answer:
    """POST JSON (an object, or its encoded bytes) to a running Vigil and parse its answer; any failure is a
    VigilError naming the endpoint."""
    shown = mask_url(url)
    for attempt in range(OVERLOADED_RETRIES + 1):
        try:
            if isinstance(payload, bytes):
                response = client.post(f"{url}{path}", content=payload,
                                       headers={"content-type": "application/json"})
            else:
                response = client.post(f"{url}{path}", json=payload)
        except httpx.HTTPError as error:
            raise VigilError(f"Vigil endpoint {shown} not reachable ({type(error).__name__}).") from None
        retry_after = response.headers.get("retry-after", "")
        if response.status_code != 503 or not retry_after or attempt == OVERLOADED_RETRIES:
            break
        try:
            wait = min(MAX_RETRY_AFTER_SECONDS, max(0.0, float(retry_after)))
        except ValueError:
            wait = 1.0  # an HTTP date instead of seconds: Vigil never sends one
        sleep(wait)
    if response.status_code != 200:
        try:
            refusal = ErrorResponse.model_validate_json(response.content).error
            reason = f"{refusal.code}: {refusal.message}"
        except ValidationError:
            reason = response.text[:300]
        raise VigilError(f"{shown}{path} answered {response.status_code}: {reason}")
    try:
        return schema.model_validate_json(response.content)
    except ValidationError as error:
        raise VigilError(f"{shown}{path} answered an unexpected body: {error.errors()[:2]}") from None


class EndpointPredictor:
    """A running Vigil: `POST {url}/predict` with {"texts": [...]}, at most 256 texts a request."""

    source = "endpoint"

    def __init__(self, url: str, expected: RegisteredVersion | None = None, timeout: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self._shown_url = mask_url(self.url)
        self.expected = expected
        self._client = httpx.Client(timeout=timeout)

    def warm_up(self, texts: Sequence[str]) -> None:
        # A running service is warm already, and an extra request would show up in its inference log.
        return None

    def predict(self, texts: Sequence[str]) -> BatchOutput:
        if len(texts) > MAX_TEXTS_PER_REQUEST:
            raise ValueError(f"at most {MAX_TEXTS_PER_REQUEST} texts per request")
        body = post_to_vigil(self._client, self.url, "/predict", {"texts": list(texts)}, PredictResponse)
        if len(body.predictions) != len(texts):
            raise VigilError(f"{self._shown_url}/predict answered {len(body.predictions)} predictions for "
                             f"{len(texts)} texts.")
        if self.expected is not None:
            check_identity(body.model.name, body.model.version, self.expected, self._shown_url)
        return BatchOutput([p.label for p in body.predictions], [p.score for p in body.predictions],
                           body.model.name, body.model.version)

    def close(self) -> None:
        self._client.close()


@dataclass
class Scored:
    """One model's answers for every row, and how long its batches took."""

    y_pred: np.ndarray
    p_positive: np.ndarray
    labels: list[str]
    scores: list[float]
    batch_seconds: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    model_name: str = ""
    model_version: str = ""


def positive_probability(label: str, score: float) -> float:
    """P(positive) from the service's (label, probability of that label)."""
    return score if label == POSITIVE else 1.0 - score


def score(
    predictors: Sequence[Predictor],
    texts: Sequence[str],
    batch_size: int,
    progress: ProgressCallback | None = None,
    phase: str = "scoring",
    repeats: int = 1,
) -> list[Scored]:
    """Every predictor's answers for ``texts``, batch by batch, each batch timed.

    With several predictors the batches interleave and the order alternates (A B, B A, …), so that both models
    see the same machine load at nearly the same time; with ``repeats`` > 1 each batch is run that many times
    per model in mirrored order (A B B A) and the fastest time counts, which filters out a moment in which a
    neighbour took the CPU. On a shared machine that keeps a latency comparison about the models.
    """
    if batch_size < 1 or repeats < 1:
        raise ValueError("batch_size and repeats must be at least 1")
    for predictor in predictors:
        predictor.warm_up(texts)
    outputs: list[list[BatchOutput]] = [[] for _ in predictors]
    timings: list[list[float]] = [[] for _ in predictors]
    for step, start in enumerate(range(0, len(texts), batch_size)):
        chunk = texts[start : start + batch_size]
        order = list(range(len(predictors)))
        if step % 2:
            order.reverse()
        fastest = [float("inf")] * len(predictors)
        for round_ in range(repeats):
            for index in order if round_ % 2 == 0 else order[::-1]:
                began = time.perf_counter()
                output = predictors[index].predict(chunk)
                fastest[index] = min(fastest[index], time.perf_counter() - began)
                if len(output.labels) != len(chunk):
                    raise VigilError(f"the model answered {len(output.labels)} predictions for {len(chunk)} texts.")
                if round_ == 0:
                    outputs[index].append(output)
        for index, seconds in enumerate(fastest):
            timings[index].append(seconds)
        if progress:
            progress(phase, min(start + batch_size, len(texts)), len(texts))
    return [_collect(batches, seconds, batch_size, len(texts))
            for batches, seconds in zip(outputs, timings, strict=True)]


def _collect(batches: list[BatchOutput], seconds: list[float], batch_size: int, total: int) -> Scored:
    identities = {(b.model_name, b.model_version) for b in batches}
    if len(identities) > 1:
        served = ", ".join(f"{n} v{v}" for n, v in sorted(identities))
        raise VigilError(f"the model changed during the evaluation ({served}); evaluate again.")
    name, version = identities.pop() if identities else ("", "")
    labels = [label for b in batches for label in b.labels]
    scores = [s for b in batches for s in b.scores]
    unknown = sorted(set(labels) - set(LABELS))
    if unknown:
        raise VigilError(f"the model answered unknown label(s) {unknown}; expected {list(LABELS)}.")
    sizes = [min(batch_size, total - i * batch_size) for i in range(len(batches))]
    return Scored(
        y_pred=np.array([int(label == POSITIVE) for label in labels], dtype=np.int64),
        p_positive=np.array([positive_probability(lb, s) for lb, s in zip(labels, scores, strict=True)]),
        labels=labels, scores=scores, batch_seconds=seconds, batch_sizes=sizes,
        model_name=name, model_version=version,
    )


def check_identity(name: str, version: str, expected: RegisteredVersion, where: str) -> None:
    """Refuse figures that would be filed under another version than the one that produced them."""
    if (name, version) != (expected.name, expected.version):
        asked = f" (@{expected.alias})" if expected.alias else ""
        raise VigilError(
            f"{where} serves {name} v{version}, not {expected.name} v{expected.version}{asked}; "
            f"pass --model {name}/{version} to evaluate what it serves."
        )


def _plain(value: Any) -> Any:
    """A cell as a JSON value: numpy scalars as Python, missing and non-finite numbers as null, times in ISO 8601."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    return value


def dataframe_split(frame: pd.DataFrame) -> bytes:
    """The rows as MLflow's ``dataframe_split`` JSON.

    Built from Python values rather than ``DataFrame.to_json``, whose ``double_precision`` (10 decimal places by
    default, 15 at most) would round small or long floats; ``json.dumps`` writes each float's shortest exact form.
    ``allow_nan=False`` guarantees the body is JSON that MLflow's parser (and any other) accepts.
    """
    cells = frame.astype(object).where(frame.notna(), None)
    data = [[_plain(value) for value in row] for row in cells.itertuples(index=False, name=None)]
    body = {"dataframe_split": {"columns": [str(column) for column in frame.columns], "data": data}}
    return json.dumps(body, allow_nan=False, default=str).encode()
