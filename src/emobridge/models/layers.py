"""Small building blocks shared by backbones and methods: padding masks, masked pooling,
self-attention pooling and the gradient-reversal layer (Ganin & Lempitsky, 2015).

Mask convention everywhere: a boolean tensor ``(batch, frames)``, ``True`` on real frames and
``False`` on padding.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def lengths_to_mask(lengths: torch.Tensor, max_frames: int | None = None) -> torch.Tensor:
    """Boolean ``(batch, max_frames)`` mask, ``True`` for the first ``lengths[i]`` frames."""
    lengths = torch.as_tensor(lengths)
    max_frames = int(lengths.max().item()) if max_frames is None and len(lengths) else (
        max_frames or 0)
    steps = torch.arange(max_frames, device=lengths.device)
    return steps.unsqueeze(0) < lengths.unsqueeze(1)


def mask_lengths(mask: torch.Tensor) -> torch.Tensor:
    """Number of real frames per row of a mask, int64 ``(batch,)``."""
    return mask.sum(dim=1).to(torch.int64)


def downsample_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """Mask after a ``MaxPool1d(factor)`` (floor mode): a pooled frame is real when its whole
    window lies inside the utterance. Rows keep at least one real frame so every utterance,
    however short, yields an output.
    """
    lengths = mask_lengths(mask) // factor
    lengths = lengths.clamp(min=1)
    return lengths_to_mask(lengths, mask.shape[1] // factor)


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over frames of ``x`` ``(batch, frames, dims)`` counting only real frames."""
    if mask is None:
        return x.mean(dim=1)
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None, dim: int = 1) -> torch.Tensor:
    """Softmax of ``scores`` along ``dim`` with padded positions given zero weight."""
    if mask is not None:
        while mask.dim() < scores.dim():
            mask = mask.unsqueeze(-1)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=dim)


class AttentionPooling(nn.Module):
    """Self-attention pooling ``a = softmax(W2 tanh(W1 H))``, ``h = a H`` (NNPM eq. 1-2).

    Parameters
    ----------
    input_dim:
        Dimension of each frame of ``H``.
    attention_dim:
        Rows of ``W1`` (the hidden size of the scoring MLP).
    heads:
        Rows of ``W2``: ``heads`` attention distributions whose pooled vectors are
        concatenated (output ``heads * input_dim``). The paper's equation has one.
    """

    def __init__(self, input_dim: int, attention_dim: int = 64, heads: int = 1) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.heads = heads
        self.w1 = nn.Linear(input_dim, attention_dim)
        self.w2 = nn.Linear(attention_dim, heads, bias=False)

    @property
    def output_dim(self) -> int:
        return self.input_dim * self.heads

    def weights(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention weights ``(batch, frames, heads)``; zero on padding, summing to 1."""
        return masked_softmax(self.w2(torch.tanh(self.w1(h))), mask, dim=1)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        a = self.weights(h, mask)  # (B, T, heads)
        pooled = torch.einsum("bth,btd->bhd", a, h)
        return pooled.reshape(h.shape[0], -1)


class _GradientReversalFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, lambda_: float) -> torch.Tensor:  # type: ignore[override]
        ctx.lambda_ = lambda_
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return -ctx.lambda_ * grad, None


def grad_reverse(x: torch.Tensor, lambda_: float = 1.0) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient by ``-lambda_`` going back."""
    return _GradientReversalFn.apply(x, float(lambda_))


class GradientReversal(nn.Module):
    """Gradient-reversal layer; set :attr:`lambda_` during training (e.g. by
    :func:`dann_lambda`)."""

    def __init__(self, lambda_: float = 1.0) -> None:
        super().__init__()
        self.lambda_ = float(lambda_)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_reverse(x, self.lambda_)

    def extra_repr(self) -> str:
        return f"lambda_={self.lambda_}"


def dann_lambda(progress: float, gamma: float = 10.0) -> float:
    """Ganin et al.'s schedule ``2 / (1 + exp(-gamma p)) - 1`` for training progress ``p``
    in [0, 1]: 0 at the start, close to 1 at the end."""
    p = min(max(float(progress), 0.0), 1.0)
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0
