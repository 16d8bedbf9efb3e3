from __future__ import annotations

from pathlib import Path

import pytest

from vigil.settings import Settings, get_settings


def test_defaults_are_the_documented_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    # Integration fixtures of the same session export VIGIL_HOME and friends; defaults are about their absence.
    for variable in [v for v in os.environ if v.startswith("VIGIL_")] + ["MLFLOW_TRACKING_URI"]:
        monkeypatch.delenv(variable, raising=False)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (settings.mlflow_port, settings.http_port, settings.grpc_port) == (5000, 3000, 50051)
    assert str(settings.home) == ".vigil"
    assert settings.mlflow_tracking_uri == "http://127.0.0.1:5000"


def test_vigil_variables_and_mlflow_tracking_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_MLFLOW_PORT", "5123")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert get_settings().mlflow_tracking_uri == "http://127.0.0.1:5123"
    get_settings.cache_clear()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:80")
    assert get_settings().mlflow_tracking_uri == "http://mlflow.internal:80"


def test_secrets_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_API_TOKEN", "s3cret")
    shown = get_settings().masked()
    assert shown["api_token"] == "********"
    assert "s3cret" not in repr(shown)


def test_invalid_port_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_HTTP_PORT", "70000")
    with pytest.raises(ValueError, match="http_port"):
        get_settings()


def test_every_setting_is_documented_in_env_example() -> None:
    from tests.conftest import REPO_ROOT

    documented = (REPO_ROOT / ".env.example").read_text()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        variable = alias if isinstance(alias, str) else f"VIGIL_{name.upper()}"
        assert f"\n{variable}=" in documented, f"{variable} is missing from .env.example"
        assert field.description, f"{name} has no description"


def test_no_package_reads_a_vigil_variable_behind_settings_back() -> None:
    import re

    from tests.conftest import REPO_ROOT

    # An environment read of a VIGIL_ name anywhere but vigil/settings.py escapes validation and .env.example.
    direct = re.compile(r"""(environ\.get\(|environ\[|getenv\()\s*["']VIGIL_""")
    packages = ("vigil", "telemetry", "training", "service", "monitoring", "evaluations")
    offenders = [str(path.relative_to(REPO_ROOT)) for package in packages
                 for path in sorted((REPO_ROOT / package).rglob("*.py")) if direct.search(path.read_text())]
    assert offenders == []


def test_torch_threads_is_a_validated_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VIGIL_TORCH_THREADS", raising=False)
    assert get_settings().torch_threads == 1
    get_settings.cache_clear()
    monkeypatch.setenv("VIGIL_TORCH_THREADS", "0")
    with pytest.raises(ValueError, match="torch_threads"):
        get_settings()


def test_models_file_sets_one_model_limits_over_the_globals(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    models_file = tmp_path / "models.toml"
    models_file.write_text('[models."tips-tip"]\nbatch_max_size = 8\nmax_rows_per_request = 16\n'
                           '[models.sentiment]\nbatch_max_latency_ms = 50\n')
    monkeypatch.setenv("VIGIL_MODELS", "sentiment@champion,tips-tip@champion,tips-time@champion")
    monkeypatch.setenv("VIGIL_MODELS_FILE", str(models_file))
    monkeypatch.setenv("VIGIL_BATCH_MAX_SIZE", "32")
    settings = get_settings()
    tip = settings.limits_of("tips-tip")
    assert (tip.batch_max_size, tip.batch_max_latency_ms, tip.max_rows_per_request) == (8, 1000, 16)
    time = settings.limits_of("tips-time")  # no table: every limit from the globals
    assert (time.batch_max_size, time.batch_max_latency_ms, time.max_rows_per_request) == (32, 1000, 1024)
    assert settings.limits_of("sentiment").batch_max_latency_ms == 50


@pytest.mark.parametrize(("text", "refusal"), [
    ('[models.unknown]\nbatch_max_size = 8\n', "'unknown', which VIGIL_MODELS does not serve"),
    ('[models.sentiment]\nbatch_size = 8\n', r"may set only \['batch_max_latency_ms'"),
    ('[models.sentiment]\nbatch_max_size = 0\n', "batch_max_size must be a positive integer"),
    ('[models.sentiment\n', "VIGIL_MODELS_FILE"),
])
def test_models_file_mistakes_are_refused_at_start(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str,
                                                   refusal: str) -> None:
    models_file = tmp_path / "models.toml"
    models_file.write_text(text)
    monkeypatch.setenv("VIGIL_MODELS_FILE", str(models_file))
    with pytest.raises(ValueError, match=refusal):
        get_settings()
