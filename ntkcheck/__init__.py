"""ntkcheck: exact neural tangent kernels and checks of NTK theory on finite networks."""

from . import data
from .architectures import CNN, FC

__all__ = ["CNN", "FC", "data"]
__version__ = "0.1.0"
