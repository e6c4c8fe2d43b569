"""Fits, figures and words for the convergence studies."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .convergence import (
    BOUND_SLOPES,
    FITTED,
    LAYER_METRICS,
    LOSS_TOLERANCE,
    layer_of,
    unconverged,
)

EMPIRICAL_SLOPE = -0.5
BOOTSTRAP = 1000


def _fitted(study: str, metric: object) -> bool:
    """The headline metrics, and the per-layer ones."""
    return metric in FITTED[study] or layer_of(metric, study) is not None


def _groups(rows: Sequence[dict[str, object]], study: str):
    """{(arch, depth, kappa, metric): {width: [value per seed]}} for the fitted metrics."""
    groups: dict[tuple, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if _fitted(study, r["metric"]):
            key = (str(r["arch"]), int(str(r["depth"])), float(str(r["kappa"])), str(r["metric"]))
            groups[key][int(str(r["width"]))].append(float(str(r["value"])))
    return groups


def log_log_slope(widths: Sequence[float] | np.ndarray,
                  values: Sequence[float] | np.ndarray) -> float:
    """Least-squares slope of log value against log width."""
    return float(np.polyfit(np.log(widths), np.log(values), 1)[0])


def fits(study: str, rows: Sequence[dict[str, object]], seed: int = 0) -> list[dict]:
    """Log-log slope of the seed-mean against width per (arch, depth, kappa, metric), with a
    95% bootstrap interval from resampling the seeds of every width."""
    rng = np.random.default_rng(seed)
    out = []
    groups = _groups(rows, study)  # per (arch, depth, kappa): headline metrics, then layers
    for (arch, depth, kappa, metric), by_width in sorted(
            groups.items(), key=lambda g: (*g[0][:3], layer_of(g[0][3], study) or 0, g[0][3])):
        widths = np.array(sorted(by_width), dtype=float)
        if len(widths) < 2:
            continue
        samples = [np.array(by_width[int(w)]) for w in widths]
        slope = log_log_slope(widths, [s.mean() for s in samples])
        boot = [log_log_slope(widths, [rng.choice(s, len(s)).mean() for s in samples])
                for _ in range(BOOTSTRAP)]
        fit = {"arch": arch, "depth": depth, "metric": metric, "slope": round(slope, 4),
               "slope_ci": [round(float(q), 4) for q in np.percentile(boot, [2.5, 97.5])],
               "bound_slope": round(BOUND_SLOPES[study], 4)}
        if study == "agreement":
            fit["kappa"] = kappa
        out.append(fit)
    return out


def _frame(rows: Sequence[dict[str, object]], keep: Callable[[object], bool]) -> Any:
    """The rows whose metric ``keep`` accepts, as a typed DataFrame."""
    import pandas as pd

    frame = pd.DataFrame([r for r in rows if keep(r["metric"])])
    for column in ("width", "depth"):
        frame[column] = frame[column].astype(int)
    frame["value"] = frame["value"].astype(float)
    frame["kappa"] = frame["kappa"].astype(float)
    return frame


def _panels(study: str, panels: list[tuple[str, str, Any]], hue: str, path: Path) -> None:
    """One log-log panel per (title, y label, frame) against width, a curve per ``hue``
    value (seed mean, 2 standard errors), with the bound's and m^-1/2's slopes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    columns = min(len(panels), 3)
    rows_ = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows_, columns, figsize=(6 * columns, 4.6 * rows_), squeeze=False)
    for ax, (title, ylabel, part) in zip(axes.flat, panels, strict=False):
        sns.lineplot(data=part, x="width", y="value", hue=hue, marker="o",
                     errorbar=("se", 2), ax=ax)
        widths = np.array(sorted(part["width"].unique()), dtype=float)
        # constants are unknown: each reference line starts at the geometric mean of the
        # curves' values at the narrowest width
        start = float(np.exp(np.log(part[part["width"] == widths[0]]["value"]).mean()))
        for slope, style, label in ((BOUND_SLOPES[study], "k--", "theorem's bound shape"),
                                    (EMPIRICAL_SLOPE, "k:", "m^-1/2 (known empirical rate)")):
            ax.plot(widths, start * (widths / widths[0]) ** slope, style,
                    label=f"{label}, slope {slope:.3g}")
        ax.set(xscale="log", yscale="log", xlabel="width m", ylabel=ylabel, title=title)
        # the swept widths as plain numbers: log-axis labels like 3x10^1 overlap and hide them
        ax.set_xticks(widths, [f"{w:g}" for w in widths])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, which="both")
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _figure(study: str, rows: Sequence[dict[str, object]], path: Path) -> None:
    """The headline metrics, a panel each, a curve per (arch, depth[, kappa])."""
    frame = _frame(rows, lambda metric: metric in FITTED[study])
    frame["curve"] = frame["arch"] + ", L=" + frame["depth"].astype(str)
    if study == "agreement":
        frame["curve"] += ", kappa=" + frame["kappa"].astype(str)
    _panels(study, [(f"{study}: {metric}", metric.replace("_", " "),
                     frame[frame["metric"] == metric]) for metric in FITTED[study]],
            "curve", path)


def _layer_figure(study: str, rows: Sequence[dict[str, object]], path: Path) -> None:
    """A study by layer: a panel per (arch, depth), a curve per weight layer's metric and
    one for the whole kernel's."""
    name, whole = LAYER_METRICS[study]
    frame = _frame(rows, lambda metric: metric == whole or layer_of(metric, study) is not None)
    frame["curve"] = [f"layer {layer_of(m, study)}" if layer_of(m, study) else "whole NTK"
                      for m in frame["metric"]]
    _panels(study, [(f"{study} by layer: {arch}, L={depth}", name.format("<h>"), part)
                    for (arch, depth), part in frame.groupby(["arch", "depth"])],
            "curve", path)


def _words(study: str, preset: str, found: list[dict], sweep: dict[str, object],
           failed: list[dict[str, object]], scales: list[dict[str, object]]) -> str:
    bound = BOUND_SLOPES[study]
    axes = "; ".join(f"{name} {_listed(value)}" for name, value in sweep.items())
    lines = [f"# {study} study ({preset} preset)", "",
             f"Last run's sweep: {axes}. The fits cover every row of {study}.csv, earlier "
             "runs' into this folder too.", "",
             "Log-log slope of the seed-mean against width, 95% bootstrap interval over seeds. "
             f"Theorem's bound shape: slope {bound:.3g}; known empirical rate: "
             f"{EMPIRICAL_SLOPE:g}. The bound lines in the figure start at the geometric mean "
             "of the curves at the narrowest width (their constants are unknown).", ""]
    if study == "init":
        lines += ["layer<h>_rel_fro is ||H_h(0) - Theta_h|| / ||Theta_h|| for weight layer h "
                  "alone: the empirical NTK summed over that layer's weights against its term "
                  "of Eq. (9), Sigma^(h-1) carried through the K-dots of the layers above "
                  "(init_layers.png draws them).", ""]
    if study == "drift":
        lines += ["layer<h>_kernel_change is ||H_h(T) - H_h(0)|| / ||H_h(0)|| for weight "
                  "layer h alone: how far training moved that layer's term of the empirical "
                  "NTK (drift_layers.png draws them).", ""]
    if study == "agreement":
        lines += ["nn_vs_ntk is |f_nn - f_ntk| with f_ntk = Theta(x, X) Theta^-1 y, kernel "
                  "regression from zero as Theorem 3.2 states it: the net's initial output "
                  "kappa f0 = O(kappa) stays in f_nn, a floor that width does not remove, so "
                  "the theorem takes kappa small. nn_vs_lin compares with the net linearized "
                  "at initialization, kappa f0(x) + H0(x, X) H0^-1 (y - kappa f0(X)), which "
                  "keeps f0 and has no such floor.", ""]
    for f in found:
        low, high = f["slope_ci"]
        kappa = f", kappa {f['kappa']}" if "kappa" in f else ""
        if high < bound:
            verdict = "decays faster than the bound requires"
        elif low > bound:
            verdict = "decays slower than the bound shape"
        else:
            verdict = "consistent with the bound shape"
        rate = ("consistent with m^-1/2" if low <= EMPIRICAL_SLOPE <= high else
                "faster than m^-1/2" if high < EMPIRICAL_SLOPE else "slower than m^-1/2")
        lines.append(f"- {f['arch']}, depth {f['depth']}{kappa}, {f['metric']}: slope "
                     f"{f['slope']:.3f} [{low:.3f}, {high:.3f}]: {verdict}; {rate}.")
    if scales:
        lines += ["", "Scales of the kernel regime, from the analytic kernels on the training "
                  "points: Theta's extreme eigenvalues (the smallest enters Theorem 3.2's width "
                  "bound; their ratio sets the steps to converge) and the weight displacement "
                  "of the net linearized at initialization, in mean over initializations, "
                  "sqrt(y' Theta^-1 y / kappa^2 + tr(Theta^-1 Sigma)): the further the weights "
                  "must move, the wider a net must be to keep its kernel.", ""]
        lines += [f"- {c['arch']}, depth {c['depth']}"
                  + (f", kappa {c['kappa']}" if study == "agreement" else "")
                  + f": eigenvalues {c['lambda_min']:.3g} to {c['lambda_max']:.3g}, "
                  f"displacement {c['displacement']:.3g}" for c in scales]
    if failed:
        lines += ["", f"Did not reach loss <= {LOSS_TOLERANCE:g} x 1/2|y|^2, so no fitted values "
                  "(a re-run with a larger --max-steps retries them):"]
        lines += [f"- {f['arch']}, depth {f['depth']}, width {f['width']}, seed {f['seed']}"
                  + (f", kappa {f['kappa']}" if study == "agreement" else "")
                  + f": loss {f['loss']:.3g} x 1/2|y|^2 after {f['steps']} steps" for f in failed]
    return "\n".join(lines) + "\n"


def _listed(value: object) -> str:
    return ", ".join(map(str, value)) if isinstance(value, tuple | list) else str(value)


def report(study: str, preset: str, rows: Sequence[dict[str, object]], folder: Path, *,
           device: str, versions: dict[str, str], sweep: dict[str, object],
           scales: list[dict[str, object]]) -> None:
    """``sweep``: this run's axes and inputs; the fits cover every row in ``rows``, which
    may also hold configurations of earlier runs into the same folder. ``scales``:
    ``convergence.regime_scales`` of the rows (empty for init, which trains nothing)."""
    found = fits(study, rows)
    failed = unconverged(rows)
    summary = {"study": study, "preset": preset, "sweep": sweep, "device": device,
               "versions": versions, "fits": found}
    if study != "init":  # the studies that train
        summary["unconverged"] = failed
        summary["regime_scales"] = scales
    (folder / f"{study}_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (folder / f"{study}.md").write_text(_words(study, preset, found, sweep, failed, scales))
    if any(r["metric"] in FITTED[study] for r in rows):
        _figure(study, rows, folder / f"{study}.png")
    if any(layer_of(r["metric"], study) for r in rows):
        _layer_figure(study, rows, folder / f"{study}_layers.png")
