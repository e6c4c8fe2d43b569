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
