"""The bearer token of the service's write endpoints (`POST /rag/documents`): configured, or generated per home.

A configured VIGIL_API_TOKEN must be long enough not to be guessed; without one, the first process that needs a
token generates one under ``$VIGIL_HOME`` (0600), so the service and `vigil rag ingest` on the same home agree out
of the box and nothing is writable anonymously.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from vigil.errors import VigilError
from vigil.settings import Settings

MIN_TOKEN_CHARS = 32
TOKEN_FILE = "api_token"


class WeakToken(VigilError):
    """A configured token too short to stand against guessing."""


def token_path(settings: Settings) -> Path:
    return settings.home / TOKEN_FILE


def api_token(settings: Settings) -> str:
    """VIGIL_API_TOKEN when set (refused when shorter than 32 characters), else this home's generated token."""
    configured = settings.api_token.get_secret_value()
    if configured:
        if len(configured) < MIN_TOKEN_CHARS:
            raise WeakToken(
                f"VIGIL_API_TOKEN has {len(configured)} characters; use at least {MIN_TOKEN_CHARS} (e.g. the output "
                "of `python -c 'import secrets; print(secrets.token_urlsafe(32))'`), or leave it empty for a "
                f"generated one in $VIGIL_HOME/{TOKEN_FILE}")
        return configured
    path = token_path(settings)
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: when two processes start together, one writes and the other reads what it wrote.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read(path)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(secrets.token_urlsafe(MIN_TOKEN_CHARS) + "\n")
    return _read(path)


def _read(path: Path) -> str:
    token = path.read_text(encoding="utf-8").strip()
    if len(token) < MIN_TOKEN_CHARS:  # a file still being written by the process that won the race
        import time

        for _ in range(50):
            time.sleep(0.02)
            token = path.read_text(encoding="utf-8").strip()
            if len(token) >= MIN_TOKEN_CHARS:
                break
        else:
            raise WeakToken(f"{path} holds no usable token; delete it and a new one is generated")
    return token
