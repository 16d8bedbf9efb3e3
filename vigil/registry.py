"""MLflow registry access: reachability, aliases with an audit trail, promotion and rollback.

Aliases are the only way Vigil names a model (`sentiment@champion`); every alias move is recorded as tags on the
version it points to (who, when, from which version, why) and in an alias history on the registered model, which
is what rollback walks back through.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import httpx

from vigil.errors import MlflowUnavailable, VigilError
from vigil.settings import get_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_LIMIT = 50


def tracking_uri() -> str:
    return get_settings().mlflow_tracking_uri


def check_reachable(uri: str | None = None, timeout: float = 3.0) -> None:
    """Raise :class:`MlflowUnavailable` unless an HTTP tracking server answers its health check."""
    uri = uri or tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    try:
        response = httpx.get(f"{uri.rstrip('/')}/health", timeout=timeout)
    except httpx.HTTPError as exc:
        raise MlflowUnavailable(uri, type(exc).__name__) from None
    if response.status_code != 200:
        raise MlflowUnavailable(uri, f"health check answered {response.status_code}")


def connect(uri: str | None = None) -> MlflowClient:
    """A client for the configured server, after checking that it answers."""
    import mlflow
    from mlflow import MlflowClient

    uri = uri or tracking_uri()
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, created when missing; safe when another process creates it at the same time."""
    from mlflow.exceptions import MlflowException

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


def operator() -> str:
    configured = get_settings().operator
    if configured:
        return configured
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


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
    current = alias_version(client, name, alias)
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


# A promotion gate (the evaluation issue plugs one in) returns None to allow, or the reasons to refuse.
PromotionGate = Callable[["MlflowClient", str, str, str], "list[str] | None"]


def promote(
    client: MlflowClient,
    name: str,
    version: str | None = None,
    *,
    to: str = CHAMPION,
    reason: str = "",
    gate: PromotionGate | None = None,
    force: bool = False,
) -> AliasMove:
    """Move ``to`` onto ``version`` (default: the challenger), after the gate agrees unless forced."""
    if version is None:
        challenger = alias_version(client, name, CHALLENGER)
        if challenger is None:
            raise VigilError(f"{name} has no @{CHALLENGER} to promote; pass --version.")
        version = str(challenger.version)
    current = alias_version(client, name, to)
    if current is not None and str(current.version) == str(version):
        raise VigilError(f"{name}@{to} is already version {version}.")
    if gate is not None and not force:
        refusals = gate(client, name, str(version), to)
        if refusals:
            raise VigilError(f"promotion of {name} v{version} to @{to} refused:\n- " + "\n- ".join(refusals))
    if force and not reason:
        raise VigilError("--force needs --reason: say why the gate is overridden.")
    return move_alias(client, name, to, str(version), reason=reason or "manual promotion",
                      action="forced-promote" if force else "promote")


def rollback(client: MlflowClient, name: str, *, alias: str = CHAMPION, reason: str = "") -> AliasMove:
    """Point ``alias`` back at the version it held before the current one."""
    current = alias_version(client, name, alias)
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
    if alias_version(client, name, CHAMPION) is None:
        moves.append(move_alias(client, name, CHAMPION, version, reason="first version: no champion yet",
                                action="register"))
    return moves
