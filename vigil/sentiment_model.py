"""The sentiment classifier: MiniLM encoder + linear head, as one unit that trains, saves, loads and predicts.

It lives in the core because training writes it and the service reads it; the MLflow model wraps exactly this,
so the version that is evaluated is the version that is served.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel
from pydantic import BaseModel

from vigil import model_digest
from vigil.credentials import ensure_private_dir
from vigil.embedding import EMBEDDING_DIM, MAX_TOKENS, load_encoder, mean_pool
from vigil.errors import VigilError
from vigil.onnx_graph import export_graph, onnx_session

if TYPE_CHECKING:
    import torch
    from mlflow import MlflowClient

    from vigil.model_digest import Manifest

logger = logging.getLogger(__name__)

LABELS: tuple[str, str] = ("negative", "positive")
HEAD_FILE = "head.safetensors"
# Versions trained before the head was saved as safetensors: read with torch's weights-only reader, which rebuilds
# tensors and refuses any other object, so it runs no code from the file.
LEGACY_HEAD_FILE = "head.pt"
CONFIG_FILE = "vigil_sentiment.json"
# The pyfunc artifact that holds the classifier folder, and where MLflow puts it in a logged model (a folder
# artifact is copied to artifacts/<the folder's own name>, so training saves the classifier in a folder of this name).
CLASSIFIER_ARTIFACT = "classifier"
CLASSIFIER_PATH = Path("artifacts") / CLASSIFIER_ARTIFACT
UNVERIFIED = ("unverified: no digest was recorded when this version was registered (trained before Vigil recorded "
              "digests); loaded as data only — retrain it to serve a verified version")
# An ONNX export may differ from torch by float rounding only; anything larger means the export is wrong.
ONNX_TOLERANCE = 1e-4
ONNX_PROBE_TEXTS = (
    "Great phone, the battery lasts for days.",
    "The food was cold and the waiter never came back.",
    "ok",
    "I would not recommend this to anyone, it broke after a week and support did not answer my emails at all.",
)
# The INT8 graph is served only when its macro-F1 on the version's own test split is this close to the float one's.
QUANTIZATION_TOLERANCE = 0.005
# Texts per ONNX call after sorting a batch by token length: padding a batch to its longest text wastes most of the
# work, and small sub-batches of similar length ran fastest (bench/RESULTS.md, "Classifier ceiling"). 0: off.
BUCKET_SIZE = 4
# What quantize_onnx does; a verdict kept for another recipe is not reused (its INT8 graph is written again).
QUANTIZATION_RECIPE = "dynamic INT8: MatMul weights per channel, reduced range"
Precision = Literal["float", "int8"]


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float  # probability of the predicted label


def build_network(encoder: Any) -> Any:
    """Encoder + dropout + linear head; forward returns (logits, pooled embedding)."""
    import torch

    class SentimentNetwork(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            self.dropout = torch.nn.Dropout(0.1)
            self.head = torch.nn.Linear(EMBEDDING_DIM, len(LABELS))

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            pooled = mean_pool(hidden, attention_mask)
            return self.head(self.dropout(pooled)), pooled

    return SentimentNetwork()


class SentimentClassifier:
    """Tokenizer + network, with batched prediction and embedding for plain lists of strings."""

    def __init__(self, tokenizer: Any, network: Any, max_tokens: int = MAX_TOKENS) -> None:
        self.tokenizer = tokenizer
        self.network = network
        self.max_tokens = max_tokens
        self.onnx_session: Any = None
        self.precision: Precision = "float"  # of the ONNX graph in use (torch is always float)
        # Why the served graph has its precision (see choose_precision); None: INT8 was not considered.
        self.quantization: QuantizationVerdict | None = None
        self.bucket_size = BUCKET_SIZE
        # How the files were checked when loaded from a registered version (see load_logged); None: not loaded so.
        self.integrity: str | None = None

    @property
    def runtime(self) -> str:
        return "onnx" if self.onnx_session is not None else "torch"

    def use_onnx(self, path: Path, threads: int = 1) -> None:
        """Predict with ONNX Runtime from now on, on this network exported to ``path`` (exported when missing).

        Faster than torch eager with the same probabilities (the in-process ceiling in bench/RESULTS.md, "Serving").
        The export is checked against torch before it is used.
        """
        if not path.exists():
            export_onnx(self, path)
        session = onnx_session(path, threads)
        torch_probabilities = self.predict_proba(ONNX_PROBE_TEXTS, batch_size=len(ONNX_PROBE_TEXTS))
        self.onnx_session = session
        self.precision = "float"
        try:
            onnx_probabilities = self.predict_proba(ONNX_PROBE_TEXTS, batch_size=len(ONNX_PROBE_TEXTS))
            difference = float(np.abs(torch_probabilities - onnx_probabilities).max())
            if difference > ONNX_TOLERANCE:
                raise ValueError(f"the ONNX export at {path} differs from torch by {difference:.2e}")
        except Exception:
            self.onnx_session = None  # whatever went wrong, the classifier stays on torch
            raise

    def use_quantized(self, path: Path, threads: int = 1) -> None:
        """Predict with the INT8 graph at ``path`` (see :func:`quantize_onnx`) from now on; needs :meth:`use_onnx`
        first, and is only served once :func:`choose_precision` found it as good as the float graph."""
        if self.onnx_session is None:
            raise ValueError("use_onnx first: the INT8 graph replaces an ONNX session")
        self.onnx_session = onnx_session(path, threads)
        self.precision = "int8"

    @classmethod
    def from_pretrained_encoder(cls, encoder_dir: Path | None = None) -> SentimentClassifier:
        tokenizer, encoder = load_encoder(encoder_dir)
        return cls(tokenizer, build_network(encoder))

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return dict(
            self.tokenizer(
                list(texts), padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
            )
        )

    def _forward(self, texts: Sequence[str], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        if self.onnx_session is not None:
            return self._forward_onnx(texts, batch_size)
        import torch

        self.network.eval()
        probabilities: list[np.ndarray] = []
        embeddings: list[np.ndarray] = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = self.tokenize(texts[start : start + batch_size])
                logits, pooled = self.network(batch["input_ids"], batch["attention_mask"])
                probabilities.append(torch.softmax(logits, dim=-1).numpy())
                embeddings.append(pooled.numpy())
        return _joined(probabilities, embeddings)

    def _forward_onnx(self, texts: Sequence[str], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        probabilities: list[np.ndarray] = []
        embeddings: list[np.ndarray] = []
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start : start + batch_size])
            if self.bucket_size > 0 and len(chunk) > self.bucket_size:
                batch_probabilities, pooled = self._run_bucketed(chunk)
            else:
                batch = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_tokens,
                                       return_tensors="np")
                batch_probabilities, pooled = self._run_onnx(batch["input_ids"], batch["attention_mask"])
            probabilities.append(batch_probabilities)
            embeddings.append(pooled)
        return _joined(probabilities, embeddings)

    def _run_onnx(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch_probabilities, pooled = self.onnx_session.run(
            ["probabilities", "pooled"],
            {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64)},
        )
        return batch_probabilities, pooled

    def _run_bucketed(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``texts`` sorted by token length and run ``bucket_size`` at a time, each sub-batch padded only to its own
        longest text; results in the order of ``texts``."""
        token_ids = self.tokenizer(texts, truncation=True, max_length=self.max_tokens)["input_ids"]
        order = sorted(range(len(texts)), key=lambda row: len(token_ids[row]))
        pad = self.tokenizer.pad_token_id or 0
        probabilities = np.empty((len(texts), len(LABELS)), np.float32)
        embeddings = np.empty((len(texts), EMBEDDING_DIM), np.float32)
        for start in range(0, len(order), self.bucket_size):
            rows = order[start : start + self.bucket_size]
            width = max(len(token_ids[row]) for row in rows)
            input_ids = np.full((len(rows), width), pad, np.int64)
            attention_mask = np.zeros((len(rows), width), np.int64)
            for position, row in enumerate(rows):
                length = len(token_ids[row])
                input_ids[position, :length] = token_ids[row]
                attention_mask[position, :length] = 1
            probabilities[rows], embeddings[rows] = self._run_onnx(input_ids, attention_mask)
        return probabilities, embeddings

    def predict_proba(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Class probabilities, shape (n, 2), columns in LABELS order."""
        return self._forward(texts, batch_size)[0]

    def predict_with_embeddings(
        self, texts: Sequence[str], batch_size: int = 64
    ) -> tuple[list[Prediction], np.ndarray]:
        probabilities, embeddings = self._forward(texts, batch_size)
        return to_predictions(probabilities), embeddings

    def predict(self, texts: Sequence[str], batch_size: int = 64) -> list[Prediction]:
        return to_predictions(self.predict_proba(texts, batch_size))

    def save(self, directory: Path) -> Path:
        """Encoder, tokenizer and head in one folder that :meth:`load` reads back: JSON and safetensors only."""
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        encoder = self.network.encoder
        encoder.save_pretrained(directory)  # config.json + model.safetensors
        self.tokenizer.save_pretrained(directory)
        save_file({name: tensor.contiguous() for name, tensor in self.network.head.state_dict().items()},
                  directory / HEAD_FILE)
        (directory / CONFIG_FILE).write_text(
            json.dumps({"labels": list(LABELS), "max_tokens": self.max_tokens}, indent=2)
        )
        return directory

    @classmethod
    def load(cls, directory: Path) -> SentimentClassifier:
        """Read a folder written by :meth:`save` as data: nothing in it is unpickled, so nothing in it runs."""
        config = json.loads((directory / CONFIG_FILE).read_text())
        tokenizer, encoder = load_encoder(directory)
        network = build_network(encoder)
        network.head.load_state_dict(_head_weights(directory))
        network.eval()
        return cls(tokenizer, network, max_tokens=int(config["max_tokens"]))


class UnreadableModel(VigilError):
    """A model folder that cannot be read as Vigil's classifier, as data; nothing of it is loaded."""


def _head_weights(directory: Path) -> dict[str, Any]:
    if (directory / HEAD_FILE).is_file():
        from safetensors.torch import load_file

        return load_file(directory / HEAD_FILE, device="cpu")
    if (directory / LEGACY_HEAD_FILE).is_file():
        import pickle

        import torch

        try:
            return dict(torch.load(directory / LEGACY_HEAD_FILE, map_location="cpu", weights_only=True))
        except pickle.UnpicklingError as error:
            first_line = (str(error).splitlines() or [""])[0]
            raise UnreadableModel(f"{LEGACY_HEAD_FILE} holds more than tensors, so it is not loaded "
                                  f"({first_line})") from None
    raise UnreadableModel(f"the classifier has no {HEAD_FILE} (nor the {LEGACY_HEAD_FILE} of older versions)")


def is_logged_classifier(model_dir: Path) -> bool:
    """Whether a downloaded MLflow model folder holds Vigil's classifier (the sentiment model's pyfunc artifact)."""
    return (model_dir / CLASSIFIER_PATH / CONFIG_FILE).is_file()


def load_logged(model_dir: Path, expected: Manifest | None) -> SentimentClassifier:
    """Vigil's classifier from a downloaded MLflow model folder, read as data; MLflow's pickled wrapper is not opened.

    Every file of the classifier folder is checked against ``expected`` (the manifest recorded at registration)
    before any is read: a changed, missing or added file raises :class:`~vigil.model_digest.ArtifactMismatch`
    naming it. ``expected`` None (a version registered before digests) loads unverified. The classifier's
    ``integrity`` says which.
    """
    folder = model_dir / CLASSIFIER_PATH
    if not folder.is_dir():
        raise UnreadableModel(f"the model has no {CLASSIFIER_PATH.as_posix()}: it is not a Vigil sentiment model")
    if expected is not None:
        model_digest.check(folder, expected)
    elif not is_logged_classifier(model_dir):
        raise UnreadableModel(f"{CLASSIFIER_PATH.as_posix()} has no {CONFIG_FILE}: it is not a Vigil sentiment "
                                 "model")
    classifier = SentimentClassifier.load(folder)
    classifier.integrity = f"verified ({expected.digest})" if expected is not None else UNVERIFIED
    if expected is None:
        logger.warning("%s: %s", model_dir, UNVERIFIED)
    return classifier


def load_registered(client: MlflowClient, name: str, version: str, model_dir: Path) -> SentimentClassifier | None:
    """``name`` v``version`` (downloaded to ``model_dir``) as Vigil's classifier, checked against the digest the
    registry recorded for it (see :func:`load_logged`); None when the version is not Vigil's sentiment model."""
    expected = model_digest.recorded(client, name, version)
    if expected is None and not is_logged_classifier(model_dir):
        return None
    return load_logged(model_dir, expected)


def _joined(probabilities: list[np.ndarray], embeddings: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    if not probabilities:
        return np.zeros((0, len(LABELS)), np.float32), np.zeros((0, EMBEDDING_DIM), np.float32)
    return np.concatenate(probabilities), np.concatenate(embeddings)


def export_onnx(classifier: SentimentClassifier, path: Path) -> Path:
    """Write the network (encoder, pooling, head, softmax) as ONNX with dynamic batch and sequence axes.

    Written beside and renamed into place, so that two model workers exporting at once never read half a file.
    """
    import torch

    class Exported(torch.nn.Module):
        def __init__(self, network: Any) -> None:
            super().__init__()
            self.network = network  # a submodule, so its weights export as initialisers, not constants

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits, pooled = self.network(input_ids, attention_mask)
            return torch.softmax(logits, dim=-1), pooled

    example = classifier.tokenize(ONNX_PROBE_TEXTS)
    return export_graph(Exported(classifier.network), {"input_ids": example["input_ids"],
                                                       "attention_mask": example["attention_mask"]},
                        {"probabilities": {0: "batch"}, "pooled": {0: "batch"}}, path, "sentiment network")


def quantize_onnx(float_path: Path, int8_path: Path) -> Path:
    """Write the dynamic INT8 quantization of the float graph at ``float_path`` (the MatMul weights INT8 per channel,
    their inputs quantized at run time) to ``int8_path``, beside and renamed into place like :func:`export_onnx`.

    Per channel: per-tensor scales lost more macro-F1 on the test split; reduced range: without VNNI the u8×s8
    kernels can saturate on full-range weights; MatMul only: the word-embedding table stays float, as every token's
    input goes through it (bench/RESULTS.md, "Classifier ceiling").
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ensure_private_dir(int8_path.parent)
    partial = int8_path.with_name(f".{int8_path.name}.{os.getpid()}.partial")
    quantize_dynamic(float_path, partial, per_channel=True, reduce_range=True, weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul"])
    partial.replace(int8_path)
    logger.info("quantized %s to INT8 at %s", float_path.name, int8_path)
    return int8_path


class QuantizationVerdict(BaseModel):
    """Whether the INT8 graph of a version is served, and why: kept as JSON beside its ONNX files."""

    precision: Precision
    reason: str
    float_macro_f1: float | None = None
    int8_macro_f1: float | None = None
    difference: float | None = None  # int8 - float
    tolerance: float = QUANTIZATION_TOLERANCE
    # Empty in a verdict that predates the field: made by an unknown recipe, so never reused.
    recipe: str = ""
    evaluation_rows: int = 0
    evaluation_fingerprint: str | None = None


@dataclass(frozen=True)
class EvaluationData:
    """A version's own labelled test split (its attached evaluation data): texts and true labels."""

    texts: list[str]
    labels: list[str]  # one of LABELS each
    fingerprint: str


def evaluation_data(frame: pd.DataFrame, fingerprint: str, target: str | None = "label") -> EvaluationData:
    """An attached evaluation table (a `text` column and the target, 0/1 or the label names) as EvaluationData."""
    column = target or "label"
    if "text" not in frame.columns or column not in frame.columns:
        raise ValueError(f"the evaluation data needs `text` and `{column}` columns; it has {list(frame.columns)}")
    labels = [value if value in LABELS else LABELS[int(value)] for value in frame[column].tolist()]
    return EvaluationData([str(text) for text in frame["text"].tolist()], labels, fingerprint)


def macro_f1(true_labels: Sequence[str], predicted: Sequence[str]) -> float:
    """Unweighted mean of the per-label F1 over LABELS (a label never true nor predicted scores 0)."""
    scores = []
    for label in LABELS:
        true_positive = sum(t == label and p == label for t, p in zip(true_labels, predicted, strict=True))
        predicted_count = sum(p == label for p in predicted)
        true_count = sum(t == label for t in true_labels)
        denominator = predicted_count + true_count
        scores.append(2 * true_positive / denominator if denominator else 0.0)
    return float(np.mean(scores))


def judge_quantization(float_f1: float, int8_f1: float, data: EvaluationData,
                       tolerance: float = QUANTIZATION_TOLERANCE) -> QuantizationVerdict:
    """INT8 when its macro-F1 is within ``tolerance`` of the float graph's, float otherwise."""
    difference = int8_f1 - float_f1
    within = abs(difference) <= tolerance
    reason = (f"INT8 macro-F1 {int8_f1:.4f} vs float {float_f1:.4f} on {len(data.texts)} test texts: difference "
              f"{difference:+.4f} {'within' if within else 'outside'} ±{tolerance}")
    return QuantizationVerdict(precision="int8" if within else "float", reason=reason, float_macro_f1=float_f1,
                               int8_macro_f1=int8_f1, difference=difference, tolerance=tolerance,
                               recipe=QUANTIZATION_RECIPE,
                               evaluation_rows=len(data.texts), evaluation_fingerprint=data.fingerprint)


def verdict_path(float_path: Path) -> Path:
    return float_path.with_name(f"{float_path.stem}.int8.json")


def int8_path(float_path: Path) -> Path:
    return float_path.with_name(f"{float_path.stem}.int8.onnx")


def choose_precision(classifier: SentimentClassifier, float_path: Path, threads: int,
                     evaluation: Callable[[], EvaluationData | None] | None,
                     tolerance: float = QUANTIZATION_TOLERANCE) -> QuantizationVerdict:
    """Serve the INT8 graph of ``classifier`` (on ONNX from ``float_path``) only when it scores as well as the float
    graph on the version's evaluation data; the classifier's ``quantization`` says why either way.

    The verdict is kept beside the ONNX files (:func:`verdict_path`) and reused while the evaluation data keeps its
    fingerprint, so a version is scored once. ``evaluation`` None (MLflow unreachable: a cached copy or a Bento)
    reuses a kept verdict or stays float; ``evaluation`` returning None (no data attached) stays float.
    """
    if classifier.onnx_session is None:
        raise ValueError("choose_precision needs the classifier on ONNX (use_onnx)")
    kept_path = verdict_path(float_path)
    kept = QuantizationVerdict.model_validate_json(kept_path.read_text()) if kept_path.exists() else None
    if kept is not None and kept.recipe != QUANTIZATION_RECIPE:
        int8_path(float_path).unlink(missing_ok=True)  # made another way: quantized and scored again
        kept = None
    if evaluation is None:
        verdict = kept or QuantizationVerdict(
            precision="float", reason="no INT8 verdict kept for this version and no registry to check it against")
    else:
        data = evaluation()
        if data is None:
            verdict = QuantizationVerdict(precision="float", reason="no evaluation data attached to this version, "
                                          "so INT8 cannot be checked (attach its test split: vigil models "
                                          "reference NAME --role evaluation --target label --data FILE)")
        elif (kept is not None and kept.evaluation_fingerprint == data.fingerprint and kept.tolerance == tolerance
              and int8_path(float_path).exists()):
            verdict = kept
        else:
            verdict = _score_quantized(classifier, float_path, threads, data, tolerance)
            staging = kept_path.with_name(f".{kept_path.name}.{os.getpid()}.partial")
            staging.write_text(verdict.model_dump_json(indent=2))
            staging.replace(kept_path)  # a reader sees the whole verdict or none
    if verdict.precision == "int8" and int8_path(float_path).exists():
        classifier.use_quantized(int8_path(float_path), threads)
    elif verdict.precision == "int8":
        verdict = verdict.model_copy(update={"precision": "float", "reason": "the INT8 graph is missing"})
    classifier.quantization = verdict
    return verdict


def _score_quantized(classifier: SentimentClassifier, float_path: Path, threads: int, data: EvaluationData,
                     tolerance: float) -> QuantizationVerdict:
    quantized = int8_path(float_path)
    if not quantized.exists():
        quantize_onnx(float_path, quantized)
    float_session = classifier.onnx_session
    float_f1 = macro_f1(data.labels, [p.label for p in classifier.predict(data.texts, batch_size=32)])
    classifier.onnx_session = onnx_session(quantized, threads)
    try:
        int8_f1 = macro_f1(data.labels, [p.label for p in classifier.predict(data.texts, batch_size=32)])
    finally:
        classifier.onnx_session = float_session
    verdict = judge_quantization(float_f1, int8_f1, data, tolerance)
    logger.info("%s: %s", float_path.name, verdict.reason)
    return verdict


def to_predictions(probabilities: np.ndarray) -> list[Prediction]:
    best = probabilities.argmax(axis=1)
    return [Prediction(LABELS[int(i)], float(probabilities[row, i])) for row, i in enumerate(best)]


class SentimentPyfunc(PythonModel):
    """The MLflow face of :class:`SentimentClassifier`: a DataFrame with a `text` column in, label + score out.

    A python-function model rather than MLflow's PyTorch flavour: strings in, no frozen batch dimension.
    """

    classifier: SentimentClassifier | None = None

    def load_context(self, context: Any) -> None:
        self.classifier = SentimentClassifier.load(Path(context.artifacts["classifier"]))

    # No type hints on purpose: MLflow reads them as a schema and only accepts list[...]; the signature
    # logged with the model (a `text` column) is the schema.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        assert self.classifier is not None, "load_context was not called"
        return self.output_frame(self.classifier.predict(texts_from_input(model_input)))

    @staticmethod
    def output_frame(predictions: Sequence[Prediction]) -> pd.DataFrame:
        return pd.DataFrame(
            {"label": [p.label for p in predictions], "score": [p.score for p in predictions]}
        )


def texts_from_input(model_input: Any) -> list[str]:
    """Accept what pyfunc callers pass: a DataFrame with `text`, a Series, or a list of strings."""
    if isinstance(model_input, pd.DataFrame):
        column = model_input["text"] if "text" in model_input.columns else model_input.iloc[:, 0]
        return [str(value) for value in column.tolist()]
    if isinstance(model_input, pd.Series):
        return [str(value) for value in model_input.tolist()]
    if isinstance(model_input, str):
        return [model_input]
    return [str(value) for value in model_input]
