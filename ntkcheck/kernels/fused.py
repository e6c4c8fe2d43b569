"""The fused GPU backend of the CNN kernels: when it applies, and how pairs are launched.

The Triton program (``triton_cntk.py``) runs the whole recursion of one displacement slice
of one image pair on-chip; this module feeds it tiles of pairs, reduces its per-slice
readouts (in float64) into the kernel matrices, and reuses the reference's tiling, so a
Gram matrix computes only pairs on or above its diagonal.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import warnings
from typing import Any, NamedTuple

import torch

from .recursion import Kernels, image_stds, tiled
from .relu import SNAP_ULPS
from .rules import ConvSamePosition

MAX_SIDE = 64
"""Largest image side of the fused kernel: a slice is held in registers (and tl.dot needs
sides of at least 16, so smaller images are padded to 16)."""

NUM_WARPS = 2
"""Warps per program.  For a 32x32 slice the compiled loop of an earlier version counted 109
instructions per entry and layer at 2 warps, 196 at 4 (dot operands replicated across
warps); 1 spills.  The image sides are compile-time constants (a kernel per image size)."""

NUM_STAGES = 2
"""Software-pipelining depth of the layer loop: the std windows of the next layer are
fetched into shared memory during this one.  2 needs 12 KB of shared memory per program
(sm_90, 32x32 GAP); an earlier kernel, whose loop ran two layers a turn, needed 20 KB at 2
stages and 36 KB at Triton's default 3, and timed 33.7 against 36.0 us/pair (H200, depth
11, 2 against 3).  1 (no prefetch) stalls on every layer's loads."""

UNROLLED_READOUTS = 4
"""At most this many requested depths between 2 and the deepest are read out by layers of
their own, unrolled, with the layers between them in loops that read out nothing (Table 1's
3, 4, 6 and 11 in a depth-21 pass: 47.3 loop instructions per entry and layer on sm_90,
like depth 21 alone's 46.25, in 8,100 instructions of machine code).  More, and the layers
between the first and the last run in one loop that sums both fields at every layer and
stores the requested sums (52.4, +13%, in 3,100 instructions): every depth 3..21 unrolled
would be 18,000 instructions, 290 KB, straight-line code far beyond an SM's instruction
caches (the ncu profile of a 24 KB loop body already showed instruction-fetch stalls).
Neither way timed yet; the benchmark times the Table 1 pass both ways."""

MAX_REGISTERS: int | None = 96
"""Registers per thread the kernel of the default fp16 split (``PRECISION`` 3) may take on
images of up to 32x32 (Triton's maxnreg; None: the compiler's choice, which the other
precisions always get, as do larger images, whose slices hold up to four times as many
entries per thread: capped at 96, 64x64 would make 1,789 local-memory loads a layer,
against 346).  An SM's 64K registers hold ten 2-warp programs at 96, eight at 128 (the
compiler's choice for one depth under Triton 3.6 for sm_90, with the stds by TMA; 136
through pointers), so the cap buys a quarter more warps to hide latencies with, for 1.4%
more loop instructions and no spill inside the loop (depth 11 or 21 alone, TMA; a Table 1
pass, or pointers on sm_90, reload 2 values a layer from local memory; pointers on sm_80
spill nothing in the loop, for 4% more instructions).  At 96 the tf32 split would spill 4
values per entry and layer.  Chosen from the machine code alone (``benchmarks/cntk_sass.py``)
under Triton 3.6, what the H200 runs had; 3.5, 3.7 and 3.8 spill nothing in the loop at 96
either, 3.4 and 3.9 do (1.2 and 0.8 local loads per entry and layer; 3.9 spills at any cap
below its own choice of 130).  The benchmark times 128, 112, 88 and the compiler's choice
as variants, and records the registers and local memory of what it timed."""

PRECISION = 3
"""Patch-sum precision: 3 = fp16 hi/lo split (default), 2 = tf32 hi/lo split (same error,
twice the tensor-core instructions), 1 = plain tf32 (~1e-3 relative error), 0 = exact
float32 products on the CUDA cores (slow); see ``triton_cntk``."""

STD_LOADS = "auto"
"""How the kernel reads the per-image std planes each layer: "tma" (tensor descriptors: one
tensor-memory-access copy of the window per layer, no per-entry addresses; 46 instructions
per entry and layer and 128 registers on sm_90, against 50 and 167), "pointers" (a 64-bit
address per entry and layer; the faster way before sm_90, where Triton emulates descriptor
loads with bounds checks and spills: 77 instructions on sm_80), or "auto": TMA on compute
capability 9.0 and later, and under the interpreter (of Triton 3.6 and later)."""

TMA_FAILURE: str | None = None
"""Why the TMA variant failed to compile in this process (then "auto" reads the std planes
through pointers from there on, having warned once), or None.  It compiles for sm_90 under
Triton 3.4 to 3.9 on a CPU (``benchmarks/cntk_sass.py``; in CI,
``tests/kernels/test_fused_compiles.py``), and compiled and ran on an H200 under Triton 3.6
(driver 580): a Triton or driver that rejects it costs speed, never a result."""

PROGRAMS_PER_LAUNCH = 2**18
"""Programs (pair x slice) per launch: enough to fill a GPU many times over."""


MIN_TRITON = (3, 4)
"""Oldest Triton the kernel compiles with (host-side tensor descriptors; 3.3 also rejects
its constexpr tuples): the CUDA builds of torch 2.8 and later ship it.  3.4, 3.5, 3.6,
3.7, 3.8 and 3.9 all compile both load paths for sm_90 and pass the interpreter tests."""

INTERPRETER_TMA = (3, 6)
"""Oldest Triton whose interpreter runs tensor descriptors of float32 planes (3.4 and 3.5
check their strides in elements where the hardware wants bytes, so "auto" reads the std
planes through pointers under their interpreters)."""


@functools.cache
def triton_version() -> tuple[int, int] | None:
    """(major, minor) of the installed Triton, or None if there is none."""
    if importlib.util.find_spec("triton") is None:
        return None
    import triton

    major, minor = re.match(r"(\d+)\.(\d+)", triton.__version__).groups()  # type: ignore[union-attr]
    return int(major), int(minor)


def interpreting() -> bool:
    """True under TRITON_INTERPRET=1, where Triton runs kernels on the CPU (slowly)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def unsupported_reason(x: torch.Tensor) -> str | None:
    """Why the fused kernel cannot take these (n, C, H, W) inputs, or None if it can."""
    version = triton_version()
    if version is None:
        return "triton is not installed (it comes with the CUDA builds of torch)"
    if version < MIN_TRITON:
        return (f"triton {version[0]}.{version[1]} is installed; the fused kernel needs "
                f"{MIN_TRITON[0]}.{MIN_TRITON[1]} or later (CUDA builds of torch 2.8+ ship it)")
    if not (x.is_cuda or interpreting()):
        return (f"the inputs are on {x.device.type}; it runs on CUDA tensors "
                "(or anywhere under TRITON_INTERPRET=1)")
    if x.dtype != torch.float32:
        return f"it computes in float32; the inputs are {x.dtype}"
    if max(x.shape[-2:]) > MAX_SIDE:
        return (f"images larger than {MAX_SIDE}x{MAX_SIDE} are not supported; "
                f"got {tuple(x.shape[-2:])}")
    return None


def _use_tma(device: torch.device) -> bool:
    if STD_LOADS != "auto":
        return STD_LOADS == "tma"
    if TMA_FAILURE is not None:
        return False
    if interpreting():
        return triton_version() >= INTERPRETER_TMA  # type: ignore[operator]
    return torch.cuda.get_device_capability(device) >= (9, 0)


def _block(side: int) -> int:
    return max(16, 1 << (side - 1).bit_length())


def _capped(side_p: int, side_q: int) -> bool:
    """Whether ``MAX_REGISTERS`` applies to images of this size (see there)."""
    return PRECISION == 3 and MAX_REGISTERS is not None and \
        _block(side_p) * _block(side_q) <= 32 * 32


def _kernel_inputs(
    x: torch.Tensor, stds: torch.Tensor, extended: bool, copies: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x', stds', scales) as ``triton_cntk.cntk_slices`` takes them, from the images ``x``
    and their float64 stds (n, activations, P, Q): each image times the power of two
    ``scales`` that puts its largest std (over positions and layers) in [1/2, 1), and its
    stds likewise, stored in float32 as (copies, n, activations, R, S') planes, copy c
    shifted left by c columns, rows padded to S' (a multiple of 4: TMA wants strides and
    window starts on 16 bytes).  With ``extended``, every plane (and image) is repeated
    twice along both axes, R x S = 2P x 2Q; else R x S = P x Q.

    The kernels are bilinear in the two images, so the readouts of a pair come back
    divided by both scales, exactly (powers of two); in between, every field of the
    recursion stays below 2^16, as fp16 products need (its NNGP entries are within the
    product of two stds, Cauchy-Schwarz, and each NTK layer adds at most one NNGP's worth).
    A zero image keeps scale 1."""
    _, exponent = torch.frexp(stds.amax(dim=(1, 2, 3)))  # largest = m 2^e, m in [1/2, 1)
    scales = torch.ldexp(torch.ones_like(exponent, dtype=torch.float64), -exponent)
    stds = (stds * scales[:, None, None, None]).to(torch.float32)
    x = x * scales.to(x.dtype)[:, None, None, None]
    if extended:
        x, stds = x.repeat(1, 1, 2, 2), stds.repeat(1, 1, 2, 2)
    width = stds.shape[-1]
    planes = stds.new_zeros(copies, *stds.shape[:-1], -(-width // 4) * 4)
    for shift in range(copies):
        planes[shift, ..., :width - shift] = stds[..., shift:]
    return x.contiguous(), planes, scales


class Launch(NamedTuple):
    """What ``triton_cntk.cntk_slices`` takes besides the pairs and the output: scaled
    images, std planes (tensor descriptors if ``tma``) and their scales, and options."""

    x1: torch.Tensor
    x2: torch.Tensor
    std1: Any
    std2: Any
    std_plane: int
    scale1: torch.Tensor
    scale2: torch.Tensor
    options: dict[str, Any]

    def args(self, rows: torch.Tensor, cols: torch.Tensor, out: torch.Tensor) -> tuple:
        tiny = torch.finfo(torch.float32).tiny
        snap = SNAP_ULPS * torch.finfo(torch.float32).eps
        return (self.x1, self.x2, self.std1, self.std2, rows, cols, out, self.std_plane,
                tiny, snap)

    @property
    def slices(self) -> int:
        """Programs per pair: every displacement slice for GAP, the trace's alone else."""
        o = self.options
        return o["P"] * o["Q"] if o["EXTENDED"] else 1

    def run(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """One launch for the pairs (rows[i], cols[i]) (int32 image indices): each pair's
        readouts per slice, (pairs, slices, 2, DEEPEST + 1), still scaled."""
        from . import triton_cntk  # triton is optional

        o = self.options
        out = torch.empty(rows.numel(), self.slices, 2, o["DEEPEST"] + 1, device=rows.device)
        triton_cntk.cntk_slices[(rows.numel(), self.slices)](*self.args(rows, cols, out), **o)
        return out


def launch_for(
    x1: torch.Tensor, x2: torch.Tensor | None, depths: frozenset[int], *, filter_size: int,
    gap: bool, fix_first_last: bool, tma: bool,
) -> Launch:
    """The kernel's inputs and options for the pairs of ``x1`` and ``x2`` (None: a Gram
    matrix, both sides x1's), reading the stds by TMA or through pointers."""
    from triton.tools.tensor_descriptor import TensorDescriptor  # triton is optional

    rules = ConvSamePosition(filter_size)  # its per-image rule serves both readouts
    deepest = max(depths)
    copies = 4 if tma and gap else 1  # a GAP slice shifts std2 by any number of columns
    # both sides' stds in one recursion (each image's are its own): its ~350 small torch
    # operations launch once instead of twice
    both = x1 if x2 is None else torch.cat([x1, x2])
    stds = torch.stack(image_stds(rules, both.double(), deepest - 1), dim=1)
    n1 = x1.shape[0]
    x1c, std1, scale1 = _kernel_inputs(x1, stds[:n1], gap, copies if x2 is None else 1)
    zc, std2, scale2 = ((x1c, std1, scale1) if x2 is None
                        else _kernel_inputs(x2, stds[n1:], gap, copies))
    std_plane = std1.stride(2)
    channels, side_p, side_q = x1.shape[1:]
    if tma:
        width = x1c.shape[-1]
        block = [1, 1, 1, _block(side_p), _block(side_q)]
        std1, std2 = (TensorDescriptor.from_tensor(s[..., :width], block) for s in (std1, std2))
    options = dict(
        P=side_p, Q=side_q, EXTENDED=gap, CHANNELS=channels, RADIUS=rules.radius,
        SCALE=rules.scale, DEEPEST=deepest, DEPTH_MASK=sum(1 << d for d in depths),
        FIX_FIRST_LAST=fix_first_last, SYMMETRIC=x2 is None, PRECISION=PRECISION, TMA=tma,
        BP=_block(side_p), BQ=_block(side_q),
        SUM_EVERY_LAYER=sum(2 < d < deepest for d in depths) > UNROLLED_READOUTS,
        num_warps=NUM_WARPS, num_stages=NUM_STAGES,
        **({"maxnreg": MAX_REGISTERS} if _capped(side_p, side_q) else {}),
    )
    return Launch(x1c, zc, std1, std2, std_plane, scale1, scale2, options)


def compiled(launch: Launch) -> Any:
    """The kernel compiled for ``launch`` on the current device (Triton's CompiledKernel;
    its ``asm`` holds the machine code), launching nothing."""
    from . import triton_cntk

    index = torch.zeros(1, dtype=torch.int32, device=launch.x1.device)
    args = launch.args(index, index, launch.x1.new_empty(1))
    return triton_cntk.cntk_slices.warmup(*args, grid=(1, 1), **launch.options)


def compile_error(launch: Launch) -> str | None:
    """What compiling the kernel for ``launch`` on the current device raised, or None
    (also under the interpreter, which compiles nothing)."""
    if interpreting():
        return None
    try:
        compiled(launch)
    except Exception as error:  # noqa: BLE001 -- any compile failure; the caller says so
        return f"{type(error).__name__}: {error}"
    return None


def _tma_compiles(launch: Launch) -> bool:
    """Whether ``launch`` (with TMA loads) compiles; if not, say why (a warning, and
    ``TMA_FAILURE``), once per process."""
    global TMA_FAILURE
    TMA_FAILURE = compile_error(launch)
    if TMA_FAILURE is not None:
        warnings.warn(f"ntkcheck: the fused kernel's TMA loads did not compile "
                      f"({TMA_FAILURE[:500]}); reading the std planes through pointers",
                      stacklevel=7)
    return TMA_FAILURE is None


def fused_kernels(
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    depths: frozenset[int],
    *,
    filter_size: int,
    gap: bool,
    fix_first_last: bool,
    max_memory: int,
    progress: bool,
) -> dict[int, Kernels]:
    """CNN NTK and NNGP of every depth in ``depths`` (each >= 2) with the fused kernel.

    Same meaning as ``recursion.kernels``; ``max_memory`` bounds the per-slice readout
    buffer of a launch.  With ``STD_LOADS = "auto"``, a TMA variant that does not compile
    falls back to pointer loads with a warning (``TMA_FAILURE``).
    """
    prepare = functools.partial(launch_for, x1, x2, depths, filter_size=filter_size, gap=gap,
                                fix_first_last=fix_first_last)
    tma = _use_tma(x1.device)
    launch = prepare(tma=tma)
    if tma and STD_LOADS == "auto" and not _tma_compiles(launch):
        launch = prepare(tma=False)
    symmetric = x2 is None
    z = x1 if x2 is None else x2
    deepest = max(depths)
    side_p, side_q = x1.shape[-2:]
    slices = launch.slices
    mean = float(side_p * side_q) ** 2 if gap else 1.0
    slot_bytes = slices * 2 * (deepest + 1) * 4
    pairs = max(1, min(PROGRAMS_PER_LAUNCH // slices, max_memory // slot_bytes))
    device = x1.device

    def tile(rows: slice, cols: slice) -> dict[int, Kernels]:
        # The tile's pairs (a Gram's on or above the diagonal only), found without a mask:
        # a boolean index would wait for the GPU (to count), so the next launch could not
        # queue behind this one and the GPU would idle while Python prepares it.
        shape = len(range(x1.shape[0])[rows]), len(range(z.shape[0])[cols])
        lowest = rows.start - cols.start if symmetric else -shape[0]  # least col - row kept
        i, j = torch.triu_indices(*shape, offset=lowest, device=device)
        ia, ib = i + rows.start, j + cols.start
        buf = launch.run(ia.to(torch.int32), ib.to(torch.int32))
        unscale = mean * launch.scale1[ia] * launch.scale2[ib]
        sums = buf.sum(1, dtype=torch.float64) / unscale[:, None, None]  # (pairs, 2, deepest+1)
        found = {}
        for d in depths:
            ntk = x1.new_zeros(shape)
            nngp = x1.new_zeros(shape)
            ntk[i, j] = sums[:, 0, d].to(x1.dtype)
            nngp[i, j] = sums[:, 1, d].to(x1.dtype)
            found[d] = Kernels(ntk, nngp)
        return found

    return tiled(x1, x2, depths, pairs, tile, progress)
