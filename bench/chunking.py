"""Is chunking linear in its input? RAG chunking before and after issue 15 on the texts that made it quadratic.

    .venv/bin/python bench/chunking.py [--sizes 1024,4096,...] [--baseline-budget 60]

In process, no server: only the MiniLM tokenizer is loaded (offline), as `vigil rag ingest` chunks. Each input of
`tests/support/chunking_inputs.py` (dots without a space; one long sentence with no boundary, a lower-case clause
after every period; many short sentences; a seeded mix of them with abbreviations, quotes, ellipses, blank lines and
very long words) is cut at 1 KiB to 1 MiB by :func:`service.rag.chunking.chunk_document` and by the chunking before
issue 15, frozen in `tests/support/chunking_before_issue15.py` (the tests' reference too, so the baseline timed here
is the one the chunks are checked against), with the service's default chunk size and overlap.

A figure is the best of up to five runs (fewer once they took three seconds). The baseline is quadratic, so a size
is only run when its time extrapolated from the size before (× the size ratio squared) stays within
``--baseline-budget`` seconds; the table then gives that extrapolation instead. The time after is split in two, each
measured on its own: the tokenizer (``token_spans``, the floor of any chunking by tokens) and the rest (chunking
given the token spans), the part this issue is about. Where both ran, the chunks are compared. Results go to stdout
as Markdown and to ``bench/out/chunking.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from service.rag.chunking import chunk_document
from tests.support import chunking_before_issue15 as before
from tests.support.chunking_inputs import ADVERSARIAL
from vigil.contracts import Document
from vigil.embedding import TextEmbedder
from vigil.settings import Settings

SIZES = (1 << 10, 1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 20)
# The service's defaults (VIGIL_RAG_CHUNK_TOKENS, VIGIL_RAG_CHUNK_OVERLAP_TOKENS), not whatever .env says here.
CHUNK_TOKENS: int = Settings.model_fields["rag_chunk_tokens"].default
OVERLAP_TOKENS: int = Settings.model_fields["rag_chunk_overlap_tokens"].default

Result = TypeVar("Result")


@dataclass
class Row:
    input: str
    size: int
    after_ms: float
    tokenizer_ms: float
    chunking_ms: float
    chunks: int
    before_ms: float | None = None  # measured
    before_estimate_ms: float | None = None  # extrapolated, when measuring would pass the budget
    same_chunks: bool | None = None


class GivenSpans:
    """A tokenizer that has already read the text: what chunking itself costs, without the tokenizer."""

    def __init__(self, spans: list[tuple[int, int]]) -> None:
        self.spans = spans

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return self.spans


def best_ms(run: Callable[[], Result]) -> tuple[Result, float]:
    """What ``run`` returns and the fastest of up to five runs, stopping once they took three seconds."""
    times: list[float] = []
    result = None
    while len(times) < 5 and sum(times) < 3.0:
        began = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - began)
    assert result is not None
    return result, min(times) * 1000


def measure(name: str, sizes: list[int], tokenizer: TextEmbedder, budget_ms: float) -> list[Row]:
    rows: list[Row] = []
    last: tuple[int, float] | None = None  # the baseline's last measured (size, ms)
    for size in sizes:
        document = Document(id=name, text=ADVERSARIAL[name](size))
        after = functools.partial(chunk_document, document, tokenizer, CHUNK_TOKENS, OVERLAP_TOKENS)
        baseline = functools.partial(before.chunk_document, document, tokenizer, CHUNK_TOKENS, OVERLAP_TOKENS)
        chunks, after_ms = best_ms(after)
        spans, tokenizer_ms = best_ms(functools.partial(tokenizer.token_spans, document.text))
        _, chunking_ms = best_ms(functools.partial(chunk_document, document, GivenSpans(spans), CHUNK_TOKENS,
                                                   OVERLAP_TOKENS))
        row = Row(name, size, after_ms=after_ms, tokenizer_ms=tokenizer_ms, chunking_ms=chunking_ms,
                  chunks=len(chunks))
        estimate = None if last is None else last[1] * (size / last[0]) ** 2
        if estimate is not None and estimate > budget_ms:
            row.before_estimate_ms = estimate
        else:
            baseline_chunks, row.before_ms = best_ms(baseline)
            row.same_chunks = baseline_chunks == chunks
            last = (size, row.before_ms)
        rows.append(row)
        print(json.dumps(asdict(row)), file=sys.stderr, flush=True)
    return rows


def size_label(size: int) -> str:
    return f"{size >> 20} MiB" if size >= 1 << 20 else f"{size >> 10} KiB"


def ms_label(ms: float) -> str:
    return f"{ms / 1000:,.1f} s" if ms >= 10_000 else f"{ms:,.1f} ms" if ms < 100 else f"{ms:,.0f} ms"


def markdown(meta: dict[str, str], rows: list[Row]) -> str:
    lines = [f"{meta['date']}, {meta['machine']}; load average {meta['load_start']} at start, {meta['load_end']} at "
             f"the end. Command: `{meta['command']}`. Chunks of {CHUNK_TOKENS} tokens, overlap {OVERLAP_TOKENS}.",
             "",
             "| input | size | before | after | before / after | after: tokenizer | after: the rest | chunks "
             "| same chunks |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        if row.before_ms is not None:
            before_cell, ratio = ms_label(row.before_ms), f"{row.before_ms / row.after_ms:,.1f}×"
        else:
            assert row.before_estimate_ms is not None
            before_cell = f"≈ {ms_label(row.before_estimate_ms)} (not run)"
            ratio = f"≈ {row.before_estimate_ms / row.after_ms:,.0f}×"
        same = "—" if row.same_chunks is None else "yes" if row.same_chunks else "**no**"
        lines.append(f"| {row.input} | {size_label(row.size)} | {before_cell} | {ms_label(row.after_ms)} | {ratio} | "
                     f"{ms_label(row.tokenizer_ms)} | {ms_label(row.chunking_ms)} | {row.chunks} | {same} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="text sizes in characters, comma-separated")
    parser.add_argument("--inputs", default=",".join(ADVERSARIAL), help="which inputs, comma-separated")
    parser.add_argument("--baseline-budget", type=float, default=60.0,
                        help="seconds one baseline run may be expected to take; larger sizes are extrapolated")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "chunking.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sizes = [int(size) for size in args.sizes.split(",")]
    meta = {"date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "load_start": f"{os.getloadavg()[0]:.1f}",
            "command": "python " + " ".join(["bench/chunking.py", *sys.argv[1:]])}
    tokenizer = TextEmbedder()  # only its tokenizer is read: the weights never load
    rows = [row for name in args.inputs.split(",") for row in measure(name, sizes, tokenizer,
                                                                      args.baseline_budget * 1000)]
    meta["load_end"] = f"{os.getloadavg()[0]:.1f}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": [asdict(row) for row in rows]}, indent=2))
    sys.stdout.write(markdown(meta, rows) + "\n")


if __name__ == "__main__":
    main()
