"""The paper's Table 1: CIFAR-10 test accuracy of CNTK kernel regression, cell by cell.

As the paper's code: pixels / 255, per-channel standardization with the mean and std of the
column's training images; labels 0.9 for the true class and -0.1 for the others; predictions
K(test, train) K(train, train)^-1 Y solved in float64 with no ridge (the smallest ridge
that makes the solve work where it does not: ``KernelRegression(ridge="auto")``), argmax.
CNTK-V is the flatten CNTK with every layer trained, CNTK-GAP the GAP CNTK with the first
and last layer fixed (``fix_first_last`` overrides either: the paper's code takes the
choice as an option for both); "-2K" trains on the first 2,000 training images; every
column tests on all 10,000 test images and reads all its depths out of one kernel pass.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .._saved import claim, fingerprint, save, save_text
from ..architectures import CNN
from ..data import cifar10, cifar10_exact, standardize
from ..kernel_matrix import Shard, kernel_matrix, kernel_tiles
from ..regression import KernelRegression
from ._files import read_rows, write_rows

PAPER: dict[str, dict[int, float]] = {  # Table 1 of the paper, test accuracy in percent
    "CNTK-V": {3: 64.47, 4: 65.52, 6: 66.03, 11: 65.90, 21: 64.09},
    "CNTK-V-2K": {3: 40.94, 4: 42.54, 6: 43.43, 11: 43.42, 21: 42.53},
    "CNTK-GAP": {3: 70.47, 4: 75.93, 6: 76.73, 11: 77.43, 21: 77.08},
    "CNTK-GAP-2K": {3: 49.71, 4: 51.06, 6: 51.73, 11: 51.92, 21: 52.22},
}
DEPTHS = (3, 4, 6, 11, 21)
DATA = {"jpeg": "cifar10-jpeg", "exact": "cifar10-exact-subset",
        "exact-jpeg": "cifar10-exact-subset-jpeg"}
"""Data sources: the JPEG set; the exact-pixel subset; the same subset's images as JPEG."""
SIZES = {"jpeg": (50_000, 10_000), "exact": (5_085, 1_017), "exact-jpeg": (5_085, 1_017)}
"""(training, test) images each data source holds."""
FIELDS = ("column", "depth", "accuracy", "paper", "delta", "n_train", "n_test", "data",
          "fix_first_last", "device", "seconds", "ridge", "condition")


@dataclass(frozen=True)
class Column:
    """One column of Table 1: the CNTK it uses and how many training images."""

    name: str
    pooling: Literal["flatten", "gap"]
    fix_first_last: bool
    n_train: int

    @property
    def first_last(self) -> str:
        """What its first and last layer are: "fixed" or "trained"."""
        return "fixed" if self.fix_first_last else "trained"

    def architecture(self, depth: int) -> CNN:
        return CNN(depth=depth, pooling=self.pooling, filter_size=3,
                   fix_first_last=self.fix_first_last)


COLUMNS = {c.name: c for c in (
    Column("CNTK-V", "flatten", False, 50_000),
    Column("CNTK-V-2K", "flatten", False, 2_000),
    Column("CNTK-GAP-2K", "gap", True, 2_000),
    Column("CNTK-GAP", "gap", True, 50_000),
)}
DEFAULT_COLUMNS = ("CNTK-V", "CNTK-V-2K", "CNTK-GAP-2K")
"""CNTK-GAP on all 50,000 training images (1.75e9 GAP pairs) runs only when named."""

TILES = {"flatten": 4096, "gap": 256}
"""kernel_matrix tile sides: a few seconds of work per tile on an H100 either way."""

TEST_CHUNK_PAIRS = {"flatten": 2**28, "gap": 2**21}
"""Kernel pairs per chunk of test images (on an H100, 41 s of CNTK-V at the 6.5M pairs/s
measured; on an H200, 155 s of CNTK-GAP to depth 21 at the 76 us/pair measured): the test images
are predicted a chunk at a time, and with ``work`` each chunk's predictions are saved as
it finishes."""


def label_targets(labels: np.ndarray, classes: int = 10) -> torch.Tensor:
    """(n, classes) float64 regression targets: 0.9 for the true class, -0.1 elsewhere."""
    return torch.from_numpy(np.eye(classes)[labels] - 0.1)


def paired_difference(right: np.ndarray, right_reference: np.ndarray) -> tuple[float, float]:
    """Accuracy minus the reference's on the same test images, and its standard error, in
    percentage points, from the images right with one of the two only (a paired comparison:
    sqrt(discordant) / n, not the two accuracies' independent errors)."""
    n = len(right)
    only = int((right & ~right_reference).sum())
    only_reference = int((~right & right_reference).sum())
    return 100 * (only - only_reference) / n, 100 * (only + only_reference) ** 0.5 / n


def train_sizes(spec: str | None, n_train: int) -> list[int]:
    """The training-set sizes a study regresses from, smallest first: those of ``spec``
    (its ``--train-sizes``, comma-separated, each in 1..n_train) and n_train itself.  The
    first m training images' kernel is the top-left block of the whole set's, so one kernel
    pass gives a trend with the training set's size."""
    try:
        sizes = [] if spec is None else [int(m) for m in spec.split(",")]
    except ValueError:
        raise SystemExit(f"--train-sizes: {spec!r} is not a comma-separated list of "
                         f"whole numbers") from None
    bad = [m for m in sizes if not 0 < m <= n_train]
    if bad:
        raise SystemExit(f"--train-sizes: {bad} are not in 1..{n_train} (--n-train)")
    return sorted({*sizes, n_train})


def _count(wanted: int, cap: int | None, available: int) -> int:
    return min(wanted, available, wanted if cap is None else cap)


def fixed_first_last(row: dict[str, object]) -> bool:
    """Whether a row's CNTK had its first and last layer fixed (rows written before the
    setting was recorded used their column's own)."""
    recorded = row.get("fix_first_last")
    if recorded in (None, ""):
        return COLUMNS[str(row["column"])].fix_first_last
    return str(recorded) == "True"


def _load(data: str, split: str, n: int | None, root: str | None):
    if data == "jpeg":
        return cifar10(split, n, root=root)
    return cifar10_exact(split, n, root=root, pixels="jpeg" if data == "exact-jpeg" else "exact")


def standardized_images(
    data: str, n_train: int | None, n_test: int | None, root: str | None = None,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, np.ndarray, torch.Tensor, np.ndarray]:
    """(x_train, labels, x_test, test_labels): the first ``n_train`` training and ``n_test``
    test images (None: all) of cifar10-``data`` ("jpeg", "exact" or "exact-jpeg"), as the
    paper's code prepares them: pixels / 255, standardized per channel with the training
    images' mean and std."""
    images, labels = _load(data, "train", n_train, root)
    test_images, test_labels = _load(data, "test", n_test, root)
    x_train, x_test = (standardize(a, reference=images, dtype=dtype)
                       for a in (images, test_images))
    return x_train, labels, x_test, test_labels


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def _test_chunks(n_test: int, n_train: int, pooling: str) -> list[slice]:
    rows = max(1, TEST_CHUNK_PAIRS[pooling] // max(n_train, 1))
    if rows > TILES[pooling]:
        rows -= rows % TILES[pooling]  # whole tiles
    return [slice(start, min(start + rows, n_test)) for start in range(0, n_test, rows)]


def _clock() -> float:
    """Seconds on the clock that ``max_seconds`` is measured on."""
    return time.monotonic()


class TimeLimitReached(RuntimeError):
    """A column stopped between two test chunks to stay within ``max_seconds``; its finished
    parts are saved in its ``work`` folder, and the same call again continues."""


POLL_SECONDS = 10.0
"""How often a shard looks for the parts that other shards compute (``run_column``)."""


def _wait_for(paths: Sequence[Path], what: str, deadline: float | None, progress: bool) -> None:
    """Return once every file of ``paths`` exists (other shards write them), saying how many
    are still awaited whenever that changes; ``TimeLimitReached`` if ``deadline`` passes."""
    reported = None
    while missing := sum(not path.exists() for path in paths):
        if deadline is not None and _clock() > deadline:
            raise TimeLimitReached(f"stopped within the time limit while waiting for {missing} "
                                   f"of {len(paths)} {what}")
        if progress and missing != reported:
            print(f"waiting for {missing} of {len(paths)} {what}", file=sys.stderr)
            reported = missing
        time.sleep(POLL_SECONDS)


# A fit's saved estimators load under torch.load's weights_only default.  Registered once:
# the safe_globals context manager swaps a process-wide list and restores it on exit, so two
# threads loading at once (shards run as threads) could each remove the other's entry.
torch.serialization.add_safe_globals([KernelRegression])


def _load_or_compute(path: Path | None, inputs: str, compute: Callable[[], dict],
                     before_computing: Callable[[], None] = lambda: None) -> dict:
    """``compute()``'s dict, saved to ``path`` (with ``inputs``, the fingerprint of what it
    was computed from) as soon as it is done; a saved one for the same inputs is reused.
    ``before_computing`` runs only when there is something to compute."""
    if path is not None and path.exists():
        saved = torch.load(path, map_location="cpu")
        if saved["inputs"] == inputs:
            return saved
    before_computing()
    start = time.perf_counter()
    found = compute()
    found.update(inputs=inputs, seconds=time.perf_counter() - start)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save(found, path)
    return found


def _share_name(index: int, count: int) -> str:
    return f"{index}of{count}.json"


def _gram_share(arch: CNN, x_train: torch.Tensor, depths: Sequence[int], column: Column,
                shard: Shard, tiles: Path, shares: Path, progress: bool) -> None:
    """Shard ``shard``'s tiles of the training Gram matrix into ``tiles`` (as the fit's
    ``kernel_matrix`` keeps them), then its record in ``shares``: the seconds all its runs
    spent on them, and where."""
    start = time.perf_counter()
    kernel_tiles(arch, x_train, out=tiles, shard=shard, depths=depths, kernel="ntk",
                 tile=TILES[column.pooling], progress=progress)
    record = shares / _share_name(*shard)
    before = json.loads(record.read_text())["seconds"] if record.exists() else 0.0
    shares.mkdir(exist_ok=True)
    save_text(json.dumps({"seconds": before + time.perf_counter() - start,
                          "device": device_name(x_train.device)}), record)


def run_column(
    column: Column,
    depths: Sequence[int],
    *,
    data: str = "jpeg",
    n_train: int | None = None,
    n_test: int | None = None,
    device: str | torch.device = "cpu",
    root: str | None = None,
    work: str | os.PathLike[str] | None = None,
    max_seconds: float | None = None,
    shard: Shard | None = None,
    progress: bool = True,
) -> list[dict[str, object]]:
    """Table 1 rows of one column, one per depth, from one kernel pass over all depths.

    ``n_train`` / ``n_test`` cap the column's training / test images (default: the column's
    own count and the whole test split).  On CUDA the kernels are computed in float32 (the
    fused kernel), on the CPU in float64; the regression is float64 on ``device``.
    The training Gram matrix is fitted first (``KernelRegression``, one per depth), then the
    test images are predicted chunk by chunk (``TEST_CHUNK_PAIRS``).  With ``work``, the
    column keeps its finished work in ``work/<column>/<fixed|trained>/``: the Gram matrix's
    tiles (``train/``, large), the fitted estimators (``fit.pt``, n_train x 10 weights per
    depth) and each chunk's predictions (``test/``, small), so an interrupted column
    resumes, also on another machine given ``fit.pt`` and ``test/``.  With ``max_seconds``
    (which needs ``work``), the column raises ``TimeLimitReached`` instead of starting a
    test chunk that would end past that many seconds from the call, judging by the chunk
    before it.  (The column's first and last layers are fixed or trained as
    ``column.fix_first_last`` says.)

    ``shard`` = (index, count) splits the column between ``count`` processes that share
    ``work`` (one per GPU; all started at once): each computes its share of the Gram tiles
    (``kernel_tiles``); shard 0 waits for every share, fits and saves ``fit.pt``, which the
    others wait for; each then predicts every count-th test chunk; shard 0 waits for all
    chunks and returns the rows, the others return [].  Waiting polls ``work`` every
    ``POLL_SECONDS`` and counts against ``max_seconds``; a shard that died is re-run with
    the same arguments and resumes.  ``seconds`` then sums every shard's compute time.
    """
    for needs, given in (("max_seconds", max_seconds), ("shard", shard)):
        if given is not None and work is None:
            raise ValueError(f"{needs} needs a work folder, where a stopped column's finished "
                             "parts are kept and shards meet")
    deadline = None if max_seconds is None else _clock() + max_seconds
    device = torch.device(device)
    train_count = column.n_train if n_train is None else min(column.n_train, n_train)
    dtype = torch.float32 if device.type == "cuda" else torch.float64
    x_train, labels, x_test, test_labels = standardized_images(data, train_count, n_test, root,
                                                               dtype)
    x_train, x_test = x_train.to(device), x_test.to(device)
    arch = column.architecture(max(depths))
    folder = None if work is None else Path(work) / column.name / column.first_last
    trained_on = fingerprint(x_train) + fingerprint(labels)
    if folder is not None:
        claim(folder, {"architecture": repr(arch), "depths": sorted(depths),
                       "dtype": str(dtype).removeprefix("torch."), "training_set": trained_on})

    def kernels(x1: torch.Tensor, x2: torch.Tensor | None) -> dict[int, torch.Tensor]:
        out = None if folder is None or x2 is not None else folder / "train"
        return kernel_matrix(arch, x1, x2, depths=depths, kernel="ntk", out=out,
                             tile=TILES[column.pooling], progress=progress)

    shares = None if folder is None else folder / "gram_shares"

    def fit() -> dict:
        k_train = kernels(x_train, None)
        models = {d: KernelRegression(ridge="auto").fit(k_train.pop(d).to(device),
                                                        label_targets(labels))
                  for d in sorted(depths)}
        spent = [json.loads(p.read_text()) for p in sorted(shares.glob("*.json"))] if shares else []
        return {"models": models, "device": device_name(device),
                "gram_seconds": sum(s["seconds"] for s in spent),
                "gram_devices": sorted({s["device"] for s in spent})}

    fit_path = None if folder is None else folder / "fit.pt"
    if shard is not None:
        assert folder is not None and shares is not None and fit_path is not None
        _gram_share(arch, x_train, depths, column, shard, folder / "train", shares, progress)
        if shard[0] == 0:
            _wait_for([shares / _share_name(i, shard[1]) for i in range(shard[1])],
                      "shares of the Gram matrix", deadline, progress)
        else:
            _wait_for([fit_path], "fits (shard 0 fits once every Gram share is done)",
                      deadline, progress)
    fitted = _load_or_compute(fit_path, trained_on, fit)

    def predict(part: slice) -> dict:
        if progress:
            print(f"test images {part.start}..{part.stop - 1} of {len(test_labels)}",
                  file=sys.stderr)
        k_test = kernels(x_test[part], x_train)
        return {"scores": {d: fitted["models"][d].predict(k_test[d]).cpu() for d in depths},
                "device": device_name(device)}

    parts = _test_chunks(len(test_labels), len(labels), column.pooling)
    mine = parts if shard is None else parts[shard[0]::shard[1]]  # this process's, in turn
    chunks: list[dict] = []  # those of mine[:len(chunks)]

    def in_time() -> None:
        took = chunks[-1]["seconds"] if chunks else 0.0  # the next chunk's likely time
        if deadline is not None and _clock() + took > deadline:
            raise TimeLimitReached(
                f"{column.name} stopped within its time limit: {len(chunks)} of {len(parts)}"
                f" test chunks done, kept in {folder}"
                + _preview(chunks, mine[:len(chunks)], test_labels, depths))

    def chunk_path(part: slice) -> Path | None:
        return None if folder is None else folder / "test" / f"scores_{part.start:07d}.pt"

    def chunk(part: slice) -> dict:
        return _load_or_compute(chunk_path(part), fingerprint(x_test[part]),
                                functools.partial(predict, part), in_time)

    for part in mine:
        chunks.append(chunk(part))
    if shard is not None:
        if shard[0] != 0:
            return []
        awaited = [path for path in map(chunk_path, parts) if path is not None]
        _wait_for(awaited, "test chunks", deadline, progress)
        chunks = [chunk(part) for part in parts]
    seconds = (fitted["seconds"] + fitted.get("gram_seconds", 0.0)
               + sum(c["seconds"] for c in chunks))
    devices = " + ".join(sorted({fitted["device"], *fitted.get("gram_devices", ())}
                                | {c["device"] for c in chunks}))
    rows = []
    for depth in sorted(depths):
        accuracy = _accuracy(chunks, depth, test_labels)
        model = fitted["models"][depth]
        paper = PAPER[column.name].get(depth)
        rows.append({
            "column": column.name, "depth": depth, "accuracy": round(accuracy, 2),
            "paper": paper, "delta": None if paper is None else round(accuracy - paper, 2),
            "n_train": len(labels), "n_test": len(test_labels), "data": DATA[data],
            "fix_first_last": column.fix_first_last, "device": devices,
            "seconds": round(seconds, 1), "ridge": model.ridge_,
            "condition": f"{model.condition_:.3g}",
        })
    return rows


def _accuracy(chunks: Sequence[dict], depth: int, labels: np.ndarray) -> float:
    """Percent of the chunks' test images (whose labels are ``labels``, in order) that
    the model of ``depth`` classifies right."""
    scores = torch.cat([c["scores"][depth] for c in chunks])
    return 100.0 * float(np.mean(scores.argmax(1).numpy() == labels))


def _preview(chunks: Sequence[dict], parts: Sequence[slice], test_labels: np.ndarray,
             depths: Sequence[int]) -> str:
    """What a stopped column's finished test chunks (those of ``parts`` of the test images)
    say so far: not its cells, a part of the test images, which need not be typical."""
    if not chunks:
        return ""
    labels = np.concatenate([test_labels[p] for p in parts])
    accuracies = " / ".join(f"{_accuracy(chunks, d, labels):.2f}" for d in sorted(depths))
    return (f"; so far {accuracies} % at depths {' / '.join(map(str, sorted(depths)))} on "
            f"{len(labels)} test images (a preview, not the cells)")


def merge_rows(rows: Sequence[dict[str, object]],
               new: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """``rows`` with the cells of ``new`` (a column at a depth) added or replacing theirs,
    in the table's order: by column, then depth."""
    cells = {(str(r["column"]), int(str(r["depth"]))) for r in new}
    kept = [r for r in rows if (str(r["column"]), int(str(r["depth"]))) not in cells]
    return sorted([*kept, *new], key=lambda r: (list(COLUMNS).index(str(r["column"])),
                                                int(str(r["depth"]))))


def reproduce(
    columns: Sequence[str] = DEFAULT_COLUMNS,
    depths: Sequence[int] = DEPTHS,
    *,
    out: str | os.PathLike[str],
    data: str = "jpeg",
    n_train: int | None = None,
    n_test: int | None = None,
    device: str = "cpu",
    root: str | None = None,
    work: str | os.PathLike[str] | None = None,
    fix_first_last: bool | None = None,
    max_seconds: float | None = None,
    shard: Shard | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict[str, object]]:
    """Compute the requested Table 1 cells and write ``out``/table1.csv, table1.md and
    table1.png.  ``fix_first_last`` fixes (True) or trains (False) the first and last layer
    of every column's CNTK instead of the column's own setting (None).  A column whose
    cells ``out``/table1.csv already holds for the same data, sizes, setting and depths is
    not recomputed, so a re-run resumes after the last finished column; with ``work``, an
    unfinished column resumes from its saved parts (see ``run_column``).  ``max_seconds``
    bounds the whole call: a column that would run past it stops between test chunks
    (``TimeLimitReached``; the CSV keeps the columns finished before it).  ``shard`` =
    (index, count) splits every column between count processes sharing ``work`` (see
    ``run_column``); shard 0 writes the files, the others return [] and write nothing.
    """
    start = _clock()
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        raise ValueError(f"columns must be among {', '.join(COLUMNS)}; got {unknown}")
    if data not in DATA:
        raise ValueError(f"data must be one of {', '.join(DATA)}; got {data!r}")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    csv_path = folder / "table1.csv"
    rows = read_rows(csv_path)
    for name in columns:
        column = COLUMNS[name]
        if fix_first_last is not None:
            column = replace(column, fix_first_last=fix_first_last)
        sizes = (_count(column.n_train, n_train, SIZES[data][0]),
                 _count(SIZES[data][1], n_test, SIZES[data][1]))
        done = {int(str(r["depth"])) for r in rows
                if r["column"] == name and r["data"] == DATA[data]
                and (int(str(r["n_train"])), int(str(r["n_test"]))) == sizes
                and fixed_first_last(r) == column.fix_first_last}
        if set(depths) <= done:
            log(f"{name}: already in {csv_path}, skipped")
            continue
        log(f"{name}: {column.pooling} CNTK, first and last layer {column.first_last}, "
            f"depths {sorted(depths)}, on {device}")
        left = None if max_seconds is None else max_seconds - (_clock() - start)
        new = run_column(column, depths, data=data, n_train=n_train, n_test=n_test,
                         device=device, root=root, work=work, max_seconds=left, shard=shard,
                         progress=progress)
        if shard is not None and shard[0] != 0:
            log(f"{name}: shard {shard[0]} of {shard[1]} did its share; shard 0 writes the rows")
            continue
        rows = merge_rows(rows, new)
        write_rows(csv_path, FIELDS, rows)
        for r in new:
            log(f"  depth {r['depth']:>2}: {r['accuracy']:.2f}% (paper {r['paper']}) "
                f"in {r['seconds']} s, ridge {r['ridge']}")
    if shard is not None and shard[0] != 0:
        return []
    from .table1_report import write_figure, write_markdown  # matplotlib only when writing

    write_markdown(rows, folder / "table1.md")
    write_figure(rows, folder / "table1.png")
    return rows
