"""ntkcheck reproduce table1: end to end on a tiny slice on the CPU, resume, bad input."""

from __future__ import annotations

import concurrent.futures
import csv
import json
import re
import shutil

import numpy as np
import pytest
import torch

import ntkcheck as nc
from ntkcheck.cli import main
from ntkcheck.studies import table1

TINY = ["reproduce", "table1", "--depths", "3,4", "--n-train", "6", "--n-test", "5",
        "--device", "cpu", "--quiet"]


def test_the_papers_cells_are_table_1_as_the_paper_prints_it():
    """PAPER and DEPTHS against Table 1 in the paper's text, in ../shared/reference beside
    the data folder, read from its tab-separated rows: "Depth  CNN-V  CNTK-V ..." then one
    row per depth."""
    paper = nc.data.data_root().parent / "reference" / "arora2019_exact_cntk_paper.txt"
    lines = paper.read_text().splitlines()
    start = lines.index("\t".join(["Depth", "CNN-V", "CNTK-V", "CNTK-V-2K", "CNN-GAP",
                                    "CNTK-GAP", "CNTK-GAP-2K"]))
    header = lines[start].split("\t")
    printed = {name: {} for name in header[1:]}
    for line in lines[start + 1:start + 6]:
        depth, *cells = line.split("\t")
        for name, cell in zip(header[1:], cells, strict=True):
            printed[name][int(depth)] = float(cell.removesuffix("%"))
    assert table1.PAPER == {name: printed[name] for name in table1.COLUMNS}
    assert table1.DEPTHS == tuple(printed["CNTK-V"])


def test_the_data_sizes_are_those_in_the_files():
    with np.load(nc.data.data_root() / "cifar10_exact_subset.npz") as f:
        exact = (len(f["y_train"]), len(f["y_test"]))
        every = (len(f["labels_train_all"]), len(f["labels_test_all"]))
    assert table1.SIZES == {"jpeg": every, "exact": exact, "exact-jpeg": exact}


def test_the_columns_are_the_papers():
    """"-2K": the first 2,000 training images (the paper's caption), else all of them; V the
    vanilla (flatten) CNTK with every layer trained, GAP the pooled one with its first and
    last layer fixed, as the paper's code runs them."""
    assert {name: (c.pooling, c.n_train, c.fix_first_last)
            for name, c in table1.COLUMNS.items()} == {
        "CNTK-V": ("flatten", 50_000, False), "CNTK-V-2K": ("flatten", 2_000, False),
        "CNTK-GAP": ("gap", 50_000, True), "CNTK-GAP-2K": ("gap", 2_000, True)}


def test_labels_are_the_papers_targets():
    np.testing.assert_array_equal(table1.label_targets(np.array([2, 0]), classes=3),
                                  [[-0.1, -0.1, 0.9], [0.9, -0.1, -0.1]])


def test_the_command_defaults_to_the_papers_depths_and_all_columns_but_cntk_gap(
        tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(table1, "reproduce",
                        lambda columns, depths, **options: seen.update(options, columns=columns,
                                                                      depths=depths))
    assert main(["reproduce", "table1", "--device", "cpu", "--out", str(tmp_path)]) == 0
    assert seen["depths"] == [3, 4, 6, 11, 21]  # Table 1's rows
    assert seen["columns"] == ["CNTK-V", "CNTK-V-2K", "CNTK-GAP-2K"]
    assert seen["progress"] and seen["data"] == "jpeg" and seen["fix_first_last"] is None


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


def test_reproduce_shows_progress_unless_told_not_to(tmp_path, capsys):
    options = {"out": tmp_path / "shown", "n_train": 6, "n_test": 5, "log": print}
    table1.reproduce(["CNTK-V-2K"], [3], **options)
    assert "test images 0..4 of 5" in capsys.readouterr().err
    table1.reproduce(["CNTK-V-2K"], [3], **{**options, "out": tmp_path / "quiet"},
                     progress=False)
    assert capsys.readouterr().err == ""


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
    for setting in ([], ["--fix-first-last", "no"]):  # the column's own setting differs
        with pytest.raises(AssertionError, match="recomputed"):
            main([*TINY, "--columns", "CNTK-V-2K", *setting, "--out", out])


@pytest.mark.parametrize("bad", [
    ["--columns", "CNTK-X"], ["--depths", "2,3"], ["--depths", "3,65"], ["--n-train", "0"],
    ["--n-test", "-1"]])
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


def spy_kernel_matrix(monkeypatch, fail_at=None):
    """Count table1's kernel_matrix calls (their x1 row counts); raise KeyboardInterrupt at
    call number ``fail_at`` as an interrupted run would."""
    calls, real = [], table1.kernel_matrix

    def spy(arch, x1, x2=None, **kwargs):
        calls.append(x1.shape[0])
        if len(calls) == fail_at:
            raise KeyboardInterrupt
        return real(arch, x1, x2, **kwargs)

    monkeypatch.setattr(table1, "kernel_matrix", spy)
    return calls


SMALL = {"n_train": 6, "n_test": 5, "progress": False}


def accuracies(rows):
    return [(r["depth"], r["accuracy"], r["ridge"], r["condition"]) for r in rows]


def chunks_of_two(monkeypatch):
    """Test chunks of 2 images (12 pairs with 6 training images): 5 test images, 3 chunks."""
    monkeypatch.setattr(table1, "TEST_CHUNK_PAIRS", {"flatten": 12, "gap": 12})


def saved_seconds(folder):
    """The seconds a column's saved fit and test chunks record spending."""
    return sum(torch.load(p)["seconds"] for p in [folder / "fit.pt", *(folder / "test").iterdir()])


def test_work_saves_the_fit_and_each_chunk_and_resumes_from_them(tmp_path, monkeypatch):
    chunks_of_two(monkeypatch)
    column = table1.COLUMNS["CNTK-V-2K"]
    first = table1.run_column(column, (3, 4), work=tmp_path, **SMALL)
    folder = tmp_path / "CNTK-V-2K" / "trained"
    assert sorted(p.name for p in (folder / "test").iterdir()) == [
        "scores_0000000.pt", "scores_0000002.pt", "scores_0000004.pt"]
    assert (folder / "fit.pt").is_file() and list((folder / "train").glob("tile_*.pt"))
    assert [r["seconds"] for r in first] == [round(saved_seconds(folder), 1)] * 2

    (folder / "test" / "scores_0000002.pt").unlink()
    calls = spy_kernel_matrix(monkeypatch)
    again = table1.run_column(column, (3, 4), work=tmp_path, **SMALL)
    assert calls == [2] and accuracies(again) == accuracies(first)

    shutil.rmtree(folder / "train")  # what travels to another machine: fit.pt and test/
    again = table1.run_column(column, (3, 4), work=tmp_path, **SMALL)
    assert calls == [2] and accuracies(again) == accuracies(first)
    again = table1.run_column(column, (3, 4), work=tmp_path, **{**SMALL, "n_test": 4})
    assert calls == [2], "the chunks of the first 4 test images were saved"
    assert [r["n_test"] for r in again] == [4, 4]


def test_an_interrupted_column_resumes_with_the_cells_of_one_chunk(tmp_path, monkeypatch):
    column = table1.COLUMNS["CNTK-GAP-2K"]
    whole = table1.run_column(column, (3, 4), **SMALL)
    chunks_of_two(monkeypatch)
    calls = spy_kernel_matrix(monkeypatch, fail_at=3)  # Gram, chunk 0, then stopped
    with pytest.raises(KeyboardInterrupt):
        table1.run_column(column, (3, 4), work=tmp_path, **SMALL)
    folder = tmp_path / "CNTK-GAP-2K" / "fixed"
    assert (folder / "fit.pt").is_file() and not list(folder.rglob("*.partial"))
    assert [p.name for p in (folder / "test").iterdir()] == ["scores_0000000.pt"]
    del calls[:]
    resumed = table1.run_column(column, (3, 4), work=tmp_path, **SMALL)
    assert calls == [2, 1]
    assert accuracies(resumed) == accuracies(whole)


def test_work_is_never_resumed_with_another_training_set(tmp_path, capsys):
    args = [*TINY, "--columns", "CNTK-V-2K", "--work", str(tmp_path / "w")]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b"), "--n-train", "5"]) == 2
    assert "different computation (training_set differ)" in capsys.readouterr().err


def test_a_time_limit_stops_between_chunks_and_the_same_command_continues(
        tmp_path, monkeypatch, capsys):
    chunks_of_two(monkeypatch)
    clock = iter(range(0, 10**6, 10))  # every reading 10 s after the one before
    monkeypatch.setattr(table1, "_clock", lambda: next(clock))
    args = [*TINY, "--columns", "CNTK-V-2K", "--work", str(tmp_path / "w"),
            "--out", str(tmp_path / "o"), "--max-seconds", "25"]
    assert main(args) == 3
    err = capsys.readouterr().err
    assert "CNTK-V-2K stopped within its time limit: 1 of 3 test chunks done" in err
    assert "run the same command again" in err
    test_chunks = tmp_path / "w" / "CNTK-V-2K" / "trained" / "test"
    assert [p.name for p in test_chunks.iterdir()] == ["scores_0000000.pt"]
    # what the finished chunk says so far: its 2 test images' accuracy at each depth
    preview = re.search(r"so far ([\d.]+) / ([\d.]+) % at depths 3 / 4 on 2 test images", err)
    assert preview is not None, err
    saved = torch.load(test_chunks / "scores_0000000.pt")["scores"]
    labels = table1.standardized_images("jpeg", 6, 2)[3]
    assert [float(a) for a in preview.groups()] == [
        100 * float(np.mean(saved[d].argmax(1).numpy() == labels)) for d in (3, 4)]
    assert not (tmp_path / "o" / "table1.csv").exists()
    monkeypatch.setattr(table1, "_clock", lambda: 0)  # time stands still: no stop
    assert main(args) == 0
    assert len(list(test_chunks.iterdir())) == 3
    assert len(read_csv(tmp_path / "o" / "table1.csv")) == 2


def test_a_time_limit_passed_before_the_first_chunk_stops_with_none_done(
        tmp_path, monkeypatch, capsys):
    # the Gram matrix and the fit ran past the limit: no chunk is started, none to preview
    chunks_of_two(monkeypatch)
    clock = iter(range(0, 10**6, 100))
    monkeypatch.setattr(table1, "_clock", lambda: next(clock))
    args = [*TINY, "--columns", "CNTK-V-2K", "--work", str(tmp_path / "w"),
            "--out", str(tmp_path / "o"), "--max-seconds", "50"]
    assert main(args) == 3
    err = capsys.readouterr().err
    assert "0 of 3 test chunks done" in err and "so far" not in err


@pytest.mark.parametrize("limit", [["--max-seconds", "10"], ["--max-seconds", "0", "--work", "w"]])
def test_a_time_limit_needs_work_and_a_positive_value(tmp_path, capsys, limit):
    assert main([*TINY, "--columns", "CNTK-V-2K", "--out", str(tmp_path), *limit]) == 2
    assert "--max-seconds needs --work" in capsys.readouterr().err


def test_shards_split_a_column_into_the_same_cells(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(table1, "POLL_SECONDS", 0.02)
    monkeypatch.setattr(table1, "TILES", {"flatten": 2, "gap": 2})  # a 3 x 3 grid of tiles
    monkeypatch.setattr(table1, "TEST_CHUNK_PAIRS", {"flatten": 12, "gap": 12})  # 3 chunks
    assert main([*TINY, "--columns", "CNTK-V-2K", "--out", str(tmp_path / "alone")]) == 0
    work = tmp_path / "work"

    def shard(i):  # the limit only keeps a failing test from waiting forever
        return main([*TINY, "--columns", "CNTK-V-2K", "--work", str(work), "--max-seconds",
                     "120", "--out", str(tmp_path / f"s{i}"), "--shard", f"{i}/3"])

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        assert list(pool.map(shard, [2, 1, 0])) == [0, 0, 0]
    alone, sharded = (read_csv(tmp_path / f / "table1.csv") for f in ("alone", "s0"))
    assert [r["accuracy"] for r in sharded] == [r["accuracy"] for r in alone]
    assert not any((tmp_path / "s1" / name).exists()  # shard 0 writes every file
                   for name in ("table1.csv", "table1.md", "table1.png"))
    assert (tmp_path / "s0" / "table1.md").exists() and (tmp_path / "s0" / "table1.png").exists()
    folder = work / "CNTK-V-2K" / "trained"
    assert len(list((folder / "train").glob("tile_*.pt"))) == 6
    assert len(list((folder / "test").glob("scores_*.pt"))) == 3
    shares = sorted((folder / "gram_shares").iterdir())
    assert [p.name for p in shares] == ["0of3.json", "1of3.json", "2of3.json"]
    spent = sum(json.loads(p.read_text())["seconds"] for p in shares) + saved_seconds(folder)
    assert {r["seconds"] for r in sharded} == {str(round(spent, 1))}  # every shard's work
    assert "shard 1 of 3 did its share" in capsys.readouterr().out


def test_a_shard_waits_within_its_time_limit(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(table1, "POLL_SECONDS", 0.02)
    args = [*TINY, "--columns", "CNTK-V-2K", "--work", str(tmp_path / "w"), "--out",
            str(tmp_path / "t1")]
    assert main([*args, "--shard", "1/2", "--max-seconds", "0.5"]) == 3  # nobody fits
    assert "while waiting for 1 of 1 fits" in capsys.readouterr().err
    assert main([*TINY, "--columns", "CNTK-V-2K", "--out", str(tmp_path / "t1"),
                 "--shard", "0/2"]) == 2
    assert "--shard needs --work" in capsys.readouterr().err


def test_paired_difference_counts_the_images_right_with_one_kernel_only():
    right = np.array([True, True, False, False, True])
    reference = np.array([True, False, True, False, False])
    difference, error = table1.paired_difference(right, reference)
    assert difference == pytest.approx(100 * (2 - 1) / 5)
    assert error == pytest.approx(100 * 3**0.5 / 5)
    assert table1.paired_difference(right, right) == (0.0, 0.0)


def test_train_sizes_are_sorted_and_end_with_the_whole_set():
    assert table1.train_sizes(None, 100) == [100]
    assert table1.train_sizes("50,20,50", 100) == [20, 50, 100]
    assert table1.train_sizes("100", 100) == [100]
    for bad in ("0,20", "101"):
        with pytest.raises(SystemExit, match=r"--train-sizes: \[(0|101)\] are not in "
                                             r"1\.\.100 \(--n-train\)"):
            table1.train_sizes(bad, 100)
    for bad in ("2k", "20,", "1.5"):
        with pytest.raises(SystemExit, match="--train-sizes: .* is not a comma-separated"):
            table1.train_sizes(bad, 100)
