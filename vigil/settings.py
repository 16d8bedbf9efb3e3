"""Vigil's one settings object.

Every ``VIGIL_*`` variable is declared here, once, with its meaning and default; ``.env.example`` mirrors it.
Read settings through :func:`get_settings` (cached) so tests can clear the cache and override the environment.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


@dataclass(frozen=True)
class ModelLimits:
    """What one served model's batching and requests are held to (VIGIL_MODELS_FILE, else the global settings)."""

    batch_max_size: int
    batch_max_latency_ms: int
    max_rows_per_request: int  # pyfunc models; sentiment's requests are held to VIGIL_MAX_TEXTS_PER_REQUEST
    shadow_percent: float = 0.0  # share of requests also scored by the shadow alias's version (0-100)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VIGIL_", env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
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
    mlflow_auth: bool = Field(
        True, description="Put the managed MLflow server behind MLflow's basic-auth app (accounts under "
        "$VIGIL_HOME/mlflow, `vigil mlflow credentials`). Off: anyone who reaches it may move aliases."
    )
    mlflow_auth_database_uri: str = Field(
        "", description="Where the managed server keeps its accounts. Empty: sqlite under $VIGIL_HOME/mlflow."
    )

    serve_host: str = Field("127.0.0.1", description="Interface `vigil serve` binds HTTP and gRPC to.")
    http_port: int = Field(3000, ge=1, le=65535, description="HTTP port of `vigil serve`.")
    grpc_port: int = Field(50051, ge=1, le=65535, description="gRPC port of `vigil serve`.")

    seed: int = Field(42, description="Seed for splits, sampling and training.")
    sentiment_model_name: str = Field("sentiment", description="Registered name of the sentiment classifier.")
    embedder_model_name: str = Field("text-embedder", description="Registered name of the text encoder.")
    reader_model_name: str = Field("rag-reader", description="Registered name of the RAG span reader.")

    operator: str = Field(
        "", description="Who performs registry operations (recorded in tags). Empty: the OS user."
    )
    api_token: SecretStr = Field(SecretStr(""), description="Bearer token of the service's write endpoints (`POST "
                                 "/rag/documents`), at least 32 characters. Empty: one generated in "
                                 "$VIGIL_HOME/api_token.")

    # --- serving -------------------------------------------------------------------------------------------
    models: str = Field(
        "", description="The models `vigil serve` serves: a comma list of `name@alias`. Vigil's sentiment model "
        "(VIGIL_SENTIMENT_MODEL_NAME) is always served, by VIGIL_SERVE_ALIAS; every other entry is any MLflow pyfunc "
        "model with a signature, served by its own model service. Empty: the sentiment model alone (`sentiment@"
        "champion` with the other defaults)."
    )
    models_file: str = Field(
        "", description="TOML file of per-model limits: a table `[models.\"<name>\"]` per model of VIGIL_MODELS "
        "with any of batch_max_size, batch_max_latency_ms, max_rows_per_request, shadow_percent; the rest come from "
        "the settings of those names."
    )
    max_rows_per_request: int = Field(1024, ge=1, description="Most rows one request to a pyfunc model may carry.")
    serve_alias: str = Field("champion", description="Registry alias the service follows.")
    alias_poll_seconds: float = Field(30.0, gt=0, description="How often the service checks the alias.")
    shadow_percent: float = Field(
        0.0, ge=0, le=100, description="Share of requests (chosen from the request id, so a replay picks the same "
        "ones) also scored, off the request path, by the version under VIGIL_SHADOW_ALIAS; its answers go to the "
        "inference log only. Per model in VIGIL_MODELS_FILE (`shadow_percent`). 0: off, and no second model is "
        "loaded."
    )
    shadow_alias: str = Field("challenger", description="Registry alias whose version shadows the served one.")
    shadow_queue_size: int = Field(
        256, ge=1, description="Shadow jobs waiting per model; when full, new ones are dropped and counted "
        "(vigil_shadow_total{outcome=\"dropped\"}): shadow scoring only takes idle CPU."
    )
    max_texts_per_request: int = Field(256, ge=1, description="Most texts one request may carry.")
    max_text_chars: int = Field(10_000, ge=1, description="Most characters in one text.")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest request body accepted (REST), "
                                "and largest gRPC request message.")
    batch_max_size: int = Field(64, ge=1, description="Adaptive batching: largest batch the model service forms.")
    batch_max_latency_ms: int = Field(
        1000, ge=1, description="Adaptive batching: latency budget before a request is refused as overloaded."
    )
    model_calls_in_flight: int = Field(
        2, ge=1, description="Calls from the API worker to the model service at once; requests that arrive "
        "meanwhile share the next call (see service/coalescer.py)."
    )
    model_runtime: Literal["onnx", "torch"] = Field(
        "onnx", description="What runs the served classifier and the RAG encoder: ONNX Runtime (an export of the "
        "same network, checked against torch at load; torch when that fails) or torch."
    )
    onnx_threads: int = Field(
        0, ge=0, description="Intra-op threads of ONNX Runtime in the model service; 0: one per core. Unlike "
        "torch's OpenMP threads (VIGIL_TORCH_THREADS), they do not collapse when other processes want the cores "
        "(bench/RESULTS.md, serving)."
    )
    model_quantize: bool = Field(
        True, description="With VIGIL_MODEL_RUNTIME=onnx, serve a dynamic INT8 quantization of the classifier's "
        "graph when its macro-F1 on the version's own test split (its attached evaluation data) is within 0.005 of "
        "the float graph's; checked once per version, the verdict kept beside the ONNX files and shown in /status. "
        "Float otherwise, and for versions without evaluation data."
    )
    torch_threads: int = Field(
        1, ge=1, description="Intra-op threads of torch in each model and RAG service process (the classifier "
        "when VIGIL_MODEL_RUNTIME=torch, the RAG encoder on either runtime). One: torch's OpenMP threads collapse "
        "as soon as another process wants a core, and a server always shares its cores (bench/RESULTS.md, serving "
        "under contention)."
    )

    # --- tracing -------------------------------------------------------------------------------------------
    tracing: Literal["otlp", "console", "off"] = Field("otlp", description="Where spans go.")
    trace_sample_ratio: float = Field(
        1.0, ge=0, le=1, description="Share of new traces eligible for the uniform sample (tail sampling keeps "
        "failed and slow requests' traces whatever it says)."
    )
    trace_max_per_second: float = Field(
        1.0, ge=0, description="The uniform sample: ordinary new traces (neither failed nor slow) a process keeps per "
        "second, at most (after the ratio); 0: no limit. Every other ordinary trace is counted "
        "(vigil_traces_total) and dropped; the inference log still has every request."
    )
    trace_remote_max_per_second: float = Field(
        None, ge=0, validate_default=True, description="Traces a caller sent sampled (its `traceparent` flag) that a "
        "process keeps per second, at most, on a budget apart from the uniform sample's; 0: no limit. Empty: the same "
        "as VIGIL_TRACE_MAX_PER_SECOND, so a caller's flag cannot lift the budget. Over it the request's trace is "
        "kept only when it failed or was slow."
    )
    trace_slow_ms: float = Field(
        1000.0, gt=0, description="Tail sampling: a request whose server span lasts this long (milliseconds) or "
        "longer is slow, and its whole trace is kept."
    )
    trace_all: bool = Field(
        False, description="Keep every trace (no tail sampling; the ratio and the budgets are ignored): for a person "
        "who wants every request in the trace store and accepts what the store's ingestion costs."
    )
    traces_experiment: str = Field("vigil-traces", description="MLflow experiment that receives traces.")
    otlp_endpoint: str = Field(
        "", description="OTLP/HTTP traces endpoint. Empty: the MLflow server's /v1/traces. "
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT win."
    )
    environment: str = Field("local", description="deployment.environment of every span.")
    trace_raw_text: bool = Field(True, description="Put request text on spans (False: a hash).")
    span_queue_size: int = Field(2048, ge=1, description="Spans buffered for export; beyond it they are dropped.")
    export_timeout_seconds: float = Field(5.0, gt=0, description="Longest wait of one span export.")
    langsmith_api_key: SecretStr = Field(
        SecretStr(""), validation_alias="LANGSMITH_API_KEY", description="LangSmith key; empty: LangSmith off."
    )
    langsmith_endpoint: str = Field(
        "https://api.smith.langchain.com", validation_alias="LANGSMITH_ENDPOINT", description="LangSmith API."
    )
    langsmith_project: str = Field("vigil", validation_alias="LANGSMITH_PROJECT", description="LangSmith project.")

    # --- inference log -------------------------------------------------------------------------------------
    inference_log: bool = Field(True, description="Write every prediction to the inference log.")
    inference_log_url: str = Field(
        "", description="SQLAlchemy URL of the inference log. Empty: sqlite under $VIGIL_HOME."
    )
    inference_log_redaction: Literal["keep", "hash", "drop"] = Field(
        "keep", description="What the log keeps of request text."
    )
    inference_log_queue_size: int = Field(10_000, ge=1, description="Rows buffered before new ones are dropped.")
    inference_log_batch_size: int = Field(256, ge=1, description="Rows written per insert.")
    inference_log_flush_seconds: float = Field(0.5, gt=0, description="Longest a row waits to be written.")

    # --- RAG -----------------------------------------------------------------------------------------------
    milvus_uri: str = Field("", description="Milvus server URI. Empty: Milvus Lite under $VIGIL_HOME/milvus.")
    milvus_token: SecretStr = Field(SecretStr(""), description="Milvus / Zilliz token.")
    rag_collection: str = Field("vigil_documents", description="Milvus collection of document chunks.")
    rag_chunk_tokens: int = Field(200, ge=16, le=256, description="Chunk size in encoder tokens.")
    rag_chunk_overlap_tokens: int = Field(40, ge=0, description="Overlap between neighbouring chunks.")
    rag_top_k: int = Field(5, ge=1, le=50, description="Chunks retrieved per question by default.")
    rag_max_question_chars: int = Field(4000, ge=1, description="Longest question accepted.")
    # The reader by default: its spans answer the question (token F1 about four times the sentences'), at a few tens
    # of ms a query (bench/RESULTS.md, issue 18); the extractive generator answers until one is registered.
    generator: Literal["reader", "extractive", "openai"] = Field(
        "reader", description="RAG answer generator. reader: the span reader "
        "VIGIL_READER_MODEL_NAME@VIGIL_SERVE_ALIAS, followed like a served model; the extractive generator answers "
        "while there is none.")
    rag_reader_min_margin: float = Field(
        0.0, description="Least margin of the reader's best span over its \"no answer\" score; below it the "
        "extractive generator answers.")
    rag_reader_sentences: int = Field(
        1, ge=0, le=50, description="Sentences of the retrieved chunks the reader reads: those the extractive "
        "generator's word match ranks highest (its time grows with the tokens it reads).")
    rag_reader_context_sentences: int = Field(
        1, ge=0, le=10, description="Sentences either side of each chosen sentence, in its chunk, read with it.")
    rag_reader_whole_chunks: int = Field(
        0, ge=0, le=50, description="Retrieved chunks, best first, the reader reads whole instead (the sentences "
        "then come from the others).")
    llm_base_url: str = Field("", description="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1.")
    llm_model: str = Field("", description="Model name sent to the OpenAI-compatible endpoint.")
    llm_api_key: SecretStr = Field(SecretStr(""), description="API key of the OpenAI-compatible endpoint.")
    llm_timeout_seconds: float = Field(30.0, gt=0, description="Longest wait for a generation.")
    llm_context_tokens: int = Field(3000, ge=256, description="Context budget of the prompt.")

    # --- monitoring ----------------------------------------------------------------------------------------
    evidently_workspace: str = Field("", description="Evidently workspace path. Empty: $VIGIL_HOME/evidently.")
    evidently_url: str = Field("", description="Remote Evidently UI URL; when set, snapshots go there.")
    evidently_ui_port: int = Field(8000, ge=1, le=65535, description="Port of `vigil monitor ui`.")
    drift_min_rows: int = Field(100, ge=1, description="Fewest rows a drift verdict needs.")
    drift_embedding_sample: int = Field(1000, ge=10, description="Rows sampled for embedding drift.")
    alert_webhook: str = Field("", description="URL that receives JSON alerts.")
    token_budget_daily: int = Field(1_000_000, ge=0, description="Daily RAG token budget; 0 disables the alert.")
    token_prices_per_1k: dict[str, float] = Field(
        default_factory=lambda: {"extractive": 0.0},
        description="Price per 1000 tokens by generator model (JSON), for the cost estimate.",
    )

    # --- evaluation ----------------------------------------------------------------------------------------
    promotion_policy: Path = Field(
        Path("evaluations/policy.toml"), description="Thresholds the promotion gate applies."
    )

    _model_limits: dict[str, dict[str, int]] = PrivateAttr(default_factory=dict)

    @field_validator("trace_remote_max_per_second", mode="before")
    @classmethod
    def _remote_trace_cap_defaults_to_the_cap(cls, value: Any, info: ValidationInfo) -> Any:
        # Unset or empty: the cap of new traces, declared before this field and so already validated.
        if value is None or value == "":
            return info.data.get("trace_max_per_second", 0.0)
        return value

    @model_validator(mode="after")
    def _read_models_file(self) -> Settings:
        if not self.models_file:
            return self
        try:
            tables = tomllib.loads(Path(self.models_file).read_text(encoding="utf-8")).get("models", {})
        except (OSError, tomllib.TOMLDecodeError) as unreadable:
            raise ValueError(f"VIGIL_MODELS_FILE {self.models_file}: {unreadable}") from None
        served = {self.sentiment_model_name, *(name for name, _ in self.served_models)}
        allowed = {limit.name for limit in fields(ModelLimits)}
        for name, limits in tables.items():
            if name not in served:
                raise ValueError(f"VIGIL_MODELS_FILE configures {name!r}, which VIGIL_MODELS does not serve")
            if not isinstance(limits, dict) or set(limits) - allowed:
                raise ValueError(f"VIGIL_MODELS_FILE [models.{name!r}] may set only {sorted(allowed)}")
            for key, value in limits.items():
                if key == "shadow_percent":
                    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 100:
                        raise ValueError(f"VIGIL_MODELS_FILE [models.{name!r}] shadow_percent must be 0 to 100")
                    continue
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise ValueError(f"VIGIL_MODELS_FILE [models.{name!r}] {key} must be a positive integer")
        self._model_limits = tables
        return self

    def limits_of(self, model_name: str) -> ModelLimits:
        """The batching, request and shadow limits of one served model: its VIGIL_MODELS_FILE table over the
        globals."""
        own = self._model_limits.get(model_name, {})
        return ModelLimits(**{limit.name: own.get(limit.name, getattr(self, limit.name))
                              for limit in fields(ModelLimits)})

    @model_validator(mode="after")
    def _resolve_tracking_uri(self) -> Settings:
        env_uri = os.environ.get("MLFLOW_TRACKING_URI", "")
        if env_uri:
            self.mlflow_tracking_uri = env_uri
        elif not self.mlflow_tracking_uri:
            self.mlflow_tracking_uri = f"http://{self.mlflow_host}:{self.mlflow_port}"
        return self

    @property
    def served_models(self) -> list[tuple[str, str]]:
        """(name, alias) of every model in VIGIL_MODELS other than Vigil's sentiment model, in order."""
        served: list[tuple[str, str]] = []
        for entry in (part.strip() for part in self.models.split(",")):
            if not entry:
                continue
            name, _, alias = entry.partition("@")
            name, alias = name.strip(), alias.strip() or "champion"
            if not name:
                raise ValueError(f"VIGIL_MODELS entry {entry!r} names no model")
            if name != self.sentiment_model_name and name not in (n for n, _ in served):
                served.append((name, alias))
        return served

    def alias_of(self, model_name: str) -> str:
        """The alias ``model_name`` is served from: its VIGIL_MODELS entry, else VIGIL_SERVE_ALIAS."""
        return dict(self.served_models).get(model_name, self.serve_alias)

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def model_cache_dir(self) -> Path:
        return self.home / "models"

    @property
    def inference_log_sqlalchemy_url(self) -> str:
        return self.inference_log_url or f"sqlite:///{(self.home / 'inference_log.db').resolve()}"

    @property
    def milvus_target(self) -> str:
        return self.milvus_uri or str((self.home / "milvus" / "vigil.db").resolve())

    @property
    def evidently_workspace_path(self) -> Path:
        return Path(self.evidently_workspace) if self.evidently_workspace else self.home / "evidently"

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
