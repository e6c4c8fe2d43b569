"""ntkcheck: exact neural tangent kernels and checks of NTK theory on finite networks."""

from .architectures import CNN, FC

__all__ = ["CNN", "FC"]
__version__ = "0.1.0"
