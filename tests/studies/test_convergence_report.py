"""The convergence studies' fits, verdicts and figures, on rows made up here with known
slopes (the end-to-end runs in test_convergence only check that they are there)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

from ntkcheck.studies import convergence_report as report
from ntkcheck.studies.convergence import BOUND_SLOPES

WIDTHS = (8, 16, 32, 64)


def _rows(metric, values, *, arch="fc", depth=2, kappa=1.0):
    """Rows of one (arch, depth, kappa, metric): ``values`` is {width: [value per seed]}."""
    return [{"arch": arch, "depth": depth, "width": width, "seed": seed, "kappa": kappa,
             "metric": metric, "value": value}
            for width, per_seed in values.items() for seed, value in enumerate(per_seed)]


def _power_law(slope, scale=3.0, seeds=2):
    """Every seed the same value scale * width^slope: the bootstrap has nothing to vary."""
    return {w: [scale * w**slope] * seeds for w in WIDTHS}


def test_the_log_log_slope_of_a_power_law_is_its_exponent():
    widths = np.array(WIDTHS, dtype=float)
    assert report.log_log_slope(widths, 3.0 * widths**-0.3) == pytest.approx(-0.3, abs=1e-12)
    assert report.log_log_slope(widths, 0.2 * widths**0.7) == pytest.approx(0.7, abs=1e-12)


def test_fits_give_each_groups_slope_in_order_and_skip_what_cannot_be_fitted():
    rows = (_rows("rel_fro", _power_law(-1 / 3)) + _rows("max_entry", _power_law(-0.25))
            + _rows("layer10_rel_fro", _power_law(-0.5)) + _rows("layer2_rel_fro", _power_law(-0.2))
            + _rows("layer1_rel_fro", _power_law(-0.1))
            + _rows("rel_fro", {8: [1.0], 16: [0.5]}, depth=3)  # two widths: enough
            + _rows("rel_fro", {8: [1.0, 2.0]}, depth=5)  # one width: no slope
            + _rows("steps", _power_law(1.0)))  # not a fitted metric
    found = report.fits("init", rows)
    assert [(f["depth"], f["metric"]) for f in found] == [
        (2, "max_entry"), (2, "rel_fro"), (2, "layer1_rel_fro"), (2, "layer2_rel_fro"),
        (2, "layer10_rel_fro"), (3, "rel_fro")]
    slopes = [-0.25, -0.3333, -0.1, -0.2, -0.5, -1.0]  # rounded to 4 places
    for fit, slope in zip(found, slopes, strict=True):
        assert fit == {"arch": "fc", "depth": fit["depth"], "metric": fit["metric"],
                       "slope": slope, "slope_ci": [slope, slope], "bound_slope": -0.25}


def test_agreement_fits_keep_each_kappa_apart():
    rows = (_rows("nn_vs_ntk", _power_law(-0.2), kappa=0.1)
            + _rows("nn_vs_ntk", _power_law(-0.4), kappa=1.0))
    found = report.fits("agreement", rows)
    assert [(f["kappa"], f["slope"]) for f in found] == [(0.1, -0.2), (1.0, -0.4)]
    assert all(f["bound_slope"] == round(BOUND_SLOPES["agreement"], 4) for f in found)


def test_the_interval_is_the_seeded_bootstrap_over_each_widths_seeds():
    """The 2.5th and 97.5th percentiles of the slopes of BOOTSTRAP resamples, each drawing
    every width's seeds with replacement, written out here with the same seeded draws."""
    values = {8: [1.0, 1.3, 0.8], 16: [0.9, 0.6, 0.75], 32: [0.5, 0.62, 0.4], 64: [0.41, 0.3, 0.5]}
    (fit,) = report.fits("init", _rows("rel_fro", values), seed=7)
    rng = np.random.default_rng(7)
    logw = np.log(list(values))
    samples = [np.array(v) for v in values.values()]
    boot = [np.polyfit(logw, np.log([rng.choice(s, len(s)).mean() for s in samples]), 1)[0]
            for _ in range(1000)]
    assert fit["slope_ci"] == [round(float(q), 4) for q in np.percentile(boot, [2.5, 97.5])]
    assert fit["slope"] == round(float(np.polyfit(logw, np.log([s.mean() for s in samples]),
                                                  1)[0]), 4)
    assert fit["slope_ci"][0] < fit["slope"] < fit["slope_ci"][1]
    assert report.fits("init", _rows("rel_fro", values), seed=7) == [fit]  # reproducible


@pytest.mark.parametrize(("low", "high", "verdict", "rate"), [
    (-0.6, -0.3, "decays faster than the bound requires", "consistent with m^-1/2"),
    (-0.3, -0.25, "consistent with the bound shape", "slower than m^-1/2"),  # edge: inside
    (-0.25, -0.2, "consistent with the bound shape", "slower than m^-1/2"),  # edge: inside
    (-0.2, -0.1, "decays slower than the bound shape", "slower than m^-1/2"),
    (-0.8, -0.6, "decays faster than the bound requires", "faster than m^-1/2"),
    (-0.5, -0.4, "decays faster than the bound requires", "consistent with m^-1/2"),
    (-0.6, -0.5, "decays faster than the bound requires", "consistent with m^-1/2"),
])
def test_each_slope_gets_its_verdict_against_the_bound_and_m_to_the_minus_half(
        low, high, verdict, rate):
    fit = {"arch": "cnn-gap", "depth": 3, "metric": "rel_fro", "slope": (low + high) / 2,
           "slope_ci": [low, high]}
    words = report._words("init", "quick", [fit], {"depths": (3,)}, [], [])
    assert (f"- cnn-gap, depth 3, rel_fro: slope {(low + high) / 2:.3f} [{low:.3f}, "
            f"{high:.3f}]: {verdict}; {rate}.") in words.splitlines()


PARAGRAPHS = {"init": "layer<h>_rel_fro is", "drift": "layer<h>_kernel_change is",
              "agreement": "nn_vs_ntk is"}


@pytest.mark.parametrize("study", PARAGRAPHS)
def test_the_words_explain_the_studys_own_metrics_and_list_its_scales_and_failures(study):
    fit = {"arch": "fc", "depth": 2, "metric": "m", "slope": -0.3, "slope_ci": [-0.4, -0.2],
           "kappa": 0.5}
    scales = [{"arch": "fc", "depth": 2, "kappa": 0.5, "lambda_min": 0.0123,
               "lambda_max": 45.6, "displacement": 7.89}]
    failed = [{"arch": "fc", "depth": 2, "width": 16, "seed": 1, "kappa": 0.5,
               "steps": 1000, "loss": 0.0456}]
    found = [fit] if study == "agreement" else [{k: v for k, v in fit.items() if k != "kappa"}]
    words = report._words(study, "quick", found, {"widths": (16, 32), "seeds": 2},
                          failed, scales)
    lines = words.splitlines()
    assert lines[0] == f"# {study} study (quick preset)"
    assert "Last run's sweep: widths 16, 32; seeds 2." in words
    assert f"slope {BOUND_SLOPES[study]:.3g}; known empirical rate: -0.5." in words
    for other, opening in PARAGRAPHS.items():
        assert any(line.startswith(opening) for line in lines) == (other == study)
    kappa = ", kappa 0.5" if study == "agreement" else ""
    assert f"- fc, depth 2{kappa}, m: slope -0.300 [-0.400, -0.200]" in words
    assert (f"- fc, depth 2{kappa}: eigenvalues 0.0123 to 45.6, displacement 7.89"
            in lines)
    assert (f"- fc, depth 2, width 16, seed 1{kappa}: loss 0.0456 x 1/2|y|^2 after 1000 steps"
            in lines)
    quiet = report._words(study, "quick", found, {"seeds": 2}, [], [])
    assert "eigenvalues" not in quiet and "Did not reach" not in quiet


@pytest.fixture
def drawn(monkeypatch):
    """The panels each figure is given, instead of drawing them."""
    calls = []
    monkeypatch.setattr(report, "_panels",
                        lambda study, panels, hue, path: calls.append((study, panels, hue)))
    return calls


def test_the_agreement_figure_has_a_curve_per_kappa(drawn, tmp_path):
    rows = (_rows("nn_vs_ntk", _power_law(-0.2), kappa=0.5)
            + _rows("nn_vs_lin", _power_law(-0.4), kappa=1.0) + _rows("steps", _power_law(1.0)))
    report._figure("agreement", rows, tmp_path / "x.png")
    ((study, panels, hue),) = drawn
    assert [title for title, _, _ in panels] == ["agreement: nn_vs_ntk", "agreement: nn_vs_lin"]
    assert [set(part[hue]) for _, _, part in panels] == [{"fc, L=2, kappa=0.5"},
                                                         {"fc, L=2, kappa=1.0"}]
    drawn.clear()
    report._figure("init", _rows("rel_fro", _power_law(-0.2)), tmp_path / "x.png")
    assert set(drawn[0][1][1][2]["curve"]) == {"fc, L=2"}  # no kappa outside agreement


def test_the_layer_figure_has_a_panel_per_net_and_a_curve_per_layer(drawn, tmp_path):
    rows = [r for depth in (2, 3) for metric in
            ["kernel_change_fro", "weight_change", "steps"]
            + [f"layer{h}_kernel_change" for h in range(1, depth + 1)]
            for r in _rows(metric, _power_law(-0.2), depth=depth)]
    report._layer_figure("drift", rows, tmp_path / "x.png")
    ((study, panels, hue),) = drawn
    assert [(title, ylabel) for title, ylabel, _ in panels] == [
        ("drift by layer: fc, L=2", "layer<h>_kernel_change"),
        ("drift by layer: fc, L=3", "layer<h>_kernel_change")]
    assert [sorted(set(part[hue])) for _, _, part in panels] == [
        ["layer 1", "layer 2", "whole NTK"], ["layer 1", "layer 2", "layer 3", "whole NTK"]]
    assert set(panels[0][2][panels[0][2][hue] == "whole NTK"]["metric"]) == {
        "kernel_change_fro"}


def test_panels_draw_the_reference_slopes_from_the_narrowest_widths_geometric_mean(
        monkeypatch, tmp_path):
    kept = []
    monkeypatch.setattr(plt, "close", kept.append)
    rows = _rows("rel_fro", {8: [1.0, 4.0], 16: [1.0, 2.0], 32: [0.5, 1.0]})
    frame = report._frame(rows, lambda metric: True)
    frame["curve"] = "one"
    report._panels("init", [(f"panel {i}", "y", frame) for i in range(4)], "curve",
                   tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 10_000
    (fig,) = kept
    axes = fig.axes
    assert [ax.get_visible() for ax in axes] == [True] * 4 + [False] * 2  # 2 rows of 3
    widths = np.array([8.0, 16.0, 32.0])
    start = 2.0  # the geometric mean of 1 and 4, at width 8
    lines = {line.get_label(): line for line in axes[0].get_lines()}
    for label, slope in ((f"theorem's bound shape, slope {BOUND_SLOPES['init']:.3g}", -0.25),
                         ("m^-1/2 (known empirical rate), slope -0.5", -0.5)):
        np.testing.assert_allclose(lines[label].get_xdata(), widths)
        np.testing.assert_allclose(lines[label].get_ydata(), start * (widths / 8) ** slope)
    assert list(axes[0].get_xticks()) == [8, 16, 32]
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["8", "16", "32"]
    assert axes[0].get_xscale() == axes[0].get_yscale() == "log"
