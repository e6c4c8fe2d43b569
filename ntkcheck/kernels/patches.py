"""The convolution's layer rule: the patch sum tr([T]_{D_ij,i'j'}) of Sec. 4.

The patch sum moves both positions of a pair by the same offset (a, b), |a|, |b| <= r,
with zero "same" padding: out[i, j, i', j'] = sum_{a,b} T[i+a, j+b, i'+a, j'+b], where an
index outside the image contributes zero.  It factors into one shift-sum per spatial axis.
"""

from __future__ import annotations

import torch

Axes = tuple[tuple[int, ...], ...]
"""Groups of tensor dims; the dims of one group shift together (one spatial axis)."""


def _along(t: torch.Tensor, dims: tuple[int, ...], piece: slice) -> tuple[slice, ...]:
    index = [slice(None)] * t.dim()
    for d in dims:
        index[d] = piece
    return tuple(index)


def patch_sum(t: torch.Tensor, axes: Axes, radius: int) -> torch.Tensor:
    """Sum of ``t`` over the (2 radius + 1)^len(axes) joint shifts, zero outside the image.

    ``axes`` = ((-2,), (-1,)) is a plain box filter over an image-shaped field (the
    same-position entries); ((-4, -2), (-3, -1)) shifts (i, i') and (j, j') of a
    (..., P, Q, P, Q) field together, which is the paper's D_{ij,i'j'} trace.
    """
    if radius == 0:
        return t
    for dims in axes:
        out = t.clone()
        for a in range(1, radius + 1):
            out[_along(t, dims, slice(a, None))] += t[_along(t, dims, slice(None, -a))]
            out[_along(t, dims, slice(None, -a))] += t[_along(t, dims, slice(a, None))]
        t = out
    return t
