"""Split documents into chunks on sentence boundaries, sized in encoder tokens.

A chunk is a verbatim slice of its document, so a citation can be found in the source. Its id hashes the
document id with the chunk text: re-ingesting an unchanged document yields the same ids, and a changed one
yields new ids for the changed chunks only.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from vigil.contracts import Document

# The encoder's window (256) minus [CLS] and [SEP]: a chunk never loses tokens to truncation.
MAX_CONTENT_TOKENS = 254

# Candidate sentence ends: terminal punctuation, optional closing quotes/brackets, then whitespace; or a blank line.
# A match only starts where a run of punctuation starts: without the lookbehind, a run of n dots not followed by
# whitespace was tried again from each of its dots, n²/2 steps (issue 15). No match can start inside such a run
# anyway (from there, the same run ends at the same place), so the lookbehind changes no match, only the time.
_SENTENCE_END = re.compile(r"(?<![.!?…])[.!?…]+[\"'”’)\]]*(?=\s)|\n\s*\n")
_NON_SPACE = re.compile(r"\S")
_INITIALS = re.compile(r"(\w\.)+\w")
_ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "etc", "e.g", "i.e", "no", "fig", "inc", "ltd", "co",
    "corp", "gen", "col", "lt", "sgt", "rev", "mt", "ft", "approx", "dept", "est", "jan", "feb", "mar", "apr",
    "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "u.s", "u.k", "a.d", "b.c",
})
_OPENERS = "\"'“‘([{"


class TokenSpans(Protocol):
    """What chunking needs from a tokenizer: the character span of every token, special tokens excluded."""

    def token_spans(self, text: str) -> list[tuple[int, int]]: ...


@dataclass(frozen=True)
class Chunk:
    id: str
    document_id: str
    title: str
    source: str
    text: str
    index: int
    tokens: int


def chunk_id(document_id: str, text: str) -> str:
    return hashlib.sha256(f"{document_id}\x00{text}".encode()).hexdigest()[:32]


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of ``text``, stripped of surrounding whitespace."""
    spans: list[tuple[int, int]] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        end = match.end()
        if not match.group().strip() or _is_boundary(text, match.start(), end):
            _append_stripped(spans, text, start, end)
            start = end
    _append_stripped(spans, text, start, len(text))
    return spans


def split_sentences(text: str) -> list[str]:
    return [text[a:b] for a, b in sentence_spans(text)]


def _is_boundary(text: str, punct_start: int, end: int) -> bool:
    # Every look around a candidate is bounded by the gap or word next to it, never a copy of the text before or
    # after it: one copy per candidate made many sentences quadratic (issue 15).
    following = _NON_SPACE.search(text, end)
    if following is None:
        return True
    first = following.group()
    if not (first.isupper() or first.isdigit() or first in _OPENERS):
        return False
    if text[punct_start] != ".":
        return True
    word = _word_before(text, punct_start).lstrip(_OPENERS).lower()
    # "U.S. Army", "Dr. Who", "J. R. R. Tolkien": a period after an abbreviation or an initial ends nothing.
    return not (word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()) or _INITIALS.fullmatch(word))


def _word_before(text: str, index: int) -> str:
    """The last whitespace-separated word of ``text[:index]`` ("" if none), read backwards from ``index``."""
    end = index
    while end > 0 and text[end - 1].isspace():
        end -= 1
    start = end
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    return text[start:end]


def _append_stripped(spans: list[tuple[int, int]], text: str, start: int, end: int) -> None:
    piece = text[start:end]
    stripped = piece.strip()
    if stripped:
        offset = start + (len(piece) - len(piece.lstrip()))
        spans.append((offset, offset + len(stripped)))


@dataclass(frozen=True)
class _Unit:
    """A sentence, or a piece of a sentence too long for one chunk: the smallest thing a chunk holds."""

    start: int
    end: int
    tokens: int


def chunk_document(document: Document, tokenizer: TokenSpans, chunk_tokens: int,
                   overlap_tokens: int) -> list[Chunk]:
    """Chunks of at most ``chunk_tokens`` encoder tokens; neighbours share up to ``overlap_tokens``.

    Chunks end on sentence boundaries; only a sentence longer than a whole chunk is cut, between words.
    Overlap is made of whole sentences, so a sentence longer than the overlap is not repeated.
    """
    budget = max(1, min(chunk_tokens, MAX_CONTENT_TOKENS))
    overlap = max(0, min(overlap_tokens, budget // 2))
    units = _units(document.text, tokenizer, budget)
    chunks: list[Chunk] = []
    seen: set[str] = set()
    first = 0
    while first < len(units):
        last, used = first, units[first].tokens
        while last + 1 < len(units) and used + units[last + 1].tokens <= budget:
            last += 1
            used += units[last].tokens
        text = document.text[units[first].start:units[last].end]
        cid = chunk_id(document.id, text)
        if cid not in seen:  # a repeated passage would only collide with itself in the store
            seen.add(cid)
            chunks.append(Chunk(id=cid, document_id=document.id, title=document.title, source=document.source,
                                text=text, index=len(chunks), tokens=used))
        if last + 1 >= len(units):
            break
        first = _overlap_start(units, first, last, overlap)
    return chunks


def _overlap_start(units: Sequence[_Unit], first: int, last: int, overlap: int) -> int:
    """Where the next chunk starts: the trailing units of this one that fit in ``overlap``, always advancing."""
    start, shared = last + 1, 0
    while start - 1 > first and shared + units[start - 1].tokens <= overlap:
        start -= 1
        shared += units[start].tokens
    return start


def _units(text: str, tokenizer: TokenSpans, budget: int) -> list[_Unit]:
    spans = tokenizer.token_spans(text)
    units: list[_Unit] = []
    cursor = 0
    for start, end in sentence_spans(text):
        inside: list[tuple[int, int]] = []
        while cursor < len(spans) and spans[cursor][0] < end:
            if spans[cursor][0] >= start:
                inside.append(spans[cursor])
            cursor += 1
        if not inside:
            continue
        if len(inside) <= budget:
            units.append(_Unit(start, end, len(inside)))
        else:
            units.extend(_split_long(inside, budget))
    return units


def _split_long(tokens: list[tuple[int, int]], budget: int) -> list[_Unit]:
    """Cut an over-long sentence into pieces of at most ``budget`` tokens, preferring gaps between words."""
    pieces: list[_Unit] = []
    begin = 0
    while begin < len(tokens):
        stop = min(begin + budget, len(tokens))
        if stop < len(tokens):
            # Walk back to a token that starts a new word (a gap before it), unless none is near.
            cut = stop
            while cut > begin + budget // 2 and tokens[cut][0] == tokens[cut - 1][1]:
                cut -= 1
            if cut > begin + budget // 2:
                stop = cut
        pieces.append(_Unit(tokens[begin][0], tokens[stop - 1][1], stop - begin))
        begin = stop
    return pieces
