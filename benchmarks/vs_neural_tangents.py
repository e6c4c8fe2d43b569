"""ntkcheck against neural-tangents on the CPU: the same kernels to float64 rounding, and the
time per image pair of both in one run on the same machine.

neural-tangents (Google's JAX library, `stax`) is an independent implementation of the
same infinite-width kernels; `nt_kernel.py` builds its stax model of each ntkcheck
architecture, scaled to ntkcheck's conventions, so the kernels must agree exactly.  It runs
in a separate interpreter (``--python``), because jax need not live beside torch:

    python -m venv /tmp/nt && /tmp/nt/bin/pip install jax==0.10.2 absl-py \\
        && /tmp/nt/bin/pip install --no-deps neural-tangents==0.6.5
    python benchmarks/vs_neural_tangents.py --python /tmp/nt/bin/python

writes benchmarks/results/neural_tangents_cpu.json: "agreement" rows (FC, flatten, GAP;
depths 3 to 6; filter sizes 1, 3, 5; non-square images; largest relative difference of the
NTK and the NNGP, float64) and "speed" rows (float32, 32x32x3 random images, all layers
trained since neural-tangents cannot fix any; best and median of REPEATS runs after a
warm-up, jax's compilation excluded).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from cpu_kernels import REPEATS, RESULTS, best_and_median, machine, versions

import ntkcheck as nc

HERE = Path(__file__).resolve().parent
# (arch, one input's shape, depth, filter size): small enough for neural-tangents' float64
# kernels on 2 cores (it keeps every (HW)^2 position pair for flatten too)
AGREEMENT = [
    ("fc", (20,), 3, 3), ("fc", (20,), 6, 3),
    ("flatten", (3, 8, 8), 3, 3), ("flatten", (3, 8, 8), 6, 3),
    ("flatten", (2, 7, 5), 4, 5), ("flatten", (3, 6, 6), 4, 1),
    ("gap", (3, 8, 8), 3, 3), ("gap", (3, 8, 8), 6, 3),
    ("gap", (2, 7, 5), 4, 5), ("gap", (3, 6, 6), 4, 1),
]
# (arch, depth, n1, n2) on 32x32x3: a few seconds to a minute per row for neural-tangents
SPEED = [("fc", 11, 512, 512), ("flatten", 3, 16, 16), ("flatten", 11, 16, 16),
         ("flatten", 21, 16, 16), ("gap", 3, 2, 2), ("gap", 11, 2, 2)]


def architecture(arch: str, depth: int, filter_size: int = 3) -> nc.FC | nc.CNN:
    if arch == "fc":
        return nc.FC(depth=depth)
    return nc.CNN(depth=depth, pooling=arch, filter_size=filter_size, fix_first_last=False)


def neural_tangents(python: str, *args: object) -> subprocess.CompletedProcess:
    done = subprocess.run([python, str(HERE / "nt_kernel.py"), *map(str, args)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"neural-tangents failed ({' '.join(map(str, args))}):\n{done.stderr[-3000:]}")
    return done


def agreement(python: str, arch: str, shape: tuple[int, ...], depth: int, q: int) -> dict:
    gen = torch.Generator().manual_seed(depth * 100 + q)
    x1 = torch.randn(3, *shape, generator=gen, dtype=torch.float64)
    x2 = torch.randn(2, *shape, generator=gen, dtype=torch.float64)
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(f"{tmp}/in.npz", x1=x1.numpy(), x2=x2.numpy())
        neural_tangents(python, "kernel", arch, depth, f"{tmp}/in.npz", f"{tmp}/out.npz", q)
        theirs = dict(np.load(f"{tmp}/out.npz"))
    model = architecture(arch, depth, q)
    row = {"arch": arch, "input_shape": list(shape), "depth": depth,
           "filter_size": None if arch == "fc" else q, "pairs": 6}
    for kernel in ("ntk", "nngp"):
        ours = getattr(model, kernel)(x1, x2).numpy()
        row[f"{kernel}_max_rel_diff"] = float(np.abs(theirs[kernel] / ours - 1).max())
    row["neural_tangents"], row["jax"] = str(theirs["neural_tangents"]), str(theirs["jax"])
    print(json.dumps(row), flush=True)
    return row


def speed(python: str, arch: str, depth: int, n1: int, n2: int) -> list[dict]:
    theirs = json.loads(neural_tangents(python, "time", arch, depth, n1, n2)
                        .stdout.strip().splitlines()[-1])
    gen = torch.Generator().manual_seed(0)
    shape = (3072,) if arch == "fc" else (3, 32, 32)
    x1, x2 = torch.randn(n1, *shape, generator=gen), torch.randn(n2, *shape, generator=gen)
    model = architecture(arch, depth)
    model.ntk(x1[:1], x2[:1])  # warm-up
    ours = best_and_median(lambda: model.ntk(x1, x2))
    rows = []
    for impl, (best, median), extra in (
            ("ntkcheck", ours, {"torch": torch.__version__}),
            ("neural-tangents", (min(theirs["runs"]), float(np.median(theirs["runs"]))),
             {"jax": theirs["jax"], "neural_tangents": theirs["neural_tangents"]})):
        rows.append({"impl": impl, "arch": arch, "image": "32x32x3", "depth": depth,
                     "dtype": "float32", "n1": n1, "n2": n2, "repeats": REPEATS,
                     "us_per_pair": round(best / (n1 * n2) * 1e6, 3),
                     "us_per_pair_median": round(median / (n1 * n2) * 1e6, 3), **extra})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable,
                        help="an interpreter with jax and neural-tangents")
    parser.add_argument("--out", default=str(RESULTS / "neural_tangents_cpu.json"))
    args = parser.parse_args()
    result = {"benchmark": "neural_tangents_cpu", "machine": machine(),
              "versions": versions(),
              "agreement": [agreement(args.python, *case) for case in AGREEMENT],
              "speed": [row for case in SPEED for row in speed(args.python, *case)]}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
