"""Per-architecture rules of the shared recursion (see ``recursion.py``).

Each rule set owns the architecture-specific steps of the paper's recursion:

* input rule   Sigma^(0): FC x.x' (Eq. 7); CNN the patch sum of x (x) x' over channels (Sec. 4);
* layer rule   what follows each activation: nothing (FC) or the patch sum (CNN);
* readout rule the scalar (FC), the trace over positions (CNN flatten), or the mean over all
  position pairs, 1/(PQ)^2 (CNN with global average pooling, Sec. H).

Fields are the tensors the recursion carries for a tile of b1 x b2 input pairs:
(b1, b2) for FC, (b1, b2, P, Q) for the same-position entries (i, j, i, j) that flatten
needs, and (b1, b2, P, Q, P, Q) for every position pair, which GAP needs.  Per-image
variances Sigma^(h)(x, x) at the same position (and their square roots) are (n,) for FC and
(n, P, Q) for CNN.
"""

from __future__ import annotations

import torch

from .patches import patch_sum
from .relu import C_SIGMA

_IMAGE_AXES = ((-2,), (-1,))
_PAIR_AXES = ((-4, -2), (-3, -1))


def _channel_dot(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """sum_c x1[..., c, i, j] x2[..., c, i, j], the channel dim being -3, one channel at a
    time: as a batched matmul (one C-long product per position) it ran 20x slower on the CPU.
    Identical inputs get the same bits here whether they come as one image or as a pair."""
    out = x1[..., 0, :, :] * x2[..., 0, :, :]
    for c in range(1, x1.shape[-3]):
        out += x1[..., c, :, :] * x2[..., c, :, :]
    return out


class Dense:
    """Fully-connected net (Eq. 6-9): c' = c_sigma, no patch sum, scalar readout."""

    scale = C_SIGMA

    def field_numel(self, input_shape: tuple[int, ...]) -> int:
        return 1

    def input_cov(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return x1 @ x2.T

    def input_var(self, x: torch.Tensor) -> torch.Tensor:
        return (x * x).sum(-1)

    def outer(self, s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
        return s1[:, None] * s2[None, :]

    def image_layer(self, v: torch.Tensor) -> torch.Tensor:
        return v

    def pair_layer(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def readout(self, t: torch.Tensor) -> torch.Tensor:
        return t


class _Conv:
    """What both CNN readouts share: c' = c_sigma / q^2 and the per-image variances."""

    def __init__(self, filter_size: int) -> None:
        self.radius = (filter_size - 1) // 2
        self.scale = C_SIGMA / filter_size**2

    def input_var(self, x: torch.Tensor) -> torch.Tensor:
        # Sigma^(0)(x, x)_{ij,ij}: patch sum of the channel-summed squared pixels.
        return self.image_layer(_channel_dot(x, x))

    def image_layer(self, v: torch.Tensor) -> torch.Tensor:
        return patch_sum(v, _IMAGE_AXES, self.radius)


class ConvSamePosition(_Conv):
    """Vanilla CNN (flatten readout): only the entries (i, j, i, j) are ever needed, because
    the patch sum moves both positions together and the readout is the trace."""

    def field_numel(self, input_shape: tuple[int, ...]) -> int:
        return input_shape[-2] * input_shape[-1]

    def input_cov(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return self.pair_layer(_channel_dot(x1[:, None], x2[None]))

    def outer(self, s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
        return s1[:, None] * s2[None, :]

    def pair_layer(self, t: torch.Tensor) -> torch.Tensor:
        return patch_sum(t, _IMAGE_AXES, self.radius)

    def readout(self, t: torch.Tensor) -> torch.Tensor:
        return t.sum((-2, -1))  # tr(Theta) = sum_ij Theta_{ij,ij}


class ConvAllPositions(_Conv):
    """CNN with global average pooling (Sec. H): every position pair (i, j, i', j')."""

    def field_numel(self, input_shape: tuple[int, ...]) -> int:
        return (input_shape[-2] * input_shape[-1]) ** 2

    def input_cov(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return self.pair_layer(torch.einsum("ncij,mckl->nmijkl", x1, x2))

    def outer(self, s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
        return s1[:, None, :, :, None, None] * s2[None, :, None, None, :, :]

    def pair_layer(self, t: torch.Tensor) -> torch.Tensor:
        return patch_sum(t, _PAIR_AXES, self.radius)

    def readout(self, t: torch.Tensor) -> torch.Tensor:
        return t.mean((-4, -3, -2, -1))  # (1 / (PQ)^2) sum over all position pairs
