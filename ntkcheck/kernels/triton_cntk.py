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
so it runs on the tensor cores.  Their operands have 11 significant bits (fp16, or tf32 for
float32 operands); splitting X = hi + lo, with hi the top 11 bits and lo the rest, gives
X C = hi C + lo C with every product exact (C is 0/1) and only lo's last bits lost, ~2^-22
relative per patch sum instead of 2^-11.  fp16 (``PRECISION`` 3) does it in half the
tensor-core instructions of tf32 (2), with its transposes through ldmatrix / stmatrix, but
only within its range: the caller scales each image by a power of two so that its largest
std is below 1 (``fused._kernel_inputs``), which keeps every field below 2^16 and puts
fp16's absolute floor (2^-25) far below the entries that matter.

Data movement is what limits this kernel, so each patch sum R X C is arranged to move
little.  The first product X C takes the field as its left operand, where an mma
accumulator already lies in the right registers (for tf32 once its columns are relabelled:
``_as_left``, with the band's rows permuted to match).  The second, R (X C), takes the band
on the left, held in registers across all layers, and the field on the right: that operand
is the one trip through shared memory, and the result comes out in the field's own (i, j)
layout.  So every layer runs the same code: the layer loop's body is one layer (~740
instructions on sm_90), which fits in 96 registers with no spill in the loop, against 1,480
instructions and 128 registers for an earlier arrangement that returned each patch sum
transposed and alternated between (i, j) and (j, i) layers.

Per-image stds sqrt(Sigma^(h)(x, x)) come in from the torch reference (``image_stds``).
For GAP they and the images come as planes repeated twice along each axis, so that a
slice's partner positions (i + ki) mod P, (j + kj) mod Q sit one fixed shift away.  Each
layer reads its two std windows either by TMA (tensor descriptors, sm_90: one copy into
shared memory per window; a window must start on 16 bytes, so std2 comes in four copies
shifted by 0..3 columns) or through per-entry pointers (asynchronous copies).
"""

from __future__ import annotations

import triton
import triton.language as tl

# arccos(a) = sqrt(1 - a) p(a) on [0, 1] (the form of Abramowitz & Stegun 4.4.46): p of
# degree 7 fitted here (Chebyshev nodes, reweighted toward the smallest largest error of
# arccos): within 1.2e-8 of arccos in exact arithmetic, so float32 rounding is what is left.
_ACOS = tl.constexpr((1.5707963705062866, -0.21459989249706268, 0.08899926394224167,
                      -0.050312772393226624, 0.03133543208241463, -0.01780892163515091,
                      0.007245398126542568, -0.0014414644101634622))
_PI = tl.constexpr(3.141592653589793)
_TF32_MASK = tl.constexpr(-8192)  # 0xFFFFE000: keeps sign, exponent and 10 mantissa bits
_SIGN_BIT = tl.constexpr(-2147483648)  # 0x80000000


@triton.jit
def _scaled_angle(rho, w, FACTOR: tl.constexpr, SIGNED: tl.constexpr):
    """FACTOR * theta for theta = arccos(-rho) = pi - arccos|rho| for rho >= 0, from rho in
    [-1, 1] and w = 1 - |rho| (FACTOR folds into the coefficients).  SIGNED: rho may be
    negative, theta = pi/2 + sign(rho) (pi/2 - arccos|rho|), a sign flip and an addition
    more (cheaper than a select on the sign)."""
    a = tl.abs(rho)
    p = _ACOS[7] * FACTOR
    for n in tl.static_range(6, -1, -1):
        p = p * a + _ACOS[n] * FACTOR
    if SIGNED:
        half = FACTOR * _PI / 2
        t = half - tl.sqrt(w) * p  # FACTOR (pi/2 - arccos|rho|), >= 0 up to rounding
        flipped = t.to(tl.int32, bitcast=True) ^ (rho.to(tl.int32, bitcast=True) & _SIGN_BIT)
        return half + flipped.to(tl.float32, bitcast=True)
    else:
        return FACTOR * _PI - tl.sqrt(w) * p


@triton.jit
def relu_angle(rho):
    """theta = arccos(-rho) = pi - arccos(rho) for rho in [-1, 1]."""
    return _scaled_angle(rho, 1.0 - tl.abs(rho), 1.0, True)


@triton.jit
def _band(k, n, RADIUS: tl.constexpr, BLOCK: tl.constexpr, PRECISION: tl.constexpr,
          RIGHT: tl.constexpr):
    """(BLOCK, BLOCK) 0/1 matrix of one axis' patch sum on a slice packed with shift k; as
    the RIGHT operand of a field, its rows in the order in which ``_as_left`` puts the
    field's columns."""
    r1 = tl.arange(0, BLOCK)[:, None]
    if PRECISION != 3 and RIGHT:
        r1 = (r1 // 8) * 8 + (r1 % 4) * 2 + (r1 % 8) // 4
    r2 = tl.arange(0, BLOCK)[None, :]
    near = (r1 - r2 <= RADIUS) & (r2 - r1 <= RADIUS) & (r1 < n) & (r2 < n)
    same_displacement = (r1 + k < n) == (r2 + k < n)
    if PRECISION == 3:
        return (near & same_displacement).to(tl.float16)
    else:
        return (near & same_displacement).to(tl.float32)


@triton.jit
def _as_left(x, PRECISION: tl.constexpr):
    """x as the left operand of a product with a ``_band``.  An mma accumulator holds columns
    2t, 2t + 1 of each block of 8 in thread t of a quad.  A 16-bit left operand wants them
    there; tl.dot's tf32 one wants columns t, t + 4, so for 32-bit operands the columns are
    relabelled, 8b + 2t + u -> 8b + 4u + t, which lets the accumulator be used as it lies (no
    data moves; the band's rows carry the same permutation, so the product is unchanged).
    Elsewhere (the interpreter, the CUDA-core path) it is just a permutation."""
    if PRECISION == 3:
        return x
    else:
        rows: tl.constexpr = x.shape[0]
        cols: tl.constexpr = x.shape[1]
        x = tl.reshape(x, (rows, cols // 8, 4, 2))
        return tl.reshape(tl.permute(x, (0, 1, 3, 2)), (rows, cols))


@triton.jit
def _split(x):
    """x = hi + lo with hi exact in tf32 (and in fp16, within its range)."""
    hi = (x.to(tl.int32, bitcast=True) & _TF32_MASK).to(tl.float32, bitcast=True)
    return hi, x - hi


@triton.jit
def _mma(x, band, acc, BAND_LEFT: tl.constexpr, PRECISION: tl.constexpr):
    """x @ band, or band @ x if BAND_LEFT, plus acc (None: nothing), on the tensor cores (on
    the CUDA cores for PRECISION 0)."""
    if BAND_LEFT:
        left, right = band, x
    else:
        left, right = x, band
    if PRECISION == 0:
        return tl.dot(left, right, acc, input_precision="ieee")
    elif PRECISION == 3:
        return tl.dot(left, right, acc)
    else:
        return tl.dot(left, right, acc, input_precision="tf32")


@triton.jit
def _times_band(x, band, BAND_LEFT: tl.constexpr, PRECISION: tl.constexpr):
    """x @ band, or band @ x if BAND_LEFT, in float32 for an exact 0/1 band (see the module
    docstring: x = hi + lo for PRECISION 2 and 3)."""
    if PRECISION < 2:
        return _mma(x, band, None, BAND_LEFT, PRECISION)
    else:
        hi, lo = _split(x)
        if PRECISION == 3:
            hi, lo = hi.to(tl.float16), lo.to(tl.float16)
        return _mma(lo, band, _mma(hi, band, None, BAND_LEFT, PRECISION), BAND_LEFT, PRECISION)


@triton.jit
def _patch_sum(x, rows, cols, PRECISION: tl.constexpr):
    """rows @ x @ cols for symmetric bands (``_band``; cols as a RIGHT operand), in x's
    layout.  The first product takes the accumulator x as it lies; the second holds the
    band on the left and takes its right operand through shared memory."""
    return _times_band(_times_band(_as_left(x, PRECISION), cols, False, PRECISION), rows,
                       True, PRECISION)


@triton.jit
def _load_field(ptr, P: tl.constexpr, Q: tl.constexpr, BP: tl.constexpr, BQ: tl.constexpr,
                ROW: tl.constexpr):
    """The (i, j) plane at ptr (row length ROW) as a (BP, BQ) field, zero outside the
    image."""
    i = tl.arange(0, BP)[:, None]
    j = tl.arange(0, BQ)[None, :]
    if BP == P and BQ == Q:
        return tl.load(ptr + i * ROW + j)
    else:
        return tl.load(ptr + i * ROW + j, mask=(i < P) & (j < Q), other=0.0)


@triton.jit
def _load_std(at, layer, P: tl.constexpr, Q: tl.constexpr, BP: tl.constexpr,
              BQ: tl.constexpr, ROW: tl.constexpr, TMA: tl.constexpr):
    """One image's std field of one layer at a slice's positions, as ``_load_field``.  TMA:
    at = (descriptor, copy, image, row, col), one tensor-memory-access copy of the window
    into shared memory (no per-entry addresses); else at = (layer-0 pointer, layer stride)."""
    if TMA:
        desc, copy, image, row, col = at
        v = tl.reshape(desc.load([copy, image, layer, row, col]), (BP, BQ))
        if BP != P or BQ != Q:
            i = tl.arange(0, BP)[:, None]
            j = tl.arange(0, BQ)[None, :]
            v = tl.where((i < P) & (j < Q), v, 0.0)
        return v
    else:
        ptr, stride = at
        return _load_field(ptr + layer * stride, P, Q, BP, BQ, ROW)


@triton.jit
def _std_windows(std1, std2, a, b, ki, kj, plane, LAYERS: tl.constexpr, ROW: tl.constexpr,
                 TMA: tl.constexpr):
    """Where ``_load_std`` finds image a's std field and image b's at the partner positions
    of slice (ki, kj).  TMA: std2's copy shifted by kj % 4 columns, so that the window
    starts on 16 bytes.  Else pointers, with ``plane`` (the layer stride) a run-time value:
    a compile-time one lets the compiler keep a 64-bit address per entry across layers
    (255 registers instead of 167)."""
    if TMA:
        return (std1, 0, a, 0, 0), (std2, kj % 4, b, ki, kj - kj % 4)
    else:
        return ((std1 + a.to(tl.int64) * LAYERS * plane, plane),
                (std2 + b.to(tl.int64) * LAYERS * plane + ki * ROW + kj, plane))


@triton.jit
def _activation(
    sigma, theta, h, at1, at2, snap_at, tiny, out,
    P: tl.constexpr, Q: tl.constexpr, BP: tl.constexpr, BQ: tl.constexpr, ROW: tl.constexpr,
    SIGNED: tl.constexpr, SCALE: tl.constexpr, DEEPEST: tl.constexpr,
    DEPTH_MASK: tl.constexpr, FIX_FIRST_LAST: tl.constexpr, TMA: tl.constexpr,
    READOUTS: tl.constexpr,
):
    """K^(h) and K-dot^(h) * Theta^(h-1) of one slice from Sigma^(h-1) and Theta^(h-1),
    storing the readouts of depth h + 1 if it is in DEPTH_MASK (``_read_out``) as READOUTS
    says: "none" (it is not), "static" (it is; h is known when the kernel compiles) or
    "masked" (h is a run-time value in a loop: sum every layer, store where wanted).
    at1 / at2 locate the two images' std windows (``_load_std``; at2 at the slice's
    partner positions), ROW is their row stride; w = 1 - |rho| <= snap_at is snapped to 0."""
    s1 = _load_std(at1, h - 1, P, Q, BP, BQ, ROW, TMA)
    s2 = _load_std(at2, h - 1, P, Q, BP, BQ, ROW, TMA)
    norm = s1 * s2
    # one approximate reciprocal square root instead of a full-range division: the caller
    # keeps every std below 1, so norm^2 cannot overflow.  + tiny keeps it finite where a
    # std is 0 (there sigma is 0, and so is rho), is below half an ulp of any norm^2 above
    # 2^-102, and costs nothing: one multiply-add where a maximum took two instructions
    rho = sigma * tl.rsqrt(norm * norm + tiny)
    # rho = +-1 where it is within snap_at of it (the angle's slope is infinite there); the
    # linear terms keep rho as it is, which differs from +-1 by no more than snap_at
    w = 1.0 - tl.abs(rho)
    w = tl.where(w > snap_at, w, 0.0)
    kdot = _scaled_angle(rho, w, SCALE / (2 * _PI), SIGNED)  # K-dot^(h) = scale theta / (2 pi)
    # scale sqrt(1 - rho^2) / (2 pi) with the factors kept apart, so that it keeps its digits
    # near rho = +-1
    sine = tl.sqrt(w * ((SCALE / (2 * _PI)) ** 2 * (1.0 + tl.abs(rho))))
    k = (sine + kdot * rho) * norm  # K^(h) = scale norm (sin theta + theta rho) / (2 pi)
    propagated = kdot * theta
    if READOUTS == "static":
        _read_out(out, h, k, propagated, True, DEEPEST, FIX_FIRST_LAST)
    elif READOUTS == "masked":
        _read_out(out, h, k, propagated, ((DEPTH_MASK >> (h + 1)) & 1) != 0, DEEPEST,
                  FIX_FIRST_LAST)
    return k, propagated


@triton.jit
def _read_out(out, h, k, propagated, wanted, DEEPEST: tl.constexpr,
              FIX_FIRST_LAST: tl.constexpr):
    """Store (where ``wanted``) the slice's sums of the NTK and NNGP fields whose readouts
    give depth h + 1."""
    if FIX_FIRST_LAST:
        top = propagated
    else:
        top = propagated + k
    tl.store(out + h + 1, tl.sum(tl.sum(top, 1), 0), mask=wanted)
    tl.store(out + DEEPEST + 1 + h + 1, tl.sum(tl.sum(k, 1), 0), mask=wanted)


@triton.jit
def _layer(
    sigma, theta, h, rows, cols, at1, at2, snap_at, tiny, out,
    P: tl.constexpr, Q: tl.constexpr, BP: tl.constexpr, BQ: tl.constexpr, ROW: tl.constexpr,
    SIGNED: tl.constexpr, SCALE: tl.constexpr, PRECISION: tl.constexpr,
    DEEPEST: tl.constexpr, DEPTH_MASK: tl.constexpr, FIX_FIRST_LAST: tl.constexpr,
    TMA: tl.constexpr, READOUTS: tl.constexpr,
):
    """Layer h, from (Sigma^(h-1), Theta^(h-1)) to (Sigma^(h), Theta^(h)), reading out depth
    h + 1 as READOUTS says (``_activation``)."""
    k, propagated = _activation(
        sigma, theta, h, at1, at2, snap_at, tiny, out, P, Q, BP, BQ, ROW,
        SIGNED, SCALE, DEEPEST, DEPTH_MASK, FIX_FIRST_LAST, TMA, READOUTS)
    return (_patch_sum(k, rows, cols, PRECISION),
            _patch_sum(propagated + k, rows, cols, PRECISION))


@triton.jit
def _looped_layers(
    sigma, theta, start, stop, rows, cols, at1, at2, snap_at, tiny, out,
    P: tl.constexpr, Q: tl.constexpr, BP: tl.constexpr, BQ: tl.constexpr, ROW: tl.constexpr,
    SCALE: tl.constexpr, PRECISION: tl.constexpr, DEEPEST: tl.constexpr,
    DEPTH_MASK: tl.constexpr, FIX_FIRST_LAST: tl.constexpr, TMA: tl.constexpr,
    READOUTS: tl.constexpr,
):
    """Layers start .. stop - 1 (>= 2: rho >= 0) in a loop, reading out "none" or
    "masked" (``_activation``)."""
    for h in range(start, stop):
        sigma, theta = _layer(
            sigma, theta, h, rows, cols, at1, at2, snap_at, tiny, out,
            P, Q, BP, BQ, ROW, False, SCALE, PRECISION, DEEPEST, DEPTH_MASK, FIX_FIRST_LAST,
            TMA, READOUTS)
    return sigma, theta


@triton.jit
def cntk_slices(
    x1_ptr, x2_ptr, std1, std2, rows_ptr, cols_ptr, out_ptr,
    std_plane, tiny, snap,
    P: tl.constexpr, Q: tl.constexpr, EXTENDED: tl.constexpr,
    CHANNELS: tl.constexpr, RADIUS: tl.constexpr, SCALE: tl.constexpr, DEEPEST: tl.constexpr,
    DEPTH_MASK: tl.constexpr, FIX_FIRST_LAST: tl.constexpr, SYMMETRIC: tl.constexpr,
    PRECISION: tl.constexpr, TMA: tl.constexpr, BP: tl.constexpr, BQ: tl.constexpr,
    SUM_EVERY_LAYER: tl.constexpr,
):
    """Readouts of one (pair, slice): out[pair, slice, 0 / 1, depth] = sum over the slice of
    the NTK / NNGP field whose readout gives that depth, for every depth in DEPTH_MASK.

    x1 (n1, C, R, S), x2 (n2, C, R, S); std1 / std2 the (copies, n, DEEPEST - 1, R, S')
    stds of ``fused._kernel_inputs`` (S' = S padded to a multiple of 4), as tensor
    descriptors with (1, 1, 1, BP, BQ) windows if TMA, else as pointers; (R, S) = (P, Q),
    or (2P, 2Q) if EXTENDED: planes repeated twice along each axis, so that a slice's
    partner positions (i + ki) mod P, (j + kj) mod Q lie at i + ki, j + kj, one fixed shift
    away (needed unless the only slice is ki = kj = 0).  rows / cols: the pair's image
    indices; grid (pairs, slices).  SUM_EVERY_LAYER: the layers between the first and the
    last run in one loop that sums both fields at every layer and stores the requested sums,
    instead of unrolling each layer whose depth is requested (``fused.UNROLLED_READOUTS``).
    """
    pair = tl.program_id(0)
    sl = tl.program_id(1)
    a = tl.load(rows_ptr + pair)
    b = tl.load(cols_ptr + pair)
    ki = sl // Q  # flatten's only slice, sl = 0, is ki = kj = 0
    kj = sl % Q
    R: tl.constexpr = 2 * P if EXTENDED else P
    S: tl.constexpr = 2 * Q if EXTENDED else Q
    plane = R * S
    shift = ki * S + kj
    rows = _band(ki, P, RADIUS, BP, PRECISION, False)
    cols = _band(kj, Q, RADIUS, BQ, PRECISION, True)

    # Sigma^(0): patch sum of sum_c x_c(i, j) z_c(i', j'); Theta^(0) = Sigma^(0) or 0.
    raw = tl.zeros((BP, BQ), tl.float32)
    image1 = x1_ptr + a.to(tl.int64) * CHANNELS * plane
    image2 = x2_ptr + b.to(tl.int64) * CHANNELS * plane + shift
    for c in tl.static_range(CHANNELS):
        u = _load_field(image1 + c * plane, P, Q, BP, BQ, S)
        v = _load_field(image2 + c * plane, P, Q, BP, BQ, S)
        raw += u * v
    sigma = _patch_sum(raw, rows, cols, PRECISION)
    if FIX_FIRST_LAST:
        theta = tl.zeros((BP, BQ), tl.float32)
    else:
        theta = sigma
    # A Gram's own pairs at displacement 0 have rho = 1 exactly; say so (every w <= 2 snaps
    # to 0) rather than rely on the fused sums matching the per-image stds bit for bit.
    # Where a std is 0 the fields are 0 too, and so are K = (sin + K-dot rho) norm and
    # K-dot Theta, snapped or not.
    snap_at = tl.where((a == b) & (sl == 0) & SYMMETRIC, 2.0, snap)

    SP: tl.constexpr = (S + 3) // 4 * 4  # std rows are padded to 16 bytes
    at1, at2 = _std_windows(std1, std2, a, b, ki, kj, std_plane, DEEPEST - 1, SP, TMA)
    out = out_ptr + (pair.to(tl.int64) * tl.num_programs(1) + sl) * 2 * (DEEPEST + 1)
    # Layers h = 1 .. DEEPEST - 1, all but the last ending in a patch sum; layer h reads out
    # depth h + 1.  Only layer 1 can meet rho < 0 (Sigma^(h) >= 0 after a ReLU), so it is
    # the only SIGNED one.  Unless SUM_EVERY_LAYER, a layer whose depth is requested runs on
    # its own, unrolled, with h known when the kernel compiles, and the layers between two
    # of them run in a loop that reads out nothing, so every loop's body is one plain layer.
    # (A readout in a branch on the run-time h would be moved by Triton's software
    # pipeliner past the next layer's products, keeping two layers' fields alive: 233
    # registers against 128 for the Table 1 pass of an earlier version.)
    if DEEPEST > 2:
        sigma, theta = _layer(
            sigma, theta, 1, rows, cols, at1, at2, snap_at, tiny, out,
            P, Q, BP, BQ, SP, True, SCALE, PRECISION, DEEPEST, DEPTH_MASK, FIX_FIRST_LAST,
            TMA, "static" if (DEPTH_MASK >> 2) & 1 else "none")
        # the layers run so far; annotated at every assignment, because the interpreter
        # turns the value of a plain one into a tensor, and a loop bound must stay an int,
        # as it is when the kernel compiles
        done: int = 1
        if not SUM_EVERY_LAYER:
            for d in tl.static_range(3, DEEPEST):
                if (DEPTH_MASK >> d) & 1:
                    sigma, theta = _looped_layers(
                        sigma, theta, done + 1, d - 1, rows, cols, at1, at2, snap_at, tiny,
                        out, P, Q, BP, BQ, SP, SCALE, PRECISION, DEEPEST, DEPTH_MASK,
                        FIX_FIRST_LAST, TMA, "none")
                    sigma, theta = _layer(
                        sigma, theta, d - 1, rows, cols, at1, at2, snap_at, tiny, out,
                        P, Q, BP, BQ, SP, False, SCALE, PRECISION, DEEPEST, DEPTH_MASK,
                        FIX_FIRST_LAST, TMA, "static")
                    done: int = d - 1  # type: ignore[no-redef]
        sigma, theta = _looped_layers(
            sigma, theta, done + 1, DEEPEST - 1, rows, cols, at1, at2, snap_at, tiny, out,
            P, Q, BP, BQ, SP, SCALE, PRECISION, DEEPEST, DEPTH_MASK, FIX_FIRST_LAST, TMA,
            "masked" if SUM_EVERY_LAYER else "none")
    _activation(sigma, theta, DEEPEST - 1, at1, at2, snap_at, tiny, out,
                P, Q, BP, BQ, SP, DEEPEST == 2, SCALE, DEEPEST, DEPTH_MASK, FIX_FIRST_LAST,
                TMA, "static")
