"""`vigil eval …`: score the classifier, compare versions under the promotion policy, measure the RAG pipeline."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from vigil.credentials import mask_url
from vigil.settings import get_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

console = Console()
# Progress goes to stderr so that `--json -` leaves stdout to the JSON alone.
progress_console = Console(stderr=True)
app = typer.Typer(help="Evaluate models and gate promotion.", no_args_is_help=True)


@app.callback()
def _quiet_mlflow() -> None:
    """Evaluate models and gate promotion."""
    # MLflow writes a "View run" link to stdout as each run ends; the commands print their own links, and
    # `--json -` needs stdout to hold the JSON alone.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def _run_link(client: MlflowClient, run_id: str | None) -> str:
    from evaluations.tracking import run_url

    return f"MLflow run {run_url(client, run_id)}" if run_id else "not logged to MLflow"


def _write_json(report: BaseModel, target: str) -> None:
    text = report.model_dump_json(indent=2)
    if target == "-":
        typer.echo(text)
    else:
        Path(target).write_text(text + "\n", encoding="utf-8")
        console.print(f"report written to {target}")


def _number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@app.command("sentiment")
def eval_sentiment(
    model: str | None = typer.Option(
        None, "--model", help="NAME@ALIAS or NAME/VERSION (default: the sentiment model @champion)."
    ),
    data: str = typer.Option(
        "test", "--data", help="test (the version's held-out split) | imdb (a domain) | a sentence<TAB>0|1 file."
    ),
    endpoint: str | None = typer.Option(
        None, "--endpoint", help="Evaluate a running Vigil at URL (POST URL/predict) instead of loading the model."
    ),
    json_out: str | None = typer.Option(None, "--json", help="Also write the report as JSON to OUT ('-': stdout)."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Score at most N rows (stratified), for quick runs."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", min=1, help="Texts per timed batch (default 32; with --endpoint 256 per request)."
    ),
) -> None:
    """Accuracy, macro-F1, ROC-AUC, calibration and latency of one version, logged to MLflow `evaluations`."""
    from evaluations.progress import progress_bars
    from evaluations.sentiment import evaluate_sentiment
    from vigil import registry

    settings = get_settings()
    client = registry.connect()
    with progress_bars(progress_console, transient=True) as progress:
        report = evaluate_sentiment(
            client, model or f"{settings.sentiment_model_name}@champion", data, endpoint=endpoint, limit=limit,
            batch_size=batch_size, progress=progress,
        )
    if json_out != "-":
        metrics = report.metrics
        title = (f"{report.model.name} v{report.model.version} on {report.dataset.name} "
                 f"({metrics.rows} rows, {report.source})")
        table = Table("metric", "value", title=title)
        table.add_row("accuracy", _number(metrics.accuracy))
        table.add_row("macro-F1", _number(metrics.macro_f1))
        table.add_row("ROC-AUC", _number(metrics.roc_auc))
        table.add_row(f"ECE ({metrics.ece_bins} bins)", _number(metrics.ece))
        for domain, f1 in sorted(metrics.per_domain_macro_f1.items()):
            table.add_row(f"macro-F1 {domain}", _number(f1))
        table.add_row("latency p50 / p95 per text",
                      f"{metrics.latency.p50_ms:.2f} / {metrics.latency.p95_ms:.2f} ms "
                      f"({metrics.latency.batches} batches of ≤{metrics.latency.batch_size})")
        (tn, fp), (fn, tp) = metrics.confusion_matrix
        table.add_row("confusion (true x predicted)", f"neg→neg {tn}  neg→pos {fp}  pos→neg {fn}  pos→pos {tp}")
        console.print(table)
        console.print(f"data: {report.dataset.description} (fingerprint {report.dataset.fingerprint})")
        console.print(_run_link(client, report.run_id))
    if json_out:
        _write_json(report, json_out)


class TaskOption(StrEnum):
    classification = "classification"
    regression = "regression"


@app.command("model")
def eval_model(
    model: str = typer.Argument(..., help="NAME@ALIAS or NAME/VERSION of any pyfunc model with a signature."),
    data: Path | None = typer.Option(None, "--data", help="CSV or Parquet: the model's input columns and the target "
                                     "(default: the version's attached evaluation dataset)."),
    target: str | None = typer.Option(None, "--target", help="The column holding the true label or value."),
    task: TaskOption | None = typer.Option(None, "--task", help="Default: told from the target and the predictions."),
    endpoint: str | None = typer.Option(
        None, "--endpoint", help="Send the rows through a running Vigil at URL (/models/NAME/invocations), which "
                                 "must serve that version, instead of loading it here."),
    json_out: str | None = typer.Option(None, "--json", help="Also write the report as JSON to OUT ('-': stdout)."),
) -> None:
    """Accuracy, macro-F1 and ROC-AUC (classifiers) or MAE, RMSE and R² (regressors) of one version of any model,
    logged to MLflow `evaluations` with a confusion-matrix or residual plot."""
    from evaluations.model_eval import evaluate_model
    from evaluations.progress import progress_bars
    from vigil import registry

    client = registry.connect()
    with progress_bars(progress_console, transient=True) as progress:
        report = evaluate_model(client, model, data=data, target=target, task=task.value if task else None,
                                endpoint=endpoint, progress=progress)
    if json_out != "-":
        where = report.endpoint or "in process"
        table = Table("metric", "value", title=f"{report.model.name} v{report.model.version} on {report.dataset.name}"
                                               f" ({report.rows} rows, {report.task}, {where})")
        for metric, value in report.metrics.judged().items():
            table.add_row(metric, _number(value))
        console.print(table)
        console.print(f"data: {report.dataset.description} (fingerprint {report.dataset.fingerprint})")
        console.print(_run_link(client, report.run_id))
    if json_out:
        _write_json(report, json_out)


@app.command("compare")
def eval_compare(
    name: str | None = typer.Argument(None, help="Registered model name (default: the sentiment model)."),
    candidate: str = typer.Option("challenger", "--candidate", help="Alias or version of the candidate."),
    baseline: str = typer.Option("champion", "--baseline", help="Alias or version to compare against."),
    data: str | None = typer.Option(None, "--data", help="test | imdb | a file (default: the policy's [gate] data)."),
    limit: int | None = typer.Option(None, "--limit", min=0, help="Score at most N rows (default: the policy's)."),
    bootstrap: int | None = typer.Option(
        None, "--bootstrap", min=0, help="Paired bootstrap resamples (default: the policy's, 1000)."
    ),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Texts per timed batch."),
    policy_file: Path | None = typer.Option(None, "--policy", help="Policy file (default VIGIL_PROMOTION_POLICY)."),
    json_out: str | None = typer.Option(None, "--json", help="Also write the comparison as JSON to OUT ('-': stdout)."),
) -> None:
    """Candidate against baseline on the same rows: deltas with bootstrap intervals and the policy's verdict.

    Exits 1 when the policy says no, so CI and scripts can act on it.
    """
    from evaluations.progress import progress_bars
    from evaluations.sentiment import compare_sentiment
    from vigil import registry
    from vigil.policy import load_policy

    settings = get_settings()
    policy = load_policy(policy_file or settings.promotion_policy)
    client = registry.connect()
    with progress_bars(progress_console, transient=True) as progress:
        comparison = compare_sentiment(
            client, name or settings.sentiment_model_name, candidate, baseline, policy, data=data, limit=limit,
            bootstrap=bootstrap, batch_size=batch_size, progress=progress,
        )
    if json_out != "-":
        new, old = comparison.candidate.model, comparison.baseline.model
        interval = f"{comparison.confidence:.0%} CI"
        table = Table("metric", f"candidate v{new.version}", f"baseline v{old.version}", "Δ", interval,
                      title=f"{new.name}: v{new.version} vs v{old.version} on {comparison.dataset.name} "
                            f"({comparison.dataset.rows} rows)")
        for delta in comparison.deltas:
            digits = 2 if delta.metric.startswith("latency") else 4
            ci = "-" if delta.ci_low is None or delta.ci_high is None else (
                f"[{delta.ci_low:+.{digits}f}, {delta.ci_high:+.{digits}f}]")
            table.add_row(delta.metric, _number(delta.candidate, digits), _number(delta.baseline, digits),
                          "-" if delta.delta is None else f"{delta.delta:+.{digits}f}", ci)
        console.print(table)
        rules = Table("rule", "result", "why", title=f"policy {comparison.policy}")
        for rule in comparison.rules:
            rules.add_row(rule.rule, "[green]pass[/]" if rule.passed else "[red]FAIL[/]", rule.reason)
        console.print(rules)
        verdict = "[green]PASS[/]" if comparison.passed else "[red]FAIL[/]"
        console.print(f"verdict: {verdict} — {_run_link(client, comparison.run_id)}")
    if json_out:
        _write_json(comparison, json_out)
    if not comparison.passed:
        raise typer.Exit(1)


@app.command("rag")
def eval_rag(
    dataset: Path = typer.Option(
        Path("data/rag/qa.jsonl"), "--dataset", help="QA pairs: JSONL of id, question, answers, passage_ids."
    ),
    endpoint: str | None = typer.Option(
        None, "--endpoint", help="Evaluate a running Vigil at URL (POST URL/rag/query) instead of this process."
    ),
    k: int = typer.Option(5, "--k", min=1, max=50, help="Chunks retrieved and read per question (top_k)."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Ask at most N questions (a seeded sample)."),
    json_out: str | None = typer.Option(None, "--json", help="Also write the report as JSON to OUT ('-': stdout)."),
    split: str = typer.Option("all", "--split", help="all | held-out | train: one side of the span reader's split "
                              "by article (held-out: questions on articles no reader was trained on)."),
) -> None:
    """Passage recall@k, MRR, nDCG@k, answer containment, exact match and F1, groundedness, tokens and latency.

    Logged to MLflow `evaluations`; with LANGSMITH_API_KEY set, also to LangSmith as a dataset and an experiment.
    """
    from evaluations.progress import progress_bars
    from evaluations.rag import evaluate_rag
    from vigil import registry

    if split not in ("all", "held-out", "train"):
        raise typer.BadParameter("--split takes all, held-out or train")
    client = registry.connect()
    with progress_bars(progress_console, transient=True) as progress:
        report = evaluate_rag(client, dataset, endpoint=endpoint, k=k, limit=limit, progress=progress,
                              split=split)  # type: ignore[arg-type]
    if json_out != "-":
        metrics = report.metrics
        where = report.endpoint or "in process"
        table = Table("metric", "value", title=f"RAG on {report.dataset.name} ({metrics.questions} questions, "
                                               f"k={report.k}, {where})")
        for rank, recall in metrics.recall.items():
            table.add_row(f"passage recall@{rank}", _number(recall))
        table.add_row(f"MRR@{report.k}", _number(metrics.mrr))
        for rank, ndcg in metrics.ndcg.items():
            table.add_row(f"nDCG@{rank}", _number(ndcg))
        table.add_row("answer containment", _number(metrics.answer_containment))
        table.add_row("answer exact match", _number(metrics.exact_match))
        table.add_row("answer token F1", _number(metrics.token_f1))
        table.add_row("groundedness", f"{_number(metrics.groundedness)} ({metrics.grounded_questions} answers judged)")
        for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
            stats = getattr(metrics, name)
            table.add_row(f"{name.replace('_', ' ')} mean / p95", f"{stats.mean:.1f} / {stats.p95:.1f}")
        table.add_row("latency p50 / p95", f"{metrics.latency_ms.p50:.1f} / {metrics.latency_ms.p95:.1f} ms")
        console.print(table)
        console.print(f"generator {report.generator} ({report.generator_model}) · embedder {report.embedder.name} "
                      f"v{report.embedder.version} · data fingerprint {report.dataset.fingerprint}")
        if report.langsmith is not None and report.langsmith.status != "skipped":
            colour = "green" if report.langsmith.status == "logged" else "yellow"
            console.print(f"[{colour}]LangSmith {report.langsmith.status}[/]: {report.langsmith.message}",
                          soft_wrap=True)
        console.print(_run_link(client, report.run_id))
    if json_out:
        _write_json(report, json_out)


class Domain(StrEnum):
    amazon = "amazon"
    imdb = "imdb"
    yelp = "yelp"


# --- replay: held-out traffic through a running service -------------------------------------------------


@app.command("replay")
def replay_command(
    domain: Domain | None = typer.Option(
        None, "--domain", help="Whose held-out sentences to send to the sentiment model (POST /predict)."
    ),
    model: str | None = typer.Option(
        None, "--model", help="A served pyfunc model (VIGIL_MODELS) to send the rows of --data to (POST "
        "/models/NAME/invocations). The sentiment model is refused here: replay it with --domain."
    ),
    data: Path | None = typer.Option(None, "--data", help="With --model: a CSV or Parquet file of its input columns."),
    target: str | None = typer.Option(
        None, "--target", help="With --model: the column of --data not to send (what the model predicts)."
    ),
    n: int | None = typer.Option(
        None, "--n", min=1, help="How many sentences (--domain, default 200) or rows (--model, default every row once; "
        "with replacement only when N exceeds the rows)."
    ),
    rows_per_request: int | None = typer.Option(
        None, "--rows-per-request", min=1, help="With --model: rows per request, as one dataframe_split (default 1)."
    ),
    endpoint: str | None = typer.Option(None, "--endpoint", help="Service base URL (default "
                                        "http://127.0.0.1:$VIGIL_HTTP_PORT)."),
    concurrency: int = typer.Option(4, "--concurrency", min=1, max=64, help="Requests in flight."),
    seed: int | None = typer.Option(None, "--seed", help="Sampling seed (default: a fresh sample each time; with "
                                    "--model and no --n, the file's own order)."),
) -> None:
    """Send held-out sentences (--domain) or a file's rows (--model NAME --data FILE) to a running service.

    Exit 0 all answered, 1 some failed, 2 none answered or the input could not be read.
    """
    from rich.progress import Progress

    from evaluations.replay import choose, held_out, model_rows, pick_rows, replay, replay_rows, served_split

    def refused(message: str) -> typer.Exit:
        from rich.markup import escape  # a file's column names or path may hold [brackets]

        console.print(f"[red]error:[/] {escape(message)}", highlight=False)
        return typer.Exit(2)

    settings = get_settings()
    endpoint = endpoint or f"http://127.0.0.1:{settings.http_port}"
    if domain is not None and (model is not None or data is not None):
        raise refused("give --domain (the sentiment model) or --model NAME --data FILE, not both")
    if model is not None or data is not None:
        if model is None or data is None:
            raise refused("--model and --data go together: --model NAME --data FILE")
        if model == settings.sentiment_model_name:
            raise refused(f"{model} is Vigil's sentiment model, served on /predict: replay it with "
                          "--domain amazon|imdb|yelp")
        try:
            rows = pick_rows(model_rows(data, target), n, seed)
        except Exception as error:
            raise refused(str(error)) from None
        per_request = rows_per_request or 1
        console.print(f"{len(rows)} rows of {data} ({', '.join(map(str, rows.columns))}); sending them to "
                      f"{mask_url(endpoint)}/models/{model}/invocations, {per_request} per request",
                      markup=False, highlight=False)
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("replaying", total=len(rows))
            result = replay_rows(rows, model, endpoint, rows_per_request=per_request, concurrency=concurrency,
                                 on_done=lambda done: progress.update(task, completed=done))
        predicted = [f"{label} {count}" for label, count in result.labels.most_common()]
        if result.values:
            predicted.append(f"mean {sum(result.values) / len(result.values):.4g} of {len(result.values)} values")
        served = ", ".join(f"{who} ({count} rows)" for who, count in result.served_by.most_common()) or "-"
        console.print(f"sent {result.rows_sent} rows in {result.sent} requests: {result.rows_answered} rows answered, "
                      f"{result.failed} requests failed · predictions: {', '.join(predicted) or '-'} · served by: "
                      f"{served}", markup=False, highlight=False)
        if result.errors:
            console.print("errors: " + ", ".join(f"{e} ×{c}" for e, c in result.errors.most_common()),
                          markup=False, highlight=False)
        raise typer.Exit(result.exit_code)
    if domain is None:
        raise refused("give --domain amazon|imdb|yelp (the sentiment model) or --model NAME --data FILE")
    if target is not None or rows_per_request is not None:
        raise refused("--target and --rows-per-request go with --model NAME --data FILE")
    n = 200 if n is None else n
    try:
        split = served_split(settings)
        pool = held_out(domain.value, split.params)
    except Exception as error:
        console.print(f"[red]error:[/] {error}", highlight=False)
        raise typer.Exit(2) from None
    trained = ",".join(split.params.domains)
    origin = f"v{split.version}" if split.version else "an assumed split (MLflow unreachable)"
    console.print(f"{len(pool)} held-out {domain.value} sentences (training split of {origin}: {trained}, "
                  f"seed {split.params.seed}); sending {n} to {mask_url(endpoint)}/predict", highlight=False)
    texts = choose(pool, n, seed)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("replaying", total=n)
        result = replay(texts, endpoint, concurrency=concurrency,
                        on_done=lambda done: progress.update(task, completed=done))
    labels = ", ".join(f"{label} {count}" for label, count in result.labels.most_common()) or "-"
    served = ", ".join(f"{who} ({count})" for who, count in result.served_by.most_common()) or "-"
    console.print(f"sent {result.sent}: {result.ok} answered, {result.failed} failed · labels: {labels} · "
                  f"served by: {served}", highlight=False)
    if result.errors:
        console.print("errors: " + ", ".join(f"{e} ×{c}" for e, c in result.errors.most_common()), highlight=False)
    raise typer.Exit(result.exit_code)
