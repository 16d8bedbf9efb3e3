"""The span reader: MiniLM + a start/end head that finds the answer to a question inside a passage.

It lives in the core because training writes it and the RAG service reads it (the service may import only the core
and telemetry). Like the sentiment classifier it is saved and loaded as data — the encoder's safetensors, the head's
safetensors, the tokenizer's files and a JSON config, nothing unpickled — and a registered version is read only after
its files match the digest recorded at registration (:mod:`vigil.model_digest`). It runs on ONNX Runtime, exported
once per version into the model cache and checked against torch, or on torch when that fails.

A passage longer than the window is read in strided windows; each window proposes its best span (start ≤ end, at
most ``max_answer_tokens`` long, inside the passage) scored by the sum of its start and end logits, next to the
window's "no answer" score (both logits at the [CLS] token). Training teaches [CLS] for windows and passages that
do not hold the answer, so a span's ``margin`` over that score compares readings across passages.
"""

from __future__ import annotations

import logging
import re
import string
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel
from pydantic import BaseModel

from vigil import model_digest
from vigil.embedding import EMBEDDING_DIM, load_encoder
from vigil.errors import VigilError
from vigil.onnx_graph import BATCH_AND_TOKENS, export_graph, onnx_session

if TYPE_CHECKING:
    import torch
    from mlflow import MlflowClient

    from vigil.model_digest import Manifest

logger = logging.getLogger(__name__)

HEAD_FILE = "span_head.safetensors"
CONFIG_FILE = "vigil_reader.json"
# The pyfunc artifact that holds the reader folder, and where MLflow puts it in a logged model.
READER_ARTIFACT = "reader"
READER_PATH = Path("artifacts") / READER_ARTIFACT
# MiniLM's own window (sentence_bert_config.json); passages longer than it are read in strided windows.
MAX_SEQ_LEN = 256
STRIDE = 64  # tokens two neighbouring windows share, so an answer cut by one window is whole in the next
MAX_ANSWER_TOKENS = 30  # SQuAD answers are short: a longer span is a sentence, not an answer
MAX_QUESTION_TOKENS = 64
# Logits of an ONNX export may differ from torch by float rounding only.
ONNX_TOLERANCE = 1e-3
ONNX_PROBE = ("Who designed the tower?",
              ["The tower was designed by Gustave Eiffel's company and finished in 1889 for the World's Fair.",
               "ok"])
# A masked position's logit: far below any real one, so padding and the question never win a span.
MASKED = -1e4


class ReaderConfig(BaseModel):
    """How the reader reads; saved beside its weights."""

    max_seq_len: int = MAX_SEQ_LEN
    stride: int = STRIDE
    max_answer_tokens: int = MAX_ANSWER_TOKENS
    max_question_tokens: int = MAX_QUESTION_TOKENS


@dataclass(frozen=True)
class Span:
    """The best answer the reader found in one passage."""

    context: int  # index of the passage in the list read
    text: str
    start: int  # character offsets in the passage
    end: int
    score: float  # start logit + end logit
    null_score: float  # the window's "no answer" score (both logits at [CLS])

    @property
    def margin(self) -> float:
        """How much the span beats "no answer" in its window: comparable across passages."""
        return self.score - self.null_score


class UnreadableReader(VigilError):
    """A model folder that cannot be read as Vigil's span reader, as data; nothing of it is loaded."""


def build_network(encoder: Any) -> Any:
    """Encoder + linear start/end head; forward returns (start_logits, end_logits), padding masked out."""
    import torch

    class SpanNetwork(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            self.head = torch.nn.Linear(EMBEDDING_DIM, 2)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                  token_type_ids=token_type_ids).last_hidden_state
            logits = self.head(hidden)
            masked = (1 - attention_mask.to(logits.dtype)) * MASKED
            return logits[..., 0] + masked, logits[..., 1] + masked

    return SpanNetwork()


@dataclass(frozen=True)
class Windows:
    """A question paired with passages, tokenised into windows: the arrays the network reads and the map back."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    passage_of: list[int]  # window → index of its passage
    offsets: list[list[tuple[int, int] | None]]  # window → per token its characters in the passage (None: not it)


class SpanReader:
    """Tokenizer + network: reads a question against passages and returns the best span of each.

    Thread-safe: the tokenizer's truncation state and the runtime are used under one lock.
    """

    def __init__(self, tokenizer: Any, network: Any, config: ReaderConfig | None = None) -> None:
        self.tokenizer = tokenizer
        self.network = network
        self.config = config or ReaderConfig()
        self.onnx_session: Any = None
        self.integrity: str | None = None  # how the files were checked when loaded from a registered version
        self._lock = threading.Lock()

    @property
    def runtime(self) -> str:
        return "onnx" if self.onnx_session is not None else "torch"

    @classmethod
    def from_pretrained_encoder(cls, encoder_dir: Path | None = None,
                                config: ReaderConfig | None = None) -> SpanReader:
        tokenizer, encoder = load_encoder(encoder_dir)
        return cls(tokenizer, build_network(encoder), config)

    # --- reading -----------------------------------------------------------------------------------------------

    def windows(self, question: str, passages: Sequence[str]) -> Windows:
        """``question`` paired with each passage, long passages cut in windows of ``max_seq_len`` sharing
        ``stride`` tokens; padded to the longest window."""
        question = self._short_question(question)
        encoded = self.tokenizer(
            [question] * len(passages), list(passages), truncation="only_second", max_length=self.config.max_seq_len,
            stride=self.config.stride, return_overflowing_tokens=True, return_offsets_mapping=True, padding=True,
            return_token_type_ids=True,
        )
        passage_of = [int(i) for i in encoded["overflow_to_sample_mapping"]]
        offsets: list[list[tuple[int, int] | None]] = []
        for window, spans in enumerate(encoded["offset_mapping"]):
            sequence = encoded.sequence_ids(window)
            offsets.append([(int(a), int(b)) if side == 1 else None for (a, b), side in zip(spans, sequence,
                                                                                             strict=True)])
        return Windows(np.asarray(encoded["input_ids"], np.int64), np.asarray(encoded["attention_mask"], np.int64),
                       np.asarray(encoded["token_type_ids"], np.int64), passage_of, offsets)

    def _short_question(self, question: str) -> str:
        spans = self.tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        if len(spans) <= self.config.max_question_tokens:
            return question
        return question[:spans[self.config.max_question_tokens - 1][1]]

    def logits(self, windows: Windows) -> tuple[np.ndarray, np.ndarray]:
        """Start and end logits, shape (windows, tokens)."""
        if self.onnx_session is not None:
            start, end = self.onnx_session.run(["start_logits", "end_logits"], {
                "input_ids": windows.input_ids, "attention_mask": windows.attention_mask,
                "token_type_ids": windows.token_type_ids})
            return np.asarray(start), np.asarray(end)
        import torch

        self.network.eval()
        with torch.inference_mode():
            start, end = self.network(torch.from_numpy(windows.input_ids), torch.from_numpy(windows.attention_mask),
                                      torch.from_numpy(windows.token_type_ids))
        return start.numpy(), end.numpy()

    def _logits_by_length(self, windows: Windows) -> tuple[np.ndarray, np.ndarray]:
        """Start and end logits of every window, each window run without the padding of longer ones: the reader's
        cost grows with the tokens it runs, and a sentence padded to a whole chunk's length costs as much as the
        chunk. Windows are grouped shortest first while the group's padded size stays within a quarter of its real
        tokens; the logits of padding positions are masked as the network masks them."""
        lengths = windows.attention_mask.sum(axis=1)
        start = np.full(windows.input_ids.shape, MASKED, np.float32)
        end = np.full(windows.input_ids.shape, MASKED, np.float32)
        order = [int(i) for i in np.argsort(lengths, kind="stable")]
        groups: list[list[int]] = []
        for row in order:
            group = groups[-1] if groups else None
            if group is not None and (len(group) + 1) * lengths[row] <= 1.25 * (sum(lengths[group]) + lengths[row]):
                group.append(row)
            else:
                groups.append([row])
        for group in groups:
            width = int(lengths[group].max())
            part = Windows(windows.input_ids[group, :width], windows.attention_mask[group, :width],
                           windows.token_type_ids[group, :width], [], [])
            group_start, group_end = self.logits(part)
            start[group, :width], end[group, :width] = group_start, group_end
        return start, end

    def read(self, question: str, passages: Sequence[str]) -> list[Span | None]:
        """The best span of each passage (None for an empty one); windows of like length run in one call."""
        if not passages:
            return []
        with self._lock:
            windows = self.windows(question, passages)
            start, end = self._logits_by_length(windows)
        best: list[Span | None] = [None] * len(passages)
        for window, passage in enumerate(windows.passage_of):
            span = best_span(start[window], end[window], windows.offsets[window], self.config.max_answer_tokens)
            if span is None:
                continue
            first, last, score = span
            a, b = windows.offsets[window][first], windows.offsets[window][last]
            assert a is not None and b is not None
            null = float(start[window][0] + end[window][0])
            found = Span(passage, passages[passage][a[0]:b[1]], a[0], b[1], score, null)
            current = best[passage]
            if current is None or found.margin > current.margin:
                best[passage] = found
        return best

    def answer(self, question: str, passage: str) -> Span | None:
        """The best span of one passage."""
        return self.read(question, [passage])[0]

    # --- ONNX -------------------------------------------------------------------------------------------------

    def use_onnx(self, path: Path, threads: int = 1) -> None:
        """Read with ONNX Runtime from now on, on this network exported to ``path`` (exported when missing); the
        export is checked against torch first, and the reader stays on torch when it differs."""
        if not path.exists():
            export_onnx(self, path)

        session = onnx_session(path, threads)
        windows = self.windows(ONNX_PROBE[0], ONNX_PROBE[1])
        expected = self.logits(windows)
        self.onnx_session = session
        try:
            got = self.logits(windows)
            mask = windows.attention_mask.astype(bool)
            difference = max(float(np.abs(e[mask] - g[mask]).max()) for e, g in zip(expected, got, strict=True))
            if difference > ONNX_TOLERANCE:
                raise ValueError(f"the ONNX export at {path} differs from torch by {difference:.2e}")
        except Exception:
            self.onnx_session = None
            raise

    # --- saved format -----------------------------------------------------------------------------------------

    def save(self, directory: Path) -> Path:
        """Encoder, tokenizer, head and config in one folder that :meth:`load` reads back: JSON and safetensors."""
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        self.network.encoder.save_pretrained(directory)  # config.json + model.safetensors
        self.tokenizer.save_pretrained(directory)
        save_file({name: tensor.contiguous() for name, tensor in self.network.head.state_dict().items()},
                  directory / HEAD_FILE)
        (directory / CONFIG_FILE).write_text(self.config.model_dump_json(indent=2))
        return directory

    @classmethod
    def load(cls, directory: Path) -> SpanReader:
        """Read a folder written by :meth:`save` as data: nothing in it is unpickled, so nothing in it runs."""
        if not (directory / CONFIG_FILE).is_file() or not (directory / HEAD_FILE).is_file():
            raise UnreadableReader(f"{directory} has no {CONFIG_FILE} and {HEAD_FILE}: it is not a Vigil span reader")
        from safetensors.torch import load_file

        config = ReaderConfig.model_validate_json((directory / CONFIG_FILE).read_text())
        tokenizer, encoder = load_encoder(directory)
        network = build_network(encoder)
        network.head.load_state_dict(load_file(directory / HEAD_FILE, device="cpu"))
        network.eval()
        return cls(tokenizer, network, config)


def best_span(start: np.ndarray, end: np.ndarray, offsets: Sequence[tuple[int, int] | None],
              max_tokens: int) -> tuple[int, int, float] | None:
    """The (first, last, score) token span of one window with the highest start + end logit, inside the passage,
    ``first <= last < first + max_tokens``; None when the window holds no passage token."""
    inside = np.array([o is not None for o in offsets])
    if not inside.any():
        return None
    s = np.where(inside, start[:len(offsets)], -np.inf)
    e = np.where(inside, end[:len(offsets)], -np.inf)
    scores = s[:, None] + e[None, :]
    n = len(offsets)
    allowed = np.triu(np.ones((n, n), bool)) & ~np.triu(np.ones((n, n), bool), k=max_tokens)
    scores = np.where(allowed, scores, -np.inf)
    first, last = np.unravel_index(int(np.argmax(scores)), scores.shape)
    return int(first), int(last), float(scores[first, last])


def export_onnx(reader: SpanReader, path: Path) -> Path:
    """Write the network as ONNX with dynamic batch and sequence axes, beside and renamed into place."""
    import torch

    windows = reader.windows(ONNX_PROBE[0], ONNX_PROBE[1])
    example = {"input_ids": torch.from_numpy(windows.input_ids),
               "attention_mask": torch.from_numpy(windows.attention_mask),
               "token_type_ids": torch.from_numpy(windows.token_type_ids)}
    return export_graph(reader.network, example, {"start_logits": BATCH_AND_TOKENS, "end_logits": BATCH_AND_TOKENS},
                        path, "span reader")


# --- registered versions --------------------------------------------------------------------------------------


def load_logged(model_dir: Path, expected: Manifest | None) -> SpanReader:
    """The reader of a downloaded MLflow model folder, read as data after every file of its reader folder matched
    ``expected`` (the manifest recorded at registration). A reader is always registered with its digest, so
    ``expected`` None refuses it."""
    folder = model_dir / READER_PATH
    if not folder.is_dir():
        raise UnreadableReader(f"the model has no {READER_PATH.as_posix()}: it is not a Vigil span reader")
    if expected is None:
        raise UnreadableReader("no digest was recorded for this version, so its files cannot be checked")
    model_digest.check(folder, expected)
    reader = SpanReader.load(folder)
    reader.integrity = f"verified ({expected.digest})"
    return reader


def load_registered(client: MlflowClient, name: str, version: str, model_dir: Path) -> SpanReader:
    """``name`` v``version`` (downloaded to ``model_dir``) checked against the digest the registry recorded."""
    return load_logged(model_dir, model_digest.recorded(client, name, version))


class ReaderPyfunc(PythonModel):
    """The MLflow face of :class:`SpanReader`: `question` and `context` columns in, `answer` and `score` out."""

    reader: SpanReader | None = None

    def load_context(self, context: Any) -> None:
        self.reader = SpanReader.load(Path(context.artifacts[READER_ARTIFACT]))

    # No type hints on purpose: MLflow reads them as a schema; the logged signature is the schema.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        assert self.reader is not None, "load_context was not called"
        spans = [self.reader.answer(str(q), str(c)) for q, c in zip(model_input["question"], model_input["context"],
                                                                     strict=True)]
        return self.output_frame(spans)

    @staticmethod
    def output_frame(spans: Sequence[Span | None]) -> pd.DataFrame:
        return pd.DataFrame({"answer": [s.text if s else "" for s in spans],
                             "score": [s.margin if s else float("nan") for s in spans]})


# --- SQuAD answer scoring: training, evaluation and the gate judge answers with these ---------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def exact_match(answer: str, gold: Iterable[str]) -> float:
    """SQuAD exact match: 1.0 when the normalised answer equals one normalised gold answer, else 0.0."""
    normalized = normalize_answer(answer)
    return float(any(normalized == normalize_answer(reference) for reference in gold))


def token_f1(answer: str, gold: Iterable[str]) -> float:
    """SQuAD token F1: the best over the gold answers of the F1 between normalised token bags; 0 without gold."""
    predicted = normalize_answer(answer).split()
    best = 0.0
    for reference in gold:
        expected = normalize_answer(reference).split()
        common = sum((Counter(predicted) & Counter(expected)).values())
        if common:
            precision, recall = common / len(predicted), common / len(expected)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best
