"""The arrows of docs/architecture.md hold in the code: which package may import which.

Read from the source with `ast`, so an import inside a function or under TYPE_CHECKING counts as much as one at the
top: an arrow is a dependency whenever the code can follow it.
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("vigil", "telemetry", "training", "service", "monitoring", "evaluations")

# package -> the project packages it may import (itself always). docs/architecture.md says why.
ALLOWED: dict[str, set[str]] = {
    "vigil": set(),
    "telemetry": {"vigil"},
    "training": {"vigil"},
    "service": {"vigil", "telemetry"},
    "monitoring": {"vigil", "telemetry"},
    "evaluations": {"vigil", "telemetry", "training", "service"},
}


def project_imports(path: Path) -> set[str]:
    """The top-level project packages (and `bench`, `tests`) that one file imports."""
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        imported.update(name.split(".")[0] for name in names)
    return imported & {*PACKAGES, "bench", "tests"}


def violations(package: str) -> list[str]:
    found = []
    for path in sorted((REPO_ROOT / package).rglob("*.py")):
        for target in sorted(project_imports(path) - ALLOWED[package] - {package}):
            found.append(f"{path.relative_to(REPO_ROOT)} imports {target}")
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_what_the_architecture_allows(package: str) -> None:
    assert violations(package) == []


def test_the_checker_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "module.py"
    source.write_text("import os\n\ndef f():\n    from service.api import Vigil\n    import training.data\n")
    assert project_imports(source) == {"service", "training"}


def test_the_bento_ships_no_job_or_evaluation_code() -> None:
    bentofile = (REPO_ROOT / "bentofile.yaml").read_text(encoding="utf-8")
    include = bentofile.split("include:", 1)[1].split("exclude:", 1)[0]
    assert '"telemetry/**/*.py"' in include and '"service/**/*.py"' in include
    for package in ("monitoring", "evaluations", "training", "bench", "tests"):
        assert package not in include


def private_names_imported_across_modules(path: Path) -> list[str]:
    """``from other.module import _private``: one module reaching into another's helper."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] not in PACKAGES:
                continue
            found += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")
                      and not a.name.startswith("__")]
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_imports_another_modules_private_helpers(package: str) -> None:
    found = {str(path.relative_to(REPO_ROOT)): names for path in sorted((REPO_ROOT / package).rglob("*.py"))
             if (names := private_names_imported_across_modules(path))}
    assert found == {}


def test_the_readme_stands_alone_and_names_every_folder() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)]+)\)", readme)
    local = [t for t in targets if not t.startswith(("http://", "https://", "#"))]
    assert "docs/architecture.md" in local
    for target in local:
        assert not target.startswith(("/", "..")), target
        assert (REPO_ROOT / target.split("#")[0]).exists(), target
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    folders = {line.split("/")[0] for line in tracked.splitlines() if "/" in line}
    assert folders, "no folders found"
    for folder in folders:
        assert f"`{folder}/`" in layout, f"README's layout does not name {folder}/"
