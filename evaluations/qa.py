"""Measure a pipeline on question/answer pairs (``data/rag/qa.jsonl``): passage recall, MRR, answer containment."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from evaluations.rag_metrics import DEFAULT_KS, RetrievalMetrics, answer_containment, dedupe, retrieval_metrics

if TYPE_CHECKING:
    from service.rag.pipeline import RagPipeline


class QAItem(BaseModel):
    id: str
    question: str
    answers: list[str]
    passage_ids: list[str]


class QualityReport(BaseModel):
    questions: int
    retrieval: RetrievalMetrics  # by passage, ranked from the chunks a top_k=max(ks) query retrieves
    chunk_recall_at_top_k: float  # the gold passage is among the top_k chunks the generator read
    answer_containment: float  # a gold answer appears in the generated answer (SQuAD-normalised)
    top_k: int


def load_qa(path: Path, sample: int | None = None, seed: int = 42) -> list[QAItem]:
    """The QA pairs of a JSONL file; a seeded random ``sample`` of them when given."""
    items = [QAItem.model_validate(json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines()
             if line.strip()]
    if sample is not None and sample < len(items):
        items = random.Random(seed).sample(items, sample)
    return items


def evaluate(pipeline: RagPipeline, items: Sequence[QAItem], *, top_k: int = 5, ks: Sequence[int] = DEFAULT_KS,
             progress: Callable[[int, int], None] | None = None) -> QualityReport:
    """Retrieval by passage over ``max(ks)`` chunks, and the answer a ``top_k`` query gives."""
    depth = max(ks)
    rankings: list[list[str]] = []
    in_top_k: list[bool] = []
    answers: list[str] = []
    for done, item in enumerate(items, start=1):
        hits = pipeline.retrieve(item.question, depth)
        rankings.append(dedupe(h.document_id for h in hits))
        in_top_k.append(any(h.document_id in item.passage_ids for h in hits[:top_k]))
        answers.append(pipeline.query(item.question, top_k).answer)
        if progress is not None:
            progress(done, len(items))
    return QualityReport(
        questions=len(items),
        retrieval=retrieval_metrics(rankings, [set(i.passage_ids) for i in items], ks),
        chunk_recall_at_top_k=sum(in_top_k) / len(items) if items else 0.0,
        answer_containment=answer_containment(answers, [i.answers for i in items]),
        top_k=top_k,
    )
