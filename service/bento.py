"""Package the current champion into a Bento that serves with no MLflow at all.

The champion's MLflow model folder goes into BentoML's model store as `vigil-sentiment`, labelled with its MLflow
name, version, alias and run id; bentofile.yaml lists that model, so `bentoml build` packs it, and a served Bento
falls back to it when MLflow and the local cache are both absent. The version's digest record goes with it: its files
are checked against the registry's record before they are packed, and against the packed copy when they load.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from vigil import model_cache, model_digest, registry
from vigil.settings import get_settings

BENTO_MODEL_NAME = "vigil-sentiment"


@dataclass(frozen=True)
class BuiltBento:
    bento_tag: str
    model_tag: str
    labels: dict[str, str]


def bundle_champion() -> tuple[str, dict[str, str]]:
    """Copy the champion's MLflow model into BentoML's model store; returns (model tag, labels)."""
    import bentoml

    from service.model_store import BUNDLE_META, BundleMeta
    from vigil.sentiment_model import CLASSIFIER_PATH

    settings = get_settings()
    client = registry.connect()
    champion = registry.resolve(client, registry.ModelReference(settings.sentiment_model_name,
                                                                alias=settings.serve_alias))
    model_dir = model_cache.download_version(client, champion.name, champion.version, settings.model_cache_dir)
    manifest = model_digest.recorded(client, champion.name, champion.version)
    if manifest is not None:
        model_digest.check(model_dir / CLASSIFIER_PATH, manifest)  # a changed file is never packed
    meta = BundleMeta(name=champion.name, version=champion.version, alias=settings.serve_alias,
                      run_id=champion.run_id or "", manifest=manifest)
    labels = {"mlflow_model": meta.name, "mlflow_version": meta.version, "mlflow_alias": meta.alias,
              "mlflow_run_id": meta.run_id}
    with bentoml.models.create(BENTO_MODEL_NAME, labels=labels) as stored:
        target = Path(stored.path)
        shutil.copytree(model_dir, target, dirs_exist_ok=True)
        (target / BUNDLE_META).write_text(meta.model_dump_json(indent=2))
    return str(stored.tag), labels


def build_bento(project_dir: Path) -> BuiltBento:
    import bentoml

    model_tag, labels = bundle_champion()
    bento = bentoml.bentos.build_bentofile(str(project_dir / "bentofile.yaml"), build_ctx=str(project_dir),
                                           labels={"project": "vigil", **labels})
    return BuiltBento(str(bento.tag), model_tag, labels)


def packaged_model_dir() -> Path | None:
    """The champion packed with the Bento this process serves, or None when serving from source.

    BentoML records a Bento version in its server context only when it serves a built Bento; the Bento's manifest
    names the exact model it was built with (exported Bentos carry it, `bentoml import` restores it).
    """
    import bentoml
    from bentoml._internal.context import server_context

    version = server_context.bento_version
    if not version or version == "not available":
        return None
    try:
        bento = bentoml.get(f"{server_context.bento_name}:{version}")
        tag = next(m.tag for m in bento.info.all_models if m.tag.name == BENTO_MODEL_NAME)
        return Path(bentoml.models.get(tag).path)
    except (bentoml.exceptions.NotFound, StopIteration):
        return None
