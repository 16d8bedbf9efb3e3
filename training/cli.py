"""`vigil train …`: the training stage's commands."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

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


class _Trained(Protocol):
    """What a training run reports: the run, the registered version, its metrics and the aliases it set."""

    @property
    def run_id(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def metrics(self) -> dict[str, float]: ...
    @property
    def aliases(self) -> list[str]: ...


Result = TypeVar("Result", bound=_Trained)


def _with_progress_bars(train: Callable[[Callable[[str, int, int], None]], Result]) -> Result:
    """``train(progress)`` with one bar per phase it reports (``progress(phase, done, total)``)."""
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done, total=total)

        return train(progress)


def _report(name: str, result: _Trained) -> None:
    table = Table("metric", "value", title=f"{name} v{result.version} (run {result.run_id})")
    for metric, value in sorted(result.metrics.items()):
        table.add_row(metric, f"{value:.4f}")
    console.print(table)
    console.print(f"aliases set: {', '.join(result.aliases)}")


@app.command("sentiment")
def train_sentiment_command(
    epochs: int = typer.Option(3, min=1, help="Fine-tuning epochs."),
    limit: int | None = typer.Option(None, min=20, help="Use at most N sentences (quick runs, tests)."),
    seed: int | None = typer.Option(None, help="Seed (default VIGIL_SEED)."),
    domains: str = typer.Option("amazon,yelp", help="Comma-separated training domains; the rest is out-of-domain."),
    if_missing: bool = typer.Option(False, "--if-missing", help="Do nothing when a champion already exists."),
    extra: Path | None = typer.Option(None, "--extra", help="More labelled rows for the training split only: CSV, "
                                      "JSON Lines or Parquet with `text` and `label`, e.g. what `vigil feedback "
                                      "export sentiment` wrote. Logged with the run, with its fingerprint."),
) -> None:
    """Fine-tune the sentiment classifier, log it to MLflow, register it and set its aliases."""
    from training.sentiment import TrainConfig, train_sentiment

    settings = get_settings()
    if if_missing and _champion_exists(settings.sentiment_model_name):
        console.print(f"{settings.sentiment_model_name}@champion exists; nothing to train.")
        return
    config = TrainConfig(
        epochs=epochs, limit=limit, seed=settings.seed if seed is None else seed,
        domains=[d.strip() for d in domains.split(",") if d.strip()], extra=extra,
    )
    _report(settings.sentiment_model_name, _with_progress_bars(lambda progress: train_sentiment(config, progress)))


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


@app.command("reader")
def train_reader_command(
    # The recipe of the served reader: every training question, two epochs — about 40 minutes on 2 idle cores
    # (one epoch on half of them gave token F1 0.44 against 0.67; bench/RESULTS.md, issue 18).
    epochs: int = typer.Option(2, min=1, help="Fine-tuning epochs."),
    limit: int | None = typer.Option(None, min=1, help="Train on at most N questions of the training articles, a "
                                     "seeded sample (small for quick runs and tests); default all of them."),
    eval_limit: int = typer.Option(500, min=1, help="Held-out questions the run scores (a seeded sample)."),
    max_seq_len: int = typer.Option(256, min=64, max=512, help="Tokens per window; longer passages are strided."),
    seed: int | None = typer.Option(None, help="Seed (default VIGIL_SEED)."),
    if_missing: bool = typer.Option(False, "--if-missing", help="Do nothing when a version is registered already."),
) -> None:
    """Fine-tune the RAG span reader on the training articles, log it to MLflow, register it and set its aliases."""
    from training.reader import ReaderTrainConfig, train_reader

    settings = get_settings()
    if if_missing and _champion_exists(settings.reader_model_name):
        console.print(f"{settings.reader_model_name}@champion exists; nothing to train.")
        return
    config = ReaderTrainConfig(epochs=epochs, limit=limit, eval_limit=eval_limit, max_seq_len=max_seq_len,
                               seed=settings.seed if seed is None else seed)
    _report(settings.reader_model_name, _with_progress_bars(lambda progress: train_reader(config, progress)))
