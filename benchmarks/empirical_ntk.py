"""Seconds per empirical-NTK Gram matrix, each implementation, on the CPU or a GPU.

Cases (issue 4): (a) FC depth 3, width 2048, n = 256, 784 inputs; (b) CNN-GAP depth 6,
width 128, n = 64, 32x32x3 inputs.  float32, random N(0, 1) inputs (the cost does not
depend on them), default memory budget.  Each implementation is first timed on a slice of
SMALL samples; one whose full run extrapolates (n^2) past --max-seconds is recorded as
skipped with that estimate.  The others run REPEATS times (median), and their matrices are
compared with each other (max relative difference).

    python benchmarks/empirical_ntk.py                 -> results/empirical_ntk_cpu.json
    python benchmarks/empirical_ntk.py --device cuda   -> results/empirical_ntk_cuda.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import ntkcheck as nc
from ntkcheck.empirical import choose_implementation

RESULTS = Path(__file__).resolve().parent / "results"
CASES = {
    "fc_d3_w2048_n256": (nc.FC(depth=3), 2048, (784,), 256),
    "cnn_gap_d6_w128_n64": (nc.CNN(depth=6, pooling="gap"), 128, (3, 32, 32), 64),
    # more samples than 1 GiB of Jacobians holds: the panels of held Jacobians at work
    "cnn_gap_d6_w128_n512": (nc.CNN(depth=6, pooling="gap"), 128, (3, 32, 32), 512),
}
IMPLEMENTATIONS = ("jacobian", "ntk-vp", "structured")
SMALL = 8
REPEATS = 3


def timed(net, x, implementation, device) -> tuple[float, torch.Tensor]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    h = nc.empirical_ntk(net, x, implementation=implementation)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, h


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    parser.add_argument("--implementations", default=",".join(IMPLEMENTATIONS))
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    for case in args.cases.split(","):
        arch, width, shape, n = CASES[case]
        net = arch.network(width, shape, seed=0, device=device)
        x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(0)).to(device)
        choice, costs = choose_implementation(net, x)
        results = {}
        for implementation in args.implementations.split(","):
            timed(net, x[:2], implementation, device)  # warm-up
            small, _ = timed(net, x[:SMALL], implementation, device)
            estimate = small * (n / SMALL) ** 2
            row = {"case": case, "implementation": implementation, "n": n, "width": width,
                   "depth": arch.depth, "input_shape": list(shape), "dtype": "float32",
                   "estimated_flops": costs[implementation], "auto_choice": choice}
            if estimate > args.max_seconds:
                row.update(seconds=None, skipped=f"estimated {estimate:.0f} s from n={SMALL}")
            else:
                runs = []
                for _ in range(REPEATS if estimate < 30 else 1):
                    seconds, h = timed(net, x, implementation, device)
                    runs.append(seconds)
                results[implementation] = h.double().cpu()
                row.update(seconds=sorted(runs)[len(runs) // 2], runs=runs)
            rows.append(row)
            print(f"{case:22s} {implementation:10s} {row['seconds'] or row['skipped']}",
                  flush=True)
        done = list(results)
        for a in done:
            for b in done:
                if a < b:
                    diff = float((results[a] - results[b]).abs().max() / results[b].abs().max())
                    rows.append({"case": case, "compare": f"{a} vs {b}",
                                 "max_relative_difference": diff})
    name = "empirical_ntk_cuda.json" if device.type == "cuda" else "empirical_ntk_cpu.json"
    write_results(Path(args.out) if args.out else RESULTS / name, device, rows)


def write_results(out: Path, device: torch.device, rows: list[dict]) -> None:
    """The rows as JSON, with the device and the versions that produced them."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "device": torch.cuda.get_device_name(device) if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()}, "
             f"{torch.get_num_threads()} threads)",
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "ntkcheck": nc.__version__},
        "rows": rows,
    }, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
