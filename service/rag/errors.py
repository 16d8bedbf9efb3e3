"""RAG failures, each carrying the HTTP status the service answers with.

They derive from :class:`vigil.errors.VigilError`, so the CLI prints their message without a stack trace, and the
service maps any :class:`RagError` to ``http_status`` with ``str(error)`` as the detail.
"""

from __future__ import annotations

from vigil.errors import VigilError


class RagError(VigilError):
    """A RAG failure a caller can act on."""

    http_status: int = 500


class InvalidQuestion(RagError, ValueError):
    """The question is empty or only whitespace."""

    http_status = 400


class QuestionTooLong(RagError, ValueError):
    """The question is longer than ``VIGIL_RAG_MAX_QUESTION_CHARS``."""

    http_status = 413


class InvalidTopK(RagError, ValueError):
    """``top_k`` lies outside 1..50."""

    http_status = 422


class StoreUnavailable(RagError):
    """Milvus cannot be opened or reached; only the RAG endpoints are affected."""

    http_status = 503


class GeneratorUnavailable(RagError):
    """The LLM provider refused, failed or answered something that is not a chat completion."""

    http_status = 502


class GeneratorTimeout(RagError):
    """The LLM provider did not answer within ``VIGIL_LLM_TIMEOUT_SECONDS``."""

    http_status = 504


class RagConfigError(RagError):
    """The RAG settings contradict each other (e.g. the openai generator without a base URL)."""

    http_status = 500


class ServiceIngestError(RagError):
    """The running Vigil service refused or failed an ingest the CLI sent it."""

    http_status = 502
