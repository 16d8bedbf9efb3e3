"""The text embedder on ONNX Runtime gives torch's vectors, falls back to torch when the export fails, and lets
concurrent callers share one encoder call with the vectors each would get alone."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

import vigil.embedding
from vigil.embedding import ONNX_TOLERANCE, SharedCalls, TextEmbedder

TEXTS = [
    "Who designed the bridge over the Firth of Forth?",
    "meh",
    "Ünïcödé text with emoji 🙂 and CJK 日本語 still gets tokenised.",
    " ".join(["far too long for the encoder's window"] * 80),  # truncated at the window on both runtimes
]
WAIT = 10.0  # seconds any one step of a threaded test may take before it counts as hung


@pytest.fixture(scope="module")
def on_onnx(tmp_path_factory: pytest.TempPathFactory) -> TextEmbedder:
    return TextEmbedder(version="7", runtime="onnx", onnx_dir=tmp_path_factory.mktemp("onnx")).load()


@pytest.fixture(scope="module")
def on_torch() -> TextEmbedder:
    return TextEmbedder(version="7").load()


def test_onnx_gives_torchs_embeddings(on_onnx: TextEmbedder, on_torch: TextEmbedder) -> None:
    assert (on_onnx.runtime, on_onnx.onnx_error) == ("onnx", "")
    assert on_onnx.onnx_path is not None and on_onnx.onnx_path.is_file()
    assert on_onnx.onnx_path.name.startswith("v7-")  # one export per embedder version
    assert on_torch.runtime == "torch"
    np.testing.assert_allclose(on_onnx.embed(TEXTS), on_torch.embed(TEXTS), atol=ONNX_TOLERANCE)


def test_an_existing_export_is_reused(on_onnx: TextEmbedder, tmp_path: Path) -> None:
    assert on_onnx.onnx_path is not None
    written = on_onnx.onnx_path.stat().st_mtime_ns
    again = TextEmbedder(version="7", runtime="onnx", onnx_dir=on_onnx.onnx_path.parent).load()
    assert again.runtime == "onnx"
    assert on_onnx.onnx_path.stat().st_mtime_ns == written


def test_batched_and_one_by_one_embeddings_are_equal(on_onnx: TextEmbedder) -> None:
    batched = on_onnx.embed(TEXTS)
    one_by_one = np.stack([on_onnx.embed_one(text) for text in TEXTS])
    np.testing.assert_allclose(batched, one_by_one, atol=ONNX_TOLERANCE)
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)


def test_concurrent_questions_get_their_own_vectors(on_onnx: TextEmbedder) -> None:
    expected = on_onnx.embed(TEXTS)
    results: dict[int, np.ndarray] = {}

    def ask(index: int) -> None:
        results[index] = on_onnx.embed_one(TEXTS[index])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(TEXTS)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert sorted(results) == list(range(len(TEXTS)))
    np.testing.assert_allclose(np.stack([results[i] for i in range(len(TEXTS))]), expected, atol=ONNX_TOLERANCE)


def test_a_failed_export_leaves_the_embedder_on_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      on_torch: TextEmbedder) -> None:
    def broken_export(*_: object) -> Path:
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(vigil.embedding, "export_onnx", broken_export)
    embedder = TextEmbedder(version="7", runtime="onnx", onnx_dir=tmp_path).load()
    assert embedder.runtime == "torch"
    assert "exporter crashed" in embedder.onnx_error
    np.testing.assert_allclose(embedder.embed(TEXTS[:2]), on_torch.embed(TEXTS[:2]), atol=1e-6)


def test_an_unreadable_export_leaves_the_embedder_on_torch(tmp_path: Path) -> None:
    embedder = TextEmbedder(version="7", runtime="onnx", onnx_dir=tmp_path)
    assert embedder.onnx_path is not None
    embedder.onnx_path.write_bytes(b"not an onnx model")
    embedder.load()
    assert embedder.runtime == "torch" and embedder.onnx_error
    assert embedder.embed_one("still answers").shape == (384,)


class GatedEncoder:
    """Records each call's texts; the first call waits for ``release`` so that others queue behind it."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        if len(self.calls) == 1:
            self.entered.set()
            assert self.release.wait(WAIT)
        if "fail" in texts:
            raise ValueError("encoder failed")
        return np.array([[float(len(text))] for text in texts], dtype=np.float32)


def run_in_threads(shared: SharedCalls, texts: list[str], encoder: GatedEncoder) -> dict[str, object]:
    """The first text alone, then the rest while it is being encoded; each text's result or error."""
    results: dict[str, object] = {}

    def ask(text: str) -> None:
        try:
            results[text] = shared.embed_one(text)
        except ValueError as error:
            results[text] = error

    first = threading.Thread(target=ask, args=(texts[0],))
    first.start()
    assert encoder.entered.wait(WAIT)
    others = [threading.Thread(target=ask, args=(text,)) for text in texts[1:]]
    for thread in others:
        thread.start()
    waited = 0.0
    while shared.waiting < len(others):
        assert waited < WAIT, "the callers never queued"
        threading.Event().wait(0.01)
        waited += 0.01
    encoder.release.set()
    for thread in [first, *others]:
        thread.join(WAIT)
    return results


def test_callers_that_arrive_during_a_call_share_the_next_one() -> None:
    encoder = GatedEncoder()
    shared = SharedCalls(encoder, max_texts=2)
    results = run_in_threads(shared, ["a", "bb", "ccc", "dddd"], encoder)
    assert encoder.calls[0] == ["a"]  # a lone caller goes at once
    assert sorted(len(call) for call in encoder.calls[1:]) == [1, 2]  # three waiting, at most two a call
    assert {text: float(np.asarray(value)[0]) for text, value in results.items()} == {
        "a": 1.0, "bb": 2.0, "ccc": 3.0, "dddd": 4.0}


def test_a_failed_call_fails_each_of_its_callers_only() -> None:
    encoder = GatedEncoder()
    shared = SharedCalls(encoder, max_texts=8)
    results = run_in_threads(shared, ["a", "fail", "ccc"], encoder)
    assert encoder.calls == [["a"], ["fail", "ccc"]] or encoder.calls == [["a"], ["ccc", "fail"]]
    assert float(np.asarray(results["a"])[0]) == 1.0
    assert isinstance(results["fail"], ValueError) and isinstance(results["ccc"], ValueError)


def test_token_counts_of_many_texts_equal_one_by_one_counts_when_asked_again(on_torch: TextEmbedder) -> None:
    one_by_one = [on_torch.count_tokens(text) for text in TEXTS]
    assert one_by_one[3] > 256  # counted in full, not at the encoder's window
    assert on_torch.count_tokens_many(TEXTS) == one_by_one
    assert on_torch.count_tokens_many([*TEXTS, *TEXTS]) == one_by_one * 2  # remembered counts are the same
