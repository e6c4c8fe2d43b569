"""The fused CNTK kernel in Triton: one program carries one displacement slice of one image
pair through every layer, with the NNGP (S) and NTK (T) fields in registers throughout.

Why slices.  The patch sum moves both positions of an entry (i, j, i', j') together, so the
displacement (i' - i, j' - j) never changes: the (PQ)^2 field splits into independent slices
of fixed displacement.  Packing displacement k with k - P (i' = (i + k) mod P) makes every
slice a full P x Q grid; the two displacements it holds are the rows i + k < P and the rows
i + k >= P, and zero padding means no patch sum may mix them.  Flatten needs only the
displacement-0 slice (its trace); GAP needs all P Q slices (the sum of every entry).

The patch sum of a slice is R X C with banded 0/1 matrices R (rows) and C (columns) that
encode the radius, the image border and the boundary between the two packed displacements,
so it runs on the tensor cores.  A tensor-core float32 product rounds its operands to tf32
(11 significant bits); splitting X = hi + lo, with hi the top 11 bits and lo the rest,
gives X C = hi C + lo C with every product exact (C is 0/1) and only lo's last bits lost,
~2^-21 relative per patch sum instead of 2^-11.

Data movement is what limits this kernel, so each patch sum is arranged to move little:
the field always enters a product as its left operand, where an mma accumulator already
lies in the right registers once its columns are relabelled (``_as_left``, with the band's
rows permuted to match); the second product needs the transpose, one trip through shared
memory, and returns the patch sum transposed.  So the layers alternate between fields laid
out (i, j) and (j, i), with R and C swapping roles.

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
    """(BLOCK, BLOCK) 0/1 matrix of one axis' patch sum on a slice packed with shift k, its
    rows in the order in which ``_as_left`` puts the columns of a field."""
    r1 = tl.arange(0, BLOCK)[:, None]
    r1 = (r1 // 8) * 8 + (r1 % 4) * 2 + (r1 % 8) // 4
    r2 = tl.arange(0, BLOCK)[None, :]
    near = (r1 - r2 <= RADIUS) & (r2 - r1 <= RADIUS) & (r1 < n) & (r2 < n)
    same_displacement = (r1 + k < n) == (r2 + k < n)
    return (near & same_displacement).to(tl.float32)


@triton.jit
def _as_left(x):
    """x with its columns reordered, 8b + 2t + u -> 8b + 4u + t: an mma accumulator holds
    columns 2t, 2t + 1 of each block of 8 in thread t of a quad, where tl.dot's tf32 left
    operand wants columns t, t + 4, so this relabelling lets the accumulator be used as it
    lies (no data moves; the band's rows carry the same permutation, so the product is
    unchanged).  Elsewhere (the interpreter, the CUDA-core path) it is just a permutation."""
    rows: tl.constexpr = x.shape[0]
    cols: tl.constexpr = x.shape[1]
    x = tl.reshape(x, (rows, cols // 8, 4, 2))
    return tl.reshape(tl.permute(x, (0, 1, 3, 2)), (rows, cols))


@triton.jit
def _split(x):
    """x = hi + lo with hi exact in tf32."""
    hi = (x.to(tl.int32, bitcast=True) & _TF32_MASK).to(tl.float32, bitcast=True)
    return hi, x - hi


@triton.jit
def _dot(x, band, PRECISION: tl.constexpr):
    """x @ band in float32 for an exact 0/1 band (see the module docstring)."""
    if PRECISION == 0:
        return tl.dot(x, band, input_precision="ieee")
    elif PRECISION == 1:
        return tl.dot(x, band, input_precision="tf32")
    else:
        hi, lo = _split(x)
        return tl.dot(lo, band, tl.dot(hi, band, input_precision="tf32"), input_precision="tf32")


@triton.jit
def _patch_sum_transposed(x, cols, rows, PRECISION: tl.constexpr):
    """(rows @ x @ cols)^T for symmetric bands (``_band``).  The first product takes the
    accumulator x as it lies; the second needs its transpose, the one trip through shared
    memory; returning the result transposed saves the trip back."""
    y = _dot(_as_left(x), cols, PRECISION)
    return _dot(_as_left(tl.trans(y)), rows, PRECISION)


@triton.jit
def _positions(ki, kj, P: tl.constexpr, Q: tl.constexpr, BP: tl.constexpr, BQ: tl.constexpr):
    """Flat indices of each (i, j) of a slice and of its partner (i', j'), and which entries
    lie inside the image, as (BP, BQ) tensors."""
    i = tl.arange(0, BP)[:, None]
    j = tl.arange(0, BQ)[None, :]
    i2 = tl.where(i + ki < P, i + ki, i + ki - P)
    j2 = tl.where(j + kj < Q, j + kj, j + kj - Q)
    return i * Q + j, i2 * Q + j2, (i < P) & (j < Q)


@triton.jit
def _activation(
    sigma, theta, h, a, b, n1, n2, std1_ptr, std2_ptr, plane, here, there, inside,
    self_slice, out, scale, tiny, snap,
    DEEPEST: tl.constexpr, DEPTH_MASK: tl.constexpr, FIX_FIRST_LAST: tl.constexpr,
):
    """K^(h) and K-dot^(h) * Theta^(h-1) of one slice from Sigma^(h-1) and Theta^(h-1),
    storing the readouts of depth h + 1 if it is requested."""
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
    return k, propagated


@triton.jit
def _layer(
    sigma, theta, h, first, second, a, b, n1, n2, std1_ptr, std2_ptr, plane, here, there,
    inside, self_slice, out, scale, tiny, snap, PRECISION: tl.constexpr,
    DEEPEST: tl.constexpr, DEPTH_MASK: tl.constexpr, FIX_FIRST_LAST: tl.constexpr,
):
    """Layer h, from (Sigma^(h-1), Theta^(h-1)) to (Sigma^(h), Theta^(h)) transposed."""
    k, propagated = _activation(
        sigma, theta, h, a, b, n1, n2, std1_ptr, std2_ptr, plane, here, there, inside,
        self_slice, out, scale, tiny, snap, DEEPEST, DEPTH_MASK, FIX_FIRST_LAST)
    return (_patch_sum_transposed(k, first, second, PRECISION),
            _patch_sum_transposed(propagated + k, first, second, PRECISION))


@triton.jit
def cntk_slices(
    x1_ptr, x2_ptr, std1_ptr, std2_ptr, rows_ptr, cols_ptr, out_ptr,
    n1, n2,
    scale, tiny, snap,
    P: tl.constexpr, Q: tl.constexpr, SLICES_Q: tl.constexpr, CHANNELS: tl.constexpr,
    RADIUS: tl.constexpr, DEEPEST: tl.constexpr, DEPTH_MASK: tl.constexpr,
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
    ki = sl // SLICES_Q
    kj = sl % SLICES_Q
    plane = P * Q
    # Each patch sum returns its field transposed, so layers alternate between a natural
    # (i, j) and a flipped (j, i) layout, with the bands of the two axes swapping roles.
    rows = _band(ki, P, RADIUS, BP)
    cols = _band(kj, Q, RADIUS, BQ)
    here, there, inside = _positions(ki, kj, P, Q, BP, BQ)
    here_t, there_t, inside_t = tl.trans(here), tl.trans(there), tl.trans(inside)  # (j, i)

    # Sigma^(0): patch sum of sum_c x_c(i, j) z_c(i', j'), summed flipped so that it comes
    # out natural; Theta^(0) = Sigma^(0) or 0.
    raw = tl.zeros((BQ, BP), tl.float32)
    for c in tl.static_range(CHANNELS):
        u = tl.load(x1_ptr + (a * CHANNELS + c) * plane + here_t, mask=inside_t, other=0.0)
        v = tl.load(x2_ptr + (b * CHANNELS + c) * plane + there_t, mask=inside_t, other=0.0)
        raw += u * v
    sigma = _patch_sum_transposed(raw, rows, cols, PRECISION)
    if FIX_FIRST_LAST:
        theta = tl.zeros((BP, BQ), tl.float32)
    else:
        theta = sigma
    # A Gram's own pairs at displacement 0 have rho = 1 exactly; say so rather than rely on
    # the fused sums matching the per-image stds bit for bit (arccos' slope is infinite there).
    self_slice = (a == b) & (sl == 0) & SYMMETRIC

    out = out_ptr + (pair.to(tl.int64) * tl.num_programs(1) + sl) * 2 * (DEEPEST + 1)
    # Layers h = 1 .. DEEPEST - 1; all but the last end in a patch sum, two per iteration
    # so that the loop carries natural fields.
    for h in range(1, DEEPEST - 2, 2):
        sigma_t, theta_t = _layer(
            sigma, theta, h, cols, rows, a, b, n1, n2, std1_ptr, std2_ptr, plane, here, there,
            inside, self_slice, out, scale, tiny, snap, PRECISION, DEEPEST, DEPTH_MASK,
            FIX_FIRST_LAST)
        sigma, theta = _layer(
            sigma_t, theta_t, h + 1, rows, cols, a, b, n1, n2, std1_ptr, std2_ptr, plane,
            here_t, there_t, inside_t, self_slice, out, scale, tiny, snap, PRECISION, DEEPEST,
            DEPTH_MASK, FIX_FIRST_LAST)
    if DEEPEST % 2 == 0:  # the last layer finds natural fields
        _activation(sigma, theta, DEEPEST - 1, a, b, n1, n2, std1_ptr, std2_ptr, plane, here,
                    there, inside, self_slice, out, scale, tiny, snap, DEEPEST, DEPTH_MASK,
                    FIX_FIRST_LAST)
    else:  # one more patch-summing layer, then the last one on flipped fields
        sigma_t, theta_t = _layer(
            sigma, theta, DEEPEST - 2, cols, rows, a, b, n1, n2, std1_ptr, std2_ptr, plane,
            here, there, inside, self_slice, out, scale, tiny, snap, PRECISION, DEEPEST,
            DEPTH_MASK, FIX_FIRST_LAST)
        _activation(sigma_t, theta_t, DEEPEST - 1, a, b, n1, n2, std1_ptr, std2_ptr, plane,
                    here_t, there_t, inside_t, self_slice, out, scale, tiny, snap, DEEPEST,
                    DEPTH_MASK, FIX_FIRST_LAST)
