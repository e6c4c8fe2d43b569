"""studies/table1_authors_float32.py: its emulation of the authors' float32 arithmetic is
the vanilla CNTK off the Gram diagonal and low on it, the effect that study measures."""

from __future__ import annotations

import torch

import ntkcheck as nc
from tests.scripts import load_script

authors = load_script("studies/table1_authors_float32.py")


def test_emulation_is_the_cntk_but_low_on_the_diagonal():
    images, _ = nc.data.cifar10_exact("train", 5)
    x = nc.data.standardize(images, reference=images)
    depths = (3, 6)
    want = nc.CNN(depth=6, pooling="flatten").ntk(x, depths=depths)
    got = authors.authors_gram(x, depths, tile=2)  # tiles that do not divide 5
    off = ~torch.eye(5, dtype=torch.bool)
    for d in depths:
        g, w = got[d].double(), want[d]
        assert got[d].dtype == torch.float32
        assert ((g - w).abs() / w.abs())[off].max() < 1e-5  # float32 rounding
        shift = (g.diagonal() - w.diagonal()) / w.diagonal()
        assert (shift < -1e-5).all() and (shift > -1e-3).all(), shift
