"""`vigil serve`: the BentoML service over REST and gRPC."""

from __future__ import annotations

import typer

app = typer.Typer(help="Serve the champion model over REST and gRPC.", no_args_is_help=True)
