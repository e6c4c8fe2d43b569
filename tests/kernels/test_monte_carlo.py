"""Analytic kernels against Monte-Carlo averages over random finite networks.

The networks are written here, independently of ntkcheck, exactly as Eq. (6) and Sec. 4/H
define them: N(0, 1) weights, no biases, sqrt(c_sigma / width) and sqrt(c_sigma / (C q^2))
after each ReLU, zero "same" padding, flatten or GAP readout.  The average of the empirical
NTK  H = <df/dtheta(x), df/dtheta(x')>  over trained weights, and of f(x) f(x'), must match
``arch.ntk`` and ``arch.nngp`` within 5 standard errors (from the seed-to-seed spread).
With one hidden layer both expectations equal the kernels exactly at any width; with two,
a finite-width bias O(1/width) remains, far below the standard error at the widths used.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import ntkcheck as nc

SEEDS = 160
Z = 5.0


def fc_forward(weights: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    h = x
    for w in weights[:-1]:
        h = math.sqrt(2.0 / w.shape[0]) * F.relu(h @ w.T)
    return (h @ weights[-1].T)[:, 0]


def cnn_forward(weights: list[torch.Tensor], x: torch.Tensor, pooling: str) -> torch.Tensor:
    h = x
    for w in weights[:-1]:
        q = w.shape[-1]
        h = math.sqrt(2.0 / (w.shape[0] * q * q)) * F.relu(F.conv2d(h, w, padding=q // 2))
    if pooling == "gap":
        return h.mean((2, 3)) @ weights[-1]
    return (h * weights[-1]).sum((1, 2, 3))


def sample_weights(arch, x: torch.Tensor, width: int, gen: torch.Generator):
    kw = dict(generator=gen, dtype=torch.float64)
    if isinstance(arch, nc.FC):
        dims = [x.shape[1]] + [width] * (arch.depth - 1) + [1]
        return [torch.randn(dims[i + 1], dims[i], **kw) for i in range(arch.depth)]
    q, channels = arch.filter_size, [x.shape[1]] + [width] * (arch.depth - 1)
    convs = [torch.randn(channels[i + 1], channels[i], q, q, **kw) for i in range(arch.depth - 1)]
    readout = (torch.randn(width, **kw) if arch.pooling == "gap"
               else torch.randn(width, *x.shape[2:], **kw))
    return convs + [readout]


def sampled_kernels(arch, x: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(SEEDS, n, n) empirical NTKs and outer products f f^T of freshly drawn networks."""
    gen = torch.Generator().manual_seed(1234)
    ntks, nngps = [], []
    for _ in range(SEEDS):
        weights = sample_weights(arch, x, width, gen)
        trained = weights[1:-1] if arch.fix_first_last else weights
        for w in trained:
            w.requires_grad_(True)
        out = (fc_forward(weights, x) if isinstance(arch, nc.FC)
               else cnn_forward(weights, x, arch.pooling))
        rows = [torch.cat([g.flatten() for g in torch.autograd.grad(out[i], trained,
                                                                    retain_graph=True)])
                for i in range(len(x))]
        jac = torch.stack(rows)
        ntks.append(jac @ jac.T)
        nngps.append(torch.outer(out, out).detach())
    return torch.stack(ntks), torch.stack(nngps)


def z_scores(samples: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    se = samples.std(0) / math.sqrt(len(samples))
    return (samples.mean(0) - exact).abs() / se


def images(shape: tuple[int, ...]) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(3, *shape, generator=gen, dtype=torch.float64)
    return x / x.flatten(1).norm(dim=1).view(-1, *[1] * len(shape))  # unit norm, as Thm 3.1


CASES = [
    (nc.FC(depth=2), (4,), 512),
    (nc.FC(depth=3), (4,), 512),
    (nc.FC(depth=4, fix_first_last=True), (4,), 512),
    (nc.CNN(depth=2, pooling="flatten"), (2, 4, 3), 16),
    (nc.CNN(depth=2, pooling="gap"), (2, 4, 3), 16),
    (nc.CNN(depth=3, pooling="flatten"), (2, 4, 3), 128),
    (nc.CNN(depth=3, pooling="gap", fix_first_last=True), (2, 4, 3), 128),
    (nc.CNN(depth=4, pooling="gap", filter_size=1, fix_first_last=True), (2, 3, 3), 128),
]


@pytest.mark.parametrize("arch,shape,width", CASES, ids=lambda v: repr(v))
def test_finite_network_averages_match_the_kernels(arch, shape, width):
    x = images(shape)
    ntks, nngps = sampled_kernels(arch, x, width)
    assert z_scores(ntks, arch.ntk(x)).max() < Z
    assert z_scores(nngps, arch.nngp(x)).max() < Z
    if arch.depth >= 3:  # the test has the power to see which layers train
        other = type(arch)(**{**arch.__dict__, "fix_first_last": not arch.fix_first_last})
        assert z_scores(ntks, other.ntk(x)).max() > 4 * Z
