"""How sensitive CNTK-V cells are to errors in their kernel and to a ridge: the question
behind Table 1's CNTK-V gap at depths 3 and 4 (our 50k cells are 1.8 and 1.6 points under
the paper's).

The flatten CNTK (all layers trained) of the requested depths; then, per depth: the
accuracy and the predicted classes of the test images; the Gram matrix's condition number
(``KernelRegression``'s estimate, and eigvalsh up to ``--eigvalsh-max`` images, which also
give the smallest eigenvalue over the mean diagonal); the accuracy with the kernels rounded
to float32; with relative noise eps |K| on every entry (symmetric, ``--seeds`` draws); and
with ridges (multiples of the mean diagonal).  A cell with no ridge asked for whose
kernel is not positive definite (a noisy one can be) takes the smallest ridge that solves
and records it (``ridge_needed``, the largest of the seeds' for noise; a noise level
averages the seeds that solve at all, ``seeds_solved``).  ``--train-sizes``
repeats all of it for the first m training images alone (the same test images and kernel
pass; standardized with all ``--n-train`` images' statistics): how the conditioning and
the sensitivity grow with the training set.  ``--against FILE`` (this script's JSON of a
run on the same images with kernels of another precision) adds to each row its accuracy
minus that run's, with the paired standard error, and the predictions that differ.

    python studies/table1_sensitivity.py --out FILE [--work DIR] [--data exact|jpeg]
        [--n-train N] [--n-test N] [--depths 3,4] [--dtype float64|float32] [--tile T]
        [--device cpu|cuda] [--data-root DIR] [--noise 1e-6,...] [--ridges 1e-6,...]
        [--seeds S] [--eigvalsh-max N] [--train-sizes 2000,5000] [--against FILE]

``--work`` keeps the kernel tiles (resumable; without it they stay in memory).  Defaults:
the exact-pixel subset (5,085 training, 1,017 test images), depths 3 and 4, float64 on the
CPU (~30 min on 2 cores, tiles of 1,024).  On CUDA the kernels are float32 by default (the
fused kernel) and the regressions run there in float64: the full 50k training set, depths
3 and 4 (``--data jpeg``), needs ~70 GB of GPU memory (the 20 GB Gram matrix, a perturbed
copy and its Cholesky factor) and ~24 GB of host memory.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import ntkcheck as nc
from ntkcheck.regression import KernelRegression
from ntkcheck.studies.table1 import (
    label_targets,
    paired_difference,
    standardized_images,
    train_sizes,
)

NOISE = "1e-6,1e-5,1e-4,1e-3"
RIDGES = "1e-6,1e-5,1e-4,1e-3,1e-2,1e-1"
"""Ridges as multiples of the mean of diag(K)."""
BLOCK = 8192
"""Rows and columns per block of noise: a 50k Gram's noise is never held whole."""


def predictions(k_train, k_test, labels, ridge=0.0):
    """The predicted classes and the fitted model; with no ridge asked for, the smallest
    that solves where the kernel is not positive definite (a noisy one of many images
    can be), which the model records."""
    model = KernelRegression(ridge=ridge or "auto").fit(k_train, label_targets(labels))
    return model.predict(k_test).argmax(1).cpu().numpy(), model


def perturbed(k: torch.Tensor, eps: float, gen: torch.Generator) -> torch.Tensor:
    """k + eps |k| E with E symmetric, every entry standard normal (a diagonal block's upper
    triangle mirrored), drawn block by block, so a large Gram needs one copy, not three."""
    out = k.clone()
    n = k.shape[0]
    for i in range(0, n, BLOCK):
        for j in range(i, n, BLOCK):
            rows, cols = slice(i, i + BLOCK), slice(j, j + BLOCK)
            e = torch.randn(out[rows, cols].shape, generator=gen, dtype=k.dtype,
                            device=k.device)
            if i == j:
                e = e.triu() + e.triu(1).T
            out[rows, cols] += eps * k[rows, cols].abs() * e
            if i != j:
                out[cols, rows] += eps * k[cols, rows].abs() * e.T
    return out


def cell(k_train, k_test, labels, test_labels, base=None, ridge=0.0) -> dict:
    """Accuracy, the predictions that differ from ``base``, and for a cell with no ridge
    asked for, the ridge it needed (a multiple of the mean diagonal; 0 when none); only
    ``{"solved": False}`` where even ``ridge="auto"``'s largest ridge leaves the kernel
    not positive definite (large noise on many images)."""
    try:
        predicted, model = predictions(k_train, k_test, labels, ridge)
    except ValueError:
        return {"solved": False}
    return found(predicted, model, k_train, test_labels, base, ridge)


def found(predicted, model, k_train, test_labels, base=None, ridge=0.0) -> dict:
    """What ``cell`` says of a regression already fitted."""
    summary: dict = {"accuracy": round(100 * float(np.mean(predicted == test_labels)), 2)}
    if base is not None:
        summary["predictions_changed"] = int((predicted != base).sum())
    if not ridge:
        summary["ridge_needed"] = model.ridge_ / float(k_train.diagonal().mean())
    return summary


def sensitivity(k: torch.Tensor, kt: torch.Tensor, labels: np.ndarray,
                test_labels: np.ndarray, args: argparse.Namespace,
                round_to_float32: bool) -> dict:
    """The cell of the float64 Gram ``k`` and test-by-train ``kt``, the Gram's condition
    number, and the cells of the same kernels rounded to float32 (if ``round_to_float32``),
    with relative noise and with ridges, each with the predictions it changes."""
    base, model = predictions(k, kt, labels)
    scale = float(k.diagonal().mean())
    condition = smallest = None
    if len(labels) <= args.eigvalsh_max:
        eigenvalues = torch.linalg.eigvalsh(k)
        condition = float(eigenvalues[-1] / eigenvalues[0])
        smallest = float(eigenvalues[0]) / scale
        del eigenvalues
    row = {
        "n_train": len(labels), "n_test": len(test_labels),
        **found(base, model, k, test_labels),  # the fit above, not a second one
        "condition_eigvalsh": condition,
        "smallest_eigenvalue_over_mean_diagonal": smallest,
        "condition_estimate": model.condition_,
        "float32_kernels": cell(k.float().double(), kt.float().double(), labels,
                                test_labels, base) if round_to_float32 else None,
        "relative_noise": {},
        "ridge_over_mean_diagonal": {f"{r:g}": cell(k, kt, labels, test_labels, base,
                                                    r * scale)
                                     for r in map(float, args.ridges.split(","))},
        # so that runs with kernels of another precision compare prediction by prediction
        "predicted_classes": base.tolist(),
    }
    for eps in map(float, args.noise.split(",")):
        runs = []
        for seed in range(args.seeds):
            g = torch.Generator(k.device).manual_seed(seed)
            noisy = perturbed(k, eps, g)
            noisy_test = kt + eps * kt.abs() * torch.randn(
                kt.shape, generator=g, dtype=kt.dtype, device=kt.device)
            runs.append(cell(noisy, noisy_test, labels, test_labels, base))
            del noisy, noisy_test
        solved = [r for r in runs if r.get("solved", True)]
        row["relative_noise"][f"{eps:g}"] = {"seeds_solved": len(solved)} if not solved else {
            **{key: float(np.mean([r[key] for r in solved]))
               for key in ("accuracy", "predictions_changed")},
            "largest_ridge_needed": max(r["ridge_needed"] for r in solved),
            "seeds_solved": len(solved)}
    return row


def reference_predictions(path: Path) -> dict[tuple[int, int, int], np.ndarray]:
    """The predicted classes of each row of an earlier run's JSON, by (depth, n_train,
    n_test)."""
    try:
        rows = json.loads(path.read_text())["rows"]
        return {(r["depth"], r["n_train"], r["n_test"]): np.array(r["predicted_classes"])
                for r in rows}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SystemExit(f"--against: {path} is not a JSON of this script with predicted "
                         f"classes ({error})") from None


def against(row: dict, reference: dict[tuple[int, int, int], np.ndarray],
            test_labels: np.ndarray) -> dict | None:
    """This row's accuracy minus the reference run's on the same cell, with its paired
    standard error, and the predictions that differ; None if the reference lacks the cell."""
    theirs = reference.get((row["depth"], row["n_train"], row["n_test"]))
    if theirs is None:
        return None
    mine = np.array(row["predicted_classes"])
    difference, error = paired_difference(mine == test_labels, theirs == test_labels)
    return {"accuracy_minus_reference": round(difference, 2),
            "standard_error": round(error, 2),
            "predictions_changed": int((mine != theirs).sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=None, help="folder for the kernel tiles")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--data", choices=("exact", "jpeg"), default="exact")
    parser.add_argument("--n-train", type=int, default=None)
    parser.add_argument("--n-test", type=int, default=None)
    parser.add_argument("--depths", default="3,4")
    parser.add_argument("--dtype", choices=("float64", "float32"), default=None,
                        help="of the kernels (default: float64 on the CPU, float32 on CUDA)")
    parser.add_argument("--tile", type=int, default=None,
                        help="kernel tile side (default: 1,024 on the CPU, 4,096 on CUDA)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--noise", default=NOISE, help="relative noise levels eps")
    parser.add_argument("--ridges", default=RIDGES, help="ridges / mean(diag K)")
    parser.add_argument("--seeds", type=int, default=3, help="noise draws per level")
    parser.add_argument("--eigvalsh-max", type=int, default=10_000,
                        help="largest training set whose eigenvalues are computed")
    parser.add_argument("--train-sizes", default=None,
                        help="also the first m training images alone, comma-separated")
    parser.add_argument("--against", type=Path, default=None,
                        help="a JSON of this script on the same images, kernels of another "
                             "precision: each row counts the predictions that differ")
    args = parser.parse_args()
    reference = None if args.against is None else reference_predictions(args.against)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = getattr(torch, args.dtype or ("float32" if cuda else "float64"))
    tile = args.tile or (4096 if cuda else 1024)
    x, labels, z, test_labels = standardized_images(args.data, args.n_train, args.n_test,
                                                    args.data_root, dtype)
    sizes = train_sizes(args.train_sizes, len(labels))  # refused before the kernels
    x, z = x.to(device), z.to(device)
    depths = tuple(int(d) for d in args.depths.split(","))
    arch = nc.CNN(depth=max(depths), pooling="flatten")
    k_train, k_test = (
        nc.kernel_matrix(arch, a, b, depths=depths, kernel="ntk", tile=tile,
                         out=None if args.work is None else Path(args.work) / part)
        for a, b, part in ((x, None, "train"), (z, x, "test")))
    del x, z
    rows = []
    for depth in depths:
        # one depth at a time on the device, in float64: a 50k Gram is 20 GB there
        k = k_train.pop(depth).to(device, torch.float64)
        kt = k_test.pop(depth).to(device, torch.float64)
        for m in sizes:
            # kernels computed in float32 already are: no need to round them again
            rows.append({"depth": depth, **sensitivity(
                k[:m, :m].contiguous(), kt[:, :m].contiguous(), labels[:m], test_labels,
                args, round_to_float32=dtype != torch.float32)})
            if reference is not None:
                rows[-1]["against"] = against(rows[-1], reference, test_labels)
            print(json.dumps({key: value for key, value in rows[-1].items()
                              if key != "predicted_classes"}), flush=True)
        del k, kt
    implementation = "fused kernel" if cuda and dtype == torch.float32 else "torch reference"
    precision = str(dtype).removeprefix("torch.")
    result = {"study": "table1_sensitivity",
              "data": {"exact": "cifar10-exact-subset", "jpeg": "cifar10-jpeg"}[args.data],
              "kernel": f"CNTK-V (flatten, all layers trained), {precision} {implementation}, "
                        f"{device}; regression in float64 on {device}",
              "device": torch.cuda.get_device_name(device) if cuda else "cpu",
              "noise_seeds": args.seeds,
              "torch": torch.__version__, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
