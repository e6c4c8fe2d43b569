"""Table 1's Markdown and figure from made-up rows: every number where it belongs."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from ntkcheck.studies import table1_report
from ntkcheck.studies.table1 import PAPER


def _row(column, depth, accuracy, *, fix_first_last="", n_train=2000, device="cpu"):
    return {"column": column, "depth": depth, "accuracy": accuracy, "n_train": n_train,
            "n_test": 10000, "data": "cifar10-jpeg", "fix_first_last": fix_first_last,
            "device": device}


# out of the table's order, with a depth the paper lacks (5) and a cell left out (GAP-2K at 3)
ROWS = [_row("CNTK-GAP-2K", 4, 50.0, device="NVIDIA H100"),
        _row("CNTK-V-2K", 5, 42.0, fix_first_last="True"),
        _row("CNTK-V-2K", 3, 41.5, fix_first_last="True"),
        _row("CNTK-GAP-2K", 5, 52.25, device="NVIDIA H100"),
        _row("CNTK-V-2K", 4, 41.0, fix_first_last="True")]


def test_the_markdown_puts_ours_beside_the_papers_cell_by_cell(tmp_path):
    path = tmp_path / "table1.md"
    table1_report.write_markdown(ROWS, path)
    lines = path.read_text().splitlines()
    assert lines[:7] == [
        "# Table 1, reproduced: CIFAR-10 test accuracy (%)", "",
        "| depth | CNTK-V-2K ours | paper | delta | CNTK-GAP-2K ours | paper | delta |",
        "|---|---|---|---|---|---|---|",
        "| 3 | 41.50 | 40.94 | +0.56 | - | - | - |",
        "| 4 | 41.00 | 42.54 | -1.54 | 50.00 | 51.06 | -1.06 |",
        "| 5 | 42.00 | - | - | 52.25 | - | - |"]
    # recorded settings, then (rows from before they were recorded) the column's own
    assert lines[8] == (
        "Per column: CNTK-V-2K: 2000 train / 10000 test images, cifar10-jpeg, first and last "
        "layer fixed, cpu; CNTK-GAP-2K: 2000 train / 10000 test images, cifar10-jpeg, first "
        "and last layer fixed, NVIDIA H100.")
    assert table1_report.CAVEAT in lines


def test_a_column_run_with_its_first_and_last_layer_trained_says_so(tmp_path):
    path = tmp_path / "table1.md"
    table1_report.write_markdown([_row("CNTK-GAP-2K", 3, 49.0, fix_first_last="False"),
                                  _row("CNTK-V", 3, 64.0, n_train=50000)], path)
    text = path.read_text()
    assert text.splitlines()[2] == (
        "| depth | CNTK-V ours | paper | delta | CNTK-GAP-2K ours | paper | delta |")
    assert ("CNTK-V: 50000 train / 10000 test images, cifar10-jpeg, first and last layer "
            "trained, cpu; CNTK-GAP-2K: 2000 train / 10000 test images, cifar10-jpeg, first "
            "and last layer trained, cpu.") in text


def test_the_figure_draws_ours_solid_and_the_papers_dashed_in_one_colour_per_column(
        tmp_path, monkeypatch):
    kept = []
    monkeypatch.setattr(plt, "close", kept.append)
    table1_report.write_figure(ROWS, tmp_path / "table1.png")
    assert (tmp_path / "table1.png").stat().st_size > 10_000
    (fig,) = kept
    (ax,) = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    for column, colour, ours in (("CNTK-V-2K", "C0", {3: 41.5, 4: 41.0, 5: 42.0}),
                                 ("CNTK-GAP-2K", "C1", {4: 50.0, 5: 52.25})):
        mine, paper = lines[f"{column} (ours)"], lines[f"{column} (paper)"]
        assert list(mine.get_xdata()) == sorted(ours)
        assert list(mine.get_ydata()) == [ours[d] for d in sorted(ours)]
        assert list(paper.get_xdata()) == sorted(PAPER[column])
        assert list(paper.get_ydata()) == [PAPER[column][d] for d in sorted(PAPER[column])]
        assert mine.get_color() == paper.get_color() == colour
        assert (mine.get_linestyle(), paper.get_linestyle()) == ("-", "--")
    assert len(lines) == 4
    assert list(ax.get_xticks()) == [3, 4, 5, 6, 11, 21]  # ours and the paper's depths
    assert [t.get_text() for t in ax.get_xticklabels()] == ["3", "4", "5", "6", "11", "21"]
    assert ax.get_xscale() == "log"


@pytest.mark.parametrize("recorded", ["", None])
def test_rows_without_a_recorded_setting_take_their_columns(recorded, tmp_path):
    row = _row("CNTK-V-2K", 3, 41.0)
    if recorded is None:
        del row["fix_first_last"]
    table1_report.write_markdown([row], tmp_path / "t.md")
    assert "first and last layer trained" in (tmp_path / "t.md").read_text()
