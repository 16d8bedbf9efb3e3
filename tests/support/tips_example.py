"""`examples/train_tips.py`, imported as the user would run it (it is a script, not a package)."""

from __future__ import annotations

import importlib.util
from typing import Any

from tests.conftest import REPO_ROOT

CLASSIFIER, REGRESSOR = "tips-time", "tips-tip"


def example() -> Any:
    spec = importlib.util.spec_from_file_location("train_tips", REPO_ROOT / "examples" / "train_tips.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
