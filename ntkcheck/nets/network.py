"""The finite networks whose infinite-width limits are ``FC`` and ``CNN``'s kernels."""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_bool, check_int
from .layers import WEIGHT_LAYERS, Conv, Dense, GlobalAvgPool, ScaledReLU


class Network(nn.Module):
    """A stack of weight layers and scaled ReLUs with a linear readout: f(x) of shape (n,)
    for one output, (n, outputs) otherwise.  ``layers`` is a plain ``nn.Sequential``.

    ``architecture``, ``input_shape`` and ``outputs`` say what it is; the first and last
    weight layers have ``requires_grad=False`` under ``fix_first_last``.
    """

    def __init__(self, layers: list[nn.Module], architecture: object,
                 input_shape: tuple[int, ...], outputs: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(*layers)
        self.architecture = architecture
        self.input_shape = input_shape
        self.outputs = outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return out[:, 0] if self.outputs == 1 else out

    def weight_layers(self) -> list[Dense | Conv]:
        return [m for m in self.layers if isinstance(m, WEIGHT_LAYERS)]

    def extra_repr(self) -> str:
        return f"architecture={self.architecture!r}, input_shape={self.input_shape}"


def _check_shape(input_shape: object, rank: int, layout: str) -> tuple[int, ...]:
    if (not isinstance(input_shape, tuple | list) or len(input_shape) != rank
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1
                       for s in input_shape)):
        raise ValueError(f"input_shape must be {layout}: {rank} positive ints; "
                         f"got {input_shape!r}")
    return tuple(input_shape)


def build(
    architecture: object,
    width: int,
    input_shape: tuple[int, ...],
    *,
    seed: int,
    dtype: torch.dtype,
    device: str | torch.device | None,
    outputs: int,
) -> Network:
    """The finite network of ``architecture`` (an ``FC`` or ``CNN``): ``depth - 1`` hidden
    layers of ``width`` units / channels and a readout with ``outputs`` outputs.

    Weights are drawn N(0, 1) from a CPU generator seeded with ``seed`` in float64, then
    cast and moved, so a seed gives the same network on every device and in every dtype.
    """
    from ..architectures import CNN, FC

    check_int("width", width, 1, " (units or channels per hidden layer)")
    check_int("outputs", outputs, 1)
    check_int("seed", seed, 0)
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64; got {dtype}")
    depth = architecture.depth  # type: ignore[attr-defined]
    layers: list[nn.Module]
    if isinstance(architecture, FC):
        (d,) = _check_shape(input_shape, 1, "(d,)")
        dims = [d] + [width] * (depth - 1)
        layers = []
        for fan_in in dims:
            layers.append(Dense(fan_in, width))
            layers.append(ScaledReLU(width))
        layers[-2:] = [Dense(dims[-1], outputs)]
    elif isinstance(architecture, CNN):
        channels, height, breadth = _check_shape(input_shape, 3, "(C, H, W)")
        q = architecture.filter_size
        layers = []
        for c in [channels] + [width] * (depth - 2):
            layers += [Conv(c, width, q), ScaledReLU(width * q * q)]
        if architecture.pooling == "gap":
            layers += [GlobalAvgPool(), Dense(width, outputs)]
        else:
            layers += [nn.Flatten(), Dense(width * height * breadth, outputs)]
    else:
        raise TypeError(f"architecture must be an FC or a CNN; got {type(architecture).__name__}")
    net = Network(layers, architecture, tuple(input_shape), outputs).to(torch.float64)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in net.weight_layers():
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator,
                                           dtype=torch.float64))
    if check_bool("fix_first_last", architecture.fix_first_last):  # type: ignore[attr-defined]
        for layer in (net.weight_layers()[0], net.weight_layers()[-1]):
            layer.weight.requires_grad_(False)
    return net.to(device=device, dtype=dtype)
