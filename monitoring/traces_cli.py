"""`vigil traces …`: read back what happened to requests."""

from __future__ import annotations

import typer

app = typer.Typer(help="Recent traces from the configured backend.", no_args_is_help=True)
