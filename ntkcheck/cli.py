"""Command line.

``ntkcheck demo`` prints an exact CNTK Gram matrix of CIFAR-10 images;
``ntkcheck kernel`` computes the kernel matrices of .npy inputs, resumably, in shards;
``ntkcheck reproduce table1`` reproduces the paper's CIFAR-10 Table 1;
``ntkcheck study {init,drift,agreement}`` measures finite nets against the NTK theory.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from .architectures import CNN, FC
from .data import CLASSES, cifar10_exact, standardize
from .kernel_matrix import kernel_matrix, kernel_tiles
from .kernels.recursion import Kernels
from .studies import table1

T = TypeVar("T")


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
    print(" " * 10 + "".join(f"{n:>12}" for n in names))
    for name, row in zip(names, gram.tolist(), strict=True):  # a space apart, however wide
        print(f"{name:>10}" + "".join(f" {v:11.5f}" for v in row))
    print(f"{pairs} pairs in {seconds:.2f} s = {seconds / pairs * 1e3:.1f} ms per pair "
          f"on {torch.get_num_threads()} CPU threads")


def _list_of(convert: Callable[[str], T], what: str) -> Callable[[str], list[T]]:
    """An argparse type for comma-separated values, each read by ``convert``."""
    def parse(text: str) -> list[T]:
        try:
            return [convert(v.strip()) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {what}; got {text!r}") from None
    return parse


_int_list = _list_of(int, "ints")
_float_list = _list_of(float, "numbers")
_name_list = _list_of(str, "names")


def _shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    try:
        shard = int(index), int(count)
    except ValueError:
        shard = (-1, 0)
    if not 0 <= shard[0] < shard[1]:
        raise argparse.ArgumentTypeError(f"expected I/K with 0 <= I < K; got {text!r}")
    return shard


def _device(name: str | None) -> torch.device:
    """--device, default cuda where there is one; a clear error where there is none."""
    name = name or ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here; use --device cpu")
    return torch.device(name)


def _inputs(name: str, path: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    array = np.load(path)
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be a .npy file of one numeric array; got {path!r}")
    return torch.from_numpy(array).to(device, dtype)


def _kernel(args: argparse.Namespace) -> None:
    if args.arch == "fc":
        if args.pooling is not None or args.filter_size is not None:
            raise ValueError("--pooling and --filter-size are for --arch cnn")
        arch: FC | CNN = FC(depth=args.depth, fix_first_last=args.fix_first_last)
    else:
        arch = CNN(depth=args.depth, pooling=args.pooling or "flatten",
                   filter_size=args.filter_size or 3, fix_first_last=args.fix_first_last)
    device = _device(args.device)
    dtype = {"float32": torch.float32, "float64": torch.float64, None: (
        torch.float32 if device.type == "cuda" else torch.float64)}[args.dtype]
    x1 = _inputs("--x1", args.x1, device, dtype)
    x2 = None if args.x2 is None else _inputs("--x2", args.x2, device, dtype)
    options = dict(depths=args.depths, out=args.out, tile=args.tile, kernel=args.kernel,
                   progress=not args.quiet, by_layer=args.by_layer)
    if args.shard is not None:
        done = kernel_tiles(arch, x1, x2, shard=args.shard, **options)
        print(f"shard {args.shard[0]}/{args.shard[1]}: computed {done} tiles into {args.out}; "
              "once every shard is done, the same command without --shard assembles them")
        return
    for depth, found in kernel_matrix(arch, x1, x2, **options).items():
        kept = found._asdict() if isinstance(found, Kernels) else {args.kernel: found}
        for name, matrix in kept.items():
            split = "_layers" if args.by_layer and name == "ntk" else ""
            path = Path(args.out) / f"{name}{split}_depth{depth}.npy"
            np.save(path, matrix.numpy())
            print(f"wrote {path} ({' x '.join(map(str, matrix.shape))}, {matrix.dtype})")


def _reproduce(args: argparse.Namespace) -> int:
    for name, value in (("--n-train", args.n_train), ("--n-test", args.n_test)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1; got {value}")
    if not args.depths or any(d < 3 or d > 64 for d in args.depths):
        raise ValueError(f"--depths must be ints between 3 and 64; got {args.depths}")
    device = _device(args.device)
    columns = [c.strip() for c in args.columns.split(",") if c.strip()]
    fix = {None: None, "yes": True, "no": False}[args.fix_first_last]
    if args.max_seconds is not None and not (args.work and args.max_seconds > 0):
        raise ValueError(f"--max-seconds needs --work (where a stopped column's finished parts "
                         f"are kept) and a value > 0; got {args.max_seconds}")
    if args.shard is not None and not args.work:
        raise ValueError("--shard needs --work, the folder where the shards meet")
    try:
        table1.reproduce(columns, args.depths, out=args.out, data=args.data,
                         n_train=args.n_train, n_test=args.n_test, device=device.type,
                         root=args.data_root, work=args.work, fix_first_last=fix,
                         max_seconds=args.max_seconds, shard=args.shard,
                         progress=not args.quiet)
    except table1.TimeLimitReached as stopped:
        print(f"ntkcheck: {stopped}; run the same command again to continue", file=sys.stderr)
        return 3
    if args.shard is None or args.shard[0] == 0:
        print(f"wrote {args.out}/table1.csv, table1.md and table1.png")
    return 0


def _study(args: argparse.Namespace) -> None:
    from .studies import convergence

    device = _device(args.device or "cpu").type  # float64 studies: the CPU unless asked
    convergence.run(args.study, args.preset, args.out, device=device, progress=not args.quiet,
                    archs=args.archs, depths=args.depths, widths=args.widths,
                    seeds=args.seeds, kappas=args.kappas, max_steps=args.max_steps)
    written = [f"{args.study}{end}" for end in (".csv", "_summary.json", ".png", "_layers.png",
                                                 ".md")
               if (Path(args.out) / f"{args.study}{end}").exists()]  # no figure if nothing fitted
    print(f"wrote {args.out}/{', '.join(written[:-1])} and {written[-1]}")


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

    kernel = commands.add_parser(
        "kernel", help="kernel matrices of .npy inputs, in tiles on disk (resumable, shards)",
        description="The exact NTK / NNGP matrices of an architecture on the inputs of .npy "
        "files ((n, d) for fc, (n, C, H, W) for cnn), computed in tiles saved in --out, so "
        "that a re-run resumes; written as OUT/ntk_depthD.npy and OUT/nngp_depthD.npy.  To "
        "split the work, run it once per shard I = 0..K-1 with --shard I/K (a GPU each, or "
        "machines whose --out folders are then copied into one), then once without --shard "
        "to assemble the matrices.")
    kernel.add_argument("--arch", choices=["fc", "cnn"], required=True)
    kernel.add_argument("--depth", type=int, required=True,
                        help="weight layers including the readout")
    kernel.add_argument("--pooling", choices=["flatten", "gap"], default=None,
                        help="cnn only (default flatten)")
    kernel.add_argument("--filter-size", type=int, default=None, help="cnn only (default 3)")
    kernel.add_argument("--fix-first-last", action="store_true",
                        help="the first and readout layer are not trained")
    kernel.add_argument("--x1", required=True, help=".npy file of the first inputs")
    kernel.add_argument("--x2", default=None,
                        help=".npy file of the second inputs (default: the Gram matrix of x1)")
    kernel.add_argument("--depths", type=_int_list, default=None,
                        help="comma-separated depths read out of the one pass (default "
                        "--depth)")
    kernel.add_argument("--kernel", choices=["both", "ntk", "nngp"], default="both")
    kernel.add_argument("--by-layer", action="store_true",
                        help="split the NTK into its weight layers' terms (Eq. 9): writes "
                        "OUT/ntk_layers_depthD.npy, (D, n1, n2), whose sum over the first "
                        "axis is the NTK, instead of OUT/ntk_depthD.npy (the torch "
                        "reference computes it, also on cuda)")
    kernel.add_argument("--out", required=True, help="folder of the tiles and the matrices")
    kernel.add_argument("--tile", type=int, default=256, help="rows and columns per tile")
    kernel.add_argument("--shard", type=_shard, default=None, metavar="I/K",
                        help="compute only the I-th of K shares of the tiles")
    kernel.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="default cuda if available")
    kernel.add_argument("--dtype", choices=["float32", "float64"], default=None,
                        help="default float32 on cuda (the fused kernel), float64 on cpu")
    kernel.add_argument("--quiet", action="store_true", help="no progress bar")
    kernel.set_defaults(run=_kernel)

    reproduce = commands.add_parser("reproduce", help="reproduce the paper's CIFAR-10 Table 1")
    reproduce.add_argument("what", choices=["table1"])
    reproduce.add_argument("--columns", default=",".join(table1.DEFAULT_COLUMNS),
                           help="comma-separated, among CNTK-V, CNTK-V-2K, CNTK-GAP-2K, "
                           "CNTK-GAP (default: all but CNTK-GAP, 1.75e9 GAP pairs)")
    reproduce.add_argument("--depths", type=_int_list, default=list(table1.DEPTHS),
                           help="comma-separated depths (default: the paper's, "
                           f"{','.join(map(str, table1.DEPTHS))})")
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
    reproduce.add_argument("--shard", type=_shard, default=None, metavar="I/K",
                           help="split each column between K processes sharing --work, "
                           "started together (one per GPU): this one is shard I; shard 0 "
                           "fits and writes the table")
    reproduce.add_argument("--quiet", action="store_true", help="no progress bars")
    reproduce.set_defaults(run=_reproduce)

    study = commands.add_parser("study", help="width sweeps against the NTK theorems")
    study.add_argument("study", choices=["init", "drift", "agreement"])
    study.add_argument("--preset", choices=["quick", "paper"], default="quick")
    study.add_argument("--out", default="runs/studies", help="output folder; a re-run with "
                       "the same folder resumes, a net in training from its checkpoint in "
                       "OUT/checkpoints/ (default runs/studies)")
    study.add_argument("--device", choices=["cpu", "cuda"], default=None)
    study.add_argument("--archs", type=_name_list, default=None,
                       help="comma-separated architectures from fc, cnn-flatten, cnn-gap, "
                       "replacing the preset's")
    study.add_argument("--depths", type=_int_list, default=None,
                       help="comma-separated depths (>= 2), replacing the preset's")
    study.add_argument("--widths", type=_int_list, default=None,
                       help="comma-separated widths, replacing the preset's")
    study.add_argument("--seeds", type=int, default=None, help="seeds per width (preset's)")
    study.add_argument("--kappas", type=_float_list, default=None,
                       help="agreement only: comma-separated output scales kappa > 0, "
                       "replacing the preset's")
    study.add_argument("--max-steps", type=int, default=None,
                       help="drift and agreement: gradient-descent steps a net may take to "
                       "converge (default 100000); one that does not is recorded as "
                       "unconverged, and a re-run with more steps continues it")
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
