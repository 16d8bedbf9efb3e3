"""`vigil train …`: the training stage's commands."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from vigil.settings import get_settings

console = Console()
app = typer.Typer(help="Train models and register them in MLflow.", no_args_is_help=True)


def _champion_exists(name: str) -> bool:
    from vigil import registry

    try:
        registry.resolve(registry.connect(), registry.ModelReference(name, alias=registry.CHAMPION))
    except registry.ModelNotFound:
        return False
    return True


@app.command("sentiment")
def train_sentiment_command(
    epochs: int = typer.Option(3, min=1, help="Fine-tuning epochs."),
    limit: int | None = typer.Option(None, min=20, help="Use at most N sentences (quick runs, tests)."),
    seed: int | None = typer.Option(None, help="Seed (default VIGIL_SEED)."),
    domains: str = typer.Option("amazon,yelp", help="Comma-separated training domains; the rest is out-of-domain."),
    if_missing: bool = typer.Option(False, "--if-missing", help="Do nothing when a champion already exists."),
) -> None:
    """Fine-tune the sentiment classifier, log it to MLflow, register it and set its aliases."""
    from training.sentiment import TrainConfig, train_sentiment

    settings = get_settings()
    if if_missing and _champion_exists(settings.sentiment_model_name):
        console.print(f"{settings.sentiment_model_name}@champion exists; nothing to train.")
        return
    config = TrainConfig(
        epochs=epochs, limit=limit, seed=settings.seed if seed is None else seed,
        domains=[d.strip() for d in domains.split(",") if d.strip()],
    )
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done, total=total)

        result = train_sentiment(config, progress)
    table = Table("metric", "value", title=f"{settings.sentiment_model_name} v{result.version} (run {result.run_id})")
    for name, value in sorted(result.metrics.items()):
        table.add_row(name, f"{value:.4f}")
    console.print(table)
    console.print(f"aliases set: {', '.join(result.aliases)}")


@app.command("embedder")
def train_embedder_command(
    if_missing: bool = typer.Option(False, "--if-missing", help="Do nothing when a champion already exists."),
) -> None:
    """Register the MiniLM encoder as `text-embedder` with alias champion."""
    from training.embedder import register_embedder

    settings = get_settings()
    if if_missing and _champion_exists(settings.embedder_model_name):
        console.print(f"{settings.embedder_model_name}@champion exists; nothing to register.")
        return
    with console.status("registering the text embedder…"):
        result = register_embedder()
    console.print(f"{settings.embedder_model_name} v{result.version} registered (run {result.run_id}); "
                  f"aliases: {', '.join(result.aliases)}")
