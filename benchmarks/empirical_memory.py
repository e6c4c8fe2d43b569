"""Peak memory of an empirical-NTK Gram matrix against its ``max_memory`` budget, on the CPU.

Each case runs in a fresh process (the peak resident set size only grows within one), which
reports its peak above what it held before the call: the net, the inputs, torch, and a first
call on two samples (``first_call_mib``: one-time setup, outside the budget).  Cases
hold more samples than one panel, so that panels and column chunks both reach the budget;
float32, random N(0, 1) inputs, ``by_layer=True`` (as the random-features study).

The peak of one case varies between runs of the same code: glibc's malloc raises its mmap
threshold as large blocks are freed, so later allocations come from its heap, whose freed
pages it keeps.  ``--repeats`` runs each case that many times; ``--mmap-threshold BYTES`` fixes
the threshold in the child processes (``MALLOC_MMAP_THRESHOLD_``), which measures what the
computation itself holds.

    python benchmarks/empirical_memory.py   -> results/empirical_memory_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from empirical_ntk import write_results  # this script's neighbour

import ntkcheck as nc
from ntkcheck import empirical

RESULTS = Path(__file__).resolve().parent / "results"
CASES = {  # arch, width, input shape, n, budget in MiB, implementations
    "cnn_flatten_d6_w128_n800": (nc.CNN(depth=6, pooling="flatten"), 128, (3, 32, 32), 800,
                                 2048, ("jacobian", "structured")),
    "cnn_flatten_d6_w256_n300": (nc.CNN(depth=6, pooling="flatten"), 256, (3, 32, 32), 300,
                                 2048, ("jacobian",)),
    "fc_d3_w2048_n256": (nc.FC(depth=3), 2048, (784,), 256, 1024, ("jacobian", "structured")),
}


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(case: str, implementation: str) -> dict[str, object]:
    """Run one case here and measure it."""
    arch, width, shape, n, budget, _ = CASES[case]
    net = arch.network(width, shape, seed=0)
    x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(0))
    sizes = empirical._sizes(implementation, empirical._Profile(net, x), 1, 4, budget * 2**20)
    start_mib = peak_mib()
    # a first call on two samples: the one-time setup of torch.func and the threads
    # is not the working set that the budget bounds
    nc.empirical_ntk(net, x[:2], implementation=implementation, by_layer=True)
    before = peak_mib()
    start = time.perf_counter()
    h = nc.empirical_ntk(net, x, implementation=implementation, by_layer=True,
                         max_memory=budget * 2**20)
    seconds = time.perf_counter() - start
    peak = peak_mib() - before
    return {"case": case, "implementation": implementation, "n": n, "width": width,
            "budget_mib": budget, "peak_above_start_mib": round(peak),
            "peak_over_budget": round(peak / budget, 3),
            "first_call_mib": round(before - start_mib), "output_mib": round(
                h.numel() * h.element_size() / 2**20), "chunk": sizes.chunk,
            "panel": sizes.panel, "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    parser.add_argument("--out", default=str(RESULTS / "empirical_memory_cpu.json"))
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per case")
    parser.add_argument("--mmap-threshold", type=int, metavar="BYTES",
                        help="fix glibc's mmap threshold in the cases' processes")
    parser.add_argument("--one", nargs=2, metavar=("CASE", "IMPLEMENTATION"),
                        help=argparse.SUPPRESS)  # a child process's own case
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(*args.one)))
        return
    env = dict(os.environ)
    if args.mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    rows = []
    for case in args.cases.split(","):
        for implementation in CASES[case][-1]:
            runs = [json.loads(subprocess.run(
                [sys.executable, __file__, "--one", case, implementation], env=env,
                capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
                for _ in range(args.repeats)]
            peaks = [run["peak_over_budget"] for run in runs]
            rows.append({**max(runs, key=lambda run: run["peak_over_budget"]),
                         "peak_over_budget_runs": peaks, "seconds_runs": [
                             run["seconds"] for run in runs],
                         "malloc_mmap_threshold": args.mmap_threshold})
            print(rows[-1], flush=True)
    write_results(Path(args.out), torch.device("cpu"), rows)


if __name__ == "__main__":
    main()
