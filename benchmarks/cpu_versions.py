"""This checkout's CPU kernels against an earlier revision's, timed in one process, in turns.

On a shared 2-core VM the same code runs up to 2x slower from one run to the next, so two
separate runs of `cpu_kernels.py` cannot show a 20-40% change.  Here both versions are
loaded side by side (the base from ``git archive REV``) and each repetition times both on
the same inputs, the base first on even repetitions and last on odd ones; the best and the
median of the repetitions are compared.  Rows: CNTK-GAP and CNTK-V at depths 3 and 21 (the
sizes of `cpu_kernels.py`), float64 and float32.  ``--by-layer`` times the NTK split by
layer in both versions, and this version's whole NTK in the same turns (its cost
against the plain pass).

    python benchmarks/cpu_versions.py --base 260eb37   -> benchmarks/results/cpu_versions.json
    python benchmarks/cpu_versions.py --base REV --by-layer   -> cpu_versions_by_layer.json
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cpu_kernels import SIZES, inputs, machine, spread, versions, wall_seconds, write

import ntkcheck as nc

ROOT = Path(__file__).resolve().parent.parent
KERNELS: dict[str, dict[str, Any]] = {"CNTK-V": {"pooling": "flatten"},
                                     "CNTK-GAP": {"pooling": "gap", "fix_first_last": True}}
DEPTHS = (3, 21)


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def load_revision(rev: str, into: Path) -> types.ModuleType:
    """The ``ntkcheck`` package of git revision ``rev``, imported as ``ntkcheck_base``."""
    archive = into / "base.tar"
    git("archive", "-o", str(archive), rev, "ntkcheck")
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    spec = importlib.util.spec_from_file_location(
        "ntkcheck_base", into / "ntkcheck" / "__init__.py",
        submodule_search_locations=[str(into / "ntkcheck")])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["ntkcheck_base"] = module
    spec.loader.exec_module(module)
    return module


def compare(
    base: types.ModuleType, kernel: str, depth: int, dtype: torch.dtype, repeats: int,
    by_layer: bool,
) -> dict:
    n1, n2 = SIZES[kernel][depth]
    x1, x2 = inputs(kernel, n1, dtype, 0), inputs(kernel, n2, dtype, 1)
    this = nc.CNN(depth=depth, **KERNELS[kernel])
    split = {"by_layer": True} if by_layer else {}
    runs = {"base": functools.partial(base.CNN(depth=depth, **KERNELS[kernel]).ntk, **split),
            "this": functools.partial(this.ntk, **split)}
    if by_layer:
        runs["this_whole"] = this.ntk
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run(x1[:1], x2[:1])  # warm-up
    turns = list(runs.items())
    for repeat in range(repeats):
        shift = repeat % len(turns)  # none always first
        for name, run in turns[shift:] + turns[:shift]:
            seconds[name].append(wall_seconds(functools.partial(run, x1, x2)))
    row: dict[str, object] = {"kernel": kernel, "depth": depth,
                              "dtype": str(dtype).removeprefix("torch."),
                              "pairs": n1 * n2, "repeats": repeats}
    for name, runs in seconds.items():
        best, median = spread(runs)
        row[f"{name}_us_per_pair"] = round(best / (n1 * n2) * 1e6, 3)
        row[f"{name}_us_per_pair_median"] = round(median / (n1 * n2) * 1e6, 3)
    row["speedup_median"] = round(float(np.median(seconds["base"]) / np.median(seconds["this"])), 2)
    if by_layer:
        row["this_over_whole_median"] = round(
            float(np.median(seconds["this"]) / np.median(seconds["this_whole"])), 2)
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="git revision to compare against")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--by-layer", action="store_true",
                        help="time the NTK split by layer (both versions need by_layer)")
    args = parser.parse_args()
    this = git("rev-parse", "--short", "HEAD")
    if git("status", "--porcelain", "--", "ntkcheck"):
        this += " with uncommitted changes to ntkcheck/"
    with tempfile.TemporaryDirectory() as tmp:
        base = load_revision(args.base, Path(tmp))
        rows = [compare(base, kernel, depth, dtype, args.repeats, args.by_layer)
                for dtype in (torch.float64, torch.float32)
                for kernel in KERNELS for depth in DEPTHS]
    name = "cpu_versions_by_layer" if args.by_layer else "cpu_versions"
    write(f"{name}.json", {"benchmark": name, "machine": machine(), "versions": versions(),
                           "base": git("rev-parse", "--short", args.base), "this": this,
                           "rows": rows})


if __name__ == "__main__":
    main()
