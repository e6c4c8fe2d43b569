"""ntkcheck: exact neural tangent kernels and checks of NTK theory on finite networks."""

from . import data
from .architectures import CNN, FC
from .empirical import empirical_ntk
from .kernel_matrix import kernel_matrix, kernel_tiles
from .kernels.recursion import Kernels
from .regression import KernelRegression, kernel_regression
from .training import History, train

__all__ = ["CNN", "FC", "History", "KernelRegression", "Kernels", "data", "empirical_ntk",
           "kernel_matrix", "kernel_regression", "kernel_tiles", "train"]
__version__ = "0.1.0"
