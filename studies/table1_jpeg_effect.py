"""What does the JPEG re-encoding cost a CNTK-V cell?  Our Table 1 runs on JPEG copies of
CIFAR-10 (mean absolute difference 5.8/255 from the originals); the paper used the
originals.  The exact-pixel subset holds 6,102 original images (1,017 from each of the five
training batch files and the first 1,017 test images), and the JPEG set holds the same
images re-encoded, so the two can be compared image for image.  One train/test split of it
leaves 1,017 test images, too few for a difference of a point (a standard error of 1.6);
this uses all of them by cross-validation instead: six folds of 1,017 (the five batch files'
images and the test images), each predicted from the other 5,085, for both pixel versions,
so every image is predicted once per version.  ``--train-sizes`` repeats the predictions
with fewer training images (the first m / 5 of each other fold), to see how the difference
changes with the training set's size, which Table 1's 50,000 are ten times.

    python studies/table1_jpeg_effect.py --out FILE [--work DIR] [--depths 3,4]
        [--data-root DIR] [--tile 1024] [--per-fold N] [--train-sizes 1015,2030,5085]

CNTK-V (flatten, all layers trained), standardized with the statistics of all the images
used (per version), float32 torch kernels on the CPU (float32 moves no cell, README),
regressions in float64 with no ridge.  Per depth: the accuracy of each version over all
predictions, the paired difference (exact minus JPEG) with its standard error from the
discordant predictions, and per fold; one row per depth and training-set size.  ``--work``
keeps the Gram tiles (resumable); ``--per-fold`` takes only the first N images of each fold
(a quick look).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import ntkcheck as nc
from ntkcheck.regression import KernelRegression
from ntkcheck.studies.table1 import label_targets, paired_difference

FOLDS = 6
FOLD_SIZE = 1_017  # the subset's images per training batch file, and its test images


def images(pixels: str, per_fold: int, root: str | None) -> tuple[np.ndarray, np.ndarray]:
    """The subset's images in fold order (training batches 1..5, then test), ``per_fold``
    of each fold, as ``pixels`` ("exact" or "jpeg") has them; and their labels."""
    parts = [nc.data.cifar10_exact(split, None, root, pixels=pixels) for split in ("train",
                                                                                   "test")]
    x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    keep = np.concatenate([np.arange(f * FOLD_SIZE, f * FOLD_SIZE + per_fold)
                           for f in range(FOLDS)])
    return x[keep], y[keep]


def fold_predictions(gram: torch.Tensor, labels: np.ndarray, per_fold: int,
                     train_per_fold: int | None = None) -> np.ndarray:
    """Every image's predicted class, from kernel regression on the other folds: on the
    first ``train_per_fold`` images of each (all of them if None)."""
    within = np.arange(len(labels)) % per_fold
    predicted = np.empty(len(labels), dtype=np.int64)
    for f in range(FOLDS):
        held = np.zeros(len(labels), dtype=bool)
        held[f * per_fold:(f + 1) * per_fold] = True
        train = ~held & (within < (per_fold if train_per_fold is None else train_per_fold))
        rest = torch.from_numpy(train)
        model = KernelRegression().fit(gram[rest][:, rest], label_targets(labels[train]))
        predicted[held] = model.predict(gram[torch.from_numpy(held)][:, rest]).argmax(1).numpy()
    return predicted


def train_sizes(spec: str | None, per_fold: int) -> list[int]:
    """Training images per fold for each size of --train-sizes (a multiple of FOLDS - 1, at
    most all of the other folds); all of them if spec is None."""
    if spec is None:
        return [per_fold]
    sizes = [int(m) for m in spec.split(",")]
    others = FOLDS - 1
    bad = [m for m in sizes if m % others or not 0 < m <= others * per_fold]
    if bad:
        raise SystemExit(f"--train-sizes: {bad} are not multiples of {others} in "
                         f"{others}..{others * per_fold} (the first m/{others} of each of the "
                         f"other {others} folds)")
    return [m // others for m in sizes]


def comparison(exact: np.ndarray, jpeg: np.ndarray, per_fold: int) -> dict:
    """Both versions' accuracies (percent) from their right/wrong predictions, and the paired
    difference with its standard error from the predictions right in one version only."""
    only_exact, only_jpeg = int((exact & ~jpeg).sum()), int((~exact & jpeg).sum())
    difference, error = paired_difference(exact, jpeg)
    return {
        "predictions": len(exact),
        "accuracy_exact": round(100 * float(exact.mean()), 2),
        "accuracy_jpeg": round(100 * float(jpeg.mean()), 2),
        "exact_minus_jpeg": round(difference, 2),
        "standard_error": round(error, 2),
        "right_only_exact": only_exact, "right_only_jpeg": only_jpeg,
        "per_fold_exact_minus_jpeg": [
            round(100 * float((exact[s].astype(int) - jpeg[s].astype(int)).mean()), 2)
            for s in (slice(f * per_fold, (f + 1) * per_fold) for f in range(FOLDS))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--work", type=Path, default=None, help="folder for the Gram tiles")
    parser.add_argument("--depths", default="3,4")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--per-fold", type=int, default=FOLD_SIZE)
    parser.add_argument("--train-sizes", default=None,
                        help="training-set sizes, comma-separated (default: all the others)")
    args = parser.parse_args()
    depths = tuple(int(d) for d in args.depths.split(","))
    sizes = train_sizes(args.train_sizes, args.per_fold)
    arch = nc.CNN(depth=max(depths), pooling="flatten")
    correct = {}
    for pixels in ("exact", "jpeg"):
        x, labels = images(pixels, args.per_fold, args.data_root)
        z = nc.data.standardize(x, reference=x, dtype=torch.float32)
        gram = nc.kernel_matrix(arch, z, depths=depths, kernel="ntk", tile=args.tile,
                                out=None if args.work is None else args.work / pixels)
        correct[pixels] = {(d, m): fold_predictions(gram[d], labels, args.per_fold, m) == labels
                           for d in depths for m in sizes}
    rows = [{"depth": d, "train": (FOLDS - 1) * m}
            | comparison(correct["exact"][d, m], correct["jpeg"][d, m], args.per_fold)
            for d in depths for m in sizes]
    for row in rows:
        print(json.dumps(row), flush=True)
    result = {"study": "table1_jpeg_effect", "data": "cifar10-exact-subset, exact and jpeg",
              "kernel": "CNTK-V (flatten, all layers trained), float32 torch reference, cpu; "
                        "regression in float64, no ridge; 6-fold cross-validation",
              "per_fold": args.per_fold, "torch": torch.__version__, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
