"""Reading Markdown, text and JSONL into documents; a bad file is named and the others still read."""

from __future__ import annotations

import json
from pathlib import Path

from service.rag.documents import iter_batches, read_file, read_paths
from vigil.contracts import Document


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def test_markdown_title_comes_from_the_first_heading(tmp_path: Path) -> None:
    markdown = "---\nauthor: x\n---\n# Milvus Lite\n\nIt is a local store.\n\n## Use\nOpen it.\n"
    path = write(tmp_path / "guide.md", markdown)
    [document] = read_file(path).documents
    assert document.id == "guide"
    assert document.title == "Milvus Lite"
    assert document.text == "It is a local store.\n\n## Use\nOpen it."
    assert document.source == str(path)


def test_text_file_is_one_document_named_by_its_stem(tmp_path: Path) -> None:
    path = write(tmp_path / "river_rhine.txt", "  The Rhine flows north.  \n")
    [document] = read_file(path).documents
    assert (document.id, document.title, document.text) == ("river_rhine", "river rhine", "The Rhine flows north.")


def test_jsonl_lines_become_documents_and_bad_lines_are_named(tmp_path: Path) -> None:
    lines = [
        json.dumps({"id": "p1", "title": "One", "text": "First passage."}),
        "{not json",
        json.dumps({"id": "p2", "title": "Two", "text": "   "}),
        json.dumps(["a", "list"]),
        "",
        json.dumps({"id": "p3", "title": "Three", "text": "Third passage."}),
    ]
    path = write(tmp_path / "corpus.jsonl", "\n".join(lines) + "\n")
    result = read_file(path)
    assert [d.id for d in result.documents] == ["p1", "p3"]
    assert [e.source for e in result.errors] == [f"{path}:2", f"{path}:3", f"{path}:4"]
    assert "invalid JSON" in result.errors[0].error
    assert "text" in result.errors[1].error


def test_bad_files_are_named_and_the_rest_is_read(tmp_path: Path) -> None:
    good = write(tmp_path / "good.md", "# Good\nSome text.")
    empty = write(tmp_path / "empty.txt", "  \n\n")
    binary = write(tmp_path / "latin1.txt", "caf\xe9".encode("latin-1"))
    unsupported = write(tmp_path / "table.csv", "a,b\n1,2\n")
    title_only = write(tmp_path / "title.md", "# Only a title\n")
    missing = tmp_path / "missing.md"
    result = read_paths([good, empty, binary, unsupported, title_only, missing])
    assert [d.id for d in result.documents] == ["good"]
    errors = {e.source: e.error for e in result.errors}
    assert errors == {
        str(empty): "file is empty",
        str(binary): "not UTF-8 text",
        str(unsupported): "unsupported file type '.csv'; use .md, .txt or .jsonl",
        str(title_only): "no text besides the title",
        str(missing): "No such file or directory",
    }


def test_folders_are_searched_and_ids_keep_the_relative_path(tmp_path: Path) -> None:
    write(tmp_path / "docs" / "a" / "intro.md", "# A\nalpha")
    write(tmp_path / "docs" / "b" / "intro.md", "# B\nbeta")
    write(tmp_path / "docs" / "notes.csv", "ignored")
    result = read_paths([tmp_path / "docs"])
    assert sorted(d.id for d in result.documents) == ["a/intro", "b/intro"]
    assert result.errors == []
    assert read_paths([tmp_path / "docs" / "a" / "intro.md"]).documents[0].id == "intro"


def test_an_empty_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "nothing").mkdir()
    result = read_paths([tmp_path / "nothing"])
    assert result.documents == []
    assert result.errors[0].source == str(tmp_path / "nothing")


def test_batches_are_bounded_by_count_and_size() -> None:
    documents = [Document(id=str(i), text="x" * 100) for i in range(10)]
    assert [len(b) for b in iter_batches(documents, max_documents=4, max_chars=10_000)] == [4, 4, 2]
    assert [len(b) for b in iter_batches(documents, max_documents=100, max_chars=250)] == [2, 2, 2, 2, 2]
    huge = [Document(id="big", text="x" * 1000)]
    assert [len(b) for b in iter_batches(huge, max_documents=4, max_chars=10)] == [1]
