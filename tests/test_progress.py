"""Long kernel computations report progress on stderr when asked, and only then."""

from __future__ import annotations

import torch

import ntkcheck as nc
from ntkcheck._progress import Progress


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


def test_a_note_follows_the_count_and_a_shorter_line_blanks_the_longer(capsys, monkeypatch):
    clock = iter(range(0, 100, 1))  # a second passes between any two readings: all drawn
    monkeypatch.setattr("ntkcheck._progress.time.perf_counter", lambda: next(clock))
    with Progress(2, "things") as bar:
        bar.note("a long note about step 1")
        bar.note("short")
        bar.advance(1)
    lines = capsys.readouterr().err.split("\r")[1:]
    assert lines[0].startswith("things: 0/2") and lines[0].endswith("a long note about step 1")
    assert lines[1].rstrip().endswith("short") and len(lines[1]) == len(lines[0])
    assert lines[2].rstrip().endswith("short") and lines[2].startswith("things: 1/2")
