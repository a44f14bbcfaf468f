"""Distribution-matching losses: MMD (three estimators, two kernels) and CORAL."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emobridge.errors import ConfigError
from emobridge.models.domain_losses import (
    check_domain_loss,
    coral,
    domain_discrepancy,
    median_bandwidth,
    mmd,
)


def _sample(n: int = 64, d: int = 8, shift: float = 0.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) + shift


@pytest.mark.parametrize("kernel", ["gaussian", "multi"])
def test_mmd_of_a_sample_with_itself_is_zero(kernel):
    x = _sample()
    assert float(mmd(x, x, kernel=kernel)) == pytest.approx(0.0, abs=1e-6)
    # unbiased: diagonals dropped, so a sample against itself is slightly below 0 but close
    assert abs(float(mmd(x, x, estimator="unbiased", kernel=kernel))) < 0.05


@pytest.mark.parametrize("estimator", ["biased", "unbiased", "linear"])
def test_mmd_grows_with_a_mean_shift(estimator):
    x = _sample(256, seed=1)
    values = [float(mmd(x, _sample(256, shift=s, seed=2), estimator=estimator,
                        bandwidth=3.0)) for s in (0.0, 0.5, 1.5)]
    assert values[0] < values[1] < values[2]
    assert abs(values[0]) < 0.03 and values[2] > 0.1


def test_biased_mmd_matches_a_numpy_computation():
    x, y = _sample(10, 3, seed=3), _sample(7, 3, shift=1.0, seed=4)
    a, b = x.numpy().astype(np.float64), y.numpy().astype(np.float64)
    pooled = np.concatenate([a, b])
    d2 = ((pooled[:, None] - pooled[None]) ** 2).sum(-1)
    sigma2 = np.median(d2[np.triu_indices(len(pooled), 1)]) / 2
    k = np.exp(-d2 / (2 * sigma2))
    expected = k[:10, :10].mean() + k[10:, 10:].mean() - 2 * k[:10, 10:].mean()
    assert float(mmd(x, y)) == pytest.approx(expected, rel=1e-4)
    assert float(median_bandwidth(torch.cat([x, y]))) == pytest.approx(sigma2, rel=1e-4)


def test_coral_equals_numpy():
    x, y = _sample(20, 5, seed=5), _sample(30, 5, seed=6) * 2.0
    cs = np.cov(x.numpy().astype(np.float64), rowvar=False)
    ct = np.cov(y.numpy().astype(np.float64), rowvar=False)
    expected = ((cs - ct) ** 2).sum() / (4 * 5 * 5)
    assert float(coral(x, y)) == pytest.approx(expected, rel=1e-4)
    assert float(coral(x, x)) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("name,params", [("mmd", {}), ("mmd", {"estimator": "linear"}),
                                         ("mmd", {"kernel": "multi"}), ("coral", None)])
def test_gradients_flow_to_both_inputs(name, params):
    x = _sample(16, 4, seed=7).requires_grad_(True)
    y = _sample(12, 4, shift=1.0, seed=8).requires_grad_(True)
    loss = domain_discrepancy(name, x, y, params)
    loss.backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert y.grad is not None and float(y.grad.abs().sum()) > 0


def test_minimising_mmd_moves_the_target_towards_the_source():
    x = _sample(32, 2, seed=9)
    y = _sample(32, 2, shift=3.0, seed=10).requires_grad_(True)
    opt = torch.optim.SGD([y], lr=20.0)
    start = float(mmd(x, y.detach()))
    for _ in range(100):
        opt.zero_grad()
        mmd(x, y, bandwidth=3.0).backward()
        opt.step()
    assert float(mmd(x, y.detach())) < start / 2
    assert float((y.detach().mean(0) - x.mean(0)).norm()) < 1.0


def test_too_few_rows_give_a_zero_in_the_graph():
    x, y = _sample(1, 3).requires_grad_(True), _sample(1, 3, shift=1.0)
    for loss in (mmd(x, y, estimator="unbiased"), mmd(x, y, estimator="linear"), coral(x, y)):
        assert float(loss.detach()) == 0.0 and loss.requires_grad


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="domain_loss must be one of"):
        check_domain_loss("wasserstein", None)
    with pytest.raises(ConfigError, match="unknown options"):
        check_domain_loss("coral", {"kernel": "multi"})
    with pytest.raises(ConfigError, match="estimator"):
        check_domain_loss("mmd", {"estimator": "quadratic"})
    with pytest.raises(ConfigError, match="bandwidth"):
        check_domain_loss("mmd", {"bandwidth": -1.0})
    with pytest.raises(ConfigError, match="differ in width"):
        mmd(torch.zeros(4, 3), torch.zeros(4, 2))
    check_domain_loss("mmd", {"kernel": "multi", "kernel_num": 3, "estimator": "unbiased"})
