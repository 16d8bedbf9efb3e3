"""RAG failures, one type per reason a caller can act on.

They derive from :class:`vigil.errors.VigilError`, so the CLI prints their message without a stack trace. Which
HTTP and gRPC status each one is answered with is decided in one table, ``service.errors.REFUSALS``.
"""

from __future__ import annotations

from vigil.errors import VigilError


class RagError(VigilError):
    """A RAG failure a caller can act on."""


class InvalidQuestion(RagError, ValueError):
    """The question is empty or only whitespace."""


class QuestionTooLong(RagError, ValueError):
    """The question is longer than ``VIGIL_RAG_MAX_QUESTION_CHARS``."""


class InvalidTopK(RagError, ValueError):
    """``top_k`` lies outside 1..50."""


class StoreUnavailable(RagError):
    """Milvus cannot be opened or reached; only the RAG endpoints are affected."""


class GeneratorUnavailable(RagError):
    """The LLM provider refused, failed or answered something that is not a chat completion."""


class GeneratorTimeout(RagError):
    """The LLM provider did not answer within ``VIGIL_LLM_TIMEOUT_SECONDS``."""


class RagConfigError(RagError):
    """The RAG settings contradict each other (e.g. the openai generator without a base URL)."""


class RagServiceUnavailable(RagError):
    """The RAG service could not be reached, or failed without saying why (a crash, its own overload)."""


class ServiceIngestError(RagError):
    """The running Vigil service refused or failed an ingest the CLI sent it."""
