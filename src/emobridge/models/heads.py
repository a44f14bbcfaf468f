"""Heads over precomputed features, and the classifier wrapper every torch method trains.

- :class:`MLPHead`: pooled-embedding MLP. Vectors go straight in; frame sequences are
  mean-pooled over real frames first (masked).
- :class:`AttentionHead`: frames of an encoder (Whisper, wav2vec 2.0...) -> per-frame
  projection -> masked self-attention pooling.
- :class:`EmotionClassifier`: ``backbone`` (-> embedding) + linear classifier.

Every backbone/head exposes ``output_dim`` (embedding size) and ``forward(x, mask=None)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from emobridge.models.layers import AttentionPooling, masked_mean


class MLPHead(nn.Module):
    """Pooled embedding -> ``Linear -> ReLU -> Dropout`` per hidden layer.

    Parameters
    ----------
    input_dim:
        Feature dimension.
    hidden_dims:
        Widths of the hidden layers; the last one is the embedding size. Empty: the (pooled)
        input itself is the embedding.
    dropout:
        Dropout after each hidden layer (and on the input, at ``input_dropout``).
    input_dropout:
        Dropout on the pooled input (0 disables).
    """

    def __init__(self, input_dim: int, hidden_dims: Sequence[int] = (256,),
                 dropout: float = 0.3, input_dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if input_dropout > 0:
            layers.append(nn.Dropout(input_dropout))
        width = input_dim
        for h in hidden_dims:
            layers += [nn.Linear(width, int(h)), nn.ReLU(), nn.Dropout(dropout)]
            width = int(h)
        self.net = nn.Sequential(*layers)
        self.output_dim = width

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() == 3:
            x = masked_mean(x, mask)
        return self.net(x)


class AttentionHead(nn.Module):
    """Encoder frames -> ``Linear -> ReLU -> Dropout`` per frame -> masked attention pooling.

    Parameters
    ----------
    input_dim:
        Encoder feature dimension.
    hidden_dim:
        Per-frame projection width (0: no projection, attend over the raw frames).
    attention_dim, heads:
        See :class:`~emobridge.models.layers.AttentionPooling`.
    dropout:
        Dropout after the projection and on the pooled vector.
    """

    def __init__(self, input_dim: int, hidden_dim: int = 256, attention_dim: int = 128,
                 heads: int = 1, dropout: float = 0.3) -> None:
        super().__init__()
        if hidden_dim:
            self.proj: nn.Module = nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.ReLU(),
                                                 nn.Dropout(dropout))
            width = hidden_dim
        else:
            self.proj = nn.Identity()
            width = input_dim
        self.pool = AttentionPooling(width, attention_dim, heads)
        self.dropout = nn.Dropout(dropout)
        self.output_dim = self.pool.output_dim

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() == 2:  # one vector per utterance: a single "frame"
            x = x.unsqueeze(1)
            mask = None
        return self.dropout(self.pool(self.proj(x), mask))


class EmotionClassifier(nn.Module):
    """``backbone`` (features -> embedding) followed by a linear classifier.

    Methods add their own modules as attributes (DANN's domain classifier...) so one
    ``state_dict`` holds everything.
    """

    def __init__(self, backbone: nn.Module, n_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.embedding_dim = int(backbone.output_dim)
        self.classifier = nn.Linear(self.embedding_dim, n_classes)

    def embed(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The pooled representation the classifier sees, ``(batch, embedding_dim)``."""
        return self.backbone(x, mask)

    def classify(self, embedding: torch.Tensor) -> torch.Tensor:
        """Logits from an embedding."""
        return self.classifier(embedding)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.classifier(self.backbone(x, mask))
