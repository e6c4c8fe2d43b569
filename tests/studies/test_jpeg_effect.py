"""studies/table1_jpeg_effect.py: its cross-validation predicts every image once, from the
other folds only."""

from __future__ import annotations

import numpy as np
import torch

from tests.scripts import load_script

jpeg_effect = load_script("studies/table1_jpeg_effect.py")


def test_each_fold_is_predicted_from_the_others_alone():
    per_fold = 4
    n = jpeg_effect.FOLDS * per_fold
    rng = np.random.default_rng(0)
    features = rng.standard_normal((n, 40))
    gram = torch.from_numpy(features @ features.T)
    labels = rng.integers(0, 10, n)
    got = jpeg_effect.fold_predictions(gram, labels, per_fold)
    for f in range(jpeg_effect.FOLDS):
        held = np.arange(f * per_fold, (f + 1) * per_fold)
        rest = np.setdiff1d(np.arange(n), held)
        k = gram.numpy()
        scores = k[np.ix_(held, rest)] @ np.linalg.solve(k[np.ix_(rest, rest)],
                                                          np.eye(10)[labels[rest]] - 0.1)
        np.testing.assert_array_equal(got[held], scores.argmax(1))
    relabelled = labels.copy()
    relabelled[:per_fold] = (labels[:per_fold] + 1) % 10  # the first fold's own labels
    again = jpeg_effect.fold_predictions(gram, relabelled, per_fold)
    np.testing.assert_array_equal(again[:per_fold], got[:per_fold])
    assert (again[per_fold:] != got[per_fold:]).any()  # the others learn from them
