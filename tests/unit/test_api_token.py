"""The write endpoints' token: a weak configured one is refused, none configured means one generated per home."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from vigil.api_token import MIN_TOKEN_CHARS, WeakToken, api_token, token_path
from vigil.settings import Settings


def settings(home: Path, token: str = "") -> Settings:
    return Settings(home=home, api_token=token)  # type: ignore[arg-type]


def test_a_short_configured_token_is_refused_with_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(WeakToken, match="VIGIL_API_TOKEN has 9 characters; use at least 32"):
        api_token(settings(tmp_path, "s3cretpw!"))
    strong = "x" * MIN_TOKEN_CHARS
    assert api_token(settings(tmp_path, strong)) == strong
    assert not token_path(settings(tmp_path)).exists()  # a configured token writes nothing


def test_without_one_a_private_token_is_generated_once_per_home(tmp_path: Path) -> None:
    first = api_token(settings(tmp_path))
    assert len(first) >= MIN_TOKEN_CHARS
    assert api_token(settings(tmp_path)) == first  # the service and `vigil rag ingest` agree
    assert stat.S_IMODE(token_path(settings(tmp_path)).stat().st_mode) == 0o600
    assert api_token(settings(tmp_path / "other-home")) != first


def test_processes_starting_together_get_the_same_token(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        tokens = set(pool.map(lambda _: api_token(settings(tmp_path)), range(16)))
    assert len(tokens) == 1
