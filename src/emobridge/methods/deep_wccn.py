"""``deep_wccn``: end-to-end encoder transfer with a Deep-WCCN layer (the wav2vec 2.0 +
Deep-WCCN paper, section 3).

Model: ``encoder -> statistics pooling (mean and std over real frames) -> FC -> ReLU ->
dropout -> Deep-WCCN -> LayerNorm -> linear``, trained with cross-entropy and Adagrad
(paper section 4.5: lr 3e-4, batch 14, hidden 192; weight decay, dropout and the WCCN
smoothing from its Table 3, ENCH column: 5e-4, 0.3, 0.4).

Inputs (``encoder``):

- ``None``: the features go straight in. Vectors (pooled frozen features, e.g.
  ``whisper:layer=3,pooling=meanstd``) feed the FC layer directly; frames (e.g.
  ``whisper:backend=torch,layer=3,pooling=none``) are statistics-pooled first. Fast.
- ``"whisper"``: the top ``trainable_layers = N`` transformer layers of a Whisper encoder
  (``encoder_model``: ``"base"`` for the offline Whisper base, a CTranslate2 folder, or a
  ``transformers`` Whisper hub id / folder) are fine-tuned on cached frames of the frozen
  layers below. The features must be the frames of layer ``K = total layers - N``:
  ``whisper:model=<same>,backend=torch,layer=K,pooling=none`` (Whisper base has 6 layers:
  ``trainable_layers=2`` needs ``layer=4``). ``N = total`` fine-tunes every transformer layer
  (features ``layer=0``; the convolutional stem stays frozen). On 2 CPU cores an epoch then
  runs only the top ``N`` layers.

- ``"hf"``: the same with a Hugging Face wav2vec 2.0 / XLS-R / HuBERT encoder
  (``encoder_model``: a hub id, an alias of the ``hf`` extractor such as ``xlsr-53``, or a
  local folder) on frames of ``hf:model=<same>,layer=K,pooling=none``, ``K = total - N``
  (XLS-R 53 has 24 layers; ``N = 24`` fine-tunes every transformer layer). WavLM's layers
  share a relative position bias computed in the first layer, so starting above it is
  refused. ``trainable_layers="all"`` fine-tunes everything above the convolutional front
  end (feature projection, positional convolution, every layer) on the front end's cached
  output, ``hf:model=<same>,layer=cnn,pooling=none``. The paper fine-tunes end to end; the
  front end stays frozen here (as wav2vec 2.0 fine-tuning recipes freeze it by default) so
  that its output can be cached.

The paper's auxiliary wav2vec 2.0 loss (its eq. 9: ``CE + ssl_loss_weight * L_w2v``) needs
``encoder="hf"``, ``trainable_layers="all"`` and a wav2vec 2.0 pre-training checkpoint (with
its quantizer, e.g. ``facebook/wav2vec2-large-xlsr-53``; a fine-tuned ASR checkpoint has
none and is refused). Each training batch then makes one masked pass
(:meth:`~emobridge.models.hf_encoder.HFTransformer.forward_ssl`; spans of 10 frames started
with probability ``ssl_mask_prob``, wav2vec 2.0's 0.065 by default): the contrastive and
diversity losses come from the masked frames and the classifier pools the same pass, as
wav2vec 2.0 fine-tuning masks its input. Prediction runs unmasked. ``L_w2v`` is summed over
masked frames (``transformers``' convention), so its weight is small: the paper tuned it to
8e-4 .. 1.7e-3 (its Table 3). The paper's 0.1 is the diversity weight inside ``L_w2v`` (its
eq. 3), taken from the checkpoint's config.

Training data: source plus ``target_labelled`` (few-shot target speech, the paper's section
5.4). ``balance_languages`` repeats the utterances of smaller languages so each training
language contributes about as many rows per epoch as the largest (the paper's repetition of
smaller corpora, section 4.3; the few-shot target rows count as one more language).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from emobridge.errors import ConfigError
from emobridge.methods.base import register_method
from emobridge.methods.data import EmotionData
from emobridge.methods.neural import DomainLoss, FeatureNormaliser, NeuralMethod, Normalise
from emobridge.methods.phases import FitData
from emobridge.models.hf_encoder import HFTopLayers, HFTransformer
from emobridge.models.wccn import DeepWCCN
from emobridge.protocols import balance_by_repetition
from emobridge.training import Batch, EpochContext, TrainConfig

__all__ = ["DeepWCCNClassifier", "DeepWCCNMethod", "statistics_pooling"]


def statistics_pooling(x: torch.Tensor, mask: torch.Tensor | None, eps: float = 1e-5
                       ) -> torch.Tensor:
    """Mean and standard deviation over the real frames of ``x`` ``(batch, frames, d)``,
    concatenated: ``(batch, 2 d)`` (paper eq. 8)."""
    if mask is None:
        mean = x.mean(dim=1)
        var = x.var(dim=1, unbiased=False)
    else:
        w = mask.to(x.dtype).unsqueeze(-1)
        n = w.sum(dim=1).clamp(min=1.0)
        mean = (x * w).sum(dim=1) / n
        var = (((x - mean.unsqueeze(1)) ** 2) * w).sum(dim=1) / n
    return torch.cat([mean, torch.sqrt(var + eps)], dim=1)


class DeepWCCNClassifier(nn.Module):
    """``encoder`` (optional) -> statistics pooling (frames) -> FC -> ReLU -> dropout ->
    Deep-WCCN (optional) -> LayerNorm -> linear.

    ``forward(x, mask, y)`` / ``embed(x, mask, y)``: labels ``y`` update the Deep-WCCN
    statistics in training mode; without them the stored projection is applied.
    """

    def __init__(self, input_dim: int, is_sequence: bool, n_classes: int, hidden_dim: int,
                 dropout: float, wccn: bool, smoothing: float,
                 encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.is_sequence = is_sequence
        width = int(getattr(encoder, "output_dim", input_dim))  # an encoder may widen frames
        pooled = 2 * width if is_sequence else width
        self.fc = nn.Sequential(nn.Linear(pooled, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.wccn = DeepWCCN(hidden_dim, n_classes, smoothing) if wccn else None
        self.norm = nn.LayerNorm(hidden_dim)
        self.classifier = nn.Linear(hidden_dim, n_classes)
        self.embedding_dim = hidden_dim

    def embed(self, x: torch.Tensor, mask: torch.Tensor | None = None,
              y: torch.Tensor | None = None) -> torch.Tensor:
        """The classifier's input (after Deep-WCCN and LayerNorm), ``(batch, hidden)``."""
        if x.dim() == 3 and self.encoder is not None:
            x = self.encoder(x, mask)
        return self._head(x, mask, y)

    def _head(self, x: torch.Tensor, mask: torch.Tensor | None, y: torch.Tensor | None
              ) -> torch.Tensor:
        if x.dim() == 3:
            x = statistics_pooling(x, mask)
        h = self.fc(x)
        if self.wccn is not None:
            h = self.wccn(h, y)
        return self.norm(h)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                y: torch.Tensor | None = None) -> torch.Tensor:
        return self.classifier(self.embed(x, mask, y))

    def forward_ssl(self, x: torch.Tensor, mask: torch.Tensor | None, y: torch.Tensor | None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the encoder's wav2vec 2.0 loss from one masked pass (training)."""
        hidden, ssl = self.encoder.forward_ssl(x, mask)
        return self.classifier(self._head(hidden, mask, y)), ssl


@register_method
class DeepWCCNMethod(NeuralMethod):
    """Encoder transfer with statistics pooling and Deep-WCCN (see the module docstring).

    Parameters
    ----------
    wccn:
        ``False``: the ablation without the Deep-WCCN layer.
    smoothing:
        Deep-WCCN smoothing ``alpha`` in [0, 1] (paper eq. 7).
    hidden_dim, dropout:
        Width of the FC layer (paper 192) and the dropout after it.
    encoder:
        ``None`` (features in directly), ``"whisper"`` or ``"hf"`` (fine-tune the encoder's
        top layers).
    encoder_model:
        Whisper: ``"base"`` (offline), a CTranslate2 folder or a ``transformers`` Whisper
        hub id / folder; hf: a hub id, alias or folder.
    trainable_layers:
        ``N``: encoder layers fine-tuned on frames of layer ``K = total - N``; ``"all"``
        (``hf`` only): everything above the convolutional front end, on its output.
    ssl_loss_weight:
        Weight of the auxiliary wav2vec 2.0 loss beside the cross-entropy (paper eq. 9,
        tuned to about 1e-3); 0 (default) turns it off. Needs ``encoder="hf"``,
        ``trainable_layers="all"`` and a pre-training checkpoint.
    ssl_mask_prob:
        Probability that a frame starts a masked span for that loss (wav2vec 2.0: 0.065).
    balance_languages:
        Repeat smaller training languages to the size of the largest.
    normalise:
        Input standardisation; ``None`` (default): ``"per_corpus"`` without an encoder (as
        every neural method, see :class:`~emobridge.methods.neural.NeuralMethod`),
        ``"none"`` with one (its layers expect raw hidden states).
    backbone, backbone_params:
        Unused (the architecture is fixed); kept for the shared contract, must stay default.
    class_weight, ..., resume:
        As :class:`~emobridge.methods.neural.NeuralMethod`; the optimiser is Adagrad.
    """

    name = "deep_wccn"

    def __init__(
        self,
        *,
        wccn: bool = True,
        smoothing: float = 0.4,
        hidden_dim: int = 192,
        dropout: float = 0.3,
        encoder: str | None = None,
        encoder_model: str = "base",
        trainable_layers: int | Literal["all"] = 2,
        ssl_loss_weight: float = 0.0,
        ssl_mask_prob: float = 0.065,
        balance_languages: bool = True,
        backbone: str = "auto",
        backbone_params: Mapping[str, Any] | None = None,
        normalise: Normalise | None = None,
        class_weight: str | None = None,
        epochs: int = 50,
        batch_size: int = 14,
        lr: float = 3e-4,
        weight_decay: float = 5e-4,
        lr_decay_gamma: float = 1.0,
        lr_decay_every_epochs: int = 0,
        patience: int | None = None,
        crop_frames: int | None = None,
        max_grad_norm: float | None = None,
        device: str = "auto",
        seed: int = 0,
        checkpoint_dir: str | Path | None = None,
        log_csv: str | Path | None = None,
        progress: bool = False,
        resume: bool = False,
        domain_loss: DomainLoss = "none",
        domain_loss_weight: float = 1.0,
        domain_loss_layer: str = "embedding",
        domain_loss_params: Mapping[str, Any] | None = None,
    ) -> None:
        self._store_params(locals())

    def check_params(self) -> None:
        if self.encoder not in (None, "whisper", "hf"):
            raise ConfigError(f"deep_wccn: encoder must be null, 'whisper' or 'hf', got "
                              f"{self.encoder!r}")
        if self.encoder == "hf" and self.encoder_model == "base":
            raise ConfigError("deep_wccn: encoder 'hf' needs encoder_model (a hub id such as "
                              "facebook/wav2vec2-large-xlsr-53, an alias or a folder)")
        if not 0.0 <= self.smoothing <= 1.0:
            raise ConfigError(f"deep_wccn: smoothing must be in [0, 1], got {self.smoothing}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"deep_wccn: dropout must be in [0, 1), got {self.dropout}")
        if self.hidden_dim < 1:
            raise ConfigError(f"deep_wccn: hidden_dim must be >= 1, got {self.hidden_dim}")
        self._check_encoder_params()
        if self.backbone != "auto" or self.backbone_params:
            raise ConfigError("deep_wccn: backbone and backbone_params are not used (the "
                              "architecture is fixed); leave them unset")

    def _check_encoder_params(self) -> None:
        if self.trainable_layers == "all" and self.encoder != "hf":
            raise ConfigError("deep_wccn: trainable_layers='all' reads the convolutional front "
                              "end's output, which only encoder 'hf' has (Whisper: give the "
                              "number of layers, 6 for base, on layer=0 frames)")
        if not (self.ssl_loss_weight >= 0 and 0 < self.ssl_mask_prob <= 1):
            raise ConfigError(f"deep_wccn: ssl_loss_weight must be >= 0 and ssl_mask_prob in "
                              f"(0, 1], got {self.ssl_loss_weight} and {self.ssl_mask_prob}")
        if self.ssl_loss_weight > 0 and self.trainable_layers != "all":
            raise ConfigError("deep_wccn: ssl_loss_weight needs encoder 'hf' with "
                              "trainable_layers: all (the loss masks the projected front-end "
                              "output and quantizes it)")
        if (self.encoder is not None and self.trainable_layers != "all"
                and self.trainable_layers < 1):
            raise ConfigError(f"deep_wccn: trainable_layers must be >= 1 with encoder "
                              f"{self.encoder!r}, got {self.trainable_layers} (use encoder: "
                              "null for a frozen encoder)")
        if self.encoder is not None and self.normalise not in (None, "none"):
            raise ConfigError(f"deep_wccn: normalise={self.normalise!r} would feed "
                              "standardised frames to the encoder layers; use null or 'none'")

    def select_data(self, data: FitData) -> FitData:
        if self.encoder is not None and not data.source.is_sequence:
            raise ConfigError(f"deep_wccn: encoder {self.encoder!r} needs frame features "
                              f"(pooling=none), got vectors of {data.source.dim} dims")
        return data

    def build_encoder(self) -> nn.Module | None:
        """The trainable top encoder layers (``None`` without an encoder)."""
        if self.encoder is None:
            return None
        if self.trainable_layers == "all":
            return HFTransformer.from_pretrained(self.encoder_model, self.input_dim_,
                                                 ssl=self.ssl_loss_weight > 0,
                                                 mask_prob=self.ssl_mask_prob)
        if self.encoder == "hf":
            return HFTopLayers.from_pretrained(self.encoder_model, self.trainable_layers,
                                               self.input_dim_)
        from emobridge.features.extractors.whisper import WhisperExtractor
        from emobridge.models.whisper_encoder import WhisperTopLayers

        full = WhisperExtractor(model=self.encoder_model, backend="torch").load()
        if full.config.d_model != self.input_dim_:
            raise ConfigError(f"deep_wccn: the features have {self.input_dim_} dims but "
                              f"Whisper {self.encoder_model!r} has d_model "
                              f"{full.config.d_model}")
        if self.trainable_layers > full.config.n_layers:
            raise ConfigError(f"deep_wccn: trainable_layers={self.trainable_layers} but "
                              f"Whisper {self.encoder_model!r} has {full.config.n_layers} "
                              "layers")
        return WhisperTopLayers.from_encoder(full, self.trainable_layers)

    def build_model(self) -> nn.Module:
        return DeepWCCNClassifier(self.input_dim_, self.is_sequence_, len(self.classes_),
                                  self.hidden_dim, self.dropout, self.wccn, self.smoothing,
                                  encoder=self.build_encoder())

    def fit_normaliser(self, data: FitData) -> FeatureNormaliser:
        mode = self.normalise or ("none" if self.encoder is not None else "per_corpus")
        return FeatureNormaliser(mode).fit(self.normalisation_sets(data))

    def training_streams(self, data: FitData) -> dict[str, EmotionData]:
        train = EmotionData.concat([data.source, *([data.target_labelled]
                                                   if data.target_labelled is not None else [])])
        if self.balance_languages:
            groups = train.languages.astype(str).copy()
            n_source = len(data.source)
            groups[n_source:] = "__target_labelled__"  # few-shot rows: one more group
            train = train.subset(balance_by_repetition(groups))
        return {"train": train}

    def make_optimizer(self, model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
        """Adagrad (paper section 4.5) with the configured lr and weight decay."""
        return torch.optim.Adagrad([p for p in model.parameters() if p.requires_grad],
                                   lr=config.lr, weight_decay=config.weight_decay)

    def training_step(self, batches: dict[str, Batch], ctx: EpochContext
                      ) -> dict[str, torch.Tensor]:
        batch = batches["train"]
        if self.ssl_loss_weight == 0:
            logits = self.model_(batch.x, batch.mask, batch.y)
            ce = self.supervised_loss(batch, logits)
            return {"loss": ce, "ce": ce.detach()}
        logits, ssl = self.model_.forward_ssl(batch.x, batch.mask, batch.y)
        ce = self.supervised_loss(batch, logits)
        return {"loss": ce + self.ssl_loss_weight * ssl, "ce": ce.detach(),
                "ssl": ssl.detach()}
