"""What the fused CNTK kernel's layer loop costs, read from its machine code; no GPU needed.

Compiles ``cntk_slices`` for an H100 (sm_90) with the Triton that is installed, disassembles
it with the cuobjdump Triton ships, finds the layer loop (the longest backward branch) and
counts its instructions per field entry and layer, by the unit that executes them.  The
kernel is limited by data movement (Nsight Compute on an H100: L1/shared 83% busy at 1.1
instructions per cycle), so the shared-memory, shuffle and global counts are the figures to
drive down; registers and spills set how many programs an SM holds.  A proxy, not a timing:
benchmarks/cntk_gpu.py measures on a GPU.

    python benchmarks/cntk_sass.py [--label NAME] [--num-warps N] [--precision P]
                                   [--std-loads tma|pointers] [--out FILE]

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

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from ntkcheck.kernels import fused, triton_cntk  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SIDE, CHANNELS, DEPTH = 32, 3, 11
CONSTANTS = dict(P=SIDE, Q=SIDE, EXTENDED=True, CHANNELS=CHANNELS, RADIUS=1, SCALE=2 / 9,
                 DEEPEST=DEPTH, DEPTH_MASK=1 << DEPTH, FIX_FIRST_LAST=True, SYMMETRIC=False,
                 BP=SIDE, BQ=SIDE)
LAYERS_PER_TURN = 2
"""Layers in one turn of the kernel's layer loop (it alternates two layouts)."""
UNITS = {
    "tensor": ("HMMA",),
    "shared": ("LDS", "STS", "LDSM", "STSM"),
    "global": ("LDG", "LDGSTS", "STG", "UTMALDG"),
    "shuffle": ("SHFL",),
    "special": ("MUFU",),
    "barrier": ("BAR",),
}


def argument_type(name: str, tma: bool) -> str:
    if name in ("rows_ptr", "cols_ptr"):
        return "*i32"
    if name in ("std1", "std2") and tma:
        return f"tensordesc<fp32[1, 1, 1, {CONSTANTS['BP']}, {CONSTANTS['BQ']}]>"
    if name.endswith("_ptr") or name in ("std1", "std2"):
        return "*fp32"
    return "fp32" if name in ("scale", "tiny", "snap") else "i32"


def compile_kernel(num_warps: int, precision: int, tma: bool):
    fn = triton_cntk.cntk_slices
    constants = {**CONSTANTS, "PRECISION": precision, "TMA": tma}
    constants = {k: v for k, v in constants.items() if k in fn.arg_names}
    signature = {n: "constexpr" if n in constants else argument_type(n, tma)
                 for n in fn.arg_names}
    source = ASTSource(fn=fn, signature=signature,
                       constexprs={(fn.arg_names.index(k),): v for k, v in constants.items()})
    return triton.compile(source, target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": num_warps, "num_stages": fused.NUM_STAGES})


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


def count(label: str, num_warps: int, precision: int, tma: bool) -> dict:
    kernel = compile_kernel(num_warps, precision, tma)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(kernel.asm["cubin"])
        cubin.flush()
        opcodes = loop_opcodes(cuobjdump("-sass", cubin.name))
        usage = cuobjdump("-res-usage", cubin.name)
    # Per field entry and layer of the whole program: work a layout repeats on several warps
    # (Triton replicates a 32 x 32 mma over 4 warps two ways) counts as often as it runs.
    per_thread = SIDE * SIDE / (32 * num_warps)
    scale = 1 / (LAYERS_PER_TURN * per_thread)
    units = {unit: round(sum(opcodes[o] for o in ops) * scale, 2) for unit, ops in UNITS.items()}
    total = sum(opcodes.values())
    units["other"] = round(total * scale - sum(units.values()), 2)
    return {
        "label": label, "target": "sm_90", "triton": triton.__version__,
        "kernel": {"image": f"{SIDE}x{SIDE}x{CHANNELS}", "pooling": "gap", "depth": DEPTH,
                   "num_warps": num_warps, "num_stages": fused.NUM_STAGES,
                   "precision": precision, "std_loads": "tma" if tma else "pointers"},
        "registers": int(re.search(r"REG:(\d+)", usage).group(1)),
        "stack_bytes": int(re.search(r"STACK:(\d+)", usage).group(1)),
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
    parser.add_argument("--out", type=Path, default=RESULTS / "cntk_sass.json")
    args = parser.parse_args()
    row = count(args.label, args.num_warps, args.precision, args.std_loads == "tma")
    rows = json.loads(args.out.read_text())["rows"] if args.out.exists() else []
    rows = [r for r in rows if r["label"] != args.label] + [row]
    args.out.write_text(json.dumps({"benchmark": "cntk_sass", "rows": rows}, indent=1) + "\n")
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
