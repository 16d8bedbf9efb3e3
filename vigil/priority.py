"""The lowest CPU priority, for work that must never slow what is served: the shadow worker (service/shadow.py) and
the reader's training that `vigil up` starts in the background (vigil/up.py)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

LOWEST_NICE = 19  # Linux's lowest nice value


def run_at_lowest_priority() -> None:
    """Lower this process, and every thread it starts afterwards, to the lowest CPU priority; call it before any
    thread exists.

    Three settings, because each covers what the others miss:
    - nice 19: the one that exists on every POSIX system;
    - the SCHED_IDLE class (Linux): the process runs only on a core nothing else wants;
    - when the process leads its own session, its autogroup's nice value: on Linux with autogroup scheduling (most
      distributions' default) each session is a scheduling group, and groups share the cores equally whatever
      their processes' nice values or class. A process in its parent's session leaves the group alone: lowering it
      would lower the parent with it.
    """
    os.setpriority(os.PRIO_PROCESS, 0, LOWEST_NICE)
    with contextlib.suppress(AttributeError, OSError):  # not Linux: the nice value alone
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    if os.getsid(0) == os.getpid():
        with contextlib.suppress(OSError):  # no autogroup (other kernels, other systems)
            Path("/proc/self/autogroup").write_text(str(LOWEST_NICE))


def runs_idle() -> bool:
    """Whether this process is in the SCHED_IDLE class."""
    try:
        return os.sched_getscheduler(0) == os.SCHED_IDLE
    except (AttributeError, OSError):
        return False
