"""Labelled rows from production (`vigil feedback export`) as extra training rows: read, checked, and never a row
the version is evaluated on."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from training.data import read_extra


def test_exported_labels_become_training_rows_without_the_held_out_texts(tmp_path: Path) -> None:
    path = tmp_path / "feedback.csv"
    pd.DataFrame({"text": ["great food", "cold soup", "  ", "in the test split", "great food"],
                  "label": ["positive", "negative", "positive", "negative", "1"],
                  "request_id": ["a", "b", "c", "d", "e"]}).to_csv(path, index=False)
    extra = read_extra(path, held_out=pd.Series(["in the test split"]))
    # The blank text is dropped, a text labelled twice keeps its last label, the held-out text is left out.
    assert extra.rows[["text", "label"]].values.tolist() == [["cold soup", 0], ["great food", 1]]
    assert set(extra.rows["domain"]) == {"extra"}
    assert extra.overlapping == 1
    again = read_extra(path, held_out=pd.Series(["in the test split"]))
    assert again.fingerprint == extra.fingerprint


def test_jsonl_and_parquet_read_alike(tmp_path: Path) -> None:
    frame = pd.DataFrame({"text": ["fine", "awful"], "label": ["positive", "negative"]})
    frame.to_json(tmp_path / "rows.jsonl", orient="records", lines=True)
    frame.to_parquet(tmp_path / "rows.parquet")
    assert read_extra(tmp_path / "rows.jsonl").fingerprint == read_extra(tmp_path / "rows.parquet").fingerprint


@pytest.mark.parametrize(("columns", "message"), [
    ({"text": ["x"]}, r"missing column\(s\) \['label'\]"),
    ({"text": ["x"], "label": ["neutral"]}, r"label\(s\) \['neutral'\]"),
])
def test_a_dataset_the_model_cannot_learn_from_is_refused(tmp_path: Path, columns: dict[str, list[str]],
                                                          message: str) -> None:
    path = tmp_path / "bad.csv"
    pd.DataFrame(columns).to_csv(path, index=False)
    with pytest.raises(ValueError, match=message):
        read_extra(path)
