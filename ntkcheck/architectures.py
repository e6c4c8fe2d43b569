"""The architectures: one object gives both sides of every comparison.

``FC`` and ``CNN`` fix depth, pooling, filter size and which layers train; ``.ntk`` and
``.nngp`` give the exact infinite-width kernels (Arora et al., 2019).  Conventions, the
paper's throughout: ``depth`` counts weight layers including the readout (Table 1), weights
N(0, 1) without biases, ReLU with c_sigma = 2, zero "same" padding and stride 1.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import ClassVar, Literal, overload

import torch

from ._checks import check_bool, check_depths, check_inputs, check_int
from .kernels import compiled, fused
from .kernels.recursion import Activation, Kernels, Rules, activation, kernels
from .kernels.rules import ConvAllPositions, ConvSamePosition, Dense
from .nets.network import Network, build

DEFAULT_MAX_MEMORY = 2**30
"""Bound on the bytes of a kernel computation's working set, output excluded (1 GiB)."""

Backend = Literal["auto", "torch", "compiled", "triton"]
BACKENDS = ("auto", "torch", "compiled", "triton")


class _Architecture:
    """What FC and CNN share: depth checks and the ``ntk`` / ``nngp`` entry points."""

    depth: int
    fix_first_last: bool
    _layout: ClassVar[str]  # the input's dims, for messages
    _rank: ClassVar[int]
    _min_trainable_depth: ClassVar[int]
    _has_fused: ClassVar[bool] = False

    @property
    def min_depth(self) -> int:
        """Smallest valid depth: 3 with ``fix_first_last`` (depth 2 would train nothing)."""
        return 3 if self.fix_first_last else self._min_trainable_depth

    def _check_depth(self) -> None:
        check_bool("fix_first_last", self.fix_first_last)
        check_int(
            "depth", self.depth, self.min_depth,
            f" for {type(self).__name__}"
            + (" with fix_first_last=True (depth 2 would train no layer)"
               if self.fix_first_last else "")
            + " (weight layers including the readout)",
        )

    def _rules(self) -> Rules:
        raise NotImplementedError

    def network(
        self,
        width: int,
        input_shape: tuple[int, ...],
        *,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device | None = None,
        outputs: int = 1,
    ) -> Network:
        """A finite network of this architecture in the NTK parametrization (Eq. 6 / Sec. 4),
        whose empirical NTK tends to ``self.ntk`` as ``width`` grows (Theorem 3.1).

        ``width`` units (FC) or channels (CNN) in each of the ``depth - 1`` hidden layers;
        ``input_shape`` is (d,) or (C, H, W); N(0, 1) weights drawn from ``seed`` on the CPU
        (the same network on every device); ``outputs`` readout units (1: f(x) has shape
        (n,)).  Under ``fix_first_last`` the first and readout weights do not train.
        """
        return build(self, width, input_shape, seed=seed, dtype=dtype, device=device,
                     outputs=outputs)

    def _fused_unsupported(self, x: torch.Tensor) -> str | None:
        """Why the fused GPU kernel cannot compute this kernel on ``x`` (None: it can)."""
        return f"the fused kernel exists for CNN only ({type(self).__name__} is cheap anyway)"

    def _fused(self, x1: torch.Tensor, x2: torch.Tensor | None, depths: frozenset[int],
               max_memory: int, progress: bool) -> dict[int, Kernels]:
        raise NotImplementedError

    def _kernels(
        self,
        x1: torch.Tensor,
        x2: torch.Tensor | None,
        depths: frozenset[int],
        *,
        max_memory: int = DEFAULT_MAX_MEMORY,
        progress: bool = False,
        backend: Backend = "auto",
        by_layer: bool = False,
    ) -> dict[int, Kernels]:
        """NTK and NNGP of each depth in ``depths`` for checked inputs (see ``ntk``)."""
        check_int("max_memory", max_memory, 1, " bytes")
        check_bool("progress", progress)
        check_bool("by_layer", by_layer)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
        if self._use_fused(x1, backend, by_layer):
            return self._fused(x1, x2, depths, max_memory, progress)
        rules = self._rules()
        steps: AbstractContextManager[Activation] = nullcontext(activation)
        if backend == "compiled" or (backend == "auto"
                                     and compiled.worth_compiling(rules, x1, x2, depths)):
            steps = compiled.compiled_activation(insist=backend == "compiled")
        with steps as step:
            return kernels(
                rules, x1, x2, depths,
                fix_first_last=self.fix_first_last, max_memory=max_memory,
                progress=progress, step=step, by_layer=by_layer,
            )

    def _use_fused(self, x: torch.Tensor, backend: Backend, by_layer: bool) -> bool:
        """"auto" takes the fused kernel for the CUDA float32 CNN inputs it supports and
        says so when it has to fall back; "triton" insists (an error names what is missing).
        Split by layer, it never does: the fused kernel carries only the NTK's sum."""
        if by_layer and backend == "triton":
            raise ValueError("backend='triton' cannot split the NTK by layer (the fused kernel "
                             "carries only the sum); use backend='torch' or 'compiled'")
        if by_layer or backend in ("torch", "compiled"):
            return False
        reason = self._fused_unsupported(x)
        if backend == "triton":
            if reason is not None:
                raise ValueError(f"backend='triton' cannot compute this kernel: {reason}")
            return True
        if not (self._has_fused and x.is_cuda and x.dtype == torch.float32):
            return False
        if reason is not None:
            warnings.warn(f"ntkcheck: using the torch reference, not the fused kernel: {reason}",
                          stacklevel=5)
        return reason is None

    def _kernel(
        self,
        which: Literal["ntk", "nngp"],
        x1: torch.Tensor,
        x2: torch.Tensor | None,
        depths: Iterable[int] | None,
        max_memory: int,
        progress: bool,
        backend: Backend,
        by_layer: bool = False,
    ) -> torch.Tensor | dict[int, torch.Tensor]:
        x1, x2 = check_inputs(x1, x2, self._rank, self._layout)
        chosen = check_depths(
            self.depth if depths is None else depths, self.min_depth, self.depth
        )
        found = self._kernels(x1, x2, chosen, max_memory=max_memory, progress=progress,
                              backend=backend, by_layer=by_layer)
        if depths is None:
            return getattr(found[self.depth], which)
        return {d: getattr(pair, which) for d, pair in found.items()}

    @overload
    def ntk(self, x1: torch.Tensor, x2: torch.Tensor | None = None, *, depths: None = None,
            max_memory: int = ..., progress: bool = ..., backend: Backend = ...,
            by_layer: bool = ...) -> torch.Tensor: ...
    @overload
    def ntk(self, x1: torch.Tensor, x2: torch.Tensor | None = None, *, depths: Iterable[int],
            max_memory: int = ..., progress: bool = ..., backend: Backend = ...,
            by_layer: bool = ...) -> dict[int, torch.Tensor]: ...

    def ntk(self, x1, x2=None, *, depths=None, max_memory=DEFAULT_MAX_MEMORY, progress=False,
            backend="auto", by_layer=False):
        """Exact NTK Theta(x1, x2): an (n1, n2) tensor; ``x2=None`` means ``x1`` (Gram).

        With ``depths`` (e.g. ``(3, 4, 6, 11, 21)``, each <= ``self.depth``) returns
        ``{depth: (n1, n2) tensor}`` for all of them from one recursion up to the deepest.
        ``max_memory`` bounds the working set in bytes (the output matrices excluded): pairs
        go in tiles under it, and a pair that alone needs more is refused with a ValueError.
        ``progress`` reports pairs done, rate and ETA on stderr.
        ``backend``: "auto" runs CNN kernels of CUDA float32 inputs with the fused Triton
        kernel (images up to 64x64; otherwise it warns and uses the reference) and large
        CPU jobs "compiled"; "torch" forces the torch reference; "compiled" is the reference
        with each layer's activation compiled by torch.compile (the same code, fused: about
        2x faster for GAP on the CPU, less for flatten and FC; ``kernels.compiled``);
        "triton" insists on the fused kernel.
        ``by_layer=True`` splits the NTK into its weight layers' terms, whose sum it is
        (Eq. 9): a (depth, n1, n2) tensor (per requested depth d, (d, n1, n2)) whose row
        h - 1 is layer h's gradient contribution, Sigma^(h-1) carried through the K-dots
        (and patch sums) of the layers above it, zero for a layer that does not train.  It
        is what ``empirical_ntk(net, ..., by_layer=True)`` estimates at finite width.  It
        runs the torch reference ("compiled" too, not the fused kernel): the forward pass
        keeps each layer's K and K-dot (2 x depth more fields per pair, which
        ``max_memory`` accounts for) and a backward sweep per requested depth gives the
        terms (``kernels.recursion.layer_terms``).
        Output dtype and device follow the input.
        """
        return self._kernel("ntk", x1, x2, depths, max_memory, progress, backend, by_layer)

    @overload
    def nngp(self, x1: torch.Tensor, x2: torch.Tensor | None = None, *, depths: None = None,
            max_memory: int = ..., progress: bool = ..., backend: Backend = ...
            ) -> torch.Tensor: ...
    @overload
    def nngp(self, x1: torch.Tensor, x2: torch.Tensor | None = None, *, depths: Iterable[int],
            max_memory: int = ..., progress: bool = ..., backend: Backend = ...
            ) -> dict[int, torch.Tensor]: ...

    def nngp(self, x1, x2=None, *, depths=None, max_memory=DEFAULT_MAX_MEMORY, progress=False,
            backend="auto"):
        """NNGP kernel E[f(x1) f(x2)] at initialization (Eq. 1, 7); arguments as ``ntk``.

        The output's covariance does not depend on which layers train, so
        ``fix_first_last`` does not change it.
        """
        return self._kernel("nngp", x1, x2, depths, max_memory, progress, backend)


@dataclass(frozen=True)
class FC(_Architecture):
    """Fully-connected ReLU net of Eq. (6): ``depth - 1`` hidden layers and a linear readout.

    NNGP Sigma^(h) by Eq. (7), NTK Theta = sum_{h=1}^{L+1} Sigma^(h-1) prod_{h'>=h}
    Sigma-dot^(h') by Eq. (8)-(9), with L = depth - 1.  Inputs are (n, d) tensors.
    ``fix_first_last=True`` trains neither the first nor the readout layer.
    """

    depth: int
    fix_first_last: bool = False

    _layout: ClassVar[str] = "(n, d)"
    _rank: ClassVar[int] = 2
    _min_trainable_depth: ClassVar[int] = 1

    def __post_init__(self) -> None:
        self._check_depth()

    def _rules(self) -> Rules:
        return Dense()


Pooling = Literal["flatten", "gap"]


@dataclass(frozen=True)
class CNN(_Architecture):
    """CNN of Sec. 4 / H: ``depth - 1`` conv layers (q x q filters, zero "same" padding,
    stride 1, each followed by ReLU and sqrt(c_sigma / (C q^2))) and a linear readout.

    ``pooling="flatten"`` (vanilla, a readout weight per position): CNTK = tr(Theta^(L)).
    ``pooling="gap"`` (global average pooling): CNTK = (1/(PQ)^2) sum over all position
    pairs of Theta^(L).  ``fix_first_last=True`` (the paper's GAP setting) trains neither
    the first conv layer nor the readout: Theta^(0) = 0 and the readout's K term is dropped.
    Inputs are (n, C, H, W) tensors.  Flatten costs O(n1 n2 H W depth); GAP
    O(n1 n2 (HW)^2 depth), in tiles of pairs under ``max_memory`` bytes.
    """

    depth: int
    pooling: Pooling = "flatten"
    filter_size: int = 3
    fix_first_last: bool = False

    _layout: ClassVar[str] = "(n, C, H, W)"
    _rank: ClassVar[int] = 4
    _min_trainable_depth: ClassVar[int] = 2
    _has_fused: ClassVar[bool] = True

    def __post_init__(self) -> None:
        self._check_depth()
        if self.pooling not in ("flatten", "gap"):
            raise ValueError(f"pooling must be 'flatten' or 'gap'; got {self.pooling!r}")
        check_int("filter_size", self.filter_size, 1)
        if self.filter_size % 2 == 0:
            raise ValueError(
                "filter_size must be odd (zero 'same' padding needs a centred filter); "
                f"got {self.filter_size}"
            )

    def _rules(self) -> Rules:
        rules = ConvAllPositions if self.pooling == "gap" else ConvSamePosition
        return rules(self.filter_size)

    def _fused_unsupported(self, x: torch.Tensor) -> str | None:
        return fused.unsupported_reason(x)

    def _fused(self, x1: torch.Tensor, x2: torch.Tensor | None, depths: frozenset[int],
               max_memory: int, progress: bool) -> dict[int, Kernels]:
        return fused.fused_kernels(
            x1, x2, depths, filter_size=self.filter_size, gap=self.pooling == "gap",
            fix_first_last=self.fix_first_last, max_memory=max_memory, progress=progress,
        )
