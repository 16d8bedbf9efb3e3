"""The span reader: its split by article, span finding and labels, SQuAD answer scores, the saved format, and the
reader generator's choice across chunks and its fall-back to the extractive generator."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evaluations.rag_metrics import answer_text
from service.rag.generators import ReaderGenerator, ServedReader
from service.rag.store import Hit
from training.reader import (
    Example,
    Feature,
    article_of,
    find_answer,
    in_split,
    length_batches,
    span_labels,
    split_of,
)
from vigil import model_digest
from vigil.model_digest import ArtifactMismatch
from vigil.reader_model import (
    READER_PATH,
    Span,
    SpanReader,
    UnreadableReader,
    best_span,
    exact_match,
    load_logged,
    token_f1,
)

SHIPPED_ARTICLES = ["Super_Bowl_50", "Warsaw", "Normans", "Nikola_Tesla", "Computational_complexity_theory",
                    "Teacher", "Martin_Luther", "Southern_California", "Sky_(United_Kingdom)", "Victoria_(Australia)",
                    "Huguenot", "Steam_engine", "Oxygen", "1973_oil_crisis", "Apollo_program", "European_Union_law",
                    "Amazon_rainforest", "Ctenophora", "Fresno,_California", "Packet_switching", "Black_Death",
                    "Geology", "Pharmacy", "Civil_disobedience", "Construction", "Private_school", "Harvard_University",
                    "Jacksonville,_Florida", "Economic_inequality", "Doctor_Who", "University_of_Chicago",
                    "Yuan_dynasty", "Kenya", "Intergovernmental_Panel_on_Climate_Change", "Chloroplast",
                    "Prime_number", "Rhine", "Scottish_Parliament", "Islamism", "Imperialism", "Warsaw_Pact",
                    "Immune_system", "Force", "Newcastle_upon_Tyne", "Victoria_and_Albert_Museum",
                    "American_Broadcasting_Company", "Genghis_Khan", "Pharmacy_(disambiguation)"]


# --- the split --------------------------------------------------------------------------------------------------

def test_a_passage_id_names_its_article() -> None:
    assert article_of("Super_Bowl_50_p000") == "Super_Bowl_50"
    assert article_of("Sky_(United_Kingdom)_p012") == "Sky_(United_Kingdom)"
    assert article_of("no-paragraph-suffix") == "no-paragraph-suffix"


def test_the_split_is_by_article_deterministic_and_holds_out_some() -> None:
    sides = {article: split_of(f"{article}_p000") for article in SHIPPED_ARTICLES}
    # Every paragraph of an article is on its article's side: no evaluation passage is seen in training.
    for article, side in sides.items():
        assert {split_of(f"{article}_p{n:03d}") for n in range(30)} == {side}
    assert sides == {article: split_of(f"{article}_p000") for article in SHIPPED_ARTICLES}  # same every call
    held_out = [a for a, side in sides.items() if side == "held-out"]
    assert 0 < len(held_out) < len(SHIPPED_ARTICLES) / 2


def test_a_question_belongs_to_the_split_of_all_its_passages() -> None:
    held = next(a for a in SHIPPED_ARTICLES if split_of(f"{a}_p000") == "held-out")
    trained = next(a for a in SHIPPED_ARTICLES if split_of(f"{a}_p000") == "train")
    assert in_split([f"{held}_p001"], "held-out") and not in_split([f"{held}_p001"], "train")
    assert not in_split([f"{held}_p001", f"{trained}_p001"], "held-out")
    assert not in_split([], "held-out")


# --- spans and labels -------------------------------------------------------------------------------------------

def test_the_first_findable_answer_gives_the_span() -> None:
    context = "The Denver Broncos beat the Carolina Panthers. The Broncos won."
    assert find_answer(context, ["Broncos", "Denver Broncos"]) == (11, 18)
    assert find_answer(context, ["Seahawks", "Carolina Panthers"]) == (28, 45)
    assert find_answer(context, ["Seahawks"]) is None


def test_labels_point_at_the_answer_tokens_or_at_cls_outside_the_window() -> None:
    # [CLS] question [SEP] "the" "denver" "broncos" "won" [SEP]: passage tokens with their characters.
    offsets: list[tuple[int, int] | None] = [None, None, None, (0, 3), (4, 10), (11, 18), (19, 22), None]
    assert span_labels(offsets, 4, 18) == (4, 5)
    assert span_labels(offsets, 19, 22) == (6, 6)
    assert span_labels(offsets, 30, 40) == (0, 0)  # not in this window


def test_the_best_span_stays_inside_the_passage_and_within_the_length_limit() -> None:
    offsets: list[tuple[int, int] | None] = [None, None, (0, 3), (4, 10), (11, 18), None]
    start = np.array([9.0, 0.0, 0.0, 5.0, 1.0, 9.0])  # [CLS] and [SEP] score high but are no passage tokens
    end = np.array([9.0, 0.0, 0.0, 0.0, 4.0, 9.0])
    assert best_span(start, end, offsets, max_tokens=30) == (3, 4, 9.0)
    first, last, _ = best_span(start, end, offsets, max_tokens=1) or (0, 0, 0.0)
    assert first == last


def test_length_batches_cover_every_feature_once_and_group_similar_lengths() -> None:
    import random

    features = [Feature([0] * n, [0] * n, 0, 0) for n in [5, 50, 6, 49, 7, 48, 8, 47]]
    batches = length_batches(features, 2, random.Random(1))
    assert sorted(i for batch in batches for i in batch) == list(range(8))
    assert all(abs(len(features[a].input_ids) - len(features[b].input_ids)) <= 2 for a, b in batches)


# --- SQuAD scores -----------------------------------------------------------------------------------------------

def test_exact_match_and_f1_follow_squad() -> None:
    assert exact_match("the Denver Broncos!", ["Denver Broncos"]) == 1.0
    assert exact_match("Denver", ["Denver Broncos"]) == 0.0
    assert token_f1("Denver", ["Denver Broncos"]) == pytest.approx(2 / 3)
    assert token_f1("Denver Broncos", ["Carolina", "Broncos"]) == pytest.approx(2 / 3)
    assert token_f1("anything", []) == 0.0


def test_citation_marks_are_no_part_of_the_judged_answer() -> None:
    assert answer_text("Denver Broncos [1]") == "Denver Broncos"
    assert exact_match(answer_text("Denver Broncos [1] [2]"), ["Denver Broncos"]) == 1.0


# --- saved format -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_reader() -> SpanReader:
    """The packaged MiniLM with a randomly initialised head: untrained, but the format is the real one."""
    import torch

    torch.manual_seed(0)
    return SpanReader.from_pretrained_encoder()


def test_a_saved_reader_loads_back_as_data_and_reads_the_same(tiny_reader: SpanReader, tmp_path: Path) -> None:
    folder = tiny_reader.save(tmp_path / "reader")
    assert not list(folder.glob("*.pt")) and not list(folder.glob("*.pkl")) and not list(folder.glob("*.bin"))
    loaded = SpanReader.load(folder)
    question, passages = "Who won?", ["The Denver Broncos won the game.", "Rain fell on Warsaw all day long."]
    ours, theirs = tiny_reader.read(question, passages), loaded.read(question, passages)
    assert [s.text for s in ours if s] == [s.text for s in theirs if s]
    assert all(s is not None and t is not None and s.score == pytest.approx(t.score, abs=1e-4)
               for s, t in zip(ours, theirs, strict=True))


def test_a_long_passage_is_read_in_windows_and_spans_map_back_to_it(tiny_reader: SpanReader) -> None:
    passage = " ".join(f"word{n}" for n in range(600))
    windows = tiny_reader.windows("Which word?", [passage])
    assert len(windows.passage_of) > 1 and set(windows.passage_of) == {0}
    span = tiny_reader.answer("Which word?", passage)
    assert span is not None and passage[span.start:span.end] == span.text


def test_passages_of_unlike_length_read_together_read_as_each_alone(tiny_reader: SpanReader) -> None:
    # Read together they run in separate calls, the short one without the long one's padding: same spans, same scores.
    long = " ".join(f"The game number {n} was played in Denver by the Broncos." for n in range(12))
    short = "Rain fell on Warsaw."
    together = tiny_reader.read("Who played?", [long, short, long[:80]])
    alone = [tiny_reader.answer("Who played?", passage) for passage in (long, short, long[:80])]
    for mixed, single in zip(together, alone, strict=True):
        assert mixed is not None and single is not None
        assert (mixed.text, mixed.start) == (single.text, single.start)
        assert mixed.score == pytest.approx(single.score, abs=1e-3)
        assert mixed.null_score == pytest.approx(single.null_score, abs=1e-3)


def test_a_logged_reader_is_checked_against_its_digest(tiny_reader: SpanReader, tmp_path: Path) -> None:
    folder = tiny_reader.save(tmp_path / READER_PATH)
    manifest = model_digest.manifest_of(folder)
    assert load_logged(tmp_path, manifest).integrity == f"verified ({manifest.digest})"
    (folder / "vigil_reader.json").write_text('{"max_seq_len": 64}')
    with pytest.raises(ArtifactMismatch, match=r"vigil_reader\.json changed"):
        load_logged(tmp_path, manifest)
    with pytest.raises(UnreadableReader, match="no digest"):
        load_logged(tmp_path, None)


# --- the generator ----------------------------------------------------------------------------------------------

class CountingEmbedder:
    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def count_tokens_many(self, texts: list[str]) -> list[int]:
        return [self.count_tokens(t) for t in texts]


@dataclass
class FixedReader:
    """Answers each passage with a fixed span and margin (None: no span)."""

    spans: list[tuple[str, float] | None]
    runtime: str = "onnx"

    def read(self, question: str, passages: list[str]) -> list[Span | None]:
        assert len(passages) == len(self.spans)
        return [Span(i, text, 0, len(text), margin, 0.0) if (found := self.spans[i]) and (text := found[0]) is not None
                and (margin := found[1]) is not None else None for i in range(len(passages))]


def hits(*texts: str) -> list[Hit]:
    return [Hit(id=f"c{i}", document_id=f"d{i}", title="t", text=text, score=1.0 / (i + 1), similarity=0.5,
                source="test", embedding_model_version="1")
            for i, text in enumerate(texts)]


def generator(reader: Any, min_margin: float = 0.0, whole_chunks: int = 50, sentences: int = 0,
              context_sentences: int = 0) -> ReaderGenerator:
    served = ServedReader(reader, "rag-reader v7") if reader is not None else None
    return ReaderGenerator(CountingEmbedder(), lambda: served, min_margin=min_margin,  # type: ignore[arg-type]
                           whole_chunks=whole_chunks, sentences=sentences, context_sentences=context_sentences,
                           waiting=lambda: "no rag-reader@champion registered")


@dataclass
class RecordingReader:
    """Finds ``answer`` wherever it occurs and records what it was given to read."""

    answer: str
    runtime: str = "onnx"
    read_passages: list[str] | None = None

    def read(self, question: str, passages: list[str]) -> list[Span | None]:
        self.read_passages = list(passages)
        return [Span(i, self.answer, p.index(self.answer), p.index(self.answer) + len(self.answer), 5.0, 0.0)
                if self.answer in p else None for i, p in enumerate(passages)]


def test_the_reader_reads_the_best_chunk_whole_and_the_best_matching_sentences_of_the_others() -> None:
    chunks = hits("Warsaw is the capital of Poland. It lies on the Vistula.",
                  "The game was played in February. The Denver Broncos won Super Bowl 50 against the Panthers. "
                  "Tickets were expensive.",
                  "Rain fell in Warsaw. Nobody won anything.")
    reader = RecordingReader("Denver Broncos")
    made = generator(reader, whole_chunks=1, sentences=1).generate("Who won Super Bowl 50?", chunks)
    # The first chunk whole, then the one sentence of the others that names the game; its chunk is the citation.
    assert reader.read_passages == [chunks[0].text, "The Denver Broncos won Super Bowl 50 against the Panthers."]
    assert made.answer == "Denver Broncos [2]"
    # The usage still counts the question and the whole chunks retrieved, as every generator's does.
    assert made.usage.prompt_tokens == 5 + sum(len(h.text.split()) for h in chunks)
    sentences_only = RecordingReader("Denver Broncos")
    assert generator(sentences_only, whole_chunks=0, sentences=2).generate(
        "Who won Super Bowl 50?", chunks).answer == "Denver Broncos [2]"
    assert sentences_only.read_passages is not None and len(sentences_only.read_passages) == 2
    assert sentences_only.read_passages[0] == "The Denver Broncos won Super Bowl 50 against the Panthers."
    whole = RecordingReader("Denver Broncos")
    assert generator(whole, whole_chunks=5).generate("Who won Super Bowl 50?", chunks).answer == "Denver Broncos [2]"
    assert whole.read_passages == [h.text for h in chunks]


def test_each_chosen_sentence_is_read_with_its_neighbours_and_touching_ones_once() -> None:
    chunks = hits("Super Bowl 50 was a game. The Denver Broncos won it. Tickets were dear. Fans sang.",
                  "Rain fell in Warsaw. The Vistula rose. Nobody sang.")
    reader = RecordingReader("Denver Broncos")
    made = generator(reader, whole_chunks=0, sentences=1, context_sentences=1).generate("Super Bowl 50?", chunks)
    # The chosen sentence opens its chunk, so it is read with the one after it: the one that answers.
    assert reader.read_passages == ["Super Bowl 50 was a game. The Denver Broncos won it."]
    assert made.answer == "Denver Broncos [1]"
    touching = RecordingReader("Denver Broncos")
    generator(touching, whole_chunks=0, sentences=2, context_sentences=1).generate("Who won Super Bowl 50?", chunks)
    # Both chosen sentences are in the first chunk and their neighbourhoods touch: one passage, no sentence twice.
    assert touching.read_passages == ["Super Bowl 50 was a game. The Denver Broncos won it. Tickets were dear."]
    assert "the 2 best-matching sentence(s) with 1 either side" in str(
        generator(touching, whole_chunks=0, sentences=2, context_sentences=1).describe()["reason"])

def test_the_span_with_the_largest_margin_answers_with_its_chunks_citation() -> None:
    chunks = hits("The Broncos played.", "The Denver Broncos won Super Bowl 50.", "Rain in Warsaw.")
    reader = FixedReader([("Broncos", 1.5), ("Denver Broncos", 6.0), ("Warsaw", -3.0)])
    made = generator(reader).generate("Who won Super Bowl 50?", chunks)
    assert made.answer == "Denver Broncos [2]"
    assert made.answered_by is not None and (made.answered_by.name, made.answered_by.model) == ("reader",
                                                                                                 "rag-reader v7")
    assert made.contexts_used == 3 and made.response_model == "rag-reader v7"
    question_and_chunks = 5 + sum(len(h.text.split()) for h in chunks)
    assert (made.usage.prompt_tokens, made.usage.completion_tokens) == (question_and_chunks, 3)


def test_without_a_reader_the_extractive_generator_answers_and_says_why() -> None:
    chunks = hits("The Denver Broncos won Super Bowl 50.", "Rain in Warsaw.")
    made = generator(None).generate("Who won Super Bowl 50?", chunks)
    assert made.answered_by is not None and made.answered_by.name == "extractive"
    assert made.answer.startswith("The Denver Broncos won Super Bowl 50.") and "[1]" in made.answer
    state = generator(None).describe()
    assert state["answering"] == "extractive" and "no rag-reader@champion registered" in str(state["reason"])


def test_a_span_below_the_margin_falls_back_to_the_extractive_generator() -> None:
    chunks = hits("The Denver Broncos won Super Bowl 50.")
    reading = generator(FixedReader([("Broncos", 0.5)]), min_margin=1.0)
    made = reading.generate("Who won Super Bowl 50?", chunks)
    assert made.answered_by is not None and made.answered_by.name == "extractive"
    assert reading.describe()["answers"] == {"below_margin": 1}
    assert generator(FixedReader([("Broncos", 1.5)]), min_margin=1.0).generate(
        "Who won?", chunks).answer == "Broncos [1]"


def test_training_examples_keep_their_answer_inside_their_passage() -> None:
    context = "Super Bowl 50 was won by the Denver Broncos."
    start, end = find_answer(context, ["Denver Broncos"]) or (0, 0)
    example = Example("q1", "Who won?", ("Denver Broncos",), "Super_Bowl_50_p000", context, start, end)
    assert example.context[example.answer_start:example.answer_end] == "Denver Broncos"


# --- following the alias ----------------------------------------------------------------------------------------

class ReaderRegistry:
    """Where rag-reader@champion points; None: the alias names no version."""

    def __init__(self) -> None:
        self.version: str | None = None

    def resolve(self, client: object, reference: Any) -> Any:
        from vigil import registry

        if self.version is None:
            raise registry.ModelNotFound(f"{reference.name}@{reference.alias} not found")
        return registry.RegisteredVersion(reference.name, self.version, reference.alias, f"run-{self.version}")


def test_the_reader_holder_serves_the_alias_and_drops_it_when_the_alias_goes(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from service import model_store
    from service.model_store import ReaderHolder
    from vigil import model_cache, registry

    stand_in = ReaderRegistry()
    monkeypatch.setattr(registry, "connect", lambda *args, **kwargs: object())
    monkeypatch.setattr(registry, "resolve", stand_in.resolve)

    def download(client: object, name: str, version: str, cache_dir: Path | None = None) -> Path:
        folder = model_cache.model_dir(name, cache_dir) / version
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    loaded: list[tuple[Path, object]] = []

    def load(folder: Path, expected: object) -> object:
        loaded.append((folder, expected))
        return object()

    monkeypatch.setattr(model_cache, "download_version", download)
    monkeypatch.setattr(model_store, "load_reader", load)
    recorded = model_digest.Manifest(files={"vigil_reader.json": "0" * 64})
    monkeypatch.setattr(model_digest, "recorded", lambda client, name, version: recorded)
    holder = ReaderHolder("rag-reader", "champion", tmp_path, poll_seconds=3600)

    holder.start()  # nothing registered: nothing served, and the reason says so
    holder.stop()
    assert holder.current is None and "no rag-reader@champion to serve" in holder.status.reason
    stand_in.version = "1"
    assert holder.poll_once() is True and holder.current is not None and holder.current.version == "1"
    assert loaded[-1][1] == recorded  # checked against the registry's digest record
    model_cache.remember("rag-reader", "1", "champion", "run-1", tmp_path)
    stand_in.version = None  # the alias moved away: no reader, and no cached copy brought back
    assert holder.poll_once() is False and holder.current is None
    holder.start()
    assert holder.current is None and len(loaded) == 1
