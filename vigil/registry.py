"""MLflow registry access: the one health probe, clients, model references, experiments, and alias moves.

Aliases are the only way Vigil names a model (`sentiment@champion`); :func:`resolve` is the one place a reference
becomes a version. Every alias move is recorded as tags on the version it points to (who, when, from which
version, why) and in an alias history on the registered model, which is what rollback walks back through.

Nothing here changes MLflow's process-wide URIs: clients carry their URIs explicitly. The one exception is
:func:`use_for_fluent_api`, which a process that runs MLflow's fluent API (`mlflow.start_run`, ``log_model``)
calls once at start, because that API reads only the global URI.
"""

from __future__ import annotations

import base64
import getpass
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

import httpx
from pydantic import BaseModel, ValidationError

from vigil.credentials import mask_url
from vigil.errors import MlflowUnavailable, VigilError
from vigil.settings import get_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_LIMIT = 50
HEALTH_TIMEOUT_SECONDS = 3.0
# The experiment look-up answers in milliseconds from a live server; the bound is for a host that drops packets.
EXPERIMENT_TIMEOUT_SECONDS = 10.0


def tracking_uri() -> str:
    return get_settings().mlflow_tracking_uri


def is_server(uri: str) -> bool:
    """Whether ``uri`` names an MLflow tracking server (rather than a local file or database store)."""
    return uri.startswith(("http://", "https://"))


def check_reachable(uri: str | None = None, timeout: float = HEALTH_TIMEOUT_SECONDS) -> None:
    """Raise :class:`MlflowUnavailable` unless the tracking server answers its health check within ``timeout``.

    The one health probe of Vigil. A local store (not a server) has nothing to probe and passes.
    """
    uri = uri or tracking_uri()
    if not is_server(uri):
        return
    try:
        response = httpx.get(f"{uri.rstrip('/')}/health", timeout=timeout)
    except httpx.HTTPError as exc:
        raise MlflowUnavailable(uri, type(exc).__name__) from None
    if response.status_code != 200:
        raise MlflowUnavailable(uri, f"health check answered {response.status_code}")


def connect(uri: str | None = None, timeout: float = HEALTH_TIMEOUT_SECONDS) -> MlflowClient:
    """A client for the tracking and registry server ``uri`` (default: the configured one), once it answers.

    The probe comes first because MLflow's own client retries a refused connection for minutes before it fails.
    """
    from mlflow import MlflowClient

    uri = uri or tracking_uri()
    check_reachable(uri, timeout)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def use_for_fluent_api(uri: str | None = None) -> None:
    """Point MLflow's process-wide tracking and registry URIs at ``uri``; call once, at the start of a process.

    Only for MLflow's fluent API (`mlflow.start_run`, `mlflow.*.log_model(registered_model_name=...)`), which
    reads nothing but the global URI; everything else takes a client from :func:`connect`.
    """
    import mlflow

    uri = uri or tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)


def auth_headers() -> dict[str, str]:
    """The Authorization header MLflow's client would send, for Vigil's own HTTP calls to the same server.

    Read from the variables the MLflow client reads, so a secured server accepts Vigil from the same environment.
    """
    if token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return {"Authorization": f"Bearer {token}"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    return {}


# --- experiments -----------------------------------------------------------------------------------------------


class _Experiment(BaseModel):
    experiment_id: str
    lifecycle_stage: str = "active"


class _ExperimentByName(BaseModel):
    experiment: _Experiment


class _CreatedExperiment(BaseModel):
    experiment_id: str


def experiment_id(name: str, *, uri: str | None = None, timeout: float = EXPERIMENT_TIMEOUT_SECONDS) -> str:
    """The id of MLflow experiment ``name``, created when missing; the one get-or-create of Vigil.

    Against a server it takes at most a few round trips of ``timeout`` each, without retries (MLflow's client
    retries a refused connection for minutes; the tracing set-up of every process calls this at start). Safe
    when another process creates the experiment at the same time. Raises :class:`MlflowUnavailable` when the
    server does not answer, :class:`VigilError` when it refuses or the experiment is deleted.
    """
    uri = (uri or tracking_uri()).rstrip("/")
    if not is_server(uri):
        return _local_experiment_id(uri, name)

    def by_name(http: httpx.Client) -> str | None:
        response = http.get("/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": name})
        if response.status_code == 404:
            return None
        response.raise_for_status()
        experiment = _ExperimentByName.model_validate_json(response.content).experiment
        if experiment.lifecycle_stage != "active":
            raise VigilError(f"MLflow experiment {name!r} is deleted; restore it in the MLflow UI or use another name.")
        return experiment.experiment_id

    try:
        with httpx.Client(base_url=uri, timeout=timeout, headers=auth_headers()) as http:
            if (found := by_name(http)) is not None:
                return found
            created = http.post("/api/2.0/mlflow/experiments/create", json={"name": name})
            if created.status_code == 200:
                return _CreatedExperiment.model_validate_json(created.content).experiment_id
            # Another process may have created it between our look-up and our create.
            if (found := by_name(http)) is not None:
                return found
            created.raise_for_status()
            raise VigilError(f"MLflow at {mask_url(uri)} did not create experiment {name!r} ({created.status_code}).")
    except httpx.HTTPStatusError as error:
        raise VigilError(f"MLflow at {mask_url(uri)} answered {error.response.status_code} to "
                         f"{error.request.url.path}.") from None
    except httpx.HTTPError as error:
        raise MlflowUnavailable(uri, type(error).__name__) from None
    except ValidationError:
        raise VigilError(f"{mask_url(uri)} does not answer like an MLflow server (experiment {name!r}).") from None


def _local_experiment_id(uri: str, name: str) -> str:
    # A file or database store: no network to wait on, so MLflow's own client is bounded.
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name))
    except MlflowException:
        # Another process created it between our look-up and our create.
        again = client.get_experiment_by_name(name)
        if again is None:
            raise
        return str(again.experiment_id)


# --- model references ------------------------------------------------------------------------------------------


class ModelNotFound(VigilError):
    """The registry has no such alias or version."""


@dataclass(frozen=True)
class ModelReference:
    """A registered model by `name@alias` or `name/version` (both may start with ``models:/``)."""

    name: str
    alias: str | None = None
    version: str | None = None

    @classmethod
    def parse(cls, text: str, default_name: str | None = None) -> ModelReference:
        """Read ``text``; next to ``default_name`` a bare alias (`challenger`) or version (`7`) is accepted too."""
        text = text.strip().removeprefix("models:/")
        if "@" in text:
            name, _, alias = text.rpartition("@")
            return cls(name or _default(text, default_name), alias=alias)
        if "/" in text:
            name, _, version = text.rpartition("/")
            return cls(name or _default(text, default_name), version=version)
        if text.isdigit():
            return cls(_default(text, default_name), version=text)
        return cls(_default(text, default_name), alias=text)

    def __str__(self) -> str:
        return f"{self.name}@{self.alias}" if self.alias else f"{self.name}/{self.version}"


def _default(text: str, default_name: str | None) -> str:
    if not default_name:
        raise VigilError(f"{text!r}: give a model as NAME@ALIAS or NAME/VERSION.")
    return default_name


@dataclass(frozen=True)
class RegisteredVersion:
    """What a reference resolved to: the version, and the alias it was reached by (None for a version)."""

    name: str
    version: str
    alias: str | None
    run_id: str | None


def resolve(
    client: MlflowClient, reference: ModelReference | str, default_name: str | None = None
) -> RegisteredVersion:
    """The registry's version for ``reference`` (`name@alias`, `name/version`); the one alias resolver of Vigil.

    Raises :class:`ModelNotFound` when the alias or version does not exist, or the model is not readable by this
    account; other registry failures propagate.
    """
    from mlflow.exceptions import MlflowException

    ref = reference if isinstance(reference, ModelReference) else ModelReference.parse(reference, default_name)
    try:
        if ref.alias:
            found = client.get_model_version_by_alias(ref.name, ref.alias)
        elif ref.version and ref.version.isdigit():
            found = client.get_model_version(ref.name, ref.version)
        else:
            raise VigilError(f"{ref}: give a model as NAME@ALIAS or NAME/VERSION.")
    except MlflowException as error:
        if error.error_code == _UNREADABLE:
            raise ModelNotFound(f"{ref.name} is not registered, or this account may not read it (MLflow answered "
                                f"403); see `vigil models show {ref.name}`.") from None
        if error.error_code not in _NOT_FOUND:
            raise
        missing = f"no @{ref.alias}" if ref.alias else f"no version {ref.version}"
        raise ModelNotFound(f"{ref.name} has {missing}; see `vigil models show {ref.name}`.") from None
    return RegisteredVersion(ref.name, str(found.version), ref.alias, found.run_id or None)


# What MLflow answers for a missing model, version or alias (the alias look-up says "invalid parameter").
_NOT_FOUND = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}
# What MLflow's basic-auth app answers an account other than the admin for a model that does not exist (it looks up
# the model's permissions first): the same as for a model the account may not read, so both are "not found here".
_UNREADABLE = "PERMISSION_DENIED"


def _holder(client: MlflowClient, name: str, alias: str) -> RegisteredVersion | None:
    try:
        return resolve(client, ModelReference(name, alias=alias))
    except ModelNotFound:
        return None


# --- alias moves -----------------------------------------------------------------------------------------------


def operator() -> str:
    configured = get_settings().operator
    if configured:
        return configured
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _history(client: MlflowClient, name: str, alias: str) -> list[str]:
    tags = client.get_registered_model(name).tags
    raw = tags.get(f"vigil.history.{alias}", "[]")
    try:
        return [str(v) for v in json.loads(raw)]
    except json.JSONDecodeError:
        return []


@dataclass(frozen=True)
class AliasMove:
    name: str
    alias: str
    version: str
    previous: str | None
    action: str
    reason: str
    by: str
    at: str


def move_alias(
    client: MlflowClient,
    name: str,
    alias: str,
    version: str,
    *,
    reason: str,
    action: str = "promote",
    record_history: bool = True,
) -> AliasMove:
    """Point ``name@alias`` at ``version`` and record the move on the version and in the alias history."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(name, version)
    except MlflowException:
        raise VigilError(f"{name} has no version {version}.") from None
    current = _holder(client, name, alias)
    previous = current.version if current else None
    move = AliasMove(
        name=name,
        alias=alias,
        version=str(version),
        previous=str(previous) if previous is not None else None,
        action=action,
        reason=reason,
        by=operator(),
        at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    client.set_registered_model_alias(name, alias, str(version))
    prefix = f"vigil.{alias}"
    for key, value in {
        f"{prefix}.action": action,
        f"{prefix}.by": move.by,
        f"{prefix}.at": move.at,
        f"{prefix}.from_version": move.previous or "",
        f"{prefix}.reason": reason,
    }.items():
        client.set_model_version_tag(name, str(version), key, value)
    if record_history:
        history = _history(client, name, alias)
        if not history or history[-1] != str(version):
            history.append(str(version))
        client.set_registered_model_tag(name, f"vigil.history.{alias}", json.dumps(history[-HISTORY_LIMIT:]))
    return move


# What a promotion gate judges on: an offline evaluation, the live requests both versions answered, or both.
Evidence = Literal["offline", "live", "both"]


@dataclass(frozen=True)
class GateData:
    """The rows the promoter names for the gate to judge on (`--data`, `--target`); None: the gate's default — the
    policy's data for sentiment, the version's attached evaluation dataset for any other model. ``evidence``: offline
    (those rows), live (the labelled requests the candidate answered in the shadow of the alias's holder), or both."""

    data: str | None = None
    target: str | None = None
    evidence: Evidence = "offline"


# A promotion gate (client, name, version, alias, data) returns None to allow, or the reasons to refuse.
PromotionGate = Callable[["MlflowClient", str, str, str, GateData], "list[str] | None"]


def promote(
    client: MlflowClient,
    name: str,
    version: str | None = None,
    *,
    to: str = CHAMPION,
    reason: str = "",
    gate: PromotionGate | None = None,
    gate_data: GateData | None = None,
    force: bool = False,
) -> AliasMove:
    """Move ``to`` onto ``version`` (default: the challenger), after the gate agrees unless forced."""
    if version is None:
        challenger = _holder(client, name, CHALLENGER)
        if challenger is None:
            raise VigilError(f"{name} has no @{CHALLENGER} to promote; pass --version.")
        version = str(challenger.version)
    current = _holder(client, name, to)
    if current is not None and str(current.version) == str(version):
        raise VigilError(f"{name}@{to} is already version {version}.")
    if gate is not None and not force:
        refusals = gate(client, name, str(version), to, gate_data or GateData())
        if refusals:
            raise VigilError(f"promotion of {name} v{version} to @{to} refused:\n- " + "\n- ".join(refusals))
    if force and not reason:
        raise VigilError("--force needs --reason: say why the gate is overridden.")
    return move_alias(client, name, to, str(version), reason=reason or "manual promotion",
                      action="forced-promote" if force else "promote")


def rollback(client: MlflowClient, name: str, *, alias: str = CHAMPION, reason: str = "") -> AliasMove:
    """Point ``alias`` back at the version it held before the current one."""
    current = _holder(client, name, alias)
    if current is None:
        raise VigilError(f"{name} has no @{alias} to roll back.")
    history = _history(client, name, alias)
    while history and history[-1] == str(current.version):
        history.pop()
    if not history:
        raise VigilError(f"{name}@{alias} has no earlier version to roll back to (it is v{current.version}).")
    target = history[-1]
    move = move_alias(client, name, alias, target, reason=reason or "rollback", action="rollback",
                      record_history=False)
    client.set_registered_model_tag(name, f"vigil.history.{alias}", json.dumps(history))
    return move


def register_initial_aliases(client: MlflowClient, name: str, version: str, reason: str) -> list[AliasMove]:
    """A new version becomes the challenger, and the champion too when there is none yet."""
    moves = [move_alias(client, name, CHALLENGER, version, reason=reason, action="register")]
    if _holder(client, name, CHAMPION) is None:
        moves.append(move_alias(client, name, CHAMPION, version, reason="first version: no champion yet",
                                action="register"))
    return moves
