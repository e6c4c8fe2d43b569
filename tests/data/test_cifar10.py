"""The exact-pixel CIFAR-10 reader (needs ../shared/data, as CI has)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntkcheck.data import cifar10_exact, data_root, standardize
from ntkcheck.data.cifar10 import EXACT_SUBSET


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
