"""The layers of the paper's finite networks, each owning its part of the empirical NTK.

Weights are N(0, 1) and carry no scale; the NTK parametrization's multipliers live in
``ScaledReLU`` (sqrt(c_sigma / width) after a dense layer, sqrt(c_sigma / (C q^2)) after a
convolution; Eq. 6 and Sec. 4), so a weight layer's output is z = W a on its input a.

For a weight layer, df/dW = delta a^T (dense) or sum_p delta_p patch_p(a)^T (convolution),
where delta = df/dz.  ``ntk`` turns the inputs and deltas of two batches into that layer's
term of the empirical NTK <df(x)/dW, df(x')/dW>, in the cheapest of its exact forms, without
a parameter-sized Jacobian where the layer allows it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.relu import C_SIGMA


class Dense(nn.Module):
    """z = a W^T, W (out, in) ~ N(0, 1)."""

    def __init__(self, fan_in: int, fan_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(fan_out, fan_in))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return a @ self.weight.T

    def flops(self, a_shape: tuple[int, ...]) -> float:
        return 2.0 * self.weight.numel()

    def ntk(self, a1: torch.Tensor, d1: torch.Tensor, a2: torch.Tensor, d2: torch.Tensor
            ) -> torch.Tensor:
        """(n1, n2, k, k): (a . a') (delta_c . delta'_c'); a (n, in), delta (n, k, out)."""
        return torch.einsum("ij,ijkl->ijkl", a1 @ a2.T,
                            torch.einsum("ikh,jlh->ijkl", d1, d2))

    def ntk_flops(self, n1: int, n2: int, k: int, a_shape: tuple[int, ...]) -> float:
        return 2.0 * n1 * n2 * (self.weight.shape[1] + k * k * self.weight.shape[0])


class Conv(nn.Module):
    """z = W * a (q x q filters, zero "same" padding, stride 1), W (out, in, q, q) ~ N(0, 1)."""

    def __init__(self, channels_in: int, channels_out: int, filter_size: int) -> None:
        super().__init__()
        q = filter_size
        self.weight = nn.Parameter(torch.empty(channels_out, channels_in, q, q))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return F.conv2d(a, self.weight, padding=self.weight.shape[-1] // 2)

    def _patches(self, a: torch.Tensor) -> torch.Tensor:
        """(n, positions, C q^2): the patch each output position sees."""
        q = self.weight.shape[-1]
        return F.unfold(a, q, padding=q // 2).transpose(1, 2)

    def flops(self, a_shape: tuple[int, ...]) -> float:
        return 2.0 * self.weight.numel() * math.prod(a_shape[-2:])

    def _forms(self, n1: int, n2: int, k: int, a_shape: tuple[int, ...]) -> tuple[float, float]:
        """Flops of the gradient form and of the patch-correlation form."""
        out, patch = self.weight.shape[0], self.weight[0].numel()
        positions = math.prod(a_shape[-2:])
        gradient = 2.0 * out * patch * k * ((n1 + n2) * positions + n1 * n2 * k)
        correlation = 2.0 * n1 * n2 * positions**2 * (k * k * out + patch)
        return gradient, correlation

    def ntk_flops(self, n1: int, n2: int, k: int, a_shape: tuple[int, ...]) -> float:
        return min(self._forms(n1, n2, k, a_shape))

    def ntk(self, a1: torch.Tensor, d1: torch.Tensor, a2: torch.Tensor, d2: torch.Tensor
            ) -> torch.Tensor:
        """(n1, n2, k, k); a (n, C, H, W), delta (n, k, C', H, W).  Either the per-sample
        gradients sum_p delta_p patch_p^T contracted (cheap for large images), or the
        patch-correlation form sum_{p, p'} (delta_p . delta'_p') (patch_p . patch'_p')
        (cheap for small images and wide layers); both exact."""
        n1, k = d1.shape[:2]
        p1, p2 = self._patches(a1), self._patches(a2)
        e1, e2 = d1.flatten(3), d2.flatten(3)  # (n, k, C', positions)
        gradient, correlation = self._forms(n1, d2.shape[0], k, tuple(a1.shape))
        if gradient <= correlation:
            g1 = torch.einsum("ikop,ipc->ikoc", e1, p1).flatten(2)
            g2 = torch.einsum("ikop,ipc->ikoc", e2, p2).flatten(2)
            return torch.einsum("ikg,jlg->ijkl", g1, g2)
        patches = torch.einsum("ipc,jqc->ijpq", p1, p2)
        return torch.einsum("ikop,jloq,ijpq->ijkl", e1, e2, patches)


class ScaledReLU(nn.Module):
    """a = sqrt(c_sigma / fan) relu(z): fan = width after a dense layer, C q^2 after a
    convolution (the NTK parametrization)."""

    def __init__(self, fan: int) -> None:
        super().__init__()
        self.fan = fan
        self.scale = math.sqrt(C_SIGMA / fan)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.scale * F.relu(z)

    def extra_repr(self) -> str:
        return f"scale=sqrt({C_SIGMA:g}/{self.fan})"


class GlobalAvgPool(nn.Module):
    """(n, C, H, W) -> (n, C): the mean over positions."""

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return a.mean((2, 3))


WEIGHT_LAYERS = (Dense, Conv)
