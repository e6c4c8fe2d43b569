"""The finite networks: the paper's parametrization, reproducible seeds, and their empirical
NTK approaching the analytic kernel as width grows (Theorem 3.1)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import ntkcheck as nc


def literal_forward(arch, weights, x):
    """Eq. (6) / Sec. 4 written out: N(0,1) weights, sqrt(2 / fan) after each ReLU."""
    h = x
    for w in weights[:-1]:
        if w.dim() == 2:
            h = math.sqrt(2.0 / w.shape[0]) * F.relu(h @ w.T)
        else:
            q = w.shape[-1]
            h = math.sqrt(2.0 / (w.shape[0] * q * q)) * F.relu(F.conv2d(h, w, padding=q // 2))
    if isinstance(arch, nc.CNN):
        h = h.mean((2, 3)) if arch.pooling == "gap" else h.flatten(1)
    return h @ weights[-1].T


ARCHS = [
    (nc.FC(depth=1), (5,)),  # the smallest depths: the linear model; one convolution
    (nc.CNN(depth=2, pooling="flatten"), (1, 3, 4)),  # one channel, as grayscale
    (nc.FC(depth=3), (5,)),
    (nc.FC(depth=4, fix_first_last=True), (5,)),
    (nc.CNN(depth=3, pooling="flatten"), (2, 5, 4)),
    (nc.CNN(depth=4, pooling="gap", fix_first_last=True), (2, 5, 4)),
    (nc.CNN(depth=3, pooling="gap", filter_size=1), (3, 4, 4)),
    (nc.CNN(depth=3, pooling="gap", filter_size=5), (2, 5, 6)),  # padding 2, not 1
]


@pytest.mark.parametrize("arch,shape", ARCHS, ids=repr)
@pytest.mark.parametrize("outputs", [1, 3])
def test_the_network_is_the_papers(arch, shape, outputs):
    net = arch.network(7, shape, seed=3, dtype=torch.float64, outputs=outputs)
    weights = [p for p in net.parameters()]
    assert len(weights) == arch.depth
    assert [w.requires_grad for w in weights] == [
        not (arch.fix_first_last and i in (0, arch.depth - 1)) for i in range(arch.depth)]
    assert weights[-1].shape[0] == outputs
    for w in weights[:-1]:
        assert w.shape[0] == 7 and (w.dim() == 2) == isinstance(arch, nc.FC)
    x = torch.randn(4, *shape, dtype=torch.float64)
    expected = literal_forward(arch, [w.detach() for w in weights], x)
    got = net(x)
    assert got.shape == ((4,) if outputs == 1 else (4, outputs))
    torch.testing.assert_close(got.reshape(4, -1), expected, rtol=1e-12, atol=1e-12)


def test_seeds_reproduce_the_same_network_in_any_dtype():
    arch = nc.CNN(depth=3, pooling="gap")
    a = arch.network(5, (3, 4, 4), seed=11, dtype=torch.float64)
    b = arch.network(5, (3, 4, 4), seed=11, dtype=torch.float64)
    c = arch.network(5, (3, 4, 4), seed=12, dtype=torch.float64)
    single = arch.network(5, (3, 4, 4), seed=11)
    for pa, pb, pc, ps in zip(a.parameters(), b.parameters(), c.parameters(),
                              single.parameters(), strict=True):
        assert torch.equal(pa, pb) and not torch.equal(pa, pc)
        assert ps.dtype == torch.float32 and torch.equal(ps, pa.float())
    # by default: seed 0 and one output, f(x) of shape (n,)
    default = arch.network(5, (3, 4, 4), dtype=torch.float64)
    zero = arch.network(5, (3, 4, 4), seed=0, dtype=torch.float64, outputs=1)
    assert all(torch.equal(p, q) for p, q in zip(default.parameters(), zero.parameters(),
                                                   strict=True))
    assert default(torch.randn(2, 3, 4, 4, dtype=torch.float64)).shape == (2,)
    # weights are N(0, 1): a wide layer's sample moments say so
    w = nc.FC(depth=2).network(4096, (256,), seed=0, dtype=torch.float64).layers[0].weight.detach()
    assert abs(float(w.mean())) < 5 / 1024 and abs(float(w.std()) - 1) < 5 / 1024


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_seed_gives_the_same_network_on_cuda():
    arch = nc.FC(depth=3)
    cpu = arch.network(9, (4,), seed=5, dtype=torch.float64)
    gpu = arch.network(9, (4,), seed=5, dtype=torch.float64, device="cuda")
    for p, q in zip(cpu.parameters(), gpu.parameters(), strict=True):
        assert q.is_cuda and torch.equal(p, q.cpu())


@pytest.mark.parametrize("kwargs,match", [
    (dict(width=0, input_shape=(3,)), "width must be >= 1"),
    (dict(width=2.5, input_shape=(3,)), "width must be an int"),
    (dict(width=4, input_shape=(3, 4)), r"input_shape must be \(d,\)"),
    (dict(width=4, input_shape=(0,)), r"input_shape must be \(d,\): 1 positive ints"),
    (dict(width=4, input_shape=(True,)), r"input_shape must be \(d,\): 1 positive ints"),
    (dict(width=4, input_shape=(3,), outputs=0), "outputs must be >= 1"),
    (dict(width=4, input_shape=(3,), seed=-1), "seed must be >= 0"),
])
def test_bad_network_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        nc.FC(depth=3).network(**kwargs)
    with pytest.raises(ValueError, match=r"input_shape must be \(C, H, W\)"):
        nc.CNN(depth=3).network(4, (3, 4))
    with pytest.raises(TypeError, match="dtype must be"):
        nc.FC(depth=3).network(4, (3,), dtype=torch.int64)


SEEDS = 160


def sampled(arch, x, width):
    """(SEEDS, depth, n, n) empirical NTKs of freshly seeded library networks, by layer."""
    shape = tuple(x.shape[1:])
    return torch.stack([
        nc.empirical_ntk(arch.network(width, shape, seed=s, dtype=torch.float64), x,
                         by_layer=True)
        for s in range(SEEDS)])


def unit_images(shape, seed=7):
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64)
    return x / x.flatten(1).norm(dim=1).view(-1, *[1] * len(shape))


CONVERGENCE = [
    (nc.FC(depth=3), (4,), (32, 512)),
    (nc.CNN(depth=3, pooling="flatten"), (2, 4, 3), (8, 128)),
    (nc.CNN(depth=3, pooling="gap"), (2, 4, 3), (8, 128)),
    (nc.CNN(depth=4, pooling="gap", fix_first_last=True), (2, 4, 3), (8, 128)),
]


@pytest.mark.parametrize("arch,shape,widths", CONVERGENCE, ids=repr)
def test_empirical_ntk_approaches_the_analytic_one_as_width_grows(arch, shape, widths):
    """At the wider width the seed average matches arch.ntk within 5 standard errors of the
    seed-to-seed spread, and so does each layer's term (by_layer) that of Eq. (9); and the
    typical single-net error ||H - Theta|| / ||Theta|| falls from the narrow to the wide
    width by more than 3 of its standard errors (it should fall like width^-1/2: by 4x
    over a 16x width)."""
    x = unit_images(shape)
    exact_by_layer = arch.ntk(x, by_layer=True)
    exact = exact_by_layer.sum(0)
    errors = []
    for width in widths:
        by_layer = sampled(arch, x, width)
        samples = by_layer.sum(1)
        relative = (samples - exact).flatten(1).norm(dim=1) / exact.norm()
        errors.append((float(relative.mean()), float(relative.std()) / math.sqrt(SEEDS)))
    narrow, wide = errors
    se_of_mean = samples.std(0) / math.sqrt(SEEDS)
    assert ((samples.mean(0) - exact).abs() / se_of_mean).max() < 5
    assert narrow[0] - wide[0] > 3 * math.hypot(narrow[1], wide[1])
    assert wide[0] < narrow[0] / 2
    trained = [not (arch.fix_first_last and h in (0, arch.depth - 1)) for h in range(arch.depth)]
    assert torch.all(by_layer[:, [not t for t in trained]] == 0)
    assert torch.all(exact_by_layer[[not t for t in trained]] == 0)
    layer_se = by_layer[:, trained].std(0) / math.sqrt(SEEDS)
    assert ((by_layer[:, trained].mean(0) - exact_by_layer[trained]).abs() / layer_se).max() < 5
