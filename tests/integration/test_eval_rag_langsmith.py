"""`vigil eval rag` with LangSmith on: the real `langsmith` client, driven by the CLI, against a local stand-in that
speaks LangSmith's REST API (LangSmith's cloud cannot run here). The dataset, the experiment linked to it, one run
per question with our answers and the evaluators' feedback arrive, and say what the local report says."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from evaluations.datasets import resolve_qa
from evaluations.rag import Answered, log_to_langsmith, outputs_of, reference_of, score_outputs, summarize
from evaluations.schemas import DatasetInfo, RagEvaluation, RagQuestionResult
from tests.conftest import free_port
from tests.integration.conftest import VigilEnv
from tests.support.langsmith_standin import LangSmithStandIn, langsmith_standin
from vigil.contracts import Citation, GeneratorInfo, ModelIdentity, Usage
from vigil.settings import get_settings

QUESTIONS = 4
K = 5
API_KEY = "lsv2-standin-key"


@dataclass(frozen=True)
class Evaluated:
    reports: list[dict[str, Any]]  # two runs of the same questions, in order: `--json FILE`, then `--json -`
    stdout: str  # of the first
    standin: LangSmithStandIn

    @property
    def report(self) -> dict[str, Any]:
        return self.reports[0]

    def dataset(self) -> dict[str, Any]:
        return self.standin.dataset_named(self.report["langsmith"]["dataset"])

    def experiment(self, report: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.standin.session_named((report or self.report)["langsmith"]["experiment"])


@pytest.fixture(scope="module")
def evaluated(vigil_env: VigilEnv, served_qa_subset: Path, rag_endpoint: str,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Evaluated]:
    """`vigil eval rag --endpoint` twice with LANGSMITH_API_KEY and LANGSMITH_ENDPOINT pointing at the stand-in."""
    path = tmp_path_factory.mktemp("eval-rag-langsmith-out") / "report.json"
    args = ("eval", "rag", "--dataset", str(served_qa_subset), "--endpoint", rag_endpoint, "--k", str(K), "--limit",
            str(QUESTIONS), "--json")
    with langsmith_standin(API_KEY) as standin:
        env = {"LANGSMITH_API_KEY": API_KEY, "LANGSMITH_ENDPOINT": standin.url, "VIGIL_HTTP_PORT": str(free_port())}
        first = vigil_env.run(*args, str(path), extra_env=env, timeout=600)
        # The report on stdout stays JSON with LangSmith on (evaluate() prints a link of its own).
        second = vigil_env.run(*args, "-", extra_env=env, timeout=600)
        yield Evaluated([json.loads(path.read_text()), json.loads(second.stdout)], first.stdout, standin)


def test_the_cli_reports_langsmith_logged(evaluated: Evaluated, vigil_env: VigilEnv, served_qa_subset: Path) -> None:
    for report in evaluated.reports:
        outcome = report["langsmith"]
        assert outcome["status"] == "logged", outcome
        assert outcome["dataset"] == f"vigil-rag-{served_qa_subset.stem}-{report['dataset']['fingerprint']}"
        assert outcome["experiment"].startswith(f"vigil-rag-{report['generator']}-k{K}-")
        assert MlflowClient(vigil_env.tracking_uri).get_run(report["run_id"]).data.tags["vigil.langsmith"] == "logged"
    assert "LangSmith logged" in evaluated.stdout


def test_every_call_was_answered_and_carried_the_api_key(evaluated: Evaluated) -> None:
    standin = evaluated.standin
    assert standin.unhandled == []
    assert standin.requests and all(r.headers.get("x-api-key") == API_KEY for r in standin.requests)
    assert {r.status for r in standin.requests} <= {200, 202}
    paths = {(r.method, r.path) for r in standin.requests}
    assert {("POST", "/datasets"), ("GET", "/examples"), ("POST", "/sessions"), ("POST", "/runs/multipart")} <= paths


def test_the_dataset_holds_the_questions_as_our_code_sends_them(evaluated: Evaluated) -> None:
    dataset = evaluated.dataset()
    assert dataset["description"].startswith("Vigil RAG QA: ")
    assert dataset["example_count"] == QUESTIONS
    examples = {e["inputs"]["id"]: e for e in evaluated.standin.examples_of(dataset["id"])}
    results = evaluated.report["results"]
    assert len(results) == QUESTIONS and sorted(examples) == sorted(r["id"] for r in results)
    for result in results:
        example = examples[result["id"]]
        assert example["inputs"] == {"id": result["id"], "question": result["question"]}
        assert example["outputs"] == {"answers": result["gold_answers"], "passage_ids": result["gold_passages"]}
        assert example["metadata"] == {"qa_id": result["id"]}


def test_the_same_questions_reuse_the_dataset_in_a_new_experiment(evaluated: Evaluated) -> None:
    first, second = evaluated.reports
    assert first["langsmith"]["dataset"] == second["langsmith"]["dataset"]
    assert first["langsmith"]["experiment"] != second["langsmith"]["experiment"]
    assert len(evaluated.standin.datasets) == 1
    dataset = evaluated.dataset()
    assert len(evaluated.standin.examples_of(dataset["id"])) == QUESTIONS
    assert [evaluated.experiment(r)["reference_dataset_id"] for r in evaluated.reports] == [dataset["id"]] * 2


def test_the_experiment_is_linked_to_the_dataset_and_the_mlflow_run(evaluated: Evaluated) -> None:
    experiment, report = evaluated.experiment(), evaluated.report
    assert experiment["reference_dataset_id"] == evaluated.dataset()["id"]
    assert report["run_id"] in experiment["description"]
    metadata = experiment["extra"]["metadata"]
    assert metadata["mlflow_run_id"] == report["run_id"]
    assert metadata["dataset_fingerprint"] == report["dataset"]["fingerprint"]
    assert (metadata["k"], metadata["source"], metadata["generator"]) == (K, "endpoint", report["generator"])
    # evaluate() closes the experiment with the dataset version it ran on.
    assert metadata["dataset_version"] and metadata["dataset_splits"] == ["base"]


def test_one_run_per_question_with_our_answers(evaluated: Evaluated) -> None:
    examples = {e["id"]: e for e in evaluated.standin.examples_of(evaluated.dataset()["id"])}
    runs = evaluated.standin.runs_in(evaluated.experiment()["id"])
    assert len(runs) == QUESTIONS
    results = {r["id"]: r for r in evaluated.report["results"]}
    assert sorted(examples[run["reference_example_id"]]["inputs"]["id"] for run in runs) == sorted(results)
    for run in runs:
        example = examples[run["reference_example_id"]]
        result = results[example["inputs"]["id"]]
        assert run["inputs"] == example["inputs"]
        assert run["end_time"] and not run.get("error")
        outputs = run["outputs"]
        assert (outputs["answer"], outputs["passages"]) == (result["answer"], result["passages"])
        assert outputs["usage"]["total_tokens"] == result["total_tokens"]
        assert len(outputs["contexts"]) >= len(outputs["passages"])


def test_the_evaluator_feedback_equals_the_local_report(evaluated: Evaluated) -> None:
    standin, experiment = evaluated.standin, evaluated.experiment()
    examples = {e["id"]: e for e in standin.examples_of(evaluated.dataset()["id"])}
    results = {r["id"]: r for r in evaluated.report["results"]}
    scores: dict[str, list[float]] = {}
    for run in standin.runs_in(experiment["id"]):
        result = results[examples[run["reference_example_id"]]["inputs"]["id"]]
        feedback = [f for f in standin.feedback.values() if f["run_id"] == run["id"]]
        assert {f["session_id"] for f in feedback} == {experiment["id"]}
        got = {f["key"]: f["score"] for f in feedback}
        assert len(got) == len(feedback)  # one feedback per evaluator
        assert got == {key: round(value, 4) for key, value in result["scores"].items() if value is not None}
        for key, value in got.items():
            scores.setdefault(key, []).append(value)
        # Each feedback names the evaluator's own traced run.
        for item in feedback:
            assert item["feedback_source"]["metadata"]["__run"]["run_id"] in standin.runs
    metrics = evaluated.report["metrics"]
    assert {"recall_at_k", "reciprocal_rank", "ndcg_at_k", "answer_containment", "token_f1"} <= set(scores)
    assert sum(scores["recall_at_k"]) / QUESTIONS == pytest.approx(metrics["recall"][str(K)], abs=1e-4)
    assert sum(scores["reciprocal_rank"]) / QUESTIONS == pytest.approx(metrics["mrr"], abs=1e-4)
    assert sum(scores["ndcg_at_k"]) / QUESTIONS == pytest.approx(metrics["ndcg"][str(K)], abs=1e-4)
    assert sum(scores["token_f1"]) / QUESTIONS == pytest.approx(metrics["token_f1"], abs=1e-4)


def test_runs_langsmith_refuses_make_the_outcome_failed_not_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """The client uploads runs and feedback in the background and only logs a refusal: the outcome must not say
    `logged` for an experiment whose runs never arrived."""
    standin = LangSmithStandIn(api_key=API_KEY, refuse_ingest=True).start()
    request.addfinalizer(standin.stop)
    monkeypatch.setenv("LANGSMITH_API_KEY", API_KEY)
    monkeypatch.setenv("LANGSMITH_ENDPOINT", standin.url)
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"id": f"q{i}", "question": f"Question {i}?", "answers": [f"answer {i}"],
                                      "passage_ids": [f"Doc_{i}_p000"]}) + "\n" for i in range(2)))
    data = resolve_qa(qa)
    answers = [Answered(f"answer {i}", [Citation(id=f"c{i}", document_id=f"Doc_{i}_p000", title="Doc", score=1.0,
                                                 similarity=0.9, text=f"answer {i} is here")],
                        Usage.of(10, 2), GeneratorInfo(name="extractive", model="extractive"),
                        ModelIdentity(name="text-embedder", version="1"), 0.01) for i in range(2)]
    results = [RagQuestionResult(
        id=item.id, question=item.question, gold_answers=item.answers, gold_passages=item.passage_ids,
        answer=answered.answer, passages=outputs_of(answered)["passages"], first_relevant_rank=1,
        scores=score_outputs(outputs_of(answered), reference_of(item), K), prompt_tokens=10, completion_tokens=2,
        total_tokens=12, latency_ms=10.0) for item, answered in zip(data.items, answers, strict=True)]
    report = RagEvaluation(
        dataset=DatasetInfo(name=str(qa), fingerprint=data.fingerprint, rows=2, domains=data.documents,
                            description=data.description),
        source="in-process", k=K, generator="extractive", generator_model="extractive",
        embedder=ModelIdentity(name="text-embedder", version="1"), metrics=summarize(results, K), results=results,
        run_id="mlflow-run",
    )
    outcome = log_to_langsmith(get_settings(), data, report, answers)
    assert outcome.status == "failed", outcome
    assert "refused" in outcome.message and "in MLflow" in outcome.message
    # Dataset and experiment were created before the runs were refused.
    dataset = standin.dataset_named(f"vigil-rag-qa-{data.fingerprint}")
    assert len(standin.examples_of(dataset["id"])) == 2
    assert [s["reference_dataset_id"] for s in standin.sessions.values()] == [dataset["id"]]
    assert standin.runs == {} and standin.feedback == {}
    assert any(r.path == "/runs/multipart" and r.status == 403 for r in standin.requests)
