"""The exact-pixel CIFAR-10 reader (needs ../shared/data, as CI has)."""

from __future__ import annotations

import importlib
import zipfile

import numpy as np
import pytest
import torch

from ntkcheck.data import cifar10, cifar10_exact, data_root, standardize, write_slice
from ntkcheck.data.cifar10 import EXACT_SUBSET, JPEG_ZIP, cache_dir, official_names


def test_first_images_and_labels_in_official_order():
    images, labels = cifar10_exact("train", n=5)
    assert images.shape == (5, 32, 32, 3) and images.dtype == np.uint8
    with np.load(data_root() / EXACT_SUBSET) as archive:
        official = archive["labels_train_all"][archive["train_index"][:5]]
    np.testing.assert_array_equal(labels, official)


def test_standardize_uses_the_reference_statistics():
    train, _ = cifar10_exact("train", n=200)
    x = standardize(train, reference=train)
    assert x.shape == (200, 3, 32, 32) and x.dtype == torch.float64
    torch.testing.assert_close(x.mean((0, 2, 3)), torch.zeros(3, dtype=torch.float64),
                               atol=1e-12, rtol=0)
    torch.testing.assert_close(x.std((0, 2, 3), correction=0),
                               torch.ones(3, dtype=torch.float64), atol=1e-12, rtol=0)


def test_missing_data_names_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("NTKCHECK_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        cifar10_exact("test", n=1)
    with pytest.raises(ValueError, match="split must be"):
        cifar10_exact("valid", n=1, root=tmp_path)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NTKCHECK_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_jpeg_set_is_in_official_order(cache):
    images, labels = cifar10("test")
    assert images.shape == (10_000, 32, 32, 3) and images.dtype == np.uint8
    with np.load(data_root() / EXACT_SUBSET) as archive:
        np.testing.assert_array_equal(labels, archive["labels_test_all"])
        exact, index = archive["x_test"], archive["test_index"]
    # the JPEG re-encoding is within 13/255 (mean absolute) of the exact pixels on every
    # image (data README); a neighbour in the wrong order would be ~50-70/255 away
    diff = np.abs(images[index].astype(float) - exact).mean(axis=(1, 2, 3))
    assert diff.max() < 13.5 and diff.mean() < 7
    shifted = np.abs(images[index[1:]].astype(float) - exact[:-1]).mean(axis=(1, 2, 3))
    assert np.median(shifted) > 30


def test_second_call_reads_the_cache(cache, monkeypatch):
    first = cifar10("test", n=7)
    assert not list(cache.glob("*.npz")), "a slice is decoded alone, not cached"
    whole = cifar10("test")
    assert len(list(cache.glob("*.npz"))) == 1
    np.testing.assert_array_equal(whole[0][:7], first[0])

    def no_decoding(*args):
        raise AssertionError("decoded again despite the cache")

    # the module, not the function ntkcheck.data exports under the same name
    monkeypatch.setattr(importlib.import_module("ntkcheck.data.cifar10"), "_decode",
                        no_decoding)
    again = cifar10("test", n=7)
    np.testing.assert_array_equal(again[0], first[0])
    np.testing.assert_array_equal(again[1], first[1])
    assert cifar10("test", n=0)[0].shape == (0, 32, 32, 3)


def test_a_written_slice_serves_its_images_and_only_them(tmp_path, cache):
    """What a GPU run carries: a zip of the images it uses, and the official labels."""
    out = write_slice(tmp_path / "slice", n_train=2, n_test=3)
    with zipfile.ZipFile(out / JPEG_ZIP) as part:
        assert sorted(part.namelist()) == sorted(
            official_names("train", cifar10("train", n=2)[1])
            + official_names("test", cifar10("test", n=3)[1]))
    with np.load(out / EXACT_SUBSET) as labels:
        assert sorted(labels.files) == ["labels_test_all", "labels_train_all"]
    for split, n in (("train", 2), ("test", 3)):
        images, labels = cifar10(split, n=n, root=out)
        want_images, want_labels = cifar10(split, n=n)
        np.testing.assert_array_equal(images, want_images)
        np.testing.assert_array_equal(labels, want_labels)
    with pytest.raises(ValueError, match="has no test/"):
        cifar10("test", n=4, root=out)
    with pytest.raises(ValueError, match="n_test must be <= 10000"):
        write_slice(tmp_path / "bad", n_train=1, n_test=10_001)
    with pytest.raises(TypeError, match="n_train must be an int"):
        write_slice(tmp_path / "bad", n_train=2.0)


def test_names_follow_the_per_class_count():
    assert official_names("train", np.array([6, 9, 9, 6])) == [
        "train/frog/0000.jpg", "train/truck/0000.jpg", "train/truck/0001.jpg",
        "train/frog/0001.jpg"]


def test_jpeg_loader_bad_arguments(tmp_path, monkeypatch, cache):
    with pytest.raises(ValueError, match="split must be"):
        cifar10("val")
    with pytest.raises(ValueError, match="n must be between 0 and 10000"):
        cifar10("test", n=10_001)
    with pytest.raises(ValueError, match="n must be between 0 and 50000 for the train"):
        cifar10("train", n=50_001)
    monkeypatch.setenv("NTKCHECK_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"cifar10_jpeg.zip not found.*{tmp_path}"):
        cifar10("test", n=1)


def test_the_data_root_is_the_argument_else_ntkcheck_data_else_shared_data_beside(
        tmp_path, monkeypatch):
    """../shared/data beside the project (the folder holding the package), else beside the
    working directory; the error lists where it looked."""
    def holding(folder):
        folder.mkdir(parents=True)
        (folder / EXACT_SUBSET).touch()
        return folder

    module = importlib.import_module("ntkcheck.data.cifar10")
    project = tmp_path / "a" / "project"
    monkeypatch.setattr(module, "__file__", str(project / "ntkcheck" / "data" / "cifar10.py"))
    monkeypatch.delenv("NTKCHECK_DATA", raising=False)
    (tmp_path / "w" / "run").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "w" / "run")
    with pytest.raises(FileNotFoundError, match=f"looked in: {tmp_path / 'a' / 'shared'}"):
        data_root()
    beside_cwd = holding(tmp_path / "w" / "shared" / "data")
    assert data_root() == beside_cwd
    beside_project = holding(tmp_path / "a" / "shared" / "data")
    assert data_root() == beside_project
    monkeypatch.setenv("NTKCHECK_DATA", str(holding(tmp_path / "env")))
    assert data_root() == tmp_path / "env"
    assert data_root(holding(tmp_path / "arg")) == tmp_path / "arg"


def test_the_cache_is_ntkcheck_cache_else_under_xdg_cache_home_else_home(tmp_path,
                                                                         monkeypatch):
    monkeypatch.setenv("NTKCHECK_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("NTKCHECK_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "ntkcheck"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "ntkcheck"


def test_exact_subset_with_jpeg_pixels_is_the_same_images():
    exact, labels = cifar10_exact("train", n=300)
    jpeg, jpeg_labels = cifar10_exact("train", n=300, pixels="jpeg")
    with np.load(data_root() / EXACT_SUBSET) as archive:  # each from its own source
        np.testing.assert_array_equal(exact, archive["x_train"][:300])
        assert (archive["train_index"][:20] == np.arange(20)).all()
    np.testing.assert_array_equal(jpeg[:20], cifar10("train", n=20)[0])
    np.testing.assert_array_equal(labels, jpeg_labels)
    diff = np.abs(jpeg.astype(float) - exact).mean(axis=(1, 2, 3))
    assert diff.max() < 13.5 and 3 < diff.mean() < 8  # the README's 5.8 on average
    with pytest.raises(ValueError, match="pixels must be"):
        cifar10_exact("train", n=1, pixels="png")
