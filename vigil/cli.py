"""The `vigil` command: config, the embedded MLflow server, registry aliases, and every package's commands.

Other packages mount their own sub-commands through the ``vigil.cli`` entry-point group, so the core imports
none of them. Heavy libraries load inside commands, never at import, to keep `vigil --help` instant.
"""

from __future__ import annotations

import logging
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, cast

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vigil.errors import VigilError
from vigil.settings import get_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from vigil import registry
    from vigil.settings import Settings

console = Console()
app = typer.Typer(help="Vigil: train, register, serve, trace and watch models.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
mlflow_app = typer.Typer(help="The embedded MLflow server of this VIGIL_HOME.", no_args_is_help=True)
models_app = typer.Typer(help="Registered models and their aliases.", no_args_is_help=True)
app.add_typer(mlflow_app, name="mlflow")
app.add_typer(models_app, name="models")


@app.callback()
def authenticate() -> None:
    """Every command speaks to this home's MLflow server as its admin (unless the environment names someone)."""
    from vigil.mlflow_auth import authenticate_process

    authenticate_process(get_settings())


@app.command("config")
def show_config() -> None:
    """Print the effective settings (secrets masked, and the credentials in URLs)."""
    from vigil.credentials import mask_url
    from vigil.settings import Settings

    table = Table("variable", "value", title="Vigil settings")
    for name, value in get_settings().masked().items():
        alias = Settings.model_fields[name].validation_alias
        # A webhook's secret is in its path (Slack's, Teams'): only its scheme and host are shown.
        shown = mask_url(value, keep_path=name != "alert_webhook") if isinstance(value, str) else value
        table.add_row(alias if isinstance(alias, str) else f"VIGIL_{name.upper()}", str(shown))
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
    _say_how_to_log_in(settings, state.auth)
    if state.uri != settings.mlflow_tracking_uri:
        from vigil.credentials import mask_url

        console.print(f"[yellow]note:[/] clients use {mask_url(settings.mlflow_tracking_uri)}; "
                      f"export MLFLOW_TRACKING_URI={state.uri} to reach this server.")


def _say_how_to_log_in(settings: Settings, auth: bool) -> None:
    from vigil.mlflow_auth import ADMIN_USERNAME

    if auth:
        console.print(f"MLflow asks for a login: user {ADMIN_USERNAME}, password from `vigil mlflow credentials` "
                      "(which also prints the variables for your own MLflow scripts).")
    elif settings.mlflow_auth:
        console.print("[yellow]warning:[/] this server was started without authentication; anyone who reaches it "
                      "may move aliases. Restart it: `vigil mlflow down && vigil mlflow up`.")


@mlflow_app.command("credentials")
def mlflow_credentials(
    role: str = typer.Option("admin", help="admin (registers and promotes) or serving (read-only, writes traces)."),
) -> None:
    """Print `export MLFLOW_TRACKING_USERNAME=… MLFLOW_TRACKING_PASSWORD=…` for this home's MLflow server.

    Use it as `eval "$(vigil mlflow credentials)"` before running your own MLflow code against Vigil's server.
    """
    from vigil.mlflow_auth import Role, exports

    try:
        chosen = Role(role)
    except ValueError:
        raise typer.BadParameter(f"{role!r}: choose admin or serving", param_hint="--role") from None
    typer.echo(exports(get_settings(), chosen))


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


@models_app.command("reference")
def models_reference(
    name: str,
    data: Path = typer.Option(..., "--data", help="CSV or Parquet: the model's input columns (and the target)."),
    version: str | None = typer.Option(None, "--version", help="Version (default: the one NAME is served from, "
                                       "its VIGIL_MODELS alias or VIGIL_SERVE_ALIAS)."),
    target: str | None = typer.Option(None, "--target", help="The column holding the true label or value."),
    role: str = typer.Option("reference", "--role", help="reference (what drift compares traffic with) | "
                             "evaluation (what evaluation and the promotion gate score on)."),
) -> None:
    """Attach a dataset to a model version: checked against its signature, fingerprinted, stored with its run."""
    from vigil import model_data, registry

    if role not in model_data.ROLES:
        raise VigilError(f"--role must be one of {', '.join(model_data.ROLES)}")
    settings = get_settings()
    client = registry.connect()
    reference = registry.ModelReference(name, version=version) if version else registry.ModelReference(
        name, alias=settings.alias_of(name))
    found = registry.resolve(client, reference)
    frame = model_data.read_table(data)
    info, run_id = model_data.attach(client, name, found.version, frame, role=role,
                                     target=target, source=data.name)
    console.print(f"[green]{name} v{found.version}[/]: {role} dataset attached — {info.rows} rows, columns "
                  f"{', '.join(info.columns)}" + (f", target {target}" if target else "")
                  + f"; fingerprint {info.fingerprint}; stored in run {run_id} "
                  f"({model_data.ARTIFACT_DIR}/{role}.parquet)", highlight=False)


# The promotion gates of other packages: `model name = "module:function"`, each a vigil.registry.PromotionGate.
PROMOTION_GATES = "vigil.promotion_gates"
EVALUATIONS_EXPERIMENT = "evaluations"


def _promotion_gate(name: str) -> registry.PromotionGate | None:
    """The gate for the registered model NAME: the entry point named NAME, else the one named by NAME's role.

    Roles come from the settings (VIGIL_SENTIMENT_MODEL_NAME → `sentiment`, VIGIL_EMBEDDER_MODEL_NAME →
    `text-embedder`, which has no gate); any other model is a user's model, judged by the `model` gate. No entry
    point: no gate.
    """
    settings = get_settings()
    roles = {settings.sentiment_model_name: "sentiment", settings.embedder_model_name: "text-embedder",
             settings.reader_model_name: "rag-reader"}
    gates = entry_points(group=PROMOTION_GATES)
    for key in (name, roles.get(name, "model")):
        for entry in gates.select(name=key):
            gate: registry.PromotionGate = entry.load()
            return gate
    return None


def _record_alias_move(client: MlflowClient, move: registry.AliasMove, refusals: list[str] | None = None,
                       evidence: str = "offline") -> str:
    """A run in experiment `evaluations` for an alias move (or a refused one), linking the evaluations behind it.

    The evaluation runs are the ones the gate left on the version (`vigil.<alias>.evaluation_run_id`, and
    `vigil.<alias>.live_evaluation_run_id` for live evidence); for a forced promotion, the evaluation that refused
    it, if any. Only the kinds of evidence this promotion asked for are linked. Returns the run id, also tagged on
    the version.
    """
    from vigil import registry

    experiment_id = registry.experiment_id(EVALUATIONS_EXPERIMENT, uri=client.tracking_uri)
    version_tags = client.get_model_version(move.name, move.version).tags
    linked: dict[str, str] = {"vigil.evidence": evidence}
    for kind, prefix in (("offline", "evaluation"), ("live", "live_evaluation")):
        if evidence in (kind, "both"):
            linked[f"vigil.{prefix}_run_id"] = version_tags.get(f"vigil.{move.alias}.{prefix}_run_id", "")
            linked[f"vigil.{prefix}_verdict"] = version_tags.get(f"vigil.{move.alias}.{prefix}_verdict", "none")
    run = client.create_run(experiment_id, run_name=f"{move.action} {move.name} v{move.version} → @{move.alias}",
                            tags={
                                "vigil.eval.kind": "alias-move", "vigil.action": move.action,
                                "vigil.model": move.name, "vigil.model_version": move.version,
                                "vigil.alias": move.alias, "vigil.from_version": move.previous or "",
                                "vigil.reason": move.reason, "vigil.by": move.by, "vigil.at": move.at,
                                **linked, "vigil.refusals": "\n".join(refusals or [])[:5000],
                            })
    client.set_terminated(run.info.run_id)
    # Every decision is linked from the version it concerns: the move that happened, or the last refusal.
    kind = "refusal" if move.action == "refused" else "move"
    client.set_model_version_tag(move.name, move.version, f"vigil.{move.alias}.{kind}_run_id", run.info.run_id)
    return str(run.info.run_id)


@models_app.command("promote")
def models_promote(
    name: str,
    version: str | None = typer.Option(None, "--version", help="Version to promote (default: the challenger)."),
    to: str = typer.Option("champion", "--to", help="Alias to move."),
    reason: str = typer.Option("", "--reason", help="Why; recorded on the version."),
    force: bool = typer.Option(False, "--force", help="Override a refusing gate (needs --reason)."),
    data: str | None = typer.Option(None, "--data", help="What the gate scores both versions on: a CSV or Parquet "
                                    "file with --target (any model; default its attached evaluation dataset), or "
                                    "test | imdb | a sentence<TAB>label file (sentiment; default the policy's)."),
    target: str | None = typer.Option(None, "--target", help="The column of --data holding the true label or value."),
    evidence: str = typer.Option("offline", "--evidence", help="offline: the gate scores both versions on --data; "
                                 "live: judges them on the labelled requests the candidate answered as the shadow "
                                 "of the alias's holder (POST /feedback); both: both must pass."),
) -> None:
    """Point NAME@TO at a version once NAME's promotion gate agrees; record who, when, from where, why, and on
    what evidence (runs in MLflow experiment `evaluations`, linked from the version)."""
    from datetime import UTC, datetime

    from vigil import registry

    # MLflow would print a "View run" link per run the gate and the record create; the outcome below names them.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    if evidence not in ("offline", "live", "both"):
        raise VigilError(f"--evidence {evidence!r}: offline, live or both")
    client = registry.connect()
    gate = _promotion_gate(name)
    if gate is None and evidence != "offline":
        raise VigilError(f"{name} has no promotion gate, so no evidence can be judged for it")
    refused: list[tuple[str, list[str]]] = []  # (version, reasons), kept to record the refusal

    def recording_gate(gate_client: MlflowClient, gate_name: str, gate_version: str, alias: str,
                       gate_data: registry.GateData) -> list[str] | None:
        assert gate is not None
        refusals = gate(gate_client, gate_name, gate_version, alias, gate_data)
        if refusals:
            refused.append((gate_version, refusals))
        return refusals

    try:
        move = registry.promote(client, name, version, to=to, reason=reason, force=force,
                                gate=recording_gate if gate else None,
                                gate_data=registry.GateData(data=data, target=target,
                                                            evidence=cast(registry.Evidence, evidence)))
    except VigilError as error:
        if not refused:
            raise
        refused_version, refusals = refused[-1]
        try:
            previous: str | None = registry.resolve(client, registry.ModelReference(name, alias=to)).version
        except registry.ModelNotFound:
            previous = None
        attempt = registry.AliasMove(
            name=name, alias=to, version=refused_version, previous=previous,
            action="refused", reason=reason, by=registry.operator(),
            at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        _record_alias_move(client, attempt, refusals, evidence)
        raise VigilError(f"{error}\nTo promote anyway: vigil models promote {name} --version {refused_version} "
                         f"--to {to} --force --reason \"why\"") from None
    run_id = _record_alias_move(client, move, evidence=evidence)
    console.print(f"[green]{name}@{move.alias}[/] → v{move.version} (was v{move.previous or '-'}), by {move.by}")
    tags = client.get_model_version(name, move.version).tags
    verdict = tags.get(f"vigil.{move.alias}.evaluation_verdict")
    if force:
        console.print(f"[yellow]forced[/] past the gate: {move.reason}")
    elif gate is None:
        console.print(f"no promotion gate for {name}")
    elif verdict == "not-needed":
        console.print(f"gate: no comparison needed, {name} had no @{move.alias}")
    else:
        for kind, prefix, said in (("offline", "evaluation", "gate"), ("live", "live_evaluation", "live evidence")):
            if evidence in (kind, "both") and tags.get(f"vigil.{move.alias}.{prefix}_verdict") == "pass":
                console.print(f"{said}: pass (evaluation run {tags.get(f'vigil.{move.alias}.{prefix}_run_id')})")
    console.print(f"recorded as run {run_id} in MLflow experiment `{EVALUATIONS_EXPERIMENT}`")


@models_app.command("rollback")
def models_rollback(
    name: str,
    alias: str = typer.Option("champion", "--alias", help="Alias to move back."),
    reason: str = typer.Option("", "--reason", help="Why; recorded on the version."),
) -> None:
    """Point NAME@ALIAS back at the version it held before."""
    from vigil import registry

    client = registry.connect()
    move = registry.rollback(client, name, alias=alias, reason=reason)
    _record_alias_move(client, move)
    console.print(f"[yellow]{name}@{move.alias}[/] rolled back → v{move.version} (was v{move.previous})")


@app.command("up")
def stack_up(
    no_ui: bool = typer.Option(False, "--no-ui", help="Do not start the Evidently UI."),
) -> None:
    """MLflow, the models, the RAG corpus and the Evidently UI, then serve until Ctrl-C (which stops them)."""
    from vigil.up import up

    raise typer.Exit(up(get_settings(), console, evidently_ui=not no_ui))


def _mount_package_commands() -> None:
    for entry in entry_points(group="vigil.cli"):
        app.add_typer(entry.load(), name=entry.name)


# Library progress bars and chatter would drown the CLI's own progress; they stay available at DEBUG.
QUIET_LIBRARIES = {
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "TOKENIZERS_PARALLELISM": "false",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
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
        # Escaped: a message may quote a policy section ([live]) or a file's text, which rich would take for markup.
        console.print(f"[red]error:[/] {escape(str(error))}", highlight=False)
        sys.exit(error.exit_code)
    except typer.Abort:
        console.print("aborted")
        sys.exit(130)
    except Exception as error:
        # Usage errors: click's, or the copy of click typer bundles; both carry show() and an exit code (2).
        show, exit_code = getattr(error, "show", None), getattr(error, "exit_code", None)
        if callable(show) and isinstance(exit_code, int):
            show()
            sys.exit(exit_code)
        raise
    sys.exit(outcome if isinstance(outcome, int) else 0)


if __name__ == "__main__":
    main()
