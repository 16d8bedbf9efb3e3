"""The digest of a model's files: computed when a version is registered, recorded in the registry, checked before load.

The reference is the registered version's tags, not a file beside the model: whoever can change the artifact store
(an S3 bucket, MLflow's artifact root) could change a manifest stored with the files as easily as the files. Changing
the tags takes write access to the registry, which is the trust Vigil already gives to whoever registers a version.

A manifest maps each file's path (relative to the folder, with `/`) to its SHA-256; its digest is the SHA-256 of that
map as canonical JSON, so one string names the whole folder.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from vigil.errors import VigilError

if TYPE_CHECKING:
    from mlflow import MlflowClient

DIGEST_TAG = "vigil.digest"  # "sha256:<hex>" of the manifest
FILES_TAG = "vigil.digest.files"  # the manifest itself, as JSON: path -> sha256
_FILE_LIST = TypeAdapter(dict[str, str])


class ArtifactMismatch(VigilError):
    """A model's files are not the ones recorded at registration (or their record is unusable); never loaded."""


class Manifest(BaseModel):
    """Every file of a folder, by relative path, with its SHA-256."""

    model_config = ConfigDict(frozen=True)

    files: dict[str, str]

    @property
    def digest(self) -> str:
        canonical = json.dumps(self.files, sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def manifest_of(folder: Path) -> Manifest:
    """The manifest of every file under ``folder``; a symbolic link is refused (it could point anywhere later)."""
    files: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_symlink():
            raise ArtifactMismatch(f"{relative} is a symbolic link; a model folder holds plain files only")
        if path.is_file():
            with path.open("rb") as file:
                files[relative] = hashlib.file_digest(file, "sha256").hexdigest()
    return Manifest(files=files)


def check(folder: Path, expected: Manifest) -> None:
    """Raise :class:`ArtifactMismatch` naming every file of ``folder`` that is changed, missing or added."""
    found = manifest_of(folder).files
    changed = sorted(name for name in expected.files.keys() & found.keys() if expected.files[name] != found[name])
    missing = sorted(expected.files.keys() - found.keys())
    added = sorted(found.keys() - expected.files.keys())
    problems = ([f"{name} changed (sha256 {found[name][:12]}…, recorded {expected.files[name][:12]}…)"
                 for name in changed]
                + [f"{name} missing" for name in missing] + [f"{name} added" for name in added])
    if problems:
        raise ArtifactMismatch(f"files differ from the digest recorded at registration ({expected.digest}): "
                               + "; ".join(problems))


def record(client: MlflowClient, name: str, version: str, manifest: Manifest) -> None:
    """Record ``manifest`` and its digest as tags of ``name`` v``version``: the reference :func:`recorded` reads."""
    client.set_model_version_tag(name, version, FILES_TAG, json.dumps(manifest.files, sort_keys=True))
    client.set_model_version_tag(name, version, DIGEST_TAG, manifest.digest)


def recorded(client: MlflowClient, name: str, version: str) -> Manifest | None:
    """The manifest recorded for ``name`` v``version``; None when none was (a version registered before digests).

    A digest without its file list, or one that is not the digest of it, raises :class:`ArtifactMismatch`: the
    record itself was changed, so nothing it would vouch for is loaded.
    """
    tags = client.get_model_version(name, version).tags
    digest, files = tags.get(DIGEST_TAG), tags.get(FILES_TAG)
    if digest is None and files is None:
        return None
    what = f"{name} v{version}"
    if digest is None or files is None:
        present, absent = (DIGEST_TAG, FILES_TAG) if files is None else (FILES_TAG, DIGEST_TAG)
        raise ArtifactMismatch(f"{what} has the tag {present} without {absent}: its digest record is incomplete")
    try:
        manifest = Manifest(files=_FILE_LIST.validate_json(files))
    except ValidationError:
        raise ArtifactMismatch(f"{what}'s tag {FILES_TAG} is not a list of files and digests") from None
    if manifest.digest != digest:
        raise ArtifactMismatch(f"{what}'s tag {DIGEST_TAG} ({digest}) is not the digest of its {FILES_TAG} "
                               f"({manifest.digest}): its digest record was changed")
    return manifest
