"""`vigil monitor …`: Evidently drift and token-usage jobs, dashboards, alerts."""

from __future__ import annotations

import typer

app = typer.Typer(help="Drift and token-usage monitoring with Evidently.", no_args_is_help=True)
