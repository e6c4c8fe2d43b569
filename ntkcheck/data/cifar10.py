"""CIFAR-10 from the project's data folder (no download, ever).

Two sources, both described in the data folder's README: ``cifar10`` reads all 60,000
images from ``cifar10_jpeg.zip`` (JPEG re-encodings) in official order; ``cifar10_exact``
reads the exact pixels of a 5,085 + 1,017 image subset (``cifar10_exact_subset.npz``).
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .._checks import check_int

CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck")
EXACT_SUBSET = "cifar10_exact_subset.npz"
JPEG_ZIP = "cifar10_jpeg.zip"
SPLIT_SIZES = {"train": 50_000, "test": 10_000}


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


def cache_dir() -> Path:
    """Where decoded arrays are kept: ``$NTKCHECK_CACHE``, else ``$XDG_CACHE_HOME/ntkcheck``,
    else ``~/.cache/ntkcheck``."""
    if os.environ.get("NTKCHECK_CACHE"):
        return Path(os.environ["NTKCHECK_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ntkcheck"


def official_names(split: str, labels: np.ndarray) -> list[str]:
    """Zip member of every image in official order: the k-th image of class c (counting in
    official order) is ``<split>/<class name>/<k:04d>.jpg``."""
    seen = [0] * len(CLASSES)
    names = []
    for label in labels.tolist():
        names.append(f"{split}/{CLASSES[label]}/{seen[label]:04d}.jpg")
        seen[label] += 1
    return names


def _decode(zip_path: Path, names: list[str]) -> np.ndarray:
    images = np.empty((len(names), 32, 32, 3), np.uint8)
    with zipfile.ZipFile(zip_path) as archive:
        for i, name in enumerate(names):
            try:
                data = archive.read(name)
            except KeyError:
                raise ValueError(f"{zip_path} has no {name}: not the CIFAR-10 JPEG set "
                                 "described in the data folder's README") from None
            with Image.open(io.BytesIO(data)) as image:
                images[i] = np.asarray(image.convert("RGB"))
    return images


def cifar10(
    split: str = "train", n: int | None = None, root: str | os.PathLike[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` (default all) images of a CIFAR-10 split in official order, from the
    JPEG set: (n, 32, 32, 3) uint8 RGB and (n,) int64 labels.

    Images come straight out of ``cifar10_jpeg.zip``, ordered by the official labels in
    ``cifar10_exact_subset.npz`` (both in the data folder, see ``data_root``), so "the first
    2,000 training images" are the official ones.  The pixels are JPEG re-encodings (mean
    absolute difference 5.8/255 from the originals); ``cifar10_exact`` has exact pixels of a
    subset.  A whole split, once decoded, is cached in ``cache_dir()``, and later calls
    load it (or their first ``n``) at once; before that, the first ``n`` images are decoded
    alone, so a zip that holds only them serves too.
    """
    if split not in SPLIT_SIZES:
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    if n is not None and not 0 <= n <= SPLIT_SIZES[split]:
        raise ValueError(f"n must be between 0 and {SPLIT_SIZES[split]} for the {split} "
                         f"split; got {n}")
    folder = data_root(root, JPEG_ZIP)
    zip_path = folder / JPEG_ZIP
    stat = zip_path.stat()
    cached = cache_dir() / f"cifar10-jpeg-{split}-{stat.st_size}-{stat.st_mtime_ns}.npz"
    if cached.is_file():
        with np.load(cached) as archive:
            return archive["images"][:n], archive["labels"][:n]
    with np.load(data_root(folder, EXACT_SUBSET) / EXACT_SUBSET) as archive:
        labels = archive[f"labels_{split}_all"].astype(np.int64)
    names = official_names(split, labels)
    if n is not None and n < len(names):  # a slice: only its images are read (and needed)
        return _decode(zip_path, names[:n]), labels[:n]
    images = _decode(zip_path, names)
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(".partial.npz")
    np.savez(partial, images=images, labels=labels)
    os.replace(partial, cached)  # whole or absent, even if interrupted
    return images, labels


def write_slice(
    out: str | os.PathLike[str],
    n_train: int,
    n_test: int = SPLIT_SIZES["test"],
    root: str | os.PathLike[str] | None = None,
) -> Path:
    """Write a data folder ``out`` from which ``cifar10(split, n, root=out)`` reads the first
    ``n_train`` training and ``n_test`` test images, as from ``root``: a
    ``cifar10_jpeg.zip`` holding just those JPEG files, copied as they are, and a
    ``cifar10_exact_subset.npz`` holding just the official label arrays.  What a run on
    another machine carries instead of the whole data folder (the full zip is 59 MiB; the
    first 2,000 training and all 10,000 test images take 12 MiB).  Returns ``out``."""
    for name, n, split in (("n_train", n_train, "train"), ("n_test", n_test, "test")):
        if check_int(name, n, 0) > SPLIT_SIZES[split]:
            raise ValueError(f"{name} must be <= {SPLIT_SIZES[split]}, the {split} split's "
                             f"size; got {n}")
    folder = data_root(root, JPEG_ZIP)
    with np.load(data_root(folder, EXACT_SUBSET) / EXACT_SUBSET) as archive:
        labels = {split: archive[f"labels_{split}_all"] for split in SPLIT_SIZES}
    names = (official_names("train", labels["train"])[:n_train]
             + official_names("test", labels["test"])[:n_test])
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    partial = target / (JPEG_ZIP + ".partial")
    with zipfile.ZipFile(folder / JPEG_ZIP) as full, zipfile.ZipFile(partial, "w") as part:
        for name in names:
            part.writestr(name, full.read(name))  # stored: JPEG does not compress further
    os.replace(partial, target / JPEG_ZIP)
    np.savez(target / EXACT_SUBSET, labels_train_all=labels["train"],
             labels_test_all=labels["test"])
    return target


def cifar10_exact(
    split: str = "test",
    n: int | None = None,
    root: str | os.PathLike[str] | None = None,
    pixels: str = "exact",
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` images of the exact-pixel subset: (n, 32, 32, 3) uint8 RGB, (n,) labels.

    ``pixels="jpeg"`` gives the same images as the JPEG set has them (read from
    ``cifar10_jpeg.zip``), so exact and re-encoded pixels can be compared image for image.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    if pixels not in ("exact", "jpeg"):
        raise ValueError(f"pixels must be 'exact' or 'jpeg'; got {pixels!r}")
    with np.load(data_root(root) / EXACT_SUBSET) as archive:
        images, labels = archive[f"x_{split}"][:n], archive[f"y_{split}"][:n]
        positions, official = archive[f"{split}_index"][:n], archive[f"labels_{split}_all"]
    if pixels == "jpeg":
        folder = data_root(root, JPEG_ZIP)
        names = official_names(split, official)
        images = _decode(folder / JPEG_ZIP, [names[i] for i in positions])
    return images, labels.astype(np.int64)


def standardize(
    images: np.ndarray, reference: np.ndarray, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """(n, 32, 32, 3) uint8 -> (n, 3, 32, 32) tensor as the paper's code prepares it: pixels
    / 255, then per-channel standardization with the mean and std of ``reference`` images."""
    scaled = images.astype(np.float64) / 255.0
    ref = reference.astype(np.float64) / 255.0
    mean, std = ref.mean(axis=(0, 1, 2)), ref.std(axis=(0, 1, 2))
    return torch.from_numpy((scaled - mean) / std).permute(0, 3, 1, 2).contiguous().to(dtype)
