"""The extractive generator with the real MiniLM, and the OpenAI-compatible one against a local stand-in server."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from service.errors import refusal
from service.rag.errors import GeneratorTimeout, GeneratorUnavailable, RagConfigError
from service.rag.generators import NO_CONTEXT_ANSWER, ExtractiveGenerator, OpenAIGenerator
from service.rag.store import Hit
from tests.support.local_http import respond, serve_in_thread, stop_serving
from vigil.embedding import TextEmbedder


@pytest.fixture(scope="module")
def embedder() -> TextEmbedder:
    # Generators only count tokens with it: the weights are never loaded here.
    return TextEmbedder()


def hit(number: int, text: str, document_id: str | None = None) -> Hit:
    return Hit(id=f"chunk{number}", document_id=document_id or f"doc{number}", title=f"Title {number}",
               source="test", text=text, score=1.0 / number, similarity=0.5, embedding_model_version="test")


HITS = [
    hit(1, "The Rhine is a European river. It begins in the Swiss Alps. Its length is about 1,230 kilometres."),
    hit(2, "Super Bowl 50 was played at Levi's Stadium. The Denver Broncos won the game 24 to 10."),
    hit(3, "Photosynthesis turns light into chemical energy. Plants and algae perform it."),
]


# --- extractive -------------------------------------------------------------------------------------------------

def test_extractive_answers_with_the_sentence_sharing_the_question_words(embedder: TextEmbedder) -> None:
    question = "What was the final score when the Denver Broncos won the game?"
    generation = ExtractiveGenerator(embedder).generate(question, HITS)
    assert generation.answer == "The Denver Broncos won the game 24 to 10. [2]"
    assert generation.contexts_used == len(HITS)


def test_a_higher_ranked_chunk_wins_a_tie(embedder: TextEmbedder) -> None:
    hits = [hit(1, "The river is long."), hit(2, "The river is long and wide.")]
    assert ExtractiveGenerator(embedder).generate("How long is the river?", hits).answer.startswith(
        "The river is long. [1]")


def test_every_answer_sentence_carries_a_citation_mark(embedder: TextEmbedder) -> None:
    generation = ExtractiveGenerator(embedder, runner_up_ratio=0.0).generate("Where does the Rhine begin?", HITS)
    sentences = re.findall(r"(.+?) \[(\d+)\]", generation.answer)
    assert len(sentences) == 2
    for sentence, number in sentences:
        assert sentence.strip() in HITS[int(number) - 1].text
    # Both come from chunk 1, so they keep the order they have there.
    assert generation.answer == "The Rhine is a European river. [1] It begins in the Swiss Alps. [1]"


def test_extractive_usage_is_counted_with_the_encoder_tokenizer(embedder: TextEmbedder) -> None:
    question = "Which team won Super Bowl 50?"
    generation = ExtractiveGenerator(embedder).generate(question, HITS)
    expected_prompt = embedder.count_tokens(question) + sum(embedder.count_tokens(h.text) for h in HITS)
    assert generation.usage.prompt_tokens == expected_prompt
    assert generation.usage.completion_tokens == embedder.count_tokens(generation.answer) > 0
    assert generation.usage.total_tokens == expected_prompt + generation.usage.completion_tokens
    # The real tokenizer, not a word count: "Levi's" and "24" split into word pieces.
    assert embedder.count_tokens("Levi's Stadium") == 4


def test_extractive_without_retrieved_chunks_says_so(embedder: TextEmbedder) -> None:
    generation = ExtractiveGenerator(embedder).generate("Anything?", [])
    assert generation.answer == NO_CONTEXT_ANSWER
    assert generation.contexts_used == 0
    assert generation.usage.prompt_tokens == embedder.count_tokens("Anything?")


# --- OpenAI-compatible stand-in ---------------------------------------------------------------------------------

@dataclass
class StandIn:
    """A local HTTP server speaking the chat-completions wire format; each test sets how it answers."""

    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    respond: Callable[[dict[str, Any]], tuple[int, bytes]] = lambda _: (500, b"")
    delay: float = 0.0


def completion(content: str, usage: dict[str, int] | None = None, model: str = "stand-in-1") -> bytes:
    body: dict[str, Any] = {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
    }
    if usage is not None:
        body["usage"] = usage
    return json.dumps(body).encode()


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    state = StandIn(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length))
            state.requests.append({"path": self.path, **body})
            state.headers.append(dict(self.headers))
            if state.delay:
                time.sleep(state.delay)
            status, payload = state.respond(body)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                respond(self, status, payload)

        def log_message(self, *_: object) -> None:
            pass

    server = serve_in_thread(Handler, "openai-stand-in")
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield state
    stop_serving(server)


def openai(url: str, embedder: TextEmbedder, **options: Any) -> OpenAIGenerator:
    return OpenAIGenerator(url, "stand-in-model", api_key="sk-test", count_tokens=embedder.count_tokens,
                           **{"timeout": 5.0, **options})


def test_openai_success_takes_usage_from_the_provider(stand_in: StandIn, embedder: TextEmbedder) -> None:
    usage = {"prompt_tokens": 321, "completion_tokens": 9, "total_tokens": 330}
    stand_in.respond = lambda _: (200, completion("The Denver Broncos won [2].", usage))
    generator = openai(stand_in.url, embedder)
    generation = generator.generate("Which team won Super Bowl 50?", HITS)
    assert generation.answer == "The Denver Broncos won [2]."
    assert (generation.usage.prompt_tokens, generation.usage.completion_tokens, generation.usage.total_tokens) == (
        321, 9, 330)
    assert generation.response_model == "stand-in-1"
    assert generation.finish_reason == "stop"
    assert generation.contexts_used == 3

    [request] = stand_in.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["model"] == "stand-in-model"
    system, user = request["messages"]
    assert system["role"] == "system" and "only" in system["content"] and "[2]" in system["content"]
    assert "[1] Title 1\nThe Rhine is a European river." in user["content"]
    assert "[2] Title 2\nSuper Bowl 50" in user["content"]
    assert user["content"].rstrip().endswith("Answer (cite passages like [1]):")
    assert stand_in.headers[0]["Authorization"] == "Bearer sk-test"
    generator.close()


def test_openai_without_reported_usage_counts_tokens_itself(stand_in: StandIn, embedder: TextEmbedder) -> None:
    stand_in.respond = lambda _: (200, completion("Broncos [2]."))
    generation = openai(stand_in.url, embedder).generate("Who won?", HITS)
    assert generation.usage.completion_tokens == embedder.count_tokens("Broncos [2].")
    assert generation.usage.prompt_tokens > sum(embedder.count_tokens(h.text) for h in HITS)


def test_openai_context_budget_limits_the_passages_sent(stand_in: StandIn, embedder: TextEmbedder) -> None:
    stand_in.respond = lambda _: (200, completion("ok", {"prompt_tokens": 1, "completion_tokens": 1,
                                                         "total_tokens": 2}))
    long_hits = [hit(i, " ".join(["The river flows through many countries."] * 20)) for i in range(1, 6)]
    generator = openai(stand_in.url, embedder, context_tokens=400)
    generation = generator.generate("Where does it flow?", long_hits)
    assert 1 <= generation.contexts_used < 5
    user = stand_in.requests[0]["messages"][1]["content"]
    assert f"[{generation.contexts_used}]" in user and f"[{generation.contexts_used + 1}]" not in user


def test_openai_server_error_is_generator_unavailable(stand_in: StandIn, embedder: TextEmbedder) -> None:
    stand_in.respond = lambda _: (500, b'{"error": {"message": "model crashed"}}')
    with pytest.raises(GeneratorUnavailable, match=r"HTTP 500.*model crashed") as caught:
        openai(stand_in.url, embedder).generate("Who won?", HITS)
    assert refusal(caught.value) == (502, "GeneratorUnavailable")


def test_openai_non_completion_body_is_generator_unavailable(stand_in: StandIn, embedder: TextEmbedder) -> None:
    stand_in.respond = lambda _: (200, b'{"hello": "world"}')
    with pytest.raises(GeneratorUnavailable, match="not a chat completion"):
        openai(stand_in.url, embedder).generate("Who won?", HITS)


def test_openai_slow_answer_is_generator_timeout(stand_in: StandIn, embedder: TextEmbedder) -> None:
    stand_in.delay = 2.0
    stand_in.respond = lambda _: (200, completion("late"))
    with pytest.raises(GeneratorTimeout, match=r"did not answer within 0.3 s") as caught:
        openai(stand_in.url, embedder, timeout=0.3).generate("Who won?", HITS)
    assert refusal(caught.value) == (504, "GeneratorTimeout")


def test_openai_unreachable_endpoint_is_generator_unavailable(embedder: TextEmbedder) -> None:
    from tests.conftest import free_port

    with pytest.raises(GeneratorUnavailable, match="not reachable"):
        openai(f"http://127.0.0.1:{free_port()}/v1", embedder).generate("Who won?", HITS)


def test_openai_needs_a_base_url_and_a_model() -> None:
    with pytest.raises(RagConfigError, match="VIGIL_LLM_BASE_URL"):
        OpenAIGenerator("", "m")
    with pytest.raises(RagConfigError, match="VIGIL_LLM_MODEL"):
        OpenAIGenerator("http://127.0.0.1:1/v1", "")
