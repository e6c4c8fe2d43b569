"""ntkcheck reproduce table1: end to end on a tiny slice on the CPU, resume, bad input."""

from __future__ import annotations

import csv

import numpy as np
import pytest

import ntkcheck as nc
from ntkcheck.cli import main
from ntkcheck.studies import table1

TINY = ["reproduce", "table1", "--depths", "3,4", "--n-train", "6", "--n-test", "5",
        "--device", "cpu", "--quiet"]


def test_labels_are_the_papers_targets():
    np.testing.assert_array_equal(table1.label_targets(np.array([2, 0]), classes=3),
                                  [[-0.1, -0.1, 0.9], [0.9, -0.1, -0.1]])


def read_csv(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def cell_accuracy(arch):
    """One TINY cell, independently: the CNTK, a numpy solve, argmax."""
    train, labels = nc.data.cifar10("train", 6)
    test, test_labels = nc.data.cifar10("test", 5)
    x, z = (nc.data.standardize(a, reference=train) for a in (train, test))
    f = arch.ntk(z, x).numpy() @ np.linalg.solve(arch.ntk(x).numpy(), np.eye(10)[labels] - 0.1)
    return 100 * np.mean(f.argmax(1) == test_labels)


def no_recompute(*args, **kwargs):
    raise AssertionError("recomputed a finished column")


def test_tiny_table_end_to_end(tmp_path, capsys):
    out = tmp_path / "t1"
    assert main([*TINY, "--columns", "CNTK-V-2K,CNTK-GAP-2K", "--out", str(out)]) == 0
    rows = read_csv(out / "table1.csv")
    assert [(r["column"], r["depth"]) for r in rows] == [
        ("CNTK-V-2K", "3"), ("CNTK-V-2K", "4"), ("CNTK-GAP-2K", "3"), ("CNTK-GAP-2K", "4")]
    assert set(table1.FIELDS) <= set(rows[0])
    assert all(r["n_train"] == "6" and r["n_test"] == "5" and r["data"] == "cifar10-jpeg"
               for r in rows)
    assert rows[2]["paper"] == "49.71"
    assert float(rows[2]["delta"]) == pytest.approx(float(rows[2]["accuracy"]) - 49.71)
    assert "| 3 |" in (out / "table1.md").read_text()
    assert (out / "table1.png").stat().st_size > 10_000

    arch = nc.CNN(depth=4, pooling="gap", fix_first_last=True)
    assert float(rows[3]["accuracy"]) == pytest.approx(cell_accuracy(arch))


def test_a_rerun_skips_finished_columns(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "t1")
    assert main([*TINY, "--columns", "CNTK-V-2K", "--out", out]) == 0
    monkeypatch.setattr(table1, "run_column", no_recompute)
    assert main([*TINY, "--columns", "CNTK-V-2K", "--out", out]) == 0
    assert "already in" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="recomputed"):  # other sizes are other cells
        main([*TINY[:-5], "--n-test", "4", "--device", "cpu", "--columns", "CNTK-V-2K",
              "--out", out])


def test_fix_first_last_overrides_the_column(tmp_path, monkeypatch):
    out = str(tmp_path / "t1")
    assert main([*TINY, "--columns", "CNTK-V-2K", "--fix-first-last", "yes", "--out", out]) == 0
    rows = read_csv(tmp_path / "t1" / "table1.csv")
    assert [r["fix_first_last"] for r in rows] == ["True", "True"]
    assert "first and last layer fixed" in (tmp_path / "t1" / "table1.md").read_text()
    arch = nc.CNN(depth=3, pooling="flatten", fix_first_last=True)
    assert float(rows[0]["accuracy"]) == pytest.approx(cell_accuracy(arch))
    monkeypatch.setattr(table1, "run_column", no_recompute)
    assert main([*TINY, "--columns", "CNTK-V-2K", "--fix-first-last", "yes", "--out", out]) == 0
    with pytest.raises(AssertionError, match="recomputed"):  # the column's own setting differs
        main([*TINY, "--columns", "CNTK-V-2K", "--out", out])


@pytest.mark.parametrize("bad", [
    ["--columns", "CNTK-X"], ["--depths", "2,3"], ["--n-train", "0"], ["--n-test", "-1"]])
def test_bad_values_give_one_line_errors(tmp_path, capsys, bad):
    assert main([*TINY, "--out", str(tmp_path), *bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ntkcheck: error: ") and bad[0][2:5] in err[0]


@pytest.mark.parametrize("bad", [["--depths", "3,a"], ["--data", "png"], ["table2"],
                                 ["--fix-first-last", "maybe"]])
def test_malformed_arguments_are_usage_errors(tmp_path, capsys, bad):
    argv = ["reproduce", *bad] if bad == ["table2"] else [*TINY, "--out", str(tmp_path), *bad]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert "error:" in capsys.readouterr().err.strip().splitlines()[-1]
