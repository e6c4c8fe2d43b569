"""Microseconds per image pair of the exact CNTK on one GPU: the fused Triton kernel, the
torch reference on the same GPU, and neural-tangents when its wheel runs there.

32x32x3 CIFAR-10 test images (the exact-pixel subset, standardized as the paper), float32.
CNTK-GAP with the first and last layer fixed (the paper's setting) and CNTK-V (flatten),
cross matrices of n1 x n2 pairs; each row is the median of REPEATS timed runs after a
warm-up (compilation excluded), timed end to end (per-image stds and readout sums included).

    python benchmarks/cntk_gpu.py [--out FILE] [--data-root DIR] [--flatten-n N] [--skip-nt]
                                  [--nt-seconds S] [--sustained-seconds S]

writes benchmarks/results/cntk_gpu.json (or FILE): {"device", "versions", "rows": [...],
"accuracy": [...], "flatten_all_depths": {...}, "tma_failure"},
rewritten after every case; a case that raises is recorded with its "error" and the run
goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import ntkcheck as nc
from ntkcheck.kernels import fused
from ntkcheck.studies.table1 import DEPTHS as TABLE1_DEPTHS

RESULTS = Path(__file__).resolve().parent / "results"
REPEATS = 3
IMAGE = "32x32x3"
IMAGES = 256  # CIFAR-10 test images timed (a Table 1 tile's side)


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "torch": torch.__version__,
             "cuda": str(torch.version.cuda), "ntkcheck": nc.__version__}
    try:
        import triton
        found["triton"] = triton.__version__
    except ImportError:
        pass
    return found


def cifar(n: int, root: str | None) -> torch.Tensor:
    images, _ = nc.data.cifar10_exact("test", n, root)
    reference, _ = nc.data.cifar10_exact("train", None, root)
    return nc.data.standardize(images, reference, torch.float32).cuda()


def seconds_of(fn) -> float:
    """Wall-clock seconds of one call of ``fn``, the GPU's queue drained before and after."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def seconds(fn) -> float:
    return float(np.median([seconds_of(fn) for _ in range(REPEATS)]))


def arch_for(pooling: str, depth: int) -> nc.CNN:
    return nc.CNN(depth=depth, pooling=pooling, fix_first_last=pooling == "gap")


def row(impl: str, pooling: str, depth: int, x1, x2, backend: str,
        depths: tuple[int, ...] | None = None, **extra) -> dict:
    """One timed case; ``depths``: the readouts of all of them from one pass (``depth`` the
    deepest), else ``depth``'s alone."""
    arch = arch_for(pooling, depth)
    arch.ntk(x1[:1], x2[:2], depths=depths, backend=backend)  # compile / warm up
    s = seconds(lambda: arch.ntk(x1, x2, depths=depths, backend=backend))
    if backend == "triton":
        # a failure here must not cost the row its timing
        extra["machine_code"] = guarded({}, machine_code, arch, x1, x2, depths or (depth,))
    return record(impl, pooling, depth, len(x1) * len(x2), s, x1.dtype, depths, **extra)


def machine_code(arch: nc.CNN, x1: torch.Tensor, x2: torch.Tensor,
                 depths: tuple[int, ...]) -> dict[str, int]:
    """Registers per thread and local memory (4-byte words, Triton's "n_spills") of the
    fused kernel as this GPU's Triton compiled it for the case (cntk_sass.py counts machine
    code on a CPU, perhaps under another Triton)."""
    launch = fused.launch_for(x1[:1], x2[:1], frozenset(depths), filter_size=arch.filter_size,
                              gap=arch.pooling == "gap", fix_first_last=arch.fix_first_last,
                              tma=fused._use_tma(x1.device))
    kernel = fused.compiled(launch)
    kernel._init_handles()  # loads the binary, which reports both
    return {"registers": kernel.n_regs, "local_words": kernel.n_spills}


def record(impl: str, pooling: str, depth: int, pairs: int, seconds_per_call: float,
           dtype: torch.dtype, depths: tuple[int, ...] | None, **extra) -> dict:
    """A row of the results (printed too): ``pairs`` per call in ``seconds_per_call``."""
    out = {"impl": impl, "device": torch.cuda.get_device_name(), "image": IMAGE,
           "pooling": pooling, "fix_first_last": pooling == "gap", "depth": depth,
           "us_per_pair": round(seconds_per_call / pairs * 1e6, 3), "pairs": pairs,
           "dtype": str(dtype)[6:], **({} if depths is None else {"depths": list(depths)}),
           "versions": versions(), **extra}
    print(json.dumps({k: v for k, v in out.items() if k != "versions"}), flush=True)
    return out


@contextlib.contextmanager
def variant(**options: int | str):
    """Run the fused kernel with other launch options, named as fused's module constants in
    lower case (precision=, num_warps=, num_stages=, std_loads=, max_registers=,
    unrolled_readouts=); restored after."""
    saved = {name: getattr(fused, name.upper()) for name in options}
    for name, value in options.items():
        setattr(fused, name.upper(), value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(fused, name.upper(), value)


def launch_options() -> dict[str, int | str]:
    return {"precision": fused.PRECISION, "num_warps": fused.NUM_WARPS,
            "num_stages": fused.NUM_STAGES, "std_loads": fused.STD_LOADS,
            "max_registers": fused.MAX_REGISTERS, "unrolled_readouts": fused.UNROLLED_READOUTS}


def accuracy(x: torch.Tensor) -> list[dict]:
    """float32 fused against the float64 torch reference on the GPU, all depths in one pass."""
    found = []
    x1, x2 = x[:4], x[4:12]
    for pooling in ("gap", "flatten"):
        for precision in (3, 2, 1):
            arch = arch_for(pooling, 21)
            depths = frozenset((3, 4, 6, 11, 21))
            want = arch._kernels(x1.double(), x2.double(), depths, backend="torch")
            with variant(precision=precision):
                got = arch._kernels(x1, x2, depths, backend="triton")
            for d in sorted(depths):
                for name in ("ntk", "nngp"):
                    g, w = getattr(got[d], name).double(), getattr(want[d], name)
                    found.append({"pooling": pooling, "precision": precision, "depth": d,
                                  "kernel": name, "pairs": w.numel(),
                                  "rel_error_max": float((g - w).abs().max() / w.abs().max()),
                                  "rel_error_entry_max": float(((g - w).abs() / w.abs()).max()),
                                  "nan": bool(torch.isnan(g).any())})
    for a in found:
        print(json.dumps(a), flush=True)
    return found


def kernel_only(x1: torch.Tensor, x2: torch.Tensor, depth: int, launches: int = 8) -> dict:
    """The fused kernel's launches alone, without what a call does around them (the stds in
    float64, the scaling, the readout sums, ~2,600 small torch operations a call): CNTK-GAP
    with the first and last layer fixed, one launch of all pairs of ``x1`` and ``x2`` (as a
    call's launches are, 16 x 16 pairs), repeated ``launches`` times."""
    launch = fused.launch_for(x1, x2, frozenset((depth,)), filter_size=3, gap=True,
                              fix_first_last=True, tma=fused._use_tma(x1.device))
    a, b = torch.meshgrid(torch.arange(len(x1), device=x1.device),
                          torch.arange(len(x2), device=x1.device), indexing="ij")
    rows, cols = a.flatten().to(torch.int32), b.flatten().to(torch.int32)

    def run() -> None:
        for _ in range(launches):
            launch.run(rows, cols)

    launch.run(rows, cols)  # compiles
    s = seconds(run) / launches
    return record("triton-kernel", "gap", depth, len(rows), s, x1.dtype, None,
                  variant=launch_options())


def sm_clock() -> str | None:
    """The GPU's SM clock now, as nvidia-smi reads it ("1980 MHz"), or None."""
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=clocks.sm", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None


def sustained(x1: torch.Tensor, x2: torch.Tensor, seconds: float,
              depths: tuple[int, ...] = TABLE1_DEPTHS) -> dict:
    """CNTK-GAP with ``depths`` read out in one pass (Table 1's), called back to back for
    ``seconds`` on a 256 x 256 tile, as a Table 1 column runs for minutes (its tiles are 256
    images a side): the median call's us/pair, the first's and the last's, and the SM clock
    before and after.  A GPU that slows under sustained load shows here, not in short
    calls."""
    arch = arch_for("gap", max(depths))
    arch.ntk(x1[:1], x2[:2], depths=depths, backend="triton")
    clock_before, runs = sm_clock(), []
    start = time.perf_counter()
    while not runs or time.perf_counter() - start < seconds:
        runs.append(seconds_of(lambda: arch.ntk(x1, x2, depths=depths, backend="triton")))
    pairs = len(x1) * len(x2)
    return record("triton", "gap", max(depths), pairs, float(np.median(runs)), x1.dtype, depths,
                  variant=launch_options(), sustained={
                      "calls": len(runs), "seconds": round(sum(runs), 1),
                      "us_per_pair_first": round(runs[0] / pairs * 1e6, 3),
                      "us_per_pair_last": round(runs[-1] / pairs * 1e6, 3),
                      "sm_clock_before": clock_before, "sm_clock_after": sm_clock()})


def flatten_all_depths(x: torch.Tensor, n: int) -> dict:
    """One pass for depths 3..21 of an n x n CNTK-V Gram, extrapolated to CIFAR-10's
    50k x 50k train Gram plus 10k x 50k test matrix (1.75e9 pairs)."""
    arch = nc.CNN(depth=21, pooling="flatten")
    xs = x.repeat((n + len(x) - 1) // len(x), 1, 1, 1)[:n]
    xs = xs + 0.01 * torch.randn_like(xs)  # distinct images
    depths = range(3, 22)
    arch.ntk(xs[:2], depths=depths)
    torch.cuda.synchronize()
    start = time.perf_counter()
    arch._kernels(xs, None, frozenset(depths), backend="triton")
    torch.cuda.synchronize()
    s = time.perf_counter() - start
    pairs = n * (n + 1) // 2
    cifar_pairs = 50_000 * 50_001 // 2 + 10_000 * 50_000
    out = {"n": n, "pairs": pairs, "depths": list(depths), "seconds": round(s, 2),
           "us_per_pair": round(s / pairs * 1e6, 4),
           "cifar10_full_pairs": cifar_pairs,
           "cifar10_full_seconds_at_this_rate": round(s / pairs * cifar_pairs, 1)}
    print(json.dumps(out), flush=True)
    return out


def neural_tangents(depth: int, n1: int, n2: int, seconds: float) -> dict:
    """neural-tangents' GAP NTK on the GPU through nt_kernel.py (jax beside torch there),
    given at most ``seconds`` (jax's compilation included)."""
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("nt_kernel.py")),
                           "time", "gap", str(depth), str(n1), str(n2)],
                          capture_output=True, text=True, env=env, timeout=seconds)
    if done.returncode != 0:
        # the traceback's end, not just its last line: "AssertionError" alone said nothing
        reason = "\n".join(done.stderr.strip().splitlines()[-12:]) or "no output"
        print(f"neural-tangents depth {depth}: failed: {reason}", flush=True)
        return {"impl": "neural-tangents", "depth": depth, "error": reason}
    got = json.loads(done.stdout.strip().splitlines()[-1])
    out = {"impl": "neural-tangents", "device": torch.cuda.get_device_name(), "image": IMAGE,
           "pooling": "gap", "fix_first_last": False, "depth": depth,
           "us_per_pair": round(float(np.median(got["runs"])) / got["pairs"] * 1e6, 3),
           "pairs": got["pairs"], "dtype": "float32", "jax_device": got["jax_device"],
           "versions": {k: got[k] for k in ("jax", "neural_tangents")}}
    print(json.dumps(out), flush=True)
    return out


def guarded(case: dict, fn, *args, **kwargs):
    """fn(*args, **kwargs), or ``case`` with the error it raised: on a device lent for
    minutes, one failing case (a compile error, a kernel that faults) must not cost the
    figures of the others."""
    try:
        return fn(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 -- recorded in the results, not hidden
        found = {**case, "error": f"{type(error).__name__}: {error}"[:1000]}
        print(json.dumps(found), flush=True)
        return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(RESULTS / "cntk_gpu.json"))
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--flatten-n", type=int, default=8192,
                        help="Gram size of the all-depths CNTK-V pass")
    parser.add_argument("--skip-nt", action="store_true", help="skip neural-tangents")
    parser.add_argument("--nt-seconds", type=float, default=240,
                        help="time limit of each neural-tangents depth, compilation included")
    parser.add_argument("--sustained-seconds", type=float, default=25,
                        help="how long CNTK-GAP runs back to back for the sustained rate")
    args = parser.parse_args()
    x = cifar(IMAGES, args.data_root)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result: dict = {"benchmark": "cntk_gpu", "device": torch.cuda.get_device_name(),
                    "versions": versions(), "rows": []}

    def add(key: str | None, case: dict, fn, *fn_args, **fn_kwargs) -> None:
        """Run one case and rewrite the file, so a run cut off by a time limit keeps what
        it measured."""
        found = guarded(case, fn, *fn_args, **fn_kwargs)
        if key is None:
            result["rows"].append(found)
        else:
            result[key] = found
        result["tma_failure"] = fused.TMA_FAILURE  # "auto" fell back to pointers if set
        out.write_text(json.dumps(result, indent=1) + "\n")

    def timed(impl: str, pooling: str, depth: int, *row_args, **row_kwargs) -> None:
        add(None, {"impl": impl, "pooling": pooling, "depth": depth, **row_kwargs},
            row, impl, pooling, depth, *row_args, **row_kwargs)

    gap1, gap2 = x[:64], x[:128]  # 8,192 pairs: per-call costs (stds, launches) amortized
    for depth in (11, 21):
        timed("triton", "gap", depth, gap1, gap2, "triton", variant=launch_options())
        timed("torch", "gap", depth, x[:4], x[:16], "torch")
        timed("triton", "flatten", depth, x[:128], x[:128], "triton", variant=launch_options())
        timed("torch", "flatten", depth, x[:128], x[:128], "torch")
    # all of Table 1's depths from one pass, against depth 21's alone above; at 128
    # registers (8 programs an SM against the default's 10); and in one loop summing every
    # layer rather than with the readout layers unrolled
    for options in ({}, {"max_registers": 128}, {"unrolled_readouts": 0}):
        with variant(**options):
            timed("triton", "gap", 21, gap1, gap2, "triton", depths=TABLE1_DEPTHS,
                  variant=launch_options())
    # a small call, as the variants of the first GPU runs were timed: what per-call costs add
    timed("triton", "gap", 11, x[:16], x[:32], "triton", variant=launch_options())
    for depth in (11, 21):  # and the kernel without them
        add(None, {"impl": "triton-kernel", "depth": depth}, kernel_only, x[:16], x[16:32],
            depth)
    # registers: 8, 9, 10 (the default's 96) and 11 programs an SM, and the compiler's choice;
    # one warp a program (no barrier, its layout change by shuffles: 47.5 instructions per
    # entry and layer at 179 registers, 11 warps an SM against the default's 20)
    for options in ({"max_registers": 128}, {"max_registers": 112}, {"max_registers": 88},
                    {"max_registers": None}, {"num_warps": 1, "max_registers": None},
                    {"std_loads": "pointers"},
                    {"num_stages": 3}, {"precision": 2}, {"precision": 1}, {"precision": 0}):
        with variant(**options):
            timed("triton", "gap", 11, gap1, gap2, "triton", variant=launch_options())
    add(None, {"impl": "triton", "sustained": args.sustained_seconds}, sustained,
        x[:256], x[:256], args.sustained_seconds)  # a cross tile, 65,536 pairs
    add("accuracy", {}, accuracy, x)
    add("flatten_all_depths", {"n": args.flatten_n}, flatten_all_depths, x, args.flatten_n)
    if not args.skip_nt:  # last: a jax that compiles slowly or hangs costs only its own rows
        for depth in (11, 21):  # 256 pairs a call: 4 x 4 (the H200 run's) may underfill it
            add(None, {"impl": "neural-tangents", "depth": depth}, neural_tangents, depth,
                16, 16, args.nt_seconds)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
