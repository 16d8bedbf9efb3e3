"""One redaction for request text, so a span, a RAG span and an inference-log row of the same text match.

A hashed text is :func:`text_digest`: ``sha256:`` and the 64 hex digits of the UTF-8 text's SHA-256. Spans carry it
when ``VIGIL_TRACE_RAW_TEXT=false``; the inference log stores it with ``VIGIL_INFERENCE_LOG_REDACTION=hash``. Equal
digests find the log row of a traced request (and every request with the same text) without the text itself.
"""

from __future__ import annotations

import hashlib
import re
from typing import Literal

TextRedaction = Literal["keep", "hash", "drop"]
TEXT_REDACTIONS: tuple[TextRedaction, ...] = ("keep", "hash", "drop")
DIGEST_PREFIX = "sha256:"

# The prefix is optional: inference logs written before it existed hold the bare 64 hex digits.
_DIGEST = re.compile(r"^(?:sha256:)?[0-9a-f]{64}$")


def text_digest(text: str) -> str:
    """``sha256:`` + the hex SHA-256 of ``text`` (UTF-8): what every hashed request text becomes."""
    return DIGEST_PREFIX + hashlib.sha256(text.encode("utf-8")).hexdigest()


def redact_text(text: str | None, mode: TextRedaction) -> str | None:
    """``text`` as ``mode`` keeps it: unchanged (``keep``), its :func:`text_digest` (``hash``), or None (``drop``)."""
    if text is None or mode == "keep":
        return text
    if mode == "hash":
        return text_digest(text)
    if mode == "drop":
        return None
    raise ValueError(f"redaction must be keep, hash or drop, not {mode!r}")


def is_text_digest(value: str) -> bool:
    """Whether ``value`` is a hashed text (:func:`text_digest`, or the bare hex of older inference logs)."""
    return _DIGEST.match(value) is not None
