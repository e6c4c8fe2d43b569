"""studies/one_layer_agreement.py: a net trains exactly the chosen layers, and the
prediction it is compared with is the linearized one with those layers' exact terms."""

from __future__ import annotations

import json

import numpy as np
import torch

import ntkcheck as nc
from tests.scripts import load_script

agreement = load_script("studies/one_layer_agreement.py")


def test_the_linearized_prediction_uses_the_trained_layers_terms_alone():
    n = 5
    g = np.random.default_rng(0)
    features = [g.standard_normal((n + 3, 9)) for _ in range(3)]
    terms = torch.from_numpy(np.stack([f @ f.T for f in features]))
    f0, y = torch.from_numpy(g.standard_normal(n + 3)), torch.from_numpy(g.standard_normal(n))
    for layers in ([2], [1, 3]):
        k = sum(features[h - 1] @ features[h - 1].T for h in layers)
        want = f0[n:].numpy() + k[n:, :n] @ np.linalg.solve(k[:n, :n], (y - f0[:n]).numpy())
        np.testing.assert_allclose(agreement.linearized(terms, layers, f0, y, n).numpy(), want,
                                   rtol=1e-10)


def test_only_the_chosen_layers_move_and_the_net_fits_its_targets():
    x, y, x_test = agreement.problem(6, 2, 4)
    torch.testing.assert_close(x.norm(dim=1), torch.full((6,), 2.0, dtype=torch.float64))
    arch = nc.FC(depth=3)
    f0, f_nn, steps = agreement.trained_on(arch, 32, 0, [2], x, y, x_test)
    before = arch.network(32, (4,), seed=0, dtype=torch.float64)
    torch.testing.assert_close(f0, before(torch.cat([x, x_test])).detach(), rtol=0, atol=0)
    assert steps > 0
    residual = 0.5 * float(((f_nn[:6] - y) ** 2).sum())
    assert residual <= agreement.LOSS_TOLERANCE * 0.5 * float((y**2).sum())


def test_end_to_end_on_tiny_widths(tmp_path, monkeypatch):
    out = tmp_path / "result.json"
    monkeypatch.setattr("sys.argv", ["one_layer_agreement.py", "--out", str(out), "--depth", "2",
                                     "--widths", "16,32", "--seeds", "2", "--n", "5",
                                     "--n-test", "3", "--dim", "3"])
    agreement.main()
    result = json.loads(out.read_text())
    assert [f["trained"] for f in result["fits"]] == [[1], [2], [1, 2]]
    assert len(result["rows"]) == 3 * 2 * 2
    assert result["fits"][-1]["own_below_whole"] is None
    for fit in result["fits"]:
        assert len(fit["mean_error_own"]) == 2 and np.isfinite(fit["slope_own"])
