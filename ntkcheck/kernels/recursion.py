"""The layer-by-layer recursion shared by FC and CNN, tiled over input pairs.

With Sigma^(0) from the input rule and Theta^(0) = Sigma^(0) (0 when the first layer is
fixed), each activation h = 1, 2, ... gives (K, K-dot) from Sigma^(h-1) (the ReLU dual) and

    depth h + 1 reads out   NTK  = readout(K-dot * Theta^(h-1) + K)   (no "+ K" if the readout
                            NNGP = readout(K)                          layer is fixed)
    deeper layers continue  Sigma^(h) = layer(K),  Theta^(h) = layer(K-dot * Theta^(h-1) + K)

which is Eq. (9) unrolled for FC and steps 1-4 of the CNTK recursion (Sec. 4) for CNN.  So
one pass up to the deepest requested depth gives the kernels of every shallower depth.

Split by layer (Eq. 9's terms: layer h's is Sigma^(h-1) carried through the K-dots and
layer rules above it), the pass keeps each activation's K and K-dot instead of Theta, and
each depth's terms come out of one backward sweep (``layer_terms``): the NTK is linear in
Theta^(0) and in every K, so layer h's term is readout(G_h * Sigma^(h-1)) with G_h the
readout's adjoint carried down.  Carrying each term up instead, as one more row of Theta,
costs a layer rule per term per layer, O(depth^2): 3.7-9x the whole NTK at depth 21 on the
CPU, against 1.4-1.7x this way (``benchmarks/results/cpu_versions_by_layer.json``).

Sigma^(h)(x, x) at the same position depends on x alone, so it is computed once per input,
not once per pair.  Pairs are processed in tiles whose working set stays under a byte
budget; a Gram matrix computes only its upper-triangle tiles.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple, Protocol

import torch

from .._progress import Progress
from .relu import relu_dual

LIVE_FIELDS = 10
"""Fields of one pair alive at once in a tile (Sigma, Theta, norms, rho, K, K-dot, patch-sum
outputs and temporaries); with the field size it turns a byte budget into a tile size."""

CPU_TILE_BYTES = 16 * 2**20
"""Working set a CPU tile aims at, below ``max_memory``: every step is a pass over memory,
and on 32x32 images 16 MiB tiles ran 3-6x faster than 1 GiB ones (cache, page faults)."""


class Kernels(NamedTuple):
    """The two kernels of one depth, (n1, n2) matrices: ``ntk``, the neural tangent kernel
    (Eq. 9 for FC; the CNTK of Sec. 4 / H for CNN), which gradient descent on the trained
    layers follows; and ``nngp``, the Gaussian-process kernel E[f(x) f(x')] of the network
    at initialization (Sigma^(L) of Eq. 7 for FC, L = depth - 1 hidden layers; for CNN the
    readout of the last layer's K).  With ``by_layer=True``, ``ntk`` is (depth, n1, n2):
    weight layer h's term in row h - 1."""

    ntk: torch.Tensor
    nngp: torch.Tensor


class Rules(Protocol):
    scale: float

    def field_numel(self, input_shape: tuple[int, ...]) -> int: ...
    def input_cov(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor: ...
    def input_var(self, x: torch.Tensor) -> torch.Tensor: ...
    def outer(self, s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor: ...
    def image_layer(self, v: torch.Tensor) -> torch.Tensor: ...
    def pair_layer(self, t: torch.Tensor) -> torch.Tensor: ...
    def readout(self, t: torch.Tensor) -> torch.Tensor: ...


def image_stds(rules: Rules, x: torch.Tensor, activations: int) -> list[torch.Tensor]:
    """sqrt(Sigma^(h)(x, x)) at the same position, for h = 0 .. activations - 1."""
    var = rules.input_var(x)
    stds = []
    for h in range(activations):
        std = var.sqrt()
        stds.append(std)
        if h + 1 < activations:
            # std * std is the norm a pair of identical inputs gets from ``outer`` below, so
            # both paths stay bitwise equal and rho stays exactly 1 for identical inputs.
            k, _ = relu_dual(var, std * std, rules.scale)
            var = rules.image_layer(k)
    return stds


def activation(
    rules: Rules, sigma: torch.Tensor, theta: torch.Tensor | None, std1: torch.Tensor,
    std2: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(K^(h), K-dot^(h) * Theta^(h-1)) of a tile from Sigma^(h-1), Theta^(h-1) and the two
    sides' stds sqrt(Sigma^(h-1)(x, x)): a layer's elementwise work (``compiled`` fuses it).
    ``theta=None`` (split by layer): (K^(h), K-dot^(h))."""
    norm = rules.outer(std1, std2)  # sqrt(S_xx) sqrt(S_zz)
    k, kdot = relu_dual(sigma, norm, rules.scale)
    return k, kdot if theta is None else kdot.mul_(theta)


Activation = Callable[
    [Rules, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor],
    tuple[torch.Tensor, torch.Tensor],
]


def layer_terms(rules: Rules, theta0: torch.Tensor, ks: list[torch.Tensor],
                kdots: list[torch.Tensor], last: torch.Tensor) -> torch.Tensor:
    """Eq. (9)'s terms, (L, b1, b2), of the depth-L net read out after the activations
    h = 1 .. L-1 whose K^(h) and K-dot^(h) are ``ks`` and ``kdots`` (Theta^(0) = ``theta0``;
    ``last``, the readout layer's term, readout(K^(L-1)) or zero when it is fixed).

    Reverse mode: readout(T) is c sum(T) and the layer rule (identity, or the patch sum,
    whose shifts come in +-a pairs) is symmetric, so readout(K-dot * layer(T)) =
    readout(layer(K-dot) * T).  With G_(L-1) = K-dot^(L-1) and G_h = K-dot^(h) *
    layer(G_(h+1)) carried down, the readout layer's term is readout(K^(L-1)), layer
    h + 1's is readout(layer(G_(h+1)) * K^(h)) and layer 1's readout(G_1 * Theta^(0)), zero
    when the first layer is fixed (``theta0`` is zero then).
    """
    terms = [last]
    g = kdots[-1]
    for k, kdot in zip(ks[-2::-1], kdots[-2::-1], strict=True):
        g = rules.pair_layer(g)  # may return g itself (filter size 1): no in-place below
        terms.append(rules.readout(g * k))
        g = g * kdot
    terms.append(rules.readout(g * theta0))
    return torch.stack(terms[::-1])


def tile_kernels(
    rules: Rules,
    x1: torch.Tensor,
    x2: torch.Tensor,
    stds1: list[torch.Tensor],
    stds2: list[torch.Tensor],
    depths: frozenset[int],
    fix_first_last: bool,
    step: Activation = activation,
    by_layer: bool = False,
) -> dict[int, Kernels]:
    """NTK and NNGP of every depth in ``depths`` for all pairs of one tile, in one pass;
    ``step`` computes each layer's activation (``activation``, or it compiled).  With
    ``by_layer`` each depth d's NTK is (d, b1, b2), row h - 1 the term of weight layer h
    (zero for a fixed layer; ``layer_terms``); the rows sum to the NTK."""
    deepest = max(depths)
    sigma = rules.input_cov(x1, x2)
    theta0 = torch.zeros_like(sigma) if fix_first_last else sigma
    theta: torch.Tensor | None = None if by_layer else theta0  # by layer: K-dots are kept
    ks: list[torch.Tensor] = []
    kdots: list[torch.Tensor] = []
    found = {}
    if 1 in depths:  # FC depth 1 is the linear model: both kernels are x.x'
        ntk = rules.readout(theta0)
        found[1] = Kernels(ntk[None] if by_layer else ntk, rules.readout(sigma))
    for h in range(1, deepest):
        k, propagated = step(rules, sigma, theta, stds1[h - 1], stds2[h - 1])
        if theta is None:
            ks.append(k)
            kdots.append(propagated)
        if h + 1 in depths:  # the readout is linear: NTK = readout(propagated) + readout(K)
            nngp = rules.readout(k)
            last = torch.zeros_like(nngp) if fix_first_last else nngp
            found[h + 1] = Kernels(
                layer_terms(rules, theta0, ks, kdots, last) if theta is None
                else rules.readout(propagated) + last, nngp)
        if h + 1 < deepest:
            sigma = rules.pair_layer(k)
            if theta is not None:
                theta = rules.pair_layer(propagated + k)
    return found


def _tile_sides(n1: int, n2: int, pairs: int, symmetric: bool) -> tuple[int, int]:
    """Rows and columns of a tile of at most ``pairs`` pairs (>= 1 each, even if n is 0)."""
    side = max(1, math.isqrt(pairs))
    if symmetric:
        b = max(1, min(n1, side))
        return b, b
    b2 = max(1, min(n2, side))
    return max(1, min(n1, pairs // b2)), b2


def kernels(
    rules: Rules,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    depths: frozenset[int],
    *,
    fix_first_last: bool,
    max_memory: int,
    progress: bool,
    step: Activation = activation,
    by_layer: bool = False,
) -> dict[int, Kernels]:
    """(n1, n2) NTK and NNGP matrices for each depth; ``x2=None`` is the Gram matrix of ``x1``.

    ``max_memory`` bounds the bytes of the recursion's working set (not the output matrices);
    ``step`` is each layer's activation and ``by_layer`` splits each depth d's NTK into its
    (d, n1, n2) layer terms (see ``tile_kernels``).
    """
    # split by layer, the K and K-dot of every activation are kept for the backward sweep
    fields = LIVE_FIELDS + (2 * max(depths) if by_layer else 0)
    pair_bytes = rules.field_numel(tuple(x1.shape)) * x1.element_size() * fields
    if pair_bytes > max_memory:
        raise ValueError(
            f"max_memory={max_memory} bytes is below the {pair_bytes} bytes that one pair of "
            f"{tuple(x1.shape[1:])} {x1.dtype} inputs needs here; raise max_memory"
        )
    activations = max(depths) - 1
    stds1 = image_stds(rules, x1, activations)
    stds2 = stds1 if x2 is None else image_stds(rules, x2, activations)
    z = x1 if x2 is None else x2

    def tile(rows: slice, cols: slice) -> dict[int, Kernels]:
        return tile_kernels(
            rules, x1[rows], z[cols], [s[rows] for s in stds1], [s[cols] for s in stds2],
            depths, fix_first_last, step, by_layer,
        )

    tile_bytes = max_memory if x1.is_cuda else min(max_memory, CPU_TILE_BYTES)
    return tiled(x1, x2, depths, tile_bytes // pair_bytes, tile, progress, by_layer)


TileFn = Callable[[slice, slice], dict[int, Kernels]]
"""Kernels of the pairs (x1[rows], x2[cols]) of one tile, keyed by depth; on a Gram
matrix's diagonal tiles only the entries on and above the diagonal need be right."""


def pair_count(rows: int, cols: int, symmetric: bool) -> int:
    """Pairs computed for a rows x cols block: of a symmetric (Gram) one, those on and above
    the diagonal."""
    return rows * (rows + 1) // 2 if symmetric else rows * cols


def tile_pairs(n1: int, n2: int, r: int, c: int, b1: int, b2: int, symmetric: bool) -> int:
    """Pairs computed in the b1 x b2 tile at (r, c): on a Gram matrix's diagonal tiles, only
    those on and above the diagonal."""
    return pair_count(min(b1, n1 - r), min(b2, n2 - c), symmetric and r == c)


def tiled(
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    depths: frozenset[int],
    pairs: int,
    tile: TileFn,
    progress: bool,
    by_layer: bool = False,
) -> dict[int, Kernels]:
    """Assemble (n1, n2) matrices from tiles of at most ``pairs`` pairs; a Gram matrix
    (``x2=None``) computes only its upper-triangle tiles and mirrors them.  ``by_layer``:
    each depth d's NTK is (d, n1, n2)."""
    symmetric = x2 is None
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    b1, b2 = _tile_sides(n1, n2, pairs, symmetric)
    out = {
        d: Kernels(x1.new_zeros(*((d,) if by_layer else ()), n1, n2), x1.new_zeros(n1, n2))
        for d in sorted(depths)
    }
    total = pair_count(n1, n2, symmetric)
    with Progress(total, "kernel pairs", enabled=progress) as bar:
        for r in range(0, n1, b1):
            for c in range(r if symmetric else 0, n2, b2):
                rows, cols = slice(r, r + b1), slice(c, c + b2)
                for d, pair in tile(rows, cols).items():
                    out[d].ntk[..., rows, cols] = pair.ntk
                    out[d].nngp[rows, cols] = pair.nngp
                bar.advance(tile_pairs(n1, n2, r, c, b1, b2, symmetric))
    if symmetric:  # mirror the upper triangle: exactly symmetric, lower tiles never computed
        out = {d: Kernels(*(k.triu() + k.triu(1).mT for k in pair)) for d, pair in out.items()}
    return out
