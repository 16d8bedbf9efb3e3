"""`vigil eval …`: score the classifier and the RAG pipeline, compare versions."""

from __future__ import annotations

import typer

app = typer.Typer(help="Evaluate models and gate promotion.", no_args_is_help=True)
