"""studies/random_features.py: on CIFAR-10 images, each row regresses with what it names (the
exact kernels, one net's empirical NTK or its readout layer's term, the mean kernel of the
first nets), each layer row compares the terms it names, and a stopped run resumes from the
kernels it saved."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

import ntkcheck as nc
from ntkcheck.studies.table1 import label_targets
from tests.scripts import load_script, run_main

features = load_script("studies/random_features.py")


def predicted(k_train, k_test, labels):
    alpha = np.linalg.solve(k_train.double().numpy(), label_targets(labels).numpy())
    return (k_test.double().numpy() @ alpha).argmax(1)


def run(tmp_path, monkeypatch):
    run_main(features, monkeypatch,
             "--out", str(tmp_path / "out"), "--work", str(tmp_path / "w"), "--data", "exact",
             "--n-train", "24", "--n-test", "16", "--depth", "3", "--widths", "4,8",
             "--seeds", "2", "--max-memory-gib", "0.001")
    return list(csv.DictReader(open(tmp_path / "out" / "random_features.csv")))


def layer_rows(tmp_path):
    return list(csv.DictReader(open(tmp_path / "out" / "random_features_layers.csv")))


def test_each_row_regresses_with_the_kernel_it_names(tmp_path, monkeypatch):
    rows = run(tmp_path, monkeypatch)
    assert len(rows) == 2 + 2 * 2 * 3 and {"random_features.md", "random_features.png"} <= {
        p.name for p in (tmp_path / "out").iterdir()}
    train, labels = nc.data.cifar10_exact("train", 24)
    test, test_labels = nc.data.cifar10_exact("test", 16)
    x, z = (nc.data.standardize(a, reference=train) for a in (train, test))
    arch = nc.CNN(depth=3, pooling="flatten")

    def check(kernel, name, width, nets, seed, exact=None):
        got = predicted(kernel[:24, :24], kernel[24:, :24], labels)
        row = next(r for r in rows if (r["kernel"], r["width"], r["nets"], r["seed"])
                   == (name, width, nets, seed))
        assert row["accuracy"] == f"{100 * np.mean(got == test_labels):.2f}", row
        if exact is not None:
            theta = exact[:24, :24]
            error = float(torch.linalg.norm(kernel[:24, :24].double() - theta)
                          / torch.linalg.norm(theta))
            assert float(row["relative_error"]) == pytest.approx(error, rel=1e-3), row

    everything = torch.cat([x, z])
    exact = {"NTK": arch.ntk(everything), "NNGP": arch.nngp(everything)}
    for name in ("NTK", "NNGP"):
        check(exact[name], name, "exact", "", "")
    nets = [arch.network(8, (3, 32, 32), seed=s) for s in (0, 1)]
    whole = [nc.empirical_ntk(net, everything.float(), implementation="structured")
             for net in nets]
    for layer in (layer for net in nets for layer in net.weight_layers()[:-1]):
        layer.weight.requires_grad_(False)  # the readout alone: the NNGP's random features
    readout = [nc.empirical_ntk(net, everything.float()) for net in nets]
    for name, kernels in (("NTK", whole), ("NNGP", readout)):
        check(kernels[1], name, "8", "1", "1", exact[name])
        check((kernels[0].double() + kernels[1].double()) / 2, name, "8", "2", "", exact[name])
    assert all(r["ridge"] == "0" for r in rows)

    # one term of the exact NTK from the net(s), and the reverse (Eq. 9's term h)
    exact_layers = arch.ntk(everything, by_layer=True)
    terms = [nc.empirical_ntk(arch.network(8, (3, 32, 32), seed=s), everything.float(),
                              by_layer=True, implementation="structured") for s in (0, 1)]
    layers = layer_rows(tmp_path)
    assert len(layers) == 2 * 3 * (2 + 2 + 2)  # depth 3: per width two nets and a mean of two
    whole = torch.linalg.norm(exact["NTK"][:24, :24])
    for mine, nets_, seed in ((terms[1].double(), "1", "1"),
                              ((terms[0].double() + terms[1].double()) / 2, "2", "")):
        for h in (1, 2, 3):
            error = torch.linalg.norm(mine[h - 1, :24, :24] - exact_layers[h - 1, :24, :24])
            size = torch.linalg.norm(exact_layers[h - 1, :24, :24])
            for swap, kernel in (
                    (features.SWAPS[0], exact["NTK"] - exact_layers[h - 1] + mine[h - 1]),
                    (features.SWAPS[1], mine.sum(0) - mine[h - 1] + exact_layers[h - 1])):
                got = predicted(kernel[:24, :24], kernel[24:, :24], labels)
                row = next(r for r in layers if (r["kernel"], r["width"], r["nets"], r["seed"],
                                                 r["layer"]) == (swap, "8", nets_, seed, str(h)))
                assert row["accuracy"] == f"{100 * np.mean(got == test_labels):.2f}", row
                relative = torch.linalg.norm(kernel[:24, :24] - exact["NTK"][:24, :24]) / whole
                assert float(row["relative_error"]) == pytest.approx(float(relative), rel=1e-3)
                assert float(row["term_relative_error"]) == pytest.approx(float(error / size),
                                                                          rel=1e-3)
                assert float(row["term_of_whole"]) == pytest.approx(float(size / whole),
                                                                    rel=1e-3)


def test_seeds_per_width():
    assert features.seeds_per_width("16,32", "3") == {16: 3, 32: 3}
    assert features.seeds_per_width("16,32", "3,1") == {16: 3, 32: 1}
    for bad in ("3,1,1", "0"):
        with pytest.raises(SystemExit, match="--seeds: one count >= 1, or one per width"):
            features.seeds_per_width("16,32", bad)


def test_a_stopped_run_resumes_from_the_saved_kernels(tmp_path, monkeypatch):
    first = run(tmp_path, monkeypatch)
    (tmp_path / "w" / "net_w8_s1.pt").unlink()  # as if stopped before the last net
    computed = []
    empirical_ntk = nc.empirical_ntk

    def counted(net, *args, **kwargs):
        computed.append(net)
        return empirical_ntk(net, *args, **kwargs)

    monkeypatch.setattr(nc, "empirical_ntk", counted)
    again = run(tmp_path, monkeypatch)
    assert len(computed) == 1
    recomputed = [i for i, r in enumerate(first) if (r["width"], r["seed"]) == ("8", "1")]
    for i, (a, b) in enumerate(zip(first, again, strict=True)):
        if i in recomputed:  # its own seconds; the rest as before
            a, b = ({k: v for k, v in r.items() if k != "seconds"} for r in (a, b))
        assert a == b
