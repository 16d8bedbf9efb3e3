"""`vigil rag …`: ingest documents into Milvus, inspect and prune the collection, ask a question."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from vigil.api_token import api_token
from vigil.contracts import IngestReport
from vigil.settings import get_settings

console = Console()
app = typer.Typer(help="Retrieval-augmented generation over a Milvus collection.", no_args_is_help=True)


def _quiet_milvus_lite() -> None:
    # When the store cannot be opened, Milvus Lite logs a stack trace before pymilvus raises; the CLI reports
    # the failure itself, in one line that says what to do.
    logging.getLogger("milvus_lite.server_manager").setLevel(logging.CRITICAL)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=False)


@app.command("ingest")
def ingest(
    paths: list[Path] = typer.Argument(..., help="Markdown, text or JSONL (id, title, text) files, or folders."),
    chunk_tokens: int | None = typer.Option(None, "--chunk-tokens", min=16, max=256,
                                            help="Chunk size in encoder tokens (default VIGIL_RAG_CHUNK_TOKENS)."),
    overlap: int | None = typer.Option(None, "--overlap", min=0,
                                       help="Tokens shared by neighbouring chunks "
                                            "(default VIGIL_RAG_CHUNK_OVERLAP_TOKENS)."),
) -> None:
    """Chunk, embed and store documents; re-ingesting a document replaces it.

    While a Vigil service is running it owns the store, so the documents are sent to it instead.
    Exit code 1: nothing was ingested; 2: some inputs were skipped (named in the output).
    """
    from service.rag.client import ingest_via_service, service_is_up, service_url
    from service.rag.documents import read_paths

    settings = get_settings()
    read = read_paths(paths)
    if not read.documents:
        _print_report(IngestReport(documents=0, chunks=0, skipped=len(read.errors), errors=read.errors))
        raise typer.Exit(1)
    url = service_url(settings.http_port)
    if service_is_up(url):
        console.print(f"Vigil service is running at {url}: sending {len(read.documents)} documents through it "
                      "(it owns the store).")
        with _progress() as progress:
            task = progress.add_task("ingesting via service", total=len(read.documents))
            report = ingest_via_service(url, api_token(settings), read.documents,
                                        chunk_tokens=chunk_tokens, overlap_tokens=overlap,
                                        progress=lambda n: progress.advance(task, n))
        report = report.merged(IngestReport(documents=0, chunks=0, skipped=len(read.errors), errors=read.errors))
    else:
        from service.rag.pipeline import RagPipeline

        _quiet_milvus_lite()
        with RagPipeline.from_settings(settings) as pipeline, _progress() as progress:
            tasks: dict[str, TaskID] = {}

            def advance(phase: str, done: int, total: int) -> None:
                label = {"chunk": "chunking", "embed": "embedding", "write": "writing"}[phase]
                if phase not in tasks:
                    tasks[phase] = progress.add_task(label, total=total)
                progress.update(tasks[phase], completed=done, total=total)

            report = pipeline.ingest(read.documents, chunk_tokens=chunk_tokens, overlap_tokens=overlap,
                                     errors=read.errors, progress=advance)
    _print_report(report)
    if report.documents == 0:
        raise typer.Exit(1)
    if report.skipped:
        raise typer.Exit(2)


def _print_report(report: IngestReport) -> None:
    model = f" with {report.embedding_model.name} v{report.embedding_model.version}" if report.embedding_model else ""
    console.print(f"[green]ingested[/] {report.documents} documents, {report.chunks} chunks "
                  f"({report.embedded} embedded{model}, {report.removed} stale removed, the rest unchanged) "
                  f"in {report.seconds:.1f} s; {report.skipped} skipped")
    for error in report.errors:
        # One line per input, never cut: the path is what a person needs to fix it.
        console.print(f"[yellow]skipped[/] {escape(error.source)}: {escape(error.error)}", soft_wrap=True)


@app.command("stats")
def stats() -> None:
    """The collection: chunks, documents, embedding-model versions, search mode."""
    from service.rag.store import store_from_settings

    _quiet_milvus_lite()
    with store_from_settings(get_settings()) as store:
        result = store.stats()
    table = Table("", "", show_header=False, title="RAG store", title_justify="left")
    table.add_row("store", f"{result.store} ({escape(result.target)})")
    table.add_row("collection", result.collection + ("" if result.exists else " (not created yet)"))
    table.add_row("documents", str(result.documents))
    table.add_row("chunks", str(result.chunks))
    table.add_row("embedding model versions", ", ".join(result.embedding_model_versions) or "-")
    table.add_row("search", "hybrid: dense HNSW + BM25, RRF" if result.hybrid else "dense HNSW")
    console.print(table)


@app.command("delete")
def delete(document_id: str = typer.Argument(..., help="The id of the document to remove.")) -> None:
    """Remove a document's chunks from the collection; exit 1 when it was not there."""
    from service.rag.store import store_from_settings

    _quiet_milvus_lite()
    with store_from_settings(get_settings()) as store:
        removed = store.delete_document(document_id)
    if not removed:
        console.print(f"no chunks of document {escape(document_id)!r} in the collection")
        raise typer.Exit(1)
    console.print(f"[green]deleted[/] document {escape(document_id)!r} ({removed} chunks)")


@app.command("query")
def query(
    question: str = typer.Argument(..., help="The question to answer from the collection."),
    top_k: int = typer.Option(5, "--top-k", help="Chunks to retrieve (1..50)."),
    as_json: bool = typer.Option(False, "--json", help="Print the answer as JSON."),
) -> None:
    """Answer a question in this process: retrieved chunks, generated answer with citations, token usage."""
    from service.rag.pipeline import RagPipeline

    _quiet_milvus_lite()
    with RagPipeline.from_settings(get_settings()) as pipeline:
        pipeline.follow_reader(wait=True)  # the span reader the service would answer with, when one is registered
        answer = pipeline.query(question, top_k)
    if as_json:
        console.print_json(answer.model_dump_json())
        return
    console.print(f"[bold]{escape(answer.answer)}[/]\n")
    table = Table("#", "document", "title", "score", "text", title="citations", title_justify="left")
    for number, citation in enumerate(answer.citations, start=1):
        text = citation.text if len(citation.text) <= 160 else citation.text[:157] + "…"
        table.add_row(str(number), escape(citation.document_id), escape(citation.title), f"{citation.score:.4f}",
                      escape(text))
    console.print(table)
    usage = answer.usage
    console.print(f"usage: {usage.prompt_tokens} prompt + {usage.completion_tokens} completion = "
                  f"{usage.total_tokens} tokens · generator {answer.generator.name} ({answer.generator.model}) · "
                  f"embedder {answer.model.name} v{answer.model.version}")
