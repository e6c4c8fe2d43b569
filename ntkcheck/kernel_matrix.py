"""Large kernel matrices in tiles on disk: resumable, and split between processes.

``kernel_matrix(arch, X1, X2, depths=..., out=DIR)`` computes the NTK and NNGP (or one of
them) of every requested depth tile by tile (only the upper-triangle tiles of a Gram
matrix), writes each finished tile to ``DIR`` at once (atomically), and on a re-run with the
same ``DIR`` loads the tiles already there instead of computing them.  ``DIR/manifest.json``
records what is being computed (architecture, depths, sizes, tile, kernel, dtype and a
fingerprint of the inputs), so a folder is never resumed with different inputs or settings.
``kernel_tiles(..., out=DIR, shard=(i, k))`` computes only the i-th of k shares of the
tiles, so that k processes (GPUs, machines) split one matrix; ``kernel_matrix`` with the
same ``DIR`` then assembles it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Literal, NamedTuple, overload

import torch

from ._checks import check_bool, check_depths, check_inputs, check_int
from ._progress import Progress
from ._saved import claim, fingerprint, save
from .architectures import DEFAULT_MAX_MEMORY, Backend, _Architecture
from .kernels.recursion import Kernels, tile_pairs

DEFAULT_TILE = 256
"""Rows (and columns) of a tile: 65,536 pairs, a few seconds of CNTK-GAP on an H100."""

FUSED_TOLERANCE = 1e-3
"""Largest relative error against the float64 reference with which the fused kernel may
start a matrix (``_check_fused``): its float32 error is 1e-7 to 6e-5 where measured
(README), a broken kernel's is orders larger."""

Which = Literal["both", "ntk", "nngp"]
WHICH: tuple[Which, ...] = ("both", "ntk", "nngp")


def _manifest(arch: _Architecture, x1: torch.Tensor, x2: torch.Tensor | None,
              depths: frozenset[int], tile: int, kernel: Which,
              by_layer: bool) -> dict[str, object]:
    manifest: dict[str, object] = {
        "architecture": repr(arch), "depths": sorted(depths), "tile": tile, "kernel": kernel,
        "n1": x1.shape[0], "n2": x1.shape[0] if x2 is None else x2.shape[0],
        "gram": x2 is None, "dtype": str(x1.dtype).removeprefix("torch."),
        "x1": fingerprint(x1), "x2": None if x2 is None else fingerprint(x2),
    }
    if by_layer:  # only then, so that folders begun before by_layer existed still resume
        manifest["by_layer"] = True
    return manifest


Shard = tuple[int, int]
"""(index, count): the index-th of count shares of a matrix's tiles, index in [0, count)."""


class _Tiles(NamedTuple):
    """One matrix's tiles and how to compute, save and load each (``out`` may be None)."""

    arch: _Architecture
    x1: torch.Tensor
    x2: torch.Tensor | None
    depths: frozenset[int]
    names: tuple[str, ...]
    folder: Path | None
    tile: int
    backend: Backend
    max_memory: int
    by_layer: bool

    @property
    def sizes(self) -> tuple[int, int]:
        return self.x1.shape[0], (self.x1 if self.x2 is None else self.x2).shape[0]

    def corners(self) -> list[tuple[int, int]]:
        """Tile corners (row, column) in row order: the upper triangle's for a Gram."""
        n1, n2 = self.sizes
        gram = self.x2 is None
        return [(r, c) for r in range(0, n1, self.tile)
                for c in range(r if gram else 0, n2, self.tile)]

    def pairs(self, corner: tuple[int, int]) -> int:
        return tile_pairs(*self.sizes, *corner, self.tile, self.tile, self.x2 is None)

    def path(self, corner: tuple[int, int]) -> Path:
        """Where the tile is saved (there is a ``folder``)."""
        assert self.folder is not None
        return self.folder / f"tile_{corner[0]:07d}_{corner[1]:07d}.pt"

    def saved(self, corner: tuple[int, int]) -> bool:
        return self.folder is not None and self.path(corner).exists()

    def load(self, corner: tuple[int, int]) -> dict[tuple[int, str], torch.Tensor]:
        """A saved tile, as ``compute`` returned it."""
        return torch.load(self.path(corner))

    def compute(self, corner: tuple[int, int]) -> dict[tuple[int, str], torch.Tensor]:
        """The tile's kept kernels {(depth, name): block} on the CPU, saved if ``out``."""
        r, c = corner
        rows, cols = slice(r, r + self.tile), slice(c, c + self.tile)
        diagonal = self.x2 is None and r == c
        found = self.arch._kernels(
            self.x1[rows], None if diagonal else (self.x1 if self.x2 is None else self.x2)[cols],
            self.depths, max_memory=self.max_memory, progress=False, backend=self.backend,
            by_layer=self.by_layer,
        )
        block = {(d, name): getattr(k, name).cpu() for d, k in found.items()
                 for name in self.names}
        if self.folder is not None:
            save(block, self.path(corner))
        return block


def _tiles(
    arch: _Architecture, x1: object, x2: object, depths: Iterable[int] | None,
    out: str | os.PathLike[str] | None, tile: int, backend: Backend, max_memory: int,
    kernel: Which, by_layer: bool,
) -> _Tiles:
    """The checked arguments of ``kernel_matrix`` / ``kernel_tiles``, ``out`` claimed."""
    x1, x2 = check_inputs(x1, x2, arch._rank, arch._layout)
    chosen = check_depths(arch.depth if depths is None else depths, arch.min_depth, arch.depth)
    check_int("tile", tile, 1, " (rows and columns per tile)")
    if kernel not in WHICH:
        raise ValueError(f"kernel must be one of {WHICH}; got {kernel!r}")
    check_bool("by_layer", by_layer)
    if by_layer and kernel == "nngp":
        raise ValueError("by_layer=True splits the NTK by layer; kernel='nngp' keeps no NTK "
                         "(use kernel='ntk' or 'both')")
    folder = None if out is None else Path(out)
    if folder is not None:
        claim(folder, _manifest(arch, x1, x2, chosen, tile, kernel, by_layer))
    names = ("ntk", "nngp") if kernel == "both" else (kernel,)
    return _Tiles(arch, x1, x2, chosen, names, folder, tile, backend, max_memory, by_layer)


def _check_fused(tiles: _Tiles) -> None:
    """Before tiles are computed with the fused kernel: the first (up to) two images of
    each side against the float64 torch reference on the same device, every depth, both
    kernels; a RuntimeError past ``FUSED_TOLERANCE``, rather than hours of wrong tiles (a
    new GPU, driver or Triton can break a kernel that compiles).  About the cost of four
    pairs."""
    with warnings.catch_warnings():  # a fallback warns when the tiles are computed
        warnings.simplefilter("ignore")
        if not tiles.arch._use_fused(tiles.x1, tiles.backend, tiles.by_layer):
            return
    a = tiles.x1[:2]
    b = None if tiles.x2 is None else tiles.x2[:2]
    got = tiles.arch._kernels(a, b, tiles.depths, backend=tiles.backend)
    want = tiles.arch._kernels(a.double(), None if b is None else b.double(), tiles.depths,
                               backend="torch")
    for d in sorted(tiles.depths):
        for name in ("ntk", "nngp"):
            w = getattr(want[d], name)
            scale = float(w.abs().max())
            error = float((getattr(got[d], name).double() - w).abs().max()) / scale if scale \
                else 0.0
            if not error <= FUSED_TOLERANCE:  # NaN too
                raise RuntimeError(
                    f"the fused kernel disagrees with the float64 torch reference on the "
                    f"first images of these inputs ({name} at depth {d}: relative error "
                    f"{error:.3g} > {FUSED_TOLERANCE:g}); no tile was computed with it. "
                    "backend='torch' computes with the reference")


def _share(tiles: _Tiles, shard: Shard) -> list[tuple[int, int]]:
    """The tiles of ``shard``: the largest tile first to the share with the fewest pairs so
    far (ties to the lowest index), so shares differ by at most one tile's pairs, and every
    process given the same sizes and count draws the same shares."""
    index, count = shard
    load = [0] * count
    mine = []
    for corner in sorted(tiles.corners(), key=lambda t: -tiles.pairs(t)):
        lightest = min(range(count), key=lambda i: (load[i], i))
        load[lightest] += tiles.pairs(corner)
        if lightest == index:
            mine.append(corner)
    return sorted(mine)


def _check_shard(shard: object) -> Shard:
    if not (isinstance(shard, tuple) and len(shard) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in shard)
            and 0 <= shard[0] < shard[1]):
        raise ValueError(f"shard must be a tuple (index, count) of ints with "
                         f"0 <= index < count; got {shard!r}")
    return shard


@overload
def kernel_matrix(
    arch: _Architecture, x1: torch.Tensor, x2: torch.Tensor | None = None, *,
    depths: Iterable[int] | None = None, out: str | os.PathLike[str] | None = None,
    tile: int = DEFAULT_TILE, progress: bool = True, backend: Backend = "auto",
    max_memory: int = DEFAULT_MAX_MEMORY, kernel: Literal["both"] = "both",
    by_layer: bool = False,
) -> dict[int, Kernels]: ...


@overload
def kernel_matrix(
    arch: _Architecture, x1: torch.Tensor, x2: torch.Tensor | None = None, *,
    depths: Iterable[int] | None = None, out: str | os.PathLike[str] | None = None,
    tile: int = DEFAULT_TILE, progress: bool = True, backend: Backend = "auto",
    max_memory: int = DEFAULT_MAX_MEMORY, kernel: Literal["ntk", "nngp"],
    by_layer: bool = False,
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
    by_layer: bool = False,
) -> dict[int, Kernels] | dict[int, torch.Tensor]:
    """{depth: Kernels(ntk, nngp)}: (n1, n2) matrices of ``arch`` (a Gram matrix if
    ``x2`` is None), computed ``tile`` x ``tile`` pairs at a time; with ``kernel="ntk"``
    (or ``"nngp"``) only that one is kept, as {depth: matrix}, in half the memory.

    ``depths`` defaults to ``(arch.depth,)``; all are read out of one pass per tile.
    With ``out``, every finished tile is saved there and a re-run resumes; without it,
    nothing touches the disk.  The matrices are assembled on the CPU in the inputs' dtype,
    so n1 * n2 * len(depths) entries per kept kernel must fit in memory.  ``progress`` shows
    pairs done, pairs/s and ETA; ``backend`` and ``max_memory`` are as in ``arch.ntk``.
    Before the fused GPU kernel computes any tile, its kernels of the first two images of
    each side are checked against the float64 torch reference (a RuntimeError past
    ``FUSED_TOLERANCE``).  To split the work between processes, see ``kernel_tiles``.
    ``by_layer=True`` keeps each depth d's NTK as its weight layers' terms, (d, n1, n2)
    as ``arch.ntk(..., by_layer=True)`` gives them (d times the memory, on disk too); it
    computes with the torch reference, never the fused kernel.
    """
    tiles = _tiles(arch, x1, x2, depths, out, tile, backend, max_memory, kernel, by_layer)
    n1, n2 = tiles.sizes
    gram = tiles.x2 is None
    matrices = {(d, name): torch.zeros(*((d,) if by_layer and name == "ntk" else ()), n1, n2,
                                       dtype=tiles.x1.dtype)
                for d in sorted(tiles.depths) for name in tiles.names}
    todo = {t for t in tiles.corners() if not tiles.saved(t)}
    if todo:
        _check_fused(tiles)
    with Progress(sum(tiles.pairs(t) for t in todo), "kernel pairs", enabled=progress) as bar:
        for corner in tiles.corners():
            if corner in todo:
                block = tiles.compute(corner)
                bar.advance(tiles.pairs(corner))
            else:
                block = tiles.load(corner)
            rows, cols = (slice(v, v + tile) for v in corner)
            for key, k in block.items():
                matrices[key][..., rows, cols] = k
                if gram and corner[0] != corner[1]:
                    matrices[key][..., cols, rows] = k.mT
    if kernel == "both":
        return {d: Kernels(matrices[d, "ntk"], matrices[d, "nngp"]) for d in sorted(tiles.depths)}
    return {d: matrices[d, kernel] for d in sorted(tiles.depths)}


def kernel_tiles(
    arch: _Architecture,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    out: str | os.PathLike[str],
    shard: Shard = (0, 1),
    depths: Iterable[int] | None = None,
    tile: int = DEFAULT_TILE,
    progress: bool = True,
    backend: Backend = "auto",
    max_memory: int = DEFAULT_MAX_MEMORY,
    kernel: Which = "both",
    by_layer: bool = False,
) -> int:
    """Compute and save in ``out`` the tiles of ``shard`` = (index, count) of the matrix that
    ``kernel_matrix`` with the same arguments computes, without assembling it; returns how
    many tiles this call computed (those already in ``out`` are skipped, so it resumes).

    Run once per index, with the same inputs and ``out``, by ``count`` processes (a GPU
    each, ``CUDA_VISIBLE_DEVICES``, or machines whose ``out`` folders are then copied into
    one: tiles are named by their position), then ``kernel_matrix(..., out=out)`` loads
    them all.  Shares are balanced by pairs (a Gram's diagonal tiles count half).
    """
    index, count = _check_shard(shard)
    tiles = _tiles(arch, x1, x2, depths, out, tile, backend, max_memory, kernel, by_layer)
    todo = [t for t in _share(tiles, (index, count)) if not tiles.saved(t)]
    if todo:
        _check_fused(tiles)
    unit = f"kernel pairs, shard {index} of {count}"
    with Progress(sum(tiles.pairs(t) for t in todo), unit, enabled=progress) as bar:
        for corner in todo:
            tiles.compute(corner)
            bar.advance(tiles.pairs(corner))
    return len(todo)
