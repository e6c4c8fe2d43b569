"""studies/table1_jpeg_effect.py: its cross-validation predicts every image once, from the
other folds only, and from just the first images of each when asked for a smaller training
set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.scripts import load_script

jpeg_effect = load_script("studies/table1_jpeg_effect.py")


def gram_and_labels(per_fold: int) -> tuple[torch.Tensor, np.ndarray]:
    n = jpeg_effect.FOLDS * per_fold
    rng = np.random.default_rng(0)
    features = rng.standard_normal((n, 40))
    return torch.from_numpy(features @ features.T), rng.integers(0, 10, n)


def expected(gram: torch.Tensor, labels: np.ndarray, held: np.ndarray,
             train: np.ndarray) -> np.ndarray:
    k = gram.numpy()
    scores = k[np.ix_(held, train)] @ np.linalg.solve(k[np.ix_(train, train)],
                                                       np.eye(10)[labels[train]] - 0.1)
    return scores.argmax(1)


def test_each_fold_is_predicted_from_the_others_alone():
    per_fold = 4
    gram, labels = gram_and_labels(per_fold)
    n = len(labels)
    got = jpeg_effect.fold_predictions(gram, labels, per_fold)
    for f in range(jpeg_effect.FOLDS):
        held = np.arange(f * per_fold, (f + 1) * per_fold)
        rest = np.setdiff1d(np.arange(n), held)
        np.testing.assert_array_equal(got[held], expected(gram, labels, held, rest))
    relabelled = labels.copy()
    relabelled[:per_fold] = (labels[:per_fold] + 1) % 10  # the first fold's own labels
    again = jpeg_effect.fold_predictions(gram, relabelled, per_fold)
    np.testing.assert_array_equal(again[:per_fold], got[:per_fold])
    assert (again[per_fold:] != got[per_fold:]).any()  # the others learn from them


def test_a_smaller_training_set_is_the_first_images_of_each_other_fold():
    per_fold, first = 6, 2
    gram, labels = gram_and_labels(per_fold)
    got = jpeg_effect.fold_predictions(gram, labels, per_fold, first)
    for f in range(jpeg_effect.FOLDS):
        held = np.arange(f * per_fold, (f + 1) * per_fold)
        train = np.array([g * per_fold + i for g in range(jpeg_effect.FOLDS) if g != f
                          for i in range(first)])
        np.testing.assert_array_equal(got[held], expected(gram, labels, held, train))
    assert (got != jpeg_effect.fold_predictions(gram, labels, per_fold)).any()


def test_training_sizes_are_whole_images_from_each_other_fold():
    assert jpeg_effect.train_sizes(None, 1017) == [1017]
    assert jpeg_effect.train_sizes("1015,5085", 1017) == [203, 1017]
    for bad in ("1016", "0", "5090"):
        with pytest.raises(SystemExit, match="--train-sizes"):
            jpeg_effect.train_sizes(bad, 1017)
