"""kernel_matrix: tiles assemble to the direct kernels, and a folder resumes."""

from __future__ import annotations

import json

import pytest
import torch

import ntkcheck as nc

ARCH = nc.CNN(depth=4, pooling="gap", fix_first_last=True)


def images(n, seed):
    return torch.randn(n, 2, 4, 4, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cross", [False, True], ids=["gram", "cross"])
def test_tiles_assemble_to_the_direct_kernels(cross):
    x1, x2 = images(7, 0), (images(5, 1) if cross else None)
    got = nc.kernel_matrix(ARCH, x1, x2, depths=(3, 4), tile=3, progress=False)
    for d in (3, 4):
        torch.testing.assert_close(got[d].ntk, ARCH.ntk(x1, x2, depths=[d])[d], rtol=1e-12,
                                   atol=0)
        torch.testing.assert_close(got[d].nngp, ARCH.nngp(x1, x2, depths=[d])[d],
                                   rtol=1e-12, atol=0)


@pytest.mark.parametrize("kernel", ["ntk", "nngp"])
def test_one_kernel_alone_is_that_kernel(tmp_path, kernel):
    x = images(5, 6)
    both = nc.kernel_matrix(ARCH, x, depths=(3, 4), tile=2, progress=False)
    alone = nc.kernel_matrix(ARCH, x, depths=(3, 4), tile=2, progress=False, kernel=kernel,
                             out=tmp_path)
    resumed = nc.kernel_matrix(ARCH, x, depths=(3, 4), tile=2, progress=False,
                               kernel=kernel, out=tmp_path)
    for d in (3, 4):
        torch.testing.assert_close(alone[d], getattr(both[d], kernel), rtol=0, atol=0)
        torch.testing.assert_close(resumed[d], alone[d], rtol=0, atol=0)


def counting(monkeypatch, fail_after=None):
    """Count the architecture's tile computations; optionally fail after some."""
    calls = []
    original = type(ARCH)._kernels

    def spy(self, *args, **kwargs):
        if fail_after is not None and len(calls) == fail_after:
            raise KeyboardInterrupt
        calls.append(args[0].shape[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(ARCH), "_kernels", spy)
    return calls


def test_resume_computes_only_the_missing_tiles(tmp_path, monkeypatch):
    x = images(7, 2)
    first = nc.kernel_matrix(ARCH, x, out=tmp_path, tile=3, progress=False)
    tiles = sorted(tmp_path.glob("tile_*.pt"))
    assert len(tiles) == 6  # upper triangle of a 3 x 3 grid of tiles
    tiles[2].unlink()
    calls = counting(monkeypatch)
    again = nc.kernel_matrix(ARCH, x, out=tmp_path, tile=3, progress=False)
    assert len(calls) == 1
    torch.testing.assert_close(again[4].ntk, first[4].ntk, rtol=0, atol=0)


def test_an_interrupted_run_leaves_whole_tiles_and_resumes(tmp_path, monkeypatch):
    x = images(7, 3)
    counting(monkeypatch, fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        nc.kernel_matrix(ARCH, x, out=tmp_path, tile=3, progress=False)
    assert len(list(tmp_path.glob("tile_*.pt"))) == 2
    assert not list(tmp_path.glob("*.partial"))
    monkeypatch.undo()
    calls = counting(monkeypatch)
    got = nc.kernel_matrix(ARCH, x, out=tmp_path, tile=3, progress=False)
    assert len(calls) == 4
    torch.testing.assert_close(got[4].ntk, ARCH.ntk(x), rtol=1e-12, atol=0)


def test_a_folder_is_never_resumed_with_other_inputs(tmp_path):
    x = images(4, 4)
    nc.kernel_matrix(ARCH, x, out=tmp_path, tile=2, progress=False)
    assert json.loads((tmp_path / "manifest.json").read_text())["n1"] == 4
    with pytest.raises(ValueError, match="different computation.*x1"):
        nc.kernel_matrix(ARCH, x + 1, out=tmp_path, tile=2, progress=False)
    with pytest.raises(ValueError, match="depths.*tile|tile"):
        nc.kernel_matrix(ARCH, x, depths=(3, 4), out=tmp_path, tile=3, progress=False)
    with pytest.raises(ValueError, match="different computation.*kernel"):
        nc.kernel_matrix(ARCH, x, out=tmp_path, tile=2, progress=False, kernel="ntk")


def test_bad_arguments():
    with pytest.raises(ValueError, match="tile must be >= 1"):
        nc.kernel_matrix(ARCH, images(2, 5), tile=0)
    with pytest.raises(ValueError, match="depths"):
        nc.kernel_matrix(ARCH, images(2, 5), depths=(9,))
    with pytest.raises(ValueError, match=r"x1 must have shape \(n, C, H, W\)"):
        nc.kernel_matrix(ARCH, torch.randn(3, 4))
    with pytest.raises(ValueError, match="kernel must be one of"):
        nc.kernel_matrix(ARCH, images(2, 5), kernel="ntkk")
