"""The fused CNTK kernel in Triton: one program carries one displacement slice of one image
pair through every layer, with the NNGP (S) and NTK (T) fields in registers throughout.

Why slices.  The patch sum moves both positions of an entry (i, j, i', j') together, so the
displacement (i' - i, j' - j) never changes: the (PQ)^2 field splits into independent slices
of fixed displacement.  Packing displacement k with k - P (i' = (i + k) mod P) makes every
slice a full P x Q grid; the two displacements it holds are the rows i + k < P and the rows
i + k >= P, and zero padding means no patch sum may mix them.  Flatten needs only the
displacement-0 slice (its trace); GAP needs all P Q slices (the sum of every entry).

The patch sum of a slice is A X B with banded 0/1 matrices A (rows) and B (columns) that
encode the radius, the image border and the boundary between the two packed displacements,
so it runs on the tensor cores.  A tensor-core float32 product rounds its operands to tf32
(11 significant bits); splitting X = hi + lo, with hi the top 11 bits and lo the rest,
gives A X = A hi + A lo with every product exact (A is 0/1) and only lo's last bits lost,
~2^-21 relative per patch sum instead of 2^-11.

Per-image stds sqrt(Sigma^(h)(x, x)) come in from the torch reference (``image_stds``).
"""

from __future__ import annotations

import triton
import triton.language as tl

# asin(t) = t + t^3 p(t^2) on [0, 1/2]: least-squares fit of p (degree 4, Chebyshev nodes,
# weighted by t^2); with the half-angle reduction below, arccos is within 3e-7 (about one
# ulp of pi) of float64 arccos over all of [-1, 1] in float32 arithmetic.
_P0 = tl.constexpr(0.16666753590106964)
_P1 = tl.constexpr(0.07495298236608505)
_P2 = tl.constexpr(0.04546918720006943)
_P3 = tl.constexpr(0.024188648909330368)
_P4 = tl.constexpr(0.04214736446738243)
_PI = tl.constexpr(3.141592653589793)
_HALF_PI = tl.constexpr(1.5707963267948966)
_TF32_MASK = tl.constexpr(-8192)  # 0xFFFFE000: keeps sign, exponent and 10 mantissa bits

@triton.jit
def relu_angle(rho):
    """theta = arccos(-rho) = pi - arccos(rho) for rho in [-1, 1]."""
    a = tl.abs(rho)
    small = a <= 0.5
    z = tl.where(small, a * a, (1.0 - a) * 0.5)  # arccos(a) = 2 asin(sqrt((1 - a) / 2))
    s = tl.where(small, a, tl.sqrt(z))
    p = (((_P4 * z + _P3) * z + _P2) * z + _P1) * z + _P0
    asin = s + s * z * p
    acos_a = tl.where(small, _HALF_PI - asin, 2.0 * asin)  # arccos(|rho|)
    return tl.where(rho >= 0, _PI - acos_a, acos_a)


@triton.jit
def _band(k, n, RADIUS: tl.constexpr, BLOCK: tl.constexpr):
    """(BLOCK, BLOCK) 0/1 matrix of one axis' patch sum on a slice packed with shift k."""
    r1 = tl.arange(0, BLOCK)[:, None]
    r2 = tl.arange(0, BLOCK)[None, :]
    near = (r1 - r2 <= RADIUS) & (r2 - r1 <= RADIUS) & (r1 < n) & (r2 < n)
    same_displacement = (r1 + k < n) == (r2 + k < n)
    return (near & same_displacement).to(tl.float32)


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr, SPLIT_LEFT: tl.constexpr):
    """a @ b in float32 where the operand that is not split is an exact 0/1 band matrix."""
    if PRECISION == 0:
        return tl.dot(a, b, input_precision="ieee")
    elif PRECISION == 1:
        return tl.dot(a, b, input_precision="tf32")
    else:
        x = a if SPLIT_LEFT else b
        hi = (x.to(tl.int32, bitcast=True) & _TF32_MASK).to(tl.float32, bitcast=True)
        lo = x - hi
        if SPLIT_LEFT:
            out = tl.dot(hi, b, input_precision="tf32")
            return tl.dot(lo, b, out, input_precision="tf32")
        else:
            out = tl.dot(a, hi, input_precision="tf32")
            return tl.dot(a, lo, out, input_precision="tf32")


@triton.jit
def _patch_sum(x, rows, cols, PRECISION: tl.constexpr):
    """rows @ x @ cols: the patch sum of one packed slice (both band matrices symmetric)."""
    return _dot(rows, _dot(x, cols, PRECISION, True), PRECISION, False)


@triton.jit
def cntk_slices(
    x1_ptr, x2_ptr, std1_ptr, std2_ptr, rows_ptr, cols_ptr, out_ptr,
    n1, n2, P, Q, slices_q,
    scale, tiny, snap,
    CHANNELS: tl.constexpr, RADIUS: tl.constexpr, DEEPEST: tl.constexpr, DEPTH_MASK: tl.constexpr,
    FIX_FIRST_LAST: tl.constexpr, SYMMETRIC: tl.constexpr, PRECISION: tl.constexpr,
    BP: tl.constexpr, BQ: tl.constexpr,
):
    """Readouts of one (pair, slice): out[pair, slice, 0 / 1, depth] = sum over the slice of
    the NTK / NNGP field whose readout gives that depth, for every depth in DEPTH_MASK.

    x1 (n1, C, P, Q), x2 (n2, C, P, Q); std1 (DEEPEST - 1, n1, P, Q), std2 likewise;
    rows / cols: the pair's image indices; grid (pairs, slices).
    """
    pair = tl.program_id(0)
    sl = tl.program_id(1)
    a = tl.load(rows_ptr + pair).to(tl.int64)
    b = tl.load(cols_ptr + pair).to(tl.int64)
    ki = sl // slices_q
    kj = sl % slices_q

    i = tl.arange(0, BP)[:, None]
    j = tl.arange(0, BQ)[None, :]
    inside = (i < P) & (j < Q)
    i2 = tl.where(i + ki < P, i + ki, i + ki - P)  # partner position (i', j')
    j2 = tl.where(j + kj < Q, j + kj, j + kj - Q)
    here = i * Q + j
    there = i2 * Q + j2
    plane = P * Q
    rows = _band(ki, P, RADIUS, BP)
    cols = _band(kj, Q, RADIUS, BQ)

    # Sigma^(0): patch sum of sum_c x_c(i, j) z_c(i', j'); Theta^(0) = Sigma^(0) or 0.
    raw = tl.zeros((BP, BQ), tl.float32)
    for c in tl.static_range(CHANNELS):
        u = tl.load(x1_ptr + (a * CHANNELS + c) * plane + here, mask=inside, other=0.0)
        v = tl.load(x2_ptr + (b * CHANNELS + c) * plane + there, mask=inside, other=0.0)
        raw += u * v
    sigma = _patch_sum(raw, rows, cols, PRECISION)
    if FIX_FIRST_LAST:
        theta = tl.zeros((BP, BQ), tl.float32)
    else:
        theta = sigma
    # A Gram's own pairs at displacement 0 have rho = 1 exactly; say so rather than rely on
    # the fused sums matching the per-image stds bit for bit (arccos' slope is infinite there).
    self_slice = (a == b) & (sl == 0) & SYMMETRIC

    out = out_ptr + (pair.to(tl.int64) * tl.num_programs(1) + sl) * 2 * (DEEPEST + 1)
    for h in range(1, DEEPEST):
        s1 = tl.load(std1_ptr + ((h - 1) * n1 + a) * plane + here, mask=inside, other=0.0)
        s2 = tl.load(std2_ptr + ((h - 1) * n2 + b) * plane + there, mask=inside, other=0.0)
        norm = s1 * s2
        rho = sigma / tl.maximum(norm, tiny)
        rho = tl.where(tl.abs(rho) >= 1.0 - snap, tl.where(rho > 0, 1.0, -1.0), rho)
        rho = tl.where(self_slice & (norm > 0), 1.0, rho)
        angle = relu_angle(rho)
        # sqrt(1 - rho^2), factored so that it keeps its digits near rho = +-1
        sine = tl.sqrt(tl.maximum((1.0 - rho) * (1.0 + rho), 0.0))
        k = (sine + angle * rho) * norm * (scale / (2 * _PI))
        propagated = angle * (scale / (2 * _PI)) * theta  # K-dot^(h) * Theta^(h-1)
        if (DEPTH_MASK >> (h + 1)) & 1:
            if FIX_FIRST_LAST:
                top = propagated
            else:
                top = propagated + k
            tl.store(out + h + 1, tl.sum(tl.sum(top, 1), 0))
            tl.store(out + DEEPEST + 1 + h + 1, tl.sum(tl.sum(k, 1), 0))
        if h + 1 < DEEPEST:
            sigma = _patch_sum(k, rows, cols, PRECISION)
            theta = _patch_sum(propagated + k, rows, cols, PRECISION)
