"""Backbones, heads and layers: parameter count, masks, attention, gradient reversal."""

from __future__ import annotations

import pytest
import torch

from emobridge.errors import ConfigError
from emobridge.models import (
    SNSA,
    AttentionHead,
    EmotionClassifier,
    GradientReversal,
    MLPHead,
    build_backbone,
    count_parameters,
    dann_lambda,
    grad_reverse,
    lengths_to_mask,
    resolve_backbone,
)
from emobridge.models.layers import AttentionPooling, downsample_mask, masked_mean

torch.set_num_threads(1)


def _padded_vs_alone(module: torch.nn.Module, dims: int, lengths: list[int]) -> None:
    """Each utterance alone (no mask) must embed as it does padded inside a batch."""
    torch.manual_seed(0)
    module.eval()
    seqs = [torch.randn(n, dims) for n in lengths]
    longest = max(lengths)
    x = torch.zeros(len(seqs), longest + 3, dims)  # extra padding beyond the longest too
    for i, s in enumerate(seqs):
        x[i, : len(s)] = s
        x[i, len(s):] = 7.0  # garbage in the padding must not leak in
    mask = lengths_to_mask(torch.tensor(lengths), longest + 3)
    with torch.no_grad():
        batched = module(x, mask)
        for i, s in enumerate(seqs):
            alone = module(s.unsqueeze(0))
            torch.testing.assert_close(batched[i], alone[0], atol=1e-5, rtol=1e-4)


def test_snsa_parameter_count_matches_paper_scale():
    model = EmotionClassifier(SNSA(input_dim=128), n_classes=4)
    n = count_parameters(model)
    assert 400_000 <= n <= 520_000, n
    # Sizes are parameters: a smaller LSTM gives fewer parameters.
    assert count_parameters(SNSA(128, lstm_hidden=32)) < count_parameters(SNSA(128))


def test_snsa_shapes_and_short_inputs():
    model = SNSA(input_dim=20, conv_channels=(8, 8), lstm_hidden=6, attention_dim=4).eval()
    out = model(torch.randn(3, 50, 20))
    assert out.shape == (3, model.output_dim) == (3, 12)
    # Shorter than the pooling stack (4 frames): padded internally, still one embedding.
    assert model(torch.randn(2, 2, 20)).shape == (2, 12)
    h, mask = model.frame_states(torch.randn(1, 41, 20))
    assert h.shape[1] == 41 // 4 and mask.all()


def test_snsa_masks_make_padding_irrelevant():
    model = SNSA(input_dim=10, conv_channels=(8, 6), kernel_size=3, lstm_hidden=5,
                 attention_dim=4)
    _padded_vs_alone(model, 10, [37, 9, 16, 3])


def test_attention_and_mlp_heads_ignore_padding():
    _padded_vs_alone(AttentionHead(12, hidden_dim=8, attention_dim=4, heads=2), 12, [5, 11, 1])
    _padded_vs_alone(MLPHead(12, hidden_dims=(8, 4)), 12, [5, 11, 1])


def test_padding_changes_output_without_mask():
    # The mask is what makes padded == unpadded: without it, the padding leaks in.
    torch.manual_seed(0)
    head = AttentionHead(6, hidden_dim=5, attention_dim=3).eval()
    s = torch.randn(4, 6)
    padded = torch.cat([s, torch.full((3, 6), 5.0)]).unsqueeze(0)
    with torch.no_grad():
        assert not torch.allclose(head(padded), head(s.unsqueeze(0)), atol=1e-4)


def test_attention_weights_zero_on_padding_and_sum_to_one():
    pool = AttentionPooling(4, attention_dim=3, heads=2)
    mask = lengths_to_mask(torch.tensor([2, 5]), 5)
    a = pool.weights(torch.randn(2, 5, 4), mask)
    assert torch.all(a[0, 2:] == 0)
    torch.testing.assert_close(a.sum(dim=1), torch.ones(2, 2))


def test_mask_helpers():
    mask = lengths_to_mask(torch.tensor([1, 4, 7]), 8)
    assert mask.sum(1).tolist() == [1, 4, 7]
    assert downsample_mask(mask, 2).sum(1).tolist() == [1, 2, 3]  # floor, at least one
    x = torch.arange(8.0).view(1, 8, 1).expand(3, 8, 1)
    assert masked_mean(x, mask).flatten().tolist() == [0.0, 1.5, 3.0]


def test_gradient_reversal_flips_and_scales_the_gradient():
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    (grad_reverse(x, 0.5) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert x.grad.tolist() == [-0.5, -1.0, -1.5]
    # Forward is the identity; the layer form reads lambda_ at call time.
    layer = GradientReversal(2.0)
    w = torch.tensor(3.0, requires_grad=True)
    y = layer(w * 2.0)
    assert y.item() == 6.0
    y.backward()
    assert w.grad.item() == -4.0  # d(2w)/dw = 2, reversed and scaled by 2


def test_dann_lambda_schedule():
    assert dann_lambda(0.0) == 0.0
    assert 0.99 < dann_lambda(1.0) < 1.0
    values = [dann_lambda(p / 10) for p in range(11)]
    assert values == sorted(values)


def test_backbone_resolution():
    assert resolve_backbone("auto", 64, False) == "mlp"
    assert resolve_backbone("auto", 128, True) == "snsa"
    assert resolve_backbone("auto", 768, True) == "attention"
    with pytest.raises(ConfigError, match="unknown backbone 'cnn'"):
        resolve_backbone("cnn", 10, True)
    with pytest.raises(ConfigError, match="vectors"):
        resolve_backbone("snsa", 10, False)
    with pytest.raises(ConfigError, match="bad parameters"):
        build_backbone("mlp", 10, False, {"widths": 3})
    assert build_backbone("mlp", 10, False, {"hidden_dims": [7]}).output_dim == 7


def test_bad_backbone_values_raise_config_errors():
    from emobridge.models import SNSA

    with pytest.raises(ConfigError, match="kernel_size"):
        SNSA(input_dim=8, kernel_size=4)
    with pytest.raises(ConfigError, match="bad parameters"):
        build_backbone("mlp", 10, False, {"hidden_dims": [-3]})
    with pytest.raises(ConfigError, match="bad parameters"):
        build_backbone("attention", 10, True, {"hidden_dim": 8, "dropout": 2.0})
