"""The ReLU activation rule: the arc-cosine dual of Eq. (7), (8), (11) and (12).

For (u, v) ~ N(0, [[S_xx, S_xz], [S_xz, S_zz]]) and rho = S_xz / sqrt(S_xx S_zz),

    E[relu(u) relu(v)] = sqrt(S_xx S_zz) (sqrt(1 - rho^2) + (pi - arccos rho) rho) / (2 pi)
    E[step(u) step(v)] = (pi - arccos rho) / (2 pi)

(Cho and Saul, 2009).  The paper scales both by c_sigma = 2 (FC) or c_sigma / q^2 (CNN).
"""

from __future__ import annotations

import math

import torch

C_SIGMA = 2.0
"""c_sigma = 1 / E[relu(z)^2] for z ~ N(0, 1): keeps E|g^(h)(x)|^2 = |x|^2 (Eq. 6)."""

SNAP_ULPS = 16
"""rho within this many ulps of +-1 is taken as +-1.  Near |rho| = 1 the angle arccos(rho)
is only determined to ~sqrt(ulps * eps) by covariances that carry rounding error, so this
loses nothing there; it makes identical or proportional inputs (every Gram diagonal, where
rho = 1 exactly) exact instead of off by sqrt(eps) (1e-8 in float64, 5e-4 in float32)."""


def relu_dual(
    cov: torch.Tensor, norm: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, K-dot) from the cross-covariance ``cov`` = S_xz and ``norm`` = sqrt(S_xx S_zz).

    Compute ``norm`` the same way for a pair of identical inputs as for one input with
    itself (e.g. sqrt(S_xx) * sqrt(S_xx) in both): then both give the same K bits, the
    recursion keeps S_xz = S_xx exactly, and rho stays exactly 1 layer after layer.

    K = scale * E[relu(u) relu(v)] and K-dot = scale * E[step(u) step(v)] (Eq. 11-12 with
    ``scale`` = c_sigma / q^2; Eq. 7-8 with ``scale`` = c_sigma).  Where a norm is zero the
    pre-activation is identically zero: K is 0 and K-dot is finite (it only ever multiplies a
    zero NTK entry), so a zero image or patch never produces NaN.
    """
    # Guard the division: norm == 0 implies cov == 0 (Cauchy-Schwarz), so rho = 0 there.
    info = torch.finfo(norm.dtype)
    rho = cov / norm.clamp_min(info.tiny)
    rho = torch.where(rho.abs() >= 1.0 - SNAP_ULPS * info.eps, rho.sign(), rho)
    angle = torch.acos(-rho)  # theta = pi - arccos(rho) in [0, pi]; exact at rho = -1
    kdot = angle * (scale / (2 * math.pi))
    # sqrt(1 - rho^2) = sin(theta): K = scale * norm * (sin(theta) + theta rho) / (2 pi)
    k = torch.sin(angle).addcmul_(angle, rho).mul_(norm).mul_(scale / (2 * math.pi))
    return k, kdot
