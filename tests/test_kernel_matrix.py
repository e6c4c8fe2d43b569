"""kernel_matrix: tiles assemble to the direct kernels, and a folder resumes."""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os

import pytest
import torch

import ntkcheck as nc
from ntkcheck.kernel_matrix import _share, _tiles

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


@pytest.mark.parametrize("cross", [False, True], ids=["gram", "cross"])
@pytest.mark.parametrize("arch", [ARCH, nc.CNN(depth=4, pooling="flatten")], ids=repr)
def test_layer_terms_in_tiles_are_the_direct_terms(tmp_path, monkeypatch, arch, cross):
    """Split by layer: tiles (computed by shards, then loaded) assemble to arch.ntk's terms,
    each (d, n1, n2) with off-diagonal tiles of a Gram mirrored layer by layer."""
    x1, x2 = images(7, 13), (images(5, 14) if cross else None)
    want = arch.ntk(x1, x2, depths=(3, 4), by_layer=True)
    for i in range(2):
        nc.kernel_tiles(arch, x1, x2, out=tmp_path, shard=(i, 2), depths=(3, 4), tile=3,
                        progress=False, kernel="ntk", by_layer=True)
    calls = counting(monkeypatch)
    got = nc.kernel_matrix(arch, x1, x2, out=tmp_path, depths=(3, 4), tile=3, progress=False,
                           kernel="ntk", by_layer=True)
    assert calls == []
    both = nc.kernel_matrix(arch, x1, x2, depths=(3, 4), tile=3, progress=False,
                            by_layer=True)
    for d in (3, 4):
        assert got[d].shape == (d, 7, 5 if cross else 7)
        torch.testing.assert_close(got[d], want[d], rtol=1e-12, atol=0)
        torch.testing.assert_close(both[d].ntk, want[d], rtol=1e-12, atol=0)
        torch.testing.assert_close(both[d].nngp, arch.nngp(x1, x2, depths=[d])[d],
                                   rtol=1e-12, atol=0)


@pytest.mark.parametrize("first", [True, False], ids=["split first", "whole first"])
def test_a_folder_is_never_resumed_split_the_other_way(tmp_path, first):
    x = images(4, 15)
    nc.kernel_matrix(ARCH, x, out=tmp_path, tile=2, progress=False, by_layer=first)
    with pytest.raises(ValueError, match=r"different computation \(by_layer differ"):
        nc.kernel_matrix(ARCH, x, out=tmp_path, tile=2, progress=False, by_layer=not first)


def test_bad_arguments():
    with pytest.raises(ValueError, match="tile must be >= 1"):
        nc.kernel_matrix(ARCH, images(2, 5), tile=0)
    with pytest.raises(ValueError, match="depths"):
        nc.kernel_matrix(ARCH, images(2, 5), depths=(9,))
    with pytest.raises(ValueError, match=r"x1 must have shape \(n, C, H, W\)"):
        nc.kernel_matrix(ARCH, torch.randn(3, 4))
    with pytest.raises(ValueError, match="kernel must be one of"):
        nc.kernel_matrix(ARCH, images(2, 5), kernel="ntkk")
    with pytest.raises(TypeError, match="by_layer must be True or False"):
        nc.kernel_matrix(ARCH, images(2, 5), by_layer=1)
    with pytest.raises(ValueError, match="kernel='nngp' keeps no NTK"):
        nc.kernel_matrix(ARCH, images(2, 5), kernel="nngp", by_layer=True)
    with pytest.raises(ValueError, match="'triton' cannot split the NTK by layer"):
        nc.kernel_matrix(ARCH, images(2, 5), backend="triton", by_layer=True)


@pytest.mark.parametrize("cross", [False, True], ids=["gram", "cross"])
def test_shards_split_the_tiles_and_kernel_matrix_assembles_them(tmp_path, monkeypatch, cross):
    x1, x2 = images(9, 7), (images(5, 8) if cross else None)
    computed = [nc.kernel_tiles(ARCH, x1, x2, out=tmp_path, shard=(i, 3), tile=2,
                                progress=False) for i in range(3)]
    # 5 x 3 tiles, or the upper triangle of 5 x 5
    assert sum(computed) == 15 == len(list(tmp_path.glob("tile_*.pt")))
    assert min(computed) >= 4  # balanced: no share left (nearly) empty
    calls = counting(monkeypatch)
    got = nc.kernel_matrix(ARCH, x1, x2, out=tmp_path, tile=2, progress=False)
    assert calls == []  # every tile came from the shards
    torch.testing.assert_close(got[4].ntk, ARCH.ntk(x1, x2), rtol=1e-12, atol=0)
    torch.testing.assert_close(got[4].nngp, ARCH.nngp(x1, x2), rtol=1e-12, atol=0)


@pytest.mark.parametrize(("n", "tile", "count"), [(10, 3, 4), (50, 7, 3), (6, 2, 8)])
def test_shares_partition_the_tiles_balanced_by_pairs(n, tile, count):
    tiles = _tiles(ARCH, images(n, 9), None, None, None, tile, "auto", 2**30, "both", False)
    shares = [_share(tiles, (i, count)) for i in range(count)]
    assert sorted(t for s in shares for t in s) == sorted(tiles.corners())
    loads = [sum(tiles.pairs(t) for t in s) for s in shares]
    assert max(loads) - min(loads) <= tile * tile


def test_a_shard_resumes(tmp_path, monkeypatch):
    x = images(10, 9)
    calls = counting(monkeypatch)
    assert nc.kernel_tiles(ARCH, x, out=tmp_path, shard=(1, 2), tile=3, progress=False) == 5
    mine = sorted(tmp_path.glob("tile_*.pt"))
    assert len(mine) == 5  # of the 10 tiles of the upper triangle of 4 x 4
    mine[2].unlink()
    assert nc.kernel_tiles(ARCH, x, out=tmp_path, shard=(1, 2), tile=3, progress=False) == 1
    assert len(calls) == 6
    # without shard=, one process's share is all of it
    assert nc.kernel_tiles(ARCH, x, out=tmp_path / "all", tile=3, progress=False) == 10


def _one_shard(folder, index):
    torch.set_num_threads(1)
    return nc.kernel_tiles(ARCH, images(8, 10), out=folder, shard=(index, 2), tile=2,
                           progress=False)


def test_two_processes_share_one_folder(tmp_path, monkeypatch):
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=spawn) as pool:
        done = list(pool.map(_one_shard, [tmp_path, tmp_path], [0, 1]))
    assert sum(done) == 10 and min(done) == 5
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("tile_")) == [
        "manifest.json"]  # no side files left
    calls = counting(monkeypatch)
    got = nc.kernel_matrix(ARCH, images(8, 10), out=tmp_path, tile=2, progress=False)
    assert calls == []
    torch.testing.assert_close(got[4].ntk, ARCH.ntk(images(8, 10)), rtol=1e-12, atol=0)


def test_bad_shards(tmp_path):
    for shard in [(3, 3), (-1, 2), [0, 1], (0, 1.0), (True, 2), (0,)]:
        with pytest.raises(ValueError, match=r"shard must be a tuple \(index, count\)"):
            nc.kernel_tiles(ARCH, images(2, 5), out=tmp_path, shard=shard)
    assert not list(tmp_path.iterdir())  # refused before any file was written


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_shards_on_cuda_float32_assemble_to_the_fused_kernel(tmp_path):
    x = images(9, 11).to("cuda", torch.float32)
    for i in range(2):
        nc.kernel_tiles(ARCH, x, out=tmp_path, shard=(i, 2), depths=(3, 4), tile=4,
                        progress=False)
    got = nc.kernel_matrix(ARCH, x, out=tmp_path, depths=(3, 4), tile=4, progress=False)
    want = ARCH.ntk(x, depths=(3, 4))
    for d in (3, 4):
        assert got[d].ntk.dtype == torch.float32 and got[d].ntk.device.type == "cpu"
        torch.testing.assert_close(got[d].ntk, want[d].cpu(), rtol=1e-6, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_split_by_layer_on_cuda_float32_is_the_reference_there():
    """CUDA float32 inputs split by layer: the torch reference on the GPU, no fused check."""
    x = images(5, 16).to("cuda", torch.float32)
    got = nc.kernel_matrix(ARCH, x, depths=(3, 4), tile=2, progress=False, kernel="ntk",
                           by_layer=True)
    want = ARCH.ntk(x.double(), depths=(3, 4), by_layer=True)
    for d in (3, 4):
        assert got[d].shape == (d, 5, 5) and got[d].dtype == torch.float32
        torch.testing.assert_close(got[d].double(), want[d].cpu(), rtol=1e-4, atol=1e-6)


def test_a_folder_is_claimed_where_hard_links_fail(tmp_path, monkeypatch):
    def no_links(*args):
        raise PermissionError("hard links are not supported here")

    monkeypatch.setattr(os, "link", no_links)
    x = images(4, 12)
    got = nc.kernel_matrix(ARCH, x, out=tmp_path, tile=2, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("tile_")) == [
        "manifest.json"]
    torch.testing.assert_close(got[4].ntk, ARCH.ntk(x), rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="different computation"):
        nc.kernel_matrix(ARCH, x + 1, out=tmp_path, tile=2, progress=False)
