"""Large kernel matrices in tiles on disk: resumable, and the unit a multi-GPU run splits.

``kernel_matrix(arch, X1, X2, depths=..., out=DIR)`` computes the NTK and NNGP (or one of
them) of every requested depth tile by tile (only the upper-triangle tiles of a Gram
matrix), writes each finished tile to ``DIR`` at once (atomically), and on a re-run with the
same ``DIR`` loads the tiles already there instead of computing them.  ``DIR/manifest.json``
records what is being computed (architecture, depths, sizes, tile, kernel, dtype and a
fingerprint of the inputs), so a folder is never resumed with different inputs or settings.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Literal, overload

import torch

from ._checks import check_depths, check_inputs, check_int
from ._progress import Progress
from ._saved import claim, fingerprint, save
from .architectures import DEFAULT_MAX_MEMORY, Backend, _Architecture
from .kernels.recursion import Kernels, tile_pairs

DEFAULT_TILE = 256
"""Rows (and columns) of a tile: 65,536 pairs, a few seconds of CNTK-GAP on an H100."""

Which = Literal["both", "ntk", "nngp"]
WHICH: tuple[Which, ...] = ("both", "ntk", "nngp")


def _manifest(arch: _Architecture, x1: torch.Tensor, x2: torch.Tensor | None,
              depths: frozenset[int], tile: int, kernel: Which) -> dict[str, object]:
    return {
        "architecture": repr(arch), "depths": sorted(depths), "tile": tile, "kernel": kernel,
        "n1": x1.shape[0], "n2": x1.shape[0] if x2 is None else x2.shape[0],
        "gram": x2 is None, "dtype": str(x1.dtype).removeprefix("torch."),
        "x1": fingerprint(x1), "x2": None if x2 is None else fingerprint(x2),
    }


@overload
def kernel_matrix(
    arch: _Architecture, x1: torch.Tensor, x2: torch.Tensor | None = None, *,
    depths: Iterable[int] | None = None, out: str | os.PathLike[str] | None = None,
    tile: int = DEFAULT_TILE, progress: bool = True, backend: Backend = "auto",
    max_memory: int = DEFAULT_MAX_MEMORY, kernel: Literal["both"] = "both",
) -> dict[int, Kernels]: ...


@overload
def kernel_matrix(
    arch: _Architecture, x1: torch.Tensor, x2: torch.Tensor | None = None, *,
    depths: Iterable[int] | None = None, out: str | os.PathLike[str] | None = None,
    tile: int = DEFAULT_TILE, progress: bool = True, backend: Backend = "auto",
    max_memory: int = DEFAULT_MAX_MEMORY, kernel: Literal["ntk", "nngp"],
) -> dict[int, torch.Tensor]: ...


def kernel_matrix(
    arch: _Architecture,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    depths: Iterable[int] | None = None,
    out: str | os.PathLike[str] | None = None,
    tile: int = DEFAULT_TILE,
    progress: bool = True,
    backend: Backend = "auto",
    max_memory: int = DEFAULT_MAX_MEMORY,
    kernel: Which = "both",
) -> dict[int, Kernels] | dict[int, torch.Tensor]:
    """{depth: Kernels(ntk, nngp)}: (n1, n2) matrices of ``arch`` (a Gram matrix if
    ``x2`` is None), computed ``tile`` x ``tile`` pairs at a time; with ``kernel="ntk"``
    (or ``"nngp"``) only that one is kept, as {depth: matrix}, in half the memory.

    ``depths`` defaults to ``(arch.depth,)``; all are read out of one pass per tile.
    With ``out``, every finished tile is saved there and a re-run resumes; without it,
    nothing touches the disk.  The matrices are assembled on the CPU in the inputs' dtype,
    so n1 * n2 * len(depths) entries per kept kernel must fit in memory.  ``progress`` shows
    pairs done, pairs/s and ETA; ``backend`` and ``max_memory`` are as in ``arch.ntk``.
    """
    x1, x2 = check_inputs(x1, x2, arch._rank, arch._layout)
    chosen = check_depths(arch.depth if depths is None else depths, arch.min_depth, arch.depth)
    check_int("tile", tile, 1, " (rows and columns per tile)")
    if kernel not in WHICH:
        raise ValueError(f"kernel must be one of {WHICH}; got {kernel!r}")
    names = ("ntk", "nngp") if kernel == "both" else (kernel,)
    folder = None if out is None else Path(out)
    if folder is not None:
        claim(folder, _manifest(arch, x1, x2, chosen, tile, kernel))
    gram = x2 is None
    z = x1 if x2 is None else x2
    n1, n2 = x1.shape[0], z.shape[0]
    tiles = [(r, c) for r in range(0, n1, tile) for c in range(r if gram else 0, n2, tile)]

    def pairs(r: int, c: int) -> int:
        return tile_pairs(n1, n2, r, c, tile, tile, gram)

    matrices = {(d, name): torch.zeros(n1, n2, dtype=x1.dtype)
                for d in sorted(chosen) for name in names}
    saved = {t: folder / f"tile_{t[0]:07d}_{t[1]:07d}.pt" for t in tiles} if folder else {}
    todo = [t for t in tiles if not (t in saved and saved[t].exists())]
    with Progress(sum(pairs(*t) for t in todo), "kernel pairs", enabled=progress) as bar:
        for r, c in tiles:
            rows, cols = slice(r, r + tile), slice(c, c + tile)
            if (r, c) in todo:
                found = arch._kernels(
                    x1[rows], None if gram and r == c else z[cols], chosen,
                    max_memory=max_memory, progress=False, backend=backend,
                )
                block = {(d, name): getattr(k, name).cpu()
                         for d, k in found.items() for name in names}
                if folder is not None:
                    save(block, saved[r, c])
                bar.advance(pairs(r, c))
            else:
                block = torch.load(saved[r, c])
            for key, k in block.items():
                matrices[key][rows, cols] = k
                if gram and r != c:
                    matrices[key][cols, rows] = k.T
    if kernel == "both":
        return {d: Kernels(matrices[d, "ntk"], matrices[d, "nngp"]) for d in sorted(chosen)}
    return {d: matrices[d, kernel] for d in sorted(chosen)}
