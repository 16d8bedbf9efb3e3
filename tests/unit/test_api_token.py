"""The write endpoints' token: a weak configured one is refused, none configured means one generated per home."""

from __future__ import annotations

import os
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
    assert [path.name for path in tmp_path.iterdir()] == ["api_token"]  # no staging file left behind


def test_the_generated_token_and_the_home_it_creates_are_private_whatever_the_umask(tmp_path: Path) -> None:
    home = tmp_path / "home" / ".vigil"
    previous = os.umask(0o022)  # a usual umask: left to it, the home would be 0755 and the token 0644
    try:
        api_token(settings(home))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(home.stat().st_mode) == stat.S_IMODE(home.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(token_path(settings(home)).stat().st_mode) == 0o600


def test_an_empty_token_file_is_refused_with_what_to_do(tmp_path: Path) -> None:
    token_path(settings(tmp_path)).write_text("\n")
    with pytest.raises(WeakToken, match="holds no usable token; delete it"):
        api_token(settings(tmp_path))
