from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from training.data import (
    DOMAIN_FILES,
    SplitParams,
    fingerprint,
    limit_stratified,
    load_sentiment,
    parse_line,
    split_sentiment,
    training_split,
)


def write_domain(directory: Path, name: str, content: bytes) -> None:
    (directory / DOMAIN_FILES[name]).write_bytes(content)


def test_parse_line_keeps_sentence_and_label() -> None:
    assert parse_line("Great phone, works well.\t1") == ("Great phone, works well.", 1)
    assert parse_line("A slow-moving, aimless movie.  \t0") == ("A slow-moving, aimless movie.", 0)


@pytest.mark.parametrize("line", ["no tab here 1", "text\t2", "text\tpositive", "\t1", "   \t0"])
def test_parse_line_rejects_malformed(line: str) -> None:
    assert parse_line(line) is None


def test_malformed_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    write_domain(tmp_path, "amazon", b"Good.\t1\nbroken line without label\nBad.\t0\nAlso bad\t7\n\n")
    frame, report = load_sentiment(tmp_path, ["amazon"])
    assert frame["text"].tolist() == ["Good.", "Bad."]
    assert report.rows == 2
    assert report.skipped == 2
    assert report.skipped_examples == ["amazon_cells_labelled.txt:2", "amazon_cells_labelled.txt:4"]


def test_nel_and_quotes_do_not_split_or_merge_lines(tmp_path: Path) -> None:
    # U+0085 is a line break for str.splitlines(); an unbalanced quote merges lines in a default CSV reader.
    content = 'A "quoted start and\u0085 a NEL inside.  \t1\nNext one.\t0\n'.encode()
    write_domain(tmp_path, "imdb", content)
    frame, report = load_sentiment(tmp_path, ["imdb"])
    assert report.skipped == 0
    assert frame["text"].tolist() == ['A "quoted start and\u0085 a NEL inside.', "Next one."]
    assert frame["domain"].tolist() == ["imdb", "imdb"]


def test_invalid_utf8_is_replaced_not_fatal(tmp_path: Path) -> None:
    write_domain(tmp_path, "yelp", b"Caf\xe9 was fine.\t1\n")
    frame, _ = load_sentiment(tmp_path, ["yelp"])
    assert frame["text"].tolist() == ["Caf\ufffd was fine."]


def test_unknown_domain_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown domain"):
        load_sentiment(domains=["twitter"])


def test_shipped_data_loads_completely() -> None:
    frame, report = load_sentiment()
    assert report.skipped == 0
    assert len(frame) == 2400
    assert frame.groupby(["domain", "label"]).size().tolist() == [400] * 6


def test_split_is_deterministic_and_stratified() -> None:
    frame, _ = load_sentiment(domains=["amazon", "yelp"])
    first = split_sentiment(frame, seed=7)
    second = split_sentiment(frame, seed=7)
    other = split_sentiment(frame, seed=8)
    pd.testing.assert_frame_equal(first.test, second.test)
    assert first.test["text"].tolist() != other.test["text"].tolist()
    sizes = (len(first.train), len(first.validation), len(first.test))
    assert sizes == (1120, 160, 320)
    for part in (first.train, first.validation, first.test):
        shares = part.groupby(["domain", "label"]).size() / len(part)
        assert shares.between(0.24, 0.26).all(), shares
    assert not set(first.train["text"]) & set(first.test["text"]) - _duplicated_texts(frame)


def _duplicated_texts(frame: pd.DataFrame) -> set[str]:
    return set(frame.loc[frame["text"].duplicated(), "text"])


def test_limit_keeps_the_mix() -> None:
    frame, _ = load_sentiment(domains=["amazon", "yelp"])
    small = limit_stratified(frame, 100, seed=1)
    assert len(small) == 100
    assert small.groupby(["domain", "label"]).size().tolist() == [25] * 4


def test_fingerprint_ignores_order_and_sees_content() -> None:
    frame, _ = load_sentiment(domains=["amazon"])
    assert fingerprint(frame) == fingerprint(frame.sample(frac=1, random_state=3))
    changed = frame.copy()
    changed.loc[0, "label"] = 1 - changed.loc[0, "label"]
    assert fingerprint(changed) != fingerprint(frame)


def test_split_params_read_back_what_training_logs() -> None:
    params = SplitParams(seed=7, domains=("yelp",), limit=300)
    logged = {key: str(value) for key, value in params.run_params().items()}  # MLflow keeps params as strings
    assert logged == {"seed": "7", "domains": "yelp", "limit": "300"}
    assert SplitParams.from_run_params(logged, default_seed=1) == params
    # A run that logged no split parameters: the given seed, the default domains, every row.
    assert SplitParams.from_run_params({"limit": "0"}, default_seed=5) == SplitParams(5, ("amazon", "yelp"), None)


def test_training_split_is_load_then_limit_then_split() -> None:
    split, report = training_split(SplitParams(seed=3, domains=("amazon", "yelp"), limit=200))
    frame, _ = load_sentiment(domains=["amazon", "yelp"])
    expected = split_sentiment(limit_stratified(frame, 200, seed=3), seed=3)
    for ours, theirs in ((split.train, expected.train), (split.validation, expected.validation),
                         (split.test, expected.test)):
        pd.testing.assert_frame_equal(ours, theirs)
    # 200 rows: 20 % test (40), 10 % of the whole validation (20), the rest train.
    assert (len(split.train), len(split.validation), len(split.test)) == (140, 20, 40)
    assert report.skipped == 0 and report.rows == 1600
