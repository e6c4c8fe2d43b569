"""One CNTK-GAP launch (depth 11, 32x32x3, 64 x 16 pairs) to profile with Nsight Compute:

    ncu --kernel-name cntk_slices --launch-skip 1 --launch-count 1 \
        --section SpeedOfLight --section Occupancy --section WarpStateStats \
        --section ComputeWorkloadAnalysis python benchmarks/profile_cntk.py
"""

import torch

import ntkcheck as nc

x = torch.randn(64, 3, 32, 32, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
arch = nc.CNN(depth=11, pooling="gap", fix_first_last=True)
for _ in range(2):  # the first launch compiles
    arch.ntk(x, x[:16])
torch.cuda.synchronize()
