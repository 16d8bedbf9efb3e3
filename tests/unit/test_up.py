"""`vigil up` stopped by a supervisor's SIGTERM takes down what it started: the service gets the signal (and drains),
the background processes are stopped, no orphan is left.

The stages that need MLflow, models and Milvus are replaced by stand-ins inside a real `up()` process; the signal
handling and the process tree are the real ones."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil

from tests.conftest import REPO_ROOT, wait_until

STAND_INS = textwrap.dedent("""
    import subprocess, sys
    from pathlib import Path
    from rich.console import Console
    from vigil import mlflow_server, up
    from vigil.settings import Settings

    marks = Path(sys.argv[1])
    mlflow_server.status = lambda settings: (None, "running")
    up.Stack.vigil = lambda self, *args, check=True: 0
    real_popen = subprocess.Popen
    SERVE = ("import signal, sys, time, pathlib; mark = pathlib.Path(sys.argv[1]);"
             "signal.signal(signal.SIGTERM, lambda *_: (mark.write_text('drained'), sys.exit(0)));"
             "mark.with_name('serving').write_text(''); time.sleep(120)")

    def stand_in(args, *rest, **options):
        if args[-1] == "serve":
            args = [sys.executable, "-c", SERVE, str(marks / "serve")]
        else:  # the Evidently UI, the reader's training in the background (its own words kept as arguments)
            args = [sys.executable, "-c", "import time; time.sleep(120)", *args[3:]]
        return real_popen(args, *rest, **options)

    up.subprocess.Popen = stand_in
    settings = Settings(home=marks / "home")
    Path(settings.milvus_target).parent.mkdir(parents=True, exist_ok=True)
    Path(settings.milvus_target).touch()  # the corpus counts as ingested
    sys.exit(up.up(settings, Console()))
""")


def test_sigterm_stops_vigil_up_and_everything_it_started(tmp_path: Path) -> None:
    script = tmp_path / "up_with_stand_ins.py"
    script.write_text(STAND_INS)
    process = subprocess.Popen([sys.executable, str(script), str(tmp_path)], cwd=REPO_ROOT,
                               env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "VIGIL_GENERATOR": "reader"},
                               stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_until(lambda: (tmp_path / "serving").exists(), timeout=60, what="the service stand-in")
        # The service, the Evidently UI and the reader's training, started after the service.
        children = wait_until(lambda: len(found := psutil.Process(process.pid).children(recursive=True)) == 3
                              and found, timeout=30, what="the three processes vigil up starts")
        # The training runs at the lowest priority, so the service it shares the cores with answers as fast.
        niceness = {" ".join(child.cmdline()[3:5]): child.nice() for child in children}
        assert niceness.get("train reader") == 19 and niceness.get("monitor ui") == os.nice(0), niceness
        training = next(child for child in children if child.cmdline()[3:5] == ["train", "reader"])
        autogroup = Path(f"/proc/{training.pid}/autogroup")
        if autogroup.exists():  # its own session is its own scheduling group: that group's priority is lowered too
            assert autogroup.read_text().split()[-1] == "19", autogroup.read_text()
        if hasattr(os, "SCHED_IDLE"):  # Linux: and it runs only on a core nothing else wants
            assert os.sched_getscheduler(training.pid) == os.SCHED_IDLE

        process.send_signal(signal.SIGTERM)  # to `vigil up` alone, as systemd or Kubernetes would
        assert process.wait(timeout=60) == 0, process.stderr.read() if process.stderr else ""
        assert (tmp_path / "serve").read_text() == "drained"  # the service got the signal and stopped itself
        _gone, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, f"orphans left: {alive}"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
