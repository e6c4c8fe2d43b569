"""The project's scripts (benchmarks/, studies/: not a package), loaded as modules by tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script(path: str) -> ModuleType:
    """The script at ``path`` (relative to the repository) as a module named by its stem."""
    file = ROOT / path
    spec = importlib.util.spec_from_file_location(file.stem, file)
    assert spec is not None and spec.loader is not None
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # for dataclasses
    spec.loader.exec_module(module)
    return module


def run_main(script: ModuleType, monkeypatch: pytest.MonkeyPatch, *argv: str) -> None:
    """``script.main()`` with ``argv`` as its command line; the test is skipped where the
    CIFAR-10 files it reads are not beside the project (a missing file names itself)."""
    monkeypatch.setattr("sys.argv", [Path(str(script.__file__)).name, *argv])
    try:
        script.main()
    except FileNotFoundError as missing:
        pytest.skip(str(missing))
