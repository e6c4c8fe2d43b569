"""Does the authors' float32 arithmetic move the CNTK-V cells?  Their released code computes
the vanilla CNTK in float32 and normalizes each Sigma entry by the reciprocal square roots
of its two images' diagonal entries, with no special case for an image paired with itself;
ntkcheck takes rho within 16 ulps of 1 as 1 (README, "Precision").  On a Gram matrix's
diagonal rho then lands a few ulps below 1, where arccos has an infinite slope, so every
self entry of their NTK comes out low while entries of distinct images agree with ours to
float32 rounding: in effect a small negative ridge on the training Gram matrix, which no
test row has.  This emulates their arithmetic for the training Gram matrix and compares
the cells computed with it against ntkcheck's.

    python studies/table1_authors_float32.py --out FILE [--work DIR] [--n-train 2000]
        [--n-test 10000] [--depths 3,4,6] [--data-root DIR] [--tile 1024] [--block 16]

CNTK-V (flatten, all layers trained), JPEG set, standardized with the training images'
statistics.  ntkcheck's kernels: the torch reference, float64 for the training Gram matrix,
float32 for the test kernel (``--work`` keeps their tiles, resumable).  The emulation
(``authors_gram``): float32, their order of operations, only the same-position entries that
the trace reads.  Per depth: the diagonal's relative shift and the largest relative
difference off it, the smallest eigenvalue of ntkcheck's Gram matrix over its mean diagonal
(what the shift compares with), and the accuracy with each Gram matrix (the same test kernel
for both: it pairs no image with itself), with the number of predictions that change.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import ntkcheck as nc
from ntkcheck.regression import KernelRegression
from ntkcheck.studies.table1 import label_targets

PI = 3.141592654  # the float literal of their kernel, rounded to float32
NINE_PI = 28.274333882308138  # c_sigma / (2 pi q^2) = 1 / (9 pi), a double literal there


def patch_sum(s: torch.Tensor) -> torch.Tensor:
    """3x3 sum over the two trailing axes, zero padding, added neighbour by neighbour."""
    padded = F.pad(s, (1, 1, 1, 1))
    h, w = s.shape[-2:]
    total = padded[..., 0:h, 0:w].clone()
    for a, b in [(a, b) for a in range(3) for b in range(3)][1:]:
        total.add_(padded[..., a:a + h, b:b + w])
    return total


def relu_step(s, t, left, right):
    """One activation of their kernel, float32: rho = S / L / R through the reciprocals,
    clipped into [-1, 1] for arccos only; returns (Sigma, Theta) of the next layer before
    its patch sum.  (Their K-dot divides by 9 pi in double; here in float32, which moves it
    by at most an ulp, nothing beside the arccos slope near rho = 1.)"""
    (norm_l, inv_l), (norm_r, inv_r) = left, right
    rho = s.mul_(inv_l).mul_(inv_r)  # s is not needed again
    theta = torch.acos(rho.clamp(-1.0, 1.0)).neg_().add_(PI)
    root = torch.mul(rho, rho).clamp_(max=1.0).neg_().add_(1.0).sqrt_()
    sigma = rho.mul_(theta).add_(root).mul_(norm_l).mul_(norm_r).div_(NINE_PI)
    return sigma, t.mul_(theta.div_(NINE_PI)).add_(sigma)


def image_norms(x: torch.Tensor, layers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer 1..layers: (sqrt of each image's own Sigma diagonal, its reciprocal), as
    their per-image pass computes them, with the same arithmetic as the pairs."""
    s = patch_sum((x * x).sum(1))
    t = s.clone()
    found = []
    for _ in range(layers):
        norm = torch.sqrt(s)
        found.append((norm, 1.0 / norm))
        s, t = relu_step(s, t, found[-1], found[-1])
        s, t = patch_sum(s), patch_sum(t)
    return found


def authors_gram(x: torch.Tensor, depths: Sequence[int], tile: int) -> dict[int, torch.Tensor]:
    """{depth: (n, n) float32} NTK of the vanilla CNTK with every layer trained, in the
    authors' float32 arithmetic, ``tile`` x ``tile`` pairs at a time."""
    x = x.float()
    top = max(depths)
    norms = image_norms(x, top - 1)
    out = {d: torch.empty(len(x), len(x)) for d in depths}
    blocks = [slice(i, min(i + tile, len(x))) for i in range(0, len(x), tile)]
    for rows in blocks:
        for cols in blocks:
            dot = x[rows, None, 0] * x[None, cols, 0]
            for c in range(1, x.shape[1]):  # channel by channel, as a 3-long matmul sums
                dot = dot + x[rows, None, c] * x[None, cols, c]
            s = patch_sum(dot)
            t = s.clone()
            for layer in range(1, top):
                left = tuple(v[rows, None] for v in norms[layer - 1])
                right = tuple(v[None, cols] for v in norms[layer - 1])
                s, t = relu_step(s, t, left, right)
                if layer + 1 in out:
                    out[layer + 1][rows, cols] = t.sum((-2, -1))
                s, t = patch_sum(s), patch_sum(t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--work", type=Path, default=None, help="folder for ntkcheck's tiles")
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=10000)
    parser.add_argument("--depths", default="3,4,6")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--block", type=int, default=16,
                        help="side of the emulated Gram's tiles of pairs")
    args = parser.parse_args()
    depths = tuple(int(d) for d in args.depths.split(","))
    train, labels = nc.data.cifar10("train", args.n_train, args.data_root)
    test, test_labels = nc.data.cifar10("test", args.n_test, args.data_root)
    x, z = (nc.data.standardize(a, reference=train) for a in (train, test))
    arch = nc.CNN(depth=max(depths), pooling="flatten")
    # the test kernel serves both Gram matrices: float32 there moves no cell (README)
    ours, k_test = (
        nc.kernel_matrix(arch, a, b, depths=depths, kernel="ntk", tile=args.tile,
                         out=None if args.work is None else args.work / part)
        for a, b, part in ((x, None, "train"), (z.float(), x.float(), "test")))
    theirs = authors_gram(x, depths, args.block)
    targets = label_targets(labels)
    rows = []
    for d in depths:
        k, e = ours[d], theirs[d].double()
        shift = (e.diagonal() - k.diagonal()) / k.diagonal()
        off = ~torch.eye(len(k), dtype=torch.bool)
        predicted = {name: KernelRegression().fit(gram, targets).predict(k_test[d]).argmax(1)
                     .numpy() for name, gram in (("ntkcheck", k), ("authors_float32", e))}
        lowest = float(torch.linalg.eigvalsh(k)[0])
        mean_diag = float(k.diagonal().mean())
        rows.append({
            "depth": d,
            "diagonal_shift_mean": float(shift.mean()), "diagonal_shift_min": float(shift.min()),
            "off_diagonal_max_rel": float(((e - k).abs() / k.abs())[off].max()),
            "lambda_min_over_mean_diagonal": lowest / mean_diag,
            **{f"accuracy_{name}": round(100 * float(np.mean(p == test_labels)), 2)
               for name, p in predicted.items()},
            "predictions_changed": int((predicted["ntkcheck"] != predicted["authors_float32"])
                                       .sum()),
        })
        print(json.dumps(rows[-1]), flush=True)
    result = {"study": "table1_authors_float32", "data": "cifar10-jpeg",
              "kernel": "CNTK-V (flatten, all layers trained); ntkcheck: torch reference, "
                        "float64 Gram; authors: float32 emulation of the Gram; the test "
                        "kernel is ntkcheck's (float32) for both; regression in float64, "
                        "no ridge",
              "n_train": args.n_train, "n_test": args.n_test, "torch": torch.__version__,
              "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
