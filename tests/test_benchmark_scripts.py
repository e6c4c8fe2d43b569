"""Every benchmark script loads: its imports resolve, including the helpers benchmarks take
from one another (vs_neural_tangents.py lost best_and_median from cpu_kernels.py once)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from ntkcheck.kernels import fused
from tests.scripts import ROOT, load_script

GPU_AT_IMPORT = {"profile_cntk.py"}  # profiles a CUDA launch as it loads: needs a GPU
COMPILES_FOR_GPU = {"cntk_sass.py"}
"""Scripts that drop TRITON_INTERPRET before importing Triton, since Triton reads it as
kernels are defined: loaded in this process they would leave every later test of the fused
kernel without the interpreter (as cntk_sass.py once did), or fail on a Triton imported
under it."""
SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")
                 if p.name not in GPU_AT_IMPORT)


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_script_loads(name, monkeypatch):
    interpreting = os.environ.get("TRITON_INTERPRET")
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # as when run: its folder first
    if name in COMPILES_FOR_GPU:  # in a process of its own, as when it runs
        subprocess.run([sys.executable, "-c", "from tests.scripts import load_script; "
                        f"load_script('benchmarks/{name}')"], cwd=ROOT, check=True)
    else:
        load_script(f"benchmarks/{name}")
    assert os.environ.get("TRITON_INTERPRET") == interpreting


def test_the_gpu_benchmark_cases_run_on_the_cpu(monkeypatch):
    """cntk_gpu.py's cases on tiny images, the fused kernel under the Triton interpreter:
    a case that raises on the GPU costs its figures until a session is lent one again."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    bench = load_script("benchmarks/cntk_gpu.py")
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "cpu")
    monkeypatch.setattr(bench, "REPEATS", 1)
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    one_pass = bench.row("triton", "gap", 4, x[:1], x, "triton", depths=(3, 4))
    assert (one_pass["pairs"], one_pass["depths"], one_pass["depth"]) == (3, [3, 4], 4)
    assert one_pass["us_per_pair"] > 0 and "variant" not in one_pass
    alone = bench.row("torch", "flatten", 3, x, x, "torch", variant={"precision": 3})
    assert alone["pairs"] == 9 and "depths" not in alone and alone["variant"]["precision"] == 3
    alone = bench.kernel_only(x[:1], x[1:], 3, launches=1)
    assert (alone["impl"], alone["pairs"], alone["depth"]) == ("triton-kernel", 2, 3)
    assert alone["us_per_pair"] > 0
    with bench.variant(precision=2):
        found = bench.sustained(x[:1], x[:2], seconds=0, depths=(3, 5))
    assert fused.PRECISION == 3  # restored
    assert (found["pairs"], found["depth"], found["depths"]) == (2, 5, [3, 5])
    assert found["variant"]["precision"] == 2
    timing = found["sustained"]
    assert timing["calls"] == 1 and timing["us_per_pair_first"] == timing["us_per_pair_last"]
    assert found["us_per_pair"] == timing["us_per_pair_first"] > 0
