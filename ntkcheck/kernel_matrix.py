"""Large kernel matrices in tiles on disk: resumable, and the unit a multi-GPU run splits.

``kernel_matrix(arch, X1, X2, depths=..., out=DIR)`` computes the NTK and NNGP of every
requested depth tile by tile (only the upper-triangle tiles of a Gram matrix), writes each
finished tile to ``DIR`` at once (atomically), and on a re-run with the same ``DIR`` loads
the tiles already there instead of computing them.  ``DIR/manifest.json`` records what is
being computed (architecture, depths, sizes, tile, dtype and a fingerprint of the inputs),
so a folder is never resumed with different inputs or settings.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch

from ._checks import check_depths, check_inputs, check_int
from ._progress import Progress
from .architectures import DEFAULT_MAX_MEMORY, Backend, _Architecture
from .kernels.recursion import Kernels, tile_pairs

DEFAULT_TILE = 256
"""Rows (and columns) of a tile: 65,536 pairs, a few seconds of CNTK-GAP on an H100."""


def _fingerprint(x: torch.Tensor) -> str:
    return hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def _manifest(arch: _Architecture, x1: torch.Tensor, x2: torch.Tensor | None,
              depths: frozenset[int], tile: int) -> dict[str, object]:
    return {
        "architecture": repr(arch), "depths": sorted(depths), "tile": tile,
        "n1": x1.shape[0], "n2": x1.shape[0] if x2 is None else x2.shape[0],
        "gram": x2 is None, "dtype": str(x1.dtype).removeprefix("torch."),
        "x1": _fingerprint(x1), "x2": None if x2 is None else _fingerprint(x2),
    }


def _claim(out: Path, manifest: dict[str, object]) -> None:
    """Create ``out`` for this computation, or check that it already holds this one."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "manifest.json"
    if path.exists():
        found = json.loads(path.read_text())
        differ = [k for k in manifest if found.get(k) != manifest[k]]
        if differ:
            raise ValueError(
                f"out={str(out)!r} holds tiles of a different computation ({', '.join(differ)} "
                "differ); use another folder, or delete this one to start over"
            )
        return
    path.write_text(json.dumps(manifest, indent=1) + "\n")


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
) -> dict[int, Kernels]:
    """{depth: Kernels(ntk, nngp)}: (n1, n2) matrices of ``arch`` (a Gram matrix if
    ``x2`` is None), computed ``tile`` x ``tile`` pairs at a time.

    ``depths`` defaults to ``(arch.depth,)``; all are read out of one pass per tile.
    With ``out``, every finished tile is saved there and a re-run resumes; without it,
    nothing touches the disk.  The matrices are assembled on the CPU in the inputs' dtype,
    so n1 * n2 * len(depths) * 2 entries must fit in memory.  ``progress`` shows pairs done,
    pairs/s and ETA; ``backend`` and ``max_memory`` are as in ``arch.ntk``.
    """
    x1, x2 = check_inputs(x1, x2, arch._rank, arch._layout)
    chosen = check_depths(arch.depth if depths is None else depths, arch.min_depth, arch.depth)
    check_int("tile", tile, 1, " (rows and columns per tile)")
    folder = None if out is None else Path(out)
    if folder is not None:
        _claim(folder, _manifest(arch, x1, x2, chosen, tile))
    gram = x2 is None
    z = x1 if x2 is None else x2
    n1, n2 = x1.shape[0], z.shape[0]
    tiles = [(r, c) for r in range(0, n1, tile) for c in range(r if gram else 0, n2, tile)]

    def pairs(r: int, c: int) -> int:
        return tile_pairs(n1, n2, r, c, tile, tile, gram)

    matrices = {d: Kernels(torch.zeros(n1, n2, dtype=x1.dtype),
                           torch.zeros(n1, n2, dtype=x1.dtype)) for d in sorted(chosen)}
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
                block = {d: Kernels(k.ntk.cpu(), k.nngp.cpu()) for d, k in found.items()}
                if folder is not None:
                    partial = saved[r, c].with_suffix(".partial")
                    torch.save({d: tuple(k) for d, k in block.items()}, partial)
                    os.replace(partial, saved[r, c])  # a tile file is whole or absent
                bar.advance(pairs(r, c))
            else:
                block = {d: Kernels(*k) for d, k in torch.load(saved[r, c]).items()}
            for d, k in block.items():
                matrices[d].ntk[rows, cols] = k.ntk
                matrices[d].nngp[rows, cols] = k.nngp
                if gram and r != c:
                    matrices[d].ntk[cols, rows] = k.ntk.T
                    matrices[d].nngp[cols, rows] = k.nngp.T
    return matrices
