"""CIFAR-10 from the project's data folder (no download, ever).

Only the exact-pixel subset (``cifar10_exact_subset.npz``: 5,085 training and 1,017 test
images recovered from the official batches) is read here; see the data folder's README.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck")
EXACT_SUBSET = "cifar10_exact_subset.npz"


def data_root(root: str | os.PathLike[str] | None = None, filename: str = EXACT_SUBSET) -> Path:
    """The folder holding ``filename``: ``root`` if given, else ``$NTKCHECK_DATA``, else
    ``../shared/data`` beside the project (or beside the working directory)."""
    if root is not None:
        candidates = [Path(root)]
    elif os.environ.get("NTKCHECK_DATA"):
        candidates = [Path(os.environ["NTKCHECK_DATA"])]
    else:
        project = Path(__file__).resolve().parents[2]
        candidates = [project.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for folder in candidates:
        if (folder / filename).is_file():
            return folder
    looked = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"{filename} not found; looked in: {looked}. Put the CIFAR-10 files there, pass "
        "root=..., or set NTKCHECK_DATA to their folder."
    )


def cifar10_exact(
    split: str = "test", n: int | None = None, root: str | os.PathLike[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` images of the exact-pixel subset: (n, 32, 32, 3) uint8 RGB, (n,) labels."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    with np.load(data_root(root) / EXACT_SUBSET) as archive:
        images, labels = archive[f"x_{split}"], archive[f"y_{split}"]
    return images[:n], labels[:n].astype(np.int64)


def standardize(
    images: np.ndarray, reference: np.ndarray, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """(n, 32, 32, 3) uint8 -> (n, 3, 32, 32) tensor as the paper's code prepares it: pixels
    / 255, then per-channel standardization with the mean and std of ``reference`` images."""
    scaled = images.astype(np.float64) / 255.0
    ref = reference.astype(np.float64) / 255.0
    mean, std = ref.mean(axis=(0, 1, 2)), ref.std(axis=(0, 1, 2))
    return torch.from_numpy((scaled - mean) / std).permute(0, 3, 1, 2).contiguous().to(dtype)
