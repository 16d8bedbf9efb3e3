"""`vigil serve`: the BentoML service over REST and gRPC, in the foreground."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import typer
from rich.console import Console

from vigil.settings import Settings, get_settings

console = Console()
app = typer.Typer(help="Serve the champion model over REST and gRPC.", invoke_without_command=True)


def _serving_account(settings: Settings) -> dict[str, str]:
    """The read-only account's variables for this home's MLflow server, set up first if MLflow answers."""
    from vigil import mlflow_auth, registry
    from vigil.errors import MlflowUnavailable, VigilError

    environment = mlflow_auth.environment_for(settings, mlflow_auth.Role.serving)
    if environment:
        try:
            registry.check_reachable(settings.mlflow_tracking_uri)
            mlflow_auth.provision_serving_account(settings, settings.mlflow_tracking_uri)
        except (MlflowUnavailable, VigilError) as error:
            # The services start from the model cache and follow the alias once MLflow answers.
            console.print(f"[yellow]warning:[/] {error}")
    return environment


@app.callback()
def serve(
    port: int | None = typer.Option(None, "--port", help="HTTP port (default VIGIL_HTTP_PORT)."),
    grpc_port: int | None = typer.Option(None, "--grpc-port", help="gRPC port (default VIGIL_GRPC_PORT)."),
    host: str | None = typer.Option(None, "--host", help="Interface (default VIGIL_SERVE_HOST)."),
) -> None:
    """Run `bentoml serve` for the Vigil API and model services until Ctrl-C."""
    from vigil import registry
    from vigil.api_token import api_token
    from vigil.credentials import ensure_private_dir

    settings = get_settings()
    api_token(settings)  # a weak VIGIL_API_TOKEN is refused here, before anything starts
    http_port = port or settings.http_port
    grpc = grpc_port or settings.grpc_port
    bind = host or settings.serve_host
    serving_account = _serving_account(settings)
    bentoml_home = os.environ.get("BENTOML_HOME") or str(ensure_private_dir(settings.home.resolve() / "bentoml"))
    env = {**os.environ, "VIGIL_GRPC_PORT": str(grpc), "VIGIL_HTTP_PORT": str(http_port), "VIGIL_SERVE_HOST": bind,
           "MLFLOW_TRACKING_URI": registry.tracking_uri(), "VIGIL_HOME": str(settings.home.resolve()),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "BENTOML_DO_NOT_TRACK": "True",
           # BentoML empties $BENTOML_HOME/prometheus_multiproc_dir whenever a server starts: with one BentoML home
           # for the machine, starting a second Vigil wiped the first one's metric files, and its /metrics froze.
           # Each Vigil home gets its own, unless the user chose a BentoML home.
           "BENTOML_HOME": bentoml_home,
           # The services read the registry and write traces; they never move an alias or register a version.
           **serving_account}
    if serving_account:
        env.pop("MLFLOW_TRACKING_TOKEN", None)  # a token would win over the serving account's password
    command = [sys.executable, "-m", "bentoml", "serve", "service.api:Vigil", "--host", bind,
               "--port", str(http_port)]
    served = ", ".join([f"{settings.sentiment_model_name}@{settings.serve_alias}",
                        *(f"{name}@{alias}" for name, alias in settings.served_models)])
    console.print(f"Vigil serving [bold]{served}[/]\n"
                  f"  REST  http://{bind}:{http_port}/predict   (OpenAPI: http://{bind}:{http_port}/api/docs)\n"
                  f"  OIP   http://{bind}:{http_port}/v2/models/{settings.sentiment_model_name}/infer\n"
                  f"  gRPC  {bind}:{grpc}  (inference.GRPCInferenceService)\n"
                  f"  /metrics /livez /readyz /status        Ctrl-C stops")
    process = subprocess.Popen(command, env=env)
    # A supervisor (Kubernetes, systemd, a test) stops this process with SIGTERM: BentoML gets it too and drains,
    # rather than living on without its parent and holding the ports.
    signal.signal(signal.SIGTERM, lambda signum, _frame: process.send_signal(signum))
    try:
        code = process.wait()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
    raise typer.Exit(code)


bento_app = typer.Typer(help="Package the champion as a Bento.", no_args_is_help=True)


@bento_app.command("build")
def bento_build(
    project_dir: str = typer.Option(".", "--project-dir", help="Folder holding bentofile.yaml."),
) -> None:
    """Put the champion into BentoML's model store and build a Bento that serves it without MLflow."""
    from pathlib import Path

    from service.bento import build_bento

    with console.status("building the Bento…"):
        built = build_bento(Path(project_dir).resolve())
    console.print(f"[green]built[/] {built.bento_tag} with model {built.model_tag} "
                  f"({built.labels['mlflow_model']} v{built.labels['mlflow_version']}@{built.labels['mlflow_alias']})\n"
                  f"serve it: bentoml serve {built.bento_tag}")
