"""The arc-cosine closed form against the Gaussian expectations of Eq. (7)-(8), computed by
numerical integration (no closed form involved) and by sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special

from ntkcheck.kernels.relu import relu_dual


def expectations_by_quadrature(var_u: float, var_v: float, rho: float):
    """E[relu(u) relu(v)], E[step(u) step(v)] for u = a z1, v = b (rho z1 + s z2):
    integrate out z2 in closed form for one Gaussian, then z1 > 0 by adaptive quadrature."""
    a, b, s = math.sqrt(var_u), math.sqrt(var_v), math.sqrt(1 - rho * rho)
    phi = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731

    def mean_relu(m: float, sd: float) -> float:  # E[relu(m + sd z)]
        return m * special.ndtr(m / sd) + sd * phi(m / sd)

    e_relu = integrate.quad(
        lambda z: phi(z) * a * z * mean_relu(b * rho * z, b * s), 0, np.inf,
        epsabs=1e-14, epsrel=1e-13,
    )[0]
    e_step = integrate.quad(
        lambda z: phi(z) * special.ndtr(rho * z / s), 0, np.inf, epsabs=1e-14, epsrel=1e-13
    )[0]
    return e_relu, e_step


@pytest.mark.parametrize("rho", [-0.999, -0.7, -0.1, 0.0, 0.25, 0.8, 0.999])
@pytest.mark.parametrize("var_u,var_v", [(1.0, 1.0), (0.3, 4.0), (7.5, 0.02)])
def test_closed_form_equals_the_gaussian_integral(rho, var_u, var_v):
    e_relu, e_step = expectations_by_quadrature(var_u, var_v, rho)
    norm = math.sqrt(var_u * var_v)
    k, kdot = relu_dual(torch.tensor([rho * norm], dtype=torch.float64),
                        torch.tensor([norm], dtype=torch.float64), 1.0)
    assert float(k) == pytest.approx(e_relu, rel=1e-10, abs=1e-13)
    assert float(kdot) == pytest.approx(e_step, rel=1e-10, abs=1e-13)


def test_closed_form_equals_sampling():
    """Scaled by c_sigma = 2 as in Eq. (7): 5 standard errors of 2e6 samples."""
    rng = np.random.default_rng(1)
    cov = np.array([[1.3, -0.4], [-0.4, 0.6]])
    u, v = rng.multivariate_normal([0, 0], cov, size=2_000_000).T
    relu_prod = 2 * np.maximum(u, 0) * np.maximum(v, 0)
    step_prod = 2 * ((u > 0) & (v > 0)).astype(float)
    k, kdot = relu_dual(torch.tensor([-0.4], dtype=torch.float64),
                        torch.tensor([math.sqrt(1.3 * 0.6)], dtype=torch.float64), 2.0)
    for samples, value in ((relu_prod, k), (step_prod, kdot)):
        se = samples.std() / math.sqrt(samples.size)
        assert abs(samples.mean() - float(value)) < 5 * se


def test_limits_and_zero_variance():
    cov = torch.tensor([2.0, -2.0, 0.0, 0.0], dtype=torch.float64)
    norm = torch.tensor([2.0, 2.0, 0.0, 3.0], dtype=torch.float64)
    k, kdot = relu_dual(cov, norm, 2.0)
    # rho = 1: E[relu(u)^2] = var / 2, P(u > 0) = 1/2; rho = -1: both 0.
    torch.testing.assert_close(k[:2], torch.tensor([2.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(kdot[:2], torch.tensor([1.0, 0.0], dtype=torch.float64))
    # zero variance: K = 0 and K-dot finite (it only multiplies zero NTK entries)
    assert k[2] == 0 and torch.isfinite(kdot).all()
    # rho = 0: E[relu(u) relu(v)] = sd_u sd_v / (2 pi), P(u > 0, v > 0) = 1/4
    assert float(k[3]) == pytest.approx(2 * 3.0 / (2 * math.pi))
    assert float(kdot[3]) == pytest.approx(0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rho_snaps_to_plus_minus_one_within_16_ulps_only(dtype):
    """rho within 16 ulps of +-1 (``relu.SNAP_ULPS``, written out so that the test pins the
    documented value) is taken as +-1, K-dot then at its limit; one ulp further it is not,
    and K-dot is sqrt(2 * 17 eps) / pi from it (arccos is steep there), far beyond rounding."""
    eps = torch.finfo(dtype).eps
    edge, beyond = 1 - 16 * eps, 1 - 17 * eps
    rho = torch.tensor([edge, -edge, beyond, -beyond], dtype=dtype)
    _, kdot = relu_dual(rho, torch.ones_like(rho), 2.0)
    gap = math.sqrt(2 * 17 * eps) / math.pi  # 1 - K-dot at rho = beyond
    expected = torch.tensor([1.0, 0.0, 1 - gap, gap], dtype=dtype)
    torch.testing.assert_close(kdot, expected, rtol=0.0, atol=gap / 100)
