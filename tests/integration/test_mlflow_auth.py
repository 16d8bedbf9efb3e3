"""The managed MLflow server asks who is calling: anonymous callers change nothing, the serving account reads.

Against the session's real `mlflow server` (started by `vigil mlflow up`, so with MLflow's basic-auth app).
"""

from __future__ import annotations

import shlex
import stat

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from tests.integration.conftest import MODEL, VigilEnv
from vigil import registry


def account(vigil_env: VigilEnv, role: str) -> tuple[str, str]:
    words = shlex.split(vigil_env.run("mlflow", "credentials", "--role", role).stdout)
    variables = dict(word.split("=", 1) for word in words[1:])
    return variables["MLFLOW_TRACKING_USERNAME"], variables["MLFLOW_TRACKING_PASSWORD"]


def one_span() -> bytes:
    span = Span(trace_id=bytes(range(16)), span_id=bytes(range(8)), name="auth-test",
                start_time_unix_nano=1_700_000_000_000_000_000, end_time_unix_nano=1_700_000_000_100_000_000)
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])]).SerializeToString()


def traces_experiment_id(vigil_env: VigilEnv) -> str:
    from mlflow import MlflowClient

    experiment = MlflowClient(vigil_env.tracking_uri).get_experiment_by_name("vigil-traces")
    assert experiment is not None, "`vigil mlflow up` sets up the traces experiment for the serving account"
    return str(experiment.experiment_id)


def calls(vigil_env: VigilEnv) -> dict[str, tuple[str, str, dict[str, object]]]:
    """One call of each kind that changes or reveals what is served: method, path, request keywords.

    The alias move names the version that holds the alias already: should it pass, other tests see no change.
    """
    from mlflow import MlflowClient

    experiment_id = traces_experiment_id(vigil_env)
    champion = MlflowClient(vigil_env.tracking_uri).get_model_version_by_alias(MODEL, "champion").version
    return {
        "read the registry": ("GET", "/api/2.0/mlflow/registered-models/get", {"params": {"name": MODEL}}),
        "move an alias": ("POST", "/api/2.0/mlflow/registered-models/alias",
                          {"json": {"name": MODEL, "alias": "champion", "version": champion}}),
        "register a version": ("POST", "/api/2.0/mlflow/model-versions/create",
                               {"json": {"name": MODEL, "source": "mlflow-artifacts:/0/forged/artifacts/model"}}),
        "list artifacts": ("GET", "/api/2.0/mlflow-artifacts/artifacts", {}),
        "ingest spans": ("POST", "/v1/traces", {
            "content": one_span(),
            "headers": {"content-type": "application/x-protobuf", "x-mlflow-experiment-id": experiment_id}}),
    }


def send(vigil_env: VigilEnv, call: tuple[str, str, dict[str, object]],
         auth: tuple[str, str] | None = None) -> httpx.Response:
    method, path, keywords = call
    return httpx.request(method, vigil_env.tracking_uri + path, auth=auth, timeout=30, **keywords)  # type: ignore[arg-type]


def test_anonymous_callers_are_refused_everything_but_health(vigil_env: VigilEnv, registry_client: object) -> None:
    answers = {what: send(vigil_env, call).status_code for what, call in calls(vigil_env).items()}
    assert answers == dict.fromkeys(answers, 401)
    assert httpx.get(f"{vigil_env.tracking_uri}/health", timeout=10).status_code == 200


def test_the_serving_account_reads_models_and_writes_spans_but_changes_nothing_served(
    vigil_env: VigilEnv, registry_client: object,
) -> None:
    serving = account(vigil_env, "serving")
    answers = {what: send(vigil_env, call, serving).status_code for what, call in calls(vigil_env).items()}
    assert answers == {"read the registry": 200, "move an alias": 403, "register a version": 403,
                       "list artifacts": 200, "ingest spans": 200}
    wrong = (serving[0], serving[1] + "x")
    assert send(vigil_env, calls(vigil_env)["read the registry"], wrong).status_code == 401


def test_the_serving_account_finds_no_model_where_none_is_registered(
    vigil_env: VigilEnv, registry_client: object, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # MLflow's auth app answers 403, not 404, to any account but the admin for a model nobody registered (as the RAG
    # service meets `rag-reader` until its first training ends): that is "not found", not "MLflow unreachable".
    from mlflow import MlflowClient

    username, password = account(vigil_env, "serving")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    client = MlflowClient(vigil_env.tracking_uri, registry_uri=vigil_env.tracking_uri)
    assert registry.resolve(client, f"{MODEL}@champion").name == MODEL
    with pytest.raises(registry.ModelNotFound, match="not registered, or this account may not read it"):
        registry.resolve(client, "never-registered@champion")


def test_the_admin_moves_aliases_and_its_secrets_stay_private(vigil_env: VigilEnv) -> None:
    admin = account(vigil_env, "admin")
    assert admin[0] == "admin"
    answer = send(vigil_env, calls(vigil_env)["move an alias"], admin)
    assert answer.status_code == 200, answer.text
    mlflow_dir = vigil_env.home / "mlflow"
    for name in ("credentials.json", "basic_auth.ini", "basic_auth.db", "server.json"):
        assert stat.S_IMODE((mlflow_dir / name).stat().st_mode) == 0o600, name
    for name in ("server.json", "basic_auth.ini", "server.log"):
        assert admin[1] not in (mlflow_dir / name).read_text(errors="replace"), name


def test_vigil_commands_authenticate_without_anything_exported(vigil_env: VigilEnv) -> None:
    bare = {key: "" for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    listed = vigil_env.run("models", "list", extra_env=bare)
    assert MODEL in listed.stdout
