"""Trainable parts of ``transformers`` speech encoders (wav2vec 2.0, XLS-R, HuBERT) that run
on frames cached in the feature store, for ``deep_wccn``.

- :class:`HFTopLayers`: the top ``n`` transformer layers, on ``hidden_states[K]``.
- :class:`HFTransformer`: everything above the convolutional front end (feature
  projection, positional convolution, every layer), on the front end's output
  (``hf:...,layer=cnn``), optionally with the wav2vec 2.0 pre-training loss.

Both load a checkpoint the way the ``hf`` extractor does (hub id, alias or folder).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from emobridge.errors import ConfigError

__all__ = ["HF_TOP_LAYER_TYPES", "HFTopLayers", "HFTransformer"]

#: ``transformers`` model types whose encoder layers take ``(hidden_states, attention_mask)``
#: alone, so any top slice of them runs on cached hidden states.
HF_TOP_LAYER_TYPES = ("wav2vec2", "hubert")


class HFTopLayers(nn.Module):
    """The top ``n`` transformer layers of a ``transformers`` wav2vec 2.0 / HuBERT encoder
    (plus the final LayerNorm of stable-layer-norm models such as XLS-R), run on
    ``hidden_states[K]``, ``K = layers - n``: ``top(hidden_states[K], mask)`` equals the
    full model's last hidden state on the real frames.
    """

    def __init__(self, model: nn.Module, n_layers: int) -> None:
        super().__init__()
        config = model.config
        kind = getattr(config, "model_type", "?")
        if kind not in HF_TOP_LAYER_TYPES:
            raise _unsupported(kind)
        total = len(model.encoder.layers)
        if not 1 <= n_layers <= total:
            raise ConfigError(f"deep_wccn: trainable_layers={n_layers} but the encoder has "
                              f"{total} layers")
        self.config = config
        self.layers = copy.deepcopy(model.encoder.layers[total - n_layers:])
        stable = bool(getattr(config, "do_stable_layer_norm", False))
        self.layer_norm = copy.deepcopy(model.encoder.layer_norm) if stable else None

    @classmethod
    def from_pretrained(cls, name: str, n_layers: int, input_dim: int) -> HFTopLayers:
        """Load ``name`` (hub id, alias or folder); ``input_dim`` must be its hidden size."""
        model = _load(name, ssl=False)
        width = int(model.config.hidden_size)
        if width != input_dim:
            raise ConfigError(f"deep_wccn: the features have {input_dim} dims but "
                              f"{name!r} has hidden size {width}")
        return cls(model, n_layers).float()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        attention = None
        if mask is not None and not bool(mask.all()):
            try:
                from transformers.masking_utils import create_bidirectional_mask

                attention = create_bidirectional_mask(config=self.config, inputs_embeds=x,
                                                      attention_mask=mask.long())
            except ImportError:  # transformers 4: an additive (batch, 1, 1, frames) mask
                attention = (~mask[:, None, None, :]).to(x.dtype) * torch.finfo(x.dtype).min
        for layer in self.layers:
            out = layer(x, attention_mask=attention)
            x = out[0] if isinstance(out, tuple) else out
        return x if self.layer_norm is None else self.layer_norm(x)


def _unsupported(kind: str) -> ConfigError:
    return ConfigError(f"deep_wccn: cannot fine-tune a {kind!r} encoder on cached frames "
                       f"(supported: {', '.join(HF_TOP_LAYER_TYPES)})")


def _load(name: str, ssl: bool) -> nn.Module:
    """``name`` as ``AutoModel`` (or ``Wav2Vec2ForPreTraining`` with ``ssl``), on the CPU."""
    from transformers import AutoConfig, AutoModel, Wav2Vec2ForPreTraining

    from emobridge.features.extractors.hf_encoder import HFEncoder, load_pretrained

    name = HFEncoder(model=name).model  # alias -> hub id, folder -> absolute path
    try:
        kind = AutoConfig.from_pretrained(name).model_type
        if kind not in HF_TOP_LAYER_TYPES:
            raise _unsupported(kind)
        if not ssl:
            return load_pretrained(AutoModel, name)[0]
        if kind != "wav2vec2":
            raise ConfigError(f"deep_wccn: ssl_loss_weight needs a wav2vec 2.0 pre-training "
                              f"checkpoint; {name!r} is a {kind!r} model")
        model, missing = load_pretrained(Wav2Vec2ForPreTraining, name)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"deep_wccn: cannot load encoder {name!r}: {exc}") from None
    missing = [k for k in missing if k.startswith(("quantizer.", "project_"))]
    if missing:
        raise ConfigError(f"deep_wccn: {name!r} has no wav2vec 2.0 pre-training head "
                          f"({', '.join(missing[:3])} missing); ssl_loss_weight needs a "
                          "pre-training checkpoint such as facebook/wav2vec2-large-xlsr-53")
    return model


class HFTransformer(nn.Module):
    """Everything of a wav2vec 2.0 / XLS-R / HuBERT model above its convolutional front end
    (feature projection, positional convolution, every transformer layer), run on the front
    end's output as the feature store caches it (``hf:model=<same>,layer=cnn,pooling=none``):
    ``model(cnn, mask)`` equals the full model's last hidden state on the real frames. The
    front end itself stays frozen, as wav2vec 2.0 fine-tuning freezes it by default.

    With ``ssl=True`` (a wav2vec 2.0 pre-training checkpoint) the quantizer and the two
    projections of the pre-training head are kept too, and :meth:`forward_ssl` runs one
    masked pass that returns the hidden states and the wav2vec 2.0 loss (the paper's eq. 3:
    contrastive loss over masked frames against ``num_negatives`` distractors from the same
    utterance, plus ``diversity_loss_weight`` (0.1) times the codebook diversity loss), summed
    over masked frames as ``transformers``' ``Wav2Vec2ForPreTraining`` sums it. Masking:
    spans of ``mask_time_length`` frames (the checkpoint's config, 10) started with
    probability ``mask_prob``, inside each utterance's real frames. Utterances with fewer
    than 2 masked frames (shorter than a span) add no loss.
    """

    def __init__(self, model: nn.Module, ssl: bool = False, mask_prob: float = 0.065) -> None:
        super().__init__()
        base = getattr(model, "wav2vec2", model)
        self.config = base.config
        if self.config.model_type not in HF_TOP_LAYER_TYPES:
            raise _unsupported(self.config.model_type)
        self.feature_projection = base.feature_projection
        self.encoder = base.encoder
        self.output_dim = int(self.config.hidden_size)  # frames in: conv_dim[-1] wide
        self.ssl = ssl
        self.mask_prob = float(mask_prob)
        if not ssl:
            return
        if not hasattr(model, "quantizer"):
            raise ConfigError("deep_wccn: ssl_loss_weight needs a wav2vec 2.0 pre-training "
                              "model (Wav2Vec2ForPreTraining)")
        embed = getattr(base, "masked_spec_embed", None)  # absent when its config masks nothing
        self.masked_spec_embed = embed if embed is not None else nn.Parameter(
            torch.rand(self.config.hidden_size))
        self.quantizer, self.dropout_features = model.quantizer, model.dropout_features
        self.project_hid, self.project_q = model.project_hid, model.project_q

    @classmethod
    def from_pretrained(cls, name: str, input_dim: int, ssl: bool = False,
                        mask_prob: float = 0.065) -> HFTransformer:
        """Load ``name`` (hub id, alias or folder); ``input_dim`` must be the front end's
        width (``conv_dim[-1]``)."""
        model = _load(name, ssl)
        width = int(model.config.conv_dim[-1])
        if width != input_dim:
            raise ConfigError(f"deep_wccn: the features have {input_dim} dims but the "
                              f"convolutional front end of {name!r} gives {width}; "
                              f"trainable_layers='all' reads hf:model=...,layer=cnn,"
                              "pooling=none")
        return cls(model, ssl, mask_prob).float()

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.feature_projection(x)  # wav2vec 2.0 also returns the normed input
        return out if isinstance(out, tuple) else (out, None)

    def _encode(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.encoder(hidden, attention_mask=None if mask is None else mask.bool())[0]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(batch, frames, conv_dim[-1])``, ``mask`` True on real frames."""
        return self._encode(self._project(x)[0], mask)

    def forward_ssl(self, x: torch.Tensor, mask: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One masked pass: ``(hidden states, wav2vec 2.0 loss)``."""
        from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices

        batch, frames, _ = x.shape
        valid = (torch.ones(batch, frames, dtype=torch.bool, device=x.device)
                 if mask is None else mask.bool())
        hidden, normed = self._project(x)
        span = int(self.config.mask_time_length)
        if frames < span:  # no span fits: an unmasked pass, no loss
            return self._encode(hidden, mask), hidden.new_zeros(())
        masked = torch.from_numpy(_compute_mask_indices(
            (batch, frames), self.mask_prob, span, attention_mask=valid.long().cpu(),
            min_masks=int(self.config.mask_time_min_masks))).to(x.device) & valid
        hidden = torch.where(masked[..., None], self.masked_spec_embed.to(hidden.dtype), hidden)
        hidden = self._encode(hidden, mask)
        keep = masked.sum(dim=1) >= 2  # a positive needs another masked frame as distractor
        if not bool(keep.any()):
            return hidden, hidden.new_zeros(())
        return hidden, self._pretraining_loss(hidden[keep], normed[keep], masked[keep])

    def _pretraining_loss(self, hidden: torch.Tensor, normed: torch.Tensor,
                          masked: torch.Tensor) -> torch.Tensor:
        from transformers import Wav2Vec2ForPreTraining
        from transformers.models.wav2vec2.modeling_wav2vec2 import _sample_negative_indices

        config = self.config
        predicted = self.project_hid(hidden)
        quantized, perplexity = self.quantizer(self.dropout_features(normed),
                                               mask_time_indices=masked)
        quantized = self.project_q(quantized.to(self.project_q.weight.dtype))
        batch, frames, dim = quantized.shape
        picks = _sample_negative_indices((batch, frames), int(config.num_negatives),
                                         masked.cpu().numpy())
        picks = torch.from_numpy(picks.astype(np.int64)).to(hidden.device).view(-1)
        negatives = quantized.reshape(-1, dim)[picks].view(batch, frames, -1, dim)
        negatives = negatives.permute(2, 0, 1, 3)  # (negatives, batch, frames, dim)
        logits = Wav2Vec2ForPreTraining.compute_contrastive_logits(
            quantized[None], negatives, predicted, config.contrastive_logits_temperature)
        same = (quantized[None] == negatives).all(-1)  # a distractor equal to the positive
        logits = torch.cat([logits[:1], logits[1:].masked_fill(same, float("-inf"))])
        logits = logits.permute(1, 2, 0)[masked]  # (masked frames, 1 + negatives)
        target = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
        contrastive = nn.functional.cross_entropy(logits.float(), target, reduction="sum")
        codes = int(config.num_codevectors_per_group) * int(config.num_codevector_groups)
        diversity = (codes - perplexity) / codes * masked.sum()
        return contrastive + float(config.diversity_loss_weight) * diversity
