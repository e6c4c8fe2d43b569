"""Does a wide net that trains one layer follow that layer's term of the NTK?  Theorem 3.2
with some layers frozen: gradient descent then moves the net in the span of the trained
layers' gradients, whose kernel tends to the sum of their terms of Eq. (9), so the trained
net tends to the linearized prediction with that kernel,

    f_S(x) = f0(x) + Theta_S(x, X) Theta_S(X, X)^-1 (y - f0(X)),  Theta_S = sum_{h in S} Theta_h,

not the one with the whole NTK (which tells what training every layer would give).

    python studies/one_layer_agreement.py --out FILE [--depth 3] [--widths 256,...]
        [--seeds 3] [--n 16] [--n-test 8] [--dim 8]

FC nets of the paper's parametrization, float64 on the CPU, kappa = 1; inputs and targets
drawn from a fixed generator (x on the sphere of radius sqrt(dim), y standard normal).  Per
width, seed and trained set S (each layer alone, then all): full-batch gradient descent at
half the largest stable rate until the loss is 1e-8 of its value at f = 0, then the mean of
|f_nn - f_S| and of |f_nn - f_all| over the test points.  Rows go to a JSON file with a
log-log slope against width per trained set.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import ntkcheck as nc
from ntkcheck.regression import kernel_regression
from ntkcheck.studies.convergence_report import log_log_slope
from ntkcheck.training import max_stable_lr, train

LOSS_TOLERANCE = 1e-8
"""Training stops at this fraction of 1/2 |y|^2."""


def problem(n: int, n_test: int, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training inputs, their targets and test inputs, the same every run."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n + n_test, dim, generator=g, dtype=torch.float64)
    x = x * (dim**0.5 / x.norm(dim=1, keepdim=True))
    return x[:n], torch.randn(n, generator=g, dtype=torch.float64), x[n:]


def linearized(terms: torch.Tensor, layers: list[int], f0: torch.Tensor, y: torch.Tensor,
               n: int) -> torch.Tensor:
    """f0 + Theta_S(test, X) Theta_S^-1 (y - f0(X)) on the test points, Theta_S the sum of
    ``terms`` (depth, n + n_test, n + n_test) over the 1-based ``layers``."""
    k = terms[[h - 1 for h in layers]].sum(0)
    return f0[n:] + kernel_regression(k[:n, :n], y - f0[:n], k[n:, :n])


def trained_on(arch: nc.FC, width: int, seed: int, layers: list[int], x: torch.Tensor,
               y: torch.Tensor, x_test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(f0, f_nn) on the training then test points, and the steps, of a net of ``arch``
    whose only trained weight layers are ``layers``."""
    net = arch.network(width, tuple(x.shape[1:]), seed=seed, dtype=torch.float64)
    for h, layer in enumerate(net.weight_layers(), start=1):
        layer.weight.requires_grad_(h in layers)
    both = torch.cat([x, x_test])
    with torch.no_grad():
        f0 = net(both)
    history = train(net, x, y, lr=0.5 * max_stable_lr(net, x), max_steps=200_000,
                    until_loss=LOSS_TOLERANCE * 0.5 * float((y**2).sum()))
    with torch.no_grad():
        return f0, net(both), history.steps[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="JSON file to write")
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--widths", default="256,512,1024,2048,4096")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--n-test", type=int, default=8)
    parser.add_argument("--dim", type=int, default=8)
    args = parser.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    arch = nc.FC(depth=args.depth)
    x, y, x_test = problem(args.n, args.n_test, args.dim)
    terms = arch.ntk(torch.cat([x, x_test]), by_layer=True)
    sets = [[h] for h in range(1, args.depth + 1)] + [list(range(1, args.depth + 1))]
    everything = sets[-1]
    rows = []
    for layers in sets:
        for width in widths:
            for seed in range(args.seeds):
                f0, f_nn, steps = trained_on(arch, width, seed, layers, x, y, x_test)
                own = linearized(terms, layers, f0, y, args.n)
                whole = linearized(terms, everything, f0, y, args.n)
                rows.append({"trained": layers, "width": width, "seed": seed, "steps": steps,
                             "error_own": float((f_nn[args.n:] - own).abs().mean()),
                             "error_whole": float((f_nn[args.n:] - whole).abs().mean())})
                print(json.dumps(rows[-1]), flush=True)
    fits = []
    for layers in sets:
        mine = [r for r in rows if r["trained"] == layers]
        means = [float(np.mean([r["error_own"] for r in mine if r["width"] == w]))
                 for w in widths]
        fits.append({"trained": layers, "mean_error_own": means,
                     "slope_own": round(log_log_slope(widths, means), 3),
                     "own_below_whole": None if layers == everything else sum(
                         r["error_own"] < r["error_whole"] for r in mine),
                     "runs": len(mine)})
    result = {"study": "one_layer_agreement", "architecture": repr(arch), "n": args.n,
              "n_test": args.n_test, "dim": args.dim, "widths": widths, "seeds": args.seeds,
              "loss_tolerance": LOSS_TOLERANCE, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "fits": fits, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for fit in fits:
        print(fit["trained"], "slope", fit["slope_own"], "own below whole",
              f"{fit['own_below_whole']}/{fit['runs']}",
              "errors", [f"{e:.3g}" for e in fit["mean_error_own"]])


if __name__ == "__main__":
    main()
