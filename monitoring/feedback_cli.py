"""`vigil feedback …`: true labels in bulk into a running service, and labelled requests out as a dataset.

`send` posts a file of `request_id,label` (and/or `score`, `comment`) to `POST /feedback/batch`, the way ground
truth usually arrives: later, in bulk. `export` writes the requests of a model that received a label as a table —
the model's inputs and the true label — ready for training or evaluation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import typer
from rich.console import Console
from rich.progress import Progress

from vigil.api_token import api_token
from vigil.contracts import MAX_FEEDBACK_ITEMS, Feedback, FeedbackBatch, FeedbackBatchReport
from vigil.settings import get_settings

console = Console()
app = typer.Typer(help="Feedback on served requests: send true labels in bulk, export labelled requests.",
                  no_args_is_help=True)

# The label column an export writes, and a `send` file may use instead of `label`.
LABEL = "label"


def read_feedback_file(path: Path) -> list[Feedback]:
    """CSV, JSON Lines or Parquet with `request_id` and `label`, `score` or `comment`; empty cells are left out."""
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    elif path.suffix in (".jsonl", ".ndjson"):
        frame = pd.read_json(path, lines=True, dtype=False)
    else:
        frame = pd.read_csv(path, dtype={"request_id": str}, keep_default_na=False, na_values=[""])
    if "request_id" not in frame.columns:
        raise ValueError(f"{path} has no request_id column (it has {', '.join(map(str, frame.columns))})")
    items = []
    for record in frame.to_dict(orient="records"):
        fields = {key: _plain(value) for key, value in record.items() if key in Feedback.model_fields}
        items.append(Feedback(**{key: value for key, value in fields.items() if value is not None}))
    return items


def _plain(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value.item() if hasattr(value, "item") else value


@app.command("send")
def send_command(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help="CSV, JSONL or Parquet: request_id + label "
                                "(and/or score, comment)."),
    url: str | None = typer.Option(None, "--url", help="The service (default http://127.0.0.1:VIGIL_HTTP_PORT)."),
) -> None:
    """Post the file's feedback to a running service in batches; exit 1 when any item was refused."""
    settings = get_settings()
    base = url or f"http://127.0.0.1:{settings.http_port}"
    try:
        items = read_feedback_file(path)
    except (ValueError, OSError) as error:
        console.print(f"[red]error:[/] {error}", highlight=False)
        raise typer.Exit(2) from None
    totals = {"recorded": 0, "unchanged": 0, "refused": 0}
    refusals: list[str] = []
    headers = {"Authorization": f"Bearer {api_token(settings)}"}
    with httpx.Client(base_url=base, timeout=120, headers=headers) as client, Progress(console=console) as progress:
        task = progress.add_task("sending feedback", total=len(items))
        for start in range(0, len(items), MAX_FEEDBACK_ITEMS):
            chunk = FeedbackBatch(feedback=items[start:start + MAX_FEEDBACK_ITEMS])
            try:
                response = client.post("/feedback/batch", content=chunk.model_dump_json(),
                                       headers={"Content-Type": "application/json"})
            except httpx.HTTPError as error:
                console.print(f"[red]error:[/] the service at {base} did not answer: {error}", highlight=False)
                raise typer.Exit(2) from None
            if response.status_code != 200:
                console.print(f"[red]error:[/] {response.status_code} {response.text[:500]}", highlight=False)
                raise typer.Exit(2)
            report = FeedbackBatchReport.model_validate_json(response.content)
            totals["recorded"] += report.recorded
            totals["unchanged"] += report.unchanged
            totals["refused"] += report.refused
            refusals += [f"{r.request_id}: {r.error.message}" for r in report.results if r.error is not None]
            progress.advance(task, len(chunk.feedback))
    for line in refusals[:20]:
        console.print(f"[yellow]refused[/] {line}", highlight=False)
    console.print(f"{totals['recorded']} recorded, {totals['unchanged']} unchanged, {totals['refused']} refused",
                  highlight=False)
    raise typer.Exit(1 if totals["refused"] else 0)


@app.command("export")
def export_command(
    model: str = typer.Argument(..., help="A served model's name (`sentiment`: Vigil's own)."),
    out: Path = typer.Option(..., "--out", help="The dataset to write: .csv, .jsonl or .parquet."),
    since: str | None = typer.Option(None, "--since", help="Window start: ISO time, or a duration ago (7d)."),
    until: str | None = typer.Option(None, "--until", help="Window end (default now)."),
    last: str | None = typer.Option(None, "--last", help="Window length (default 30d, ending now)."),
) -> None:
    """The model's labelled requests as a dataset: its inputs (`text` for sentiment) and the true `label`."""
    from monitoring.quality import labelled_dataset
    from monitoring.window import resolve_window

    try:
        window = resolve_window(since, until, last, default_last="30d")
        dataset, withheld = labelled_dataset(get_settings(), model, window)
    except ValueError as error:
        console.print(f"[red]error:[/] {error}", highlight=False)
        raise typer.Exit(2) from None
    if out.suffix == ".parquet":
        dataset.to_parquet(out, index=False)
    elif out.suffix in (".jsonl", ".ndjson"):
        dataset.to_json(out, orient="records", lines=True)
    else:
        dataset.to_csv(out, index=False)
    console.print(f"{len(dataset)} labelled rows of {model} ({window.label()}) written to {out}", highlight=False)
    if withheld:
        console.print(f"[yellow]{withheld} labelled rows left out: their text was not logged "
                      "(VIGIL_INFERENCE_LOG_REDACTION is hash or drop)[/]", highlight=False)
    raise typer.Exit(0 if len(dataset) else 2)
