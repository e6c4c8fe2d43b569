"""The "compiled" backend: when "auto" takes it, its float32 error, and what happens where
torch.compile fails.  (Its float64 values against the literal formulas: test_literal.py.)"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.exc import TorchDynamoException

import ntkcheck as nc
from ntkcheck.kernels import compiled, recursion


@pytest.fixture
def x():
    return torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def test_float32_error_against_float64(x):
    """The compiled float32 kernels (vectorized arccos and sine) against the float64
    reference, as test_literal.py measures the reference's own float32 error."""
    for arch in (nc.CNN(depth=6, pooling="flatten"),
                 nc.CNN(depth=6, pooling="gap", fix_first_last=True)):
        exact = arch.ntk(x, backend="torch")
        single = arch.ntk(x.float(), backend="compiled")
        assert single.dtype == torch.float32
        rel = float((single.double() - exact).abs().max() / exact.abs().max())
        assert rel < 1e-5, rel


def test_auto_compiles_large_cpu_jobs_only(x, monkeypatch):
    arch = nc.CNN(depth=4, pooling="gap")
    chosen = []
    real = compiled.compiled_activation
    monkeypatch.setattr(compiled, "compiled_activation",
                        lambda insist: chosen.append(insist) or real(insist))
    small = arch.ntk(x)  # 10 pairs x 4,096 entries x 3 activations, far below MIN_WORK
    assert chosen == []
    # 10 x 4,096 x 3 = 122,880 entry-layers: just enough, and one less than enough
    monkeypatch.setattr(compiled, "MIN_WORK", 122_880)
    large = arch.ntk(x)
    assert chosen == [False]  # "auto" does not insist
    torch.testing.assert_close(large, small, rtol=1e-13, atol=0)
    monkeypatch.setattr(compiled, "MIN_WORK", 122_881)
    arch.ntk(x)
    assert chosen == [False]
    arch.ntk(x, backend="torch")
    arch.ntk(x, backend="compiled")
    assert chosen == [False, True]


def test_it_compiles_the_references_own_activation_with_room_to_recompile():
    """One function serves both backends, and torch's default of 8 compiled variants (past
    which it silently runs uncompiled code) is raised while ntkcheck calls it."""
    import torch._dynamo.config

    assert compiled._compiled()._torchdynamo_orig_callable is recursion.activation
    default = torch._dynamo.config.recompile_limit
    with compiled._enough_recompiles():
        assert torch._dynamo.config.recompile_limit >= compiled.RECOMPILES > default
    assert torch._dynamo.config.recompile_limit == default


def _no_compiler():
    def fail(*args):
        raise TorchDynamoException("InvalidCxxCompiler: No working C++ compiler found\nmore")
    return fail


def test_a_failed_compile_warns_once_and_falls_back(x, monkeypatch):
    monkeypatch.setattr(compiled, "COMPILE_FAILURE", None)
    monkeypatch.setattr(compiled, "MIN_WORK", 1)
    monkeypatch.setattr(compiled, "_compiled", _no_compiler)
    arch = nc.CNN(depth=4, pooling="flatten")
    with pytest.warns(UserWarning, match="torch.compile failed .InvalidCxxCompiler: No working"
                      ) as caught:
        got = arch.ntk(x)  # three activations, each a call: only the first tries compiling
    assert len(caught) == 1
    assert compiled.COMPILE_FAILURE == "InvalidCxxCompiler: No working C++ compiler found"
    torch.testing.assert_close(got, arch.ntk(x, backend="torch"), rtol=0, atol=0)
    assert not compiled.worth_compiling(arch._rules(), x, None, frozenset((4,)))
    with pytest.raises(RuntimeError, match="backend='compiled': torch.compile failed in this "
                                           "process .InvalidCxxCompiler.*backend='torch'"):
        arch.ntk(x, backend="compiled")


def test_torch_compile_unsupported_here_counts_as_a_failed_compile(x, monkeypatch):
    def unsupported():  # what torch.compile itself raises on a Python it does not support
        raise RuntimeError("torch.compile is not supported on Python 3.99+")
    monkeypatch.setattr(compiled, "COMPILE_FAILURE", None)
    monkeypatch.setattr(compiled, "_compiled", unsupported)
    monkeypatch.setattr(compiled, "MIN_WORK", 1)
    arch = nc.CNN(depth=3)
    with pytest.warns(UserWarning, match="torch.compile failed .torch.compile is not supported"):
        got = arch.ntk(x)
    torch.testing.assert_close(got, arch.ntk(x, backend="torch"), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="backend='compiled': torch.compile failed"):
        arch.ntk(x, backend="compiled")


def test_backend_compiled_raises_where_it_cannot_compile(x, monkeypatch):
    monkeypatch.setattr(compiled, "COMPILE_FAILURE", None)
    monkeypatch.setattr(compiled, "_compiled", _no_compiler)
    with pytest.raises(RuntimeError, match="torch.compile failed") as caught:
        nc.CNN(depth=3).ntk(x, backend="compiled")
    assert isinstance(caught.value.__cause__, TorchDynamoException)


def test_errors_that_are_not_compiling_propagate(x, monkeypatch):
    def broken():
        def fail(*args):
            raise RuntimeError("out of memory")
        return fail
    monkeypatch.setattr(compiled, "COMPILE_FAILURE", None)
    monkeypatch.setattr(compiled, "_compiled", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        nc.CNN(depth=3).ntk(x, backend="compiled")
    assert compiled.COMPILE_FAILURE is None
