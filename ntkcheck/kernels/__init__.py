"""Analytic kernels: the rules of the paper's recursion and the engine that runs them."""
