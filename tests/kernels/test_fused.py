"""The fused Triton CNTK (float32) against the float64 torch reference.

Without a GPU these run under TRITON_INTERPRET=1 (set in conftest.py) on tiny images; with
one, `pytest -m gpu` adds the real CIFAR-10 checks at 32x32 and every option.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch

import ntkcheck as nc

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from ntkcheck.kernels import fused, triton_cntk  # noqa: E402
from ntkcheck.kernels.triton_cntk import relu_angle  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
needs_gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")

TOLERANCE = 2e-5
"""float32 against float64, relative to the largest entry.  The torch reference in float32
is off by up to 7e-6 on the same random tiny inputs: arccos' slope grows like
1 / sqrt(1 - rho^2), so entries with rho near +-1 carry float32 rounding of rho magnified."""


def both(arch, x1, x2=None, depths=(3, 4), backend="triton"):
    """{depth: (ntk, nngp)} in one pass."""
    found = arch._kernels(x1, x2, frozenset(depths), backend=backend)
    return {d: (k.ntk, k.nngp) for d, k in found.items()}


def errors(got, want):
    """{(depth, "ntk" / "nngp"): max |got - want| / max |want|}."""
    found = {}
    for d in want:
        for name, g, w in zip(("ntk", "nngp"), got[d], want[d], strict=True):
            assert torch.isfinite(g).all()
            found[d, name] = ((g.double().cpu() - w.cpu()).abs().max() / w.abs().max()).item()
    return found


def assert_close(got, want, yardstick=None):
    """Within TOLERANCE, or within 4x the float32 reference's own error (``yardstick``,
    the same comparison for the torch backend in float32) where that is larger.  Measured
    on an H100: q = 1 on CIFAR at depth 21, fused 2.5e-5 to 5.9e-5 against torch-float32's
    1.3e-5 to 2.1e-5 (tf32 sums, approximate sqrt and division each move rho by an ulp)."""
    for key, err in errors(got, want).items():
        allowed = TOLERANCE if yardstick is None else max(TOLERANCE, 4 * yardstick[key])
        assert err <= allowed, (key, err, allowed)


def read_stds_by(std_loads, monkeypatch):
    """Have the kernel read the std planes by ``std_loads`` ("tma" or "pointers"); TMA is
    skipped under an interpreter that cannot run tensor descriptors."""
    if std_loads == "tma" and fused.interpreting() and \
            fused.triton_version() < fused.INTERPRETER_TMA:
        pytest.skip("this Triton's interpreter cannot run the tensor descriptors")
    monkeypatch.setattr(fused, "STD_LOADS", std_loads)


@pytest.mark.parametrize("pooling", ["flatten", "gap"])
@pytest.mark.parametrize("fix_first_last", [False, True])
@pytest.mark.parametrize("filter_size", [1, 3])
@pytest.mark.parametrize("cross", [False, True], ids=["gram", "cross"])
@pytest.mark.parametrize("std_loads", ["tma", "pointers"])
def test_matches_reference_on_small_images(pooling, fix_first_last, filter_size, cross,
                                           std_loads, monkeypatch):
    # both ways of reading the std planes; a GAP slice's column shift is any 0..4, so the
    # tensor descriptors read the four shifted copies
    read_stds_by(std_loads, monkeypatch)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 2, 4, 5, generator=g, dtype=torch.float64)
    z = torch.randn(2, 2, 4, 5, generator=g, dtype=torch.float64) if cross else None
    arch = nc.CNN(depth=4, pooling=pooling, filter_size=filter_size,
                  fix_first_last=fix_first_last)
    want = both(arch, x, z, backend="torch")
    got = both(arch, x.float().to(DEVICE), None if z is None else z.float().to(DEVICE))
    assert_close(got, want)


@pytest.mark.parametrize("precision", [2, 3], ids=["tf32", "fp16"])
@pytest.mark.parametrize(("depths", "unrolled"), [
    ((2, 3, 4, 5, 6, 7), 4), ((3, 7), 4), ((2, 5, 7), 4), ((7,), 4),
    ((2, 3, 4, 5, 6, 7), 0), ((2, 5, 7), 0)], ids=[
    "every unrolled", "3,7", "2,5,7", "7", "every in a loop", "2,5,7 in a loop"])
def test_every_set_of_depths_read_out(depths, unrolled, precision, monkeypatch):
    # a requested depth's layer runs unrolled, the layers between two of them in a loop:
    # every depth (no loop), loops after, between and before the readouts; or, with more
    # than UNROLLED_READOUTS, one loop sums every layer and stores the requested sums.  A
    # 4 x 5 image tells the row band from the column band; tf32 operands also relabel the
    # field's columns (_as_left).
    monkeypatch.setattr(fused, "PRECISION", precision)
    monkeypatch.setattr(fused, "UNROLLED_READOUTS", unrolled)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 2, 4, 5, generator=g, dtype=torch.float64)
    z = torch.randn(2, 2, 4, 5, generator=g, dtype=torch.float64)
    arch = nc.CNN(depth=max(depths), pooling="gap")
    assert_close(both(arch, x.float().to(DEVICE), z.float().to(DEVICE), depths),
                 both(arch, x, z, depths, backend="torch"))


def test_more_than_four_readouts_between_take_one_loop_that_sums_every_layer():
    # UNROLLED_READOUTS counts the requested depths strictly between 2 (read out before any
    # loop) and the deepest; Table 1's pass stays unrolled, CNTK-V's every depth does not
    x = torch.randn(2, 1, 4, 5)

    def sums_every_layer(depths):
        return fused.launch_for(x, None, frozenset(depths), filter_size=3, gap=True,
                                fix_first_last=False, tma=False).options["SUM_EVERY_LAYER"]

    assert fused.UNROLLED_READOUTS == 4
    assert not sums_every_layer((2, 3, 4, 5, 6, 8))
    assert sums_every_layer((3, 4, 5, 6, 7, 9))
    assert not sums_every_layer((3, 4, 6, 11, 21))
    assert sums_every_layer(range(3, 22))


def test_register_cap_only_where_it_was_chosen(monkeypatch):
    # MAX_REGISTERS was chosen for fp16 products on slices of up to 32 x 32; at 64 x 64 or
    # with the tf32 split the compiler's own choice spills far less
    def cap(side, precision=3):
        monkeypatch.setattr(fused, "PRECISION", precision)
        x = torch.randn(2, 1, side, side)
        launch = fused.launch_for(x, None, frozenset((3,)), filter_size=3, gap=False,
                                  fix_first_last=False, tma=False)
        return launch.options.get("maxnreg")

    assert cap(32) == cap(9) == fused.MAX_REGISTERS == 96
    assert cap(33) is cap(64) is cap(32, precision=2) is None


@pytest.mark.parametrize("cross", [False, True], ids=["gram", "cross"])
def test_four_std_copies_only_where_tma_reads_a_gap_partner(cross):
    # a TMA window starts on 16 bytes, so a GAP slice's partner planes (shifted by any 0..3
    # columns) come in four copies; the first side, flatten and pointer loads need one
    x = torch.randn(3, 2, 4, 5)
    z = torch.randn(2, 2, 4, 5) if cross else None

    def copies(gap, tma):
        launch = fused.launch_for(x, z, frozenset((3,)), filter_size=3, gap=gap,
                                  fix_first_last=False, tma=tma)
        return launch.std1.shape[0], launch.std2.shape[0]

    assert copies(True, True) == ((1, 4) if cross else (4, 4))
    assert copies(False, True) == copies(True, False) == copies(False, False) == (1, 1)


@pytest.mark.parametrize("extended", [False, True], ids=["flatten", "gap"])
def test_std_planes_hold_each_images_scaled_stds_shifted_by_their_copy(extended):
    # each image and its stds times a power of two that puts its largest std in [1/2, 1);
    # copy c shifted left by c columns, zeros after; rows padded to a multiple of 4
    # columns (16 bytes); a GAP slice's planes and images repeated twice along both axes
    stds = torch.rand(2, 3, 4, 6, dtype=torch.float64) + 0.1
    stds[0] *= 1e3
    stds[1] *= 1e-3
    x = torch.randn(2, 1, 4, 6)
    images, planes, scales = fused._kernel_inputs(x, stds, extended, copies=4)
    exponents = torch.log2(scales)
    assert torch.equal(exponents, exponents.round())
    scaled = stds * scales[:, None, None, None]
    largest = scaled.amax(dim=(1, 2, 3))
    assert ((largest >= 0.5) & (largest < 1)).all()
    want_x = x * scales.float()[:, None, None, None]
    if extended:
        scaled, want_x = scaled.repeat(1, 1, 2, 2), want_x.repeat(1, 1, 2, 2)
    width = scaled.shape[-1]
    assert planes.shape == (4, *scaled.shape[:-1], -(-width // 4) * 4)
    assert torch.equal(images, want_x)
    for c in range(4):
        assert torch.equal(planes[c, ..., :width - c], scaled[..., c:].float())
        assert (planes[c, ..., width - c:] == 0).all()


@pytest.mark.parametrize("pooling", ["flatten", "gap"])
def test_one_convolution_alone(pooling):
    # depth 2 (one convolution, then the readout): the kernel's own branch, no layer loop
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 2, 4, 5, generator=g, dtype=torch.float64)
    z = torch.randn(3, 2, 4, 5, generator=g, dtype=torch.float64)
    arch = nc.CNN(depth=2, pooling=pooling)
    assert_close(both(arch, x.float().to(DEVICE), z.float().to(DEVICE), depths=(2,)),
                 both(arch, x, z, depths=(2,), backend="torch"))


@pytest.mark.parametrize("cross", [False, True], ids=["gram", "cross"])
def test_small_launches_assemble_the_whole_matrix(cross):
    # 800 bytes of readouts per pair here, so 4,000 bytes makes launches of 2 x 2 pairs: a
    # Gram's diagonal tiles keep only their pairs on or above the diagonal, cut edge tiles
    # their pairs inside the matrix
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 2, 4, 5, generator=g, dtype=torch.float64)
    z = torch.randn(3, 2, 4, 5, generator=g, dtype=torch.float64) if cross else None
    arch = nc.CNN(depth=4, pooling="gap")
    found = arch._kernels(x.float().to(DEVICE), None if z is None else z.float().to(DEVICE),
                          frozenset((3, 4)), max_memory=4000, backend="triton")
    assert_close({d: (k.ntk, k.nngp) for d, k in found.items()}, both(arch, x, z, backend="torch"))


@pytest.mark.parametrize("std_loads", ["tma", "pointers"])
def test_images_that_fill_the_block_exactly(std_loads, monkeypatch):
    # every other test's images are padded to the block; CIFAR's 32 x 32 fill theirs, and
    # so do 16 x 16 ones: the loads, the std windows and the bands without a mask, the
    # packing boundary at the block's edge
    read_stds_by(std_loads, monkeypatch)
    g = torch.Generator().manual_seed(8)
    x = torch.randn(1, 3, 16, 16, generator=g, dtype=torch.float64)
    z = torch.randn(1, 3, 16, 16, generator=g, dtype=torch.float64)
    for pooling in ("gap", "flatten"):
        arch = nc.CNN(depth=3, pooling=pooling)
        assert_close(both(arch, x.float().to(DEVICE), z.float().to(DEVICE), depths=(2, 3)),
                     both(arch, x, z, depths=(2, 3), backend="torch"))


def test_wide_filter_and_padded_block():
    # 17 x 6 pads to a 32 x 16 block; q = 5 reaches two rows across the packing boundary
    x = torch.randn(2, 1, 17, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    arch = nc.CNN(depth=3, pooling="flatten", filter_size=5)
    assert_close(both(arch, x.float().to(DEVICE), depths=(2, 3)),
                 both(arch, x, depths=(2, 3), backend="torch"))


def test_either_side_above_64_is_named():
    # tall and wide images alike: a slice is held in registers up to 64 x 64
    for shape in ((1, 1, 65, 8), (1, 1, 8, 65)):
        reason = fused.unsupported_reason(torch.zeros(shape, device=DEVICE))
        assert reason == f"images larger than 64x64 are not supported; got {shape[2:]}"
    assert fused.unsupported_reason(torch.zeros(1, 1, 64, 64, device=DEVICE)) is None


def test_gram_diagonal_is_exact_at_depth():
    # rho = 1 on a Gram's own displacement-0 slice is imposed, not left to rounding: with
    # rho a few ulps below 1 the NTK diagonal would be off by ~sqrt(ulps * eps) ~ 1e-4.
    # The interpreter's products are exact, so this guards the GPU's tf32 sums above all.
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    arch = nc.CNN(depth=8, pooling="flatten")
    got = arch.ntk(x.float().to(DEVICE), backend="triton").double().cpu()
    want = arch.ntk(x, backend="torch")
    assert ((got.diag() - want.diag()).abs() / want.diag()).max() < 2e-6


def test_zero_and_constant_images_give_no_nan():
    x = torch.zeros(3, 2, 4, 4, dtype=torch.float64)
    x[1] = 1.0
    x[2] = torch.randn(2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    arch = nc.CNN(depth=4, pooling="gap", fix_first_last=True)
    got = both(arch, x.float().to(DEVICE))
    assert_close(got, both(arch, x, backend="torch"))
    assert (got[4][0][0] == 0).all()


def test_each_image_scale_is_factored_out():
    # fp16 products hold 2^-24 .. 65504: the kernel sees every image scaled by a power of two
    # of its own, so a bright and a faint image in one Gram keep every entry's digits
    x = torch.randn(3, 2, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x[0] *= 1e4
    x[2] *= 1e-5
    arch = nc.CNN(depth=5, pooling="gap")
    got = both(arch, x.float().to(DEVICE), depths=(5,))[5]
    want = both(arch, x, depths=(5,), backend="torch")[5]
    for name, g, w in zip(("ntk", "nngp"), got, want, strict=True):
        error = ((g.double().cpu() - w) / w).abs().max()
        assert error < TOLERANCE, (name, error)


@triton.jit
def _angles(rho_ptr, out_ptr, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offsets, relu_angle(tl.load(rho_ptr + offsets)))


def test_relu_angle_is_arccos_to_two_ulps_of_pi():
    rho = np.concatenate([np.linspace(-1, 1, 4093), 1 - np.logspace(-7, 0, 512),
                          -1 + np.logspace(-7, 0, 512), [0.5, -0.5, np.nextafter(0.5, 1)]])
    rho = torch.tensor(rho, dtype=torch.float32)
    rho = torch.cat([rho, rho.new_zeros(-len(rho) % 1024)])
    out = torch.empty_like(rho, device=DEVICE)
    _angles[(len(rho) // 1024,)](rho.to(DEVICE), out, BLOCK=1024)
    want = torch.arccos(-rho.double())
    # float32 ulp of pi: 2.4e-7; the polynomial is within 1.2e-8, the rest is the rounding of
    # a square root, eight multiply-adds and an addition (2.9e-7 under the interpreter)
    assert (out.cpu().double() - want).abs().max() < 4.8e-7


def test_backend_choice_and_errors():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="backend must be one of"):
        nc.CNN(depth=3).ntk(x, backend="cuda")
    with pytest.raises(ValueError, match="float32.*float64"):
        nc.CNN(depth=3).ntk(x.double().to(DEVICE), backend="triton")
    with pytest.raises(ValueError, match="CNN only"):
        nc.FC(depth=3).ntk(x.flatten(1), backend="triton")
    with pytest.raises(ValueError, match="64x64"):
        nc.CNN(depth=3).ntk(torch.randn(1, 1, 65, 8, device=DEVICE), backend="triton")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto on the CPU is the reference, silently
        nc.CNN(depth=3).ntk(x)


def test_a_triton_older_than_3_4_is_named_and_auto_falls_back(monkeypatch):
    x = torch.randn(2, 3, 4, 4, device=DEVICE)
    arch = nc.CNN(depth=3)
    monkeypatch.setattr(fused, "triton_version", lambda: (3, 3))
    with pytest.raises(ValueError, match=r"triton 3\.3 is installed.*needs 3\.4 or later"):
        arch.ntk(x, backend="triton")
    if x.is_cuda:  # where auto would otherwise take the fused kernel
        with pytest.warns(UserWarning, match=r"torch reference.*triton 3\.3"):
            got = arch.ntk(x)
        torch.testing.assert_close(got, arch.ntk(x, backend="torch"))


def auto_takes_tma_here():
    """STD_LOADS's documented rule, here: TMA on sm_90 and later, and under the
    interpreter of Triton 3.6 and later."""
    if fused.interpreting():
        return fused.triton_version() >= (3, 6)
    return CUDA and torch.cuda.get_device_capability() >= (9, 0)


@pytest.mark.parametrize("interpreter,capability,version,want", [
    (False, (9, 0), (3, 4), True), (False, (8, 9), (3, 6), False),
    (True, (8, 0), (3, 6), True), (True, (9, 0), (3, 5), False)])
def test_auto_reads_the_std_planes_by_tma_where_it_runs_until_it_fails(
        monkeypatch, interpreter, capability, version, want):
    monkeypatch.setattr(fused, "STD_LOADS", "auto")
    monkeypatch.setattr(fused, "TMA_FAILURE", None)
    monkeypatch.setattr(fused, "interpreting", lambda: interpreter)
    monkeypatch.setattr(fused, "triton_version", lambda: version)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    cuda = torch.device("cuda")
    assert fused._use_tma(cuda) is want
    monkeypatch.setattr(fused, "TMA_FAILURE", "CompilationError: no descriptors")
    assert fused._use_tma(cuda) is False
    for loads in ("tma", "pointers"):  # asked for: taken, whatever happened before
        monkeypatch.setattr(fused, "STD_LOADS", loads)
        assert fused._use_tma(cuda) is (loads == "tma")


def test_tma_that_does_not_compile_falls_back_to_pointers_once(monkeypatch):
    if not auto_takes_tma_here():
        pytest.skip("auto does not take TMA here (GPU before sm_90, or interpreter < 3.6)")
    monkeypatch.setattr(fused, "TMA_FAILURE", None)
    ran, probed = [], []  # the TMA option of each launch of the kernel, of each probe
    kernel = triton_cntk.cntk_slices

    class Spy:
        def __getitem__(self, grid):
            def launch(*args, **options):
                ran.append(options["TMA"])
                return kernel[grid](*args, **options)
            return launch

    def rejected(launch):
        probed.append(launch.options["TMA"])
        return "CompilationError: no descriptors here"

    monkeypatch.setattr(triton_cntk, "cntk_slices", Spy())
    x = torch.randn(3, 2, 5, 6, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    arch = nc.CNN(depth=3, pooling="gap")
    monkeypatch.setattr(fused, "compile_error", lambda launch: None)
    arch.ntk(x[:1], backend="triton")
    assert ran == [True]  # where TMA compiles, it is what runs
    ran.clear()
    monkeypatch.setattr(fused, "compile_error", rejected)
    with pytest.warns(UserWarning, match="TMA loads did not compile.*no descriptors.*pointers"):
        got = arch.ntk(x, backend="triton")
    assert fused.TMA_FAILURE == "CompilationError: no descriptors here"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # decided once: no second probe, no second warning
        again = arch.ntk(x, backend="triton")
    assert probed == [True] and ran and set(ran) == {False}
    want = arch.ntk(x.double(), backend="torch")
    for k in (got, again):
        assert ((k.double().cpu() - want.cpu()).abs().max() / want.abs().max()) < TOLERANCE


class _OnCuda(torch.Tensor):
    """A CPU tensor that says it is on CUDA: what "auto" decides is then testable anywhere."""

    is_cuda = True


class _TookFused(Exception):
    pass


def test_auto_takes_the_fused_kernel_exactly_for_cuda_float32_cnn_inputs(monkeypatch):
    """The fused kernel for CUDA float32 CNN inputs it supports (and wherever "triton" is
    asked for and can run); the reference, silently, for float64, FC, a split by layer or
    backend="torch"; with a warning for what it cannot take (images above 64x64)."""
    def fused_kernels(*args, **kwargs):
        raise _TookFused

    monkeypatch.setattr(fused, "fused_kernels", fused_kernels)
    x = torch.randn(2, 2, 3, 3)
    cnn, fc = nc.CNN(depth=3, pooling="gap"), nc.FC(depth=3)
    with pytest.raises(_TookFused):
        cnn.ntk(x.as_subclass(_OnCuda))
    with pytest.raises(_TookFused):
        cnn.nngp(x.as_subclass(_OnCuda), x.as_subclass(_OnCuda))
    with pytest.raises(_TookFused):  # "triton" insists, here on the CPU under the interpreter
        cnn.ntk(x, backend="triton")
    reference = [
        (cnn.ntk, x.double(), {}), (cnn.ntk, x, {"by_layer": True}),
        (cnn.ntk, x, {"backend": "torch"}), (cnn.nngp, x, {"backend": "torch"}),
        (fc.ntk, x.flatten(1), {}),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        for kernel, inputs, options in reference:
            got = kernel(inputs.as_subclass(_OnCuda), **options)
            want = kernel(inputs, **{**options, "backend": "torch"})
            torch.testing.assert_close(got.as_subclass(torch.Tensor), want)
    with pytest.warns(UserWarning, match=r"torch reference.*larger than 64x64"):
        cnn.ntk(torch.randn(1, 1, 65, 1).as_subclass(_OnCuda))


# ----------------------------------------------------------------- GPU only (pytest -m gpu)

def cifar_images(n: int) -> torch.Tensor:
    try:
        images, _ = nc.data.cifar10_exact("test", n)
        reference, _ = nc.data.cifar10_exact("train", 500)
    except FileNotFoundError as missing:
        pytest.skip(f"CIFAR-10 data not found: {missing}")
    return nc.data.standardize(images, reference)


@pytest.mark.parametrize("cross", [False, True], ids=["gram", "cross"])
def test_a_large_matrix_starts_only_if_the_fused_kernel_agrees(tmp_path, monkeypatch, cross):
    """kernel_matrix / kernel_tiles check the fused kernel on the first images against the
    float64 reference before computing tiles: a kernel off by 1% stops them with no tile
    written; a finished matrix is not checked again."""
    arch = nc.CNN(depth=4, pooling="flatten")  # one slice a pair: quick under the interpreter
    gen = torch.Generator().manual_seed(5)
    x1 = torch.randn(3, 2, 4, 5, generator=gen).to(DEVICE)
    x2 = torch.randn(2, 2, 4, 5, generator=gen).to(DEVICE) if cross else None
    out = tmp_path / "m"
    fine = nc.kernel_matrix(arch, x1, x2, depths=(3, 4), tile=4, backend="triton", out=out,
                            progress=False)  # the check passes on a working kernel
    exact = nc.CNN._fused

    def off_by_one_percent(self, *args, **kwargs):
        return {d: nc.kernels.recursion.Kernels(k.ntk * 1.01, k.nngp)
                for d, k in exact(self, *args, **kwargs).items()}

    monkeypatch.setattr(nc.CNN, "_fused", off_by_one_percent)
    again = nc.kernel_matrix(arch, x1, x2, depths=(3, 4), tile=4, backend="triton", out=out,
                             progress=False)  # nothing to compute: no check
    torch.testing.assert_close(again[4].ntk, fine[4].ntk, rtol=0, atol=0)
    for compute in (functools.partial(nc.kernel_matrix, out=tmp_path / "a"),
                    functools.partial(nc.kernel_tiles, out=tmp_path / "b", shard=(0, 2))):
        with pytest.raises(RuntimeError, match=r"fused kernel disagrees .*\(ntk at depth 3: "
                           r"relative error 0\.01"):
            compute(arch, x1, x2, depths=(3, 4), tile=4, backend="triton", progress=False)
    assert not list(tmp_path.glob("[ab]/tile_*"))


@pytest.mark.parametrize("pooling", ["flatten", "gap"])
@pytest.mark.parametrize("fix_first_last", [False, True])
@pytest.mark.parametrize("filter_size", [1, 3, 5])
@pytest.mark.parametrize("cross", [False, True], ids=["gram", "cross"])
@pytest.mark.gpu
@needs_gpu
def test_cifar_every_option(pooling, fix_first_last, filter_size, cross):
    x = cifar_images(6).cuda()
    x1, x2 = (x[:2], x[2:]) if cross else (x, None)
    arch = nc.CNN(depth=21, pooling=pooling, filter_size=filter_size,
                  fix_first_last=fix_first_last)
    depths = (3, 11, 21)
    single = (x1.float(), None if x2 is None else x2.float())
    want = both(arch, x1, x2, depths, backend="torch")
    got = both(arch, *single, depths, backend="auto")
    # q = 1 on 3 channels puts many rho near +-1, where float32 itself loses digits
    assert_close(got, want, yardstick=errors(both(arch, *single, depths, backend="torch"), want))


@pytest.mark.parametrize("std_loads", ["tma", "pointers"])
@pytest.mark.gpu
@needs_gpu
def test_cifar_both_std_loads(std_loads, monkeypatch):
    # "auto" takes one of the two on a given GPU; this runs the other one too
    monkeypatch.setattr(fused, "STD_LOADS", std_loads)
    x = cifar_images(6).cuda()
    arch = nc.CNN(depth=11, pooling="gap", fix_first_last=True)
    for x1, x2 in ((x, None), (x[:2], x[2:])):
        single = (x1.float(), None if x2 is None else x2.float())
        assert_close(both(arch, *single, (3, 11)), both(arch, x1, x2, (3, 11), backend="torch"))


@pytest.mark.parametrize("cross", [False, True], ids=["gram", "cross"])
@pytest.mark.gpu
@needs_gpu
def test_launches_queue_without_waiting_for_the_gpu(cross):
    # The host may wait for the GPU (a sync) a fixed number of times a call, not once per
    # launch: then the GPU would idle while Python prepares each launch (measured on an
    # H200: 33.7 us/pair in 8,192-pair calls, 29.2 for the launches alone)
    x = cifar_images(8).cuda().float()
    x1, x2 = (x[:3], x[3:]) if cross else (x, None)
    arch = nc.CNN(depth=3, pooling="gap")
    slot = 32 * 32 * 2 * 4 * 4  # a pair's readout bytes: slices x 2 x (deepest + 1) x 4

    def syncs(fn) -> int:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fn()
            finally:
                torch.cuda.set_sync_debug_mode(0)
        return sum("synchroniz" in str(w.message) for w in caught)

    def call(max_memory: int) -> None:
        arch._kernels(x1, x2, frozenset((3,)), max_memory=max_memory, backend="triton")

    assert syncs(lambda: torch.ones(1, device="cuda").item()) >= 1  # syncs are seen
    call(2**30)  # compiles
    # launches of 2 x 2 pairs, against one launch
    assert syncs(functools.partial(call, 4 * slot)) == syncs(functools.partial(call, 2**30))


@pytest.mark.gpu
@needs_gpu
def test_auto_falls_back_with_a_warning_above_64():
    x = torch.randn(2, 3, 66, 66, device="cuda")
    arch = nc.CNN(depth=3, pooling="flatten")
    with pytest.warns(UserWarning, match="torch reference"):
        got = arch.ntk(x)
    torch.testing.assert_close(got, arch.ntk(x, backend="torch"))


@pytest.mark.gpu
@needs_gpu
def test_64x64_gap_matches_reference():
    x = torch.randn(2, 3, 64, 64, device="cuda", dtype=torch.float64,
                    generator=torch.Generator("cuda").manual_seed(4))
    arch = nc.CNN(depth=5, pooling="gap", fix_first_last=True)
    want = arch._kernels(x, None, frozenset((3, 5)), max_memory=2**33, backend="torch")
    assert_close(both(arch, x.float(), depths=(3, 5), backend="auto"),
                 {d: tuple(k) for d, k in want.items()})
