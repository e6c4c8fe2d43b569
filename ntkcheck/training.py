"""Full-batch gradient descent in the paper's setting (Sec. 3): the loss
1/2 sum_i (kappa f(theta, x_i) - y_i)^2 over the trainable parameters, with a record of how
far the empirical NTK of kappa f and the weights move from their initial values; a run can
be checkpointed to disk and resumed (gradient descent has no randomness and plain SGD no
state, so a resumed run takes the same steps as one that was never stopped).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

from ._checks import check_int
from ._progress import Progress
from ._saved import fingerprint, save
from .empirical import Implementation, empirical_ntk


@dataclass
class History:
    """What ``train`` recorded at steps 0, record_every, 2 record_every, ... and the last.

    ``ntk[i]`` is H(t) of kappa f at ``steps[i]`` on the training points;
    ``kernel_change_fro`` is ||H(t) - H(0)||_F / ||H(0)||_F, ``kernel_change_op`` is
    ||H(t) - H(0)||_2 (spectral norm, absolute); ``layer_kernel_change[i][h - 1]`` is
    ||H_h(t) - H_h(0)||_F / ||H_h(0)||_F for layer h's term of H (``empirical_ntk``'s
    ``by_layer`` rows); either is NaN where its H(0) is zero (a layer that does not train;
    x = 0, which gives the paper's bias-free nets no gradient); ``weight_change[i][name]`` is
    ||W(t) - W(0)||_F / ||W(0)||_F per trainable parameter.  ``max_stable_lr`` is
    2 / lambda_max(kappa^2 H(0)) (learning rates at or above it diverge).
    """

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    ntk: list[torch.Tensor] = field(default_factory=list)
    kernel_change_fro: list[float] = field(default_factory=list)
    kernel_change_op: list[float] = field(default_factory=list)
    layer_kernel_change: list[list[float]] = field(default_factory=list)
    weight_change: list[dict[str, float]] = field(default_factory=list)
    max_stable_lr: float = math.inf


class NotConvergedError(RuntimeError):
    """``train(until_loss=...)`` used up ``max_steps`` with the loss still above it.

    ``history`` is what was recorded up to then, the last entry at the final step, so a
    caller can report how far the run got (``history.loss[-1]``)."""

    def __init__(self, message: str, history: History) -> None:
        super().__init__(message)
        self.history = history


def _loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor, kappa: float) -> torch.Tensor:
    return 0.5 * ((kappa * net(x) - y) ** 2).sum()


def _relative(change: torch.Tensor, norm: float) -> float:
    """||change||_F / norm; NaN where the kernel it is relative to is zero (a layer that does
    not train, or inputs that give the net no gradient, as x = 0 does)."""
    return float(change.norm()) / norm if norm > 0 else math.nan


def _stable_lr(h0: torch.Tensor) -> float:
    """2 / lambda_max(h0); inf where h0 is zero (x gives no gradient: nothing moves)."""
    top = float(torch.linalg.eigvalsh(h0.double()).max())
    return 2.0 / top if top > 0 else math.inf


def _identity(net: nn.Module, x: torch.Tensor, y: torch.Tensor, kappa: float, lr: float,
              record_every: int) -> dict[str, object]:
    """What a checkpoint must agree on to continue a run: the problem, the net at step 0
    (fingerprints of their values) and the rates."""
    return {"x": fingerprint(x), "y": fingerprint(y), "kappa": kappa, "lr": lr,
            "record_every": record_every,
            "initial": {name: fingerprint(p) for name, p in net.named_parameters()}}


def _resumed(path: Path, identity: dict[str, object]) -> dict[str, object]:
    """The state saved at ``path``, checked to belong to the run ``identity`` describes."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file; save() writes whole files
        raise ValueError(f"checkpoint {str(path)!r} is not a training checkpoint "
                         f"({type(error).__name__}); delete it to start over") from None
    if not (isinstance(state, dict) and set(state) == {"identity", "step", "history", "weights"}
            and set(state["history"]) == {f.name for f in fields(History)}):
        raise ValueError(f"checkpoint {str(path)!r} is not a training checkpoint of this "
                         "version of ntkcheck; delete it to start over")
    saved = state["identity"]

    def same(key: str, value: object) -> bool:  # rates are recomputed: last bits may differ
        if isinstance(value, float) and isinstance(saved.get(key), float):
            return math.isclose(saved[key], value, rel_tol=1e-9)
        return bool(saved.get(key) == value)

    differ = [k for k, v in identity.items() if not same(k, v)]
    if differ:
        raise ValueError(f"checkpoint {str(path)!r} belongs to a different run "
                         f"({', '.join(differ)} differ); delete it to start over, or pass "
                         "another checkpoint path")
    return state


def max_stable_lr(
    net: nn.Module, x: torch.Tensor, *, kappa: float = 1.0,
    implementation: Implementation = "auto",
) -> float:
    """2 / lambda_max(kappa^2 H(0)): gradient descent on the linearized net diverges at or
    above this learning rate."""
    return _stable_lr(kappa**2 * empirical_ntk(net, x, implementation=implementation))


def train(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    kappa: float = 1.0,
    lr: float,
    steps: int | None = None,
    until_loss: float | None = None,
    max_steps: int = 100_000,
    record_every: int = 100,
    implementation: Implementation = "auto",
    progress: bool = False,
    on_step: Callable[[int, float], None] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: float = 60.0,
) -> History:
    """Train ``net`` in place by full-batch gradient descent on
    1/2 sum_i (kappa f(x_i) - y_i)^2 and return its ``History``.

    Stop after ``steps`` steps, or once the loss is <= ``until_loss``; a ``NotConvergedError``
    (carrying the history) if ``max_steps`` steps do not get it there.
    ``y`` has the net's output shape, (n,) or (n, k).  A learning rate at or above
    2 / lambda_max(kappa^2 H(0)) is refused: gradient descent would diverge on the
    linearized net; the error gives the largest stable rate.  ``on_step(step, loss)`` is
    called after every step.

    ``checkpoint``: a file that holds the run's state (weights, step, history), written at
    most every ``checkpoint_every`` seconds and when the run ends, converged or not.  If it
    exists, the run continues from it: ``net`` must be the same net at step 0 (and ``x``,
    ``y``, ``kappa``, ``lr``, ``record_every`` the same), else a ValueError; a larger
    ``max_steps`` continues a run that ran out of steps.  The file stays; delete it to start
    over.
    """
    if (steps is None) == (until_loss is None):
        raise ValueError("give exactly one of steps=... or until_loss=...")
    if steps is not None:
        check_int("steps", steps, 0)
    check_int("record_every", record_every, 1)
    check_int("max_steps", max_steps, 1)
    if not (isinstance(checkpoint_every, int | float) and checkpoint_every >= 0):
        raise ValueError(f"checkpoint_every must be a number of seconds >= 0; "
                         f"got {checkpoint_every!r}")
    if not (isinstance(kappa, int | float) and kappa > 0):
        raise ValueError(f"kappa must be a positive number; got {kappa!r}")
    if not (isinstance(lr, int | float) and lr > 0):
        raise ValueError(f"lr must be a positive number; got {lr!r}")
    params = {name: p for name, p in net.named_parameters() if p.requires_grad}
    with torch.no_grad():
        out = net(x)
    if not isinstance(y, torch.Tensor) or y.shape != out.shape:
        raise ValueError(f"y must be a tensor of the net's output shape {tuple(out.shape)}; "
                         f"got {tuple(y.shape) if isinstance(y, torch.Tensor) else type(y)}")
    y = y.to(dtype=out.dtype, device=out.device)

    def kernel() -> torch.Tensor:
        """(layers, n, n): H of kappa f by layer."""
        return kappa**2 * empirical_ntk(net, x, implementation=implementation, by_layer=True)

    history = History()
    h0_layers = kernel()
    h0 = h0_layers.sum(0)
    history.max_stable_lr = _stable_lr(h0)
    if lr >= history.max_stable_lr:
        raise ValueError(f"lr={lr:g} is not stable: gradient descent diverges for lr >= "
                         f"2 / lambda_max(kappa^2 H(0)) = {history.max_stable_lr:.4g}; "
                         f"use lr < {history.max_stable_lr:.4g}")
    initial = {name: p.detach().clone() for name, p in params.items()}
    h0_norm = float(h0.norm())
    layer_norms = [float(h.norm()) for h in h0_layers]
    path = None if checkpoint is None else Path(checkpoint)
    identity = {} if path is None else _identity(net, x, y, kappa, lr, record_every)

    def record(step: int, loss: float, layers: torch.Tensor | None = None) -> None:
        layers = kernel() if layers is None else layers
        h = layers.sum(0)
        change = (h - h0).double()
        history.steps.append(step)
        history.loss.append(loss)
        history.ntk.append(h.detach().cpu())
        history.kernel_change_fro.append(_relative(change, h0_norm))
        history.kernel_change_op.append(float(torch.linalg.matrix_norm(change, ord=2)))
        history.layer_kernel_change.append([
            _relative(now - then, norm)
            for now, then, norm in zip(layers, h0_layers, layer_norms, strict=True)])
        history.weight_change.append({
            name: float((p.detach() - initial[name]).norm() / initial[name].norm())
            for name, p in params.items()})

    def keep(step: int) -> None:
        if path is not None:
            save({"identity": identity, "step": step, "history": asdict(history),
                  "weights": {name: p.detach().cpu() for name, p in params.items()}}, path)

    optimizer = torch.optim.SGD(params.values(), lr=lr)
    limit = steps if steps is not None else max_steps
    step = 0
    if path is not None and path.exists():
        state = _resumed(path, identity)
        step = int(state["step"])  # type: ignore[call-overload]
        if step > limit:
            raise ValueError(f"checkpoint {str(path)!r} is at step {step}, past "
                             f"{'steps' if steps is not None else 'max_steps'}={limit}")
        history = History(**state["history"])  # type: ignore[arg-type]
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(state["weights"][name])  # type: ignore[index]
    loss = _loss(net, x, y, kappa)
    value = float(loss.detach())  # one host read per step, for every use below
    if not history.steps:  # a fresh run (a resumed one has step 0 in its history)
        record(0, value, h0_layers)
    kept = time.monotonic()
    with Progress(limit - step, "steps", enabled=progress) as bar:
        while step < limit and (until_loss is None or value > until_loss):
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            loss = _loss(net, x, y, kappa)
            value = float(loss.detach())
            if step % record_every == 0:
                record(step, value)
            if path is not None and time.monotonic() - kept >= checkpoint_every:
                keep(step)
                kept = time.monotonic()
            if on_step is not None:
                on_step(step, value)
            bar.advance(1)
    if history.steps[-1] != step:
        record(step, value)
    keep(step)
    if until_loss is not None and value > until_loss:
        raise NotConvergedError(f"loss {value:.3g} still above until_loss="
                                f"{until_loss:g} after max_steps={max_steps} steps; "
                                "raise max_steps or lr", history)
    return history
