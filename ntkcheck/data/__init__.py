"""Datasets, read from local files only."""

from .cifar10 import CLASSES, cache_dir, cifar10, cifar10_exact, data_root, standardize, write_slice

__all__ = ["CLASSES", "cache_dir", "cifar10", "cifar10_exact", "data_root", "standardize",
           "write_slice"]
