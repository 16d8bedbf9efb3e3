"""Shared test set-up: markers by directory, a clean working directory, bounded polling."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from vigil.settings import get_settings

T = TypeVar("T")


# pytest-timeout's default (pyproject.toml) is sized for integration tests, which may start the session's servers;
# a unit test that takes this long is hanging.
UNIT_TIMEOUT_SECONDS = 120


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/tests/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)
        elif "/tests/unit/" in str(item.path):
            item.add_marker(pytest.mark.unit)
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(UNIT_TIMEOUT_SECONDS))


CHROMIUM = "/usr/bin/chromium"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """A `browser` test skips on a machine without Chromium, but fails on CI: `make test` installs it there, and a
    CI run that silently skipped the dashboard check would look green while checking nothing."""
    if item.get_closest_marker("browser") is None or Path(CHROMIUM).exists():
        return
    reason = f"needs Debian's chromium ({CHROMIUM}); `make test` installs it when run as root with apt"
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        pytest.fail(f"{reason}, and CI={os.environ['CI']}: on CI a missing browser is a failure", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    """Settings are cached per process; each test reads the environment it set up."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(check: Callable[[], T], timeout: float = 30.0, interval: float = 0.2, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T = check()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
        last = check()
    return last


REPO_ROOT = Path(__file__).resolve().parent.parent
VIGIL_BIN = str(Path(os.environ.get("VIRTUAL_ENV", REPO_ROOT / ".venv")) / "bin" / "vigil")
