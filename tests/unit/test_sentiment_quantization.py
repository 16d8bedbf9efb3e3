"""The INT8 graph is served only when it scores as well as float on the version's test split; bucketing by length
changes no probability."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from service import model_store
from service.model_store import ModelHolder
from vigil import model_cache, model_data, model_digest, registry, sentiment_model
from vigil.model_data import DatasetInfo
from vigil.sentiment_model import (
    LABELS,
    QUANTIZATION_TOLERANCE,
    EvaluationData,
    QuantizationVerdict,
    SentimentClassifier,
    choose_precision,
    int8_path,
    judge_quantization,
    macro_f1,
    quantize_onnx,
    verdict_path,
)

TEXTS = [
    "Loved it.",
    "The battery died after two days and the seller never answered my three emails about it.",
    "meh",
    "Great value, would buy again.",
    " ".join(["far too long for the encoder's window"] * 80),  # truncated at max_tokens
    "Terrible.",
    "Not what the pictures showed, but it works well enough for the price I paid.",
]


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> tuple[SentimentClassifier, Path, Path]:
    """One export and one quantization shared by every test: (classifier on float ONNX, float graph, INT8 graph)."""
    torch.manual_seed(1)
    classifier = SentimentClassifier.from_pretrained_encoder()
    float_graph = tmp_path_factory.mktemp("onnx") / "model.onnx"
    classifier.use_onnx(float_graph)
    return classifier, float_graph, quantize_onnx(float_graph, int8_path(float_graph))


def on_onnx(graphs: tuple[SentimentClassifier, Path, Path], directory: Path) -> tuple[SentimentClassifier, Path]:
    """A fresh classifier on the shared float graph, linked into ``directory`` so its verdict file is its own."""
    shared, float_graph, quantized = graphs
    float_path = directory / "run-1.onnx"
    float_path.parent.mkdir(parents=True, exist_ok=True)
    float_path.symlink_to(float_graph)
    int8_path(float_path).symlink_to(quantized)
    classifier = SentimentClassifier(shared.tokenizer, shared.network, shared.max_tokens)
    classifier.use_onnx(float_path)
    return classifier, float_path


def own_labels(classifier: SentimentClassifier, fingerprint: str = "fp-1") -> EvaluationData:
    """The float graph's own predictions as the truth: float scores macro-F1 1.0 on it."""
    return EvaluationData(TEXTS, [p.label for p in classifier.predict(TEXTS)], fingerprint)


def test_macro_f1_and_the_verdict_arithmetic() -> None:
    assert macro_f1(["negative", "positive", "positive"], ["negative", "positive", "positive"]) == 1.0
    assert macro_f1(["negative", "positive"], ["positive", "positive"]) == pytest.approx((0 + 2 / 3) / 2)
    data = EvaluationData(["a"] * 3, ["positive"] * 3, "fp")
    assert judge_quantization(0.9000, 0.8960, data).precision == "int8"  # 0.004 below: within 0.005
    assert judge_quantization(0.9000, 0.9040, data).precision == "int8"
    outside = judge_quantization(0.9000, 0.8900, data)
    assert outside.precision == "float" and "outside" in outside.reason
    assert outside.difference == pytest.approx(-0.01)


def test_int8_within_tolerance_is_served(graphs: tuple[SentimentClassifier, Path, Path], tmp_path: Path) -> None:
    classifier, float_path = on_onnx(graphs, tmp_path)
    float_probabilities = classifier.predict_proba(TEXTS)
    verdict = choose_precision(classifier, float_path, 1, lambda: own_labels(classifier), tolerance=1.0)

    assert verdict.precision == "int8" and classifier.precision == "int8"
    assert verdict.float_macro_f1 == 1.0 and verdict.int8_macro_f1 is not None
    assert verdict.evaluation_rows == len(TEXTS) and classifier.quantization == verdict
    int8_probabilities = classifier.predict_proba(TEXTS)
    assert int8_probabilities.shape == float_probabilities.shape
    assert not np.array_equal(int8_probabilities, float_probabilities)  # another graph answers now
    assert verdict_path(float_path).exists()


def test_int8_outside_tolerance_serves_float(graphs: tuple[SentimentClassifier, Path, Path], tmp_path: Path) -> None:
    classifier, float_path = on_onnx(graphs, tmp_path)
    before = classifier.predict_proba(TEXTS)
    # Labels the float graph gets right and no other graph can beat: a tolerance no difference meets.
    verdict = choose_precision(classifier, float_path, 1, lambda: own_labels(classifier), tolerance=-1.0)

    assert verdict.precision == "float" and classifier.precision == "float"
    assert "outside" in verdict.reason
    np.testing.assert_array_equal(classifier.predict_proba(TEXTS), before)


def test_no_evaluation_data_serves_float_and_says_why(graphs: tuple[SentimentClassifier, Path, Path],
                                                      tmp_path: Path) -> None:
    classifier, float_path = on_onnx(graphs, tmp_path)
    verdict = choose_precision(classifier, float_path, 1, lambda: None)
    assert verdict.precision == "float" and classifier.precision == "float"
    assert "no evaluation data" in verdict.reason
    assert not verdict_path(float_path).exists()  # data attached later is checked on the next load

    offline = choose_precision(classifier, float_path, 1, None)  # a cached copy or a Bento, nothing kept
    assert offline.precision == "float" and "no INT8 verdict kept" in offline.reason


def test_the_kept_verdict_is_reused(graphs: tuple[SentimentClassifier, Path, Path], tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    classifier, float_path = on_onnx(graphs, tmp_path)
    first = choose_precision(classifier, float_path, 1, lambda: own_labels(classifier), tolerance=1.0)

    def no_scoring(*args: Any, **kwargs: Any) -> QuantizationVerdict:
        raise AssertionError("scored again although a verdict was kept")

    monkeypatch.setattr(sentiment_model, "_score_quantized", no_scoring)
    again = SentimentClassifier(classifier.tokenizer, classifier.network, classifier.max_tokens)
    again.use_onnx(float_path)
    assert choose_precision(again, float_path, 1, lambda: own_labels(classifier), tolerance=1.0) == first
    assert again.precision == "int8"
    offline = SentimentClassifier(classifier.tokenizer, classifier.network, classifier.max_tokens)
    offline.use_onnx(float_path)
    assert choose_precision(offline, float_path, 1, None).precision == "int8"  # no registry: the kept verdict

    # Other evaluation data (a new fingerprint) is scored again.
    with pytest.raises(AssertionError, match="scored again"):
        choose_precision(again, float_path, 1, lambda: own_labels(classifier, "fp-2"), tolerance=1.0)
    # So is a verdict kept for another quantization recipe, whose INT8 graph is not reused either.
    verdict_path(float_path).write_text(first.model_copy(update={"recipe": "an older recipe"}).model_dump_json())
    with pytest.raises(AssertionError, match="scored again"):
        choose_precision(again, float_path, 1, lambda: own_labels(classifier), tolerance=1.0)
    assert not int8_path(float_path).exists()
    # And a verdict written before verdicts named their recipe.
    verdict_path(float_path).write_text(first.model_dump_json(exclude={"recipe"}))
    with pytest.raises(AssertionError, match="scored again"):
        choose_precision(again, float_path, 1, lambda: own_labels(classifier), tolerance=1.0)


@pytest.mark.parametrize("bucket_size", [1, 2, 3])
def test_bucketing_gives_the_same_probabilities_in_request_order(
    graphs: tuple[SentimentClassifier, Path, Path], tmp_path: Path, bucket_size: int
) -> None:
    classifier, _ = on_onnx(graphs, tmp_path)
    classifier.bucket_size = 0
    padded_probabilities, padded_embeddings = classifier.predict_with_embeddings(TEXTS, batch_size=len(TEXTS))
    classifier.bucket_size = bucket_size
    bucketed, bucketed_embeddings = classifier.predict_with_embeddings(TEXTS, batch_size=len(TEXTS))

    np.testing.assert_allclose([p.score for p in bucketed], [p.score for p in padded_probabilities], atol=1e-4)
    assert [p.label for p in bucketed] == [p.label for p in padded_probabilities]
    np.testing.assert_allclose(bucketed_embeddings, padded_embeddings, atol=1e-4)


def test_status_reports_the_precision_and_both_scores(graphs: tuple[SentimentClassifier, Path, Path],
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared, float_graph, quantized = graphs
    onnx_dir = model_cache.model_dir("sentiment", tmp_path) / "onnx"
    onnx_dir.mkdir(parents=True)
    (onnx_dir / "run-1.onnx").symlink_to(float_graph)
    (onnx_dir / "run-1.int8.onnx").symlink_to(quantized)
    monkeypatch.setattr(registry, "connect", lambda *args, **kwargs: object())
    monkeypatch.setattr(registry, "resolve", lambda client, reference: registry.RegisteredVersion(
        reference.name, "1", reference.alias, "run-1"))

    def download(client: object, name: str, version: str, cache_dir: Path | None = None) -> Path:
        folder = model_cache.model_dir(name, cache_dir) / version
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    monkeypatch.setattr(model_cache, "download_version", download)
    monkeypatch.setattr(model_digest, "recorded", lambda client, name, version: None)
    monkeypatch.setattr(model_store, "load_logged", lambda folder, expected: SentimentClassifier(
        shared.tokenizer, shared.network, shared.max_tokens))
    table = pd.DataFrame({"text": TEXTS, "label": [LABELS.index(p.label) for p in shared.predict(TEXTS)]})
    info = DatasetInfo(role="evaluation", target="label", rows=len(table), columns=["text", "label"],
                       fingerprint="fp-1", source="test")
    monkeypatch.setattr(model_data, "load_attached", lambda settings, client, name, version, role: (table, info))

    holder = ModelHolder("sentiment", "champion", tmp_path, poll_seconds=3600, runtime="onnx", quantize=True)
    holder.poll_once()
    status = holder.describe()
    verdict = status["quantization"]
    assert status["runtime"] == "onnx" and verdict["float_macro_f1"] == 1.0
    assert verdict["difference"] == pytest.approx(verdict["int8_macro_f1"] - 1.0)
    assert status["precision"] == ("int8" if abs(verdict["difference"]) <= QUANTIZATION_TOLERANCE else "float")
    assert status["precision"] == verdict["precision"]

    off = ModelHolder("sentiment", "champion", tmp_path, poll_seconds=3600, runtime="onnx", quantize=False)
    off.poll_once()
    assert off.describe()["precision"] == "float"
    assert "VIGIL_MODEL_QUANTIZE=false" in off.describe()["quantization"]["reason"]
