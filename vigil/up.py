"""`vigil up`: bring up the embedded stack and serve, stopping on Ctrl-C what it started.

It runs the other stages as `vigil …` sub-processes, so the core still imports none of their packages: MLflow up,
the embedder and the sentiment model registered if missing, the shipped corpus ingested on first start, the
Evidently UI in the background, the service in the foreground, and then, in the background, the RAG span reader
trained if none is registered (the RAG service switches to it when its alias appears).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from vigil import mlflow_server
from vigil.credentials import ensure_private_dir, mask_url
from vigil.errors import VigilError
from vigil.mlflow_auth import ADMIN_USERNAME
from vigil.priority import run_at_lowest_priority
from vigil.settings import Settings

logger = logging.getLogger(__name__)

REPO_DATA = Path(__file__).resolve().parent.parent / "data"


@dataclass
class Stack:
    settings: Settings
    console: Console
    started_mlflow: bool = False
    background: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def vigil(self, *args: str, check: bool = True) -> int:
        """Run one `vigil` command in the foreground, output straight to the terminal."""
        code = subprocess.call([sys.executable, "-m", "vigil.cli", *args])  # our own CLI
        if check and code != 0:
            raise VigilError(f"`vigil {' '.join(args)}` failed with exit code {code}")
        return code

    def spawn(self, args: list[str], log_name: str, lowest_priority: bool = False) -> subprocess.Popen[bytes]:
        log_dir = self.settings.home / "logs"
        ensure_private_dir(log_dir)
        process = subprocess.Popen(  # our own CLI
            [sys.executable, "-m", "vigil.cli", *args], stdout=(log_dir / log_name).open("ab"),
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=run_at_lowest_priority if lowest_priority else None,  # after its new session begins
        )
        self.background.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.background):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)  # SIGINT is ignored by a job started in the background
        for process in self.background:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        if self.started_mlflow:
            mlflow_server.down(self.settings)
            self.console.print("stopped the MLflow server this run started")


def _stop_on_sigterm(signum: int, _frame: object) -> None:
    # A supervisor stops `vigil up` with SIGTERM; Python's default would end this process at once and leave the
    # service, the Evidently UI and the MLflow server it started running without it. Unwinding runs `stop_all`.
    raise SystemExit(128 + signum)


def train_reader_in_background(stack: Stack) -> subprocess.Popen[bytes]:
    """`vigil train reader --if-missing` as a background job of the stack (it does nothing when a reader is
    registered already); stopped with the stack like the others. At the lowest priority: it takes the cores for
    most of an hour, and the service started before it must keep answering as fast as without it."""
    process = stack.spawn(["train", "reader", "--if-missing"], "train-reader.log", lowest_priority=True)
    stack.console.print("RAG span reader: training in the background when none is registered (log "
                        f"{stack.settings.home / 'logs' / 'train-reader.log'}); answers are extractive until it is")
    return process


def up(settings: Settings, console: Console, serve: bool = True, evidently_ui: bool = True) -> int:
    stack = Stack(settings, console)
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    state, word = mlflow_server.status(settings)
    try:
        if word != "running":
            state, stack.started_mlflow = mlflow_server.up(settings)
        console.print(f"MLflow: {mask_url(state.uri if state else settings.mlflow_tracking_uri)}")
        if state is not None and state.auth:
            console.print(f"  log in as {ADMIN_USERNAME}; `vigil mlflow credentials` prints the password (and the "
                          "variables your own MLflow scripts need)")
        stack.vigil("train", "embedder", "--if-missing")
        stack.vigil("train", "sentiment", "--if-missing")
        if settings.milvus_uri or not Path(settings.milvus_target).exists():
            # First start (or a Milvus server, where re-ingesting is idempotent): fill the collection.
            stack.vigil("rag", "ingest", str(REPO_DATA / "rag" / "corpus.jsonl"))
        if evidently_ui:
            stack.spawn(["monitor", "ui"], "evidently-ui.log")
            console.print(f"Evidently UI: http://127.0.0.1:{settings.evidently_ui_port} "
                          f"(log {settings.home / 'logs' / 'evidently-ui.log'})")
        if not serve:
            return 0
        server = subprocess.Popen([sys.executable, "-m", "vigil.cli", "serve"])
        if settings.generator == "reader":
            # After serving starts, so the first answer never waits for it: the extractive generator answers until
            # the reader is registered, and the RAG service follows its alias and switches by itself.
            train_reader_in_background(stack)
        # While serving, SIGTERM goes on to `vigil serve`, which drains BentoML; its exit then ends this run.
        signal.signal(signal.SIGTERM, lambda signum, _frame: server.send_signal(signum))
        try:
            return server.wait()
        except KeyboardInterrupt:
            server.send_signal(signal.SIGINT)
            try:
                return server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                return server.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
        stack.stop_all()
