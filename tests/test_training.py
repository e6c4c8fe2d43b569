"""Gradient descent in the paper's setting: stability, monotone loss, what is recorded."""

from __future__ import annotations

import pytest
import torch

import ntkcheck as nc
from ntkcheck.training import NotConvergedError, max_stable_lr, train


def problem(width=256, depth=3, seed=0, outputs=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 6, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    y = torch.randn(8, *(() if outputs == 1 else (outputs,)), generator=g, dtype=torch.float64)
    net = nc.FC(depth=depth).network(width, (6,), seed=seed, dtype=torch.float64,
                                      outputs=outputs)
    return net, x, y


@pytest.mark.parametrize("outputs", [1, 2])
def test_stable_gd_decreases_the_loss_monotonically(outputs):
    net, x, y = problem(outputs=outputs)
    lr = 0.5 * max_stable_lr(net, x, kappa=0.5)
    history = train(net, x, y, kappa=0.5, lr=lr, steps=120, record_every=1)
    loss = torch.tensor(history.loss)
    assert history.steps == list(range(121))
    assert (loss[1:] < loss[:-1]).all() and loss[-1] < 0.05 * loss[0]
    assert history.kernel_change_fro[0] == 0 and history.kernel_change_fro[-1] > 0
    assert set(history.weight_change[-1]) == {n for n, _ in net.named_parameters()}
    torch.testing.assert_close(history.ntk[0], 0.25 * nc.empirical_ntk(
        problem(outputs=outputs)[0], x), rtol=1e-12, atol=0)  # H of kappa f at t = 0


def test_until_loss_stops_there_and_records_the_last_step():
    net, x, y = problem()
    history = train(net, x, y, lr=0.5 * max_stable_lr(net, x), until_loss=1e-3,
                    record_every=1000)
    assert history.loss[-1] <= 1e-3 < history.loss[0]
    assert history.steps[0] == 0 and history.steps[-1] > 0 and len(history.steps) == 2


def test_an_unstable_learning_rate_is_refused_with_the_largest_stable_one():
    net, x, y = problem()
    limit = max_stable_lr(net, x, kappa=2.0)
    with pytest.raises(ValueError, match=f"use lr < {limit:.4g}"):
        train(net, x, y, kappa=2.0, lr=1.01 * limit, steps=5)
    # just below the limit it is accepted, and the history says where the limit was
    net, x, y = problem()
    history = train(net, x, y, kappa=2.0, lr=0.99 * limit, steps=5, record_every=1)
    assert history.max_stable_lr == pytest.approx(limit)


def test_wider_nets_move_their_kernel_less():
    changes = []
    for width in (64, 1024):
        net, x, y = problem(width=width)
        history = train(net, x, y, lr=0.5 * max_stable_lr(net, x), until_loss=1e-3,
                        record_every=10_000)
        changes.append(history.kernel_change_fro[-1])
    assert changes[1] < changes[0] / 2  # the lazy regime: ~width^-1/2, so 4x over 16x width


def test_bad_arguments():
    net, x, y = problem()
    with pytest.raises(ValueError, match="exactly one of steps"):
        train(net, x, y, lr=0.1)
    with pytest.raises(ValueError, match="lr must be a positive"):
        train(net, x, y, lr=-1.0, steps=1)
    with pytest.raises(ValueError, match="kappa must be a positive"):
        train(net, x, y, lr=0.1, kappa=0.0, steps=1)
    with pytest.raises(ValueError, match=r"y must be a tensor of the net's output shape \(8,\)"):
        train(net, x, y[:3], lr=0.1, steps=1)
    with pytest.raises(NotConvergedError, match="still above until_loss") as failure:
        train(net, x, y, lr=1e-6, until_loss=1e-9, max_steps=3, record_every=2)
    assert failure.value.history.steps == [0, 2, 3]  # what it got to, for the caller
    assert failure.value.history.loss[-1] > 1e-9
