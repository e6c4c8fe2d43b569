"""Every benchmark script loads: its imports resolve, including the helpers benchmarks take
from one another (vs_neural_tangents.py lost best_and_median from cpu_kernels.py once)."""

from __future__ import annotations

import pytest

from tests.scripts import ROOT, load_script

GPU_AT_IMPORT = {"profile_cntk.py"}  # profiles a CUDA launch as it loads: needs a GPU
SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")
                 if p.name not in GPU_AT_IMPORT)


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_script_loads(name, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # as when run: its folder first
    load_script(f"benchmarks/{name}")
