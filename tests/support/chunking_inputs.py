"""Texts that made the sentence splitting of `service/rag/chunking.py` quadratic (issue 15), of any length.

Shared by the chunking tests (which check the chunks' invariants on them) and `bench/chunking.py` (which times the
chunking before and after). Every text is exactly ``size`` characters. Apart from ``dots``, each sentence carries a
running number, so no two chunks are equal and none is dropped as a repeat: between neighbouring chunks the
tests find nothing but whitespace left out.
"""

from __future__ import annotations

import random
from collections.abc import Callable


def dots(size: int) -> str:
    """Dots without a space: one run of punctuation that no whitespace ever follows."""
    return "." * size


def long_sentence(size: int) -> str:
    """One sentence with no boundary: a period before every clause, each followed by lower case."""
    return _repeat(lambda i: f"and so on {i}. ", size)


def short_sentences(size: int) -> str:
    """Many short sentences, each one a real boundary."""
    return _repeat(lambda i: f"It is {i}. ", size)


def mix(size: int, seed: int = 15) -> str:
    """The cases above with abbreviations, initials, quotes, ellipses, blank lines and very long words, drawn at
    random (seeded). Its runs of dots stay under 32, half the smallest chunk the tests cut: a piece of a long
    sentence holds at least half a chunk, so none is dots alone, which would repeat and be dropped."""
    rng = random.Random(seed)
    pieces: list[Callable[[int], str]] = [
        lambda i: f"The river Rhine has {i} bridges.",
        lambda i: f"Dr. Smith met Mr. Jones of the U.S. Army in {i}.",
        lambda i: f"J. R. R. Tolkien wrote {i} pages.",
        lambda i: f"Wait… what about item {i}?!",
        lambda i: f'"Stop {i}." She left {i}.',
        lambda i: f"see e.g. note {i}. and so on",
        lambda i: "." * rng.randint(1, 31) + f"x{i}",  # dots glued to a word
        lambda i: "." * rng.randint(1, 31) + f" {i}",  # dots, then a space and a digit: a candidate boundary
        lambda i: "y" * rng.randint(100, 2000) + str(i),  # a word longer than the tokenizer reads (one [UNK])
        lambda i: f"\n\n{i}",
    ]
    separators = (" ", " ", " ", "\n", "", "  \n \n ")
    return _repeat(lambda i: rng.choice(pieces)(i) + rng.choice(separators), size)


ADVERSARIAL: dict[str, Callable[[int], str]] = {
    "dots": dots,
    "long sentence": long_sentence,
    "short sentences": short_sentences,
    "mix": mix,
}


def _repeat(piece: Callable[[int], str], size: int) -> str:
    parts: list[str] = []
    length = 0
    i = 0
    while length < size:
        parts.append(piece(i))
        length += len(parts[-1])
        i += 1
    return "".join(parts)[:size]
