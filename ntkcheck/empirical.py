"""The empirical NTK of a finite network, H(x, x') = <df(x)/dtheta, df(x')/dtheta> over the
trainable parameters theta, computed three exact ways (and "auto" to pick one).

- ``"jacobian"``: per-sample Jacobians J (``torch.func.vmap(jacrev)`` over
  ``functional_call``), contracted: H = J1 J2^T.
- ``"ntk-vp"``: NTK-vector products, never a Jacobian of a batch: for each output of x2 a
  vjp gives J2^T e (one parameter-sized vector), and a jvp of f(x1) along it gives J1 J2^T e.
- ``"structured"``: the layer structure of ntkcheck's own networks: a weight layer's term is
  (a . a') (delta . delta') for a dense layer (a its input, delta = df/dz at its output) and
  the patch-correlation form for a convolution (``nets.layers``), from one forward and one
  backward pass per output.
- ``"auto"``: the cheapest of the three by the flop model of ``choose_implementation``.

With k outputs H is (n1, n2, k, k) under ``full_outputs=True``; otherwise the mean of its k
diagonal blocks, (n1, n2), which is what the analytic NTK describes (Theta x I_k in the limit).
``by_layer=True`` keeps each layer's parameters' sum apart (a leading dim of one term per
module that owns parameters: the weight layers of ntkcheck's nets), as ``ntk(...,
by_layer=True)`` splits the analytic NTK.  Samples go in chunks sized by ``max_memory``.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

from ._checks import check_bool
from .architectures import DEFAULT_MAX_MEMORY
from .nets.layers import WEIGHT_LAYERS, Conv, Dense
from .nets.network import Network

Implementation = Literal["auto", "jacobian", "ntk-vp", "structured"]
IMPLEMENTATIONS = ("auto", "jacobian", "ntk-vp", "structured")

log = logging.getLogger(__name__)

Block = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(b1, b2) samples -> (groups, b1, b2, k, k): each parameter group's sum of J1 J2^T."""

Groups = list[list[str]]
"""Names of the trainable parameters whose terms are summed together, per group."""


def _trainable(net: nn.Module) -> dict[str, torch.Tensor]:
    params = {name: p.detach() for name, p in net.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("net has no trainable parameters (every parameter has "
                         "requires_grad=False), so its empirical NTK is zero")
    return params


def _layers(net: nn.Module, params: dict[str, torch.Tensor]) -> Groups:
    """The trainable parameters of each module that owns parameters, in the net's order: a
    frozen layer (e.g. under ``fix_first_last``) is an empty group, whose term is zero."""
    groups = []
    for prefix, module in net.named_modules():
        own = [name for name, _ in module.named_parameters(prefix, recurse=False)]
        if own:
            groups.append([name for name in own if name in params])
    return groups


def _check_inputs(
    net: nn.Module, x1: object, x2: object
) -> tuple[torch.Tensor, torch.Tensor | None]:
    reference = next(net.parameters())
    expected = getattr(net, "input_shape", None)
    for name, x in (("x1", x1), ("x2", x2)):
        if name == "x2" and x is None:
            continue
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
        if expected is not None and tuple(x.shape[1:]) != tuple(expected):
            raise ValueError(f"{name} must have shape (n, {', '.join(map(str, expected))}) to "
                             f"match the net's input_shape; got {tuple(x.shape)}")
        if x.dtype != reference.dtype or x.device != reference.device:
            raise ValueError(f"{name} is {x.dtype} on {x.device} but the net is "
                             f"{reference.dtype} on {reference.device}")
    return x1, x2  # type: ignore[return-value]


def _outputs(net: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        out = net(x[:1])
    return 1 if out.dim() == 1 else out.shape[1]


def _flat_outputs(net: nn.Module, params: dict[str, torch.Tensor]):
    """f(params, x) -> (n, k) with the given trainable parameters, the rest the net's own."""

    def f(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        out = functional_call(net, p, (x,), strict=False)
        return out.reshape(x.shape[0], -1)

    return f


class _Profile:
    """Per-sample sizes and costs of a net, measured on one sample: forward flops F,
    activation numel A, trainable parameter count P, weight layers and their inputs."""

    def __init__(self, net: nn.Module, x: torch.Tensor) -> None:
        self.params = sum(p.numel() for p in net.parameters() if p.requires_grad)
        self.activations = 0
        self.layer_inputs: dict[Dense | Conv, tuple[int, ...]] = {}
        self.flops = 0.0

        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            self.activations += out.numel()
            if isinstance(module, WEIGHT_LAYERS):
                shape = tuple(inputs[0].shape)
                self.flops += module.flops(shape)
                self.layer_inputs[module] = shape

        leaves = [m for m in net.modules() if not list(m.children())]
        handles = [m.register_forward_hook(hook) for m in leaves]
        try:
            with torch.no_grad():
                net(x[:1])
        finally:
            for h in handles:
                h.remove()
        self.flops = self.flops or 2.0 * self.params  # unknown layers: ~2 flops per weight


def _structured_layers(net: nn.Module) -> list[Dense | Conv]:
    if not isinstance(net, Network):
        raise ValueError(f'implementation="structured" needs a net built by ntkcheck '
                         f"(arch.network(...)); got {type(net).__name__}; use \"jacobian\" "
                         'or "ntk-vp" for any torch.nn.Module')
    return [m for m in net.weight_layers() if m.weight.requires_grad]


def choose_implementation(
    net: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None
) -> tuple[str, dict[str, float]]:
    """The implementation ``"auto"`` takes, and the estimated flops of each candidate
    (``"structured"`` only for ntkcheck's nets)."""
    return _choose(net, len(x1), len(x1) if x2 is None else len(x2), _outputs(net, x1),
                   _Profile(net, x1))


def _choose(net: nn.Module, n1: int, n2: int, k: int, prof: _Profile
            ) -> tuple[str, dict[str, float]]:
    f, p = prof.flops, prof.params
    costs = {
        # k reverse passes per sample (each ~2 forwards), then J1 J2^T
        "jacobian": 3.0 * f * k * (n1 + n2) + 2.0 * n1 * n2 * k * k * p,
        # a jvp of f(x1) (~3 forwards per sample) per output column of x2
        "ntk-vp": 3.0 * f * k * n1 * n2 + 3.0 * f * k * n2,
    }
    if isinstance(net, Network):
        layers = _structured_layers(net)
        costs["structured"] = (1.0 + 2.0 * k) * f * (n1 + n2) + sum(
            m.ntk_flops(n1, n2, k, prof.layer_inputs[m]) for m in layers)
    return min(costs, key=costs.__getitem__), costs


def _jacobian_block(net: nn.Module, params: dict[str, torch.Tensor], groups: Groups) -> Block:
    f = _flat_outputs(net, params)

    def one(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return f(p, x[None])[0]

    def jacobians(x: torch.Tensor) -> list[torch.Tensor]:
        """(b, k, parameters) per group; a frozen group's has no columns (its term: 0)."""
        jac = vmap(jacrev(one), in_dims=(None, 0))(params, x)
        flat = {n: j.reshape(len(x), j.shape[1], -1) for n, j in jac.items()}
        none = x.new_zeros(len(x), next(iter(flat.values())).shape[1], 0)
        return [torch.cat([none] + [flat[n] for n in names], -1) for names in groups]

    def block(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        j1 = jacobians(x1)
        j2 = j1 if x2 is x1 else jacobians(x2)
        return torch.stack([torch.einsum("ikp,jlp->ijkl", a, b)
                            for a, b in zip(j1, j2, strict=True)])

    return block


def _ntk_vp_block(net: nn.Module, params: dict[str, torch.Tensor], groups: Groups) -> Block:
    f = _flat_outputs(net, params)

    def block(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        # torch.func.vjp's annotation also allows the has_aux triple
        out, pull = vjp(lambda p: f(p, x2), params)[:2]
        b2, k = out.shape
        basis = torch.eye(b2 * k, dtype=out.dtype, device=out.device).reshape(b2 * k, b2, k)
        (directions,) = vmap(pull)(basis)  # J2^T e for every output e of x2

        def term(names: list[str]) -> torch.Tensor:
            """J1 J2^T restricted to the parameters ``names``: jvps along their part of
            each direction, the others held at their values."""
            if not names:
                return x1.new_zeros(len(x1), b2, k, k)
            held = {n: p for n, p in params.items() if n not in names}

            def push(t: dict[str, torch.Tensor]) -> torch.Tensor:
                return jvp(lambda p: f({**held, **p}, x1), ({n: params[n] for n in names},),
                           (t,))[1]

            columns = vmap(push)({n: directions[n] for n in names})  # (b2 k, b1, k)
            return columns.reshape(b2, k, len(x1), k).permute(2, 0, 3, 1)

        return torch.stack([term(names) for names in groups])

    return block


def _structured_block(net: Network, by_layer: bool) -> Block:
    layers = _structured_layers(net)

    def inputs_and_deltas(x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        seen: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            seen[module] = (inputs[0].detach(), out)

        handles = [m.register_forward_hook(hook) for m in layers]
        try:
            with torch.enable_grad():
                out = net(x).reshape(len(x), -1)
                zs = [seen[m][1] for m in layers]
                # samples do not interact, so d(sum_i f_c(x_i))/dz gives every sample's delta
                deltas = [torch.autograd.grad(out[:, c].sum(), zs, retain_graph=True)
                          for c in range(out.shape[1])]
        finally:
            for h in handles:
                h.remove()
        stacked = [torch.stack([d[i] for d in deltas], 1) for i in range(len(layers))]
        return [seen[m][0] for m in layers], stacked

    def block(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        a1, d1 = inputs_and_deltas(x1)
        a2, d2 = (a1, d1) if x2 is x1 else inputs_and_deltas(x2)
        terms = {m: m.ntk(a1[i], d1[i], a2[i], d2[i]) for i, m in enumerate(layers)}
        if not by_layer:
            return functools.reduce(torch.add, terms.values())[None]
        zero = torch.zeros_like(next(iter(terms.values())))  # a frozen layer's term
        return torch.stack([terms.get(m, zero) for m in net.weight_layers()])

    return block


def _chunk(name: str, prof: _Profile, k: int, element: int, max_memory: int) -> int:
    """Samples per chunk so that a block's working set stays within ``max_memory``."""
    if name == "jacobian":  # two chunks of Jacobians and their reverse passes
        per_sample = 2 * k * (prof.params + 2 * prof.activations) * element
        return max(1, max_memory // per_sample)
    if name == "ntk-vp":  # b k parameter-sized vectors, b^2 k jvp activations
        a, b_ = 2 * k * prof.activations * element, k * prof.params * element
        return max(1, int((-b_ + math.sqrt(b_ * b_ + 4 * a * max_memory)) / (2 * a)))
    # structured: activations and k deltas per sample, per-sample gradients of the conv
    # layers that take the gradient form, and (b1, b2, positions^2) patch correlations
    # for those that take the correlation form
    convs = [(m, s) for m, s in prof.layer_inputs.items() if isinstance(m, Conv)]
    per_sample = 2 * ((1 + 2 * k) * prof.activations
                      + k * sum(m.weight.numel() for m, _ in convs)) * element
    size = max(1, max_memory // per_sample)
    for m, shape in convs:
        gradient, correlation = m._forms(size, size, k, shape)
        if correlation < gradient:
            pairs = max(1, max_memory // (2 * math.prod(shape[2:]) ** 2 * element))
            size = max(1, min(size, math.isqrt(pairs)))
    return size


def empirical_ntk(
    net: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    implementation: Implementation = "auto",
    full_outputs: bool = False,
    by_layer: bool = False,
    max_memory: int = DEFAULT_MAX_MEMORY,
) -> torch.Tensor:
    """The empirical NTK H(x1_i, x2_j) = sum over trainable parameters of
    df(x1_i)/dtheta df(x2_j)/dtheta (Eq. 2 of the paper at finite width).

    ``x2=None`` means x1 (a Gram matrix: only chunks on and above the diagonal are computed,
    then mirrored).  Returns (n1, n2), or (n1, n2, k, k) for a k-output net with
    ``full_outputs=True``; without it a k-output net gives the mean of the diagonal output
    blocks.  ``implementation``: see the module docstring; "jacobian" and "ntk-vp" take any
    ``torch.nn.Module`` mapping (n, ...) to (n,) or (n, k), "structured" only ntkcheck's
    nets.  ``by_layer=True`` adds a leading dim with one term per module that owns
    parameters, in the net's order, the rows summing to the whole: for ntkcheck's nets
    (depth, ...), row h - 1 the sum over weight layer h's parameters, zero for a frozen
    layer; its limit is ``arch.ntk(..., by_layer=True)``.  ``max_memory`` (bytes) sizes the
    sample chunks.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}; "
                         f"got {implementation!r}")
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module; got {type(net).__name__}")
    params = _trainable(net)
    check_bool("by_layer", by_layer)
    groups = _layers(net, params) if by_layer else [list(params)]
    x1, x2 = _check_inputs(net, x1, x2)
    k = _outputs(net, x1)
    if full_outputs and k == 1:
        raise ValueError("full_outputs=True needs a net with several outputs; this one has a "
                         "scalar output (build it with outputs=k)")
    z = x1 if x2 is None else x2
    profile = _Profile(net, x1)
    name: str = implementation
    if name == "auto":
        name, costs = _choose(net, len(x1), len(z), k, profile)
        log.debug("empirical_ntk: %s (estimated flops %s)", name, costs)
    block = {"jacobian": lambda: _jacobian_block(net, params, groups),
             "ntk-vp": lambda: _ntk_vp_block(net, params, groups),
             "structured": lambda: _structured_block(net, by_layer)  # type: ignore[arg-type]
             }[name]()
    size = _chunk(name, profile, k, x1.element_size(), max_memory)
    out = x1.new_zeros(len(groups), len(x1), len(z), k, k)
    for r in range(0, len(x1), size):
        for c in range(r if x2 is None else 0, len(z), size):
            rows, cols = slice(r, r + size), slice(c, c + size)
            a = x1[rows]
            out[:, rows, cols] = block(a, a if x2 is None and r == c else z[cols]).detach()
            if x2 is None and r != c:
                out[:, cols, rows] = out[:, rows, cols].transpose(1, 2).transpose(3, 4)
    out = out if by_layer else out[0]
    return out if full_outputs else out.diagonal(dim1=-2, dim2=-1).mean(-1)
