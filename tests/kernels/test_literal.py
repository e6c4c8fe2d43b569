"""The package against the literal float64 formulas of tests/kernels/literal.py, at 1e-10."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ntkcheck as nc
from ntkcheck.kernels.patches import patch_sum

from . import literal

TOL = 1e-10


def assert_matches(got: torch.Tensor, want: np.ndarray) -> None:
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=TOL * scale)


def literal_matrices(fn, x1: np.ndarray, x2: np.ndarray, **kw):
    """(NTK, NNGP, NTK by layer): (n1, n2), (n1, n2) and (depth, n1, n2) arrays."""
    pairs = [[fn(a, b, **kw) for b in x2] for a in x1]
    terms = np.array([[p[0] for p in row] for row in pairs]).transpose(2, 0, 1)
    return terms.sum(0), np.array([[p[1] for p in row] for row in pairs]), terms


@pytest.fixture
def rng():
    return np.random.default_rng(0)


BACKENDS = ["torch", "compiled"]  # the reference, and it with each activation compiled


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("depth,fix", [(1, False), (2, False), (3, False), (5, False),
                                       (3, True), (6, True)])
def test_fc_matches_eq_7_to_9(rng, depth, fix, backend):
    x1, x2 = rng.normal(size=(4, 5)), rng.normal(size=(3, 5))
    x1[2] = 0.0  # a zero input: finite kernel row of zeros
    ntk, nngp, terms = literal_matrices(literal.fc_kernels, x1, x2, depth=depth,
                                        fix_first_last=fix)
    arch = nc.FC(depth=depth, fix_first_last=fix)
    t1, t2 = torch.from_numpy(x1), torch.from_numpy(x2)
    assert_matches(arch.ntk(t1, t2, backend=backend), ntk)
    assert_matches(arch.nngp(t1, t2, backend=backend), nngp)
    assert_matches(arch.ntk(t1, t2, backend=backend, by_layer=True), terms)
    assert np.all(ntk[2] == 0)


CNN_CASES = [
    # depth, pooling, q, fix, (C, P, Q)
    (2, "flatten", 3, False, (2, 4, 3)),
    (3, "flatten", 3, False, (2, 4, 3)),
    (4, "flatten", 1, False, (3, 3, 3)),
    (3, "flatten", 5, True, (1, 4, 4)),
    (2, "gap", 3, False, (2, 3, 4)),
    (3, "gap", 3, False, (2, 4, 3)),
    (4, "gap", 3, True, (2, 3, 3)),
    (3, "gap", 5, False, (1, 3, 4)),
    (3, "gap", 1, True, (2, 3, 3)),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("depth,pooling,q,fix,shape", CNN_CASES)
def test_cnn_matches_sec_4_and_h(rng, depth, pooling, q, fix, shape, backend):
    x1, x2 = rng.normal(size=(2, *shape)), rng.normal(size=(2, *shape))
    x2[1, :, :2, :] = 0.0  # zero patches: guarded norms, no NaN
    ntk, nngp, terms = literal_matrices(
        literal.cntk_kernels, x1, x2, depth=depth, pooling=pooling, q=q, fix_first_last=fix
    )
    arch = nc.CNN(depth=depth, pooling=pooling, filter_size=q, fix_first_last=fix)
    t1, t2 = torch.from_numpy(x1), torch.from_numpy(x2)
    assert_matches(arch.ntk(t1, t2, backend=backend), ntk)
    assert_matches(arch.nngp(t1, t2, backend=backend), nngp)
    assert_matches(arch.ntk(t1, t2, backend=backend, by_layer=True), terms)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cnn_gram_and_zero_image(rng, backend):
    x = rng.normal(size=(3, 2, 3, 3))
    x[1] = 0.0
    ntk, nngp, terms = literal_matrices(literal.cntk_kernels, x, x, depth=3, pooling="gap", q=3)
    arch = nc.CNN(depth=3, pooling="gap")
    got = arch.ntk(torch.from_numpy(x), backend=backend)
    assert_matches(got, ntk)
    assert torch.all(got[1] == 0) and torch.all(got[:, 1] == 0)
    assert_matches(arch.ntk(torch.from_numpy(x), backend=backend, by_layer=True), terms)


ONE_GAP_PAIR = 16**2 * 8 * 10  # (4x4)^2 float64 entries x 10 live fields


@pytest.mark.parametrize("pooling", ["flatten", "gap"])
def test_tiles_under_a_tiny_memory_bound_give_the_same_matrices(rng, pooling):
    """A byte budget so small that a GAP tile holds one pair: same numbers, Gram and cross."""
    x1 = torch.from_numpy(rng.normal(size=(5, 2, 4, 4)))
    x2 = torch.from_numpy(rng.normal(size=(3, 2, 4, 4)))
    arch = nc.CNN(depth=4, pooling=pooling)
    for a, b in ((x1, None), (x1, x2)):
        whole = arch.ntk(a, b, depths=(2, 4))
        tiled = arch.ntk(a, b, depths=(2, 4), max_memory=ONE_GAP_PAIR)
        for d in whole:
            torch.testing.assert_close(tiled[d], whole[d], rtol=1e-13, atol=0)
    gram = arch.ntk(x1, max_memory=ONE_GAP_PAIR)
    assert torch.equal(gram, gram.T)
    if pooling == "gap":  # by layer, a pair carries 2 x depth more fields: 18 at depth 4
        with pytest.raises(ValueError, match="max_memory=.* is below"):
            arch.ntk(x1, by_layer=True, max_memory=ONE_GAP_PAIR)
    one_pair = ONE_GAP_PAIR * 18 // 10
    for a, b in ((x1, None), (x1, x2)):
        whole = arch.ntk(a, b, depths=(2, 4), by_layer=True)
        tiled = arch.ntk(a, b, depths=(2, 4), by_layer=True, max_memory=one_pair)
        for d in whole:
            assert tiled[d].shape == (d, len(a), len(a if b is None else b))
            torch.testing.assert_close(tiled[d], whole[d], rtol=1e-13, atol=0)
    gram = arch.ntk(x1, by_layer=True, max_memory=one_pair)
    assert torch.equal(gram, gram.mT)


def test_layer_rule_runs_once_per_input_and_twice_per_tile_and_layer(rng, monkeypatch):
    """Depth L on one-pair tiles: the per-image variances take the patch sum L - 1 times
    per input set (Sigma^(0) and h = 1 .. L - 2, whatever the number of pairs); each tile
    takes it once for Sigma^(0) and twice (Sigma, Theta) for each of layers 1 .. L - 2,
    none after the last activation, whose K and K-dot go straight to the readout."""
    calls = {"image": 0, "pair": 0}

    def counting(t, axes, radius):
        calls["pair" if len(axes[0]) == 2 else "image"] += 1
        return patch_sum(t, axes, radius)

    monkeypatch.setattr("ntkcheck.kernels.rules.patch_sum", counting)
    x1 = torch.from_numpy(rng.normal(size=(3, 2, 3, 3)))
    arch = nc.CNN(depth=5, pooling="gap")
    for x2, sides, tiles in ((None, 1, 6), (x1[:2], 2, 6)):
        calls.update(image=0, pair=0)
        arch.ntk(x1, x2, max_memory=9**2 * 8 * 10)  # one pair per tile
        assert calls == {"image": sides * (5 - 1), "pair": tiles * (1 + 2 * (5 - 2))}


def test_float32_error_against_float64(rng):
    """float32 is allowed for speed; its error on image-like inputs is measured here."""
    x = rng.normal(size=(4, 3, 8, 8))
    for arch in (nc.FC(depth=6), nc.CNN(depth=6, pooling="flatten"),
                 nc.CNN(depth=6, pooling="gap", fix_first_last=True)):
        data = torch.from_numpy(x.reshape(4, -1) if isinstance(arch, nc.FC) else x)
        exact = arch.ntk(data)
        single = arch.ntk(data.float())
        assert single.dtype == torch.float32
        rel = float((single.double() - exact).abs().max() / exact.abs().max())
        assert rel < 1e-5, rel


def test_flatten_never_builds_position_pair_tensors():
    """128 x 128 images: one (HW)^2 field would be 2 GiB in float64; a same-position field
    is 128 KiB, so 2 MiB holds all ten live fields of a pair."""
    x = torch.randn(2, 3, 128, 128, dtype=torch.float64)
    arch = nc.CNN(depth=3, pooling="flatten")
    gram = arch.ntk(x, max_memory=2**21)
    assert torch.isfinite(gram).all() and gram.shape == (2, 2)
