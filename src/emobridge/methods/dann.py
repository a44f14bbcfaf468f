"""``dann``: domain-adversarial training (Ganin & Lempitsky, 2015; Ganin et al., JMLR 2016).

A domain classifier (source vs target) sits on the embedding behind a gradient-reversal
layer; minimising its loss through the reversed gradient pushes the backbone towards
language-invariant features while the emotion classifier learns from the source. The reversal
strength follows Ganin et al.'s schedule ``lambda(p) = 2 / (1 + exp(-10 p)) - 1`` over training
progress ``p`` in [0, 1], scaled by ``domain_weight``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emobridge.errors import EmobridgeError
from emobridge.methods.base import register_method
from emobridge.methods.data import EmotionData
from emobridge.methods.neural import DomainLoss, NeuralMethod, Normalise
from emobridge.methods.phases import FitData
from emobridge.models.layers import GradientReversal, dann_lambda
from emobridge.training import Batch, EpochContext


@register_method
class DANN(NeuralMethod):
    """Domain-adversarial neural network.

    Each step takes a source batch and an unlabelled target batch (target cycled to the length
    of the source). Loss = source cross-entropy (+ cross-entropy on labelled target rows when
    ``target_labelled`` is given) + domain cross-entropy; the gradient of the domain loss
    reaches the backbone multiplied by ``-domain_weight * lambda(p)``.

    Parameters
    ----------
    domain_weight:
        Scale of the reversed gradient (the maximum of the lambda schedule).
    domain_hidden:
        Width of the domain classifier's hidden layer.
    schedule_gamma:
        The 10 in ``2 / (1 + exp(-gamma p)) - 1``; 0 gives a constant ``domain_weight``.
    backbone, ..., resume:
        Every :class:`~emobridge.methods.neural.NeuralMethod` parameter.
    """

    name = "dann"

    def __init__(
        self,
        *,
        domain_weight: float = 1.0,
        domain_hidden: int = 128,
        schedule_gamma: float = 10.0,
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
        lr: float = 1e-3,
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

    def select_data(self, data: FitData) -> FitData:
        if data.target is None:
            raise EmobridgeError("dann: needs target data (target_unlabelled) to align with")
        return data

    def build_model(self) -> nn.Module:
        model = super().build_model()
        dim = model.embedding_dim
        model.grl = GradientReversal(0.0)
        model.domain_classifier = nn.Sequential(
            nn.Linear(dim, self.domain_hidden), nn.ReLU(), nn.Dropout(0.2),
            nn.Linear(self.domain_hidden, 2))
        return model

    def training_streams(self, data: FitData) -> dict[str, EmotionData]:
        # Labelled target rows (few-shot) keep their labels: they also feed the classifier.
        return {"source": data.source, "target": data.target}

    def lambda_at(self, progress: float) -> float:
        """Reversal strength at training progress ``progress`` in [0, 1]."""
        if self.schedule_gamma <= 0:
            return float(self.domain_weight)
        return float(self.domain_weight) * dann_lambda(progress, self.schedule_gamma)

    def training_step(
        self, batches: dict[str, Batch], ctx: EpochContext
    ) -> dict[str, torch.Tensor]:
        model = self.model_
        src, tgt = batches["source"], batches["target"]
        lam = self.lambda_at(ctx.progress)
        model.grl.lambda_ = lam
        emb_s = model.embed(src.x, src.mask)
        emb_t = model.embed(tgt.x, tgt.mask)
        ce = self.supervised_loss(src, model.classify(emb_s))
        if bool(tgt.labelled.any()):
            ce_t = self.supervised_loss(tgt, model.classify(emb_t))
            ce = ce + ce_t * tgt.labelled.float().mean()
        emb = torch.cat([emb_s, emb_t])
        domains = torch.cat([torch.zeros(len(src), dtype=torch.long),
                             torch.ones(len(tgt), dtype=torch.long)]).to(emb.device)
        domain_logits = model.domain_classifier(model.grl(emb))
        domain_loss = nn.functional.cross_entropy(domain_logits, domains)
        domain_acc = (domain_logits.argmax(1) == domains).float().mean()
        return {"loss": ce + domain_loss, "ce": ce.detach(), "domain_loss": domain_loss.detach(),
                "domain_acc": domain_acc.detach(), "lambda": torch.tensor(lam)}
