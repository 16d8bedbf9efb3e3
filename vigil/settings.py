"""Vigil's one settings object.

Every ``VIGIL_*`` variable is declared here, once, with its meaning and default; ``.env.example`` mirrors it.
Read settings through :func:`get_settings` (cached) so tests can clear the cache and override the environment.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VIGIL_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    home: Path = Field(Path(".vigil"), description="Runtime state: MLflow db and artifacts, caches, logs.")

    mlflow_port: int = Field(5000, ge=1, le=65535, description="Port of the MLflow server `vigil mlflow up` starts.")
    mlflow_host: str = Field("127.0.0.1", description="Interface the managed MLflow server binds to.")
    mlflow_tracking_uri: str = Field(
        "",
        description="Tracking/registry URI. Empty: http://<mlflow_host>:<mlflow_port>. "
        "The standard MLFLOW_TRACKING_URI wins over it.",
    )
    mlflow_backend_store_uri: str = Field(
        "", description="Backend store of the managed server. Empty: sqlite under $VIGIL_HOME/mlflow."
    )
    mlflow_artifacts_destination: str = Field(
        "", description="Artifact root the managed server proxies. Empty: $VIGIL_HOME/mlflow/artifacts."
    )
    mlflow_start_timeout_seconds: float = Field(90.0, gt=0, description="How long `mlflow up` waits for health.")

    http_port: int = Field(3000, ge=1, le=65535, description="HTTP port of `vigil serve`.")
    grpc_port: int = Field(50051, ge=1, le=65535, description="gRPC port of `vigil serve`.")

    seed: int = Field(42, description="Seed for splits, sampling and training.")
    sentiment_model_name: str = Field("sentiment", description="Registered name of the sentiment classifier.")
    embedder_model_name: str = Field("text-embedder", description="Registered name of the text encoder.")

    operator: str = Field(
        "", description="Who performs registry operations (recorded in tags). Empty: the OS user."
    )
    api_token: SecretStr = Field(SecretStr(""), description="Token for write endpoints of the service.")

    @model_validator(mode="after")
    def _resolve_tracking_uri(self) -> Settings:
        env_uri = os.environ.get("MLFLOW_TRACKING_URI", "")
        if env_uri:
            self.mlflow_tracking_uri = env_uri
        elif not self.mlflow_tracking_uri:
            self.mlflow_tracking_uri = f"http://{self.mlflow_host}:{self.mlflow_port}"
        return self

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def model_cache_dir(self) -> Path:
        return self.home / "models"

    def masked(self) -> dict[str, Any]:
        """The effective settings as plain values, secrets masked, for `vigil config`."""
        shown: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                shown[name] = "********" if value.get_secret_value() else ""
            else:
                shown[name] = str(value) if isinstance(value, Path) else value
        return shown


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
