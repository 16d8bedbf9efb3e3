"""The `vigil` command: config, the embedded MLflow server, registry aliases, and every package's commands.

Other packages mount their own sub-commands through the ``vigil.cli`` entry-point group, so the core imports
none of them. Heavy libraries load inside commands, never at import, to keep `vigil --help` instant.
"""

from __future__ import annotations

import logging
import os
import sys
from importlib.metadata import entry_points

import typer
from rich.console import Console
from rich.table import Table

from vigil.errors import VigilError
from vigil.settings import get_settings

console = Console()
app = typer.Typer(help="Vigil: train, register, serve, trace and watch models.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
mlflow_app = typer.Typer(help="The embedded MLflow server of this VIGIL_HOME.", no_args_is_help=True)
models_app = typer.Typer(help="Registered models and their aliases.", no_args_is_help=True)
app.add_typer(mlflow_app, name="mlflow")
app.add_typer(models_app, name="models")


@app.command("config")
def show_config() -> None:
    """Print the effective settings (secrets masked)."""
    from vigil.settings import Settings

    table = Table("variable", "value", title="Vigil settings")
    for name, value in get_settings().masked().items():
        alias = Settings.model_fields[name].validation_alias
        table.add_row(alias if isinstance(alias, str) else f"VIGIL_{name.upper()}", str(value))
    console.print(table)


@mlflow_app.command("up")
def mlflow_up(port: int | None = typer.Option(None, help="Port (default VIGIL_MLFLOW_PORT).")) -> None:
    """Start `mlflow server` in the background and wait until it is healthy."""
    from vigil import mlflow_server

    settings = get_settings()
    with console.status("starting mlflow server…"):
        state, started = mlflow_server.up(settings, port)
    if started:
        console.print(f"[green]MLflow server running[/] at {state.uri} (pid {state.pid}, log {state.log_file})")
    else:
        console.print(f"MLflow server already running at {state.uri} (pid {state.pid})")
    if state.uri != settings.mlflow_tracking_uri:
        console.print(f"[yellow]note:[/] clients use {settings.mlflow_tracking_uri}; "
                      f"export MLFLOW_TRACKING_URI={state.uri} to reach this server.")


@mlflow_app.command("down")
def mlflow_down() -> None:
    """Stop this home's MLflow server."""
    from vigil import mlflow_server

    stopped = mlflow_server.down(get_settings())
    console.print(f"stopped MLflow server (pid {stopped.pid})" if stopped else "no MLflow server was running")


@mlflow_app.command("status")
def mlflow_status() -> None:
    """Say whether this home's MLflow server runs; exit 1 when it does not."""
    from vigil import mlflow_server

    state, word = mlflow_server.status(get_settings())
    if state is None or word == "stopped":
        console.print("MLflow server: stopped")
        raise typer.Exit(1)
    console.print(f"MLflow server: {word} at {state.uri} (pid {state.pid}, backend {state.backend_store_uri})")
    if word != "running":
        raise typer.Exit(1)


@models_app.command("list")
def models_list() -> None:
    """Registered models with their aliases and latest version."""
    from vigil import registry

    client = registry.connect()
    table = Table("model", "aliases", "latest version", "description")
    for model in client.search_registered_models():
        aliases = ", ".join(f"{alias}→v{version}" for alias, version in sorted(model.aliases.items()))
        latest = max((int(v.version) for v in model.latest_versions), default=0)
        table.add_row(model.name, aliases or "-", str(latest or "-"), model.description or "")
    console.print(table)


@models_app.command("show")
def models_show(name: str) -> None:
    """Every version of NAME with its aliases, run and the record of alias moves."""
    from vigil import registry

    client = registry.connect()
    versions = sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))
    if not versions:
        raise VigilError(f"no registered model named {name!r}; see `vigil models list`.")
    table = Table("version", "aliases", "run", "created", "record", title=name)
    for version in versions:
        record = "; ".join(f"{k.removeprefix('vigil.')}={v}" for k, v in sorted(version.tags.items())
                           if k.startswith("vigil.") and v)
        table.add_row(version.version, ", ".join(version.aliases) or "-", version.run_id or "-",
                      str(version.creation_timestamp), record)
    console.print(table)


@models_app.command("promote")
def models_promote(
    name: str,
    version: str | None = typer.Option(None, "--version", help="Version to promote (default: the challenger)."),
    to: str = typer.Option("champion", "--to", help="Alias to move."),
    reason: str = typer.Option("", "--reason", help="Why; recorded on the version."),
    force: bool = typer.Option(False, "--force", help="Override a refusing gate (needs --reason)."),
) -> None:
    """Point NAME@TO at a version and record who, when, from which version, and why."""
    from vigil import registry

    move = registry.promote(registry.connect(), name, version, to=to, reason=reason, force=force)
    console.print(f"[green]{name}@{move.alias}[/] → v{move.version} (was v{move.previous or '-'}), by {move.by}")


@models_app.command("rollback")
def models_rollback(
    name: str,
    alias: str = typer.Option("champion", "--alias", help="Alias to move back."),
    reason: str = typer.Option("", "--reason", help="Why; recorded on the version."),
) -> None:
    """Point NAME@ALIAS back at the version it held before."""
    from vigil import registry

    move = registry.rollback(registry.connect(), name, alias=alias, reason=reason)
    console.print(f"[yellow]{name}@{move.alias}[/] rolled back → v{move.version} (was v{move.previous})")


def _mount_package_commands() -> None:
    for entry in entry_points(group="vigil.cli"):
        app.add_typer(entry.load(), name=entry.name)


# Library progress bars and chatter would drown the CLI's own progress; they stay available at DEBUG.
QUIET_LIBRARIES = {
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "TOKENIZERS_PARALLELISM": "false",
}


def main() -> None:
    for key, value in QUIET_LIBRARIES.items():
        os.environ.setdefault(key, value)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _mount_package_commands()
    try:
        # Without standalone mode click returns typer.Exit's code instead of exiting.
        outcome = app(standalone_mode=False)
    except VigilError as error:
        console.print(f"[red]error:[/] {error}", highlight=False)
        sys.exit(error.exit_code)
    except typer.Abort:
        console.print("aborted")
        sys.exit(130)
    except Exception as error:  # click usage errors and the like
        import click

        if isinstance(error, click.ClickException):
            error.show()
            sys.exit(error.exit_code)
        raise
    sys.exit(outcome if isinstance(outcome, int) else 0)
