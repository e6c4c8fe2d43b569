"""One kernel matrix split between processes (``ntkcheck kernel --shard``) on the CPU.

A CNTK-V (flatten) Gram matrix of the first N CIFAR-10 training images (JPEG set,
standardized, float64) at depth 21 with depths 3, 11 and 21 read out, computed three ways,
each from an empty folder: one process with all the machine's threads; SHARDS processes of
one thread each (``--shard i/SHARDS``), started together; then the assembly of their
tiles.  Records the wall times and the largest difference between the two matrices.

    python benchmarks/shards_cpu.py [--n 800] [--tile 100] [--shards 2] [--data-root DIR]

writes benchmarks/results/shards_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from cpu_kernels import machine, versions, write

import ntkcheck as nc

DEPTHS = (3, 11, 21)


def timed(commands: list[list[str]], threads: int) -> float:
    """Wall seconds of ``commands`` run at once, each with ``threads`` torch threads."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    start = time.perf_counter()
    running = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL) for c in commands]
    if any(p.wait() for p in running):
        raise RuntimeError(f"a command failed: {commands}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=800)
    parser.add_argument("--tile", type=int, default=100)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        images, _ = nc.data.cifar10("train", args.n, root=args.data_root)
        x = nc.data.standardize(images, reference=images, dtype=torch.float64)
        np.save(folder / "x.npy", x.numpy())
        kernel = [sys.executable, "-m", "ntkcheck.cli", "kernel", "--arch", "cnn", "--depth",
                  "21", "--x1", str(folder / "x.npy"), "--depths", ",".join(map(str, DEPTHS)),
                  "--kernel", "ntk", "--tile", str(args.tile), "--device", "cpu", "--quiet"]
        threads = os.cpu_count() or 1
        alone = timed([[*kernel, "--out", str(folder / "alone")]], threads)
        sharded = timed([[*kernel, "--out", str(folder / "shards"), "--shard", f"{i}/{args.shards}"]
                         for i in range(args.shards)], 1)
        assembly = timed([[*kernel, "--out", str(folder / "shards")]], threads)
        difference = max(float(np.abs(np.load(folder / "alone" / f"ntk_depth{d}.npy")
                                      - np.load(folder / "shards" / f"ntk_depth{d}.npy")).max())
                         for d in DEPTHS)
    rows = -(-args.n // args.tile)  # tile rows; a Gram computes the upper triangle's tiles
    result = {
        "benchmark": "shards_cpu", "machine": machine(), "versions": versions(),
        "kernel": "CNTK-V (flatten), depth 21, depths 3/11/21 read out, NTK only, float64",
        "images": f"first {args.n} CIFAR-10 training images (JPEG set), 32x32x3",
        "n": args.n, "tile": args.tile, "tiles": rows * (rows + 1) // 2,
        "one_process_threads": threads, "one_process_seconds": round(alone, 2),
        "shards": args.shards, "shard_threads": 1, "shards_seconds": round(sharded, 2),
        "assembly_seconds": round(assembly, 2), "max_abs_difference": difference,
    }
    print(json.dumps(result, indent=1))
    write("shards_cpu.json", result)


if __name__ == "__main__":
    main()
