"""The fused kernel compiles for real GPUs, checked without one.

The interpreter runs the kernel's arithmetic but compiles nothing, so a change that only the
compiler rejects (a layout, a descriptor, registers) would pass the other tests.  Here
Triton's own compiler, through the ptxas it ships, builds the kernel for Hopper (sm_90) and
Ampere (sm_80) by ``fused.compile_error``, the probe "auto" runs before its first TMA launch,
under a stand-in driver that names the target and launches nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

SCRIPT = textwrap.dedent('''
    import json
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.runtime.driver import driver
    from ntkcheck.kernels import fused

    class Target:
        """A driver that names the GPU to compile for; nothing is launched."""
        def __init__(self, arch):
            self.arch = arch
        def get_current_device(self):
            return self.arch  # Triton keeps a kernel cache per device
        def get_current_stream(self, device=None):
            return 0
        def get_current_target(self):
            return GPUTarget("cuda", self.arch, 32)

    x = torch.randn(3, 3, 32, 32)
    found = {}
    for arch, gap, tma, gram in [(90, True, True, False), (90, False, True, True),
                                 (90, True, False, True), (80, True, False, False)]:
        driver.set_active(Target(arch))
        launch = fused.launch_for(x, None if gram else x[:2], frozenset((3, 21)),
                                  filter_size=3, gap=gap, fix_first_last=gap, tma=tma)
        name = f"sm_{arch} {'gap' if gap else 'flatten'} {'tma' if tma else 'pointers'}"
        found[name] = fused.compile_error(launch)
    print(json.dumps(found))
''')


def test_compiles_for_sm90_with_tma_and_sm80_with_pointers(tmp_path):
    from triton.runtime.driver import driver

    if not hasattr(driver, "set_active"):
        pytest.skip("this Triton has no driver.set_active to compile for a named GPU")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile now, not from an earlier run's cache
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(found) == 4
    assert found == dict.fromkeys(found), {k: v for k, v in found.items() if v}
    assert list(tmp_path.rglob("*.cubin")), "nothing was compiled"
