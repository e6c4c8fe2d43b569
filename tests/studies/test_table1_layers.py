"""studies/table1_layers.py: each row regresses with the sum of exactly its layers' terms,
and on CIFAR-10 images the readout's term alone is the NNGP and all terms are the NTK, also
from the first training images alone (--train-sizes)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

import ntkcheck as nc
from ntkcheck.studies.table1 import label_targets
from tests.scripts import load_script, run_main

layers = load_script("studies/table1_layers.py")


def test_the_kernels_of_a_depth():
    assert layers.subsets(4) == [
        ("all", [1, 2, 3, 4]), ("fixed first and last", [2, 3]), ("layer 1", [1]),
        ("layer 2", [2]), ("layer 3", [3]), ("layer 4", [4]), ("layers 2..4", [2, 3, 4]),
        ("layers 3..4", [3, 4])]
    assert [name for name, _ in layers.subsets(2)] == ["all", "layer 1", "layer 2"]


def predicted(k_train, k_test, labels):
    alpha = np.linalg.solve(k_train.numpy(), label_targets(labels).numpy())
    return (k_test.numpy() @ alpha).argmax(1)


def test_each_row_regresses_with_its_layers_terms_alone():
    depth, n, m = 4, 30, 12
    rng = np.random.default_rng(0)
    labels, test_labels = rng.integers(0, 10, n), rng.integers(0, 10, m)
    features = [rng.standard_normal((n + m, 40)) for _ in range(depth)]
    features[2][:, :10] += 3 * np.eye(10)[np.concatenate([labels, test_labels])]  # layer 3
    terms = torch.from_numpy(np.stack([f @ f[:n].T for f in features]))
    train, test = terms[:, :n], terms[:, n:]
    rows = {r["kernel"]: r for r in layers.rows_of_depth(depth, train, test, labels,
                                                         test_labels)}
    chosen = dict(layers.subsets(depth))
    base = predicted(train.sum(0), test.sum(0), labels)
    for name, row in rows.items():
        mine = [h - 1 for h in chosen[name]]
        got = predicted(train[mine].sum(0), test[mine].sum(0), labels)
        assert row["accuracy"] == f"{100 * np.mean(got == test_labels):.2f}", name
        assert row["changed_vs_all"] == int((got != base).sum()), name
        minus = 100 * (np.mean(got == test_labels) - np.mean(base == test_labels))
        assert float(row["minus_all"]) == pytest.approx(minus, abs=0.006), name
        discordant = ((got == test_labels) != (base == test_labels)).sum()
        assert row["standard_error"] == f"{100 * discordant ** 0.5 / m:.2f}", name
        assert row["ridge"] == "0"
    assert float(rows["layer 3"]["accuracy"]) > float(rows["layer 1"]["accuracy"]) + 30
    assert rows["fixed first and last"]["layers"] == "2-3"


def test_offdiagonal_ratio():
    assert layers.offdiagonal_ratio(torch.ones(3, 3)) == 1
    assert layers.offdiagonal_ratio(torch.eye(3)) == 0
    assert layers.offdiagonal_ratio(torch.tensor([[2.0, 1.0], [1.0, 2.0]])) == 0.5


def test_on_cifar_the_readout_alone_is_the_nngp_and_all_the_ntk(tmp_path, monkeypatch):
    run_main(layers, monkeypatch,
             "--out", str(tmp_path / "out"), "--work", str(tmp_path / "w"), "--data", "exact",
             "--n-train", "24", "--n-test", "16", "--depths", "3,4", "--tile", "10",
             "--train-sizes", "12")
    rows = list(csv.DictReader(open(tmp_path / "out" / "layers.csv")))
    assert [r["n_train"] for r in rows] == ["12"] * 14 + ["24"] * 14
    assert {"layers.md", "layers.png"} <= {p.name for p in (tmp_path / "out").iterdir()}
    train, labels = nc.data.cifar10_exact("train", 24)
    test, test_labels = nc.data.cifar10_exact("test", 16)
    x, z = (nc.data.standardize(a, reference=train) for a in (train, test))
    arch = nc.CNN(depth=4, pooling="flatten")
    for m in (12, 24):  # the first 12 keep all 24's statistics, as the docstring says
        for kernel, name in ((arch.nngp, "layer 4"), (arch.ntk, "all")):
            got = predicted(kernel(x[:m]), kernel(z, x[:m]), labels[:m])
            row = next(r for r in rows if (r["n_train"], r["depth"], r["kernel"])
                       == (str(m), "4", name))
            assert row["accuracy"] == f"{100 * np.mean(got == test_labels):.2f}", (m, name)
