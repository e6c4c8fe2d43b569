"""Gradient descent in the paper's setting: stability, monotone loss, what is recorded."""

from __future__ import annotations

import math

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


def test_each_layers_kernel_change_is_recorded():
    """layer_kernel_change: ||H_h(t) - H_h(0)|| / ||H_h(0)|| of each layer's term, 0 at the
    start, NaN for the fixed first and readout layers."""
    _, x, y = problem()
    net = nc.FC(depth=4, fix_first_last=True).network(16, (6,), seed=1, dtype=torch.float64)
    before = nc.empirical_ntk(net, x, by_layer=True)
    history = train(net, x, y, lr=0.5 * max_stable_lr(net, x), steps=40, record_every=20)
    after = nc.empirical_ntk(net, x, by_layer=True)
    first, last = history.layer_kernel_change[0], history.layer_kernel_change[-1]
    assert len(history.layer_kernel_change) == 3 and first[1:3] == [0.0, 0.0]
    assert all(math.isnan(v) for v in (first[0], first[3], last[0], last[3]))
    for h in (1, 2):  # the trained hidden layers
        want = float((after[h] - before[h]).norm() / before[h].norm())
        assert last[h] == pytest.approx(want, rel=1e-9) and want > 0
    change = after.sum(0) - before.sum(0)  # and the whole kernel's, both norms
    assert history.kernel_change_fro[-1] == pytest.approx(
        float(change.norm() / before.sum(0).norm()), rel=1e-9)
    assert history.kernel_change_op[-1] == pytest.approx(
        float(torch.linalg.svdvals(change)[0]), rel=1e-9)
    initial = {name: p.detach() for name, p in nc.FC(depth=4, fix_first_last=True).network(
        16, (6,), seed=1, dtype=torch.float64).named_parameters()}
    trained = {name: p.detach() for name, p in net.named_parameters() if p.requires_grad}
    assert set(history.weight_change[-1]) == set(trained) and len(trained) == 2
    for name, p in trained.items():
        want = float((p - initial[name]).norm() / initial[name].norm())
        assert history.weight_change[-1][name] == pytest.approx(want, rel=1e-9) and want > 0


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


def test_the_stable_rate_is_two_over_the_top_eigenvalue_of_kappa_squared_h():
    net, x, y = problem()
    top = float(torch.linalg.eigvalsh(nc.empirical_ntk(net, x)).max())
    assert max_stable_lr(net, x) == pytest.approx(2 / top, rel=1e-12)  # kappa = 1
    assert max_stable_lr(net, x, kappa=0.5) == pytest.approx(8 / top, rel=1e-12)
    assert max_stable_lr(net, x, kappa=1e-3) == pytest.approx(2e6 / top, rel=1e-12)
    limit = train(net, x, y, lr=0.5 * max_stable_lr(net, x), steps=0).max_stable_lr
    with pytest.raises(ValueError, match="is not stable"):  # "at or above" it
        train(problem()[0], x, y, lr=limit, steps=1)


def test_inputs_that_give_no_gradient_train_nothing_and_say_so_with_nan():
    """x = 0: the paper's nets have no bias, so f = 0 and H = 0; every rate is stable and the
    relative kernel changes, ||H(t) - H(0)|| / ||H(0)||, are NaN (0 / 0), not an error."""
    net, x, y = problem()
    zero = torch.zeros_like(x)
    assert max_stable_lr(net, zero) == math.inf
    history = train(net, zero, y, lr=1.0, steps=2, record_every=1)
    assert history.max_stable_lr == math.inf and history.loss[0] == history.loss[-1]
    assert all(math.isnan(v) for v in history.kernel_change_fro)
    assert all(math.isnan(v) for layers in history.layer_kernel_change for v in layers)
    assert history.kernel_change_op == [0.0, 0.0, 0.0]


def test_defaults_record_every_100_steps_silently(capsys):
    net, x, y = problem(width=16)
    history = train(net, x, y, lr=0.5 * max_stable_lr(net, x), steps=150)
    assert history.steps == [0, 100, 150]
    assert capsys.readouterr().err == ""


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
    for lr in (-1.0, 0.0):
        with pytest.raises(ValueError, match="lr must be a positive"):
            train(net, x, y, lr=lr, steps=1)
    for name in ("record_every", "max_steps"):
        with pytest.raises(ValueError, match=f"{name} must be >= 1; got 0"):
            train(net, x, y, lr=0.1, until_loss=1e-3, **{name: 0})
    with pytest.raises(ValueError, match="kappa must be a positive"):
        train(net, x, y, lr=0.1, kappa=0.0, steps=1)
    with pytest.raises(ValueError, match=r"y must be a tensor of the net's output shape \(8,\)"):
        train(net, x, y[:3], lr=0.1, steps=1)
    with pytest.raises(NotConvergedError, match="still above until_loss") as failure:
        train(net, x, y, lr=1e-6, until_loss=1e-9, max_steps=3, record_every=2)
    assert failure.value.history.steps == [0, 2, 3]  # what it got to, for the caller
    assert failure.value.history.loss[-1] > 1e-9


class Stop(Exception):
    """Stands in for Ctrl-C or a killed job, at a chosen step."""


def steps_seen(seen, stop_at=None):
    """An on_step that lists the steps it sees, and stops the run at ``stop_at``."""
    def on_step(step, loss):
        seen.append(step)
        if step == stop_at:
            raise Stop
    return on_step


def test_a_stopped_run_continues_from_its_checkpoint_as_if_never_stopped(tmp_path):
    net, x, y = problem(width=64)
    lr = 0.5 * max_stable_lr(net, x)
    whole = train(net, x, y, lr=lr, steps=40, record_every=5)
    path, seen = tmp_path / "run.pt", []
    with pytest.raises(Stop):  # saved at every step (checkpoint_every=0), then stopped
        train(problem(width=64)[0], x, y, lr=lr, steps=40, record_every=5, checkpoint=path,
              checkpoint_every=0, on_step=steps_seen(seen, stop_at=23))
    resumed_net, seen = problem(width=64)[0], []
    resumed = train(resumed_net, x, y, lr=lr, steps=40, record_every=5, checkpoint=path,
                    on_step=steps_seen(seen))
    assert seen == list(range(24, 41))  # it took only the steps the first run had not
    assert resumed.steps == whole.steps == list(range(0, 41, 5))
    for got, want in [(resumed.loss, whole.loss), (resumed.kernel_change_fro,
                                                   whole.kernel_change_fro)]:
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-12, atol=0)
    for (name, got), want in zip(resumed_net.named_parameters(), net.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0, msg=name)


def test_more_steps_continue_a_run_that_ran_out(tmp_path):
    net, x, y = problem(width=64)
    lr = 0.5 * max_stable_lr(net, x)
    whole = train(net, x, y, lr=lr, until_loss=1e-3, record_every=1000)
    path = tmp_path / "run.pt"
    with pytest.raises(NotConvergedError):  # the checkpoint is written when it gives up
        train(problem(width=64)[0], x, y, lr=lr, until_loss=1e-3, max_steps=10,
              record_every=1000, checkpoint=path, checkpoint_every=1e9)
    seen = []
    resumed = train(problem(width=64)[0], x, y, lr=lr, until_loss=1e-3, record_every=1000,
                    checkpoint=path, on_step=steps_seen(seen))
    assert seen[0] == 11 and resumed.steps[-1] == whole.steps[-1] > 11
    assert resumed.steps == [0, 10, *whole.steps[1:]]  # also where the first run stopped
    assert resumed.kernel_change_fro[-1] == pytest.approx(whole.kernel_change_fro[-1],
                                                          rel=1e-10)


def test_progress_counts_the_steps_left_and_checkpoints_wait_checkpoint_every(tmp_path,
                                                                             capsys):
    net, x, y = problem(width=16)
    lr, path = 0.5 * max_stable_lr(net, x), tmp_path / "run.pt"
    with pytest.raises(Stop):
        train(net, x, y, lr=lr, steps=5, checkpoint=path, checkpoint_every=0,
              on_step=steps_seen([], stop_at=3))
    capsys.readouterr()

    def saved_step():
        return torch.load(path, weights_only=True)["step"]

    seen = []  # the checkpoint's step at the end of each step
    train(problem(width=16)[0], x, y, lr=lr, steps=5, checkpoint=path, checkpoint_every=1e9,
          progress=True, on_step=lambda step, loss: seen.append(saved_step()))
    assert seen == [3, 3] and saved_step() == 5  # steps 4 and 5 saved only at the end
    assert capsys.readouterr().err.rstrip().rsplit("\r", 1)[-1].startswith("steps: 2/2 ")


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    net, x, y = problem(width=64)
    lr = 0.5 * max_stable_lr(net, x)
    path = tmp_path / "run.pt"
    train(net, x, y, lr=lr, steps=20, checkpoint=path)
    with pytest.raises(ValueError, match=r"belongs to a different run \(initial differ\)"):
        train(problem(width=64, seed=1)[0], x, y, lr=lr, steps=30, checkpoint=path)
    with pytest.raises(ValueError, match=r"belongs to a different run \(y, lr differ\)"):
        train(problem(width=64)[0], x, -y, lr=lr / 2, steps=30, checkpoint=path)
    with pytest.raises(ValueError, match="is at step 20, past steps=10"):
        train(problem(width=64)[0], x, y, lr=lr, steps=10, checkpoint=path)
    assert train(problem(width=64)[0], x, y, lr=lr, steps=20,
                 checkpoint=path).steps == [0, 20]  # finished: its history, as it was
    zero = tmp_path / "zero.pt"
    for _ in range(2):  # a checkpoint at step 0 records step 0 once
        assert train(problem(width=64)[0], x, y, lr=lr, steps=0, checkpoint=zero).steps == [0]
    state = torch.load(path, weights_only=True)
    del state["history"]["kernel_change_op"]  # as from a version that recorded less
    torch.save(state, path)
    with pytest.raises(ValueError, match="is not a training checkpoint of this version"):
        train(problem(width=64)[0], x, y, lr=lr, steps=30, checkpoint=path)
    path.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="is not a training checkpoint"):
        train(problem(width=64)[0], x, y, lr=lr, steps=30, checkpoint=path)
    with pytest.raises(ValueError, match="checkpoint_every must be a number of seconds"):
        train(problem(width=64)[0], x, y, lr=lr, steps=30, checkpoint_every=-1)
