"""``nnpm``: Neural Network with Pseudo Multilabel (Li, Yan & Wang, "Unsupervised cross-lingual
speech emotion recognition using pseudo multilabel").

Training has two phases.

1. **Supervised pre-training** on the labelled source (cross-entropy, ``pretrain_epochs``
   epochs at ``pretrain_lr``; early stopping on ``validation`` when given), or the weights of
   a saved model (``pretrained``).
2. **Adaptation** (``epochs`` epochs, Adam at ``lr``). The dynamic external memory ``M`` gets
   one slot per source utterance, initialised with the L2-normalised embeddings of the
   pre-trained model (eval mode, whole utterances). Each step takes a source batch and a
   target batch:

   - the target embeddings are compared with every slot by cosine similarity
     (``M_read h_t``, the "prediction" of eq. 6);
   - the pseudo multilabel of a target utterance is 1 on the slots with similarity
     ``>= gamma`` and 0 elsewhere (eq. 4);
   - target loss ``L_t = L_pos + L_neg`` (eq. 8): MSE on the positive slots and on the hard
     negatives, the top ``hard_negative_ratio`` fraction of the negative slots by similarity
     (eq. 7); see :func:`~emobridge.models.memory.pseudo_multilabel_loss` for the
     normalisation (each part averaged over its own (utterance, slot) pairs);
   - total ``L = CE_source + target_weight * L_t`` (eq. 9);
   - after the loss is formed, the source batch's embeddings are written to their slots with
     eq. 3, ``M[A] = normalise(beta * normalise(h) + (1 - beta) * M[A])``, ``beta`` growing
     linearly per epoch from 0 (first adaptation epoch: the memory keeps the pre-trained
     features) to ``beta_max`` (last epoch). The written features are those of the training
     forward pass (train mode, dropout active, cropped when ``crop_frames`` is set), detached.

   The first ``freeze_conv_layers`` convolution layers of the backbone are frozen during
   adaptation (by default SNSA's two; backbones without convolution layers, e.g. the
   attention head over precomputed encoder features, freeze nothing by default: their
   encoder is already fixed. Asking them for frozen layers is an error, not a no-op).

Variants (the paper's ablations, ``variant``):

- ``"nnpm"``: the full method.
- ``"snsa_f"``: SNSA-F, the pre-trained source model applied as is (no adaptation; the memory
  is still built so every ``prediction`` mode works).
- ``"wo_sl"``: SNSA-wo-SL, no source cross-entropy in phase 2 (target loss only).
- ``"wo_hl"``: SNSA-wo-HL, no hard negative mining (every negative slot enters ``L_neg``).

Choices where the paper is silent (all parameters):

- ``no_positive``: a target utterance with no slot ``>= gamma`` takes its
  ``fallback_top_k`` nearest slots as positives (``"top_k"``, default: every target
  utterance then pulls towards its nearest source neighbourhood), or is left out of the
  target loss (``"skip"``), or keeps an all-zero multilabel (``"negatives_only"``, the
  literal reading).
- ``prediction``: how a target utterance gets an emotion. ``"classifier"`` (default): the
  source classifier head on the adapted embedding (what SNSA-F's "four emotional
  classifiers" suggest). ``"memory_vote"``: a similarity-weighted vote of the labels of the
  memory slots above ``gamma`` (or of the ``vote_top_k`` nearest when fewer pass), weights
  ``exp((s - s_max) / vote_temperature)``. ``"mix"``: the mean of both probability vectors.
  ``prediction`` is read only at prediction time, so it can be switched after ``fit`` with
  ``set_params``.
- ``epoch_stream``: which stream defines an adaptation epoch. ``"target"`` (default: the
  paper counts its 50 epochs in "target domain training" iterations; the source stream is
  cycled, reshuffled whenever it runs out, so every memory slot is still rewritten in turn)
  or ``"source"`` (every slot rewritten exactly once per epoch).
- Learning rates: the paper gives Adam 1e-4 with "a decay rate of 5e-5" for the adaptation,
  read here as ``weight_decay=5e-5``; pre-training settings are not given (the pre-trained
  SNSA comes from earlier work), so pre-training uses ``pretrain_lr`` (1e-3) without weight
  decay.
- Validation (labelled source speakers held out; never target labels) early-stops the
  pre-training. During adaptation it is only logged (``val_ua``), unless
  ``adapt_early_stopping=True`` applies ``patience`` and restores the best epoch there too.

Parameters
----------
variant:
    ``"nnpm"``, ``"snsa_f"``, ``"wo_sl"`` or ``"wo_hl"`` (see above).
pretrain_epochs, pretrain_lr:
    Supervised pre-training length and Adam learning rate.
pretrained:
    Folder of a model saved with :meth:`NeuralMethod.save` (``source_only``, ``nnpm``...)
    trained on the same source with the same ``backbone``, ``backbone_params`` and
    ``normalise``: its weights and fitted standardisation replace phase 1 (lets several
    variants share one pre-training).
gamma:
    Cosine similarity threshold of the pseudo multilabel (0.9).
hard_negative_ratio:
    Share ``lambda`` of the negative slots kept as hard negatives (0.01); ignored by
    ``"wo_hl"``.
beta_max:
    Final memory update rate (0.4).
target_weight:
    Weight of ``L_t`` in the total loss (1 in the paper).
no_positive, fallback_top_k:
    See above.
freeze_conv_layers:
    Convolution layers frozen during adaptation, counted from the input. ``None``
    (default): the paper's 2 (at most the backbone's count) on a backbone with convolution
    layers (SNSA), 0 on one without (``mlp``, ``attention``); a number > 0 for a backbone
    without convolution layers raises :class:`~emobridge.errors.ConfigError`.
prediction, vote_top_k, vote_temperature:
    See above.
epoch_stream:
    ``"source"`` or ``"target"``.
adapt_early_stopping:
    Apply ``patience`` / best-epoch restoration in phase 2 as well.
lr, weight_decay, epochs:
    Adaptation optimiser and length (paper: 1e-4, 5e-5, 50).
backbone, ..., resume:
    Every other :class:`~emobridge.methods.neural.NeuralMethod` parameter (``backbone``,
    ``normalise``, ``batch_size`` (32), ``crop_frames``, ``patience``, ``seed``...).

Attributes (after ``fit``)
--------------------------
pretrain_result_, train_result_:
    :class:`~emobridge.training.TrainResult` of each phase (``train_result_`` is ``None``
    for ``"snsa_f"``); ``history_`` concatenates both, each record tagged with ``phase``.
frozen_layers_:
    Convolution layers actually frozen.
model_.memory:
    The :class:`~emobridge.models.memory.ExternalMemory` (saved with the weights).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from emobridge.errors import ConfigError, EmobridgeError
from emobridge.methods.base import register_method
from emobridge.methods.data import EmotionData
from emobridge.methods.neural import (
    CrossEntropyTask,
    DomainLoss,
    FeatureNormaliser,
    NeuralMethod,
    Normalise,
)
from emobridge.methods.phases import FitData, Phase
from emobridge.models.memory import (
    ExternalMemory,
    hard_negative_mask,
    linear_beta,
    memory_vote,
    pseudo_multilabel_loss,
    pseudo_multilabels,
)
from emobridge.training import Batch, EpochContext, TrainResult, set_trainable

Variant = Literal["nnpm", "snsa_f", "wo_sl", "wo_hl"]
Prediction = Literal["classifier", "memory_vote", "mix"]

VARIANTS: tuple[str, ...] = ("nnpm", "snsa_f", "wo_sl", "wo_hl")
PREDICTIONS: tuple[str, ...] = ("classifier", "memory_vote", "mix")

__all__ = ["NNPM", "PREDICTIONS", "VARIANTS"]


@register_method
class NNPM(NeuralMethod):
    __doc__ = __doc__

    name: ClassVar[str] = "nnpm"

    def __init__(
        self,
        *,
        variant: Variant = "nnpm",
        pretrain_epochs: int = 30,
        pretrain_lr: float = 1e-3,
        pretrained: str | None = None,
        gamma: float = 0.9,
        hard_negative_ratio: float = 0.01,
        beta_max: float = 0.4,
        target_weight: float = 1.0,
        no_positive: Literal["top_k", "skip", "negatives_only"] = "top_k",
        fallback_top_k: int = 1,
        freeze_conv_layers: int | None = None,
        prediction: Prediction = "classifier",
        vote_top_k: int = 10,
        vote_temperature: float = 0.1,
        epoch_stream: Literal["source", "target"] = "target",
        adapt_early_stopping: bool = False,
        # every NeuralMethod parameter (method-specific defaults where they differ)
        backbone: str = "auto",
        backbone_params: Mapping[str, Any] | None = None,
        normalise: Normalise = "per_corpus",
        class_weight: str | None = None,
        domain_loss: DomainLoss = "none",
        domain_loss_weight: float = 1.0,
        domain_loss_layer: str = "embedding",
        domain_loss_params: Mapping[str, Any] | None = None,
        epochs: int = 50,
        batch_size: int = 32,
        lr: float = 1e-4,
        weight_decay: float = 5e-5,
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
    ) -> None:
        self._store_params(locals())

    # -- checks ----------------------------------------------------------------------------
    def check_params(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"nnpm: variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.prediction not in PREDICTIONS:
            raise ConfigError(f"nnpm: prediction must be one of {PREDICTIONS}, "
                              f"got {self.prediction!r}")
        if not -1.0 <= float(self.gamma) <= 1.0:
            raise ConfigError(f"nnpm: gamma is a cosine threshold in [-1, 1], got {self.gamma}")
        if not 0.0 < float(self.hard_negative_ratio) <= 1.0:
            raise ConfigError(f"nnpm: hard_negative_ratio must be in (0, 1], "
                              f"got {self.hard_negative_ratio}")
        if not 0.0 <= float(self.beta_max) <= 1.0:
            raise ConfigError(f"nnpm: beta_max must be in [0, 1], got {self.beta_max}")
        if self.no_positive not in ("top_k", "skip", "negatives_only"):
            raise ConfigError(f"nnpm: no_positive must be 'top_k', 'skip' or "
                              f"'negatives_only', got {self.no_positive!r}")
        if self.fallback_top_k < 1 or self.vote_top_k < 1:
            raise ConfigError("nnpm: fallback_top_k and vote_top_k must be >= 1")
        if self.freeze_conv_layers is not None and self.freeze_conv_layers < 0:
            raise ConfigError(f"nnpm: freeze_conv_layers must be >= 0, "
                              f"got {self.freeze_conv_layers}")
        if self.epoch_stream not in ("source", "target"):
            raise ConfigError(f"nnpm: epoch_stream must be 'source' or 'target', "
                              f"got {self.epoch_stream!r}")
        if self.pretrained is None and self.pretrain_epochs < 1:
            raise ConfigError("nnpm: pretrain_epochs must be >= 1 (or give `pretrained`)")

    # -- hooks ---------------------------------------------------------------------------
    def select_data(self, data: FitData) -> FitData:
        if self.variant != "snsa_f" and data.target is None:
            raise EmobridgeError("nnpm: needs target data (target_unlabelled) to adapt to")
        self.n_memory_slots_ = len(data.source)  # one memory slot per source utterance
        return data

    def build_model(self) -> nn.Module:
        model = super().build_model()
        # Slots are sized at fit time (one per source utterance) or from a loaded state.
        model.memory = ExternalMemory(getattr(self, "n_memory_slots_", 0), model.embedding_dim)
        return model

    def fit_normaliser(self, data: FitData) -> FeatureNormaliser:
        if self.pretrained is None:
            return super().fit_normaliser(data)
        return self._load_pretrained()

    def init_state(self, data: FitData) -> None:
        # Both phases weigh the cross-entropy by the source's class frequencies.
        self.class_weights_ = self._class_weights({"source": data.source})
        self.pretrain_result_: TrainResult | None = None
        self.frozen_layers_ = 0
        self._n_freeze = self._layers_to_freeze()  # before training: a bad value fails fast

    def phases(self, data: FitData) -> Iterator[Phase]:
        """Pre-training (unless ``pretrained``), the memory, then adaptation (unless
        ``snsa_f``)."""
        if self.pretrained is None:
            yield Phase("pretrain", {"source": data.source}, task=CrossEntropyTask(self),
                        validation=data.validation, result_attr="pretrain_result_",
                        config={"epochs": self.pretrain_epochs, "lr": self.pretrain_lr,
                                "weight_decay": 0.0, **self.phase_paths("pretrain")})
        self._initialise_memory(data.source)
        if self.variant == "snsa_f":
            return
        self.frozen_layers_ = self._freeze(self._n_freeze)
        yield Phase("adapt", {"source": data.source, "target": data.target},
                    validation=data.validation, primary=self.epoch_stream,
                    config={"patience": self.patience if self.adapt_early_stopping else None,
                            "restore_best": self.adapt_early_stopping,
                            **self.phase_paths("adapt")})

    def _initialise_memory(self, source: EmotionData) -> None:
        """The memory: the (pre-trained) embedding of every source utterance."""
        emb = self._trainer().map_batches(self.model_, source,
                                          lambda m, b: m.embed(b.x, b.mask))
        self.model_.memory.initialise(torch.as_tensor(emb), torch.tensor(source.labels))

    def _load_pretrained(self) -> FeatureNormaliser:
        """Weights of ``pretrained`` into the freshly built model; its standardisation."""
        pre = NeuralMethod.load(self.pretrained, device="cpu")
        if tuple(pre.classes_) != self.classes_:
            raise EmobridgeError(f"nnpm: pretrained model {self.pretrained} has classes "
                                 f"{pre.classes_}, the source {self.classes_}")
        if pre.input_dim_ != self.input_dim_ or pre.is_sequence_ != self.is_sequence_ \
                or pre.backbone_ != self.backbone_:
            raise EmobridgeError(
                f"nnpm: pretrained model {self.pretrained} was built for {pre.backbone_} on "
                f"{pre.input_dim_}-dim {'frames' if pre.is_sequence_ else 'vectors'}, this "
                f"fit needs {self.backbone_} on {self.input_dim_}-dim "
                f"{'frames' if self.is_sequence_ else 'vectors'}")
        if pre.normaliser_.mode != self.normalise:
            raise EmobridgeError(f"nnpm: pretrained model {self.pretrained} standardises with "
                                 f"{pre.normaliser_.mode!r}, this method with "
                                 f"{self.normalise!r}")
        state = {k: v for k, v in pre.model_.state_dict().items()
                 if k.startswith(("backbone.", "classifier."))}
        try:
            missing, _ = self.model_.load_state_dict(state, strict=False)
        except RuntimeError as exc:
            raise EmobridgeError(f"nnpm: pretrained model {self.pretrained} does not fit "
                                 f"backbone_params={self.backbone_params}: "
                                 f"{str(exc).strip().splitlines()[0]}") from None
        missing = [k for k in missing if not k.startswith("memory.")]
        if missing:
            raise EmobridgeError(f"nnpm: pretrained model {self.pretrained} lacks {missing[:5]}")
        return pre.normaliser_

    def _layers_to_freeze(self) -> int:
        """How many convolution layers adaptation freezes (see ``freeze_conv_layers``)."""
        convs = getattr(self.model_.backbone, "conv_layers", None)
        n_convs = 0 if convs is None else len(convs)
        if self.freeze_conv_layers is None:
            return min(2, n_convs)
        if self.freeze_conv_layers > n_convs:
            what = (f"backbone {self.backbone_!r} has no convolution layers" if not n_convs
                    else f"the {self.backbone_!r} backbone has {n_convs} convolution layers")
            raise ConfigError(f"nnpm: freeze_conv_layers={self.freeze_conv_layers} but {what}"
                              " (leave it unset, or use 0)")
        return int(self.freeze_conv_layers)

    def _freeze(self, n_layers: int) -> int:
        """Freeze the first ``n_layers`` convolution layers; their number."""
        if n_layers:
            for conv in list(self.model_.backbone.conv_layers)[:n_layers]:
                set_trainable(conv, False)
        return n_layers

    # -- the adaptation step ----------------------------------------------------------------
    def training_step(
        self, batches: dict[str, Batch], ctx: EpochContext
    ) -> dict[str, torch.Tensor]:
        model = self.model_
        memory: ExternalMemory = model.memory
        src, tgt = batches["source"], batches["target"]
        beta = linear_beta(ctx.epoch, ctx.epochs, self.beta_max)

        emb_s = model.embed(src.x, src.mask)
        emb_t = model.embed(tgt.x, tgt.mask)
        sim = memory.similarity(emb_t)  # (target batch, slots), the read of M
        with torch.no_grad():
            targets, active = pseudo_multilabels(sim.detach(), self.gamma, self.no_positive,
                                                 self.fallback_top_k)
            ratio = None if self.variant == "wo_hl" else self.hard_negative_ratio
            negatives = hard_negative_mask(sim.detach(), targets, ratio)
        l_pos, l_neg = pseudo_multilabel_loss(sim, targets, negatives, active)
        target_loss = l_pos + l_neg

        ce = self.supervised_loss(src, model.classify(emb_s))
        if bool(tgt.labelled.any()):  # few-shot target rows, when given
            ce = ce + self.supervised_loss(tgt, model.classify(emb_t)) * \
                tgt.labelled.float().mean()
        loss = self.target_weight * target_loss
        if self.variant != "wo_sl":
            loss = loss + ce
        # Write after the loss is formed: this step reads the memory as it was (eq. 3).
        memory.write(src.index, emb_s.detach(), beta)

        with torch.no_grad():
            above = (sim >= self.gamma)
            pos_rate = above.any(dim=1).float().mean()
            n_pos = above.sum(dim=1).float().mean()
        return {"loss": loss, "ce": ce.detach(), "l_pos": l_pos.detach(),
                "l_neg": l_neg.detach(), "target_pos_rate": pos_rate,
                "target_n_pos": n_pos, "beta": torch.tensor(beta)}

    # -- prediction ------------------------------------------------------------------------
    def predict_logits(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Log-probabilities of ``prediction`` (softmax of them gives the probabilities);
        the raw classifier logits for ``"classifier"``."""
        emb = model.embed(batch.x, batch.mask)
        logits = model.classify(emb)
        if self.prediction == "classifier":
            return logits
        memory: ExternalMemory = model.memory
        if not memory.is_initialised:
            raise EmobridgeError("nnpm: the memory is empty; fit() first")
        vote = memory_vote(memory.similarity(emb), memory.labels, logits.shape[1],
                           self.gamma, self.vote_top_k, self.vote_temperature)
        if self.prediction == "memory_vote":
            return torch.log(vote)
        return torch.log(0.5 * torch.softmax(logits, dim=1) + 0.5 * vote)

    def memory_similarity(self, data: EmotionData) -> np.ndarray:
        """Cosine similarity ``(len(data), slots)`` of ``data``'s embeddings to the memory."""
        data = self._prepare(data)
        return self._trainer().map_batches(
            self.model_, data, lambda m, b: m.memory.similarity(m.embed(b.x, b.mask)))
