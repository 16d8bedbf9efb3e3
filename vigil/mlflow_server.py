"""Start, stop and inspect the embedded `mlflow server` of one VIGIL_HOME.

The server runs as its own process group in the background; a state file under ``$VIGIL_HOME/mlflow`` records
its pid, port and URI, so that several homes side by side run independent servers.

The backend store URI may hold a database password. It reaches the server through its environment
(``MLFLOW_BACKEND_STORE_URI``, readable by the same user only) rather than its command line (readable by anyone in
``ps``), and the state file records it masked. What the server and Vigil write under ``$VIGIL_HOME`` is private to
its owner (see :mod:`vigil.credentials`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from vigil import mlflow_auth, registry
from vigil.credentials import create_private_file, ensure_private_dir, mask_url
from vigil.errors import MlflowUnavailable, VigilError
from vigil.settings import Settings

STATE_FILE = "server.json"
LOG_FILE = "server.log"
# The variable `mlflow server` reads --backend-store-uri from (`mlflow server --help`).
BACKEND_STORE_URI_VARIABLE = "MLFLOW_BACKEND_STORE_URI"
# What the server creates (its SQLite store, artifacts) is readable by the owner only, as Vigil's own files are.
SERVER_UMASK = 0o077


@dataclass(frozen=True)
class ServerState:
    pid: int
    port: int
    host: str
    uri: str
    backend_store_uri: str  # masked: for people to read, not to connect with
    artifacts_destination: str
    log_file: str
    auth: bool = False  # behind MLflow's basic-auth app (a state file from before auth existed says False)


def state_path(settings: Settings) -> Path:
    return settings.mlflow_dir / STATE_FILE


def read_state(settings: Settings) -> ServerState | None:
    path = state_path(settings)
    if not path.exists():
        return None
    try:
        state = ServerState(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError):
        return None
    # A state file written before the URIs were masked on write still holds them as they were.
    return replace(state, backend_store_uri=mask_url(state.backend_store_uri),
                   artifacts_destination=mask_url(state.artifacts_destination))


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of this process still answers kill(0); reap it if it is one of ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _healthy(uri: str) -> bool:
    try:
        registry.check_reachable(uri, timeout=2.0)
    except MlflowUnavailable:
        return False
    return True


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


@dataclass(frozen=True)
class ServerCommand:
    """How to start this home's `mlflow server`: its argv, and what to add to its environment."""

    argv: list[str]
    environment: dict[str, str]  # the backend store URI, the admin password, secrets: never on the command line
    backend_store_uri: str
    artifacts_destination: str


def server_command(settings: Settings, port: int) -> ServerCommand:
    mlflow_dir = settings.mlflow_dir.resolve()
    backend = settings.mlflow_backend_store_uri or f"sqlite:///{mlflow_dir / 'mlflow.db'}"
    artifacts = settings.mlflow_artifacts_destination or str(mlflow_dir / "artifacts")
    argv = [
        sys.executable, "-m", "mlflow", "server",
        "--artifacts-destination", artifacts,
        "--serve-artifacts",
        "--host", settings.mlflow_host,
        "--port", str(port),
        "--workers", "1",
    ]
    auth_arguments, auth_environment = mlflow_auth.server_environment(settings)
    return ServerCommand(argv + auth_arguments, {BACKEND_STORE_URI_VARIABLE: backend, **auth_environment},
                         backend, artifacts)


def status(settings: Settings) -> tuple[ServerState | None, str]:
    """The recorded server and one word for it: running, unhealthy, stopped."""
    state = read_state(settings)
    if state is None or not process_alive(state.pid):
        return state, "stopped"
    return state, "running" if _healthy(state.uri) else "unhealthy"


def up(settings: Settings, port: int | None = None) -> tuple[ServerState, bool]:
    """Start the server unless this home's is already running; returns (state, started_now)."""
    state, word = status(settings)
    if state is not None and word != "stopped":
        return state, False
    port = port or settings.mlflow_port
    host = settings.mlflow_host
    if port_in_use(host, port):
        raise VigilError(
            f"port {port} on {host} is taken by another process, so MLflow cannot start there. "
            f"Free it, or choose another port: VIGIL_MLFLOW_PORT=5001 (or `vigil mlflow up --port 5001`)."
        )
    ensure_private_dir(settings.home)
    ensure_private_dir(settings.mlflow_dir / "artifacts")
    command = server_command(settings, port)
    log_path = create_private_file(settings.mlflow_dir.resolve() / LOG_FILE)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, **command.environment}, umask=SERVER_UMASK,
        )
    uri = f"http://{host}:{port}"
    state = ServerState(process.pid, port, host, uri, mask_url(command.backend_store_uri),
                        mask_url(command.artifacts_destination), str(log_path), auth=settings.mlflow_auth)
    create_private_file(state_path(settings)).write_text(json.dumps(asdict(state), indent=2))
    deadline = time.monotonic() + settings.mlflow_start_timeout_seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            state_path(settings).unlink(missing_ok=True)
            raise VigilError(f"mlflow server exited with code {process.returncode}; see {log_path}.")
        if _healthy(uri):
            mlflow_auth.provision_serving_account(settings, uri)
            return state, True
        time.sleep(0.5)
    _terminate(process.pid)
    state_path(settings).unlink(missing_ok=True)
    raise VigilError(
        f"mlflow server did not become healthy within {settings.mlflow_start_timeout_seconds:.0f}s; "
        f"see {log_path}."
    )


def _terminate(pid: int, grace_seconds: float = 15.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return


def down(settings: Settings) -> ServerState | None:
    """Stop this home's server; returns what was stopped, or None when nothing ran."""
    state = read_state(settings)
    if state is None:
        return None
    running = process_alive(state.pid)
    if running:
        _terminate(state.pid)
    state_path(settings).unlink(missing_ok=True)
    return state if running else None
