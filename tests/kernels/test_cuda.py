"""CUDA against CPU (run with `pytest -m gpu` on a machine with a GPU; skipped elsewhere)."""

from __future__ import annotations

import pytest
import torch

import ntkcheck as nc

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("arch", [
    nc.FC(depth=5),
    nc.CNN(depth=5, pooling="flatten"),
    nc.CNN(depth=5, pooling="gap", fix_first_last=True),
], ids=repr)
# "compiled" in float64 only: float32 CNN inputs take the fused kernel, and each compile on
# a GPU costs seconds of the device session's pytest budget
@pytest.mark.parametrize("dtype,backend", [(torch.float64, "auto"), (torch.float32, "auto"),
                                           (torch.float64, "compiled")])
def test_cuda_matches_cpu(arch, dtype, backend):
    x = torch.randn(5, 3, 8, 8, dtype=torch.float64)
    x = x.flatten(1) if isinstance(arch, nc.FC) else x
    want = arch.ntk(x, depths=(3, 5), backend="torch")
    got = arch.ntk(x.to("cuda", dtype), depths=(3, 5), backend=backend)
    for d in want:
        assert got[d].device.type == "cuda" and got[d].dtype == dtype
        rel = (got[d].cpu().double() - want[d]).abs().max() / want[d].abs().max()
        assert rel < (1e-12 if dtype == torch.float64 else 1e-5)
