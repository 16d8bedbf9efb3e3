"""Simple descriptors of a text, computed the same way for the drift reference and for served traffic."""

from __future__ import annotations

import re
from collections.abc import Iterable

import pandas as pd

_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)

FEATURE_COLUMNS: tuple[str, ...] = (
    "text_length",
    "word_count",
    "mean_word_length",
    "non_letter_share",
    "uppercase_share",
    "exclamation_count",
)


def describe(text: str) -> dict[str, float]:
    words = _WORD.findall(text)
    letters = sum(ch.isalpha() for ch in text)
    length = len(text)
    return {
        "text_length": float(length),
        "word_count": float(len(words)),
        "mean_word_length": (sum(len(w) for w in words) / len(words)) if words else 0.0,
        "non_letter_share": ((length - letters) / length) if length else 0.0,
        "uppercase_share": (sum(ch.isupper() for ch in text) / letters) if letters else 0.0,
        "exclamation_count": float(text.count("!")),
    }


def describe_all(texts: Iterable[str]) -> pd.DataFrame:
    return pd.DataFrame([describe(t) for t in texts], columns=list(FEATURE_COLUMNS))
