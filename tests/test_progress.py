"""Long kernel computations report progress on stderr when asked, and only then."""

from __future__ import annotations

import torch

import ntkcheck as nc


def test_progress_reports_pairs_rate_and_eta(capsys):
    x = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    nc.CNN(depth=3, pooling="gap").ntk(x, progress=True)
    err = capsys.readouterr().err
    assert "kernel pairs: 10/10" in err and "/s" in err and "ETA" in err
    nc.CNN(depth=3, pooling="gap").ntk(x)
    assert capsys.readouterr().err == ""


def test_nothing_to_do_prints_nothing(capsys, tmp_path):
    arch, x = nc.CNN(depth=3), torch.randn(3, 2, 3, 3, dtype=torch.float64)
    nc.kernel_matrix(arch, x, out=tmp_path, tile=2)
    assert "kernel pairs: 6/6" in capsys.readouterr().err
    nc.kernel_matrix(arch, x, out=tmp_path, tile=2)  # every tile on disk
    assert nc.kernel_tiles(arch, x, out=tmp_path, shard=(1, 2), tile=2) == 0
    assert capsys.readouterr().err == ""
