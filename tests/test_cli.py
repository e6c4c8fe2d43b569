"""The command line: the demo and the kernel command end to end on tiny settings, one-line
errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ntkcheck as nc
from ntkcheck.cli import main


@pytest.mark.parametrize("pooling", ["flatten", "gap"])
def test_demo_prints_the_gram_matrix_of_the_first_test_images(capsys, pooling):
    """In the paper's settings (GAP with the first and last layer fixed), float64."""
    assert main(["demo", "--n", "2", "--depth", "3", "--pooling", pooling]) == 0
    out = capsys.readouterr().out
    arch = nc.CNN(depth=3, pooling=pooling, fix_first_last=pooling == "gap")
    images, labels = nc.data.cifar10_exact("test", 2)
    x = nc.data.standardize(images, reference=nc.data.cifar10_exact("train")[0])
    want = arch.ntk(x)
    rows = [line.split() for line in out.splitlines() if line.startswith(" ") and "." in line]
    assert f"{arch!r}\non the first 2 CIFAR-10 test images" in out
    assert [row[0] for row in rows] == [nc.data.CLASSES[c][:8] for c in labels]
    np.testing.assert_allclose([[float(v) for v in row[1:]] for row in rows], want.numpy(),
                               rtol=0, atol=5e-6)  # printed to 5 decimals
    assert "3 pairs in " in out and "ms per pair" in out
    assert main(["demo", "--n", "1", "--depth", "3", "--pooling", pooling]) == 0  # the fewest


def test_bad_arguments_give_one_line_errors(capsys, tmp_path):
    assert main(["demo", "--n", "0"]) == 2
    assert main(["demo", "--depth", "1"]) == 2
    assert main(["demo", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("ntkcheck: error: ") for line in err)


def test_kernel_writes_the_matrices_and_shards_assemble(tmp_path, capsys):
    x1 = np.random.default_rng(0).standard_normal((5, 2, 4, 4))
    x2 = np.random.default_rng(1).standard_normal((3, 2, 4, 4))
    np.save(tmp_path / "x1.npy", x1)
    np.save(tmp_path / "x2.npy", x2.astype(np.float32))  # converted to --dtype (float64)
    common = ["kernel", "--arch", "cnn", "--depth", "4", "--pooling", "gap", "--x1",
              str(tmp_path / "x1.npy"), "--depths", "3,4", "--tile", "2", "--quiet",
              "--device", "cpu"]
    for i in range(2):
        assert main([*common, "--out", str(tmp_path / "gram"), "--shard", f"{i}/2"]) == 0
    assert "shard 1/2: computed" in capsys.readouterr().out
    assert not list((tmp_path / "gram").glob("*.npy"))
    assert main([*common, "--out", str(tmp_path / "gram")]) == 0
    assert main([*common, "--out", str(tmp_path / "cross"), "--x2", str(tmp_path / "x2.npy"),
                 "--kernel", "ntk"]) == 0
    arch = nc.CNN(depth=4, pooling="gap")
    t1, t2 = torch.from_numpy(x1), torch.from_numpy(x2.astype(np.float32)).double()
    for d in (3, 4):
        for name in ("ntk", "nngp"):
            got = np.load(tmp_path / "gram" / f"{name}_depth{d}.npy")
            want = getattr(arch, name)(t1, depths=[d])[d]
            np.testing.assert_allclose(got, want.numpy(), rtol=1e-12, atol=0)
        got = np.load(tmp_path / "cross" / f"ntk_depth{d}.npy")
        np.testing.assert_allclose(got, arch.ntk(t1, t2, depths=[d])[d].numpy(), rtol=1e-12)
    assert not (tmp_path / "cross" / "nngp_depth3.npy").exists()


def test_kernel_by_layer_writes_each_layers_term(tmp_path, capsys):
    x = np.random.default_rng(2).standard_normal((4, 6))
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "layers"
    assert main(["kernel", "--arch", "fc", "--depth", "3", "--x1", str(tmp_path / "x.npy"),
                 "--depths", "2,3", "--by-layer", "--tile", "3", "--quiet", "--device", "cpu",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "ntk_layers_depth3.npy (3 x 4 x 4, torch.float64)" in printed.out
    assert printed.err == ""  # --quiet
    assert sorted(p.name for p in out.glob("*.npy")) == [
        "nngp_depth2.npy", "nngp_depth3.npy", "ntk_layers_depth2.npy", "ntk_layers_depth3.npy"]
    want = nc.FC(depth=3).ntk(torch.from_numpy(x), depths=(2, 3), by_layer=True)
    for d in (2, 3):
        got = np.load(out / f"ntk_layers_depth{d}.npy")
        np.testing.assert_allclose(got, want[d].numpy(), rtol=1e-12, atol=0)
    assert main(["kernel", "--arch", "fc", "--depth", "3", "--x1", str(tmp_path / "x.npy"),
                 "--out", str(tmp_path / "loud")]) == 0
    assert "kernel pairs: 10/10" in capsys.readouterr().err
    assert main(["kernel", "--arch", "fc", "--depth", "3", "--x1", str(tmp_path / "x.npy"),
                 "--by-layer", "--kernel", "nngp", "--out", str(tmp_path / "o")]) == 2
    assert "kernel='nngp' keeps no NTK" in capsys.readouterr().err


def test_kernel_bad_arguments_give_one_line_errors(capsys, tmp_path, monkeypatch):
    np.save(tmp_path / "x.npy", np.zeros((2, 3)))
    np.savez(tmp_path / "x.npz", x=np.zeros((2, 3)))
    x = str(tmp_path / "x.npy")
    out = ["--out", str(tmp_path / "o")]
    assert main(["kernel", "--arch", "fc", "--depth", "3", "--x1", x, "--pooling", "gap",
                 *out]) == 2
    assert main(["kernel", "--arch", "cnn", "--depth", "3", "--x1", x, *out]) == 2  # rank 2
    assert main(["kernel", "--arch", "fc", "--depth", "3", "--x1", str(tmp_path / "no.npy"),
                 *out]) == 2
    assert main(["kernel", "--arch", "fc", "--depth", "3", "--x1", str(tmp_path / "x.npz"),
                 *out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("ntkcheck: error: ") for line in err)
    assert "--pooling and --filter-size are for --arch cnn" in err[0]
    assert "(n, C, H, W)" in err[1] and "--x1" in err[3]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["kernel", "--arch", "fc", "--depth", "3", "--x1", x, *out, "--device",
                 "cuda"]) == 2
    assert "--device cuda: no CUDA device is available here" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["kernel", "--arch", "fc", "--depth", "3", "--x1", x, *out, "--shard", "2/2"])
    assert "expected I/K with 0 <= I < K" in capsys.readouterr().err
