"""The rows an evaluation scores: the held-out test split, a whole domain, or a file; for RAG, QA pairs.

`test` is rebuilt by the function training made it with (:func:`training.data.training_split`), from the parameters
the version's training run logged, so a version is scored on sentences it never saw. Two versions trained alike share
that split. Versions trained differently (another seed, limit or domains) are compared on the union of their test
splits minus every sentence either of them trained or validated on: the rows held out from both.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from pydantic import BaseModel, ValidationError

from training.data import (
    DEFAULT_DATA_DIR,
    DOMAIN_FILES,
    LoadReport,
    SplitParams,
    fingerprint,
    limit_stratified,
    load_domain,
    load_sentiment,
    training_split,
)
from vigil.errors import VigilError
from vigil.settings import get_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)


def training_params(client: MlflowClient, run_id: str | None) -> SplitParams:
    """The split parameters logged by the training run; the settings' seed and default domains when absent."""
    seed = get_settings().seed
    if not run_id:
        return SplitParams(seed=seed)
    from mlflow.exceptions import MlflowException

    try:
        params = client.get_run(run_id).data.params
    except MlflowException:
        default = SplitParams(seed=seed)
        logger.warning("training run %s not found; assuming %s", run_id, default.describe())
        return default
    return SplitParams.from_run_params(params, default_seed=seed)


@dataclass
class EvalData:
    name: str
    frame: pd.DataFrame  # text, label (0/1), domain
    description: str
    notes: list[str] = field(default_factory=list)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.frame)

    @property
    def domains(self) -> list[str]:
        return sorted(self.frame["domain"].astype(str).unique())


def _trained_and_test(params: SplitParams, data_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows trained or validated on, test rows) of one version."""
    split, _ = training_split(params, data_dir)
    return pd.concat([split.train, split.validation], ignore_index=True), split.test


def held_out_split(versions: list[SplitParams], data_dir: Path = DEFAULT_DATA_DIR) -> EvalData:
    """The test split of one version, of several trained alike, or the rows held out from all of them."""
    unique = list(dict.fromkeys(versions))
    if len(unique) == 1:
        _, test = _trained_and_test(unique[0], data_dir)
        return EvalData("test", test, f"test split ({unique[0].describe()})")
    seen: set[str] = set()
    tests = []
    for params in unique:
        trained, test = _trained_and_test(params, data_dir)
        seen.update(trained["text"])
        tests.append(test)
    union = pd.concat(tests, ignore_index=True).drop_duplicates(["text", "label", "domain"])
    held_out = union[~union["text"].isin(seen)].reset_index(drop=True)
    described = " and ".join(f"({p.describe()})" for p in unique)
    return EvalData("test", held_out, f"test splits of {described}, minus sentences either trained on")


def from_file(path: Path) -> EvalData:
    """A ``sentence<TAB>label`` file (label 0 or 1), parsed like the training data; the domain is its stem."""
    if not path.is_file():
        raise VigilError(f"no data file {path}; --data takes test, a domain ({', '.join(DOMAIN_FILES)}) or a file.")
    report = LoadReport()
    frame = pd.DataFrame(load_domain(path, path.stem, report), columns=["text", "label", "domain"])
    if frame.empty:
        raise VigilError(f"{path} holds no `sentence<TAB>0|1` lines.")
    data = EvalData(str(path), frame, f"file {path} ({len(frame)} rows)")
    if report.skipped:
        note = f"{report.skipped} malformed line(s) skipped, e.g. {', '.join(report.skipped_examples)}"
        logger.warning("%s: %s", path, note)
        data.notes.append(note)
    return data


def resolve_data(
    spec: str,
    versions: list[SplitParams],
    limit: int | None = None,
    seed: int | None = None,
    data_dir: Path = DEFAULT_DATA_DIR,
) -> EvalData:
    """`test`, a domain name or a file path → the rows to score, at most ``limit`` of them (stratified)."""
    if spec == "test":
        data = held_out_split(versions, data_dir)
    elif spec in DOMAIN_FILES:
        frame, _ = load_sentiment(data_dir, [spec])
        data = EvalData(spec, frame, f"the whole {spec} domain")
        trained_on = [p for p in versions if spec in p.domains]
        if trained_on:
            data.notes.append(f"{spec} is a training domain of the model: this is not out-of-domain data")
            logger.warning(data.notes[-1])
    else:
        data = from_file(Path(spec))
    if limit and limit < len(data.frame):
        data.frame = _limited(data.frame, limit, get_settings().seed if seed is None else seed)
        data.description += f", limited to {limit} rows"
    if data.frame.empty:
        raise VigilError(f"no rows to evaluate in {data.description}.")
    return data


def _limited(frame: pd.DataFrame, limit: int, seed: int) -> pd.DataFrame:
    try:
        return limit_stratified(frame, limit, seed)
    except ValueError:
        # Too few rows per (domain, label) to stratify, e.g. a tiny file: a plain seeded sample is the best left.
        return frame.sample(n=limit, random_state=seed).reset_index(drop=True)


class QAItem(BaseModel):
    """One question of a QA file, with its gold answers and the passages that hold them."""

    id: str
    question: str
    answers: list[str]
    passage_ids: list[str]


def load_qa(path: Path, sample: int | None = None, seed: int = 42) -> list[QAItem]:
    """The QA pairs of a JSONL file; a seeded random ``sample`` of them when given."""
    items = [QAItem.model_validate(json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines()
             if line.strip()]
    if sample is not None and sample < len(items):
        items = random.Random(seed).sample(items, sample)
    return items


@dataclass
class QAData:
    """Question/answer pairs with gold passages (``data/rag/qa.jsonl``), the ones a RAG evaluation asks."""

    path: Path
    items: list[QAItem]
    description: str

    @property
    def fingerprint(self) -> str:
        """A content hash of the questions asked (order-independent), like :func:`training.data.fingerprint`."""
        digest = hashlib.sha256()
        for line in sorted(item.model_dump_json() for item in self.items):
            digest.update(line.encode("utf-8"))
            digest.update(b"\n")
        return digest.hexdigest()[:16]

    @property
    def documents(self) -> list[str]:
        """The documents the gold passages belong to (``Super_Bowl_50_p000`` → ``Super_Bowl_50``)."""
        return sorted({pid.rsplit("_p", 1)[0] for item in self.items for pid in item.passage_ids})


def resolve_qa(path: Path, limit: int | None = None, seed: int | None = None) -> QAData:
    """The QA pairs of a JSONL file (id, question, answers, passage_ids); a seeded sample of ``limit`` of them."""
    if not path.is_file():
        raise VigilError(f"no QA file {path}; --dataset takes a JSONL file of id, question, answers, passage_ids.")
    seed = get_settings().seed if seed is None else seed
    try:
        items = load_qa(path, sample=limit, seed=seed)
    except (ValidationError, ValueError) as error:
        raise VigilError(f"{path} is not a QA file of id, question, answers, passage_ids lines: {error}") from None
    if not items:
        raise VigilError(f"{path} holds no questions.")
    description = f"{path} ({len(items)} questions"
    description += f", a sample of {limit} with seed {seed})" if limit and len(items) == limit else ")"
    return QAData(path, items, description)
