"""Literal, slow float64 implementations of the paper's formulas, independent of ntkcheck.

Written from the paper's text, not from the package: scalar Gaussian expectations, Eq. (9)
as its sum over layers of products (the package runs a recursion instead), and the CNTK
with full P x Q x P x Q arrays and the trace over D_{ij,i'j'} spelled out with loops.
A layer's term in that sum is its weights' gradient contribution, so fixing the first and
last layer (the paper's GAP setting) drops exactly the terms h = 1 and h = L + 1.  Both
functions return the NTK as that list of terms, h = 1 .. L + 1 (a fixed layer's is 0).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

C_SIGMA = 2.0


def relu_expectations(l11: float, l12: float, l22: float) -> tuple[float, float]:
    """E[relu(u) relu(v)] and E[relu'(u) relu'(v)] for (u, v) ~ N(0, [[l11, l12], [l12, l22]]).

    Closed forms of Cho and Saul (2009): (sqrt(det) + (pi - arccos rho) l12) / (2 pi) and
    (pi - arccos rho) / (2 pi).  A zero variance makes u or v identically 0: both are 0.
    """
    if l11 <= 0.0 or l22 <= 0.0:
        return 0.0, 0.0
    rho = max(-1.0, min(1.0, l12 / math.sqrt(l11 * l22)))
    det = max(0.0, l11 * l22 - l12 * l12)
    angle = math.pi - math.acos(rho)
    return (math.sqrt(det) + angle * l12) / (2 * math.pi), angle / (2 * math.pi)


def fc_kernels(x: np.ndarray, z: np.ndarray, depth: int, fix_first_last: bool = False):
    """(NTK terms, NNGP) of Eq. (7)-(9) for one pair, L = depth - 1 hidden layers."""
    L = depth - 1
    sigma = {("x", "x"): x @ x, ("x", "z"): x @ z, ("z", "z"): z @ z}
    sigmas, dots = [sigma[("x", "z")]], [None]  # Sigma^(h)(x,z), Sigma-dot^(h)(x,z)
    for _ in range(L):
        new = {}
        for a, b in sigma:
            e, edot = relu_expectations(sigma[(a, a)], sigma[(a, b)], sigma[(b, b)])
            new[(a, b)] = C_SIGMA * e
            if (a, b) == ("x", "z"):
                dots.append(C_SIGMA * edot)
        sigma = new
        sigmas.append(sigma[("x", "z")])
    dots.append(1.0)  # Sigma-dot^(L+1) = 1
    trained = range(2, L + 1) if fix_first_last else range(1, L + 2)
    terms = [sigmas[h - 1] * math.prod(dots[h:L + 2]) if h in trained else 0.0
             for h in range(1, L + 2)]
    return terms, sigmas[L]


def _trace_patches(t: np.ndarray, q: int) -> np.ndarray:
    """[T]_{ij,i'j'} -> tr([T]_{D_{ij,i'j'}}) = sum_{a,b} T[i+a, j+b, i'+a, j'+b] (zero outside)."""
    P, Q = t.shape[0], t.shape[1]
    r = (q - 1) // 2
    out = np.zeros_like(t)
    for i, j, i2, j2 in itertools.product(range(P), range(Q), range(P), range(Q)):
        for a, b in itertools.product(range(-r, r + 1), repeat=2):
            if 0 <= i + a < P and 0 <= j + b < Q and 0 <= i2 + a < P and 0 <= j2 + b < Q:
                out[i, j, i2, j2] += t[i + a, j + b, i2 + a, j2 + b]
    return out


def cntk_kernels(
    x: np.ndarray, z: np.ndarray, depth: int, pooling: str, q: int,
    fix_first_last: bool = False,
):
    """(CNTK terms, NNGP) of Sec. 4 (flatten) and Sec. H (GAP) for images x, z of shape
    (C, P, Q)."""
    L = depth - 1
    P, Q = x.shape[1], x.shape[2]
    images = {"x": x, "z": z}
    pairs = [("x", "x"), ("x", "z"), ("z", "z")]
    # Sigma^(0): sum over channels of the patch trace of x_alpha (x) x'_alpha.
    sigma = {
        (a, b): _trace_patches(np.einsum("cij,ckl->ijkl", images[a], images[b]), q)
        for a, b in pairs
    }
    sigmas, ks, kdots = [sigma[("x", "z")]], [None], [None]
    for _ in range(L):
        k = {p: np.zeros((P, Q, P, Q)) for p in pairs}
        kdot = np.zeros((P, Q, P, Q))
        for (a, b), (i, j, i2, j2) in itertools.product(
            pairs, itertools.product(range(P), range(Q), range(P), range(Q))
        ):
            e, edot = relu_expectations(
                sigma[(a, a)][i, j, i, j], sigma[(a, b)][i, j, i2, j2],
                sigma[(b, b)][i2, j2, i2, j2],
            )
            k[(a, b)][i, j, i2, j2] = C_SIGMA / q**2 * e
            if (a, b) == ("x", "z"):
                kdot[i, j, i2, j2] = C_SIGMA / q**2 * edot
        ks.append(k[("x", "z")])
        kdots.append(kdot)
        sigma = {p: _trace_patches(k[p], q) for p in pairs}
        sigmas.append(sigma[("x", "z")])

    def readout(t: np.ndarray) -> float:
        if pooling == "gap":
            return t.sum() / (P * Q) ** 2
        return sum(t[i, j, i, j] for i in range(P) for j in range(Q))

    def contribution(h: int) -> float:
        """Layer h's weights: Sigma^(h-1) carried through the K-dots of the layers above."""
        if h == L + 1:
            return readout(ks[L])
        t = sigmas[h - 1]
        for g in range(h, L + 1):
            t = kdots[g] * t
            if g < L:
                t = _trace_patches(t, q)
        return readout(t)

    trained = range(2, L + 1) if fix_first_last else range(1, L + 2)
    return [contribution(h) if h in trained else 0.0 for h in range(1, L + 2)], readout(ks[L])
