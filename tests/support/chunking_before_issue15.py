"""Chunking as it was before issue 15 (`service/rag/chunking.py` as of commit 87fc63a), frozen as the reference.

Its sentence splitting is quadratic: the regex retries a run of dots from every position, and each candidate
boundary copied the text before and after it. Tests compare today's chunking with it on ordinary documents (the
chunks must not change) and `bench/chunking.py` times both. The algorithm (sentence splitting and the chunk loop on
top of it) is copied verbatim; the chunk type, its id and the token budget are imported from today's module, so
chunks compare with `==`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from service.rag.chunking import MAX_CONTENT_TOKENS, Chunk, TokenSpans, chunk_id
from vigil.contracts import Document

# Candidate sentence ends: terminal punctuation, optional closing quotes/brackets, then whitespace; or a blank line.
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s)|\n\s*\n")
_ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "etc", "e.g", "i.e", "no", "fig", "inc", "ltd", "co",
    "corp", "gen", "col", "lt", "sgt", "rev", "mt", "ft", "approx", "dept", "est", "jan", "feb", "mar", "apr",
    "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "u.s", "u.k", "a.d", "b.c",
})
_OPENERS = "\"'“‘([{"


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
    following = text[end:].lstrip()
    if not following:
        return True
    first = following[0]
    if not (first.isupper() or first.isdigit() or first in _OPENERS):
        return False
    if text[punct_start] != ".":
        return True
    word = text[:punct_start].rsplit(None, 1)[-1] if text[:punct_start].strip() else ""
    word = word.lstrip(_OPENERS).lower()
    # "U.S. Army", "Dr. Who", "J. R. R. Tolkien": a period after an abbreviation or an initial ends nothing.
    return not (word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()) or re.fullmatch(r"(\w\.)+\w", word))


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
