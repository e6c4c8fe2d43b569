"""Kernel regression against literal formulas and the kernel ODE it solves."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from scipy.linalg import expm

import ntkcheck as nc
from ntkcheck.regression import IllConditionedWarning, KernelRegression, kernel_regression


def problem(n=7, m=4, k=3, seed=0):
    """A positive definite kernel on n training and m test points (RBF on random points)."""
    g = torch.Generator().manual_seed(seed)
    points = torch.randn(n + m, 2, generator=g, dtype=torch.float64)
    kernel = torch.exp(-torch.cdist(points, points) ** 2)
    y = torch.randn(n, k, generator=g, dtype=torch.float64)
    return kernel[:n, :n], y, kernel[n:, :n]


def test_t_infinity_is_the_literal_formula_and_interpolates():
    k, y, k_test = problem()
    literal = k_test.numpy() @ np.linalg.inv(k.numpy()) @ y.numpy()
    np.testing.assert_allclose(kernel_regression(k, y, k_test).numpy(), literal, rtol=1e-9)
    torch.testing.assert_close(kernel_regression(k, y, k), y, rtol=1e-9, atol=1e-9)
    scalar = kernel_regression(k, y[:, 0], k_test)
    assert scalar.shape == (4,)
    torch.testing.assert_close(scalar, torch.from_numpy(literal[:, 0]), rtol=1e-9, atol=0)


@pytest.mark.parametrize("ridge", [0.3, 1.0])
def test_ridge_is_added_to_the_diagonal(ridge):
    k, y, k_test = problem(seed=1)
    literal = k_test.numpy() @ np.linalg.solve(k.numpy() + ridge * np.eye(7), y.numpy())
    np.testing.assert_allclose(kernel_regression(k, y, k_test, ridge=ridge).numpy(), literal,
                               rtol=1e-9)


@pytest.mark.parametrize("t", [0.0, 0.05, 0.7, 3.0])
def test_finite_t_matches_the_integrated_kernel_ode(t):
    """Gradient flow on 1/2 |f(X) - Y|^2 in function space: du/dt = -K (u - y) on the
    training points and dv/dt = -K(x, X) (u - y) on test points, from zero."""
    k, y, k_test = problem(seed=2)
    n, m = 7, 4
    y0 = y[:, 0].numpy()

    def flow(_, state):
        residual = state[:n] - y0
        return np.concatenate([-k.numpy() @ residual, -k_test.numpy() @ residual])

    ode = solve_ivp(flow, (0, t), np.zeros(n + m), rtol=1e-12, atol=1e-14).y[:, -1]
    got = kernel_regression(k, y[:, 0], torch.cat([k, k_test]), t=t).numpy()
    np.testing.assert_allclose(got, ode, rtol=1e-7, atol=1e-10)


def test_large_t_approaches_t_infinity():
    k, y, k_test = problem(seed=3)
    torch.testing.assert_close(kernel_regression(k, y, k_test, t=1e6),
                               kernel_regression(k, y, k_test), rtol=1e-7, atol=1e-9)


def test_finite_t_handles_a_singular_kernel():
    """Rank 2 of 6, entries ~1e6: eigh gives four eigenvalues of ~-1e-9 to 1e-9 (rounding),
    which the positive semi-definite check must accept, being relative to the largest; on
    the training points gradient flow gives (I - exp(-t K)) Y (Eq. 5's derivation)."""
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    k, y = 1e6 * x @ x.T, torch.ones(6, dtype=torch.float64)
    t = 2e-6
    got = kernel_regression(k, y, k, t=t)
    literal = (np.eye(6) - expm(-t * k.numpy())) @ y.numpy()
    np.testing.assert_allclose(got.numpy(), literal, rtol=1e-9, atol=1e-12)


def test_finite_t_weights_integrate_the_flow_along_every_eigenvalue():
    """alpha = int_0^t exp(-s K) ds Y, so along an eigenvalue that is exactly 0 (a diagonal
    K's) it is t Y there; ``condition_`` is the eigenvalues' ratio, infinite for a singular K."""
    t, y = 0.5, torch.ones(3, dtype=torch.float64)
    model = KernelRegression(t=t).fit(torch.diag(torch.tensor([0.0, 1.0, 3.0],
                                                               dtype=torch.float64)), y)
    gains = [t, -np.expm1(-t), -np.expm1(-3 * t) / 3]
    np.testing.assert_allclose(model.coef_.numpy(), gains, rtol=1e-14)
    assert model.condition_ == float("inf")
    diagonal = torch.diag(torch.tensor([0.5, 2.0, 4.0], dtype=torch.float64))
    assert KernelRegression(t=t).fit(diagonal, y).condition_ == 8.0


def test_singular_kernel_needs_a_ridge_and_auto_finds_one():
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    k, y = x @ x.T, torch.randn(6, dtype=torch.float64)
    suggested = f"ridge={1e-6 * float(k.diagonal().mean()):.3g}, 1e-6 x mean diagonal"
    with pytest.raises(ValueError, match=rf"singular.*{suggested}\) or ridge='auto'"):
        KernelRegression().fit(k, y)
    model = KernelRegression(ridge="auto").fit(k, y)
    assert model.ridge_ > 0 and model.condition_ <= 1e12
    # condition number <= 1e12 leaves ~1e-4 of float64's digits: agree to that
    literal = k.numpy() @ np.linalg.solve(k.numpy() + model.ridge_ * np.eye(6), y.numpy())
    np.testing.assert_allclose(model.predict(k).numpy(), literal, rtol=0, atol=1e-3)


def test_ill_conditioned_kernel_warns_and_auto_adds_the_smallest_ridge():
    i = torch.arange(12, dtype=torch.float64)
    hilbert = 1 / (i[:, None] + i[None, :] + 1)  # condition number ~1.7e16
    with pytest.warns(IllConditionedWarning, match="ridge"):
        KernelRegression().fit(hilbert, torch.ones(12, dtype=torch.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = KernelRegression(ridge="auto").fit(hilbert, torch.ones(12, dtype=torch.float64))
    # the smallest of mean(diag) x 1e-12, 1e-11, ... that brings the condition number
    # (here from eigvalsh) to 1e12 or below: 1e-11, where 1e-12 leaves it at 9.7e12
    eigenvalues = np.linalg.eigvalsh(hilbert.numpy())
    grid = [float(hilbert.diagonal().mean()) * 10.0**e for e in range(-12, -1)]
    chosen = grid.index(model.ridge_)
    conditions = [(eigenvalues.max() + r) / (eigenvalues.min() + r) for r in grid]
    assert conditions[chosen] <= 1e12, conditions
    assert all(c > 1e12 for c in conditions[:chosen]), (chosen, conditions)
    well_conditioned, y, _ = problem()
    assert KernelRegression(ridge="auto").fit(well_conditioned, y).ridge_ == 0.0


def test_condition_number_is_a_close_lower_estimate():
    """Against eigvalsh: eigenvalues spread evenly over 8 decades (a hard case for power
    iteration: neighbours 6% apart), and a CNTK Gram matrix of CIFAR-10 images, where the
    cheaper bound from the Cholesky factor's diagonal was 15x low."""
    g = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(300, 300, generator=g, dtype=torch.float64))
    spread = (basis * torch.logspace(0, 8, 300, dtype=torch.float64)) @ basis.T
    images = nc.data.cifar10_exact("train", 40)[0]
    images = nc.data.standardize(images, reference=images)
    gram = nc.CNN(depth=3, pooling="flatten").ntk(images)
    for k, within in ((spread, 0.8), (gram, 0.999)):
        k = (k + k.T) / 2
        eigenvalues = torch.linalg.eigvalsh(k)
        true = float(eigenvalues[-1] / eigenvalues[0])
        model = KernelRegression().fit(k, torch.ones(len(k), dtype=torch.float64))
        assert within * true <= model.condition_ <= true * (1 + 1e-9)
        factor_diagonal = torch.linalg.cholesky(k).diagonal()
        assert float(factor_diagonal.max() / factor_diagonal.min()) ** 2 < true / 10


def test_bad_input():
    k, y, k_test = problem()
    with pytest.raises(ValueError, match="k_train must be a square"):
        kernel_regression(k[:, :5], y, k_test)
    with pytest.raises(ValueError, match=r"y_train must have shape \(7,\)"):
        kernel_regression(k, y[:5], k_test)
    with pytest.raises(ValueError, match=r"k_test must have shape \(m, 7\)"):
        kernel_regression(k, y, k_test[:, :3])
    with pytest.raises(ValueError, match="k_train contains NaN"):
        kernel_regression(k * float("nan"), y, k_test)
    with pytest.raises(TypeError, match="y_train must be a torch.Tensor"):
        kernel_regression(k, y.numpy(), k_test)
    with pytest.raises(ValueError, match="ridge must be a float >= 0 or 'auto'"):
        KernelRegression(ridge=-1.0)
    with pytest.raises(ValueError, match="t must be a finite float >= 0"):
        KernelRegression(t=-1.0)
    with pytest.raises(RuntimeError, match="call fit"):
        KernelRegression().predict(k_test)
    with pytest.raises(ValueError, match="not positive semi-definite"):
        kernel_regression(-k, y, k_test, t=1.0)
