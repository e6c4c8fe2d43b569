"""Kernel identities, checked on inputs hypothesis draws (float64, tiny shapes)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import ntkcheck as nc

TOL = 1e-10

values = st.floats(-3, 3, allow_subnormal=False)


def tensors(shape: tuple[int, ...]) -> st.SearchStrategy[torch.Tensor]:
    return arrays(np.float64, shape, elements=values).map(torch.from_numpy)


@st.composite
def fcs(draw: st.DrawFn) -> nc.FC:
    fix = draw(st.booleans())
    return nc.FC(depth=draw(st.integers(3 if fix else 1, 6)), fix_first_last=fix)


POOLINGS = st.sampled_from(["flatten", "gap"])
FILTER_SIZES = st.sampled_from([1, 3, 5])


@st.composite
def cnns(draw: st.DrawFn, pooling: st.SearchStrategy[str] = POOLINGS,
         filter_size: st.SearchStrategy[int] = FILTER_SIZES) -> nc.CNN:
    fix = draw(st.booleans())
    return nc.CNN(depth=draw(st.integers(3 if fix else 2, 5)), pooling=draw(pooling),
                  filter_size=draw(filter_size), fix_first_last=fix)


@st.composite
def arch_and_inputs(draw: st.DrawFn):
    """An architecture with x1 (n1 inputs) and x2 (n2 inputs) of a shape it accepts."""
    n1, n2 = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    if draw(st.booleans()):
        d = draw(st.integers(1, 5))
        return draw(fcs()), draw(tensors((n1, d))), draw(tensors((n2, d)))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    return draw(cnns()), draw(tensors((n1, *shape))), draw(tensors((n2, *shape)))


def assert_close(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor | float) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=TOL * max(1.0, float(scale)))


@given(arch_and_inputs())
def test_symmetric_in_its_arguments(case):
    arch, x1, x2 = case
    for kernel in (arch.ntk, arch.nngp):
        k12 = kernel(x1, x2)
        assert_close(kernel(x2, x1), k12.T, k12.abs().max())


@given(arch_and_inputs())
def test_gram_matrices_are_positive_semidefinite(case):
    arch, x1, _ = case
    for kernel in (arch.ntk, arch.nngp):
        gram = kernel(x1)
        assert torch.equal(gram, gram.T)
        assert torch.linalg.eigvalsh(gram).min() >= -1e-10 * gram.trace()


@given(arch_and_inputs())
def test_each_layers_term_is_a_kernel_and_they_sum_to_the_ntk(case):
    """By layer: each weight layer's term (Eq. 9's summand) is a PSD Gram matrix of its own
    (J_h J_h^T at any width), fixed layers' are zero, and the terms add up to the NTK."""
    arch, x1, _ = case
    terms, whole = arch.ntk(x1, by_layer=True), arch.ntk(x1)
    assert terms.shape == (arch.depth, *whole.shape)
    assert_close(terms.sum(0), whole, whole.abs().max())
    for h, gram in enumerate(terms, start=1):
        assert torch.equal(gram, gram.T)
        assert torch.linalg.eigvalsh(gram).min() >= -1e-10 * max(1.0, float(gram.trace()))
        if arch.fix_first_last and h in (1, arch.depth):
            assert torch.all(gram == 0)


@given(arch_and_inputs())
def test_a_layers_term_is_the_same_whichever_others_train(case):
    """Eq. (9)'s term h is what training layer h alone adds, so it does not depend on which
    other layers train: the NTK with the first and last layers fixed is the trained net's
    middle terms (a path of its own: Theta^(0) = 0 and no readout K), and the readout's term
    is the NNGP kernel (training only the readout is the NNGP's regression); cross too."""
    arch, x1, x2 = case
    trained = dataclasses.replace(arch, fix_first_last=False)
    terms = trained.ntk(x1, x2, by_layer=True)
    scale = terms.abs().sum(0).max()
    assert_close(terms[-1], trained.nngp(x1, x2), scale)
    if arch.depth >= 3:
        fixed = dataclasses.replace(arch, fix_first_last=True)
        assert_close(fixed.ntk(x1, x2), terms[1:-1].sum(0), scale)
        assert_close(fixed.ntk(x1, x2, by_layer=True)[1:-1], terms[1:-1], scale)


@given(arch_and_inputs(), st.floats(0.05, 20), st.floats(0.05, 20))
def test_relu_homogeneity(case, a, b):
    arch, x1, x2 = case
    for kernel in (arch.ntk, arch.nngp):
        k12 = kernel(x1, x2)
        assert_close(kernel(a * x1, b * x2), a * b * k12, a * b * k12.abs().max())


@given(fcs(), tensors((4, 3)))
def test_fc_diagonal_keeps_the_norm(arch, x):
    """Sigma^(h)(x, x) = |x|^2 for every h, and each trained layer adds |x|^2 to Theta(x, x)
    (its own term, by layer: Sigma^(h-1)(x, x) times K-dots of 1)."""
    norms = (x * x).sum(1)
    trained = arch.depth - 2 if arch.fix_first_last else arch.depth
    assert_close(arch.nngp(x).diagonal(), norms, norms.max())
    assert_close(arch.ntk(x).diagonal(), trained * norms, trained * norms.max())
    for h, term in enumerate(arch.ntk(x, by_layer=True), start=1):
        fixed = arch.fix_first_last and h in (1, arch.depth)
        assert_close(term.diagonal(), 0 * norms if fixed else norms, norms.max())


@given(cnns(filter_size=st.just(1)), tensors((3, 2, 1, 1)), tensors((2, 2, 1, 1)))
def test_cnn_on_1x1_images_with_q_1_is_the_fc_kernel(cnn, x1, x2):
    fc = nc.FC(depth=cnn.depth, fix_first_last=cnn.fix_first_last)
    for conv, dense in ((cnn.ntk, fc.ntk), (cnn.nngp, fc.nngp)):
        want = dense(x1.flatten(1), x2.flatten(1))
        assert_close(conv(x1, x2), want, want.abs().max())


@given(cnns(pooling=st.just("flatten"), filter_size=st.just(1)),
       tensors((2, 3, 3, 2)), tensors((3, 3, 3, 2)))
def test_q_1_flatten_is_the_sum_over_positions_of_fc_kernels(cnn, x1, x2):
    fc = nc.FC(depth=cnn.depth, fix_first_last=cnn.fix_first_last)
    want = sum(fc.ntk(x1[:, :, i, j], x2[:, :, i, j]) for i in range(3) for j in range(2))
    assert_close(cnn.ntk(x1, x2), want, want.abs().max())


@given(cnns(pooling=st.just("gap")), tensors((2, 2, 3, 3)), tensors((2, 2, 3, 3)),
       st.sampled_from(["flip_h", "flip_w", "transpose"]))
def test_gap_is_unchanged_when_both_images_are_flipped_or_transposed(cnn, x1, x2, how):
    move = {
        "flip_h": lambda x: x.flip(-2),
        "flip_w": lambda x: x.flip(-1),
        "transpose": lambda x: x.transpose(-2, -1),
    }[how]
    want = cnn.ntk(x1, x2)
    assert_close(cnn.ntk(move(x1), move(x2)), want, want.abs().max())


@given(arch_and_inputs(), st.data())
def test_one_pass_depths_equal_separate_calls(case, data):
    arch, x1, x2 = case
    depths = data.draw(st.sets(st.integers(arch.min_depth, arch.depth), min_size=1))
    ntks, nngps = arch.ntk(x1, x2, depths=depths), arch.nngp(x1, x2, depths=depths)
    assert sorted(ntks) == sorted(depths)
    for d in depths:
        alone = dataclasses.replace(arch, depth=d)
        torch.testing.assert_close(ntks[d], alone.ntk(x1, x2), rtol=1e-14, atol=0)
        torch.testing.assert_close(nngps[d], alone.nngp(x1, x2), rtol=1e-14, atol=0)
