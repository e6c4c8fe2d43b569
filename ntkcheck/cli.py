"""Command line.

``ntkcheck demo`` prints an exact CNTK Gram matrix of CIFAR-10 images;
``ntkcheck reproduce table1`` reproduces the paper's CIFAR-10 Table 1;
``ntkcheck study {init,drift,agreement}`` measures finite nets against the NTK theory.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from .architectures import CNN
from .data import CLASSES, cifar10_exact, standardize


def _demo(args: argparse.Namespace) -> None:
    images, labels = cifar10_exact("test", args.n, root=args.data_root)
    train, _ = cifar10_exact("train", root=args.data_root)
    dtype = torch.float32 if args.float32 else torch.float64
    x = standardize(images, reference=train, dtype=dtype)
    arch = CNN(depth=args.depth, pooling=args.pooling, filter_size=args.filter_size,
               fix_first_last=args.pooling == "gap")
    start = time.perf_counter()
    gram = arch.ntk(x)
    seconds = time.perf_counter() - start
    pairs = len(x) * (len(x) + 1) // 2
    print(f"{arch}\non the first {len(x)} CIFAR-10 test images (exact pixels, {dtype}):")
    names = [CLASSES[c][:8] for c in labels]
    print(" " * 10 + "".join(f"{n:>11}" for n in names))
    for name, row in zip(names, gram.tolist(), strict=True):
        print(f"{name:>10}" + "".join(f"{v:11.5f}" for v in row))
    print(f"{pairs} pairs in {seconds:.2f} s = {seconds / pairs * 1e3:.1f} ms per pair "
          f"on {torch.get_num_threads()} CPU threads")


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints; got {text!r}") from None


def _reproduce(args: argparse.Namespace) -> int:
    from .studies import table1

    for name, value in (("--n-train", args.n_train), ("--n-test", args.n_test)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1; got {value}")
    if not args.depths or any(d < 3 or d > 64 for d in args.depths):
        raise ValueError(f"--depths must be ints between 3 and 64; got {args.depths}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here; use --device cpu")
    columns = [c.strip() for c in args.columns.split(",") if c.strip()]
    fix = {None: None, "yes": True, "no": False}[args.fix_first_last]
    if args.max_seconds is not None and not (args.work and args.max_seconds > 0):
        raise ValueError(f"--max-seconds needs --work (where a stopped column's finished parts "
                         f"are kept) and a value > 0; got {args.max_seconds}")
    try:
        table1.reproduce(columns, args.depths, out=args.out, data=args.data,
                         n_train=args.n_train, n_test=args.n_test, device=device,
                         root=args.data_root, work=args.work, fix_first_last=fix,
                         max_seconds=args.max_seconds, progress=not args.quiet)
    except table1.TimeLimitReached as stopped:
        print(f"ntkcheck: {stopped}; run the same command again to continue", file=sys.stderr)
        return 3
    print(f"wrote {args.out}/table1.csv, table1.md and table1.png")
    return 0


def _study(args: argparse.Namespace) -> None:
    from .studies import convergence

    device = args.device or "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here; use --device cpu")
    convergence.run(args.study, args.preset, args.out, device=device, progress=not args.quiet,
                    widths=args.widths, seeds=args.seeds)
    print(f"wrote {args.out}/{args.study}.csv, {args.study}_summary.json, {args.study}.png "
          f"and {args.study}.md")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ntkcheck", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="print a CNTK Gram matrix of CIFAR-10 images")
    demo.add_argument("--n", type=int, default=6, help="number of test images (default 6)")
    demo.add_argument("--depth", type=int, default=11, help="weight layers incl. readout")
    demo.add_argument("--pooling", choices=["gap", "flatten"], default="gap",
                      help="gap (first and last layer fixed, the paper's setting) or flatten")
    demo.add_argument("--filter-size", type=int, default=3)
    demo.add_argument("--float32", action="store_true", help="compute in float32")
    demo.add_argument("--data-root", default=None, help="folder with the CIFAR-10 files")
    demo.set_defaults(run=_demo)

    reproduce = commands.add_parser("reproduce", help="reproduce the paper's CIFAR-10 Table 1")
    reproduce.add_argument("what", choices=["table1"])
    reproduce.add_argument("--columns", default="CNTK-V,CNTK-V-2K,CNTK-GAP-2K",
                           help="comma-separated, among CNTK-V, CNTK-V-2K, CNTK-GAP-2K, "
                           "CNTK-GAP (default: all but CNTK-GAP, 1.75e9 GAP pairs)")
    reproduce.add_argument("--depths", type=_int_list, default=[3, 4, 6, 11, 21],
                           help="comma-separated depths (default 3,4,6,11,21)")
    reproduce.add_argument("--device", choices=["cpu", "cuda"], default=None,
                           help="where kernels and solves run (default: cuda if available)")
    reproduce.add_argument("--out", default="runs/table1", help="output folder; a re-run "
                           "with the same folder skips finished columns (default runs/table1)")
    reproduce.add_argument("--data", choices=["jpeg", "exact", "exact-jpeg"], default="jpeg",
                           help="jpeg: all 60,000 images (JPEG re-encoded); exact: the "
                           "exact-pixel subset (5,085 train, 1,017 test); exact-jpeg: the "
                           "same subset's images as the JPEG set has them")
    reproduce.add_argument("--n-train", type=int, default=None,
                           help="cap every column's training images (for quick checks)")
    reproduce.add_argument("--n-test", type=int, default=None,
                           help="test on the first N test images (default all)")
    reproduce.add_argument("--data-root", default=None, help="folder with the CIFAR-10 files")
    reproduce.add_argument("--fix-first-last", choices=["yes", "no"], default=None,
                           help="fix (yes) or train (no) the first and last layer of every "
                           "column's CNTK (default: CNTK-V trained, CNTK-GAP fixed)")
    reproduce.add_argument("--work", default=None,
                           help="keep each column's finished work in this folder (training "
                           "Gram tiles, fitted weights, test predictions by chunk), so an "
                           "interrupted column resumes")
    reproduce.add_argument("--max-seconds", type=float, default=None,
                           help="stop between test chunks rather than run past this many "
                           "seconds (needs --work; exit status 3, and the same command "
                           "continues)")
    reproduce.add_argument("--quiet", action="store_true", help="no progress bars")
    reproduce.set_defaults(run=_reproduce)

    study = commands.add_parser("study", help="width sweeps against the NTK theorems")
    study.add_argument("study", choices=["init", "drift", "agreement"])
    study.add_argument("--preset", choices=["quick", "paper"], default="quick")
    study.add_argument("--out", default="runs/studies", help="output folder; a re-run with "
                       "the same folder resumes (default runs/studies)")
    study.add_argument("--device", choices=["cpu", "cuda"], default=None)
    study.add_argument("--widths", type=_int_list, default=None,
                       help="comma-separated widths, replacing the preset's")
    study.add_argument("--seeds", type=int, default=None, help="seeds per width (preset's)")
    study.add_argument("--quiet", action="store_true", help="no progress bar")
    study.set_defaults(run=_study)

    args = parser.parse_args(argv)
    try:
        if args.command == "demo" and args.n < 1:
            raise ValueError(f"--n must be >= 1; got {args.n}")
        status = args.run(args)
    except (ValueError, TypeError, FileNotFoundError, OSError) as error:
        print(f"ntkcheck: error: {error}", file=sys.stderr)
        return 2
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
