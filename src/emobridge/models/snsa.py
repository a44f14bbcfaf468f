"""SNSA: the self-attention CNN-BiLSTM branch of NNPM's Siamese network (Li et al., NNPM,
section 2.1, following Li et al., Interspeech 2019).

Per branch: two convolution layers, each followed by temporal max pooling and ReLU; a
2-layer bidirectional LSTM with dropout 0.5 after each layer; self-attention pooling
``a = softmax(W2 tanh(W1 H))``, ``h = a H``. The "Siamese" part is weight sharing: the same
module embeds source and target spectrograms.

Choices the paper leaves open (all parameters):

- Convolutions are 1-D over time with the mel bins as input channels (``Conv1d``): a log-mel
  frame is one vector, so the receptive field is ``kernel_size`` frames over all bins. Two
  layers of 128 channels, kernel 5, ``same`` zero padding; max pooling by 2 over time
  after each (so the LSTM runs at a quarter of the frame rate).
- BiLSTM: 80 hidden units per direction (160 per frame after concatenation).
- Attention: ``W1`` 64 x 160, one attention head.

With 128 mel bins this gives about 0.46 M parameters (plus the linear classifier).

Padding: masked frames are zeroed before each convolution (so a padded utterance sees the
same zeros as the convolution's own padding), pooled masks follow the pooling, the LSTM runs
on packed sequences and attention ignores padding. A padded utterance therefore yields the
same embedding as the same utterance alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from emobridge.errors import ConfigError, FeatureError
from emobridge.models.layers import AttentionPooling, downsample_mask, mask_lengths


class SNSA(nn.Module):
    """Conv1d x2 (+ max pool + ReLU) -> BiLSTM x2 (+ dropout) -> attention pooling.

    Parameters
    ----------
    input_dim:
        Features per frame (mel bins).
    conv_channels:
        Output channels of each convolution layer (its length is the number of layers).
    kernel_size:
        Temporal kernel of every convolution (odd, ``same`` padding).
    pool_size:
        Temporal max-pooling factor after each convolution.
    lstm_hidden:
        Hidden units per direction of each BiLSTM layer.
    lstm_layers:
        Number of BiLSTM layers.
    dropout:
        Dropout after every BiLSTM layer.
    attention_dim, attention_heads:
        See :class:`~emobridge.models.layers.AttentionPooling`.
    """

    def __init__(self, input_dim: int = 128, conv_channels: Sequence[int] = (128, 128),
                 kernel_size: int = 5, pool_size: int = 2, lstm_hidden: int = 80,
                 lstm_layers: int = 2, dropout: float = 0.5, attention_dim: int = 64,
                 attention_heads: int = 1) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ConfigError(f"SNSA: kernel_size must be odd, got {kernel_size}")
        self.input_dim = input_dim
        self.pool_size = pool_size
        self.conv_layers = nn.ModuleList()
        width = input_dim
        for channels in conv_channels:
            self.conv_layers.append(nn.Conv1d(width, int(channels), kernel_size,
                                              padding=kernel_size // 2))
            width = int(channels)
        self.pool = nn.MaxPool1d(pool_size)
        self.lstm_layers = nn.ModuleList()
        for _ in range(lstm_layers):
            self.lstm_layers.append(nn.LSTM(width, lstm_hidden, batch_first=True,
                                            bidirectional=True))
            width = 2 * lstm_hidden
        self.dropout = nn.Dropout(dropout)
        self.attention = AttentionPooling(width, attention_dim, attention_heads)
        self.output_dim = self.attention.output_dim

    @property
    def min_frames(self) -> int:
        """Shortest input the pooling stack accepts; shorter inputs are zero-padded."""
        return self.pool_size ** len(self.conv_layers)

    def frame_states(
        self, x: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """BiLSTM outputs ``H`` ``(batch, frames', 2 * lstm_hidden)`` and their mask."""
        if x.dim() != 3:
            raise FeatureError(f"SNSA expects (batch, frames, {self.input_dim}), got "
                               f"{tuple(x.shape)}")
        b, t, _ = x.shape
        if mask is None:
            mask = torch.ones(b, t, dtype=torch.bool, device=x.device)
        if t < self.min_frames:
            pad = self.min_frames - t
            x = nn.functional.pad(x, (0, 0, 0, pad))
            mask = nn.functional.pad(mask, (0, pad), value=False)
        h = x.transpose(1, 2)  # (B, dims, T): mel bins are channels
        for conv in self.conv_layers:
            h = h * mask.unsqueeze(1).to(h.dtype)
            h = torch.relu(self.pool(conv(h)))
            mask = downsample_mask(mask, self.pool_size)
        h = h.transpose(1, 2) * mask.unsqueeze(-1).to(h.dtype)
        lengths = mask_lengths(mask).cpu()
        steps = h.shape[1]
        for lstm in self.lstm_layers:
            packed = pack_padded_sequence(h, lengths, batch_first=True, enforce_sorted=False)
            out, _ = lstm(packed)
            h, _ = pad_packed_sequence(out, batch_first=True, total_length=steps)
            h = self.dropout(h)
        return h, mask

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h, mask = self.frame_states(x, mask)
        return self.attention(h, mask)
