"""The command line: the demo end to end on a tiny setting, one-line errors."""

from __future__ import annotations

from ntkcheck.cli import main


def test_demo_prints_a_gram_matrix_and_timing(capsys):
    assert main(["demo", "--n", "2", "--depth", "3", "--pooling", "flatten"]) == 0
    out = capsys.readouterr().out
    assert "CNN(depth=3, pooling='flatten'" in out and "ms per pair" in out
    assert len([line for line in out.splitlines() if line.startswith("  ")]) >= 2


def test_bad_arguments_give_one_line_errors(capsys, tmp_path):
    assert main(["demo", "--n", "0"]) == 2
    assert main(["demo", "--depth", "1"]) == 2
    assert main(["demo", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("ntkcheck: error: ") for line in err)
