"""`vigil rag …` against a real Milvus Lite in a temporary home, and through a stand-in service when one is up."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from service.rag.cli import app
from tests.conftest import REPO_ROOT, free_port
from tests.support.local_http import respond
from vigil.contracts import IngestReport

CORPUS = REPO_ROOT / "data" / "rag" / "corpus.jsonl"


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """On a busy 2-core machine two OpenMP threads spin against each other (~25× slower single queries)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        "VIGIL_HOME": str(tmp_path / "home"),
        "VIGIL_HTTP_PORT": str(free_port()),  # no service there: the CLI works in-process
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",  # registry down: version "unregistered"
        "VIGIL_API_TOKEN": "cli-test-token-long-enough-to-be-accepted",
    }


@pytest.fixture
def inputs(tmp_path: Path) -> list[Path]:
    passages = [line for line in CORPUS.read_text(encoding="utf-8").splitlines()
                if json.loads(line)["id"].startswith("Black_Death_p00")]
    jsonl = tmp_path / "black_death.jsonl"
    jsonl.write_text("\n".join(passages) + "\n", encoding="utf-8")
    note = tmp_path / "vigil.md"
    note.write_text("# Vigil\n\nVigil answers questions from a Milvus collection and cites its sources.\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    return [jsonl, note, empty]


def test_ingest_stats_query_delete_in_process(env: dict[str, str], inputs: list[Path]) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["ingest", *map(str, inputs), "--chunk-tokens", "128", "--overlap", "20"], env=env)
    assert result.exit_code == 2, result.output  # ingested, with one input skipped
    assert "ingested 11 documents" in result.output
    assert "text-embedder vunregistered" in result.output
    assert "empty.txt" in result.output and "file is empty" in result.output

    result = runner.invoke(app, ["stats"], env=env)
    assert result.exit_code == 0, result.output
    assert "milvus-lite" in result.output and "hybrid" in result.output
    assert "│ documents                │ 11" in result.output

    result = runner.invoke(app, ["query", "What does Vigil cite?", "--top-k", "2", "--json"], env=env)
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["citations"][0]["document_id"] == "vigil"
    assert "[1]" in answer["answer"]
    assert answer["usage"]["total_tokens"] == answer["usage"]["prompt_tokens"] + answer["usage"]["completion_tokens"]

    result = runner.invoke(app, ["query", "How did the Black Death spread?"], env=env)
    assert result.exit_code == 0, result.output
    assert "citations" in result.output and "usage:" in result.output and "Black_Death_p00" in result.output

    result = runner.invoke(app, ["delete", "vigil"], env=env)
    assert result.exit_code == 0 and "deleted" in result.output
    assert runner.invoke(app, ["delete", "vigil"], env=env).exit_code == 1


def test_ingest_with_nothing_readable_exits_1(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text("{broken\n")
    result = CliRunner().invoke(app, ["ingest", str(tmp_path / "bad.jsonl")], env=env)
    assert result.exit_code == 1
    assert "invalid JSON" in result.output


@pytest.fixture
def running_service(env: dict[str, str]) -> Iterator[list[dict[str, Any]]]:
    """A stand-in for `vigil serve` on VIGIL_HTTP_PORT: answers /readyz and POST /rag/documents."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._reply(200, {"ready": True})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append({"path": self.path, "authorization": self.headers.get("Authorization"), **body})
            report = IngestReport(documents=len(body["documents"]), chunks=len(body["documents"]), seconds=0.1)
            self._reply(200, json.loads(report.model_dump_json()))

        def _reply(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            respond(self, status, data)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", int(env["VIGIL_HTTP_PORT"])), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield received
    server.shutdown()
    server.server_close()


def test_ingest_goes_through_the_running_service(env: dict[str, str], inputs: list[Path],
                                                 running_service: list[dict[str, Any]]) -> None:
    result = CliRunner().invoke(app, ["ingest", *map(str, inputs)], env=env)
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())  # rich wraps long lines at the terminal width
    assert "sending 11 documents through it" in output
    assert "ingested 11 documents" in output and "empty.txt: file is empty" in output
    [request] = running_service
    assert request["path"] == "/rag/documents"
    assert request["authorization"] == "Bearer cli-test-token-long-enough-to-be-accepted"
    assert {d["id"] for d in request["documents"]} == {"vigil", *(f"Black_Death_p00{i}" for i in range(10))}
    # The CLI never opened the store: the service owns it.
    assert not (Path(env["VIGIL_HOME"]) / "milvus").exists()
