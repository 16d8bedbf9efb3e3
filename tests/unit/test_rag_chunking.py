"""Chunking on sentence boundaries, sized in real MiniLM tokens, with content-derived ids; no servers. The same chunks
as before issue 15 on ordinary text, and the chunk invariants on the texts that made it quadratic."""

from __future__ import annotations

import bisect
import itertools

import pytest

from service.rag.chunking import MAX_CONTENT_TOKENS, chunk_document, chunk_id, sentence_spans, split_sentences
from tests.conftest import REPO_ROOT
from tests.support import chunking_before_issue15 as before
from tests.support.chunking_inputs import ADVERSARIAL, dots
from vigil.contracts import Document
from vigil.embedding import TextEmbedder


@pytest.fixture(scope="module")
def tokenizer() -> TextEmbedder:
    # Only the tokenizer is read by chunking; the weights are never loaded here.
    return TextEmbedder()


def numbered_sentences(count: int) -> str:
    return " ".join(f"Sentence number {i} talks about the river Rhine and its {i} bridges." for i in range(count))


def test_sentences_split_on_terminal_punctuation_but_not_on_abbreviations() -> None:
    text = ("The U.S. Army landed in 1944. Dr. Smith said so! Did it rain? "
            "It did.\n\nA new paragraph starts here")
    assert split_sentences(text) == [
        "The U.S. Army landed in 1944.",
        "Dr. Smith said so!",
        "Did it rain?",
        "It did.",
        "A new paragraph starts here",
    ]


def test_sentence_followed_by_lower_case_is_not_split() -> None:
    assert split_sentences("He paid 3.5 million e.g. for art. then left.") == [
        "He paid 3.5 million e.g. for art. then left."
    ]


def test_chunks_respect_the_token_budget_and_end_on_sentences(tokenizer: TextEmbedder) -> None:
    document = Document(id="rhine", title="Rhine", text=numbered_sentences(30), source="rhine.txt")
    chunks = chunk_document(document, tokenizer, chunk_tokens=64, overlap_tokens=0)
    assert len(chunks) > 3
    for chunk in chunks:
        assert tokenizer.count_tokens(chunk.text) <= 64
        assert chunk.text.endswith("bridges.")
        assert chunk.text in document.text  # a verbatim slice of the document
        assert (chunk.document_id, chunk.title, chunk.source) == ("rhine", "Rhine", "rhine.txt")
    # Without overlap the chunks cover the text exactly once.
    assert " ".join(c.text for c in chunks) == document.text
    assert [c.index for c in chunks] == list(range(len(chunks)))


def test_neighbouring_chunks_share_whole_sentences_up_to_the_overlap(tokenizer: TextEmbedder) -> None:
    document = Document(id="rhine", text=numbered_sentences(30))
    chunks = chunk_document(document, tokenizer, chunk_tokens=64, overlap_tokens=20)
    sentence_tokens = tokenizer.count_tokens(split_sentences(document.text)[0])
    assert sentence_tokens <= 20  # one sentence fits in the overlap
    for previous, following in itertools.pairwise(chunks):
        last_sentence = split_sentences(previous.text)[-1]
        assert following.text.startswith(last_sentence)
        assert tokenizer.count_tokens(following.text) <= 64


def test_a_sentence_longer_than_a_chunk_is_cut_between_words(tokenizer: TextEmbedder) -> None:
    words = " ".join(f"word{i}" for i in range(400))
    document = Document(id="long", text=f"Short start. {words}. Short end.")
    chunks = chunk_document(document, tokenizer, chunk_tokens=50, overlap_tokens=10)
    assert len(chunks) > 5
    for chunk in chunks:
        assert tokenizer.count_tokens(chunk.text) <= 50
        assert not chunk.text.startswith(("#", " ")) and chunk.text == chunk.text.strip()
    pieces = [c.text for c in chunks if c.text.startswith("word")]
    assert all(p.split()[0].startswith("word") and p.split()[0][4:].isdigit() for p in pieces)


def test_chunk_size_never_exceeds_the_encoder_window(tokenizer: TextEmbedder) -> None:
    document = Document(id="big", text=numbered_sentences(80))
    for chunk in chunk_document(document, tokenizer, chunk_tokens=256, overlap_tokens=0):
        assert tokenizer.count_tokens(chunk.text) <= MAX_CONTENT_TOKENS


def test_ids_come_from_document_id_and_content(tokenizer: TextEmbedder) -> None:
    text = numbered_sentences(20)
    first = chunk_document(Document(id="a", text=text), tokenizer, 64, 16)
    again = chunk_document(Document(id="a", text=text, title="another title"), tokenizer, 64, 16)
    other_doc = chunk_document(Document(id="b", text=text), tokenizer, 64, 16)
    assert [c.id for c in first] == [c.id for c in again]
    assert not {c.id for c in first} & {c.id for c in other_doc}
    assert first[0].id == chunk_id("a", first[0].text)
    assert len({c.id for c in first}) == len(first)

    edited = text.replace("Sentence number 19", "Sentence number nineteen")
    changed = chunk_document(Document(id="a", text=edited), tokenizer, 64, 16)
    assert [c.id for c in changed][:-1] == [c.id for c in first][:-1]
    assert changed[-1].id != first[-1].id


def test_repeated_passages_in_one_document_yield_one_chunk(tokenizer: TextEmbedder) -> None:
    paragraph = "The same paragraph again. It repeats word for word."
    document = Document(id="dup", text=f"{paragraph}\n\n{paragraph}\n\n{paragraph}")
    chunks = chunk_document(document, tokenizer, chunk_tokens=tokenizer.count_tokens(paragraph), overlap_tokens=0)
    assert [c.text for c in chunks] == [paragraph]


def corpus() -> list[Document]:
    """The shipped RAG corpus: 2 067 ordinary paragraphs of English prose (SQuAD)."""
    lines = (REPO_ROOT / "data" / "rag" / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    return [Document.model_validate_json(line) for line in lines]


def test_sentences_are_those_of_the_splitting_before_issue_15_on_every_corpus_paragraph() -> None:
    documents = corpus()
    assert len(documents) > 2000
    for document in documents:
        assert sentence_spans(document.text) == before.sentence_spans(document.text), document.id


@pytest.mark.parametrize(("chunk_tokens", "overlap_tokens"), [(200, 40), (64, 16), (50, 0)])
def test_chunks_are_those_of_the_chunking_before_issue_15_on_ordinary_documents(
        tokenizer: TextEmbedder, chunk_tokens: int, overlap_tokens: int) -> None:
    words = " ".join(f"word{i}" for i in range(400))
    documents = [
        *corpus()[::25],
        Document(id="rhine", text=numbered_sentences(80)),
        Document(id="long", text=f"Short start. {words}. Short end."),
        Document(id="styles", text=("The U.S. Army landed in 1944. Dr. Smith said so! Did it rain? \"Yes.\" "
                                    "It did… Then J. R. R. Tolkien wrote (a lot). e.g. this stays.\n\nNew part")),
    ]
    for document in documents:
        chunks = chunk_document(document, tokenizer, chunk_tokens, overlap_tokens)
        assert chunks == before.chunk_document(document, tokenizer, chunk_tokens, overlap_tokens), document.id


def test_adversarial_texts_chunk_as_before_at_small_sizes(tokenizer: TextEmbedder) -> None:
    # Small enough for the quadratic reference: the rewrite changed the time, not the chunks.
    for name, make in ADVERSARIAL.items():
        document = Document(id=name, text=make(4096))
        assert chunk_document(document, tokenizer, 64, 16) == before.chunk_document(document, tokenizer, 64, 16)


def test_a_megabyte_of_dots_is_cut_into_full_chunks(tokenizer: TextEmbedder) -> None:
    # The splitting before issue 15 needed over a minute for 64 KiB of dots, hours for this: the unit-test timeout
    # (tests/conftest.py) fails a return of the quadratic regex without this test timing anything.
    size = 1 << 20
    chunks = chunk_document(Document(id="dots", text=dots(size)), tokenizer, 200, 40)
    # Every dot is a token and no gap falls between them: pieces of exactly 200, all equal but the last, so the
    # repeats collapse to one chunk.
    assert [(c.text, c.tokens) for c in chunks] == [("." * 200, 200), ("." * (size % 200), size % 200)]


@pytest.mark.parametrize("name", ["long sentence", "short sentences", "mix"])
@pytest.mark.parametrize(("chunk_tokens", "overlap_tokens"), [(200, 40), (64, 16)])
def test_adversarial_texts_keep_the_chunk_invariants(tokenizer: TextEmbedder, name: str, chunk_tokens: int,
                                                     overlap_tokens: int) -> None:
    text = ADVERSARIAL[name](1 << 18)
    chunks = chunk_document(Document(id=name, text=text), tokenizer, chunk_tokens, overlap_tokens)
    spans = tokenizer.token_spans(text)
    starts, ends = [start for start, _ in spans], [end for _, end in spans]

    def tokens_within(begin: int, end: int) -> int:  # the document's tokens inside text[begin:end]
        return bisect.bisect_right(ends, end) - bisect.bisect_left(starts, begin)

    assert len(chunks) > 100
    assert [c.index for c in chunks] == list(range(len(chunks)))
    previous_start, previous_end, overlapped = -1, 0, 0
    for chunk in chunks:
        assert chunk.tokens <= chunk_tokens
        assert tokenizer.count_tokens(chunk.text) == chunk.tokens
        start = text.find(chunk.text, previous_start + 1)
        assert start > previous_start, "a chunk is a verbatim slice, after the start of the one before"
        end = start + len(chunk.text)
        assert tokens_within(start, end) == chunk.tokens
        if start < previous_end:
            assert tokens_within(start, previous_end) <= overlap_tokens
            overlapped += 1
        else:  # nothing but whitespace left out between neighbours
            assert not text[previous_end:start].strip()
        previous_start, previous_end = start, max(previous_end, end)
    assert not text[previous_end:].strip()
    if name == "short sentences":  # sentences of a few tokens: every neighbour shares some
        assert overlapped == len(chunks) - 1
    if name == "long sentence":  # pieces of one sentence are longer than the overlap: none is repeated
        assert overlapped == 0
