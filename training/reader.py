"""Train the span reader (MiniLM + a start/end head) on the shipped SQuAD questions and register it as `rag-reader`.

The split is by article: a passage id names its article (``Super_Bowl_50_p000`` → ``Super_Bowl_50``) and a stable
hash of the article puts about a fifth of the articles in the evaluation split, so no passage of the evaluation
questions is seen in training. :func:`reader_split` is the one place that split is made; ``vigil eval rag --split``
and the promotion gate use it too.

The questions carry answers without offsets: an answer's first occurrence in its passage is taken as the span, and a
question none of whose answers occurs is skipped and counted. Training also pairs some questions with another
passage of the same article, labelled "no answer" ([CLS]): the RAG service reads five retrieved chunks at once, and
only a reader that learnt to say "not here" compares its spans across them.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from vigil import model_digest, registry
from vigil.reader_model import READER_ARTIFACT, ReaderConfig, ReaderPyfunc, SpanReader, exact_match, token_f1
from vigil.settings import get_settings

if TYPE_CHECKING:
    from vigil.reader_model import Windows

EXPERIMENT = "rag-reader"
DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "rag"
QA_FILE = DATA_DIR / "qa.jsonl"
CORPUS_FILE = DATA_DIR / "corpus.jsonl"
# Share of the hash range held out for evaluation: it falls on 12 of the 48 shipped articles (2 438 of the 7 347
# questions; Super Bowl 50 is on the training side).
HELD_OUT_PERCENT = 20
Split = Literal["train", "held-out"]

# Called as (phase, completed, total) so the CLI can draw progress without this module knowing about rich.
ProgressCallback = Callable[[str, int, int], None]


# --- the split ----------------------------------------------------------------------------------------------------


def article_of(passage_id: str) -> str:
    """The article a passage id belongs to: its id without the ``_pNNN`` paragraph suffix."""
    head, separator, tail = passage_id.rpartition("_p")
    return head if separator and tail.isdigit() else passage_id


def split_of(passage_id: str) -> Split:
    """Which side of the reader's split a passage's article falls on: a stable hash, the same on every machine."""
    digest = hashlib.sha256(article_of(passage_id).encode()).digest()
    return "held-out" if int.from_bytes(digest[:4], "big") % 100 < HELD_OUT_PERCENT else "train"


def in_split(passage_ids: Sequence[str], split: Split) -> bool:
    """Whether a question (by its gold passages) belongs to ``split``."""
    return bool(passage_ids) and all(split_of(p) == split for p in passage_ids)


@dataclass(frozen=True)
class Example:
    id: str
    question: str
    answers: tuple[str, ...]
    passage_id: str
    context: str
    answer_start: int  # characters, in context
    answer_end: int


@dataclass
class ReaderData:
    train: list[Example]
    held_out: list[Example]
    skipped: int = 0  # questions none of whose answers occurs in their passage
    passages: dict[str, str] = field(default_factory=dict)  # train passages by id, for "no answer" pairs


def load_corpus(path: Path = CORPUS_FILE) -> dict[str, str]:
    with path.open(encoding="utf-8") as file:
        return {row["id"]: row["text"] for row in map(json.loads, file) if row.get("id")}


def find_answer(context: str, answers: Sequence[str]) -> tuple[int, int] | None:
    """Character span of the first answer (in the given order) that occurs in ``context``."""
    for answer in answers:
        start = context.find(answer) if answer else -1
        if start >= 0:
            return start, start + len(answer)
    return None


def reader_split(qa_path: Path = QA_FILE, corpus_path: Path = CORPUS_FILE) -> ReaderData:
    """Every question with a findable answer, on its side of the split by article."""
    corpus = load_corpus(corpus_path)
    data = ReaderData([], [])
    with qa_path.open(encoding="utf-8") as file:
        for row in map(json.loads, file):
            passage_id = row["passage_ids"][0] if row.get("passage_ids") else ""
            context = corpus.get(passage_id, "")
            found = find_answer(context, row["answers"]) if context else None
            if found is None:
                data.skipped += 1
                continue
            example = Example(row["id"], row["question"], tuple(row["answers"]), passage_id, context, *found)
            (data.held_out if split_of(passage_id) == "held-out" else data.train).append(example)
    data.passages = {pid: text for pid, text in corpus.items() if split_of(pid) == "train"}
    return data


# --- training features --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Feature:
    input_ids: list[int]
    token_type_ids: list[int]
    start: int  # token index of the answer's first token; 0 ([CLS]): not in this window
    end: int


def span_labels(offsets: Sequence[tuple[int, int] | None], answer_start: int, answer_end: int) -> tuple[int, int]:
    """Token indices of the answer's first and last tokens in one window; (0, 0) when the window does not hold
    the whole answer."""
    first = last = None
    for index, span in enumerate(offsets):
        if span is None:
            continue
        if first is None and span[0] <= answer_start < span[1]:
            first = index
        if span[0] < answer_end <= span[1] or (span[0] < answer_end and span[1] >= answer_end):
            last = index
            break
    if first is None or last is None or last < first:
        return 0, 0
    return first, last


def features_of(reader: SpanReader, question: str, context: str,
                answer: tuple[int, int] | None) -> list[Feature]:
    """The windows of one (question, passage) pair with their labels; ``answer`` None: a "no answer" pair."""
    windows: Windows = reader.windows(question, [context])
    features = []
    for row in range(len(windows.passage_of)):
        length = int(windows.attention_mask[row].sum())
        start, end = span_labels(windows.offsets[row], *answer) if answer else (0, 0)
        features.append(Feature(windows.input_ids[row][:length].tolist(),
                                windows.token_type_ids[row][:length].tolist(), start, end))
    return features


def training_features(reader: SpanReader, examples: Sequence[Example], passages: dict[str, str],
                      negative_share: float, seed: int) -> list[Feature]:
    """Every window of every example, plus "no answer" pairs for a share of them (another passage of the same
    article, so the wrong passage is on the same topic, as a retrieved one is)."""
    rng = random.Random(seed)
    by_article: dict[str, list[str]] = {}
    for pid in passages:
        by_article.setdefault(article_of(pid), []).append(pid)
    features: list[Feature] = []
    for example in examples:
        features.extend(features_of(reader, example.question, example.context,
                                    (example.answer_start, example.answer_end)))
        if rng.random() < negative_share:
            others = [pid for pid in by_article.get(article_of(example.passage_id), []) if pid != example.passage_id
                      and not any(a and a in passages[pid] for a in example.answers)]
            if others:
                features.extend(features_of(reader, example.question, passages[rng.choice(others)], None))
    return features


def _batch(features: Sequence[Feature], pad: int) -> tuple[Any, ...]:
    import torch

    width = max(len(f.input_ids) for f in features)
    ids = torch.full((len(features), width), pad, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    types = torch.zeros((len(features), width), dtype=torch.long)
    for row, feature in enumerate(features):
        n = len(feature.input_ids)
        ids[row, :n] = torch.tensor(feature.input_ids)
        mask[row, :n] = 1
        types[row, :n] = torch.tensor(feature.token_type_ids)
    starts = torch.tensor([f.start for f in features])
    ends = torch.tensor([f.end for f in features])
    return ids, mask, types, starts, ends


def length_batches(features: Sequence[Feature], batch_size: int, rng: random.Random,
                   pool_batches: int = 50) -> list[list[int]]:
    """Feature indices in batches of similar length, in random order: each pool of ``pool_batches`` batches' worth
    of shuffled features is sorted by length before it is cut, so a batch pads to little more than its own longest
    window (random batches padded about a third of their tokens)."""
    order = list(range(len(features)))
    rng.shuffle(order)
    pool = batch_size * pool_batches
    batches: list[list[int]] = []
    for begin in range(0, len(order), pool):
        ranked = sorted(order[begin:begin + pool], key=lambda i: len(features[i].input_ids))
        batches.extend(ranked[i:i + batch_size] for i in range(0, len(ranked), batch_size))
    rng.shuffle(batches)
    return batches


# --- configuration and evaluation ---------------------------------------------------------------------------------


@dataclass
class ReaderTrainConfig:
    epochs: int = 2
    batch_size: int = 16
    learning_rate: float = 1e-4
    head_learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_share: float = 0.1
    negative_share: float = 0.25
    max_seq_len: int = 256
    stride: int = 64
    seed: int = 42
    limit: int | None = None  # training questions, a seeded sample
    eval_limit: int | None = 500  # held-out questions scored by the run, a seeded sample
    loss_every: int = 10  # steps between points of the logged loss curve


@dataclass(frozen=True)
class ReaderScores:
    questions: int
    exact_match: float
    token_f1: float


def sample(examples: Sequence[Example], limit: int | None, seed: int) -> list[Example]:
    """A seeded sample of ``limit`` examples (all of them without a limit), in their file order."""
    if not limit or limit >= len(examples):
        return list(examples)
    keep = set(random.Random(seed).sample(range(len(examples)), limit))
    return [e for i, e in enumerate(examples) if i in keep]


def score_reader(reader: SpanReader, examples: Sequence[Example],
                 progress: ProgressCallback | None = None, phase: str = "evaluating") -> ReaderScores:
    """SQuAD exact match and token F1 of the reader on each question's own passage (the reader alone, without
    retrieval: what the gate compares two readers on)."""
    em = f1 = 0.0
    for done, example in enumerate(examples, start=1):
        span = reader.answer(example.question, example.context)
        text = span.text if span else ""
        em += exact_match(text, example.answers)
        f1 += token_f1(text, example.answers)
        if progress and (done % 10 == 0 or done == len(examples)):
            progress(phase, done, len(examples))
    n = len(examples)
    return ReaderScores(n, em / n if n else 0.0, f1 / n if n else 0.0)


# --- training -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReaderTrainResult:
    run_id: str
    version: str
    metrics: dict[str, float]
    aliases: list[str]


def fine_tune(reader: SpanReader, features: list[Feature], config: ReaderTrainConfig,
              on_loss: Callable[[int, float], object], progress: ProgressCallback | None = None) -> float:
    """AdamW with linear warm-up and decay; the mean of the start and end cross-entropies. Returns the last
    logged loss."""
    import torch

    network = reader.network
    # The word-embedding table is half the encoder's weights and a few thousand questions touch few of its rows:
    # kept frozen, it costs no gradient or optimiser state and cannot drift on words the questions never use.
    network.encoder.embeddings.word_embeddings.weight.requires_grad_(False)
    optimizer = torch.optim.AdamW([
        {"params": [p for p in network.encoder.parameters() if p.requires_grad], "lr": config.learning_rate},
        {"params": network.head.parameters(), "lr": config.head_learning_rate},
    ], weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(features) / config.batch_size)
    total = steps_per_epoch * config.epochs
    warmup = max(1, int(total * config.warmup_share))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (total - step) / max(1, total - warmup))))
    rng = random.Random(config.seed)
    pad = reader.tokenizer.pad_token_id or 0
    step, recent, last = 0, [], float("nan")
    for _ in range(config.epochs):
        network.train()
        for batch in length_batches(features, config.batch_size, rng):
            ids, mask, types, starts, ends = _batch([features[i] for i in batch], pad)
            start_logits, end_logits = network(ids, mask, types)
            loss = (torch.nn.functional.cross_entropy(start_logits, starts)
                    + torch.nn.functional.cross_entropy(end_logits, ends)) / 2
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            step += 1
            recent.append(float(loss.item()))
            if step % config.loss_every == 0 or step == total:
                last = float(np.mean(recent))
                on_loss(step, last)
                recent = []
            if progress:
                progress("training", step, total)
    network.eval()
    return last


def train_reader(config: ReaderTrainConfig, progress: ProgressCallback | None = None) -> ReaderTrainResult:
    """Train, evaluate, log and register one version of the span reader; returns where it landed."""
    import time

    import mlflow
    import torch
    from mlflow.models import infer_signature

    settings = get_settings()
    client = registry.connect()
    registry.use_for_fluent_api(client.tracking_uri)
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)

    data = reader_split()
    train = sample(data.train, config.limit, config.seed)
    held_out = sample(data.held_out, config.eval_limit, config.seed)
    reader = SpanReader.from_pretrained_encoder(config=ReaderConfig(max_seq_len=config.max_seq_len,
                                                                    stride=config.stride))
    features = training_features(reader, train, data.passages, config.negative_share, config.seed)

    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run() as run:
        mlflow.set_tags({"vigil.model": settings.reader_model_name, "vigil.reader.split": "article hash"})
        mlflow.log_params({
            "epochs": config.epochs, "batch_size": config.batch_size, "learning_rate": config.learning_rate,
            "head_learning_rate": config.head_learning_rate, "weight_decay": config.weight_decay,
            "warmup_share": config.warmup_share, "negative_share": config.negative_share,
            "max_seq_len": config.max_seq_len, "stride": config.stride, "seed": config.seed,
            "limit": config.limit or "", "eval_limit": config.eval_limit or "",
            "held_out_percent": HELD_OUT_PERCENT, "encoder": "all-MiniLM-L6-v2",
            "approach": "fine-tune encoder + linear start/end head", "train_questions": len(train),
            "train_windows": len(features), "held_out_questions": len(data.held_out),
            "evaluated_questions": len(held_out), "skipped_questions": data.skipped,
            "torch_threads": torch.get_num_threads(),
        })
        started = time.perf_counter()
        loss = fine_tune(reader, features, config,
                         on_loss=lambda step, value: mlflow.log_metric("train_loss", value, step=step),
                         progress=progress)
        training_seconds = time.perf_counter() - started
        scores = score_reader(reader, held_out, progress)
        metrics = {"exact_match": scores.exact_match, "token_f1": scores.token_f1, "final_train_loss": loss,
                   "training_seconds": training_seconds}
        mlflow.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as scratch:
            model_dir = reader.save(Path(scratch) / READER_ARTIFACT)
            # Of the files as written here: every later load is checked against the registry's record of them.
            manifest = model_digest.manifest_of(model_dir)
            example = pd.DataFrame({"question": [e.question for e in held_out[:2]] or ["Who?"],
                                    "context": [e.context for e in held_out[:2]] or ["Nobody."]})
            output = ReaderPyfunc.output_frame(
                [reader.answer(q, c) for q, c in zip(example["question"], example["context"], strict=True)])
            info = mlflow.pyfunc.log_model(
                name="model", python_model=ReaderPyfunc(), artifacts={READER_ARTIFACT: str(model_dir)},
                signature=infer_signature(example, output), input_example=example,
                registered_model_name=settings.reader_model_name, pip_requirements=_pip_requirements(),
            )
        version = str(info.registered_model_version)
        model_digest.record(client, settings.reader_model_name, version, manifest)
        mlflow.set_tag("vigil.registered_version", version)
        if progress:
            progress("logged and registered", 1, 1)
    moves = registry.register_initial_aliases(
        client, settings.reader_model_name, version,
        reason=f"trained by run {run.info.run_id} (held-out token F1 {scores.token_f1:.4f})")
    return ReaderTrainResult(run.info.run_id, version, metrics, [m.alias for m in moves])


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("torch", "transformers", "mlflow", "pandas", "numpy")]
