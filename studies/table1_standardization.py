"""Does a "-2K" column depend on whose statistics standardize its images?  ntkcheck
standardizes with the mean and std of the column's own training images (the first 2,000
for CNTK-V-2K); the paper's released loader computes them over all 50,000 training images
before any slicing.  This computes the column's kernels both ways and compares the cells.

    python studies/table1_standardization.py --out FILE [--work DIR] [--n-train 2000]
        [--n-test 2000] [--depths 3,4,6] [--data-root DIR] [--tile 1024]

The flatten CNTK with every layer trained (CNTK-V), JPEG set, float64 torch reference on
the CPU, regressions in float64 with no ridge.  Per depth: the accuracy of each choice and
how many test images change their predicted class.  ``--work`` keeps the kernel tiles
(resumable).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import ntkcheck as nc
from ntkcheck.regression import KernelRegression
from ntkcheck.studies.table1 import label_targets


def predicted_classes(train, labels, test, reference, depths, tile, work):
    """{depth: predicted class of every test image}, the images standardized with the
    statistics of ``reference``."""
    x, z = (nc.data.standardize(a, reference=reference) for a in (train, test))
    arch = nc.CNN(depth=max(depths), pooling="flatten")
    k_train, k_test = (
        nc.kernel_matrix(arch, a, b, depths=depths, kernel="ntk", tile=tile,
                         out=None if work is None else work / part)
        for a, b, part in ((x, None, "train"), (z, x, "test")))
    return {d: KernelRegression().fit(k_train[d], label_targets(labels))
            .predict(k_test[d]).argmax(1).numpy() for d in depths}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--work", type=Path, default=None, help="folder for the kernel tiles")
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--depths", default="3,4,6")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--tile", type=int, default=1024)
    args = parser.parse_args()
    depths = tuple(int(d) for d in args.depths.split(","))
    everything, all_labels = nc.data.cifar10("train", None, args.data_root)
    train, labels = everything[: args.n_train], all_labels[: args.n_train]
    test, test_labels = nc.data.cifar10("test", args.n_test, args.data_root)
    references = {"column": train, "all_50k": everything}
    found = {name: predicted_classes(train, labels, test, reference, depths, args.tile,
                                     None if args.work is None else args.work / name)
             for name, reference in references.items()}
    rows = [{"depth": d,
             **{f"accuracy_{name}": round(100 * float(np.mean(p[d] == test_labels)), 2)
                for name, p in found.items()},
             "predictions_changed": int((found["column"][d] != found["all_50k"][d]).sum())}
            for d in depths]
    statistics = {f"{name}_{stat}": [round(float(v), 5) for v in f(ref / 255.0, (0, 1, 2))]
                  for name, ref in references.items()
                  for stat, f in (("mean", np.mean), ("std", np.std))}
    result = {"study": "table1_standardization", "data": "cifar10-jpeg",
              "kernel": "CNTK-V (flatten, all layers trained), float64 torch reference, cpu; "
                        "regression in float64, no ridge",
              "n_train": args.n_train, "n_test": args.n_test, "statistics": statistics,
              "torch": torch.__version__, "rows": rows}
    print(json.dumps(rows))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
