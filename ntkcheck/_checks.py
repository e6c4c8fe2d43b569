"""Argument checks that fail early with a message naming the argument and the expectation."""

from __future__ import annotations

from collections.abc import Iterable

import torch

FLOAT_DTYPES = (torch.float32, torch.float64)


def check_int(name: str, value: object, minimum: int, why: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int; got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}{why}; got {value}")
    return value


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False; got {value!r}")
    return value


def check_depths(depths: int | Iterable[int], minimum: int, maximum: int) -> frozenset[int]:
    """The set of depths to read out of one pass: each in [minimum, maximum]."""
    try:
        chosen = (depths,) if isinstance(depths, int) else tuple(depths)
    except TypeError:
        raise TypeError(f"depths must be a sequence of ints; got {depths!r}") from None
    if not chosen:
        raise ValueError("depths must name at least one depth; got an empty sequence")
    for d in chosen:
        if isinstance(d, bool) or not isinstance(d, int) or not minimum <= d <= maximum:
            raise ValueError(
                f"depths must be ints in [{minimum}, {maximum}] (from the minimum depth to "
                f"this architecture's depth {maximum}); got {depths!r}"
            )
    return frozenset(chosen)


def check_inputs(
    x1: object, x2: object, rank: int, layout: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x1 (and x2 unless None): finite float32/float64 tensors of rank ``rank`` whose
    trailing dims, dtype and device agree.  ``layout`` names the dims, e.g. "(n, d)"."""
    given: dict[str, torch.Tensor] = {}
    for name, x in (("x1", x1), ("x2", x2)):
        if name == "x2" and x is None:
            continue
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"{name} must be a torch.Tensor of shape {layout}; got {type(x).__name__} "
                "(convert with torch.as_tensor)"
            )
        given[name] = x
        if x.dim() != rank:
            raise ValueError(f"{name} must have shape {layout}; got shape {tuple(x.shape)}")
        if x.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"{name} must have dtype float32 or float64; got {x.dtype} "
                "(convert with .float() or .double())"
            )
        if any(s == 0 for s in x.shape[1:]):
            raise ValueError(f"{name} must have non-empty {layout} dims; got {tuple(x.shape)}")
    if "x2" in given:
        a, b = given["x1"], given["x2"]
        if a.shape[1:] != b.shape[1:]:
            raise ValueError(
                f"x1 and x2 must agree in every dim of {layout} but n; got shapes "
                f"{tuple(a.shape)} and {tuple(b.shape)}"
            )
        if a.device != b.device:
            raise ValueError(f"x1 is on {a.device} but x2 is on {b.device}; use one device")
        if a.dtype != b.dtype:
            raise TypeError(f"x1 is {a.dtype} but x2 is {b.dtype}; use one dtype")
    for name, x in given.items():
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise ValueError(f"{name} contains NaN or inf ({bad} of {x.numel()} entries)")
    return given["x1"], given.get("x2")
