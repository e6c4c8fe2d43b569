"""The layers of the paper's finite networks, each owning its part of the empirical NTK.

Weights are N(0, 1) and carry no scale; the NTK parametrization's multipliers live in
``ScaledReLU`` (sqrt(c_sigma / width) after a dense layer, sqrt(c_sigma / (C q^2)) after a
convolution; Eq. 6 and Sec. 4), so a weight layer's output is z = W a on its input a.

For a weight layer, df/dW = delta a^T (dense) or sum_p delta_p patch_p(a)^T (convolution),
where delta = df/dz.  A layer's term of the empirical NTK <df(x)/dW, df(x')/dW> comes in two
steps, so that what is per sample is computed once per sample: ``ntk_features`` turns a
batch's inputs and deltas into the layer's features (the factors a and delta, or for a
convolution on a large image its per-sample gradients), and ``ntk`` pairs two batches'
features, in the cheapest of the layer's exact forms; a parameter-sized gradient only where
it costs less.
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

    def ntk_features(self, a: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The factors themselves: a (n, in), delta (n, k, out)."""
        return a, delta

    def ntk_feature_numel(self, k: int, a_shape: tuple[int, ...]) -> int:
        return self.weight.shape[1] + k * self.weight.shape[0]

    def ntk(self, f1: tuple[torch.Tensor, ...], f2: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """(n1, n2, k, k): (a . a') (delta_c . delta'_c')."""
        (a1, d1), (a2, d2) = f1, f2
        return torch.einsum("ij,ijkl->ijkl", a1 @ a2.T,
                            torch.einsum("ikh,jlh->ijkl", d1, d2))

    def ntk_flops(self, samples: int, pairs: int, k: int, a_shape: tuple[int, ...]) -> float:
        """Flops of ``ntk`` over ``pairs`` sample pairs (its features cost nothing)."""
        return 2.0 * pairs * (self.weight.shape[1] + k * k * self.weight.shape[0])


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

    def _forms(self, samples: int, pairs: int, k: int, a_shape: tuple[int, ...]
               ) -> tuple[float, float]:
        """Flops of the gradient form (each of ``samples`` gradients, then a contraction
        per pair) and of the patch-correlation form, over ``pairs`` sample pairs: per pair
        and position pair, the patches' product, the deltas' (k^2 of C' each) and the k^2
        products of the two."""
        out, patch = self.weight.shape[0], self.weight[0].numel()
        positions = math.prod(a_shape[-2:])
        gradient = 2.0 * out * patch * k * (samples * positions + pairs * k)
        correlation = 2.0 * pairs * positions**2 * (k * k * (out + 1) + patch)
        return gradient, correlation

    def holds_gradients(self, k: int, a_shape: tuple[int, ...]) -> bool:
        """Whether the features are the per-sample gradients: when their contraction costs
        less per pair than the patch correlation, i.e. unless the image is tiny (for
        C = C' = 128, q = 3, k = 1: 10 positions or fewer).  Their own cost is per sample,
        paid once for every sample whose features are computed."""
        gradient, correlation = self._forms(0, 1, k, a_shape)
        return gradient <= correlation

    def ntk_features(self, a: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """a (n, C, H, W), delta (n, k, C', H, W) -> the per-sample gradients
        sum_p delta_p patch_p^T, (n, k, C' C q^2), or the factors a and delta themselves."""
        if not self.holds_gradients(delta.shape[1], tuple(a.shape)):
            return a, delta
        gradients = torch.einsum("ikop,ipc->ikoc", delta.flatten(3), self._patches(a))
        return (gradients.flatten(2),)

    def ntk_feature_numel(self, k: int, a_shape: tuple[int, ...]) -> int:
        if self.holds_gradients(k, a_shape):
            return k * self.weight.numel()
        return (a_shape[1] + k * self.weight.shape[0]) * math.prod(a_shape[-2:])

    def ntk_flops(self, samples: int, pairs: int, k: int, a_shape: tuple[int, ...]) -> float:
        """Flops of ``ntk_features`` for ``samples`` samples and ``ntk`` over ``pairs``."""
        gradient, correlation = self._forms(samples, pairs, k, a_shape)
        return gradient if self.holds_gradients(k, a_shape) else correlation

    def ntk(self, f1: tuple[torch.Tensor, ...], f2: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """(n1, n2, k, k) from two batches' ``ntk_features``: their per-sample gradients
        (one tensor) contracted, or from the factors a and delta the patch-correlation form
        sum_{p, p'} (delta_p . delta'_p') (patch_p . patch'_p') (cheap for tiny images and
        wide layers); both exact."""
        if len(f1) == 1:
            return contract(f1[0], f2[0])
        (a1, d1), (a2, d2) = f1, f2
        patches = torch.einsum("ipc,jqc->ijpq", self._patches(a1), self._patches(a2))
        return torch.einsum("ikop,jloq,ijpq->ijkl", d1.flatten(3), d2.flatten(3), patches)


def contract(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(b1, k, p) x (b2, k', p) -> (b1, b2, k, k'), sum over p: one matrix product against a
    transposed view, which copies neither operand."""
    product = a.reshape(-1, a.shape[-1]) @ b.reshape(-1, b.shape[-1]).T
    return product.reshape(len(a), a.shape[1], len(b), b.shape[1]).permute(0, 2, 1, 3)


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
