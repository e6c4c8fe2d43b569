"""Seconds per pair of the exact kernels on the CPU: FC, CNTK-V (flatten), CNTK-GAP.

32x32x3 inputs (FC on the flattened 3,072 values), depths 3 / 11 / 21, float64 and float32,
plus one pass that reads out depths 3, 4, 6, 11 and 21 together; each with the torch
reference (backend "torch") and with its activations compiled (backend "compiled").
Cross matrices (n1 x n2 pairs) of random inputs: the cost does not depend on pixel values.
Each row's first call is timed alone (first_call_seconds: for "compiled" it includes
compiling, where no earlier row compiled that kind of tile), then REPEATS more, alternating
with the other backend's; us_per_pair is the best of those, us_per_pair_median the median.

    python benchmarks/cpu_kernels.py            -> benchmarks/results/cpu_kernels.json
    python benchmarks/cpu_kernels.py --gram50 --backend B
        -> benchmarks/results/cpu_gap_gram50_B.json (a 50 x 50 CNTK-GAP Gram matrix at depth
        21, float64, with backend B, "torch" or "compiled": wall time and peak memory)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

import ntkcheck as nc

RESULTS = Path(__file__).resolve().parent / "results"
# (kernel, pooling, n1, n2) per depth: sizes chosen for a few seconds per row here.
SIZES = {
    "FC": {3: (2000, 2000), 11: (2000, 2000), 21: (2000, 2000)},
    "CNTK-V": {3: (100, 100), 11: (60, 60), 21: (40, 40)},
    "CNTK-GAP": {3: (4, 6), 11: (3, 4), 21: (2, 4)},
}
ALL_DEPTHS = (3, 4, 6, 11, 21)
REPEATS = 3  # best of 3: this 2-core VM's memory-bound throughput varies up to 2x run to run
BACKENDS = ("torch", "compiled")


def machine() -> dict[str, object]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
    }


def versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "ntkcheck": nc.__version__}


def architecture(kernel: str, depth: int) -> nc.FC | nc.CNN:
    if kernel == "FC":
        return nc.FC(depth=depth)
    if kernel == "CNTK-V":
        return nc.CNN(depth=depth, pooling="flatten")
    return nc.CNN(depth=depth, pooling="gap", fix_first_last=True)


def inputs(kernel: str, n: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return x.flatten(1) if kernel == "FC" else x


def wall_seconds(fn) -> float:
    """Wall seconds of one call of fn()."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def spread(runs: list[float]) -> tuple[float, float]:
    """Best and median of timed runs."""
    return min(runs), float(np.median(runs))


def best_and_median(fn, repeats: int = REPEATS) -> tuple[float, float]:
    """Best and median wall seconds of ``repeats`` calls of fn()."""
    return spread([wall_seconds(fn) for _ in range(repeats)])


def time_rows(kernel: str, depth: int, dtype: torch.dtype, depths=None) -> list[dict]:
    """A row per backend; the backends' timed calls alternate, so that both see the same
    state of this VM (its speed drifts up to 2x within minutes)."""
    n1, n2 = SIZES[kernel][depth]
    arch = architecture(kernel, depth)
    x1, x2 = inputs(kernel, n1, dtype, 0), inputs(kernel, n2, dtype, 1)

    def seconds(backend: str) -> float:
        return wall_seconds(lambda: arch.ntk(x1, x2, depths=depths, backend=backend))

    first = {backend: seconds(backend) for backend in BACKENDS}
    runs: dict[str, list[float]] = {backend: [] for backend in BACKENDS}
    for _ in range(REPEATS):
        for backend in BACKENDS:
            runs[backend].append(seconds(backend))
    rows = []
    for backend in BACKENDS:
        best, median = spread(runs[backend])
        rows.append({
            "kernel": kernel, "backend": backend, "image": "32x32x3", "depth": depth,
            "depths_in_one_pass": list(depths) if depths else [depth],
            "dtype": str(dtype).removeprefix("torch."), "n1": n1, "n2": n2,
            "pairs": n1 * n2, "first_call_seconds": round(first[backend], 2),
            "repeats": REPEATS, "seconds_best": round(best, 4),
            "us_per_pair": round(best / (n1 * n2) * 1e6, 3),
            "us_per_pair_median": round(median / (n1 * n2) * 1e6, 3)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def table() -> None:
    rows = [row for dtype in (torch.float64, torch.float32)
            for kernel in SIZES for depth in (3, 11, 21)
            for row in time_rows(kernel, depth, dtype)]
    rows += [row for kernel in SIZES
             for row in time_rows(kernel, 21, torch.float64, depths=ALL_DEPTHS)]
    write("cpu_kernels.json", {"benchmark": "cpu_kernels", "machine": machine(),
                               "versions": versions(), "rows": rows})


def gram50(backend: str) -> None:
    x = inputs("CNTK-GAP", 50, torch.float64, 0)
    arch = architecture("CNTK-GAP", 21)
    start = time.perf_counter()
    gram = arch.ntk(x, progress=True, backend=backend)
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    write(f"cpu_gap_gram50_{backend}.json", {
        "benchmark": "cpu_gap_gram50", "machine": machine(), "versions": versions(),
        "kernel": "CNTK-GAP", "backend": backend, "fix_first_last": True, "image": "32x32x3",
        "depth": 21, "dtype": "float64", "n": 50, "pairs": 50 * 51 // 2,
        "seconds": round(seconds, 1),
        "s_per_pair": round(seconds / (50 * 51 / 2), 4), "peak_rss_mib": peak_kib // 1024,
        "max_memory_bytes": 2**30, "finite": bool(torch.isfinite(gram).all()),
    })


def write(name: str, result: dict[str, object]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / name).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {RESULTS / name}", file=sys.stderr)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gram50", action="store_true", help="the 50 x 50 GAP Gram run")
    parser.add_argument("--backend", choices=BACKENDS, default="compiled",
                        help="the --gram50 run's backend (default: compiled)")
    args = parser.parse_args()
    gram50(args.backend) if args.gram50 else table()
