"""Fine-tune MiniLM + a linear head on the sentiment sentences and log everything to MLflow.

Fine-tuning rather than a frozen encoder: it scores clearly higher on the test split than logistic regression
on frozen MiniLM embeddings (figures: bench/RESULTS.md, "Sentiment model"). Metrics and the confusion matrix
come from :mod:`training.metrics` and :mod:`training.plots`, which ``vigil eval`` uses too.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from training.data import (
    DEFAULT_DATA_DIR,
    DEFAULT_DOMAINS,
    DOMAIN_FILES,
    SplitParams,
    fingerprint,
    limit_stratified,
    load_sentiment,
    read_extra,
    training_split,
)
from training.metrics import Predictions, confusion_counts, point_metrics
from training.plots import confusion_figure
from vigil import model_digest, registry
from vigil.model_data import log_dataset
from vigil.sentiment_model import CLASSIFIER_ARTIFACT, LABELS, SentimentClassifier, SentimentPyfunc
from vigil.settings import get_settings
from vigil.text_features import describe_all

EXPERIMENT = "sentiment"
DRIFT_REFERENCE_PATH = "drift_reference"
DRIFT_REFERENCE_FILE = "reference.parquet"


@dataclass
class TrainConfig:
    epochs: int = 3
    batch_size: int = 32
    encoder_lr: float = 3e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    seed: int = 42
    limit: int | None = None
    domains: list[str] = field(default_factory=lambda: list(DEFAULT_DOMAINS))
    reference_size: int = 1000
    data_dir: Path = DEFAULT_DATA_DIR
    # Labelled rows added to the training split only (`vigil feedback export` writes them); the split itself, and so
    # every evaluation that rebuilds it from the run's parameters, stays as the parameters say.
    extra: Path | None = None

    @property
    def split_params(self) -> SplitParams:
        return SplitParams(seed=self.seed, domains=tuple(self.domains), limit=self.limit)


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    version: str
    metrics: dict[str, float]
    aliases: list[str]


# Called as (phase, completed, total) so the CLI can draw progress without this module knowing about rich.
ProgressCallback = Callable[[str, int, int], None]


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, prefix: str) -> dict[str, float]:
    """Accuracy, macro-F1 and (with both labels present) ROC-AUC, each name with ``prefix``."""
    values = point_metrics(Predictions.from_probabilities(labels, probabilities))
    return {f"{prefix}{name}": value for name in ("accuracy", "macro_f1", "roc_auc")
            if (value := values[name]) is not None}


def drift_reference(classifier: SentimentClassifier, train: pd.DataFrame, size: int, seed: int) -> pd.DataFrame:
    """A sample of training inputs with label, prediction, score, text descriptors and embedding."""
    sample = train.sample(n=min(size, len(train)), random_state=seed).reset_index(drop=True)
    predictions, embeddings = classifier.predict_with_embeddings(sample["text"].tolist())
    reference = pd.concat([sample[["text", "label", "domain"]], describe_all(sample["text"])], axis=1)
    reference["label"] = [LABELS[int(v)] for v in sample["label"]]
    reference["prediction"] = [p.label for p in predictions]
    reference["score"] = [p.score for p in predictions]
    reference["embedding"] = [row.astype(np.float32).tolist() for row in embeddings]
    return reference


def fine_tune(
    classifier: SentimentClassifier,
    train: pd.DataFrame,
    validation: pd.DataFrame,
    config: TrainConfig,
    on_epoch: Callable[[int, dict[str, float]], object],
    progress: ProgressCallback | None = None,
) -> None:
    import torch

    network = classifier.network
    optimizer = torch.optim.AdamW(
        [
            {"params": network.encoder.parameters(), "lr": config.encoder_lr},
            {"params": network.head.parameters(), "lr": config.head_lr},
        ],
        weight_decay=config.weight_decay,
    )
    texts = train["text"].tolist()
    targets = torch.tensor(train["label"].to_numpy(), dtype=torch.long)
    generator = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = (len(texts) + config.batch_size - 1) // config.batch_size
    total_steps = steps_per_epoch * config.epochs
    step = 0
    for epoch in range(config.epochs):
        network.train()
        order = torch.randperm(len(texts), generator=generator)
        losses: list[float] = []
        for start in range(0, len(texts), config.batch_size):
            index = order[start : start + config.batch_size]
            batch = classifier.tokenize([texts[i] for i in index])
            logits, _ = network(batch["input_ids"], batch["attention_mask"])
            loss = torch.nn.functional.cross_entropy(logits, targets[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.item()))
            step += 1
            if progress:
                progress("training", step, total_steps)
        probabilities = classifier.predict_proba(validation["text"].tolist())
        metrics = {"train_loss": float(np.mean(losses))}
        metrics.update(classification_metrics(validation["label"].to_numpy(), probabilities, "val_"))
        on_epoch(epoch, metrics)


def train_sentiment(config: TrainConfig, progress: ProgressCallback | None = None) -> TrainResult:
    """Train, evaluate, log and register one version of the sentiment model; returns where it landed."""
    import mlflow
    import torch
    from mlflow.models import infer_signature

    settings = get_settings()
    client = registry.connect()
    # The run below is logged through MLflow's fluent API, which reads only the process-wide URI.
    registry.use_for_fluent_api(client.tracking_uri)
    seed_everything(config.seed)

    split, load_report = training_split(config.split_params, config.data_dir)
    extra = None
    if config.extra is not None:
        extra = read_extra(config.extra, pd.concat([split.validation["text"], split.test["text"]]))
        split = replace(split, train=pd.concat([split.train, extra.rows], ignore_index=True))
    frame = pd.concat([split.train, split.validation, split.test], ignore_index=True)
    unseen = sorted(set(DOMAIN_FILES) - set(config.domains))
    out_of_domain, _ = load_sentiment(config.data_dir, unseen) if unseen else (frame.iloc[0:0], None)
    if config.limit and len(out_of_domain):
        out_of_domain = limit_stratified(out_of_domain, max(config.limit // 2, 20), config.seed)

    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run() as run:
        mlflow.set_tags({"vigil.model": settings.sentiment_model_name, "dataset.fingerprint": fingerprint(frame)})
        mlflow.log_params({
            "epochs": config.epochs, "batch_size": config.batch_size, "encoder_lr": config.encoder_lr,
            "head_lr": config.head_lr, "weight_decay": config.weight_decay, **config.split_params.run_params(),
            "encoder": "all-MiniLM-L6-v2",
            "approach": "fine-tune encoder + linear head", "train_rows": len(split.train),
            "validation_rows": len(split.validation), "test_rows": len(split.test),
            "dataset_fingerprint": fingerprint(frame), "torch_threads": torch.get_num_threads(),
        })
        mlflow.log_metric("data_skipped_lines", load_report.skipped)
        if extra is not None and config.extra is not None:
            mlflow.log_params({"extra_data": config.extra.name, "extra_rows": len(extra.rows),
                               "extra_rows_left_out": extra.overlapping, "extra_fingerprint": extra.fingerprint})
            mlflow.set_tag("vigil.extra_fingerprint", extra.fingerprint)
            mlflow.log_artifact(str(config.extra), "training_extra")

        classifier = SentimentClassifier.from_pretrained_encoder()
        fine_tune(classifier, split.train, split.validation, config,
                  on_epoch=lambda epoch, metrics: mlflow.log_metrics(metrics, step=epoch), progress=progress)

        test_probabilities = classifier.predict_proba(split.test["text"].tolist())
        test_labels = split.test["label"].to_numpy()
        metrics = classification_metrics(test_labels, test_probabilities, "test_")
        test = Predictions.from_probabilities(test_labels, test_probabilities)
        for domain in sorted(split.test["domain"].unique()):
            in_domain = point_metrics(test.subset((split.test["domain"] == domain).to_numpy()))["macro_f1"]
            if in_domain is not None:
                metrics[f"test_{domain}_macro_f1"] = in_domain
        if len(out_of_domain):
            ood_probabilities = classifier.predict_proba(out_of_domain["text"].tolist())
            for domain in unseen:
                mask = (out_of_domain["domain"] == domain).to_numpy()
                metrics.update(classification_metrics(
                    out_of_domain["label"].to_numpy()[mask], ood_probabilities[mask], f"ood_{domain}_"))
        mlflow.log_metrics(metrics)
        mlflow.log_figure(confusion_figure(confusion_counts(test), "test split"), "plots/confusion_matrix.png")
        if progress:
            progress("evaluated", 1, 1)
        with tempfile.TemporaryDirectory() as scratch:
            reference_file = Path(scratch) / DRIFT_REFERENCE_FILE
            drift_reference(classifier, split.train, config.reference_size, config.seed).to_parquet(reference_file)
            mlflow.log_artifact(str(reference_file), DRIFT_REFERENCE_PATH)

            model_dir = classifier.save(Path(scratch) / CLASSIFIER_ARTIFACT)
            # Of the files as written here: the registry's record of them is what every later load is checked
            # against, so an upload, a copy or an artifact store that changes one byte makes the version refused.
            manifest = model_digest.manifest_of(model_dir)
            example = pd.DataFrame({"text": split.test["text"].head(3).tolist()})
            output = SentimentPyfunc.output_frame(classifier.predict(example["text"].tolist()))
            signature = infer_signature(example, output)
            # The version's own test split as its evaluation data: what the model service scores an INT8 graph
            # against before serving it (VIGIL_MODEL_QUANTIZE), and what evaluation and the gate may read.
            log_dataset(split.test[["text", "label"]], role="evaluation", target="label", signature=signature)
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=SentimentPyfunc(),
                artifacts={CLASSIFIER_ARTIFACT: str(model_dir)},
                signature=signature,
                input_example=example,
                registered_model_name=settings.sentiment_model_name,
                pip_requirements=_pip_requirements(),
            )
        version = str(info.registered_model_version)
        # Before any alias points at the version, so nothing serves it unrecorded.
        model_digest.record(client, settings.sentiment_model_name, version, manifest)
        if progress:
            progress("logged and registered", 1, 1)
        mlflow.set_tag("vigil.registered_version", version)

    moves = registry.register_initial_aliases(
        client, settings.sentiment_model_name, version,
        reason=f"trained by run {run.info.run_id} (test macro-F1 {metrics['test_macro_f1']:.4f})",
    )
    return TrainResult(run.info.run_id, version, metrics, [m.alias for m in moves])


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("torch", "transformers", "mlflow", "pandas", "numpy")]
