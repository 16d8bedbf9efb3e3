"""Keeping credentials out of sight: one masking of a URL for everything Vigil shows, and private files on disk.

Settings may hold URLs with credentials in them (a database password in ``VIGIL_INFERENCE_LOG_URL`` or
``VIGIL_MLFLOW_BACKEND_STORE_URI``, a token in ``VIGIL_ALERT_WEBHOOK``). Whatever prints, logs or records such a URL
shows :func:`mask_url` of it — a webhook's, whose path may be its secret, ``mask_url(url, keep_path=False)``. What
Vigil writes under ``$VIGIL_HOME`` (state files, logs, the inference log, the MLflow store) is readable by its owner
only: directories it creates are 0700, files 0600.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

MASK = "***"
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600

# scheme://netloc path ?query #fragment, each part kept verbatim so that a URL without credentials comes back as it was.
_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<netloc>[^/?#]*)(?P<path>[^?#]*)"
                  r"(?:\?(?P<query>[^#]*))?(?P<fragment>#.*)?$", re.DOTALL)
# Query parameters that carry credentials: token, api_key, secret, password, passwd, pwd, and signed URLs' parts
# (sig, X-Amz-Signature, X-Amz-Credential). Masking a harmless parameter by mistake costs a reader nothing.
_SECRET_PARAMETER = re.compile(r"token|key|secret|pass|pwd|sig|credential|auth", re.IGNORECASE)


def mask_url(url: str, *, keep_path: bool = True) -> str:
    """``url`` safe to show: ``user:password@`` becomes ``user:***@`` and the value of every query parameter named
    like a credential (token, key, secret, password…) becomes ``***``. Anything that is not a ``scheme://`` URL — a
    plain path, an empty setting — comes back unchanged.

    ``keep_path=False`` is for URLs whose path is the secret, as webhooks' are
    (``https://hooks.slack.com/services/T0/B0/SECRET``): all after the host — path, query and fragment — shows as
    ``/***``."""
    match = _URL.match(url)
    if match is None:
        return url
    netloc = match["netloc"]
    userinfo, at, host = netloc.rpartition("@")  # rpartition: a password may hold an unescaped "@"
    if at:
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{host}" if colon else netloc
    if not keep_path:
        rest = url[match.end("netloc"):]
        return match["scheme"] + netloc + (f"/{MASK}" if rest.strip("/") else rest)
    query = match["query"]
    if query is not None:
        query = "&".join(_mask_parameter(part) for part in query.split("&"))
    return (match["scheme"] + netloc + match["path"] + (f"?{query}" if query is not None else "")
            + (match["fragment"] or ""))


def _mask_parameter(part: str) -> str:
    name, equals, value = part.partition("=")
    return f"{name}={MASK}" if equals and value and _SECRET_PARAMETER.search(name) else part


def ensure_private_dir(path: Path) -> Path:
    """``path`` as a directory, it and every missing parent created readable by the owner only (0700, whatever the
    umask). A directory that already exists keeps its mode: it may be shared on purpose (``/tmp``, a mount point)."""
    missing: list[Path] = []
    current = path
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:  # another process made it meanwhile, with its own mode
            continue
        directory.chmod(PRIVATE_DIR_MODE)
    if not path.is_dir():
        raise NotADirectoryError(f"{path} exists and is not a directory")
    return path


def create_private_file(path: Path) -> Path:
    """Create ``path`` empty and readable by the owner only (0600, whatever the umask) unless it exists; an existing
    file keeps its mode and content. Writing it afterwards (``write_text``, ``open("ab")``) keeps the mode."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except FileExistsError:
        return path
    try:
        os.fchmod(descriptor, PRIVATE_FILE_MODE)
    finally:
        os.close(descriptor)
    return path
