"""The bearer token of the service's write endpoints (`POST /rag/documents`): configured, or generated per home.

A configured VIGIL_API_TOKEN must be long enough not to be guessed; without one, the first process that needs a
token generates one under ``$VIGIL_HOME`` (0600; the home, when it makes it, 0700), so the service and
`vigil rag ingest` on the same home agree out of the box and nothing is writable anonymously.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from vigil.credentials import create_private_file, ensure_private_dir
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
    ensure_private_dir(path.parent)
    # Written whole under a name of its own, then linked into place: when two processes start together, the
    # link of one fails and it reads the other's token, and no reader ever sees half a file.
    staging = create_private_file(path.with_name(f".{TOKEN_FILE}.{secrets.token_hex(8)}.partial"))
    try:
        staging.write_text(secrets.token_urlsafe(MIN_TOKEN_CHARS) + "\n", encoding="utf-8")
        with contextlib.suppress(FileExistsError):  # another process linked its token first: read that one
            os.link(staging, path)
    finally:
        staging.unlink()
    return _read(path)


def _read(path: Path) -> str:
    token = path.read_text(encoding="utf-8").strip()
    if len(token) < MIN_TOKEN_CHARS:
        raise WeakToken(f"{path} holds no usable token; delete it and a new one is generated")
    return token
