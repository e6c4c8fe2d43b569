"""The empirical NTK: every implementation equals a brute-force loop of autograd.grad."""

from __future__ import annotations

import weakref

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import ntkcheck as nc
from ntkcheck import empirical
from ntkcheck.nets import Conv, Dense

IMPLEMENTATIONS = ["jacobian", "ntk-vp", "structured", "auto"]


def brute_force(net, x1, x2, params=None):
    """(n1, n2, k, k): one autograd.grad per sample and output, stacked, G1 G2^T (over the
    trainable ``params``, by default all of them)."""
    if params is None:
        params = [p for p in net.parameters() if p.requires_grad]

    def gradients(x):
        out = net(x).reshape(len(x), -1)
        rows = [torch.cat([g.flatten() for g in torch.autograd.grad(out[i, c], params,
                                                                    retain_graph=True)])
                for i in range(len(x)) for c in range(out.shape[1])]
        return torch.stack(rows).reshape(len(x), out.shape[1], -1)

    return torch.einsum("ikp,jlp->ijkl", gradients(x1), gradients(x2))


def close(got, expected):
    scale = expected.abs().max()
    assert float((got - expected).abs().max() / scale) < 1e-9


ARCHS = [
    (nc.FC(depth=3), (5,)),
    (nc.FC(depth=4, fix_first_last=True), (5,)),
    (nc.CNN(depth=3, pooling="flatten"), (2, 5, 4)),
    (nc.CNN(depth=3, pooling="flatten", fix_first_last=True), (2, 5, 4)),
    (nc.CNN(depth=3, pooling="gap"), (2, 5, 4)),
    (nc.CNN(depth=4, pooling="gap", fix_first_last=True, filter_size=5), (2, 5, 4)),
]


@pytest.mark.parametrize("arch,shape", ARCHS, ids=repr)
@pytest.mark.parametrize("outputs", [1, 3])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_every_implementation_equals_brute_force(arch, shape, outputs, implementation):
    net = arch.network(6, shape, seed=1, dtype=torch.float64, outputs=outputs)
    g = torch.Generator().manual_seed(2)
    x1 = torch.randn(4, *shape, generator=g, dtype=torch.float64)
    x2 = torch.randn(3, *shape, generator=g, dtype=torch.float64)
    for other in (x2, None):
        expected = brute_force(net, x1, x1 if other is None else other)
        # a small budget forces one-sample chunks (and mirrored Gram chunks)
        for budget in (2**30, 1):
            got = nc.empirical_ntk(net, x1, other, implementation=implementation,
                                   full_outputs=outputs > 1, max_memory=budget)
            close(got, expected if outputs > 1 else expected[..., 0, 0])
        if outputs > 1:  # the default: the mean of the diagonal output blocks
            got = nc.empirical_ntk(net, x1, other, implementation=implementation)
            close(got, expected.diagonal(dim1=2, dim2=3).mean(-1))


def brute_force_by_layer(net, layers, x1, x2):
    """(layers, n1, n2, k, k): brute_force over each module's trainable parameters alone."""
    terms = []
    for module in layers:
        params = [p for p in module.parameters() if p.requires_grad]
        if params:
            terms.append(brute_force(net, x1, x2, params))
        else:  # a frozen layer contributes nothing
            terms.append(torch.zeros_like(terms[-1] if terms else brute_force(net, x1, x2)))
    return torch.stack(terms)


SCHEDULES = [(1, 2, 1), (1, 2, 2), (2, 2, 2), (1, 3, 1)]
"""(chunk, panel, pair rows) that empirical_ntk is forced to take in some tests."""


@pytest.mark.parametrize("arch,shape", ARCHS, ids=repr)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_by_layer_equals_brute_force_over_each_layer(arch, shape, implementation, monkeypatch):
    """by_layer: (depth, ...), row h - 1 the sum over weight layer h's parameters; under
    every forced (chunk, panel, pair rows) schedule too: panels that split the rows
    unevenly (2 + 1), a Gram's columns held in the panel or computed, pairs of part of a
    panel."""
    net = arch.network(5, shape, seed=3, dtype=torch.float64, outputs=2)
    g = torch.Generator().manual_seed(4)
    x1 = torch.randn(3, *shape, generator=g, dtype=torch.float64)
    x2 = torch.randn(2, *shape, generator=g, dtype=torch.float64)
    for other in (x2, None):
        expected = brute_force_by_layer(net, net.weight_layers(), x1,
                                        x1 if other is None else other)
        assert expected.shape[0] == arch.depth
        for budget in (2**30, 1):
            got = nc.empirical_ntk(net, x1, other, implementation=implementation,
                                   full_outputs=True, by_layer=True, max_memory=budget)
            close(got, expected)
        for schedule in SCHEDULES:
            with monkeypatch.context() as patched:
                patched.setattr(empirical, "_sizes", lambda *a, s=schedule: empirical._Sizes(*s))
                got = nc.empirical_ntk(net, x1, other, implementation=implementation,
                                       full_outputs=True, by_layer=True)
            close(got, expected)
            if other is None:  # mirrored, not computed twice: exactly symmetric
                assert torch.equal(got, got.transpose(1, 2).transpose(3, 4)), schedule
        got = nc.empirical_ntk(net, x1, other, implementation=implementation, by_layer=True)
        close(got, expected.diagonal(dim1=3, dim2=4).mean(-1))


@pytest.mark.parametrize("arch,shape", ARCHS[::2], ids=repr)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_net_training_some_layers_has_their_terms_as_its_ntk(arch, shape, implementation):
    """Freezing weight layers (requires_grad=False) leaves the other layers' terms: the
    empirical NTK of a net that trains only the layers S is the sum of by_layer's rows S."""
    net = arch.network(5, shape, seed=5, dtype=torch.float64)
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(6),
                    dtype=torch.float64)
    terms = nc.empirical_ntk(net, x, by_layer=True, implementation=implementation)
    for kept in ([1], [0, 2], [2]):
        for i, layer in enumerate(net.weight_layers()):
            layer.weight.requires_grad_(i in kept)
        close(nc.empirical_ntk(net, x, implementation=implementation), terms[kept].sum(0))


@pytest.mark.parametrize("form", [0, 1], ids=["gradient", "patch-correlation"])
def test_both_convolution_forms_are_exact(monkeypatch, form):
    monkeypatch.setattr(Conv, "_forms", lambda self, *a: (form, 1 - form))
    net = nc.CNN(depth=3, pooling="gap").network(5, (2, 4, 3), seed=4, dtype=torch.float64,
                                                  outputs=2)
    x = torch.randn(3, 2, 4, 3, dtype=torch.float64)
    close(nc.empirical_ntk(net, x, implementation="structured", full_outputs=True),
          brute_force(net, x, x))


@pytest.mark.parametrize("form", [0, 1], ids=["gradient", "patch-correlation"])
def test_the_memory_model_counts_what_the_features_hold(monkeypatch, form):
    """``ntk_feature_numel`` (what sizes the panels under ``max_memory``) is the number of
    elements a layer's ``ntk_features`` return per sample, for k = 2 outputs."""
    monkeypatch.setattr(Conv, "_forms", lambda self, *a: (form, 1 - form))
    n, k = 3, 2
    for layer, a, delta in ((Dense(5, 7), torch.randn(n, 5), torch.randn(n, k, 7)),
                            (Conv(3, 4, 3), torch.randn(n, 3, 6, 5), torch.randn(n, k, 4, 6, 5))):
        held = sum(f.numel() for f in layer.ntk_features(a, delta))
        assert held == n * layer.ntk_feature_numel(k, tuple(a.shape)), type(layer).__name__


@pytest.mark.parametrize("gram", [True, False], ids=["gram", "cross"])
def test_convolution_gradients_are_computed_once_per_feature_pass(monkeypatch, gram):
    """"structured" holds a convolution's per-sample gradients with the panel's features:
    each trained convolution unfolds a sample's patches once for every time its features are
    computed (``_feature_passes``), not once for every block of pairs it meets."""
    unfolded = []
    patches = Conv._patches
    monkeypatch.setattr(Conv, "_patches", lambda self, a: unfolded.append(len(a)) or patches(
        self, a))
    monkeypatch.setattr(empirical, "_sizes", lambda *a: empirical._Sizes(1, 2, 2))
    arch = nc.CNN(depth=4, pooling="gap", fix_first_last=True)  # 2 trained convolutions
    net = arch.network(4, (2, 5, 4), seed=0, dtype=torch.float64)
    x1, x2 = torch.randn(5, 2, 5, 4, dtype=torch.float64), torch.randn(4, 2, 5, 4,
                                                                        dtype=torch.float64)
    nc.empirical_ntk(net, x1, None if gram else x2, implementation="structured")
    assert sum(unfolded) == 2 * empirical._feature_passes(5, 5 if gram else 4, gram, 2)


def test_any_module_works_with_jacobian_and_ntk_vp():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    net[0].bias.requires_grad_(False)
    x1, x2 = torch.randn(5, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    for implementation in ("jacobian", "ntk-vp", "auto"):
        close(nc.empirical_ntk(net, x1, x2, implementation=implementation, full_outputs=True),
              brute_force(net, x1, x2))
    with pytest.raises(ValueError, match="structured.*needs a net built by ntkcheck"):
        nc.empirical_ntk(net, x1, implementation="structured")
    # by layer: one row per module that owns parameters, its weight and bias together
    layers = [net[0], net[2]]
    for implementation in ("jacobian", "ntk-vp"):
        close(nc.empirical_ntk(net, x1, x2, implementation=implementation, full_outputs=True,
                               by_layer=True), brute_force_by_layer(net, layers, x1, x2))


def test_auto_picks_structured_for_a_wide_fc_net_and_says_so(caplog):
    net = nc.FC(depth=3).network(512, (64,), seed=0)
    x = torch.randn(16, 64)
    name, costs = empirical.choose_implementation(net, x)
    assert name == "structured" and set(costs) == {"jacobian", "ntk-vp", "structured"}
    with caplog.at_level("DEBUG", logger="ntkcheck.empirical"):
        nc.empirical_ntk(net, x)
    assert "empirical_ntk: structured" in caplog.text


def test_chunks_keep_a_large_cnn_within_the_budget():
    """1,000 x 1,000 of a width-128 depth-6 CNN on 32x32x3 under 1 GiB: the held panel of
    Jacobians and one chunk's work each within half of it (sizes only: the computation
    itself belongs to benchmarks)."""
    net = nc.CNN(depth=6, pooling="gap").network(128, (3, 32, 32), seed=0)
    x = torch.zeros(1000, 3, 32, 32)
    profile = empirical._Profile(net, x)
    for name in ("jacobian", "ntk-vp", "structured"):
        sizes = empirical._sizes(name, profile, 1, 4, 2**30)
        assert 1 <= sizes.chunk <= sizes.pair_rows <= sizes.panel < 1000, name
        assert sizes.panel % sizes.chunk == 0, name
    sizes = empirical._sizes("jacobian", profile, 1, 4, 2**30)
    assert sizes.panel * profile.params * 4 <= 2**29
    assert sizes.chunk * (profile.params + 2 * profile.activations) * 4 <= 2**29
    assert sizes.panel > 4 * sizes.chunk  # Jacobians are held far beyond one chunk


@pytest.mark.parametrize("gram", [True, False], ids=["gram", "cross"])
@pytest.mark.parametrize("schedule", SCHEDULES + [(2, 4, 2), (5, 5, 5)])
def test_features_are_computed_as_often_as_the_cost_model_counts(monkeypatch, gram, schedule):
    """Each row's Jacobians once, the columns' once per panel (a Gram's only past it): the
    count ``_feature_passes`` gives "auto", a budget that holds every row computes each
    sample's Jacobians once for a Gram."""
    computed = []
    build = empirical._jacobian_method

    def counting(*args):
        method = build(*args)
        return empirical._Method(lambda x: computed.append(len(x)) or method.features(x),
                                 method.pair)

    monkeypatch.setattr(empirical, "_jacobian_method", counting)
    monkeypatch.setattr(empirical, "_sizes", lambda *a: empirical._Sizes(*schedule))
    net = nc.FC(depth=3).network(4, (3,), seed=0, dtype=torch.float64)
    x1, x2 = torch.randn(5, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    nc.empirical_ntk(net, x1, None if gram else x2, implementation="jacobian")
    assert max(computed) <= schedule[0]
    passes = empirical._feature_passes(5, 5 if gram else 4, gram, schedule[1])
    assert sum(computed) == passes
    if schedule[1] >= 5:
        assert passes == (5 if gram else 9)


@pytest.mark.parametrize("gram", [True, False], ids=["gram", "cross"])
@pytest.mark.parametrize("schedule", SCHEDULES + [(2, 4, 2), (1, 1, 1)])
def test_features_are_freed_before_the_next_are_computed(monkeypatch, gram, schedule):
    """The budget holds a panel and one chunk's features: when a panel's features are
    computed no earlier ones are alive (not the previous chunk's, nor the previous panel),
    and when a column chunk's are, only the panel (a single chunk's result) may be."""
    alive, returned, building = [], [], []
    build, features_of = empirical._jacobian_method, empirical._features_of

    def tracking(*args):
        method = build(*args)

        def features(x):
            live = sum(ref() is not None for ref in returned) // 3  # 3 weight matrices
            alive.append(("panel" if building else "columns", live))
            result = method.features(x)
            # the tensors that own the memory, which any view of them keeps alive
            returned.extend(weakref.ref(t if t._base is None else t._base)
                            for t in empirical._leaves(result))
            return result

        return empirical._Method(features, method.pair)

    def panel(*args):
        building.append(True)
        try:
            return features_of(*args)
        finally:
            building.pop()

    monkeypatch.setattr(empirical, "_jacobian_method", tracking)
    monkeypatch.setattr(empirical, "_features_of", panel)
    monkeypatch.setattr(empirical, "_sizes", lambda *a: empirical._Sizes(*schedule))
    net = nc.FC(depth=3).network(4, (3,), seed=0, dtype=torch.float64)
    x1, x2 = torch.randn(5, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    nc.empirical_ntk(net, x1, None if gram else x2, implementation="jacobian")
    assert len(alive) > 2 and all(live <= (kind == "columns") for kind, live in alive), alive


@pytest.mark.parametrize("gram", [True, False], ids=["gram", "cross"])
@pytest.mark.parametrize("schedule", SCHEDULES + [(2, 4, 2), (1, 1, 1)])
@pytest.mark.parametrize("implementation", ["jacobian", "structured"])
def test_progress_counts_each_sample_pair_once(monkeypatch, capsys, gram, schedule,
                                               implementation):
    """The count ends at exactly n (n + 1) / 2 for a Gram matrix (the diagonal blocks' rows
    below the diagonal are computed but not counted: they are mirrored) and n1 n2 for a
    cross matrix, whatever the schedule; without ``progress`` nothing is written."""
    monkeypatch.setattr(empirical, "_sizes", lambda *a: empirical._Sizes(*schedule))
    net = nc.FC(depth=3).network(4, (3,), seed=0, dtype=torch.float64)
    x1, x2 = torch.randn(5, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    nc.empirical_ntk(net, x1, None if gram else x2, implementation=implementation,
                     progress=True)
    total = 15 if gram else 20
    last = capsys.readouterr().err.split("\r")[-1]
    assert last.startswith(f"sample pairs: {total}/{total} ") and last.endswith("\n")
    nc.empirical_ntk(net, x1, None if gram else x2, implementation=implementation)
    assert capsys.readouterr().err == ""


def test_bad_input():
    net = nc.FC(depth=3).network(4, (3,), seed=0, dtype=torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="implementation must be one of"):
        nc.empirical_ntk(net, x, implementation="jacobain")
    with pytest.raises(ValueError, match=r"x1 must have shape \(n, 3\)"):
        nc.empirical_ntk(net, torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"x2 must have shape \(n, 3\)"):
        nc.empirical_ntk(net, x, torch.randn(2, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="x1 is torch.float32"):
        nc.empirical_ntk(net, x.float())
    with pytest.raises(ValueError, match="full_outputs=True needs a net with several outputs"):
        nc.empirical_ntk(net, x, full_outputs=True)
    with pytest.raises(TypeError, match="net must be a torch.nn.Module"):
        nc.empirical_ntk(lambda v: v, x)
    with pytest.raises(TypeError, match="by_layer must be True or False"):
        nc.empirical_ntk(net, x, by_layer=1)
    with pytest.raises(TypeError, match="progress must be True or False"):
        nc.empirical_ntk(net, x, progress="yes")
    frozen = nc.FC(depth=3).network(4, (3,), seed=0, dtype=torch.float64)
    for p in frozen.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        nc.empirical_ntk(frozen, x)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_cuda_equals_cpu(implementation):
    arch = nc.CNN(depth=3, pooling="gap", fix_first_last=True)
    x = torch.randn(5, 2, 5, 4, dtype=torch.float64)
    cpu = arch.network(6, (2, 5, 4), seed=2, dtype=torch.float64, outputs=2)
    gpu = arch.network(6, (2, 5, 4), seed=2, dtype=torch.float64, outputs=2, device="cuda")
    close(nc.empirical_ntk(gpu, x.cuda(), implementation=implementation,
                           full_outputs=True).cpu(),
          nc.empirical_ntk(cpu, x, implementation=implementation, full_outputs=True))


def counted_flops(run) -> int:
    """Flops of the matrix products and convolutions ``run()`` performs, as torch counts them
    (2 per multiply-add), with torch's own left-to-right order of multi-operand einsums."""
    with torch.backends.opt_einsum.flags(enabled=False), FlopCounterMode(display=False) as count:
        run()
    return count.get_total_flops()


@pytest.mark.parametrize(("arch", "shape"), [(nc.FC(depth=3), (7,)),
                                             (nc.CNN(depth=3, pooling="flatten"), (3, 5, 6)),
                                             (nc.CNN(depth=4, pooling="gap"), (2, 4, 4))])
def test_the_cost_model_counts_a_forward_as_torch_does(arch, shape):
    """"auto" picks an implementation by estimated flops, from the forward's per sample."""
    net = arch.network(8, shape, seed=0)
    x = torch.randn(3, *shape)
    assert empirical._Profile(net, x).flops == counted_flops(lambda: net(x[:1]))


@pytest.mark.parametrize(("layer", "a_shape", "k", "gradients"), [
    (Dense(6, 5), (4, 6), 2, None),
    (Conv(3, 4, 3), (4, 3, 5, 5), 2, True),
    (Conv(16, 16, 3), (3, 16, 1, 2), 2, False),  # a tiny image: the patch correlation
])
def test_the_cost_model_counts_a_layers_ntk_as_torch_does(layer, a_shape, k, gradients):
    """A layer's ``ntk_flops``: its features of n samples and their pairing over n^2 pairs."""
    nn.init.normal_(layer.weight)
    a = torch.randn(a_shape)
    delta = torch.randn(a_shape[0], k, *layer(a).shape[1:])
    if gradients is not None:
        assert layer.holds_gradients(k, a_shape) == gradients

    def features_and_pairs():
        features = layer.ntk_features(a, delta)
        layer.ntk(features, features)

    n = a_shape[0]
    assert layer.ntk_flops(n, n * n, k, a_shape) == counted_flops(features_and_pairs)


def test_a_conv_holds_gradients_unless_the_image_is_tiny():
    """The crossover its docstring gives: C = C' = 128, q = 3, k = 1, correlation for 10
    positions or fewer."""
    conv = Conv(128, 128, 3)
    assert not conv.holds_gradients(1, (1, 128, 2, 5))
    assert conv.holds_gradients(1, (1, 128, 1, 11))
