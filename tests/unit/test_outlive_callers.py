"""On SIGTERM a dependency service answers the API worker's last calls before it hands the signal to uvicorn."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

import pytest

from service.http import OutliveCallers
from tests.conftest import wait_until


@pytest.fixture
def stops() -> Iterator[list[int]]:
    """Stands in for uvicorn's handler: the signals handed to it; the process's own handler is back afterwards."""
    handed: list[int] = []

    def uvicorn_handler(signum: int, _frame: FrameType | None) -> None:
        handed.append(signum)

    previous = signal.signal(signal.SIGTERM, uvicorn_handler)
    try:
        yield handed
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_an_idle_service_stops_at_once(stops: list[int]) -> None:
    callers = OutliveCallers(quiet_seconds=0.2, longest_seconds=30)
    assert callers.installed
    os.kill(os.getpid(), signal.SIGTERM)
    wait_until(lambda: stops, timeout=10, what="SIGTERM handed on")
    assert stops == [signal.SIGTERM]


def test_a_call_in_progress_holds_the_signal_until_it_ends(stops: list[int]) -> None:
    callers = OutliveCallers(quiet_seconds=0.2, longest_seconds=30)
    with callers.call():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # a second one changes nothing
        # Longer than the quiet period, and other calls come and go meanwhile.
        for _ in range(5):
            with callers.call():
                threading.Event().wait(0.1)
        assert stops == []
    wait_until(lambda: stops, timeout=10, what="SIGTERM handed on once the calls ended")
    assert stops == [signal.SIGTERM]


def test_calls_that_never_stop_hold_it_only_so_long(stops: list[int]) -> None:
    callers = OutliveCallers(quiet_seconds=60, longest_seconds=0.3)
    with callers.call():
        os.kill(os.getpid(), signal.SIGTERM)
        wait_until(lambda: stops, timeout=10, what="SIGTERM handed on after the longest wait")


def test_outside_the_main_thread_nothing_changes(stops: list[int]) -> None:
    made: list[OutliveCallers] = []
    thread = threading.Thread(target=lambda: made.append(OutliveCallers()))
    thread.start()
    thread.join()
    assert not made[0].installed
    with made[0].call():
        os.kill(os.getpid(), signal.SIGTERM)
        wait_until(lambda: stops, timeout=10, what="SIGTERM to the handler in place, call or no call")
