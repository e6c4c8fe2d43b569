"""Long kernel computations report progress on stderr when asked, and only then."""

from __future__ import annotations

import itertools
import re

import pytest
import torch

import ntkcheck as nc
from ntkcheck._progress import Progress


def test_progress_reports_pairs_rate_and_eta(capsys):
    x = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    nc.CNN(depth=3, pooling="gap").ntk(x, progress=True)
    err = capsys.readouterr().err
    assert "kernel pairs: 10/10" in err and "/s" in err and "ETA" in err
    nc.CNN(depth=3, pooling="gap").ntk(x)
    nc.CNN(depth=3, pooling="gap").nngp(x)
    assert capsys.readouterr().err == ""


def test_nothing_to_do_prints_nothing(capsys, tmp_path):
    arch, x = nc.CNN(depth=3), torch.randn(3, 2, 3, 3, dtype=torch.float64)
    nc.kernel_matrix(arch, x, out=tmp_path, tile=2)
    assert "kernel pairs: 6/6" in capsys.readouterr().err
    nc.kernel_matrix(arch, x, out=tmp_path, tile=2)  # every tile on disk
    assert nc.kernel_tiles(arch, x, out=tmp_path, shard=(1, 2), tile=2) == 0
    assert capsys.readouterr().err == ""


def test_the_line_gives_count_rate_elapsed_and_eta_at_most_twice_a_second(capsys, monkeypatch):
    now = [10.0]
    monkeypatch.setattr("ntkcheck._progress.time.perf_counter", lambda: now[0])
    with Progress(10, "pairs") as bar:
        for at, n in [(12.0, 4),  # drawn: 2 s in
                      (12.4, 1),  # not: 0.4 s after the last line
                      (12.5, 1),  # drawn: 0.5 s after it
                      (12.5, 4)]:  # drawn: the last unit of work
            now[0] = at
            bar.advance(n)
    lines = [line.rstrip() for line in capsys.readouterr().err.split("\r")[1:]]
    assert lines == ["pairs: 4/10  2.0/s  elapsed 2s  ETA 3s",
                     "pairs: 6/10  2.4/s  elapsed 2s  ETA 2s",
                     "pairs: 10/10  4.0/s  elapsed 2s  ETA 0s"]


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


@pytest.mark.parametrize("arch,field", [(nc.FC(depth=3), 1),
                                        (nc.CNN(depth=3, pooling="flatten"), 6),
                                        (nc.CNN(depth=3, pooling="gap"), 36)])
def test_tiles_fit_max_memory_and_the_count_reaches_each_pair_once(capsys, monkeypatch,
                                                                   arch, field):
    """A budget of four pairs (1 x 2 x 3 images: a pair's field is 1 entry for FC, 6
    same-position entries or 36 position pairs; 10 live float64 fields, 2 more per layer by
    layer): over uneven tiles, Gram (diagonal tiles count only their upper triangle) and
    cross, the count climbs by at most 4 to exactly n (n + 1) / 2 or n1 n2, and a full tile
    uses the whole budget."""
    clock = iter(range(10**6))  # a second passes between any two readings: all drawn
    monkeypatch.setattr("ntkcheck._progress.time.perf_counter", lambda: next(clock))
    shape = (6,) if isinstance(arch, nc.FC) else (1, 2, 3)
    x1 = torch.randn(5, *shape, dtype=torch.float64)
    x2 = torch.randn(3, *shape, dtype=torch.float64)
    for (x, total), (by_layer, fields) in itertools.product(((None, 15), (x2, 15)),
                                                            ((False, 10), (True, 16))):
        capsys.readouterr()
        arch.ntk(x1, x, progress=True, by_layer=by_layer, max_memory=4 * field * 8 * fields)
        lines = capsys.readouterr().err.split("\r")[1:]
        counts = [0] + [int(re.match(rf"kernel pairs: (\d+)/{total} ", s)[1]) for s in lines]
        steps = [b - a for a, b in itertools.pairwise(counts)]
        assert counts[-1] == total and all(0 < s <= 4 for s in steps), counts
        assert steps[0] == (3 if x is None else 4), counts  # the first tile is 2 x 2
