"""Which layers' terms of the CNTK classify CIFAR-10?  Eq. (9) makes the NTK a sum of one
term per weight layer, and the infinitely wide net that trains only a set S of layers has
the kernel sum_{h in S} Theta_h: training only the readout gives the NNGP kernel (CNN-GP),
the paper's GAP setting leaves out layers 1 and L.  One pass of ``by_layer`` kernels gives
every such net's kernel, so this regresses with each of them on the same images.

    python studies/table1_layers.py --out DIR [--work DIR] [--data jpeg|exact]
        [--n-train 2000] [--n-test 2000] [--depths 3,4,6,11,21] [--dtype float64|float32]
        [--tile 500] [--data-root DIR] [--train-sizes 2000,5000]

CNTK-V (flatten), the first ``--n-train`` training and ``--n-test`` test images,
standardized with the training images' statistics (as ``ntkcheck reproduce table1``);
kernels in ``--dtype`` on the CPU, regressions in float64 with no ridge (the smallest
ridge that solves, recorded, if a kernel is singular).  Per depth L, one row per kernel:
``all`` (the Table 1 cell), ``fixed first and last`` (layers 2..L-1), each layer alone
(``layer h``; layer L alone is the NNGP), and the top layers only (``layers h..L``).
Columns: the accuracy; its difference from ``all``'s with the paired standard error
(from the test images right with one kernel only, as ``table1_jpeg_effect.py``); the
predictions that differ from ``all``'s; the ridge; and how
near the kernel is to a constant one: its mean off-diagonal training entry over its mean
diagonal one (every layer's term has the same diagonal here, as FC's are all |x|^2).
``--train-sizes`` adds rows regressed from only the first m of the training images (same
test images, the same kernel pass: a trend with the training set's size for the price of
one kernel; standardized with all ``--n-train`` images' statistics, so the m-image rows are
not exactly that column's cells).  Writes DIR/layers.csv, layers.md and layers.png (the
figure of the full training set); ``--work`` keeps the kernel tiles, so a stopped run
resumes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import ntkcheck as nc
from ntkcheck.regression import KernelRegression
from ntkcheck.studies._files import write_rows
from ntkcheck.studies.table1 import (
    label_targets,
    paired_difference,
    standardized_images,
    train_sizes,
)

FIELDS = ("n_train", "depth", "kernel", "layers", "accuracy", "minus_all", "standard_error",
          "changed_vs_all", "ridge", "offdiagonal_ratio")


def subsets(depth: int) -> list[tuple[str, list[int]]]:
    """(kernel name, the 1-based weight layers it trains) for a net of ``depth`` layers."""
    chosen = [("all", list(range(1, depth + 1)))]
    if depth >= 3:
        chosen.append(("fixed first and last", list(range(2, depth))))
    chosen += [(f"layer {h}", [h]) for h in range(1, depth + 1)]
    chosen += [(f"layers {h}..{depth}", list(range(h, depth + 1))) for h in range(2, depth)]
    return chosen


def span(layers: list[int]) -> str:
    return str(layers[0]) if len(layers) == 1 else f"{layers[0]}-{layers[-1]}"


def offdiagonal_ratio(k: torch.Tensor) -> float:
    """Mean off-diagonal entry of a Gram matrix over its mean diagonal entry: 1 for a
    constant kernel, which cannot tell images apart."""
    n = k.shape[0]
    diagonal = float(k.diagonal().sum())
    return (float(k.sum()) - diagonal) / (n - 1) / diagonal if n > 1 else float("nan")


def rows_of_depth(depth: int, train: torch.Tensor, test: torch.Tensor, labels: np.ndarray,
                  test_labels: np.ndarray) -> list[dict[str, object]]:
    """One row per kernel of ``subsets(depth)``; ``train`` and ``test`` are the (depth, n, m)
    layer terms of the Gram and test-by-train matrices."""
    targets = label_targets(labels)
    rows: list[dict[str, object]] = []
    first: np.ndarray | None = None
    for name, layers in subsets(depth):
        rows_of = torch.tensor([h - 1 for h in layers])
        k = train[rows_of].sum(0).double()
        model = KernelRegression(ridge="auto").fit(k, targets)
        predicted = model.predict(test[rows_of].sum(0).double()).argmax(1).numpy()
        first = predicted if first is None else first
        right = predicted == test_labels
        difference, error = paired_difference(right, first == test_labels)
        rows.append({
            "n_train": len(labels), "depth": depth, "kernel": name, "layers": span(layers),
            "accuracy": f"{100 * float(np.mean(right)):.2f}",
            "minus_all": f"{difference:+.2f}", "standard_error": f"{error:.2f}",
            "changed_vs_all": int((predicted != first).sum()),
            "ridge": f"{model.ridge_:.3g}",
            "offdiagonal_ratio": f"{offdiagonal_ratio(k):.4f}",
        })
        print(rows[-1], flush=True)
    return rows


def figure(rows: list[dict[str, object]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for depth in sorted({int(str(r["depth"])) for r in rows}):
        mine = [r for r in rows if r["depth"] == depth]
        alone = [(int(str(r["layers"])), float(str(r["accuracy"]))) for r in mine
                 if str(r["kernel"]).startswith("layer ")]
        top = [(int(str(r["layers"]).split("-")[0]), float(str(r["accuracy"]))) for r in mine
               if str(r["kernel"]).startswith("layers ") or r["kernel"] == "all"]
        top.append(alone[-1])  # the readout alone is the last of the top layers
        everything = float(str(mine[0]["accuracy"]))
        for ax, points in zip(axes, (alone, sorted(top)), strict=True):
            line, = ax.plot(*zip(*points, strict=True), "o-", ms=3, label=f"depth {depth}")
            ax.axhline(everything, color=line.get_color(), ls=":", lw=0.8)
    axes[0].set(xlabel="the one trained layer h", ylabel="test accuracy (%)",
                title="one layer's term alone")
    axes[1].set(xlabel="lowest trained layer h (layers h..L trained)",
                title="the top layers' terms")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{title}; dotted: all layers trained")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(rows: list[dict[str, object]]) -> str:
    lines = ["| train images | depth | kernel | layers | accuracy (%) | minus all | "
             "standard error | changed vs all | ridge | off-diag / diag |",
             "|---" * len(FIELDS) + "|"]
    lines += ["| " + " | ".join(str(r[f]) for f in FIELDS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder of the results")
    parser.add_argument("--work", type=Path, default=None, help="folder for kernel tiles")
    parser.add_argument("--data", choices=("jpeg", "exact"), default="jpeg")
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--depths", default="3,4,6,11,21")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument("--tile", type=int, default=500)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--train-sizes", default=None,
                        help="also regress from the first m training images, comma-separated")
    args = parser.parse_args()
    x, labels, z, test_labels = standardized_images(args.data, args.n_train, args.n_test,
                                                    args.data_root, getattr(torch, args.dtype))
    depths = sorted(int(d) for d in args.depths.split(","))
    sizes = train_sizes(args.train_sizes, len(labels))  # refused before the kernels, not after
    arch = nc.CNN(depth=max(depths), pooling="flatten")
    start = time.perf_counter()
    k_train, k_test = (
        nc.kernel_matrix(arch, a, b, depths=depths, kernel="ntk", tile=args.tile,
                         by_layer=True, out=None if args.work is None else args.work / part)
        for a, b, part in ((x, None, "train"), (z, x, "test")))
    seconds = time.perf_counter() - start
    rows = [row for m in sizes for d in depths
            for row in rows_of_depth(d, k_train[d][:, :m, :m], k_test[d][:, :, :m],
                                     labels[:m], test_labels)]
    args.out.mkdir(parents=True, exist_ok=True)
    write_rows(args.out / "layers.csv", FIELDS, rows)
    setting = (f"CNTK-V by layer, cifar10-{args.data}, {len(labels)} train / "
               f"{len(test_labels)} test images")
    (args.out / "layers.md").write_text(
        f"# {setting}\n\nKernels in {args.dtype} on the CPU ({torch.get_num_threads()} "
        f"threads; {seconds:.0f} s for the kernels in this run, where tiles already in "
        f"--work are loaded, not computed), regressions in float64.\n\n" + table(rows))
    figure([r for r in rows if r["n_train"] == len(labels)], args.out / "layers.png", setting)
    print(f"wrote {args.out}/layers.csv, layers.md and layers.png")


if __name__ == "__main__":
    main()
