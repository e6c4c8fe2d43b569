"""Command line: ``ntkcheck demo`` prints an exact CNTK Gram matrix of CIFAR-10 images."""

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
    args = parser.parse_args(argv)
    try:
        if args.n < 1:
            raise ValueError(f"--n must be >= 1; got {args.n}")
        _demo(args)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"ntkcheck: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
