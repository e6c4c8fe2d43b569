"""The fused GPU backend of the CNN kernels: when it applies, and how pairs are launched.

The Triton program (``triton_cntk.py``) runs the whole recursion of one displacement slice
of one image pair on-chip; this module feeds it tiles of pairs, reduces its per-slice
readouts (in float64) into the kernel matrices, and reuses the reference's tiling, so a
Gram matrix computes only pairs on or above its diagonal.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from .recursion import Kernels, image_stds, tiled
from .relu import SNAP_ULPS
from .rules import ConvSamePosition

MAX_SIDE = 64
"""Largest image side of the fused kernel: a slice is held in registers (and tl.dot needs
sides of at least 16, so smaller images are padded to 16)."""

NUM_WARPS = 2
"""Warps per program.  For a 32x32 slice the compiled loop of an earlier version counted 109
instructions per entry and layer at 2 warps, 196 at 4 (dot operands replicated across
warps); 1 spills.  The image sides are compile-time constants (a kernel per image size)."""

NUM_STAGES = 2
"""Software-pipelining depth of the layer loop: the std planes of the next loop turn (two
layers) are fetched into shared memory during this one.  2 needs 20 KB of shared memory
per program, Triton's default 3 needs 36 KB, which, with 168 registers, is at the edge of
the six programs an H100 SM holds; 1 (plain loads, stalls) costs 54 instructions per entry
and layer instead of 51."""

PRECISION = 3
"""Patch-sum precision: 3 = fp16 hi/lo split (default), 2 = tf32 hi/lo split (same error,
twice the tensor-core instructions), 1 = plain tf32 (~1e-3 relative error), 0 = exact
float32 products on the CUDA cores (slow); see ``triton_cntk``."""

PROGRAMS_PER_LAUNCH = 2**18
"""Programs (pair x slice) per launch: enough to fill a GPU many times over."""


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """True under TRITON_INTERPRET=1, where Triton runs kernels on the CPU (slowly)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def unsupported_reason(x: torch.Tensor) -> str | None:
    """Why the fused kernel cannot take these (n, C, H, W) inputs, or None if it can."""
    if not _triton_installed():
        return "triton is not installed (it comes with the CUDA builds of torch)"
    if not (x.is_cuda or interpreting()):
        return (f"the inputs are on {x.device.type}; it runs on CUDA tensors "
                "(or anywhere under TRITON_INTERPRET=1)")
    if x.dtype != torch.float32:
        return f"it computes in float32; the inputs are {x.dtype}"
    if max(x.shape[-2:]) > MAX_SIDE:
        return (f"images larger than {MAX_SIDE}x{MAX_SIDE} are not supported; "
                f"got {tuple(x.shape[-2:])}")
    return None


def _block(side: int) -> int:
    return max(16, 1 << (side - 1).bit_length())


def _kernel_inputs(
    rules: ConvSamePosition, x: torch.Tensor, activations: int, extended: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x', stds', scales) as ``triton_cntk.cntk_slices`` takes them: each image times the
    power of two ``scales`` that puts its largest std (over positions and layers) in
    [1/2, 1), and its (activations, n, P, Q) stds likewise, computed in float64 and stored
    in float32; with ``extended``, every plane repeated twice along both axes.

    The kernels are bilinear in the two images, so the readouts of a pair come back
    divided by both scales, exactly (powers of two); in between, every field of the
    recursion stays below 2^16, as fp16 products need (its NNGP entries are within the
    product of two stds, Cauchy-Schwarz, and each NTK layer adds at most one NNGP's worth).
    A zero image keeps scale 1."""
    stds = torch.stack(image_stds(rules, x.double(), activations))
    _, exponent = torch.frexp(stds.amax(dim=(0, 2, 3)))  # largest = m 2^e, m in [1/2, 1)
    scales = torch.ldexp(torch.ones_like(exponent, dtype=torch.float64), -exponent)
    stds = (stds * scales[None, :, None, None]).to(torch.float32)
    x = x * scales.to(x.dtype)[:, None, None, None]
    if extended:
        x, stds = x.repeat(1, 1, 2, 2), stds.repeat(1, 1, 2, 2)
    return x.contiguous(), stds.contiguous(), scales


def fused_kernels(
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    depths: frozenset[int],
    *,
    filter_size: int,
    gap: bool,
    fix_first_last: bool,
    max_memory: int,
    progress: bool,
) -> dict[int, Kernels]:
    """CNN NTK and NNGP of every depth in ``depths`` (each >= 2) with the fused kernel.

    Same meaning as ``recursion.kernels``; ``max_memory`` bounds the per-slice readout
    buffer of a launch.
    """
    from . import triton_cntk  # imported here: triton is optional

    rules = ConvSamePosition(filter_size)  # its per-image rule serves both readouts
    deepest = max(depths)
    symmetric = x2 is None
    z = x1 if x2 is None else x2
    x1c, std1, scale1 = _kernel_inputs(rules, x1, deepest - 1, gap)
    zc, std2, scale2 = ((x1c, std1, scale1) if symmetric
                        else _kernel_inputs(rules, z, deepest - 1, gap))
    channels, side_p, side_q = x1.shape[1:]
    slices = side_p * side_q if gap else 1
    mean = float(side_p * side_q) ** 2 if gap else 1.0
    slot_bytes = slices * 2 * (deepest + 1) * 4
    pairs = max(1, min(PROGRAMS_PER_LAUNCH // slices, max_memory // slot_bytes))
    mask = sum(1 << d for d in depths)
    device = x1.device
    eps = torch.finfo(torch.float32).eps

    def tile(rows: slice, cols: slice) -> dict[int, Kernels]:
        a = torch.arange(x1.shape[0], device=device)[rows]
        b = torch.arange(z.shape[0], device=device)[cols]
        aa, bb = torch.meshgrid(a, b, indexing="ij")
        keep = aa <= bb if symmetric else torch.ones_like(aa, dtype=torch.bool)
        ia, ib = aa[keep].to(torch.int32), bb[keep].to(torch.int32)
        buf = torch.empty(ia.numel(), slices, 2, deepest + 1, device=device)
        triton_cntk.cntk_slices[(ia.numel(), slices)](
            x1c, zc, std1, std2, ia, ib, buf,
            x1.shape[0], z.shape[0],
            torch.finfo(torch.float32).tiny, SNAP_ULPS * eps,
            P=side_p, Q=side_q, EXTENDED=gap,
            CHANNELS=channels, RADIUS=rules.radius, SCALE=rules.scale, DEEPEST=deepest,
            DEPTH_MASK=mask, FIX_FIRST_LAST=fix_first_last, SYMMETRIC=symmetric,
            PRECISION=PRECISION, BP=_block(side_p), BQ=_block(side_q), num_warps=NUM_WARPS,
            num_stages=NUM_STAGES,
        )
        unscale = mean * scale1[ia.long()] * scale2[ib.long()]
        sums = buf.sum(1, dtype=torch.float64) / unscale[:, None, None]  # (pairs, 2, deepest+1)
        found = {}
        for d in depths:
            ntk = x1.new_zeros(aa.shape)
            nngp = x1.new_zeros(aa.shape)
            ntk[keep] = sums[:, 0, d].to(x1.dtype)
            nngp[keep] = sums[:, 1, d].to(x1.dtype)
            found[d] = Kernels(ntk, nngp)
        return found

    return tiled(x1, x2, depths, pairs, tile, progress)

