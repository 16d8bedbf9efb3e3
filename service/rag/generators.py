"""Answer generators: the span reader, the offline extractive generator and any OpenAI-compatible endpoint.

All number the retrieved chunks 1..n and mark each claim with ``[n]``; the pipeline returns those chunks as
citations in the same order, so a mark is an index into ``citations``.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel, ValidationError

from service.rag.chunking import split_sentences
from service.rag.errors import GeneratorTimeout, GeneratorUnavailable, RagConfigError
from service.rag.store import STOP_WORDS, Hit
from vigil.contracts import GeneratorInfo, Usage
from vigil.credentials import mask_url

if TYPE_CHECKING:
    import httpx

    from vigil.embedding import TextEmbedder
    from vigil.reader_model import SpanReader
    from vigil.settings import Settings

logger = logging.getLogger(__name__)

NO_CONTEXT_ANSWER = "No indexed document answers this question."


@dataclass(frozen=True)
class Generation:
    answer: str
    usage: Usage
    contexts_used: int  # the first n retrieved chunks the generator read; they become the citations
    response_model: str
    finish_reason: str | None = None
    # Who answered, when it is not the configured generator itself (the reader's extractive fall-back).
    answered_by: GeneratorInfo | None = None


class Generator(Protocol):
    name: str  # the setting value: reader | extractive | openai
    system: str  # gen_ai.system
    operation: str  # gen_ai.operation.name

    @property
    def model(self) -> str:  # the model asked for (gen_ai.request.model)
        ...

    def generate(self, question: str, hits: Sequence[Hit]) -> Generation: ...


# --- extractive -------------------------------------------------------------------------------------------------

_WORD = re.compile(r"\w+", re.UNICODE)
_STOP = frozenset(STOP_WORDS)


def content_words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


@dataclass(frozen=True)
class _Candidate:
    context: int  # 1-based number of the chunk it comes from
    position: int  # sentence index inside the chunk
    text: str
    score: float


def _chunk_sentences(hits: Sequence[Hit]) -> list[list[str]]:
    return [split_sentences(hit.text) for hit in hits]


class ExtractiveGenerator:
    """Answers with the retrieved sentences that best match the question, each cited; no model at all.

    A sentence scores the share of the question's words it contains, each word weighted by how few candidate
    sentences contain it (SQuAD-style questions reuse the words of the sentence that answers them), plus a bonus
    that halves with each step down the retrieval ranking. The best sentence is the answer; the runner-up joins
    it when it scores nearly as well.

    Measured on 1 500 shipped questions: the gold answer is contained in 0.775 of the answers (~43 words each).
    Blending in MiniLM similarity of every candidate sentence added ~0.05 but costs ~25 encoder passes per
    query (hundreds of ms on 2 cores), so the latency budget rules it out.
    """

    name = "extractive"
    model = "extractive"
    system = "vigil.extractive"
    operation = "text_completion"

    def __init__(self, embedder: TextEmbedder, *, max_sentences: int = 2, runner_up_ratio: float = 0.8,
                 rank_bonus: float = 0.2) -> None:
        self._embedder = embedder  # its tokenizer counts the usage
        self.max_sentences = max_sentences
        self.runner_up_ratio = runner_up_ratio
        self.rank_bonus = rank_bonus

    def generate(self, question: str, hits: Sequence[Hit]) -> Generation:
        question_tokens = self._embedder.count_tokens(question)
        candidates = self._score(question, _chunk_sentences(hits))
        if not candidates:
            return Generation(NO_CONTEXT_ANSWER, Usage.of(question_tokens, self._embedder.count_tokens(
                NO_CONTEXT_ANSWER)), 0, self.model, "stop")
        chosen = self._choose(candidates)
        if len({c.context for c in chosen}) == 1:
            chosen.sort(key=lambda c: c.position)  # two sentences of one chunk read best in the source's order
        answer = " ".join(f"{c.text} [{c.context}]" for c in chosen)
        prompt_tokens = question_tokens + sum(self._embedder.count_tokens_many([h.text for h in hits]))
        return Generation(answer, Usage.of(prompt_tokens, self._embedder.count_tokens(answer)), len(hits),
                          self.model, "stop")

    def rank_sentences(self, question: str, hits: Sequence[Hit]) -> tuple[list[_Candidate], list[list[str]]]:
        """Every sentence of the retrieved chunks, best match to the question first (what the reader reads), and
        each chunk's sentences (the neighbours read with a chosen one)."""
        chunks = _chunk_sentences(hits)
        return sorted(self._score(question, chunks), key=lambda c: c.score, reverse=True), chunks

    def _score(self, question: str, chunks: list[list[str]]) -> list[_Candidate]:
        sentences = [(number, position, sentence)
                     for number, chunk in enumerate(chunks, start=1)
                     for position, sentence in enumerate(chunk)]
        words = [set(content_words(s)) for _, _, s in sentences]
        asked = set(content_words(question))
        frequency = Counter(w for ws in words for w in ws if w in asked)
        # Words found in few candidate sentences discriminate; words found in all of them say nothing.
        weight = {w: math.log(1 + len(sentences) / (1 + frequency[w])) for w in asked}
        total = sum(weight.values()) or 1.0
        return [
            _Candidate(number, position, sentence,
                       sum(weight[w] for w in ws & asked) / total + self.rank_bonus / number)
            for (number, position, sentence), ws in zip(sentences, words, strict=True)
        ]

    def _choose(self, candidates: list[_Candidate]) -> list[_Candidate]:
        ranked = sorted(candidates, key=lambda c: c.score, reverse=True)
        best = ranked[0]
        return [best, *(c for c in ranked[1:self.max_sentences] if c.score >= self.runner_up_ratio * best.score)]


# --- OpenAI-compatible ------------------------------------------------------------------------------------------

SYSTEM_PROMPT = (
    "You answer questions using only the numbered context passages you are given. "
    "Cite every statement with the number of the passage it comes from, in square brackets, like [2]. "
    "If the passages do not contain the answer, say that you cannot answer from the provided documents. "
    "Do not use any other knowledge."
)


class _Message(BaseModel):
    content: str | None = None


class _Choice(BaseModel):
    message: _Message
    finish_reason: str | None = None


class _Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int | None = None


class _ChatCompletion(BaseModel):
    model: str | None = None
    choices: list[_Choice]
    usage: _Usage | None = None


class OpenAIGenerator:
    """Any endpoint speaking the OpenAI chat-completions wire format: vLLM, Ollama, OpenAI, LiteLLM …"""

    name = "openai"
    system = "openai"
    operation = "chat"

    def __init__(self, base_url: str, model: str, *, api_key: str = "", timeout: float = 30.0,
                 context_tokens: int = 3000, count_tokens: Callable[[str], int] | None = None) -> None:
        if not base_url:
            raise RagConfigError("VIGIL_GENERATOR=openai needs VIGIL_LLM_BASE_URL (e.g. http://localhost:8000/v1).")
        if not model:
            raise RagConfigError("VIGIL_GENERATOR=openai needs VIGIL_LLM_MODEL, the model name the endpoint serves.")
        self.base_url = base_url.rstrip("/")
        self._shown_url = mask_url(self.base_url)  # what error messages name: no credentials in the URL
        self.model = model
        self._api_key = api_key
        self.timeout = timeout
        self.context_tokens = context_tokens
        # The provider's tokenizer is unknown here; the encoder's one budgets the context close enough.
        self._count = count_tokens or (lambda text: len(text.split()))
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    def _http(self) -> httpx.Client:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    import httpx

                    headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
                    self._client = httpx.Client(base_url=self.base_url, headers=headers,
                                                timeout=httpx.Timeout(self.timeout))
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def messages(self, question: str, hits: Sequence[Hit]) -> tuple[list[dict[str, str]], int]:
        """The chat messages and how many chunks fit in the context budget."""
        budget = self.context_tokens - self._count(SYSTEM_PROMPT) - self._count(question) - 16
        blocks: list[str] = []
        for number, hit in enumerate(hits, start=1):
            block = f"[{number}] {hit.title}\n{hit.text}" if hit.title else f"[{number}] {hit.text}"
            cost = self._count(block)
            if blocks and cost > budget:
                break
            blocks.append(block)
            budget -= cost
        context = "\n\n".join(blocks) if blocks else "(no passages were found)"
        user = f"Context passages:\n\n{context}\n\nQuestion: {question}\nAnswer (cite passages like [1]):"
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}], len(blocks)

    def generate(self, question: str, hits: Sequence[Hit]) -> Generation:
        import httpx

        messages, used = self.messages(question, hits)
        body = {"model": self.model, "messages": messages, "temperature": 0.0, "stream": False}
        try:
            response = self._http().post("/chat/completions", json=body)
        except httpx.TimeoutException:
            raise GeneratorTimeout(f"the LLM at {self._shown_url} did not answer within {self.timeout:g} s "
                                   "(VIGIL_LLM_TIMEOUT_SECONDS)") from None
        except httpx.HTTPError as exc:
            raise GeneratorUnavailable(f"the LLM at {self._shown_url} is not reachable "
                                       f"({type(exc).__name__}: {exc})") from None
        if response.status_code != 200:
            detail = " ".join(response.text.split())[:300]
            raise GeneratorUnavailable(f"the LLM at {self._shown_url} answered HTTP {response.status_code}"
                                       + (f": {detail}" if detail else ""))
        try:
            completion = _ChatCompletion.model_validate_json(response.content)
        except ValidationError:
            raise GeneratorUnavailable(f"the LLM at {self._shown_url} answered something that is not a chat "
                                       "completion") from None
        if not completion.choices:
            raise GeneratorUnavailable(f"the LLM at {self._shown_url} returned no choices")
        choice = completion.choices[0]
        answer = (choice.message.content or "").strip()
        if completion.usage is not None:
            usage = Usage.of(completion.usage.prompt_tokens, completion.usage.completion_tokens)
        else:
            logger.debug("the LLM reported no usage; counting with the encoder's tokenizer")
            usage = Usage.of(sum(self._count(m["content"]) for m in messages), self._count(answer))
        return Generation(answer, usage, used, completion.model or self.model, choice.finish_reason)


# --- span reader -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServedReader:
    reader: SpanReader
    label: str  # "rag-reader v3": the registered version, as answers and traces name it


class ReaderGenerator:
    """Answers with the span the reader finds best in the retrieved chunks, cited like the extractive answer.

    The reader costs time in proportion to the tokens it reads (~0.15 ms a token on 2 cores), so it does not read every
    retrieved chunk whole: it reads the ``sentences`` sentence(s) of the chunks that the extractive generator's word
    match ranks highest, each with ``context_sentences`` sentences either side of it in its chunk (the sentence that
    answers "Who won Super Bowl 50?" shares few of its words, and often follows the one that does), for a tenth of the
    tokens and as good answers (bench/RESULTS.md, issue 18). The first ``whole_chunks`` chunks are read whole instead
    (a long one in strided windows); the sentences come from the others. Everything read goes through the reader at
    once (windows of like length in one call); each passage proposes its best span with its margin over "no answer",
    and the span with the largest margin answers, marked with its chunk's number. While no reader is served (none
    registered yet, or the alias moved away), or when the best margin is below ``min_margin``, the extractive generator
    answers instead, and the answer's generator says so.
    """

    name = "reader"
    system = "vigil.reader"
    operation = "text_completion"

    def __init__(self, embedder: TextEmbedder, source: Callable[[], ServedReader | None], *,
                 fallback: ExtractiveGenerator | None = None, min_margin: float = 0.0, whole_chunks: int = 0,
                 sentences: int = 1, context_sentences: int = 1,
                 waiting: Callable[[], str] = lambda: "no reader loaded") -> None:
        self._embedder = embedder  # its tokenizer counts the usage, as for the other generators
        self._source = source
        self.fallback = fallback or ExtractiveGenerator(embedder)
        self.min_margin = min_margin
        self.whole_chunks = whole_chunks
        self.sentences = sentences
        self.context_sentences = context_sentences
        self._waiting = waiting  # why no reader is served (the holder's reason)
        self._lock = threading.Lock()
        self.answers = Counter[str]()  # reader | below_margin | no_reader

    @property
    def model(self) -> str:
        served = self._source()
        return served.label if served is not None else self.fallback.model

    def generate(self, question: str, hits: Sequence[Hit]) -> Generation:
        served = self._source()
        if served is None or not hits:
            return self._fall_back("no_reader", question, hits)
        passages, chunk_numbers = self._passages(question, hits)
        spans = served.reader.read(question, passages)
        best = max((span for span in spans if span is not None and span.text.strip()),
                   key=lambda span: span.margin, default=None)
        if best is None or best.margin < self.min_margin:
            return self._fall_back("below_margin", question, hits)
        self._count("reader")
        answer = f"{best.text.strip()} [{chunk_numbers[best.context]}]"
        prompt_tokens = self._embedder.count_tokens(question) + sum(
            self._embedder.count_tokens_many([hit.text for hit in hits]))
        return Generation(answer, Usage.of(prompt_tokens, self._embedder.count_tokens(answer)), len(hits),
                          served.label, "stop", answered_by=GeneratorInfo(name=self.name, model=served.label))

    def _passages(self, question: str, hits: Sequence[Hit]) -> tuple[list[str], list[int]]:
        """What the reader reads, and the 1-based chunk number of each (its citation)."""
        whole = list(hits[:self.whole_chunks])
        passages, numbers = [hit.text for hit in whole], list(range(1, len(whole) + 1))
        rest = hits[len(whole):]
        if not rest or self.sentences <= 0:
            return passages, numbers
        # Each chosen sentence with its neighbours, as a range of its chunk's sentences; ranges of one chunk that
        # touch are read as one passage, so no sentence is read twice.
        ranges: list[list[int]] = []  # [chunk number within rest, first sentence, last sentence], best first
        ranked, chunks = self.fallback.rank_sentences(question, rest)
        for chosen in ranked[:self.sentences]:
            first = max(0, chosen.position - self.context_sentences)
            last = min(len(chunks[chosen.context - 1]) - 1, chosen.position + self.context_sentences)
            touching = next((r for r in ranges if r[0] == chosen.context and first <= r[2] + 1 and r[1] <= last + 1),
                            None)
            if touching is None:
                ranges.append([chosen.context, first, last])
            else:
                touching[1], touching[2] = min(touching[1], first), max(touching[2], last)
        for number, first, last in ranges:
            passages.append(" ".join(chunks[number - 1][first:last + 1]))
            numbers.append(len(whole) + number)  # numbered within the rest: shifted back
        return passages, numbers

    def _fall_back(self, why: str, question: str, hits: Sequence[Hit]) -> Generation:
        self._count(why)
        generation = self.fallback.generate(question, hits)
        return replace(generation, answered_by=GeneratorInfo(name=self.fallback.name, model=self.fallback.model))

    def _count(self, outcome: str) -> None:
        with self._lock:
            self.answers[outcome] += 1

    def describe(self) -> dict[str, object]:
        """Which generator answers now and why, and how the answers so far were made."""
        served = self._source()
        if served is not None:
            read = f"the {self.sentences} best-matching sentence(s) with {self.context_sentences} either side"
            if self.whole_chunks:
                read = f"the first {self.whole_chunks} chunk(s) whole and, of the others, {read}"
            answering, reason = "reader", f"{served.label} ({served.reader.runtime}) reading {read}; the " \
                f"extractive generator answers when the best span's margin is below {self.min_margin:g}"
        else:
            answering, reason = "extractive", f"the reader is not served: {self._waiting()}"
        with self._lock:
            answers = dict(self.answers)
        return {"configured": self.name, "answering": answering, "reader": served.label if served else None,
                "reason": reason, "min_margin": self.min_margin, "answers": answers}


def build_generator(settings: Settings, embedder: TextEmbedder,
                    reader: Callable[[], ServedReader | None] | None = None,
                    waiting: Callable[[], str] | None = None) -> Generator:
    """The generator ``VIGIL_GENERATOR`` names; ``reader`` gives the served span reader (``reader`` only)."""
    if settings.generator == "reader":
        return ReaderGenerator(embedder, reader or (lambda: None), min_margin=settings.rag_reader_min_margin,
                               whole_chunks=settings.rag_reader_whole_chunks,
                               sentences=settings.rag_reader_sentences,
                               context_sentences=settings.rag_reader_context_sentences,
                               waiting=waiting or (lambda: "no reader source"))
    if settings.generator == "openai":
        return OpenAIGenerator(settings.llm_base_url, settings.llm_model,
                               api_key=settings.llm_api_key.get_secret_value(), timeout=settings.llm_timeout_seconds,
                               context_tokens=settings.llm_context_tokens, count_tokens=embedder.count_tokens)
    return ExtractiveGenerator(embedder)
