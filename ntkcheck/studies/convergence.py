"""The three convergence studies: how fast finite nets approach the NTK theory with width.

- ``init``: |H(0) - Theta| at initialization (Theorem 3.1: O(m^-1/4) up to depth factors),
  also for each weight layer's term of Eq. (9) alone (``by_layer``).
- ``drift``: ||H(T) - H(0)|| after gradient descent to convergence (the proof of Theorem 3.2
  keeps it O(m^-1/6)), also for each weight layer's term alone.
- ``agreement``: |f_nn - f_ntk| on held-out points (Theorem 3.2, small kappa), and
  |f_nn - f_lin| against the net linearized at initialization.

Each configuration (architecture, depth, width, seed[, kappa]) appends tidy rows
``arch, depth, width, seed, kappa, metric, value`` to ``<study>.csv`` (drift and agreement
also record the ``steps`` their net took), rewritten whole after each one, so a re-run with
the same folder skips what is done and Ctrl-C leaves a valid file.
A net in training keeps a checkpoint in ``checkpoints/`` (every minute, and when it stops
unconverged), so a re-run continues it mid-way, and a larger ``max_steps`` continues an
unconverged one from where it stopped.
Inputs are real CIFAR-10 images (the exact-pixel subset): centre crops, unit-norm and
flattened for FC (the theorems' setting), standardized for CNNs; ``drift`` and
``agreement`` use the airplane-vs-automobile slice with labels -1 / +1.
"""

from __future__ import annotations

import functools
import math
import os
import platform
import sys
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .._checks import check_int
from .._progress import Progress
from ..architectures import CNN, FC
from ..data import cifar10_exact, standardize
from ..empirical import empirical_ntk
from ..regression import kernel_regression
from ..training import NotConvergedError, max_stable_lr, train
from ._files import read_rows, write_rows

STUDIES = ("init", "drift", "agreement")
ARCHS = ("fc", "cnn-flatten", "cnn-gap")
"""Architectures a study can sweep: FC, and CNNs with either readout (``architecture``)."""
FIELDS = ("arch", "depth", "width", "seed", "kappa", "metric", "value")
BOUND_SLOPES = {"init": -0.25, "drift": -1 / 6, "agreement": -1 / 6}
"""The theorems' width exponents: m^-1/4 at initialization (Theorem 3.1) and m^-1/6 for
the kernel's movement during training (the proof of Theorem 3.2), which also governs the
agreement of f_nn with f_ntk."""
FITTED = {"init": ("max_entry", "rel_fro"), "drift": ("kernel_change_fro", "weight_change"),
          "agreement": ("nn_vs_ntk", "nn_vs_lin")}
"""Each study's headline metrics (fitted, and drawn in ``<study>.png``)."""
LAYER_METRICS = {"init": ("layer{}_rel_fro", "rel_fro"),
                 "drift": ("layer{}_kernel_change", "kernel_change_fro")}
"""Per weight layer h = 1 .. depth, the relative error (init: ||H_h(0) - Theta_h|| /
||Theta_h||, against Eq. (9)'s term) or change (drift: ||H_h(T) - H_h(0)|| / ||H_h(0)||) of
that layer's term of the NTK alone, and the whole kernel's metric it splits; fitted, and
drawn in ``<study>_layers.png``."""


def layer_of(metric: object, study: str) -> int | None:
    """h for a name of ``study``'s per-layer metric, else None."""
    if study not in LAYER_METRICS:
        return None
    head, _, tail = LAYER_METRICS[study][0].partition("{}")
    name = str(metric)
    middle = name[len(head):len(name) - len(tail)]
    if not (name.startswith(head) and name.endswith(tail) and middle.isdigit()):
        return None
    return int(middle)


def _layer_rows(config: tuple[str, int, int, int, float], study: str,
                values: Sequence[float]) -> list[dict[str, object]]:
    """One row per trained layer h of ``values`` (layer h's at h - 1; NaN: not trained)."""
    return [_row(*config, LAYER_METRICS[study][0].format(h), v)
            for h, v in enumerate(values, start=1) if not math.isnan(v)]


@dataclass(frozen=True)
class Setting:
    """One study's sweep: architectures, depths, widths (geometric), seeds, points."""

    archs: tuple[str, ...]
    depths: tuple[int, ...]
    widths: tuple[int, ...]
    seeds: int
    n: int
    n_test: int = 0
    kappas: tuple[float, ...] = (1.0,)
    crop: int = 8
    max_steps: int = 100_000
    """Gradient-descent steps a configuration of drift or agreement may take to reach
    LOSS_TOLERANCE; one that does not is recorded as unconverged (``UNCONVERGED``)."""


PRESETS: dict[str, dict[str, Setting]] = {
    "init": {
        "quick": Setting(("fc", "cnn-flatten", "cnn-gap"), (2, 3, 5), (32, 64, 128, 256),
                         seeds=4, n=6),
        "paper": Setting(("fc", "cnn-flatten", "cnn-gap"), (2, 3, 5),
                         tuple(2**e for e in range(5, 12)), seeds=6, n=8),
    },
    "drift": {
        "quick": Setting(("fc",), (2, 3), (64, 128, 256, 512, 1024), seeds=3, n=16),
        "paper": Setting(("fc",), (2, 3, 5), tuple(2**e for e in range(5, 13)), seeds=4, n=32),
    },
    "agreement": {
        "quick": Setting(("fc",), (3,), (128, 256, 512, 1024, 2048), seeds=3, n=16,
                         n_test=32, kappas=(0.1, 1.0)),
        "paper": Setting(("fc",), (2, 3), tuple(2**e for e in range(6, 13)), seeds=4, n=32,
                         n_test=64, kappas=(0.1, 1.0)),
    },
}
LOSS_TOLERANCE = 1e-3
"""Training stops at loss <= LOSS_TOLERANCE x its value for f = 0 (1/2 |y|^2)."""
UNCONVERGED = "unconverged_loss"
"""The metric of a configuration whose net did not reach LOSS_TOLERANCE in max_steps: its
final loss / (1/2 |y|^2). Such a configuration has only this row and ``steps``, no fitted
metrics (they are defined at convergence); a re-run with a larger max_steps retries it."""


def architecture(name: str, depth: int) -> FC | CNN:
    if name == "fc":
        return FC(depth=depth)
    return CNN(depth=depth, pooling=name.removeprefix("cnn-"))  # type: ignore[arg-type]


def _crops(images: np.ndarray, crop: int) -> np.ndarray:
    start = (images.shape[1] - crop) // 2
    return images[:, start:start + crop, start:start + crop]


def inputs(arch: str, images: np.ndarray, reference: np.ndarray, crop: int,
           device: torch.device) -> torch.Tensor:
    """Centre crops: standardized (C, H, W) for CNNs; unit-norm flattened for FC."""
    x = standardize(_crops(images, crop), reference=_crops(reference, crop))
    if arch == "fc":
        x = x.flatten(1)
        x = x / x.norm(dim=1, keepdim=True)
    return x.to(device)


@functools.cache
def _split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """A split of the exact-pixel subset, read once per process (every configuration of a
    sweep uses the same images; callers never modify them)."""
    return cifar10_exact(split)


def cifar2(n: int, split: str) -> tuple[np.ndarray, torch.Tensor]:
    """The first n airplane / automobile images of a split, labels -1 / +1."""
    images, labels = _split(split)
    keep = np.flatnonzero(labels < 2)[:n]
    return images[keep], torch.from_numpy(2.0 * labels[keep] - 1.0)


def _row(arch: str, depth: int, width: int, seed: int, kappa: float, metric: str,
         value: float) -> dict[str, object]:
    return {"arch": arch, "depth": depth, "width": width, "seed": seed, "kappa": kappa,
            "metric": metric, "value": value}


@functools.cache
def _init_problem(arch: str, depth: int, n: int, crop: int,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The init study's inputs and their analytic NTK by layer, (depth, n, n): the same for
    every width and seed."""
    images = _split("test")[0][:n]
    x = inputs(arch, images, images, crop, device)
    return x, architecture(arch, depth).ntk(x, by_layer=True)


@dataclass(frozen=True)
class _Training:
    """Where a configuration's net keeps its training checkpoint, and where it reports
    its steps."""

    checkpoint: Path
    note: Callable[[str], None]


def _init(arch: str, depth: int, width: int, seed: int, kappa: float, setting: Setting,
          device: torch.device, _: _Training) -> list[dict[str, object]]:
    x, layers = _init_problem(arch, depth, setting.n, setting.crop, device)
    kernel = architecture(arch, depth)
    net = kernel.network(width, tuple(x.shape[1:]), seed=seed, dtype=x.dtype, device=device)
    errors = empirical_ntk(net, x, by_layer=True) - layers
    error, theta = errors.sum(0), layers.sum(0)
    return [_row(arch, depth, width, seed, kappa, "max_entry",
                 float(error.abs().max() / theta.abs().max())),
            _row(arch, depth, width, seed, kappa, "rel_fro", float(error.norm() / theta.norm()))
            ] + _layer_rows((arch, depth, width, seed, kappa), "init",
                            [float(e.norm() / t.norm()) for e, t in zip(errors, layers,
                                                                       strict=True)])


class _Unconverged(Exception):
    """A configuration's net ran out of steps: ``rows`` record how far it got."""

    def __init__(self, rows: list[dict[str, object]]) -> None:
        super().__init__("did not converge")
        self.rows = rows


def _training_set(arch: str, setting: Setting,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The CIFAR-2 points drift and agreement train on, as ``arch`` takes them; labels."""
    images, y = cifar2(setting.n, "train")
    x = inputs(arch, images, images, setting.crop, device)
    return x, y.to(device=device, dtype=x.dtype)


def regime_scales(rows: Sequence[dict[str, object]], setting: Setting,
                  device: torch.device) -> list[dict[str, object]]:
    """How far the kernel regime must move the weights, per (arch, depth, kappa) in ``rows``,
    from the analytic kernels on the training points.

    Gradient descent on the net linearized at initialization moves the weights by the least
    norm that fits, ||theta(T) - theta(0)||^2 = (y - kappa f0)^T (kappa^2 H0)^-1 (y - kappa f0);
    at infinite width (H0 -> Theta, f0 ~ N(0, Sigma)) its mean is
    ``displacement``^2 = y^T Theta^-1 y / kappa^2 + tr(Theta^-1 Sigma). A net stays near
    H(0) while its weights move little against the scale on which its Jacobian changes, so
    a larger displacement needs a wider net. Also Theta's extreme eigenvalues: the smallest,
    lambda_0, enters Theorem 3.2's width bound, and their ratio sets the steps to converge."""
    kappas: dict[tuple[str, int], set[float]] = {}
    for r in rows:
        kappas.setdefault((str(r["arch"]), int(str(r["depth"]))), set()).add(float(str(r["kappa"])))
    scales = []
    for (arch, depth), its_kappas in sorted(kappas.items()):  # Theta and Sigma once per pair
        x, y = _training_set(arch, setting, device)
        kernels = architecture(arch, depth)
        theta, sigma = kernels.ntk(x), kernels.nngp(x)
        eigenvalues = torch.linalg.eigvalsh(theta)
        fit_y = float(y @ torch.linalg.solve(theta, y))
        fit_f0 = float(torch.linalg.solve(theta, sigma).trace())
        scales += [{"arch": arch, "depth": depth, "kappa": kappa,
                    "lambda_min": float(eigenvalues[0]), "lambda_max": float(eigenvalues[-1]),
                    "displacement": math.sqrt(fit_y / kappa**2 + fit_f0)}
                   for kappa in sorted(its_kappas)]
    return scales


def _fit(arch: str, depth: int, width: int, seed: int, kappa: float, setting: Setting,
         device: torch.device, training: _Training):
    """A net trained to convergence on the CIFAR-2 slice, its data and its history."""
    x, y = _training_set(arch, setting, device)
    net = architecture(arch, depth).network(width, tuple(x.shape[1:]), seed=seed,
                                            dtype=x.dtype, device=device)
    with torch.no_grad():  # kappa f0 on the training points, before training moves it
        f0_train = kappa * net(x)
    lr = 0.5 * max_stable_lr(net, x, kappa=kappa)
    zero_loss = 0.5 * float((y**2).sum())
    name = _named((arch, depth, width, seed, kappa))

    def on_step(step: int, loss: float) -> None:
        training.note(f"| {name}: step {step:,}, relative loss {loss / zero_loss:.1e} "
                      f"(stops at {LOSS_TOLERANCE:.0e})")

    training.checkpoint.parent.mkdir(exist_ok=True)
    try:
        history = train(net, x, y, kappa=kappa, lr=lr, record_every=10_000,
                        until_loss=LOSS_TOLERANCE * zero_loss, max_steps=setting.max_steps,
                        on_step=on_step, checkpoint=training.checkpoint)
    except NotConvergedError as failure:
        got = failure.history
        raise _Unconverged([_row(arch, depth, width, seed, kappa, "steps", got.steps[-1]),
                            _row(arch, depth, width, seed, kappa, UNCONVERGED,
                                 got.loss[-1] / zero_loss)]) from None
    return net, x, y, history, f0_train


def _drift(arch: str, depth: int, width: int, seed: int, kappa: float, setting: Setting,
           device: torch.device, training: _Training) -> list[dict[str, object]]:
    _, _, _, history, _ = _fit(arch, depth, width, seed, kappa, setting, device, training)
    return [_row(arch, depth, width, seed, kappa, "kernel_change_fro",
                 history.kernel_change_fro[-1]),
            _row(arch, depth, width, seed, kappa, "weight_change",
                 max(history.weight_change[-1].values())),
            _row(arch, depth, width, seed, kappa, "steps", history.steps[-1])
            ] + _layer_rows((arch, depth, width, seed, kappa), "drift",
                            history.layer_kernel_change[-1])


def _agreement(arch: str, depth: int, width: int, seed: int, kappa: float, setting: Setting,
               device: torch.device, training: _Training) -> list[dict[str, object]]:
    """f_nn: the trained net kappa f on test points.  f_ntk: kernel regression with the
    analytic NTK, Theta(x, X) Theta^-1 y (what Theorem 3.2 bounds f_nn against; it has an
    O(kappa) floor from kappa f at initialization).  f_lin: the net linearized at
    initialization, kappa f0(x) + H0(x, X) H0^-1 (y - kappa f0(X)), with the empirical
    NTK H0 of kappa f0 (no such floor)."""
    architecture_ = architecture(arch, depth)
    test_images, test_y = cifar2(setting.n_test, "test")
    train_images, _ = cifar2(setting.n, "train")
    x_test = inputs(arch, test_images, train_images, setting.crop, device)
    shape = tuple(x_test.shape[1:])
    init_net = architecture_.network(width, shape, seed=seed, dtype=x_test.dtype,
                                     device=device)
    net, x, y, history, f0_train = _fit(arch, depth, width, seed, kappa, setting, device,
                                        training)
    with torch.no_grad():
        f_nn = kappa * net(x_test)
        f0_test = kappa * init_net(x_test)
    theta = architecture_.ntk
    f_ntk = kernel_regression(theta(x), y, theta(x_test, x))
    h0 = kappa**2 * empirical_ntk(init_net, torch.cat([x, x_test]))
    n = len(x)
    f_lin = f0_test + kernel_regression(h0[:n, :n], y - f0_train, h0[n:, :n])
    test_y = test_y.to(f_nn)
    rows = [("nn_vs_ntk", float((f_nn - f_ntk).abs().mean())),
            ("nn_vs_lin", float((f_nn - f_lin).abs().mean())),
            ("acc_nn", float((torch.sign(f_nn) == test_y).double().mean())),
            ("acc_ntk", float((torch.sign(f_ntk) == test_y).double().mean())),
            ("steps", history.steps[-1])]
    return [_row(arch, depth, width, seed, kappa, m, v) for m, v in rows]


MEASURE: dict[str, Callable[..., list[dict[str, object]]]] = {
    "init": _init, "drift": _drift, "agreement": _agreement}


def _configurations(study: str, setting: Setting) -> list[tuple[str, int, int, int, float]]:
    kappas = setting.kappas if study == "agreement" else (1.0,)
    return [(a, d, w, s, k) for a in setting.archs for d in setting.depths
            for k in kappas for w in setting.widths for s in range(setting.seeds)]


def _named(config: tuple[str, int, int, int, float]) -> str:
    arch, depth, width, seed, kappa = config
    return f"{arch} depth {depth} width {width} seed {seed} kappa {kappa:g}"


def _checkpoint(folder: Path, study: str, config: tuple[str, int, int, int, float]) -> Path:
    arch, depth, width, seed, kappa = config
    return (folder / "checkpoints"
            / f"{study}_{arch}_depth{depth}_width{width}_seed{seed}_kappa{kappa:g}.pt")


def config_key(row: dict[str, object]) -> tuple[str, int, int, int, float]:
    """(arch, depth, width, seed, kappa) of a CSV row."""
    return (str(row["arch"]), int(str(row["depth"])), int(str(row["width"])),
            int(str(row["seed"])), float(str(row["kappa"])))


def _sweep_record(study: str, setting: Setting) -> dict[str, object]:
    """The axes this run swept and its inputs, as the summary records them."""
    record = asdict(setting)
    if study != "agreement":
        del record["kappas"], record["n_test"]
    if study == "init":  # trains nothing
        del record["max_steps"]
    return record


def _ran_out(rows: Sequence[dict[str, object]]) -> list[tuple[tuple, int, float]]:
    """(configuration, steps, final loss / (1/2 |y|^2)) of each unconverged configuration."""
    steps = {config_key(r): int(float(str(r["value"]))) for r in rows if r["metric"] == "steps"}
    return [(config_key(r), steps[config_key(r)], float(str(r["value"])))
            for r in rows if r["metric"] == UNCONVERGED]


def unconverged(rows: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """The configurations recorded as not converged, with their steps and final loss
    (relative to 1/2 |y|^2), as the summary lists them."""
    return [{**dict(zip(FIELDS[:5], key, strict=True)), "steps": steps, "loss": loss}
            for key, steps, loss in _ran_out(rows)]


def _retry(rows: Sequence[dict[str, object]], max_steps: int) -> set[tuple]:
    """Configurations recorded as unconverged after fewer than ``max_steps`` steps."""
    return {key for key, steps, _ in _ran_out(rows) if steps < max_steps}


def versions() -> dict[str, str]:
    import ntkcheck

    return {"python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "ntkcheck": ntkcheck.__version__}


def _checked_ints(name: str, values: Sequence[int], minimum: int, why: str = "") -> tuple[int, ...]:
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum
                         for v in values):
        raise ValueError(f"{name} must be ints >= {minimum}{why}; got {list(values)}")
    return tuple(sorted(set(values)))


def sweep(study: str, preset: str, *, archs: Sequence[str] | None = None,
          depths: Sequence[int] | None = None, widths: Sequence[int] | None = None,
          seeds: int | None = None, kappas: Sequence[float] | None = None,
          max_steps: int | None = None) -> Setting:
    """The preset's sweep with any of its axes replaced, each checked: ``archs`` from
    ``ARCHS``, ``depths`` >= 2 (depth 1 has no hidden layer, so no width), ``widths`` >= 1,
    ``seeds`` >= 1, ``kappas`` > 0 (the agreement study's output scales only), and the
    training budget ``max_steps`` >= 1 (drift and agreement only)."""
    if study not in STUDIES:
        raise ValueError(f"study must be one of {', '.join(STUDIES)}; got {study!r}")
    if preset not in PRESETS[study]:
        raise ValueError(f"preset must be one of {', '.join(PRESETS[study])}; got {preset!r}")
    setting = PRESETS[study][preset]
    if archs is not None:
        if not archs or any(a not in ARCHS for a in archs):
            raise ValueError(f"archs must be names from {', '.join(ARCHS)}; got {list(archs)}")
        setting = replace(setting, archs=tuple(dict.fromkeys(archs)))
    if depths is not None:
        setting = replace(setting, depths=_checked_ints(
            "depths", depths, 2, " (depth 1 has no hidden layer to widen)"))
    if widths is not None:
        setting = replace(setting, widths=_checked_ints("widths", widths, 1))
    if seeds is not None:
        setting = replace(setting, seeds=check_int("seeds", seeds, 1))
    if kappas is not None:
        if study != "agreement":
            raise ValueError(f"kappas apply to the agreement study only; got them for {study}")
        if not kappas or any(isinstance(k, bool) or not isinstance(k, int | float)
                             or not 0 < k < math.inf for k in kappas):
            raise ValueError(f"kappas must be finite numbers > 0; got {list(kappas)}")
        setting = replace(setting, kappas=tuple(sorted({float(k) for k in kappas})))
    if max_steps is not None:
        if study == "init":
            raise ValueError("max_steps applies to the drift and agreement studies only "
                             "(init trains nothing)")
        setting = replace(setting, max_steps=check_int("max_steps", max_steps, 1))
    return setting


def run(study: str, preset: str, out: str | os.PathLike[str], *, device: str = "cpu",
        progress: bool = True, archs: Sequence[str] | None = None,
        depths: Sequence[int] | None = None, widths: Sequence[int] | None = None,
        seeds: int | None = None, kappas: Sequence[float] | None = None,
        max_steps: int | None = None) -> list[dict[str, object]]:
    """Run (or resume) a study and write ``out``/<study>.csv, _summary.json, .png, .md.
    ``archs``, ``depths``, ``widths``, ``seeds``, ``kappas`` and ``max_steps`` replace the
    preset's (see ``sweep``); rows of other configurations already in the folder's CSV stay
    and are fitted with the new ones. A net that does not converge in ``max_steps`` is noted
    on stderr and recorded as ``UNCONVERGED``; the sweep goes on. A net in training resumes
    from its checkpoint in ``out``/checkpoints/ (deleted once the net converges)."""
    setting = sweep(study, preset, archs=archs, depths=depths, widths=widths, seeds=seeds,
                    kappas=kappas, max_steps=max_steps)
    torch_device = torch.device(device)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    csv_path = folder / f"{study}.csv"
    rows = read_rows(csv_path)
    retry = _retry(rows, setting.max_steps)
    rows = [r for r in rows if config_key(r) not in retry]
    done = {config_key(r) for r in rows}
    todo = [c for c in _configurations(study, setting) if c not in done]
    with Progress(len(todo), f"{study} configurations", enabled=progress) as bar:

        def say(text: str) -> None:  # a line of its own, below the progress line
            print(f"{chr(10) if bar.shown else ''}{study}: {text}", file=sys.stderr)

        for config in todo:  # inputs, nets and kernels are float64 throughout
            training = _Training(_checkpoint(folder, study, config), bar.note)
            if training.checkpoint.exists():
                say(f"{_named(config)} resumes from {training.checkpoint}")
            try:
                rows += MEASURE[study](*config, setting, torch_device, training)
            except _Unconverged as failure:  # its checkpoint stays: more steps continue it
                rows += failure.rows
                say(f"{_named(config)} did not converge in {setting.max_steps} steps (loss "
                    f"{failure.rows[1]['value']:.3g} x 1/2|y|^2); recorded as unconverged, "
                    "no fitted values")
            else:
                training.checkpoint.unlink(missing_ok=True)
            write_rows(csv_path, FIELDS, rows)
            bar.note("")
            bar.advance(1)
    with suppress(OSError):  # gone once no net is left part-trained
        (folder / "checkpoints").rmdir()
    from .convergence_report import report  # matplotlib only when writing

    name = (torch.cuda.get_device_name(torch_device) if torch_device.type == "cuda"
            else f"cpu ({torch.get_num_threads()} threads)")
    scales = regime_scales(rows, setting, torch_device) if study != "init" else []
    report(study, preset, rows, folder, device=name, versions=versions(),
           sweep=_sweep_record(study, setting), scales=scales)
    return rows
