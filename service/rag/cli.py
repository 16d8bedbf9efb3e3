"""`vigil rag …`: ingest documents into Milvus and inspect the collection."""

from __future__ import annotations

import typer

app = typer.Typer(help="Retrieval-augmented generation over a Milvus collection.", no_args_is_help=True)
