"""``mmd``: domain-adaptive transfer learning (Baklouti, Ben Ahmed & Fernandez-Maloigne,
"Cross-lingual low-resources speech emotion recognition with domain adaptive transfer
learning").

Log-mel spectrogram images go into a VGG16 (``backbone="vgg"``, ImageNet weights with
``backbone_params={"weights": "/path/vgg16.pth"}``). Training has two phases.

1. **Source model** (phase ``"source"``): the network is fine-tuned on the labelled source
   with cross-entropy (paper: Adam, lr 1e-4, batch 16, 400 epochs: ``source_lr``,
   ``batch_size``, ``source_epochs``).
2. **Domain-adaptive transfer** (phase ``"adapt"``, ``epochs`` epochs at ``lr``; paper: 50):
   each step takes a source batch and a target batch and minimises (eq. 1)
   ``CE(labelled rows) + domain_loss_weight * MMD(f(source batch), f(target batch))``, ``f``
   the output of the first FC layer (``domain_loss_layer="first_fc"``: VGG's ``classifier.0``,
   before its ReLU) and MMD the biased quadratic estimate with a Gaussian kernel (eq. 2),
   bandwidth by the median heuristic. Both are parameters (``domain_loss_params``:
   ``kernel="multi"`` for Long et al.'s multi-bandwidth kernel, ``estimator="unbiased"`` or
   ``"linear"``, a fixed ``bandwidth``; ``domain_loss="coral"`` swaps the distance;
   ``domain_loss="none"`` leaves plain fine-tuning, the paper's "TL" when given labelled
   target utterances). The features and the logits come from one forward pass per batch.

Which target labels each mode reads:

- **Unsupervised** (``target_unlabelled`` only): no target label at all. The target batches
  only enter the MMD term (``target_unlabelled``'s labels are hidden before training).
- **With k labelled target utterances** (``target_labelled``, e.g. ``k`` per class from the
  experiment's few-shot split; what the paper calls supervised domain adaptation, where its
  target training data is labelled): the labels of those ``k`` utterances, and only those,
  enter the cross-entropy of phase 2, weighted by their share of the target batch (as in
  ``dann``); their features also enter the MMD term. Phase 1 never sees target data.

Differences from the paper: it splits each corpus randomly 80 / 20; emobridge's experiments
are speaker-independent. The paper leaves ``lambda`` and the kernel bandwidth open
(``domain_loss_weight=1`` and the median heuristic here). Validation data (held-out source
speakers, never target labels) early-stops phase 1 when ``patience`` is set; in phase 2 it is
only logged (``val_ua``; the MMD term is meant to trade source fit for alignment), unless
``adapt_early_stopping=True`` applies ``patience`` and restores the best epoch there too.

Parameters
----------
source_epochs, source_lr:
    Phase 1 length (0: none, e.g. to adapt from scratch) and Adam learning rate (paper:
    400, 1e-4).
adapt_early_stopping:
    Apply ``patience`` / best-epoch restoration in phase 2 as well.
epochs, lr:
    Phase 2 length and learning rate (paper: 50, 1e-4).
domain_loss, domain_loss_weight, domain_loss_layer, domain_loss_params:
    The phase-2 distance, its weight ``lambda``, the layer and the loss options (defaults:
    ``"mmd"``, 1.0, ``"first_fc"``, Gaussian kernel, biased estimate, median heuristic).
backbone, ..., resume:
    Every other :class:`~emobridge.methods.neural.NeuralMethod` parameter; defaults here:
    ``backbone="vgg"`` (VGG16 at 224 x 224; ``backbone_params`` picks ``depth``,
    ``image_size``, ``width``... for CPU budgets), ``normalise="none"`` (the image is
    min-max scaled per utterance, as the log-mel extractor's image form), ``batch_size=16``.

Attributes (after ``fit``)
--------------------------
source_result_, train_result_:
    :class:`~emobridge.training.TrainResult` of each phase; ``history_`` concatenates both,
    records tagged ``phase`` (``"source"``, ``"adapt"``; phase 2 records carry
    ``<domain_loss>_loss``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal

import torch

from emobridge.errors import ConfigError
from emobridge.methods.base import register_method
from emobridge.methods.neural import CrossEntropyTask, DomainLoss, NeuralMethod, Normalise
from emobridge.methods.phases import FitData, Phase
from emobridge.models.domain_losses import domain_discrepancy
from emobridge.training import Batch, EpochContext


@register_method
class MMD(NeuralMethod):
    """Two-phase domain-adaptive transfer: source fine-tuning, then cross-entropy +
    ``lambda`` * MMD at the first FC layer (see the module docstring)."""

    name = "mmd"

    def __init__(
        self,
        *,
        source_epochs: int = 400,
        source_lr: float = 1e-4,
        adapt_early_stopping: bool = False,
        domain_loss: DomainLoss = "mmd",
        domain_loss_weight: float = 1.0,
        domain_loss_layer: str = "first_fc",
        domain_loss_params: Mapping[str, Any] | None = None,
        # every other NeuralMethod parameter (method-specific defaults where they differ)
        backbone: str = "vgg",
        backbone_params: Mapping[str, Any] | None = None,
        normalise: Normalise = "none",
        class_weight: str | None = None,
        epochs: int = 50,
        batch_size: int = 16,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
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

    def check_params(self) -> None:
        if self.source_epochs < 0:
            raise ConfigError(f"mmd: source_epochs must be >= 0 (0: no phase 1), got "
                              f"{self.source_epochs}")
        if not self.source_lr > 0:
            raise ConfigError(f"mmd: source_lr must be > 0, got {self.source_lr}")

    def check_features(self, output: Literal["frames", "vector"], dim: int | None) -> None:
        """The ``vgg`` (default) and ``snsa`` backbones need frame sequences (log-mel
        images); ``mlp`` / ``auto`` take vectors too."""
        if output != "frames" and self.backbone in ("vgg", "snsa"):
            raise ConfigError(f"mmd: backbone {self.backbone!r} needs frame sequences "
                              "(pooling=none, or logmel); got one vector per utterance "
                              "(use backbone: mlp for vectors)")

    def aligns_phase(self, phase: Phase) -> bool:
        return False  # phase 2's own step computes the term (one forward pass per batch)

    def phases(self, data: FitData) -> Iterator[Phase]:
        if self.source_epochs > 0:
            yield Phase("source", {"source": data.source}, task=CrossEntropyTask(self),
                        validation=data.validation, result_attr="source_result_",
                        config={"epochs": self.source_epochs, "lr": self.source_lr,
                                **self.phase_paths("source")})
        else:
            self.source_result_ = None
        streams = {"source": data.source}
        if data.target is not None:  # labelled target rows keep their labels (k-shot)
            streams["target"] = data.target
        yield Phase("adapt", streams, validation=data.validation,
                    config={"patience": self.patience if self.adapt_early_stopping else None,
                            "restore_best": self.adapt_early_stopping,
                            **self.phase_paths("adapt")})

    def training_step(self, batches: dict[str, Batch], ctx: EpochContext
                      ) -> dict[str, torch.Tensor]:
        src, tgt = batches["source"], batches.get("target")
        if tgt is None:  # domain_loss="none" without target data: fine-tuning on the source
            return self.cross_entropy_step(batches)
        capture = self.capture_layer() if self.domain_loss != "none" else nullcontext([])
        with capture as outputs:
            logits_s = self.model_(src.x, src.mask)
            logits_t = self.model_(tgt.x, tgt.mask)
        ce = self.supervised_loss(src, logits_s)
        if bool(tgt.labelled.any()):
            ce = ce + self.supervised_loss(tgt, logits_t) * tgt.labelled.float().mean()
        losses = {"ce": ce.detach()}
        if self.domain_loss != "none":
            term = domain_discrepancy(self.domain_loss, self.batch_features(src, outputs),
                                      self.batch_features(tgt, outputs),
                                      self.domain_loss_params)
            losses[f"{self.domain_loss}_loss"] = term.detach()
            ce = ce + float(self.domain_loss_weight) * term
        return {"loss": ce, **losses}
