"""The UCI Sentiment Labelled Sentences: parsing, fingerprinting and a deterministic stratified split.

:func:`training_split` is the one way to make a version's split, when training and ever after: evaluation and
replay rebuild it from the :class:`SplitParams` the training run logged, so they see exactly what training saw.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

DOMAIN_FILES: dict[str, str] = {
    "amazon": "amazon_cells_labelled.txt",
    "imdb": "imdb_labelled.txt",
    "yelp": "yelp_labelled.txt",
}
LABEL_NAMES: tuple[str, str] = ("negative", "positive")
DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "sentiment"
# What `vigil train sentiment` trains on unless told otherwise; the rest is out-of-domain.
DEFAULT_DOMAINS: tuple[str, ...] = ("amazon", "yelp")


@dataclass
class LoadReport:
    """What parsing kept and skipped, so a run can record it rather than hide it."""

    rows: int = 0
    skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)


def parse_line(line: str) -> tuple[str, int] | None:
    """One ``sentence<TAB>label`` line → (sentence, label), or None when the line is malformed.

    The label is the field after the last TAB; the sentence keeps inner characters as they are (imdb has C1
    control characters and unbalanced quotes) and loses only surrounding white space.
    """
    sentence, sep, label = line.rstrip("\r").rpartition("\t")
    if not sep:
        return None
    label = label.strip()
    sentence = sentence.strip()
    if label not in ("0", "1") or not sentence:
        return None
    return sentence, int(label)


def load_domain(path: Path, domain: str, report: LoadReport) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    raw = path.read_bytes().decode("utf-8", errors="replace")
    # Split on "\n" only: str.splitlines() would also break on U+0085 (NEL), which imdb sentences contain.
    for number, line in enumerate(raw.split("\n"), start=1):
        if not line.strip():
            continue
        parsed = parse_line(line)
        if parsed is None:
            report.skipped += 1
            if len(report.skipped_examples) < 5:
                report.skipped_examples.append(f"{path.name}:{number}")
            continue
        sentence, label = parsed
        rows.append({"text": sentence, "label": label, "domain": domain})
    return rows


def load_sentiment(
    data_dir: Path = DEFAULT_DATA_DIR, domains: list[str] | None = None
) -> tuple[pd.DataFrame, LoadReport]:
    """All sentences of the chosen domains as a DataFrame (text, label, domain) and what parsing skipped."""
    chosen = domains or list(DOMAIN_FILES)
    unknown = sorted(set(chosen) - set(DOMAIN_FILES))
    if unknown:
        raise ValueError(f"unknown domain(s) {unknown}; choose from {sorted(DOMAIN_FILES)}")
    report = LoadReport()
    rows: list[dict[str, object]] = []
    for domain in chosen:
        rows.extend(load_domain(data_dir / DOMAIN_FILES[domain], domain, report))
    frame = pd.DataFrame(rows, columns=["text", "label", "domain"])
    report.rows = len(frame)
    return frame, report


def fingerprint(frame: pd.DataFrame) -> str:
    """A content hash of the rows (order-independent), to tag runs and evaluations with the data they saw."""
    digest = hashlib.sha256()
    for line in sorted(f"{r.domain}\t{r.label}\t{r.text}" for r in frame.itertuples()):
        digest.update(line.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()[:16]


@dataclass
class Split:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame


def split_sentiment(
    frame: pd.DataFrame, seed: int, validation_share: float = 0.1, test_share: float = 0.2
) -> Split:
    """A deterministic split by seed, stratified on (domain, label) so every part keeps the mix."""
    strata = frame["domain"].astype(str) + "/" + frame["label"].astype(str)
    rest, test = train_test_split(frame, test_size=test_share, random_state=seed, stratify=strata)
    rest_strata = strata.loc[rest.index]
    train, validation = train_test_split(
        rest,
        test_size=validation_share / (1 - test_share),
        random_state=seed,
        stratify=rest_strata,
    )
    return Split(
        train=train.reset_index(drop=True),
        validation=validation.reset_index(drop=True),
        test=test.reset_index(drop=True),
    )


def limit_stratified(frame: pd.DataFrame, limit: int, seed: int) -> pd.DataFrame:
    """At most ``limit`` rows, keeping the (domain, label) mix; for quick runs and tests."""
    if limit >= len(frame):
        return frame
    strata = frame["domain"].astype(str) + "/" + frame["label"].astype(str)
    kept, _ = train_test_split(frame, train_size=limit, random_state=seed, stratify=strata)
    return kept.reset_index(drop=True)


@dataclass(frozen=True)
class SplitParams:
    """What of a training run decides its split: the seed, the domains and the row limit (None: every row)."""

    seed: int
    domains: tuple[str, ...] = DEFAULT_DOMAINS
    limit: int | None = None

    def run_params(self) -> dict[str, str | int]:
        """The run parameters training logs for them (``limit`` 0 for none, ``domains`` comma-joined)."""
        return {"seed": self.seed, "domains": ",".join(self.domains), "limit": self.limit or 0}

    @classmethod
    def from_run_params(cls, params: Mapping[str, str], default_seed: int) -> SplitParams:
        """Read back what :meth:`run_params` logged; ``default_seed`` and the default domains where a run lacks them."""
        domains = tuple(d for d in params.get("domains", "").split(",") if d) or DEFAULT_DOMAINS
        limit = int(params.get("limit", "0") or 0) or None
        return cls(seed=int(params.get("seed", default_seed)), domains=domains, limit=limit)

    def describe(self) -> str:
        limited = f", limit {self.limit}" if self.limit else ""
        return f"{','.join(self.domains)}, seed {self.seed}{limited}"


def training_split(params: SplitParams, data_dir: Path = DEFAULT_DATA_DIR) -> tuple[Split, LoadReport]:
    """The split a training run with ``params`` made (load, limit, seeded split) and what loading skipped."""
    frame, report = load_sentiment(data_dir, list(params.domains))
    if params.limit:
        frame = limit_stratified(frame, params.limit, params.seed)
    return split_sentiment(frame, params.seed), report


# What an exported dataset (`vigil feedback export`) may call each class: the names the model answers, or 0/1.
_LABEL_VALUES = {"negative": 0, "positive": 1, "0": 0, "1": 1}


@dataclass(frozen=True)
class ExtraRows:
    """Labelled rows from outside the shipped data — typically what production taught, exported from the inference
    log — added to a training split, with what was left out and why."""

    rows: pd.DataFrame  # text, label (0/1), domain="extra"
    fingerprint: str
    overlapping: int  # rows whose text is in the version's validation or test split, left out


def read_extra(path: Path, held_out: pd.Series | None = None) -> ExtraRows:
    """``path`` (CSV, JSON Lines or Parquet with ``text`` and ``label``) as training rows; texts of ``held_out``
    (the validation and test splits) are left out, so a version is never evaluated on what it trained on."""
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    elif path.suffix in (".jsonl", ".ndjson"):
        frame = pd.read_json(path, lines=True, dtype=False)
    else:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = sorted({"text", "label"} - set(frame.columns))
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; a training dataset has `text` and `label` "
                         "(what `vigil feedback export sentiment` writes)")
    labels = frame["label"].map(lambda value: _LABEL_VALUES.get(str(value).strip().lower()))
    unknown = sorted({str(v) for v, mapped in zip(frame["label"], labels, strict=True) if mapped is None})
    if unknown:
        raise ValueError(f"{path}: label(s) {unknown[:5]} are none of {sorted(_LABEL_VALUES)}")
    rows = pd.DataFrame({"text": frame["text"].astype(str).str.strip(), "label": labels.astype(int),
                         "domain": "extra"})
    rows = rows[rows["text"] != ""].drop_duplicates("text", keep="last")
    overlapping = rows["text"].isin(set(held_out)) if held_out is not None else pd.Series(False, index=rows.index)
    kept = rows[~overlapping].reset_index(drop=True)
    return ExtraRows(rows=kept, fingerprint=fingerprint(kept), overlapping=int(overlapping.sum()))
