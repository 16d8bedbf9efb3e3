"""Rich progress bars for evaluations, behind the plain (phase, done, total) callback the evaluation code calls."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from evaluations.scoring import ProgressCallback

if TYPE_CHECKING:
    from rich.console import Console


@contextmanager
def progress_bars(console: Console, transient: bool = False) -> Iterator[ProgressCallback | None]:
    """One bar per phase while the block runs; None (no output) when the console is not a terminal."""
    from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    if not console.is_terminal:
        yield None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, transient=transient) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done, total=total)

        yield progress
