"""Deep-WCCN layer and classical WCCN against a direct numpy computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emobridge.errors import ConfigError
from emobridge.models.wccn import DeepWCCN, WCCNTransform

torch.set_num_threads(1)


def _cov(rows: np.ndarray) -> np.ndarray:
    centred = rows - rows.mean(axis=0)
    return centred.T @ centred / len(rows)


def _reference(batches, n_classes, smoothing, eps=1e-6, min_rows=2):
    """Streaming class averages over batches -> W -> smoothed -> chol(inv)."""
    per_class: list[list[np.ndarray]] = [[] for _ in range(n_classes)]
    for x, y in batches:
        for c in range(n_classes):
            rows = x[y == c]
            if len(rows) >= min_rows:
                per_class[c].append(_cov(rows))
    seen = [np.mean(covs, axis=0) for covs in per_class if covs]
    w = np.mean(seen, axis=0)
    d = w.shape[0]
    smoothed = (1 - smoothing) * w + smoothing * np.eye(d) + eps * np.eye(d)
    return np.linalg.cholesky(np.linalg.inv(smoothed))


def _batches(rng, d=3):
    b1 = (rng.normal(size=(9, d)), np.array([0, 0, 0, 1, 1, 1, 2, 2, 2]))
    # class 2 absent, class 1 has a single row (too few to count), an unlabelled row
    b2 = (rng.normal(size=(6, d)) * 2.0, np.array([0, 0, 0, 0, 1, -1]))
    b3 = (rng.normal(size=(7, d)) + 1.0, np.array([2, 2, 1, 1, 1, 0, 0]))
    return [b1, b2, b3]


@pytest.mark.parametrize("smoothing", [0.0, 0.3, 1.0])
def test_deep_wccn_matches_numpy_streaming_average(smoothing):
    rng = np.random.default_rng(0)
    batches = _batches(rng)
    layer = DeepWCCN(3, 3, smoothing=smoothing).train()
    for i, (x, y) in enumerate(batches):
        out = layer(torch.tensor(x, dtype=torch.float32), torch.tensor(y))
        b = _reference(batches[: i + 1], 3, smoothing)
        np.testing.assert_allclose(layer.projection.numpy(), b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out.detach().numpy(), x @ b, rtol=1e-4, atol=1e-5)
    assert layer.class_batches.tolist() == [3, 2, 2]
    if smoothing == 1.0:  # W ignored entirely: identity up to the ridge
        np.testing.assert_allclose(layer.projection.numpy(), np.eye(3), atol=1e-5)


def test_eval_uses_last_projection_and_state_dict_round_trip():
    rng = np.random.default_rng(1)
    layer = DeepWCCN(3, 3, smoothing=0.2).train()
    for x, y in _batches(rng):
        layer(torch.tensor(x, dtype=torch.float32), torch.tensor(y))
    projection = layer.projection.clone()
    layer.eval()
    x = torch.randn(5, 3)
    new_y = torch.tensor([0, 0, 1, 1, 2])
    out = layer(x, new_y)  # eval: labels ignored, no update
    torch.testing.assert_close(layer.projection, projection)
    torch.testing.assert_close(out, x @ projection)
    assert "projection" in layer.state_dict() and "class_cov" in layer.state_dict()
    fresh = DeepWCCN(3, 3, smoothing=0.2)
    fresh.load_state_dict(layer.state_dict())
    torch.testing.assert_close(fresh.eval()(x), out)


def test_no_gradient_through_the_statistics():
    layer = DeepWCCN(3, 2).train()
    x = torch.randn(6, 3, requires_grad=True)
    out = layer(x, torch.tensor([0, 0, 0, 1, 1, 1]))
    out.sum().backward()
    # d(sum(x @ B)) / dx = row sums of B for every row: B is a constant.
    expected = layer.projection.sum(dim=1).expand(6, 3)
    torch.testing.assert_close(x.grad, expected)
    assert not any(p.requires_grad for p in layer.parameters())


def test_singular_covariance_gives_finite_projection():
    rng = np.random.default_rng(2)
    d = 6  # two rows per class: rank-1 class covariances, W singular
    x = rng.normal(size=(4, d))
    y = np.array([0, 0, 1, 1])
    layer = DeepWCCN(d, 2, smoothing=0.0).train()
    out = layer(torch.tensor(x, dtype=torch.float32), torch.tensor(y))
    assert torch.isfinite(out).all() and torch.isfinite(layer.projection).all()
    w = (_cov(x[:2]) + _cov(x[2:])) / 2
    expected = np.linalg.cholesky(np.linalg.inv(w + 1e-6 * np.eye(d)))  # the ridged W
    np.testing.assert_allclose(layer.projection.numpy(), expected, rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())


def test_batch_without_countable_class_changes_nothing():
    layer = DeepWCCN(2, 3).train()
    x = torch.randn(3, 2)
    out = layer(x, torch.tensor([0, 1, 2]))  # one row per class
    torch.testing.assert_close(out, x)
    assert int(layer.class_batches.sum()) == 0


def test_classical_wccn_whitens_within_class_covariance():
    rng = np.random.default_rng(3)
    mix = rng.normal(size=(4, 4))
    x = np.concatenate([rng.normal(size=(50, 4)) @ mix + c * 3 for c in range(3)])
    y = np.repeat([0, 1, 2], 50)
    z = WCCNTransform().fit(x, y).transform(x)
    within = np.mean([_cov(z[y == c]) for c in range(3)], axis=0)
    np.testing.assert_allclose(within, np.eye(4), atol=1e-4)


@pytest.mark.parametrize("bad", [-0.1, 1.5, "x", True])
def test_smoothing_outside_unit_interval_is_refused(bad):
    with pytest.raises(ConfigError, match="smoothing"):
        DeepWCCN(2, 2, smoothing=bad)
    with pytest.raises(ConfigError, match="smoothing"):
        WCCNTransform(smoothing=bad)
