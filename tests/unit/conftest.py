"""Unit tests: no servers, and nothing from the developer's working directory."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _empty_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read `.env` from the working directory: a developer's own must not change what a test sees. A test
    that needs a repo file names it from `tests.conftest.REPO_ROOT`."""
    monkeypatch.chdir(tmp_path)
