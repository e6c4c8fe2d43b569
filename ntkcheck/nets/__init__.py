"""Finite networks in the paper's NTK parametrization (Eq. 6, Sec. 4 and H)."""

from .layers import Conv, Dense, GlobalAvgPool, ScaledReLU
from .network import Network, build

__all__ = ["Conv", "Dense", "GlobalAvgPool", "Network", "ScaledReLU", "build"]
