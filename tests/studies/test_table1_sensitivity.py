"""studies/table1_sensitivity.py: the noise it adds has the scale and symmetry it says, each
cell is the regression it names, and --train-sizes regresses from the first images alone."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

import ntkcheck as nc
from ntkcheck.studies.table1 import label_targets
from tests.scripts import load_script, run_main

sensitivity = load_script("studies/table1_sensitivity.py")


def test_noise_is_symmetric_relative_and_standard_normal_in_every_block(monkeypatch):
    monkeypatch.setattr(sensitivity, "BLOCK", 7)  # several blocks, one of them ragged
    n = 200
    k = torch.rand(n, n, dtype=torch.float64) - 0.5
    k = k + k.T
    eps = 1e-3
    noisy = sensitivity.perturbed(k, eps, torch.Generator().manual_seed(0))
    assert torch.equal(noisy, noisy.T)
    e = (noisy - k) / (eps * k.abs())
    parts = {"diagonal": e.diagonal(), "upper": e[torch.triu_indices(n, n, 1).unbind()],
             "diagonal blocks": torch.cat([e[i:i + 7, i:i + 7].triu(1).flatten()
                                           for i in range(0, n, 7)])}
    for name, part in parts.items():
        part = part[part != 0] if name == "diagonal blocks" else part
        assert abs(float(part.mean())) < 0.15, name
        assert float(part.std()) == pytest.approx(1, abs=0.12), name


def solved(k, k_test, labels, ridge=0.0):
    alpha = np.linalg.solve(k.numpy() + ridge * np.eye(len(k)), label_targets(labels).numpy())
    return (k_test.numpy() @ alpha).argmax(1)


def test_each_cell_is_the_regression_it_names():
    n, m = 30, 20
    rng = np.random.default_rng(1)
    labels, test_labels = rng.integers(0, 10, n), rng.integers(0, 10, m)
    f = rng.standard_normal((n + m, 60))
    f[:, :10] += 2 * np.eye(10)[np.concatenate([labels, test_labels])]
    gram = torch.from_numpy(f @ f[:n].T)
    k, kt = gram[:n], gram[n:]
    args = argparse.Namespace(eigvalsh_max=n, ridges="1e-3,10", noise="0,0.05", seeds=2)
    row = sensitivity.sensitivity(k, kt, labels, test_labels, args, round_to_float32=True)
    base = solved(k, kt, labels)
    assert row["accuracy"] == round(100 * np.mean(base == test_labels), 2)
    assert row["predicted_classes"] == base.tolist()
    assert (row["n_train"], row["n_test"]) == (n, m)
    eigenvalues = np.linalg.eigvalsh(k.numpy())
    assert row["condition_eigvalsh"] == pytest.approx(eigenvalues[-1] / eigenvalues[0])
    assert row["smallest_eigenvalue_over_mean_diagonal"] == pytest.approx(
        eigenvalues[0] / np.diag(k.numpy()).mean())
    assert row["float32_kernels"]["predictions_changed"] == 0
    scale = np.diag(k.numpy()).mean()
    for ridge in ("0.001", "10"):
        got = solved(k, kt, labels, float(ridge) * scale)
        assert row["ridge_over_mean_diagonal"][ridge] == {
            "accuracy": round(100 * np.mean(got == test_labels), 2),
            "predictions_changed": int((got != base).sum())}
    assert row["ridge_over_mean_diagonal"]["10"]["predictions_changed"] > 0  # it bites
    assert row["relative_noise"]["0"]["predictions_changed"] == 0
    assert row["ridge_needed"] == row["relative_noise"]["0"]["largest_ridge_needed"] == 0
    assert row["relative_noise"]["0.05"]["predictions_changed"] > 0
    # kernels computed in float32 are not rounded again
    assert sensitivity.sensitivity(k, kt, labels, test_labels, args,
                                   round_to_float32=False)["float32_kernels"] is None


def test_on_cifar_train_sizes_regress_from_the_first_images_alone(tmp_path, monkeypatch):
    out = tmp_path / "sensitivity.json"
    run_main(sensitivity, monkeypatch,
             "--out", str(out), "--data", "exact", "--n-train", "24", "--n-test", "16",
             "--depths", "3", "--tile", "10", "--train-sizes", "12", "--noise", "1e-6",
             "--ridges", "1e-2", "--seeds", "1")
    rows = json.loads(out.read_text())["rows"]
    assert [(r["depth"], r["n_train"], r["n_test"]) for r in rows] == [(3, 12, 16),
                                                                        (3, 24, 16)]
    train, labels = nc.data.cifar10_exact("train", 24)
    test, test_labels = nc.data.cifar10_exact("test", 16)
    x, z = (nc.data.standardize(a, reference=train) for a in (train, test))
    arch = nc.CNN(depth=3, pooling="flatten")
    for m, row in zip((12, 24), rows, strict=True):
        k = arch.ntk(x[:m])  # the first m keep all 24's statistics, as the docstring says
        eigenvalues = np.linalg.eigvalsh(k.numpy())
        assert row["condition_eigvalsh"] == pytest.approx(eigenvalues[-1] / eigenvalues[0],
                                                          rel=1e-6), m
        got = solved(k, arch.ntk(z, x[:m]), labels[:m])
        assert row["accuracy"] == round(100 * np.mean(got == test_labels), 2), m


def test_train_sizes_are_refused_before_the_kernels(tmp_path, monkeypatch):
    monkeypatch.setattr(nc, "kernel_matrix", lambda *a, **k: pytest.fail("kernels ran"))
    with pytest.raises(SystemExit, match=r"--train-sizes: \[30\] are not in 1\.\.24"):
        run_main(sensitivity, monkeypatch, "--out", str(tmp_path / "s.json"), "--data",
                 "exact", "--n-train", "24", "--n-test", "16", "--train-sizes", "30")


def test_against_compares_a_run_with_another_prediction_by_prediction(tmp_path, monkeypatch):
    common = ["--data", "exact", "--n-train", "20", "--n-test", "16", "--depths", "3",
              "--tile", "10", "--train-sizes", "8", "--noise", "1e-6", "--ridges", "1e-2",
              "--seeds", "1"]
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    run_main(sensitivity, monkeypatch, *common, "--out", str(first))
    # the first run's predictions, changed at three images, stand for another precision's
    written = json.loads(first.read_text())
    for row in written["rows"]:
        row["predicted_classes"][:3] = [(c + 1) % 10 for c in row["predicted_classes"][:3]]
    first.write_text(json.dumps(written))
    run_main(sensitivity, monkeypatch, *common, "--out", str(second), "--against", str(first))
    _, test_labels = nc.data.cifar10_exact("test", 16)
    for mine, theirs in zip(json.loads(second.read_text())["rows"], written["rows"],
                            strict=True):
        a, b = np.array(mine["predicted_classes"]), np.array(theirs["predicted_classes"])
        assert mine["against"]["predictions_changed"] == 3
        right, right_theirs = a == test_labels, b == test_labels
        assert mine["against"]["accuracy_minus_reference"] == round(
            100 * (right.mean() - right_theirs.mean()), 2)
        assert mine["against"]["standard_error"] == round(
            100 * (right != right_theirs).sum() ** 0.5 / 16, 2)


def test_against_a_file_that_is_not_a_run_is_refused_before_the_kernels(tmp_path,
                                                                        monkeypatch):
    bad = tmp_path / "bad.json"
    bad.write_text('{"rows": [{"depth": 3}]}')
    monkeypatch.setattr(sensitivity, "standardized_images",
                        lambda *a, **k: pytest.fail("images loaded"))
    with pytest.raises(SystemExit, match=r"--against: .*bad\.json is not a JSON of this"):
        run_main(sensitivity, monkeypatch, "--out", str(tmp_path / "s.json"),
                 "--against", str(bad))


def test_a_noisy_kernel_that_is_not_positive_definite_takes_the_smallest_ridge():
    n = 12
    rng = np.random.default_rng(2)
    labels, test_labels = rng.integers(0, 10, n), rng.integers(0, 10, 5)
    f = rng.standard_normal((n + 5, n))
    f[:, 0] *= 1e-4  # one direction barely there: noise of 1e-2 makes the Gram indefinite
    gram = torch.from_numpy(f @ f[:n].T)
    args = argparse.Namespace(eigvalsh_max=0, ridges="1e-2", noise="1e-2,3", seeds=3)
    row = sensitivity.sensitivity(gram[:n], gram[n:], labels, test_labels, args,
                                  round_to_float32=False)
    assert row["ridge_needed"] == 0
    assert row["relative_noise"]["0.01"]["largest_ridge_needed"] > 0
    assert row["relative_noise"]["0.01"]["seeds_solved"] == 3
    # noise 3 times the kernel leaves no ridge that auto tries enough: recorded, not raised
    assert row["relative_noise"]["3"] == {"seeds_solved": 0}
