"""Read Markdown, plain-text and JSONL files into :class:`Document` objects.

A bad input never stops the others: each unreadable, empty or invalid file (or JSONL line) becomes a
:class:`FileError` naming it, and everything else is still returned.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from vigil.contracts import MAX_DOCUMENT_ID_CHARS, Document, FileError

logger = logging.getLogger(__name__)

MARKDOWN_SUFFIXES = frozenset({".md", ".markdown"})
TEXT_SUFFIXES = frozenset({".txt", ".text"})
JSONL_SUFFIXES = frozenset({".jsonl"})
SUPPORTED_SUFFIXES = MARKDOWN_SUFFIXES | TEXT_SUFFIXES | JSONL_SUFFIXES

_HEADING = re.compile(r"^\s{0,3}#\s+(.+?)\s*#*\s*$", re.MULTILINE)
_FRONT_MATTER = re.compile(r"\A---\s*\n.*?\n---\s*\n", re.DOTALL)


@dataclass
class ReadResult:
    documents: list[Document] = field(default_factory=list)
    errors: list[FileError] = field(default_factory=list)

    def extend(self, other: ReadResult) -> None:
        self.documents.extend(other.documents)
        self.errors.extend(other.errors)


def read_paths(paths: Iterable[Path]) -> ReadResult:
    """Documents from files and directories (searched recursively for supported suffixes)."""
    result = ReadResult()
    for path in paths:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES)
            if not files:
                result.errors.append(FileError(source=str(path), error="directory holds no .md, .txt or .jsonl file"))
            for file in files:
                result.extend(read_file(file, document_id=_relative_id(file, path)))
        else:
            result.extend(read_file(path))
    return result


def read_file(path: Path, document_id: str | None = None) -> ReadResult:
    """The documents of one file; a Markdown or text file is one document, a JSONL file one per line."""
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        return _failed(path, f"unsupported file type {suffix or '(none)'!r}; use .md, .txt or .jsonl")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return _failed(path, "not UTF-8 text")
    except OSError as exc:
        return _failed(path, exc.strerror or type(exc).__name__)
    if not raw.strip():
        return _failed(path, "file is empty")
    if suffix in JSONL_SUFFIXES:
        return _read_jsonl(path, raw)
    doc_id = document_id or path.stem
    title, text = _markdown(raw) if suffix in MARKDOWN_SUFFIXES else ("", raw.strip())
    if not text:
        return _failed(path, "no text besides the title")
    return _one(path, doc_id, title or path.stem.replace("_", " "), text)


def _read_jsonl(path: Path, raw: str) -> ReadResult:
    result = ReadResult()
    for number, line in enumerate(raw.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            result.errors.append(FileError(source=where, error=f"invalid JSON ({exc.msg})"))
            continue
        if not isinstance(record, dict):
            result.errors.append(FileError(source=where, error="a line must be a JSON object with id, title, text"))
            continue
        try:
            result.documents.append(Document(
                id=str(record.get("id", "")), title=str(record.get("title") or ""),
                text=str(record.get("text") or "").strip(), source=str(record.get("source") or _source(path)),
            ))
        except ValidationError as exc:
            result.errors.append(FileError(source=where, error=_validation_message(exc)))
    if not result.documents and not result.errors:
        result.errors.append(FileError(source=str(path), error="file holds no JSON lines"))
    return result


def _markdown(raw: str) -> tuple[str, str]:
    """The first level-1 heading as title, and the body without YAML front matter."""
    body = _FRONT_MATTER.sub("", raw, count=1)
    match = _HEADING.search(body)
    if match is None:
        return "", body.strip()
    title = match.group(1).strip()
    # The title is stored apart; keeping it in the text as well would only repeat it in the chunk.
    text = (body[: match.start()] + body[match.end():]).strip()
    return title, text


def _one(path: Path, doc_id: str, title: str, text: str) -> ReadResult:
    try:
        return ReadResult(documents=[Document(id=doc_id, title=title, text=text, source=_source(path))])
    except ValidationError as exc:
        return _failed(path, _validation_message(exc))


def _source(path: Path) -> str:
    """The absolute path: the same file read from another working directory is the same source, so an
    unchanged re-ingest finds its chunks unchanged."""
    return str(path.resolve())


def _failed(path: Path, error: str) -> ReadResult:
    logger.warning("not ingested: %s: %s", path, error)
    return ReadResult(errors=[FileError(source=str(path), error=error)])


def _relative_id(file: Path, root: Path) -> str:
    """Files under a directory are named by their path inside it, so equal stems in two folders stay apart."""
    return file.relative_to(root).with_suffix("").as_posix()[:MAX_DOCUMENT_ID_CHARS]


def _validation_message(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'document'}: {e['msg']}" for e in exc.errors())


def iter_batches(documents: list[Document], max_documents: int, max_chars: int) -> Iterator[list[Document]]:
    """Consecutive batches bounded by count and by text size (a request body has a size limit)."""
    batch: list[Document] = []
    size = 0
    for document in documents:
        length = len(document.text) + len(document.title) + len(document.id) + len(document.source)
        if batch and (len(batch) >= max_documents or size + length > max_chars):
            yield batch
            batch, size = [], 0
        batch.append(document)
        size += length
    if batch:
        yield batch
