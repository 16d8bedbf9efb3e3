"""The ONNX Runtime path of the classifier gives torch's predictions, and refuses an export that does not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vigil.sentiment_model import ONNX_TOLERANCE, SentimentClassifier

TEXTS = [
    "Loved it.",
    "The battery died after two days and the seller never answered.",
    "meh",
    "Ünïcödé text with emoji 🙂 and CJK 日本語 still gets tokenised.",
    " ".join(["far too long for the encoder's window"] * 80),  # truncated at max_tokens on both runtimes
]


def fresh_classifier(seed: int) -> SentimentClassifier:
    torch.manual_seed(seed)  # the head is freshly initialised: a seed makes two different classifiers
    return SentimentClassifier.from_pretrained_encoder()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[SentimentClassifier, Path]:
    classifier = fresh_classifier(seed=1)
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    classifier.use_onnx(path)
    return classifier, path


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_onnx_gives_torchs_probabilities_and_embeddings(
    exported: tuple[SentimentClassifier, Path], batch_size: int
) -> None:
    on_onnx, path = exported
    assert on_onnx.runtime == "onnx" and path.exists()
    on_torch = SentimentClassifier(on_onnx.tokenizer, on_onnx.network, on_onnx.max_tokens)
    assert on_torch.runtime == "torch"

    onnx_predictions, onnx_embeddings = on_onnx.predict_with_embeddings(TEXTS, batch_size=batch_size)
    torch_predictions, torch_embeddings = on_torch.predict_with_embeddings(TEXTS, batch_size=batch_size)

    assert [p.label for p in onnx_predictions] == [p.label for p in torch_predictions]
    np.testing.assert_allclose([p.score for p in onnx_predictions], [p.score for p in torch_predictions],
                               atol=ONNX_TOLERANCE)
    np.testing.assert_allclose(onnx_embeddings, torch_embeddings, atol=ONNX_TOLERANCE)


def test_an_export_of_another_network_is_refused(exported: tuple[SentimentClassifier, Path]) -> None:
    _, path_of_other_network = exported
    classifier = fresh_classifier(seed=2)
    with pytest.raises(ValueError, match="differs from torch"):
        classifier.use_onnx(path_of_other_network)
    assert classifier.runtime == "torch"
    assert len(classifier.predict(TEXTS)) == len(TEXTS)


def test_empty_input_gives_empty_output(exported: tuple[SentimentClassifier, Path]) -> None:
    probabilities = exported[0].predict_proba([])
    assert probabilities.shape == (0, 2)
