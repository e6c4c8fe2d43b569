"""Kernel regression with a finite net's empirical NTK (its random features) against the exact
CNTK, on CIFAR-10: how wide must a net be before its kernel classifies as the limit does?
The paper (Sec. 1 and its Sec. B) finds that random features from practically sized nets
"degrade the performance a lot"; this measures it against width on the same images.

    python studies/random_features.py --out DIR [--work DIR] [--data jpeg|exact]
        [--n-train 2000] [--n-test 2000] [--depth 6] [--widths 16,32,64,128] [--seeds 3 | 3,3,3,1]
        [--max-memory-gib 8] [--data-root DIR] [--quiet]

CNTK-V (flatten, every layer trained) of ``--depth`` layers; the first ``--n-train``
training and ``--n-test`` test images, standardized with the training images' statistics
(as ``ntkcheck reproduce table1``).  The exact kernels in float64 (``kernel_matrix``); each
net (``arch.network(width, seed=s)``, the paper's parametrization) gives its empirical NTK in
float32 over the training and test images together (``empirical_ntk``, "jacobian", by
layer), whose readout layer's term is the net's NNGP random features (the kernel of training
the readout alone).  Regression as Table 1 (float64, no ridge unless singular, argmax), with:
each net's NTK and NNGP features, the mean kernel of the first s nets of a width (a Monte
Carlo estimate of the limit with s samples), and the exact NTK and NNGP.  Per row: the
accuracy; its difference from the exact kernel's with the paired standard error; the test
predictions equal to the exact kernel's; the relative Frobenius error of the training Gram
matrix against the exact one; the ridge.  Where the NTK features lose accuracy, per layer h
(random_features_layers.csv; Eq. 9's terms, the exact ones by ``kernel_matrix(...,
by_layer=True)``): the same regression and columns for the exact NTK with the net's (or the
mean kernel's) term h in place of its own, and for the net's NTK with the exact term h; and
the term's relative Frobenius error and share of the exact NTK.  Writes
DIR/random_features.csv, random_features_layers.csv, .md and .png; ``--work`` keeps the
exact kernel's tiles and each net's layer terms, so a stopped run resumes.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import ntkcheck as nc
from ntkcheck.regression import KernelRegression
from ntkcheck.studies._files import write_rows
from ntkcheck.studies.convergence_report import log_log_slope
from ntkcheck.studies.table1 import label_targets, paired_difference, standardized_images

FIELDS = ("kernel", "width", "nets", "seed", "accuracy", "minus_exact", "standard_error",
          "same_as_exact", "relative_error", "ridge", "seconds")
LAYER_FIELDS = ("kernel", "width", "nets", "seed", "layer", "accuracy", "minus_exact",
                "standard_error", "same_as_exact", "relative_error", "term_relative_error",
                "term_of_whole", "ridge")
KERNELS = ("NTK", "NNGP")
"""The whole empirical NTK, and its readout layer's term (the NNGP's random features)."""


Split = tuple[torch.Tensor, torch.Tensor]
"""A kernel as its training Gram matrix and its test-by-training matrix, float64."""


def split(gram: torch.Tensor, n_train: int) -> Split:
    """The parts of a Gram matrix over the training then test images that regression uses
    (of every layer's, for a (depth, n, n) one), float64."""
    k = gram.double()
    return k[..., :n_train, :n_train], k[..., n_train:, :n_train]


def predictions(kernel: Split, labels: np.ndarray) -> tuple[np.ndarray, float]:
    """Test predictions of kernel regression as Table 1, and the ridge it took."""
    model = KernelRegression(ridge="auto").fit(kernel[0], label_targets(labels))
    return model.predict(kernel[1]).argmax(1).numpy(), model.ridge_


def relative_error(kernel: Split, exact: Split) -> float:
    """||H - Theta||_F / ||Theta||_F over the training Gram matrices."""
    return float(torch.linalg.norm(kernel[0] - exact[0]) / torch.linalg.norm(exact[0]))


def row(name: str, width: object, nets: object, seed: object, kernel: Split, exact: Split,
        reference: np.ndarray, labels: np.ndarray, test_labels: np.ndarray,
        seconds: float | None = None, fitted: tuple[np.ndarray, float] | None = None
        ) -> dict[str, object]:
    """The row of one kernel against the exact one (whose test predictions are
    ``reference``); ``fitted``: the kernel's ``predictions`` where already made."""
    predicted, ridge = predictions(kernel, labels) if fitted is None else fitted
    right = predicted == test_labels
    difference, error = paired_difference(right, reference == test_labels)
    return {
        "kernel": name, "width": width, "nets": nets, "seed": seed,
        "accuracy": f"{100 * float(np.mean(right)):.2f}",
        "minus_exact": f"{difference:+.2f}", "standard_error": f"{error:.2f}",
        "same_as_exact": int((predicted == reference).sum()),
        "relative_error": f"{relative_error(kernel, exact):.4g}",
        "ridge": f"{ridge:.3g}", "seconds": "" if seconds is None else f"{seconds:.0f}",
    }


def net_terms(arch: nc.CNN, width: int, seed: int, x: torch.Tensor, max_memory: int,
              path: Path | None, progress: bool) -> tuple[torch.Tensor, float]:
    """One net's empirical NTK over ``x`` by layer, (depth, n, n) float32, and the seconds it
    took; loaded from ``path`` where an earlier run saved it."""
    if path is not None and path.exists():
        saved = torch.load(path)
        return saved["terms"], float(saved["seconds"])
    start = time.perf_counter()
    net = arch.network(width, tuple(x.shape[1:]), seed=seed)
    terms = nc.empirical_ntk(net, x, implementation="jacobian", by_layer=True,
                             max_memory=max_memory, progress=progress)
    seconds = time.perf_counter() - start
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"terms": terms, "seconds": seconds}, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
    return terms, seconds


def features(terms: Split) -> dict[str, Split]:
    """The NTK features' kernel (every layer's term) and the NNGP features' (the readout's)."""
    return {"NTK": (terms[0].sum(0), terms[1].sum(0)), "NNGP": (terms[0][-1], terms[1][-1])}


SWAPS = ("exact NTK, net's term h", "net's NTK, exact term h")
"""The two kernels of a layer row: one term of the exact NTK from the net, and the reverse."""


def layer_rows(terms: Split, exact_layers: Split, exact: Split, reference: np.ndarray,
               labels: np.ndarray, test_labels: np.ndarray, width: object, nets: object,
               seed: object) -> list[dict[str, object]]:
    """Per layer h (``terms`` and ``exact_layers``: (depth, ...) training and test matrices
    of the net(s)' H and of Theta, Eq. 9), the ``SWAPS``: Theta - Theta_h + H_h, and H - H_h
    + Theta_h; each as a row of ``row`` (where the first's relative_error is ||H_h -
    Theta_h||_F / ||Theta||_F), with the term's own ||H_h - Theta_h||_F / ||Theta_h||_F and
    ||Theta_h||_F / ||Theta||_F."""
    net, whole = features(terms)["NTK"], torch.linalg.norm(exact[0])
    rows = []
    for h in range(len(terms[0])):
        size = torch.linalg.norm(exact_layers[0][h])
        error = torch.linalg.norm(terms[0][h] - exact_layers[0][h])
        term = {"layer": h + 1, "term_relative_error": f"{error / size:.4g}",
                "term_of_whole": f"{size / whole:.4g}"}
        for name, base, into, out in ((SWAPS[0], exact, terms, exact_layers),
                                      (SWAPS[1], net, exact_layers, terms)):
            swapped = (base[0] - out[0][h] + into[0][h], base[1] - out[1][h] + into[1][h])
            mine = row(name, width, nets, seed, swapped, exact, reference, labels,
                       test_labels)
            del mine["seconds"]
            rows.append({**mine, **term})
    return rows


def exact_kernels(arch: nc.CNN, x: torch.Tensor, z: torch.Tensor, work: Path | None,
                  progress: bool) -> tuple[dict[str, Split], Split]:
    """The exact NTK and NNGP (float64, ``kernel_matrix``, tiles kept in ``work``), and the
    NTK by layer, (depth, ...) training and test matrices."""
    train, test = (nc.kernel_matrix(arch, a, b, by_layer=True, progress=progress,
                                    out=None if work is None else work / name)[arch.depth]
                   for a, b, name in ((x, None, "exact_train_layers"),
                                      (z, x, "exact_test_layers")))
    layers = (train.ntk, test.ntk)
    return {"NTK": features(layers)["NTK"], "NNGP": (train.nngp, test.nngp)}, layers


def study(arch: nc.CNN, x: torch.Tensor, z: torch.Tensor, labels: np.ndarray,
          test_labels: np.ndarray, seeds: dict[int, int], max_memory: int,
          work: Path | None, on_row: Callable[[dict], object] = print,
          progress: bool = True) -> tuple[list[dict], list[dict]]:
    """Every row: the exact kernels, then per width (``seeds``: width -> nets) each net
    and the mean kernel of its first s; and their layer rows (``layer_rows``).
    ``progress`` shows each kernel's progress line."""
    exact, exact_layers = exact_kernels(arch, x, z, work, progress)
    fitted = {k: predictions(exact[k], labels) for k in KERNELS}
    reference = {k: fitted[k][0] for k in KERNELS}
    rows: list[dict] = []
    layers: list[dict] = []
    n = len(x)

    def add(r: dict) -> None:
        rows.append(r)
        on_row(r)

    def add_layers(kernel: Split, width: int, nets: int, seed: object) -> None:
        layers.extend(layer_rows(kernel, exact_layers, exact["NTK"], reference["NTK"], labels,
                                 test_labels, width, nets, seed))

    for k in KERNELS:
        add(row(k, "exact", "", "", exact[k], exact[k], reference[k], labels, test_labels,
                fitted=fitted[k]))
    everything = torch.cat([x, z]).float()
    for width, nets in seeds.items():
        summed: Split = (torch.zeros(()), torch.zeros(()))  # of the width's first nets
        for seed in range(nets):
            path = None if work is None else work / f"net_w{width}_s{seed}.pt"
            terms, seconds = net_terms(arch, width, seed, everything, max_memory, path,
                                       progress)
            mine = split(terms, n)
            summed = (summed[0] + mine[0], summed[1] + mine[1])
            one = features(mine)
            if seed:  # the mean kernel of the first seed + 1 nets
                mean = (summed[0] / (seed + 1), summed[1] / (seed + 1))
                many = features(mean)
            for k in KERNELS:
                add(row(k, width, 1, seed, one[k], exact[k], reference[k], labels,
                        test_labels, seconds))
                if seed:
                    add(row(k, width, seed + 1, "", many[k], exact[k], reference[k], labels,
                            test_labels))
            add_layers(mine, width, 1, seed)
            if seed:
                add_layers(mean, width, seed + 1, "")
    return rows, layers


def seeds_per_width(widths: str, seeds: str) -> dict[int, int]:
    """{width: nets} from ``--widths`` and ``--seeds`` (one count, or one per width)."""
    chosen, counts = [int(w) for w in widths.split(",")], [int(s) for s in seeds.split(",")]
    if len(counts) == 1:
        counts *= len(chosen)
    if len(counts) != len(chosen) or min(counts) < 1:
        raise SystemExit(f"--seeds: one count >= 1, or one per width ({len(chosen)}); "
                         f"got {seeds!r}")
    return dict(zip(chosen, counts, strict=True))


def mean_by_width(rows: list[dict], field: str) -> tuple[list[int], list[float]]:
    """The widths of ``rows`` and the mean of ``field`` at each."""
    widths = sorted({int(r["width"]) for r in rows})
    return widths, [float(np.mean([float(r[field]) for r in rows if int(r["width"]) == w]))
                    for w in widths]


def figure(rows: list[dict], layers: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, grid = plt.subplots(2, 3, figsize=(16, 9))
    axes = grid.ravel()
    for kernel, color in zip(KERNELS, ("C0", "C1"), strict=True):
        mine = [r for r in rows if r["kernel"] == kernel]
        exact = next(float(r["accuracy"]) for r in mine if r["width"] == "exact")
        single = [r for r in mine if r["nets"] == 1]
        most = max(int(r["nets"]) for r in mine if r["width"] != "exact")
        ensemble = {int(r["width"]): float(r["accuracy"]) for r in mine
                    if r["width"] != "exact" and int(r["nets"]) == most}
        axes[0].scatter([int(r["width"]) for r in single],
                        [float(r["accuracy"]) for r in single], color=color, s=10, alpha=0.6)
        axes[0].plot(*mean_by_width(single, "accuracy"), color=color,
                     label=f"{kernel} features, one net (mean)")
        if most > 1:
            axes[0].plot(sorted(ensemble), [ensemble[w] for w in sorted(ensemble)], "--",
                         color=color, label=f"{kernel} features, mean kernel of {most} nets")
        axes[0].axhline(exact, color=color, ls=":", label=f"exact {kernel}")
        axes[1].scatter([int(r["width"]) for r in single],
                        [int(r["same_as_exact"]) for r in single], color=color, s=10,
                        label=kernel)
        errors = [float(r["relative_error"]) for r in single]
        slope = log_log_slope([int(r["width"]) for r in single], errors)
        axes[2].scatter([int(r["width"]) for r in single], errors, color=color, s=10,
                        label=f"{kernel} (slope {slope:.2f})")
    net = [r for r in rows if r["kernel"] == "NTK" and r["nets"] == 1]
    axes[4].plot(*mean_by_width(net, "minus_exact"), "k--", label="no term exact")
    for h in sorted({r["layer"] for r in layers}):
        color = f"C{h + 1}"
        for ax, swap in zip(axes[3:5], SWAPS, strict=True):
            mine = [r for r in layers if (r["layer"], r["nets"], r["kernel"]) == (h, 1, swap)]
            ax.plot(*mean_by_width(mine, "minus_exact"), color=color, marker=".",
                    label=f"layer {h}")
        single = [r for r in layers if (r["layer"], r["nets"], r["kernel"]) == (h, 1, SWAPS[0])]
        errors = [float(r["term_relative_error"]) for r in single]
        slope = log_log_slope([int(r["width"]) for r in single], errors)
        axes[5].scatter([int(r["width"]) for r in single], errors, color=color, s=10,
                        label=f"layer {h} (slope {slope:.2f})")
    axes[0].set(xscale="log", xlabel="width", ylabel="test accuracy (%)")
    axes[1].set(xscale="log", xlabel="width", ylabel="test predictions equal to the exact's")
    axes[2].set(xscale="log", yscale="log", xlabel="width",
                ylabel="||H - Theta||_F / ||Theta||_F", title="training Gram, one net")
    axes[3].set(xscale="log", xlabel="width", ylabel="accuracy minus the exact NTK's",
                title="the exact NTK with one net's term h (mean over nets)")
    axes[4].set(xscale="log", xlabel="width", ylabel="accuracy minus the exact NTK's",
                title="one net's NTK with the exact term h (mean over nets)")
    axes[5].set(xscale="log", yscale="log", xlabel="width",
                ylabel="||H_h - Theta_h||_F / ||Theta_h||_F", title="term h, one net")
    widths = sorted({int(r["width"]) for r in rows if r["width"] != "exact"})
    for ax in axes:
        ax.set_xticks(widths, [str(w) for w in widths])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(rows: list[dict], fields: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(f.replace("_", " ") for f in fields) + " |",
             "|" + "---|" * len(fields)]
    lines += ["| " + " | ".join(str(r[f]) for f in fields) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder of the results")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the exact kernel's tiles and each net's kernels")
    parser.add_argument("--data", choices=("jpeg", "exact"), default="jpeg")
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--widths", default="16,32,64,128")
    parser.add_argument("--seeds", default="3",
                        help="nets per width: one count for all, or one per width")
    parser.add_argument("--max-memory-gib", type=float, default=8.0,
                        help="empirical_ntk's budget: one that holds every image's Jacobians "
                             "computes each once")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args()
    x, labels, z, test_labels = standardized_images(args.data, args.n_train, args.n_test,
                                                    args.data_root)
    arch = nc.CNN(depth=args.depth, pooling="flatten")
    rows, layers = study(arch, x, z, labels, test_labels, seeds_per_width(args.widths, args.seeds),
                         int(args.max_memory_gib * 2**30), args.work,
                         on_row=lambda r: print(r, flush=True), progress=not args.quiet)
    args.out.mkdir(parents=True, exist_ok=True)
    write_rows(args.out / "random_features.csv", FIELDS, rows)
    write_rows(args.out / "random_features_layers.csv", LAYER_FIELDS, layers)
    setting = (f"CNTK-V depth {args.depth}: empirical NTK features against the exact kernel, "
               f"cifar10-{args.data}, {len(labels)} train / {len(test_labels)} test images")
    (args.out / "random_features.md").write_text(
        f"# {setting}\n\nExact kernels in float64, each net's empirical NTK in float32 (its "
        f"seconds as measured by the run that computed it; this one had "
        f"{torch.get_num_threads()} threads), regressions in float64; accuracy in percent."
        f"\n\n{table(rows, FIELDS)}\n## One layer's term swapped between the exact NTK and "
        f"the net's\n\n{table(layers, LAYER_FIELDS)}")
    figure(rows, layers, args.out / "random_features.png", setting)
    print(f"wrote {args.out}/random_features.csv, random_features_layers.csv, "
          "random_features.md and random_features.png")


if __name__ == "__main__":
    main()
