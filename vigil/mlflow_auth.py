"""Who may change what is served: MLflow's `basic-auth` app on the managed server, and the accounts Vigil uses.

Without it, anyone who reaches the MLflow server can register a version or move ``sentiment@champion`` with one
REST call, and every model service follows that alias. With it (the default, ``VIGIL_MLFLOW_AUTH``):

- ``vigil mlflow up`` creates, once per home, two accounts and the Flask secret the auth app needs, kept in
  ``$VIGIL_HOME/mlflow/credentials.json`` (0600): **admin** — what every `vigil` command uses, the only account that
  may register versions and move aliases (promotion, rollback) — and **vigil-serving**, read-only on models, with
  EDIT on the traces experiment only (so it can ingest spans), which `vigil serve` gives the model services.
- MLflow's default permission is READ: every authenticated user reads every model; nobody but an experiment's or a
  model's owner (and the admin) writes it. Anonymous calls get 401, except ``/health`` and static UI files.
- The user's own clients and scripts authenticate as MLflow's client does, from ``MLFLOW_TRACKING_USERNAME`` and
  ``MLFLOW_TRACKING_PASSWORD``: ``eval "$(vigil mlflow credentials)"`` sets them.

A server Vigil does not manage (``MLFLOW_TRACKING_URI`` elsewhere) is the operator's to secure; Vigil then sends
whatever credentials the environment holds and never reads this home's file for it.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

from vigil.credentials import create_private_file, ensure_private_dir
from vigil.errors import VigilError
from vigil.settings import Settings

CREDENTIALS_FILE = "credentials.json"
AUTH_CONFIG_FILE = "basic_auth.ini"
AUTH_DATABASE_FILE = "basic_auth.db"
ADMIN_USERNAME = "admin"
SERVING_USERNAME = "vigil-serving"
# MLflow hashes passwords with scrypt; checking one costs tens of milliseconds. Every trace export authenticates,
# so successful checks are cached for a minute (a changed or deleted account is honoured on the worker that
# changed it at once, elsewhere within the minute: `auth_cache_ttl_seconds` in MLflow's basic_auth.ini).
AUTH_CACHE_SECONDS = 60
# The variables MLflow's client reads its credentials from, and the auth app's own.
USERNAME_VARIABLE = "MLFLOW_TRACKING_USERNAME"
PASSWORD_VARIABLE = "MLFLOW_TRACKING_PASSWORD"
TOKEN_VARIABLE = "MLFLOW_TRACKING_TOKEN"


class Role(StrEnum):
    admin = "admin"
    serving = "serving"


@dataclass(frozen=True)
class Account:
    username: str
    password: str


@dataclass(frozen=True)
class HomeCredentials:
    admin: Account
    serving: Account
    flask_secret_key: str  # signs the auth app's CSRF tokens; MLflow refuses to start the app without one

    def account(self, role: Role) -> Account:
        return self.admin if role is Role.admin else self.serving


def credentials_path(settings: Settings) -> Path:
    return settings.mlflow_dir / CREDENTIALS_FILE


def read_credentials(settings: Settings) -> HomeCredentials | None:
    path = credentials_path(settings)
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
        return HomeCredentials(Account(**raw["admin"]), Account(**raw["serving"]), str(raw["flask_secret_key"]))
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise VigilError(f"{path} is not Vigil's credentials file ({type(error).__name__}); "
                         "restore it, or remove it together with the auth database to start afresh.") from None


def ensure_credentials(settings: Settings) -> HomeCredentials:
    """This home's accounts, generated (strong random passwords, file 0600) the first time."""
    existing = read_credentials(settings)
    if existing is not None:
        return existing
    database = settings.mlflow_dir / AUTH_DATABASE_FILE
    if not settings.mlflow_auth_database_uri and database.exists():
        # The admin would be created with the new password only in an empty user store.
        raise VigilError(f"{database} holds MLflow's accounts but {credentials_path(settings)} is gone: "
                         "restore the credentials file, or remove the database to create new accounts.")
    ensure_private_dir(settings.mlflow_dir)
    created = HomeCredentials(
        Account(ADMIN_USERNAME, secrets.token_urlsafe(24)),
        Account(SERVING_USERNAME, secrets.token_urlsafe(24)),
        secrets.token_urlsafe(32),
    )
    create_private_file(credentials_path(settings)).write_text(json.dumps(asdict(created), indent=2))
    return created


def server_environment(settings: Settings) -> tuple[list[str], dict[str, str]]:
    """The arguments and environment that put the managed `mlflow server` behind basic auth ([], {} when off).

    The admin password and the secret go by environment, never on the command line; the auth app's
    configuration (its database URI may hold a password) is written 0600.
    """
    if not settings.mlflow_auth:
        return [], {}
    credentials = ensure_credentials(settings)
    database = settings.mlflow_auth_database_uri or f"sqlite:///{(settings.mlflow_dir / AUTH_DATABASE_FILE).resolve()}"
    config = create_private_file(settings.mlflow_dir / AUTH_CONFIG_FILE)
    config.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {database}\n"
        f"admin_username = {credentials.admin.username}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        f"auth_cache_ttl_seconds = {AUTH_CACHE_SECONDS}\n"
    )
    environment = {
        "MLFLOW_AUTH_CONFIG_PATH": str(config.resolve()),
        "MLFLOW_AUTH_ADMIN_PASSWORD": credentials.admin.password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": credentials.flask_secret_key,
    }
    return ["--app-name", "basic-auth"], environment


def manages(settings: Settings, uri: str | None = None) -> bool:
    """Whether ``uri`` (default: the configured tracking URI) is this home's own server, whose accounts it holds."""
    uri = (uri or settings.mlflow_tracking_uri).rstrip("/")
    own = {f"http://{settings.mlflow_host}:{settings.mlflow_port}"}
    if settings.mlflow_host in ("127.0.0.1", "localhost"):
        own |= {f"http://127.0.0.1:{settings.mlflow_port}", f"http://localhost:{settings.mlflow_port}"}
    from vigil.mlflow_server import read_state

    state = read_state(settings)
    if state is not None:
        own.add(state.uri.rstrip("/"))
    return uri in own


def environment_for(settings: Settings, role: Role) -> dict[str, str]:
    """The MLflow client variables for ``role`` on this home's server; {} when the server is not this home's."""
    credentials = read_credentials(settings) if manages(settings) else None
    if credentials is None:
        return {}
    account = credentials.account(role)
    return {USERNAME_VARIABLE: account.username, PASSWORD_VARIABLE: account.password}


def authenticate_process(settings: Settings, role: Role = Role.admin) -> None:
    """Make this process's MLflow client (and Vigil's own HTTP calls) use this home's ``role`` account.

    Credentials the environment already holds win for the admin role (a person who set their own keeps them);
    the serving role always replaces them, so that a service never runs with more than read access.
    """
    if role is Role.admin and (os.environ.get(USERNAME_VARIABLE) or os.environ.get(TOKEN_VARIABLE)):
        return
    environment = environment_for(settings, role)
    if environment and role is Role.serving:
        os.environ.pop(TOKEN_VARIABLE, None)
    os.environ.update(environment)


def exports(settings: Settings, role: Role = Role.admin) -> str:
    """Shell lines that give a client ``role``'s account on this home's server (for `vigil mlflow credentials`)."""
    credentials = read_credentials(settings)
    if credentials is None:
        raise VigilError(f"no MLflow accounts in {settings.mlflow_dir} yet: `vigil mlflow up` creates them "
                         "(with VIGIL_MLFLOW_AUTH=true, the default).")
    account = credentials.account(role)
    return (f"export {USERNAME_VARIABLE}={shlex.quote(account.username)} "
            f"{PASSWORD_VARIABLE}={shlex.quote(account.password)}")


def provision_serving_account(settings: Settings, uri: str) -> None:
    """As admin: the read-only serving account exists and may write spans into the traces experiment.

    Idempotent; run where the admin is at hand (`vigil mlflow up`, `vigil serve`) because the traces
    experiment's name is a setting of the serving run.
    """
    if not settings.mlflow_auth:
        return
    credentials = read_credentials(settings)
    if credentials is None or not manages(settings, uri):
        return
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.client import AuthServiceClient

    from vigil import registry

    saved = {key: os.environ.get(key) for key in (USERNAME_VARIABLE, PASSWORD_VARIABLE, TOKEN_VARIABLE)}
    os.environ.pop(TOKEN_VARIABLE, None)
    os.environ.update({USERNAME_VARIABLE: credentials.admin.username, PASSWORD_VARIABLE: credentials.admin.password})
    try:
        accounts = AuthServiceClient(uri)
        serving = credentials.serving
        try:
            accounts.create_user(serving.username, serving.password)
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        experiment_id = registry.experiment_id(settings.traces_experiment, uri=uri)
        try:
            accounts.grant_user_permission(serving.username, "experiment", experiment_id, "EDIT")
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    except MlflowException as error:
        raise VigilError(f"could not set up MLflow's serving account as {credentials.admin.username}: "
                         f"{error.message}") from None
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
