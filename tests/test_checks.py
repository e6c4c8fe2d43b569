"""Bad input gets a clear error naming the argument and what was expected."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import ntkcheck as nc

X = torch.ones(2, 3, 4, 4, dtype=torch.float64)
V = torch.ones(2, 5, dtype=torch.float64)


@pytest.mark.parametrize("make,error,words", [
    (lambda: nc.FC(depth=0), ValueError, "depth must be >= 1"),
    (lambda: nc.FC(depth=2, fix_first_last=True), ValueError, "depth must be >= 3"),
    (lambda: nc.FC(depth=3.0), TypeError, "depth must be an int"),
    (lambda: nc.FC(depth=True), TypeError, "depth must be an int"),
    (lambda: nc.FC(depth=3, fix_first_last="yes"), TypeError, "fix_first_last"),
    (lambda: nc.CNN(depth=1), ValueError, "depth must be >= 2"),
    (lambda: nc.CNN(depth=2, fix_first_last=True), ValueError, "would train no layer"),
    (lambda: nc.CNN(depth=3, pooling="avg"), ValueError, "pooling must be 'flatten' or 'gap'"),
    (lambda: nc.CNN(depth=3, filter_size=4), ValueError, "filter_size must be odd"),
    (lambda: nc.CNN(depth=3, filter_size=-1), ValueError, "filter_size must be >= 1"),
])
def test_bad_architecture(make, error, words):
    with pytest.raises(error, match=words):
        make()


@pytest.mark.parametrize("call,error,words", [
    (lambda: nc.CNN(depth=3).ntk(X.numpy()), TypeError, "x1 must be a torch.Tensor"),
    (lambda: nc.CNN(depth=3).ntk(X[0]), ValueError, r"x1 must have shape \(n, C, H, W\)"),
    (lambda: nc.FC(depth=3).ntk(X), ValueError, r"x1 must have shape \(n, d\)"),
    (lambda: nc.CNN(depth=3).ntk(X, X[:, :2]), ValueError, "x1 and x2 must agree"),
    (lambda: nc.FC(depth=3).nngp(V, V[:, :4]), ValueError, "x1 and x2 must agree"),
    (lambda: nc.CNN(depth=3).ntk(X[:, :, :0]), ValueError, "non-empty"),
    (lambda: nc.FC(depth=3).ntk(V[:, :0]), ValueError, r"non-empty \(n, d\) dims"),
    (lambda: nc.CNN(depth=3).ntk(X.long()), TypeError, "x1 must have dtype float32 or float64"),
    (lambda: nc.FC(depth=3).ntk(V, V.to(torch.complex128)), TypeError, "x2 must have dtype"),
    (lambda: nc.FC(depth=3).ntk(V.half()), TypeError, "float32 or float64"),
    (lambda: nc.FC(depth=3).ntk(V, V.float()), TypeError, "x1 is torch.float64 but x2"),
    (lambda: nc.FC(depth=3).ntk(V, V.to("meta")), ValueError, "x1 is on cpu but x2 is on meta"),
    (lambda: nc.FC(depth=3).ntk(torch.tensor([[1.0, float("nan")]])), ValueError,
     "x1 contains NaN"),
    (lambda: nc.CNN(depth=3).ntk(X, X * float("inf")), ValueError, "x2 contains NaN or inf"),
    (lambda: nc.CNN(depth=4).ntk(X, depths=(2, 5)), ValueError, r"depths must be ints in \[2, 4\]"),
    (lambda: nc.CNN(depth=4, fix_first_last=True).ntk(X, depths=(2,)), ValueError, r"\[3, 4\]"),
    (lambda: nc.CNN(depth=4).ntk(X, depths=()), ValueError, "at least one depth"),
    (lambda: nc.CNN(depth=4).ntk(X, depths="ab"), ValueError, "depths"),
    (lambda: nc.CNN(depth=4).ntk(X, max_memory=0), ValueError, "max_memory must be >= 1"),
    (lambda: nc.CNN(depth=4, pooling="gap").ntk(X, max_memory=1000), ValueError,
     r"max_memory=1000 bytes is below the 20480 bytes that one pair of \(3, 4, 4\) "
     "torch.float64 inputs needs"),  # (4 x 4)^2 position pairs x 8 bytes x 10 live fields
    (lambda: nc.CNN(depth=4).ntk(X, by_layer="yes"), TypeError, "by_layer must be True or False"),
    (lambda: nc.CNN(depth=4).ntk(X, by_layer=True, backend="triton"), ValueError,
     "backend='triton' cannot split the NTK by layer"),
])
def test_bad_call(call, error, words):
    with pytest.raises(error, match=words):
        call()


@pytest.mark.parametrize("arch", [nc.FC(depth=3), nc.CNN(depth=3, pooling="gap")], ids=repr)
def test_an_architecture_cannot_be_changed_past_its_checks(arch):
    """Architectures are values: a setting cannot be changed after __post_init__ checked
    it (depth=0 would skip the depth check), and equal settings are equal, hashable keys."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        arch.depth = 0
    assert {arch: 1}[dataclasses.replace(arch)] == 1


def test_zero_and_constant_images_give_finite_kernels():
    images = torch.stack([torch.zeros(3, 5, 5), torch.full((3, 5, 5), 2.0), torch.randn(3, 5, 5)])
    for dtype in (torch.float32, torch.float64):
        for pooling in ("flatten", "gap"):
            k = nc.CNN(depth=5, pooling=pooling).ntk(images.to(dtype))
            assert torch.isfinite(k).all() and (k[0] == 0).all() and k.dtype == dtype


def test_numpy_hint_and_single_depth_int():
    k = nc.FC(depth=3).ntk(torch.as_tensor(np.ones((2, 3))), depths=3)
    assert set(k) == {3}


def test_empty_batches_give_empty_matrices():
    none = torch.zeros(0, 3, 4, 4, dtype=torch.float64)
    assert nc.CNN(depth=3).ntk(none, X).shape == (0, 2)
    assert nc.CNN(depth=3, pooling="gap").nngp(X, none).shape == (2, 0)
    assert nc.FC(depth=2).ntk(torch.zeros(0, 5)).shape == (0, 0)
    assert nc.CNN(depth=3).ntk(none, X, by_layer=True).shape == (3, 0, 2)
