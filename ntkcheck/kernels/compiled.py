"""The "compiled" backend: the torch recursion with each layer's activation compiled.

A layer's activation (``recursion.activation``: the stds' outer product, the ReLU dual,
K-dot * Theta) is some fifteen elementwise passes over every entry of a tile, two of them
transcendental; eager torch makes each pass a trip through memory, while torch.compile
fuses them into one loop (on the CPU, inductor's C++ with OpenMP).  It compiles the same
Python function the reference runs, so the two differ only by rounding (1e-15 relative in
float64; in float32 by the vectorized arccos and sine: tested below 1e-5).  The patch sums
and readouts stay eager (compiled, the patch sum's shifted in-place adds ran over 100x
slower).  On the 2-core CPU of ``benchmarks/cpu_kernels.py``: 1.7-2.2x faster for GAP,
1.0-1.7x for flatten, 1.1-1.5x for FC.

Compiling takes a few seconds, once per process and kind of tile (rank, dtype; inductor
also caches on disk), so "auto" compiles only CPU jobs of at least ``MIN_WORK``
entry-layers.  It needs a working C++ compiler: where torch.compile fails, "auto" warns
once and computes with the reference from then on (``COMPILE_FAILURE`` says why), while
``backend="compiled"`` raises.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator

import torch

from .recursion import Activation, Rules, activation, pair_count

MIN_WORK = 2**30
"""Entry-layers (pairs x field entries x activations) from which "auto" compiles a CPU
job: ~20 s of the reference in float64 on the 2-core machine of the benchmarks, against
about 10 s compiled, plus 1-6 s to compile."""

COMPILE_FAILURE: str | None = None
"""Why torch.compile failed in this process (then "auto" uses the reference), or None."""


RECOMPILES = 64
"""Compiled variants of ``activation`` allowed per process (torch's default is 8): one per
kind of tile (rank, dtype, filter size, device; a tile shape other than the first makes its
dims dynamic).  Past the limit torch would quietly run the uncompiled code."""


@functools.cache
def _compiled() -> Activation:
    return torch.compile(activation)  # type: ignore[return-value]


def _enough_recompiles() -> contextlib.AbstractContextManager[None]:
    import torch._dynamo.config  # here, not at the top: importing it takes seconds

    limit = max(torch._dynamo.config.recompile_limit, RECOMPILES)
    return torch._dynamo.config.patch(recompile_limit=limit)


def worth_compiling(rules: Rules, x1: torch.Tensor, x2: torch.Tensor | None,
                    depths: frozenset[int]) -> bool:
    """Whether "auto" compiles this job: on the CPU, at least ``MIN_WORK`` entry-layers,
    unless compiling already failed in this process."""
    pairs = pair_count(x1.shape[0], (x1 if x2 is None else x2).shape[0], x2 is None)
    work = pairs * rules.field_numel(tuple(x1.shape)) * (max(depths) - 1)
    return x1.device.type == "cpu" and COMPILE_FAILURE is None and work >= MIN_WORK


def _failed() -> RuntimeError:
    return RuntimeError(f"backend='compiled': torch.compile failed in this process "
                        f"({COMPILE_FAILURE}); backend='torch' computes without compiling")


def _compile_failed(error: Exception, insist: bool) -> None:
    """Record why compiling failed; raise (``insist``) or warn, once per process."""
    global COMPILE_FAILURE
    COMPILE_FAILURE = (str(error).strip().splitlines() or [repr(error)])[0][:500]
    if insist:
        raise _failed() from error
    warnings.warn(f"ntkcheck: torch.compile failed ({COMPILE_FAILURE}); computing with the "
                  "uncompiled torch reference", stacklevel=3)


@contextlib.contextmanager
def compiled_activation(insist: bool) -> Iterator[Activation]:
    """``activation`` compiled by torch.compile, for the kernel computation inside the
    ``with`` (torch's recompile limit is raised once around all of it, not per tile).  If
    compiling fails: with ``insist`` a RuntimeError that says why, else one warning and the
    uncompiled ``activation``."""
    compiled: Activation | None = None
    room: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if COMPILE_FAILURE is None:
        try:
            compiled, room = _compiled(), _enough_recompiles()
        except Exception as error:  # torch.compile does not run here (e.g. this Python)
            _compile_failed(error, insist)
    elif insist:
        raise _failed()

    def step(rules: Rules, sigma: torch.Tensor, theta: torch.Tensor | None, std1: torch.Tensor,
             std2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if compiled is not None and COMPILE_FAILURE is None:
            try:
                return compiled(rules, sigma, theta, std1, std2)
            except Exception as error:
                from torch._dynamo.exc import TorchDynamoException  # loaded by now

                if not isinstance(error, TorchDynamoException):  # not compiling's fault
                    raise
                _compile_failed(error, insist)
        return activation(rules, sigma, theta, std1, std2)

    with room:
        yield step
