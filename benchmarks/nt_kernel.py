"""neural-tangents' exact kernels of ntkcheck's architectures, for the cross-check and the
speed comparison.  Runs under any Python that has jax and neural-tangents; it imports
neither torch nor ntkcheck, so it can run in an environment of its own.

The stax layers are scaled to ntkcheck's conventions (README, "Conventions"), so the two
kernels should agree exactly, not up to a constant.  neural-tangents' "ntk"
parametrization divides each layer by its fan-in and starts from x.x' / C, where ntkcheck
starts from the unnormalized patch sum, applies c_sigma / q^2 = 2 / q^2 after each
activation and reads out a sum (flatten) or mean (GAP) over positions:

* first layer  W_std^2 = d (FC, d inputs) or C q^2 (CNN), so Sigma^(0) = x.x' or the patch sum;
* later layers W_std^2 = 2 (for a CNN too: neural-tangents' conv already averages the q^2 taps);
* readout      W_std^2 = 2 (FC), 2 / q^2 (GAP, a mean) or 2 H W / q^2 (flatten: its Flatten
  averages the H W positions, ntkcheck's trace sums them).

No biases, "SAME" zero padding, stride 1, every layer trained (neural-tangents has no
switch for a fixed first or last layer).

    python nt_kernel.py kernel ARCH DEPTH IN.npz OUT.npz [Q]  # x1, x2 (NCHW or (n, d)) -> ntk, nngp
    python nt_kernel.py time ARCH DEPTH N1 N2                 # one JSON line: runs (s), pairs

ARCH is fc, flatten or gap; kernels are float64 ("kernel") or float32 ("time").
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import sys
import time
import types
import warnings

import numpy as np


class _Stub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Empty modules for the parts of neural-tangents 0.6.5 that stax never uses and that
    do not import under current jax: tensorflow / tf2jax (its `experimental` package) and
    its structured-derivative rules (`_src.empirical`, written against jax internals that
    jax 0.10 removed)."""

    NAMES = ("tensorflow", "tf2jax", "neural_tangents.experimental",
             "neural_tangents._src.empirical")

    def find_spec(self, name, path, target=None):
        if name.startswith(self.NAMES):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = lambda attr: type(attr, (), {})
        return module

    def exec_module(self, module):
        pass


def _import_neural_tangents():
    """neural_tangents and jax, with the old names neural-tangents 0.6.5 imports from jax
    put back where newer jax no longer exports them."""
    sys.meta_path.insert(0, _Stub())
    warnings.simplefilter("ignore", DeprecationWarning)
    import jax
    import jax._src.core
    import jax._src.util

    sys.modules.setdefault("jax.util", jax._src.util)
    for name in dir(jax._src.core):
        if not name.startswith("__") and not hasattr(jax.core, name):
            setattr(jax.core, name, getattr(jax._src.core, name))
    import neural_tangents

    return jax, neural_tangents


def kernel_fn(stax, arch: str, depth: int, shape: tuple[int, ...], filter_size: int = 3):
    """neural-tangents' kernel function of ntkcheck's FC(depth) or CNN(depth, pooling=arch)
    on inputs of ``shape`` (one input's shape: (d,) or (H, W, C))."""
    if arch == "fc":
        (d,) = shape
        layers = [stax.Dense(1, W_std=d**0.5), stax.Relu()]
        for _ in range(depth - 2):
            layers += [stax.Dense(1, W_std=2**0.5), stax.Relu()]
        return stax.serial(*layers, stax.Dense(1, W_std=2**0.5))[2]
    height, width, channels = shape
    q = filter_size

    def conv(w_var: float):
        return stax.Conv(1, (q, q), padding="SAME", W_std=w_var**0.5)

    layers = [conv(channels * q * q), stax.Relu()]
    for _ in range(depth - 2):
        layers += [conv(2.0), stax.Relu()]
    if arch == "gap":
        layers += [stax.GlobalAvgPool(), stax.Dense(1, W_std=(2 / q**2) ** 0.5)]
    elif arch == "flatten":
        layers += [stax.Flatten(), stax.Dense(1, W_std=(2 * height * width / q**2) ** 0.5)]
    else:
        raise ValueError(f"arch must be 'fc', 'flatten' or 'gap', got {arch!r}")
    return stax.serial(*layers)[2]


def _to_nt(x):
    # ntkcheck's images are NCHW, neural-tangents' NHWC
    return x if x.ndim == 2 else x.transpose(0, 2, 3, 1)


def kernels(arch: str, depth: int, src: str, dst: str, filter_size: int = 3) -> None:
    jax, nt = _import_neural_tangents()
    jax.config.update("jax_enable_x64", True)
    got = np.load(src)
    x1, x2 = _to_nt(got["x1"]).astype(np.float64), _to_nt(got["x2"]).astype(np.float64)
    fn = kernel_fn(nt.stax, arch, depth, x1.shape[1:], filter_size)
    ntk, nngp = fn(x1, x2, ("ntk", "nngp"))
    np.savez(dst, ntk=np.asarray(ntk), nngp=np.asarray(nngp),
             jax=jax.__version__, neural_tangents=nt.__version__,
             backend=jax.default_backend())


def timing(arch: str, depth: int, n1: int, n2: int, repeats: int = 3) -> dict:
    """Wall seconds of ``repeats`` calls of the jitted float32 NTK of n1 x n2 random
    32x32x3 images (or 3,072-vectors for fc), after a warm-up call that compiles it."""
    jax, nt = _import_neural_tangents()
    shape = (3072,) if arch == "fc" else (32, 32, 3)
    fn = jax.jit(kernel_fn(nt.stax, arch, depth, shape), static_argnames="get")
    rng = np.random.default_rng(0)
    x1 = jax.numpy.asarray(rng.standard_normal((n1, *shape)), jax.numpy.float32)
    x2 = jax.numpy.asarray(rng.standard_normal((n2, *shape)), jax.numpy.float32)
    fn(x1, x2, "ntk").block_until_ready()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x1, x2, "ntk").block_until_ready()
        runs.append(time.perf_counter() - start)
    return {"runs": runs, "pairs": n1 * n2, "jax": jax.__version__,
            "neural_tangents": nt.__version__, "backend": jax.default_backend(),
            "jax_device": str(jax.devices()[0])}


def main(argv: list[str]) -> None:
    if len(argv) in (5, 6) and argv[0] == "kernel":
        kernels(argv[1], int(argv[2]), argv[3], argv[4], *map(int, argv[5:]))
    elif len(argv) == 5 and argv[0] == "time":
        print(json.dumps(timing(argv[1], int(argv[2]), int(argv[3]), int(argv[4]))))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
