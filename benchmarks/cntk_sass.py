"""What the fused CNTK kernel's layer loop costs, read from its machine code; no GPU needed.

Compiles ``cntk_slices`` for an H100 / H200 (sm_90) with the Triton that is installed, as a
launch of ``fused`` on 32x32x3 CNTK-GAP would (through a stand-in driver that names the
GPU), disassembles it with the cuobjdump Triton ships, finds the layer loop (the longest
backward branch) and counts its instructions per field entry and layer, by the unit that
executes them.  Nsight Compute on an H200 (``benchmarks/results/cntk_ncu_h200.log``, depth
11) found no unit saturated: instructions issued on 61% of cycles, with 4 warps per
scheduler (registers allow eight 2-warp programs per SM) too few to hide the latencies.  So
the instruction count and the registers (how many programs an SM holds) are the figures
to drive down.  A proxy, not a timing: benchmarks/cntk_gpu.py measures on a GPU.

    python benchmarks/cntk_sass.py [--label NAME] [--num-warps N] [--precision P]
                                   [--std-loads tma|pointers] [--depths 3,4,6,11,21]
                                   [--max-registers N] [--unrolled-readouts N]
                                   [--out FILE]

adds (or replaces) the row NAME in benchmarks/results/cntk_sass.json (or FILE).  Run it
with PYTHONPATH pointing at another checkout to count that checkout's kernel.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU, not the interpreter

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402

from ntkcheck.kernels import fused  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SIDE, CHANNELS = 32, 3
LAYERS_PER_TURN = 1
"""Layers in one turn of the kernel's layer loop."""
UNITS = {
    "tensor": ("HMMA",),
    "shared": ("LDS", "STS", "LDSM", "STSM"),
    "global": ("LDG", "LDGSTS", "STG", "UTMALDG"),
    "shuffle": ("SHFL",),
    "special": ("MUFU",),
    "barrier": ("BAR",),
}


class StandInDriver:
    """A Triton driver that names the GPU to compile for (compute capability ``arch``) and
    launches nothing, so that a kernel compiles as its launch there would, without one."""

    def __init__(self, arch: int):
        self.arch = arch

    def get_current_device(self) -> int:
        return self.arch  # Triton keeps a kernel cache per device

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return GPUTarget("cuda", self.arch, 32)


def compile_kernel(depths: tuple[int, ...], tma: bool, arch: int = 90):
    """``cntk_slices`` as a CNTK-GAP launch on 32x32x3 images with the first and last layer
    fixed (Table 1's) compiles it for compute capability ``arch``, with fused's options."""
    driver.set_active(StandInDriver(arch))
    x = torch.randn(2, CHANNELS, SIDE, SIDE)
    launch = fused.launch_for(x, x[:1], frozenset(depths), filter_size=3, gap=True,
                              fix_first_last=True, tma=tma)
    return fused.compiled(launch)


def cuobjdump(*args: str) -> str:
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return subprocess.run([str(tool), *args], capture_output=True, text=True, check=True).stdout


def loop_opcodes(sass: str) -> collections.Counter:
    """Opcodes (without modifiers or predicates) of the longest loop.  Back branches from
    after the first EXIT are not loops but the retry paths of barrier waits."""
    code = [(int(m.group(1), 16), m.group(2).strip())
            for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+(.*?);", sass)]
    end = next(address for address, text in code if re.search(r"\bEXIT\b", text))
    loops = []
    for address, text in code:
        branch = re.search(r"\bBRA\b.*?(0x[0-9a-f]+)", text)
        if branch and int(branch.group(1), 16) < address < end:
            loops.append((int(branch.group(1), 16), address))
    start, end = max(loops, key=lambda span: span[1] - span[0])
    return collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", text).split()[0].split(".")[0]
                               for address, text in code if start <= address <= end)


def resources(kernel) -> dict[str, int]:
    """Registers per thread and stack bytes of a compiled kernel."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(kernel.asm["cubin"])
        cubin.flush()
        usage = cuobjdump("-res-usage", cubin.name)
    return {"registers": int(re.search(r"REG:(\d+)", usage).group(1)),
            "stack_bytes": int(re.search(r"STACK:(\d+)", usage).group(1))}


def count(label: str, depths: tuple[int, ...], tma: bool) -> dict:
    kernel = compile_kernel(depths, tma)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(kernel.asm["cubin"])
        cubin.flush()
        opcodes = loop_opcodes(cuobjdump("-sass", cubin.name))
    num_warps = kernel.metadata.num_warps
    # Per field entry and layer of the whole program: work a layout repeats on several warps
    # (Triton replicates a 32 x 32 mma over 4 warps two ways) counts as often as it runs.
    per_thread = SIDE * SIDE / (32 * num_warps)
    scale = 1 / (LAYERS_PER_TURN * per_thread)
    units = {unit: round(sum(opcodes[o] for o in ops) * scale, 2) for unit, ops in UNITS.items()}
    total = sum(opcodes.values())
    units["other"] = round(total * scale - sum(units.values()), 2)
    return {
        "label": label, "target": "sm_90", "triton": triton.__version__,
        "kernel": {"image": f"{SIDE}x{SIDE}x{CHANNELS}", "pooling": "gap",
                   "depth": max(depths), "depths": list(depths), "num_warps": num_warps,
                   "num_stages": kernel.metadata.num_stages, "precision": fused.PRECISION,
                   "std_loads": "tma" if tma else "pointers",
                   "max_registers": fused.MAX_REGISTERS,
                   "unrolled_readouts": fused.UNROLLED_READOUTS},
        **resources(kernel),
        "shared_bytes": kernel.metadata.shared,
        "layers_per_loop_turn": LAYERS_PER_TURN,
        "instructions_per_entry_layer": round(total * scale, 2),
        "by_unit": units,
        "opcodes_per_entry_layer": {o: round(n * scale, 2) for o, n in opcodes.most_common()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default="current")
    parser.add_argument("--num-warps", type=int, default=fused.NUM_WARPS)
    parser.add_argument("--precision", type=int, default=fused.PRECISION)
    parser.add_argument("--std-loads", choices=("tma", "pointers"), default="tma",
                        help="how the std planes are read (fused.STD_LOADS; tma on sm_90)")
    parser.add_argument("--depths", default="11",
                        help="the depths read out in one pass, e.g. 3,4,6,11,21 (Table 1's)")
    parser.add_argument("--max-registers", type=int, default=fused.MAX_REGISTERS or 0,
                        help="fused.MAX_REGISTERS (0: the compiler's choice)")
    parser.add_argument("--unrolled-readouts", type=int, default=fused.UNROLLED_READOUTS,
                        help="fused.UNROLLED_READOUTS")
    parser.add_argument("--out", type=Path, default=RESULTS / "cntk_sass.json")
    args = parser.parse_args()
    fused.NUM_WARPS, fused.PRECISION = args.num_warps, args.precision
    fused.MAX_REGISTERS = args.max_registers or None
    fused.UNROLLED_READOUTS = args.unrolled_readouts
    depths = tuple(sorted(int(d) for d in args.depths.split(",")))
    row = count(args.label, depths, args.std_loads == "tma")
    rows = json.loads(args.out.read_text())["rows"] if args.out.exists() else []
    rows = [r for r in rows if r["label"] != args.label] + [row]
    args.out.write_text(json.dumps({"benchmark": "cntk_sass", "rows": rows}, indent=1) + "\n")
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
