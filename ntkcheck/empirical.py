"""The empirical NTK of a finite network, H(x, x') = <df(x)/dtheta, df(x')/dtheta> over the
trainable parameters theta, computed three exact ways (and "auto" to pick one).

- ``"jacobian"``: per-sample Jacobians J (``torch.func.vmap(jacrev)`` over
  ``functional_call``), contracted: H = J1 J2^T.
- ``"ntk-vp"``: NTK-vector products, never a Jacobian of a batch: for each output of x2 a
  vjp gives J2^T e (one parameter-sized vector), and a jvp of f(x1) along it gives J1 J2^T e.
- ``"structured"``: the layer structure of ntkcheck's own networks: a weight layer's term is
  (a . a') (delta . delta') for a dense layer (a its input, delta = df/dz at its output); a
  convolution's is its per-sample gradients contracted, or on tiny images the
  patch-correlation form (``nets.layers``); all from one forward and one backward pass per
  output.
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
from typing import Any, Literal, NamedTuple

import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

from ._checks import check_bool
from ._progress import Progress
from .architectures import DEFAULT_MAX_MEMORY
from .kernels.recursion import pair_count
from .nets.layers import WEIGHT_LAYERS, Conv, Dense, contract
from .nets.network import Network

Implementation = Literal["auto", "jacobian", "ntk-vp", "structured"]
IMPLEMENTATIONS = ("auto", "jacobian", "ntk-vp", "structured")

log = logging.getLogger(__name__)

Features = Any
"""What an implementation computes per sample before pairing samples: a tensor, or lists
and tuples of tensors, with the samples along the first dimension of each."""


class _Method(NamedTuple):
    """An implementation as two steps: ``features`` of a batch of samples, and ``pair``, two
    batches' features -> (groups, b1, b2, k, k), each parameter group's sum of J1 J2^T."""

    features: Callable[[torch.Tensor], Features]
    pair: Callable[[Features, Features], torch.Tensor]


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
    activation numel A, trainable parameter count P, trained weight layers and their
    inputs (what "structured" computes features for)."""

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
                if module.weight.requires_grad:
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
    net: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None, *,
    max_memory: int = DEFAULT_MAX_MEMORY,
) -> tuple[str, dict[str, float]]:
    """The implementation ``"auto"`` takes, and the estimated flops of each candidate
    (``"structured"`` only for ntkcheck's nets); ``max_memory`` sets how often features are
    recomputed."""
    return _choose(net, len(x1), len(x1) if x2 is None else len(x2), x2 is None,
                   _outputs(net, x1), _Profile(net, x1), x1.element_size(), max_memory)


def _choose(net: nn.Module, n1: int, n2: int, gram: bool, k: int, prof: _Profile,
            element: int, max_memory: int) -> tuple[str, dict[str, float]]:
    f, p = prof.flops, prof.params

    def passes(name: str) -> int:
        return _feature_passes(n1, n2, gram, _sizes(name, prof, k, element, max_memory).panel)

    costs = {
        # k reverse passes per sample computed (each ~2 forwards), then J1 J2^T
        "jacobian": 3.0 * f * k * passes("jacobian") + 2.0 * n1 * n2 * k * k * p,
        # a jvp of f(x1) (~3 forwards per sample) per output column of x2
        "ntk-vp": 3.0 * f * k * n1 * n2 + 3.0 * f * k * n2,
    }
    if isinstance(net, Network):
        # one forward and k backward passes per sample computed, each layer's features of
        # them, then each layer's pairing of the features
        samples = passes("structured")
        costs["structured"] = (1.0 + 2.0 * k) * f * samples + sum(
            m.ntk_flops(samples, n1 * n2, k, shape) for m, shape in prof.layer_inputs.items())
    return min(costs, key=costs.__getitem__), costs


def _jacobian_method(net: nn.Module, params: dict[str, torch.Tensor], groups: Groups) -> _Method:
    f = _flat_outputs(net, params)

    def one(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return f(p, x[None])[0]

    def jacobians(x: torch.Tensor) -> list[list[torch.Tensor]]:
        """Per group, the (b, k, numel) Jacobian of each of its parameters, kept apart: one
        concatenated copy would hold every Jacobian twice at the peak."""
        jac = vmap(jacrev(one), in_dims=(None, 0))(params, x)
        return [[jac[n].reshape(len(x), jac[n].shape[1], -1) for n in names]
                for names in groups]

    def pair(j1: list[list[torch.Tensor]], j2: list[list[torch.Tensor]]) -> torch.Tensor:
        a, b = _leaves(j1)[0], _leaves(j2)[0]
        zero = a.new_zeros(len(a), len(b), a.shape[1], b.shape[1])  # a frozen group's term
        return torch.stack([sum((contract(p, q) for p, q in zip(g1, g2, strict=True)), zero)
                            for g1, g2 in zip(j1, j2, strict=True)])

    return _Method(jacobians, pair)


def _ntk_vp_method(net: nn.Module, params: dict[str, torch.Tensor], groups: Groups) -> _Method:
    f = _flat_outputs(net, params)

    def pair(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
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

    return _Method(lambda x: x, pair)  # its "features" are the inputs themselves


def _structured_method(net: Network, by_layer: bool) -> _Method:
    layers = _structured_layers(net)

    def layer_features(x: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """Each weight layer's ``ntk_features`` of its inputs and deltas."""
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
        return [m.ntk_features(seen[m][0], torch.stack([d[i] for d in deltas], 1))
                for i, m in enumerate(layers)]

    def pair(f1: Features, f2: Features) -> torch.Tensor:
        terms = {m: m.ntk(f1[i], f2[i]) for i, m in enumerate(layers)}
        if not by_layer:
            return functools.reduce(torch.add, terms.values())[None]
        zero = torch.zeros_like(next(iter(terms.values())))  # a frozen layer's term
        return torch.stack([terms.get(m, zero) for m in net.weight_layers()])

    return _Method(layer_features, pair)


def _chunk(name: str, prof: _Profile, k: int, element: int, max_memory: int) -> int:
    """Samples per chunk so that the work on one chunk stays within ``max_memory``."""
    if name == "jacobian":  # a chunk of Jacobians and their reverse passes
        per_sample = k * (prof.params + 2 * prof.activations) * element
        return max(1, max_memory // per_sample)
    if name == "ntk-vp":  # b k parameter-sized vectors, b^2 k jvp activations
        a, b_ = 2 * k * prof.activations * element, k * prof.params * element
        return max(1, int((-b_ + math.sqrt(b_ * b_ + 4 * a * max_memory)) / (2 * a)))
    # structured: activations and k deltas per sample, the layers' features (gradients of
    # the convolutions that hold them), and (b1, b2, positions^2) patch correlations for
    # the convolutions that do not
    per_sample = 2 * ((1 + 2 * k) * prof.activations + _structured_numel(prof, k)) * element
    size = max(1, max_memory // per_sample)
    for shape in _correlating(prof, k):
        pairs = max(1, max_memory // (2 * math.prod(shape[2:]) ** 2 * element))
        size = max(1, min(size, math.isqrt(pairs)))
    return size


def _structured_numel(prof: _Profile, k: int) -> int:
    """Numel of one sample's "structured" features, summed over the trained layers."""
    return sum(m.ntk_feature_numel(k, shape) for m, shape in prof.layer_inputs.items())


def _correlating(prof: _Profile, k: int) -> list[tuple[int, ...]]:
    """Input shapes of the convolutions whose terms take the patch-correlation form."""
    return [shape for m, shape in prof.layer_inputs.items()
            if isinstance(m, Conv) and not m.holds_gradients(k, shape)]


class _Sizes(NamedTuple):
    chunk: int
    """Samples whose features are computed at once, and columns paired at once."""
    panel: int
    """Rows whose features are held while the column chunks pass (a multiple of chunk)."""
    pair_rows: int
    """Rows of the panel paired with a column chunk at once."""


def _sizes(name: str, prof: _Profile, k: int, element: int, max_memory: int) -> _Sizes:
    """Half of ``max_memory`` holds a panel of rows' features (Jacobians: k P per sample;
    structured: each layer's ``ntk_features``), the other half the work on a column chunk.
    Every row's features are then computed once, and the columns' once per panel.  ntk-vp
    has nothing worth holding (its features are the inputs): its chunks take it all."""
    if name == "ntk-vp":
        chunk = _chunk(name, prof, k, element, max_memory)
        return _Sizes(chunk, chunk, chunk)
    chunk = _chunk(name, prof, k, element, max_memory // 2)
    held = k * prof.params if name == "jacobian" else _structured_numel(prof, k)
    panel = max(chunk, max_memory // 2 // (held * element) // chunk * chunk)
    # a panel is paired at once (one product per layer), except where patch correlations,
    # (b1, b2, positions^2), keep the chunk's bound
    correlating = name == "structured" and _correlating(prof, k)
    return _Sizes(chunk, panel, chunk if correlating else panel)


def _feature_passes(n1: int, n2: int, gram: bool, panel: int) -> int:
    """Samples whose features a matrix computes: every row once, and the columns once per
    panel of rows (a Gram's columns from the end of the panel on: the rest are held)."""
    ends = [min(start + panel, n1) for start in range(0, n1, panel)]
    return n1 + sum(n2 - end if gram else n2 for end in ends)


def _map(fn: Callable[[torch.Tensor], torch.Tensor], features: Features) -> Features:
    if isinstance(features, torch.Tensor):
        return fn(features)
    return type(features)(_map(fn, f) for f in features)


def _take(features: Features, part: slice) -> Features:
    return _map(lambda t: t[part], features)


def _leaves(features: Features) -> list[torch.Tensor]:
    if isinstance(features, torch.Tensor):
        return [features]
    return [t for f in features for t in _leaves(f)]


def _features_of(method: _Method, x: torch.Tensor, chunk: int,
                 before_chunk: Callable[[int, int], object]) -> Features:
    """``method.features`` of every sample of ``x``, computed ``chunk`` samples at a time
    into one batch (filled in place: no second copy of the whole); one chunk's as they come.
    ``before_chunk(start, end)`` is told which samples each chunk is (for a progress note)."""
    if len(x) <= chunk:
        before_chunk(0, len(x))
        return method.features(x)
    held: Features = None
    for start in range(0, len(x), chunk):
        before_chunk(start, min(start + chunk, len(x)))
        part = method.features(x[start:start + chunk])
        if held is None:
            held = _map(lambda t: t.new_empty(len(x), *t.shape[1:]), part)
        for whole, piece in zip(_leaves(held), _leaves(part), strict=True):
            whole[start:start + len(piece)] = piece.detach()
        del part  # before the next chunk's are computed, so that one chunk's are alive at once
    return held


def _note_features(bar: Progress, r0: int, r1: int, start: int, end: int) -> None:
    bar.note(f"(features of rows {r0 + start}-{r0 + end} of the panel {r0}-{r1})")


def _pairs_counted(rows: range, cols: range, gram: bool) -> int:
    """Sample pairs a block adds to the progress count: of a Gram matrix, only those on and
    above the diagonal (the rest are mirrored), so that the count ends at n (n + 1) / 2."""
    if not gram:
        return len(rows) * len(cols)
    return sum(max(0, cols.stop - max(i, cols.start)) for i in rows)


def _fill(out: torch.Tensor, method: _Method, x1: torch.Tensor, x2: torch.Tensor | None,
          sizes: _Sizes, bar: Progress) -> None:
    """Compute ``out`` (groups, n1, n2, k, k) panel by panel of rows; of a Gram matrix
    (``x2=None``) only the blocks on and above the diagonal."""
    gram, z = x2 is None, x1 if x2 is None else x2
    for r0 in range(0, len(x1), sizes.panel):
        r1 = min(r0 + sizes.panel, len(x1))
        held = _features_of(method, x1[r0:r1], sizes.chunk,
                            functools.partial(_note_features, bar, r0, r1))
        bar.note("")
        for c0 in range(r0 if gram else 0, len(z), sizes.chunk):
            c1 = min(c0 + sizes.chunk, len(z))
            inside = gram and c0 < r1  # a Gram's columns in the panel: held already
            cols = _take(held, slice(c0 - r0, c1 - r0)) if inside else method.features(z[c0:c1])
            last = min(r1, c1) if gram else r1  # a Gram's rows below the columns: mirrored
            for a0 in range(r0, last, sizes.pair_rows):
                a1 = min(a0 + sizes.pair_rows, last)
                rows = _take(held, slice(a0 - r0, a1 - r0))
                out[:, a0:a1, c0:c1] = method.pair(rows, cols).detach()
                del rows  # a view of the panel: it would keep the panel alive past `del held`
                bar.advance(_pairs_counted(range(a0, a1), range(c0, c1), gram))
            del cols  # before the next columns' features are computed: one chunk's at once
        del held  # before the next panel's: else two panels are held at its peak


def _mirror_upper(out: torch.Tensor, step: int) -> None:
    """Fill a Gram matrix (groups, n, n, k, k) below its diagonal from above it,
    H(x_j, x_i) = H(x_i, x_j)^T over the outputs (a diagonal entry's k x k block too),
    ``step`` rows at a time: exactly symmetric, as an (n k) x (n k) matrix, whatever the
    rounding of the entries computed."""
    n, k = out.shape[1], out.shape[3]
    step = max(1, min(step, n))
    ones = torch.ones(step, step, dtype=torch.bool, device=out.device)
    diagonal = (ones.tril(0) & ones.triu(0))[:, :, None, None]
    within = torch.ones(k, k, dtype=torch.bool, device=out.device).tril(-1)  # outputs
    below = ones.tril(-1)[:, :, None, None] | (diagonal & within)
    for start in range(0, n, step):
        end = min(start + step, n)
        out[:, start:end, :start] = out[:, :start, start:end].transpose(1, 2).transpose(3, 4)
        block = out[:, start:end, start:end]
        mirrored = block.transpose(1, 2).transpose(3, 4)
        out[:, start:end, start:end] = torch.where(below[:end - start, :end - start],
                                                   mirrored, block)


def empirical_ntk(
    net: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    implementation: Implementation = "auto",
    full_outputs: bool = False,
    by_layer: bool = False,
    max_memory: int = DEFAULT_MAX_MEMORY,
    progress: bool = False,
) -> torch.Tensor:
    """The empirical NTK H(x1_i, x2_j) = sum over trainable parameters of
    df(x1_i)/dtheta df(x2_j)/dtheta (Eq. 2 of the paper at finite width).

    ``x2=None`` means x1 (a Gram matrix: only blocks on and above the diagonal are computed,
    then mirrored).  Returns (n1, n2), or (n1, n2, k, k) for a k-output net with
    ``full_outputs=True``; without it a k-output net gives the mean of the diagonal output
    blocks.  ``implementation``: see the module docstring; "jacobian" and "ntk-vp" take any
    ``torch.nn.Module`` mapping (n, ...) to (n,) or (n, k), "structured" only ntkcheck's
    nets.  ``by_layer=True`` adds a leading dim with one term per module that owns
    parameters, in the net's order, the rows summing to the whole: for ntkcheck's nets
    (depth, ...), row h - 1 the sum over weight layer h's parameters, zero for a frozen
    layer; its limit is ``arch.ntk(..., by_layer=True)``.  ``max_memory`` (bytes) bounds the
    working set: half of it holds the features (e.g. Jacobians) of a panel of rows, computed
    once, while the columns pass in chunks through the other half; a budget that holds
    every row's computes each sample's features once for a Gram, twice for a cross matrix.
    ``progress=True`` reports sample pairs done (a Gram's on and above the diagonal), rate
    and ETA on stderr, and which rows' features are being computed.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}; "
                         f"got {implementation!r}")
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module; got {type(net).__name__}")
    params = _trainable(net)
    check_bool("by_layer", by_layer)
    check_bool("progress", progress)
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
        name, costs = _choose(net, len(x1), len(z), x2 is None, k, profile,
                              x1.element_size(), max_memory)
        log.debug("empirical_ntk: %s (estimated flops %s)", name, costs)
    method = {"jacobian": lambda: _jacobian_method(net, params, groups),
              "ntk-vp": lambda: _ntk_vp_method(net, params, groups),
              "structured": lambda: _structured_method(net, by_layer)  # type: ignore[arg-type]
              }[name]()
    sizes = _sizes(name, profile, k, x1.element_size(), max_memory)
    gram = x2 is None
    out = x1.new_zeros(len(groups), len(x1), len(z), k, k)
    with Progress(pair_count(len(x1), len(z), gram), "sample pairs", enabled=progress) as bar:
        _fill(out, method, x1, x2, sizes, bar)
    if gram:
        _mirror_upper(out, sizes.chunk)
    out = out if by_layer else out[0]
    return out if full_outputs else out.diagonal(dim1=-2, dim2=-1).mean(-1)
