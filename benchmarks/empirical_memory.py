"""Peak memory of an empirical-NTK Gram matrix against its ``max_memory`` budget, on the CPU.

Each case runs in a fresh process (the peak resident set size only grows within one), which
reports its peak above what it held before the call: the net, the inputs and torch.  Cases
hold more samples than one panel, so that panels and column chunks both reach the budget;
float32, random N(0, 1) inputs, ``by_layer=True`` (as the random-features study).

    python benchmarks/empirical_memory.py   -> results/empirical_memory_cpu.json
"""

from __future__ import annotations

import argparse
import json
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
                                 2048, ("jacobian",)),
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
    before = peak_mib()
    start = time.perf_counter()
    h = nc.empirical_ntk(net, x, implementation=implementation, by_layer=True,
                         max_memory=budget * 2**20)
    seconds = time.perf_counter() - start
    peak = peak_mib() - before
    return {"case": case, "implementation": implementation, "n": n, "width": width,
            "budget_mib": budget, "peak_above_start_mib": round(peak),
            "peak_over_budget": round(peak / budget, 3), "output_mib": round(
                h.numel() * h.element_size() / 2**20), "chunk": sizes.chunk,
            "panel": sizes.panel, "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    parser.add_argument("--out", default=str(RESULTS / "empirical_memory_cpu.json"))
    parser.add_argument("--one", nargs=2, metavar=("CASE", "IMPLEMENTATION"),
                        help=argparse.SUPPRESS)  # a child process's own case
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(*args.one)))
        return
    rows = []
    for case in args.cases.split(","):
        for implementation in CASES[case][-1]:
            child = subprocess.run([sys.executable, __file__, "--one", case, implementation],
                                   capture_output=True, text=True, check=True)
            rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    write_results(Path(args.out), torch.device("cpu"), rows)


if __name__ == "__main__":
    main()
