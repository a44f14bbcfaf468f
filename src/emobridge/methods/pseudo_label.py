"""``pseudo_label``: semi-supervised cross-lingual adaptation with hard or soft pseudo-labels,
utterance rebalancing and a few labelled target utterances.

Agarla, Bianco, Celona, Napoletano, Petrovsky, Piccoli, Schettini, Shanin, "Semi-supervised
cross-lingual speech emotion recognition" (arXiv 2207.06767, 2023), section 3 and Algorithm 1.
The formulas live in :mod:`emobridge.methods.pseudo_label_ops`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

from emobridge.errors import ConfigError, EmobridgeError
from emobridge.methods import pseudo_label_ops as ops
from emobridge.methods.base import register_method
from emobridge.methods.data import EmotionData
from emobridge.methods.neural import DomainLoss, NeuralMethod, Normalise
from emobridge.methods.phases import FitData
from emobridge.training import Batch, EpochContext, TrainConfig, classification_metrics

Mode = Literal["hard", "soft"]
Policy = Literal["accumulate", "replace"]
Selection = Literal["mean", "pooled", "target", "source"]

__all__ = ["PseudoLabel"]


@register_method
class PseudoLabel(NeuralMethod):
    """Semi-supervised adaptation by pseudo-labelling (Agarla et al., Algorithm 1).

    Training set ``D = D_s u K_t`` (all labelled source utterances plus the ``k`` labelled
    target ones given as ``target_labelled``); one stream, batches of ``batch_size`` drawn
    from ``D``. After every ``W = pseudo_label_every_epochs`` epochs (epoch ``e`` with
    ``e mod W = 0``) the *current* model (not the best one so far) predicts
    every utterance of ``target_unlabelled`` (``U_t``; whole utterances, eval mode) and the
    pseudo-label policy forms ``K'_t``:

    * ``mode="hard"``: ``y~_i = argmax_c p_ic``, kept when ``max_c p_ic >= tau`` (eq. 2).
      The loss is the cross-entropy (eq. 8) alone.
    * ``mode="soft"``: every utterance, with the probability vector ``p_i`` as its target.
      Every training batch (source, labelled and pseudo-labelled rows alike, from the first
      epoch on, as in Arazo et al. 2020 whose loss the paper adopts) is mixed up,
      ``x = a x_p + (1 - a) x_q``, ``y = a y_p + (1 - a) y_q``, ``a ~ U(0, 1)`` once per batch
      (eqs. 6-7; ``mixup=False`` turns it off), and the loss is
      ``L = L_CE + lambda_A R_A + lambda_H R_H`` (eq. 5) with
      ``R_A = sum_c (1/C) log((1/C) / hbar_c)`` (eq. 3, ``hbar_c`` the batch-mean softmax
      probability of class ``c``) and ``R_H = -(1/B) sum_i sum_c p_ic log p_ic`` (eq. 4, the
      text's "average per-sample entropy"; ``L_CE`` is a batch mean too, as in Tanaka et al.
      2018 where ``lambda_A = 0.8`` and ``lambda_H = 0.4`` come from).

    Earlier pseudo-labels are **kept** by default: Algorithm 1 expands ``D = D u K'_t`` at
    every round, so ``pseudo_label_policy="accumulate"`` takes the set union of
    (utterance, label) pairs (an utterance given the same hard label again is not
    duplicated; given another label, or a new soft vector, it is there with both).
    ``"replace"`` keeps only the latest round (a common variant, not the paper's).

    Utterance rebalancing (section 3.2.3, ``rebalance=True``): the target part of ``D``
    (labelled target plus pseudo-labelled rows) is randomly oversampled up to the number of
    source utterances, ``gamma = N_target / N_s = 1``, at the start when ``k > 0`` and after
    every pseudo-labelling round (always from the un-replicated rows; each row is replicated
    ``floor`` or ``ceil`` of ``N_s / N_target`` times, see
    :func:`~emobridge.methods.pseudo_label_ops.oversample_indices`).

    Model selection (section 3.2.4): with ``validation`` data, every epoch's UA is computed
    separately on the source-language rows (languages of ``source``) and on the other rows
    (the target language); the monitored ``val_ua`` is their mean (``selection="mean"``,
    "best performance on the validation set for both the source and new languages"), or the
    UA of all rows pooled, of the target or of the source alone. The weights of the best
    epoch are restored; training runs all ``epochs`` unless ``patience`` is set (the
    pseudo-labelling schedule needs the full run). ``history_`` holds per epoch
    ``val_ua_source``, ``val_ua_target``, ``val_ua_pooled``, ``val_ua`` (the selection
    score), ``n_train`` (rows of ``D``) and ``n_pseudo`` (pseudo-labelled rows before
    oversampling). A target language equal to the source language cannot be told apart:
    all validation rows then count as source.

    Training crops (section 4.2): frame features are cut to a random window of
    ``crop_s`` seconds, ``round(crop_s * frame_rate_hz)`` frames (``crop_frames``, when set,
    wins); prediction and pseudo-labelling use whole utterances. Vectors are not cropped.

    Optimiser defaults (section 4.2.1): Adam (beta 0.9 / 0.999), lr 1e-3 times 0.95 every
    10 epochs, batches of 100, 100 epochs, ``W = 30``, ``tau = 0.5``.

    Target utterances in both ``target_labelled`` and ``target_unlabelled`` (same id) are
    only used as labelled; ``target_unlabelled`` labels are never read. Validation speakers
    must not occur in any training input (:class:`~emobridge.errors.SpeakerLeakError`), so
    no validation or test utterance can ever be pseudo-labelled.

    Parameters
    ----------
    mode:
        ``"hard"`` or ``"soft"`` pseudo-labels.
    tau:
        Confidence threshold of hard pseudo-labels, in (0, 1).
    pseudo_label_every_epochs:
        ``W``; ``0`` or ``None`` never pseudo-labels (source + ``k`` labelled target only:
        the lower / upper bounds under the same training protocol).
    pseudo_label_policy:
        ``"accumulate"`` (paper) or ``"replace"``.
    rebalance:
        Random oversampling of target rows up to the source count.
    lambda_a, lambda_h:
        Weights of ``R_A`` and ``R_H`` (soft mode only).
    mixup:
        Mixup of every training batch in soft mode.
    selection:
        Validation score for early stopping / best epoch: ``"mean"``, ``"pooled"``,
        ``"target"`` or ``"source"``.
    crop_s:
        Training crop length in seconds for frame features (``None``: whole utterances).
    frame_rate_hz:
        Frames per second of the features (100 for a 10 ms hop log-mel, 50 for Whisper
        encoder frames); required to crop frame features by ``crop_s``.
    epochs, batch_size, lr, lr_decay_gamma, lr_decay_every_epochs:
        The paper's values as defaults.
    backbone, ..., resume:
        Every other :class:`~emobridge.methods.neural.NeuralMethod` parameter (backbone,
        normalise, seed, device, patience...).

    Attributes (after ``fit``)
    --------------------------
    pseudo_labelled_ids_:
        Ids of the rows in the final pseudo-label pool (ids of ``target_unlabelled``).
    pseudo_labels_:
        Their targets ``(n, C)`` (one-hot for hard pseudo-labels).
    pseudo_label_rounds_:
        One dict per round: ``epoch``, ``n_candidates``, ``n_selected``, ``n_pool``,
        ``mean_confidence``.
    train_sets_:
        One dict per (re)built training set: ``epoch``, ``n_source``,
        ``n_target_labelled``, ``n_pseudo``, ``n_target_rows`` (after oversampling),
        ``n_train``.
    crop_frames_:
        The training crop in frames (``None``: no crop).
    source_languages_:
        Languages counted as source in validation.
    """

    name: ClassVar[str] = "pseudo_label"

    def __init__(
        self,
        *,
        mode: Mode = "hard",
        tau: float = 0.5,
        pseudo_label_every_epochs: int | None = 30,
        pseudo_label_policy: Policy = "accumulate",
        rebalance: bool = True,
        lambda_a: float = 0.8,
        lambda_h: float = 0.4,
        mixup: bool = True,
        selection: Selection = "mean",
        crop_s: float | None = 2.0,
        frame_rate_hz: float | None = None,
        # every NeuralMethod parameter (method-specific defaults where they differ)
        backbone: str = "auto",
        backbone_params: Mapping[str, Any] | None = None,
        normalise: Normalise = "per_corpus",
        class_weight: str | None = None,
        domain_loss: DomainLoss = "none",
        domain_loss_weight: float = 1.0,
        domain_loss_layer: str = "embedding",
        domain_loss_params: Mapping[str, Any] | None = None,
        epochs: int = 100,
        batch_size: int = 100,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        lr_decay_gamma: float = 0.95,
        lr_decay_every_epochs: int = 10,
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
        if self.mode not in ("hard", "soft"):
            raise ConfigError(f"pseudo_label: mode must be 'hard' or 'soft', got {self.mode!r}")
        if not 0.0 < float(self.tau) < 1.0:
            raise ConfigError(f"pseudo_label: tau must lie in (0, 1), got {self.tau!r}")
        w = self.pseudo_label_every_epochs
        if w is not None and (isinstance(w, bool) or int(w) != w or w < 0):
            raise ConfigError(f"pseudo_label: pseudo_label_every_epochs must be a non-negative "
                              f"integer or None, got {w!r}")
        if self.pseudo_label_policy not in ("accumulate", "replace"):
            raise ConfigError(f"pseudo_label: pseudo_label_policy must be 'accumulate' or "
                              f"'replace', got {self.pseudo_label_policy!r}")
        if self.selection not in ("mean", "pooled", "target", "source"):
            raise ConfigError(f"pseudo_label: selection must be 'mean', 'pooled', 'target' or "
                              f"'source', got {self.selection!r}")
        for name in ("lambda_a", "lambda_h"):
            if float(getattr(self, name)) < 0:
                raise ConfigError(f"pseudo_label: {name} must be >= 0, got "
                                  f"{getattr(self, name)!r}")
        if self.crop_s is not None and float(self.crop_s) <= 0:
            raise ConfigError(f"pseudo_label: crop_s must be > 0 or None, got {self.crop_s!r}")
        if self.frame_rate_hz is not None and float(self.frame_rate_hz) <= 0:
            raise ConfigError(f"pseudo_label: frame_rate_hz must be > 0, got "
                              f"{self.frame_rate_hz!r}")

    def _resolve_crop(self, source: EmotionData) -> int | None:
        if not source.is_sequence:
            return None
        if self.crop_frames is not None:
            return int(self.crop_frames)
        if self.crop_s is None:
            return None
        rate = self.frame_rate_hz
        if rate is None:
            raise ConfigError(
                f"pseudo_label: crop_s={self.crop_s} needs the frame rate of the features: "
                "pass frame_rate_hz (e.g. 100 for a 10 ms log-mel hop, 50 for Whisper frames) "
                "or crop_s=None to train on whole utterances")
        return max(1, int(round(float(self.crop_s) * float(rate))))

    @staticmethod
    def _check_no_leak(validation: EmotionData | None, *training: EmotionData | None) -> None:
        if validation is None or not len(validation):
            return
        from emobridge.protocols import check_speaker_independence

        train_speakers = np.concatenate([d.speakers for d in training if d is not None
                                         and len(d)])
        check_speaker_independence({
            "training data": pd.DataFrame({"speaker": train_speakers}),
            "validation": pd.DataFrame({"speaker": validation.speakers}),
        })
        train_ids = set().union(*[set(d.ids) for d in training if d is not None and len(d)])
        shared = sorted(train_ids & set(validation.ids))
        if shared:
            raise EmobridgeError(f"pseudo_label: {len(shared)} validation utterance(s) also in "
                                 f"the training data, e.g. {shared[0]}")

    # -- hooks ---------------------------------------------------------------------------
    def select_data(self, data: FitData) -> FitData:
        """No validation speaker in training; target rows given both labelled and unlabelled
        (same id) are used as labelled only; the training crop and source languages."""
        self._check_no_leak(data.validation, *data.training)
        if data.target_unlabelled is not None and data.target_labelled is not None:
            labelled_ids = set(data.target_labelled.ids)
            keep = np.array([i not in labelled_ids for i in data.target_unlabelled.ids],
                            dtype=bool)
            data.target_unlabelled = data.target_unlabelled.subset(keep) if keep.any() \
                else None
        self.crop_frames_ = self._resolve_crop(data.source)
        self.source_languages_ = tuple(sorted({str(x) for x in data.source.languages}))
        return data

    def train_config(self) -> TrainConfig:
        config = super().train_config()
        crop = getattr(self, "crop_frames_", None)
        return dataclasses.replace(config, crop_frames=crop) if crop is not None else config

    # -- the training set D ------------------------------------------------------------------
    def init_state(self, data: FitData) -> None:
        """An empty pseudo-label pool over the (standardised) training inputs."""
        self._src = data.source
        self._tgt_u = data.target_unlabelled
        self._tgt_l = data.target_labelled
        self._pool_index = np.zeros(0, dtype=np.int64)
        self._pool_targets = np.zeros((0, len(self.classes_)), dtype=np.float32)
        self._last_round_epoch = 0
        self.pseudo_label_rounds_: list[dict[str, Any]] = []
        self.train_sets_: list[dict[str, Any]] = []

    def training_streams(self, data: FitData) -> dict[str, EmotionData]:
        return {"train": self._build_train_set(0)}

    def _build_train_set(self, epoch: int) -> EmotionData:
        """``D = D_s u oversample(K_t u K'_t)`` and its target distributions."""
        n_classes = len(self.classes_)
        src = self._src
        parts = [src]
        targets = [ops.one_hot(src.labels, n_classes)]
        tgt_parts: list[EmotionData] = []
        tgt_targets: list[np.ndarray] = []
        if self._tgt_l is not None and len(self._tgt_l):
            tgt_parts.append(self._tgt_l)
            tgt_targets.append(ops.one_hot(self._tgt_l.labels, n_classes))
        if len(self._pool_index):
            rows = self._tgt_u.subset(self._pool_index)
            tgt_parts.append(EmotionData(rows.features, self._pool_targets.argmax(axis=1),
                                         rows.speakers, rows.languages, rows.ids, rows.classes))
            tgt_targets.append(self._pool_targets)
        n_target_unique = sum(len(p) for p in tgt_parts)
        if tgt_parts:
            tgt = EmotionData.concat(tgt_parts)
            tgt_y = np.concatenate(tgt_targets)
            if self.rebalance:
                # Seeded by (seed, epoch): a resumed run rebuilds the very same set.
                rng = np.random.default_rng([int(self.seed), int(epoch), 0x5EED])
                index = ops.oversample_indices(len(tgt), len(src), rng)
                tgt, tgt_y = tgt.subset(index), tgt_y[index]
            parts.append(tgt)
            targets.append(tgt_y)
        data = EmotionData.concat(parts)
        self._targets_t = torch.as_tensor(np.concatenate(targets), dtype=torch.float32)
        self.train_sets_.append({
            "epoch": int(epoch), "n_source": len(src),
            "n_target_labelled": 0 if self._tgt_l is None else len(self._tgt_l),
            "n_pseudo": int(len(self._pool_index)),
            "n_target_rows": len(data) - len(src), "n_target_unique": int(n_target_unique),
            "n_train": len(data)})
        return data

    def _pseudo_label_round(self, ctx: EpochContext, epoch: int) -> None:
        """Algorithm 1, lines 7-9: label ``U_t`` with the current model, apply the policy,
        expand ``D``."""
        assert self._tgt_u is not None
        logits = ctx.trainer.predict_logits(ctx.model, self._tgt_u, task=self)
        proba = torch.softmax(torch.as_tensor(logits, dtype=torch.float64), dim=1).numpy()
        if self.mode == "hard":
            index, labels = ops.hard_pseudo_labels(proba, float(self.tau))
            new_targets = ops.one_hot(labels, proba.shape[1])
        else:
            index = np.arange(len(proba), dtype=np.int64)
            new_targets = ops.soft_pseudo_labels(proba)
        self._pool_index, self._pool_targets = ops.update_pseudo_pool(
            self._pool_index, self._pool_targets, index, new_targets,
            self.pseudo_label_policy)
        self._last_round_epoch = int(epoch)
        self.pseudo_label_rounds_.append({
            "epoch": int(epoch), "n_candidates": int(len(proba)), "n_selected": int(len(index)),
            "n_pool": int(len(self._pool_index)),
            "mean_confidence": float(proba.max(axis=1).mean()) if len(proba) else float("nan"),
        })

    # -- TrainingTask hooks ------------------------------------------------------------------
    def on_fit_start(self, ctx: EpochContext) -> None:
        if ctx.epoch > 0 and self._last_round_epoch > 0:  # resumed after a pseudo-label round
            ctx.streams["train"] = self._build_train_set(self._last_round_epoch)

    def on_epoch_end(self, ctx: EpochContext) -> Mapping[str, float] | None:
        done = ctx.epoch + 1  # epochs completed (1-based e of Algorithm 1)
        w = int(self.pseudo_label_every_epochs or 0)
        extras = {"n_train": float(len(ctx.streams["train"]))}
        # Also after the final epoch when E mod W = 0 (no effect on the model, but a run
        # resumed with more epochs then continues exactly as an uninterrupted one).
        if w and self._tgt_u is not None and len(self._tgt_u) and done % w == 0:
            self._pseudo_label_round(ctx, done)
            ctx.streams["train"] = self._build_train_set(done)
            extras["pseudo_round"] = float(len(self.pseudo_label_rounds_))
        extras["n_pseudo"] = float(len(self._pool_index))
        return extras

    def training_step(self, batches: dict[str, Batch], ctx: EpochContext
                      ) -> dict[str, torch.Tensor]:
        batch = batches["train"]
        targets = self._targets_t[batch.index.cpu()].to(ctx.device)
        x, mask = batch.x, batch.mask
        weight = self.class_weights_
        if self.mode == "hard":
            logits = ctx.model(x, mask)
            ce = ops.soft_cross_entropy(logits, targets, weight)
            return {"loss": ce, "ce": ce.detach()}
        if self.mixup and len(batch) > 1:
            x, targets, mask, _ = ops.mixup(x, targets, ctx.rng, mask=mask)
        losses = ops.semi_supervised_loss(ctx.model(x, mask), targets, float(self.lambda_a),
                                          float(self.lambda_h), weight)
        return {k: v if k == "loss" else v.detach() for k, v in losses.items()}

    def validate(self, model: nn.Module, data: EmotionData, ctx: EpochContext
                 ) -> dict[str, float]:
        logits = ctx.trainer.predict_logits(model, data, task=self)
        out = classification_metrics(logits, data.labels, prefix="val_")
        pooled = out["val_ua"]
        is_source = np.isin(np.asarray([str(x) for x in data.languages]),
                            self.source_languages_)
        ua = {}
        for part, rows in (("source", is_source), ("target", ~is_source)):
            ua[part] = classification_metrics(logits[rows], data.labels[rows])["ua"] \
                if rows.any() else float("nan")
        if self.selection == "pooled":
            score = pooled
        elif self.selection == "mean":
            present = [v for v in ua.values() if not np.isnan(v)]
            score = float(np.mean(present)) if present else pooled
        else:
            score = ua[self.selection] if not np.isnan(ua[self.selection]) else pooled
        out.update({"val_ua": score, "val_ua_pooled": pooled,
                    "val_ua_source": ua["source"], "val_ua_target": ua["target"]})
        return out

    def training_state(self) -> dict[str, Any]:
        return {"pool_index": self._pool_index, "pool_targets": self._pool_targets,
                "last_round_epoch": self._last_round_epoch,
                "rounds": list(self.pseudo_label_rounds_), "train_sets": list(self.train_sets_)}

    def load_training_state(self, state: Mapping[str, Any]) -> None:
        self._pool_index = np.asarray(state["pool_index"], dtype=np.int64)
        self._pool_targets = np.asarray(state["pool_targets"], dtype=np.float32)
        self._last_round_epoch = int(state["last_round_epoch"])
        self.pseudo_label_rounds_ = list(state["rounds"])
        self.train_sets_ = list(state["train_sets"])

    def finish_fit(self, data: FitData) -> None:
        """Expose the pool and drop the references to the training data."""
        ids = self._tgt_u.ids[self._pool_index] if self._tgt_u is not None and \
            len(self._pool_index) else np.zeros(0, dtype=object)
        self.pseudo_labelled_ids_ = np.asarray(ids, dtype=object)
        self.pseudo_labels_ = self._pool_targets.copy()
        for attr in ("_src", "_tgt_u", "_tgt_l", "_targets_t"):
            setattr(self, attr, None)
