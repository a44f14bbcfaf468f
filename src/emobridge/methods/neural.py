"""Base class of the torch methods: one fixed ``fit`` sequence with hooks, batched
prediction, embeddings and save / load.

A subclass is a :class:`NeuralMethod` (so an :class:`~emobridge.methods.base.AdaptationMethod`)
*and* a :class:`~emobridge.training.TrainingTask`, and is only its own maths: it overrides the
hooks it needs and nothing else. :meth:`NeuralMethod.fit` always runs, in this order:

1. ``check_settings()``: ``check_param_types()`` (every parameter against its annotation),
   ``check_params()`` -- the method's own value checks (raise
   :class:`~emobridge.errors.ConfigError`); default: nothing -- and the domain-loss
   settings. Config validation runs it too, before any data is read.
2. Shared input checks: non-empty, fully labelled source; every input with the source's
   classes and feature shape; ``target_labelled`` fully labelled. The labels of
   ``target_unlabelled`` are then hidden: no hook can read them.
3. ``select_data(data: FitData) -> FitData`` -- the method's own input requirements and
   selection (e.g. "needs target data"); default: ``data`` unchanged.
4. Shapes: ``classes_``, ``input_dim_``, ``is_sequence_``, ``backbone_`` (resolved).
5. ``seed_everything(seed)``, then ``model_ = build_model()`` -- default
   :class:`~emobridge.models.EmotionClassifier` over :meth:`NeuralMethod.build_backbone`.
6. ``normaliser_ = fit_normaliser(data)`` -- default: a :class:`FeatureNormaliser`
   (``normalise``) fitted on ``normalisation_sets(data)`` (default: every training input);
   every input is then standardised.
7. ``init_state(data)`` -- per-fit state (pools, memories...) from the standardised data;
   default: nothing. May set ``class_weights_``.
8. For each :class:`Phase` yielded by ``phases(data)`` (lazily: code between two ``yield``
   runs after the previous phase trained): a :class:`~emobridge.training.Trainer` with
   ``train_config()`` updated by ``phase.config`` trains ``model_`` on ``phase.streams``
   with ``phase.task`` (default: the method). Before the first phase ``class_weights_`` is
   computed from its streams unless ``init_state`` set it. The result goes to
   ``phase.result_attr`` (``train_result_``); ``history_`` concatenates the phases' records.
   Default ``phases``: one phase ``"train"`` on ``training_streams(data)`` (default
   ``{"source": source}``) validated on ``data.validation``.
9. ``finish_fit(data)`` -- expose results, drop references to training data; default:
   nothing. The model is left in eval mode.

A multi-phase method (NNPM: pre-training, then adaptation) yields several phases, each with
its own ``task`` (:class:`CrossEntropyTask` for plain supervised training), streams and
``config`` overrides (``phase_paths(name)`` gives each phase its own checkpoint folder and
CSV). A one-phase method overrides ``training_streams`` and ``training_step`` (plus
``build_model`` for extra modules)::

    @register_method
    class MyMethod(NeuralMethod):
        name = "my_method"

        def __init__(self, *, alpha: float = 1.0, backbone: str = "auto", ...every
                     NeuralMethod parameter..., resume: bool = False) -> None:
            self._store_params(locals())  # explicit keywords, stored as given

        def select_data(self, data):
            if data.target is None:
                raise EmobridgeError("my_method: needs target data")
            return data

        def training_streams(self, data):
            return {"source": data.source, "target": data.target}

        def training_step(self, batches, ctx):
            ce = self.supervised_loss(batches["source"])
            ...
            return {"loss": ce + self.alpha * other, "ce": ce.detach(), "other": other}

The :class:`~emobridge.training.TrainingTask` hooks (``on_fit_start``, ``on_epoch_start``,
``on_epoch_end``, ``validate``, ``predict_logits``, ``make_optimizer`` / ``configure_optimizer``,
``training_state`` / ``load_training_state``) work as documented there.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from emobridge.errors import ConfigError, EmobridgeError
from emobridge.methods.base import AdaptationMethod, available_methods
from emobridge.methods.data import UNLABELLED, EmotionData
from emobridge.methods.normalise import FeatureNormaliser, Normalise
from emobridge.methods.phases import FitData, Phase
from emobridge.models import EmotionClassifier, build_backbone, resolve_backbone
from emobridge.models.domain_losses import check_domain_loss, domain_discrepancy
from emobridge.models.layers import masked_mean
from emobridge.runtime import seed_everything
from emobridge.training import Batch, EpochContext, TrainConfig, Trainer, TrainingTask

__all__ = ["CrossEntropyTask", "DomainLoss", "DomainLossTask", "FeatureNormaliser", "FitData",
           "NeuralMethod", "Normalise", "Phase"]

DomainLoss = Literal["none", "mmd", "coral"]

#: The stream the domain term adds to an aligned phase that lacks the side's own stream.
DOMAIN_SIDES = {"source": "domain_source", "target": "domain_target"}
DOMAIN_STREAMS = tuple(DOMAIN_SIDES.values())


def _describe(data: EmotionData | None = None, is_sequence: bool = False, dim: int = 0) -> str:
    if data is not None:
        is_sequence, dim = data.is_sequence, data.dim
    return f"{'frames' if is_sequence else 'vectors'} of {dim} dims"


class CrossEntropyTask(TrainingTask):
    """Plain supervised training of a method's model: its class-weighted cross-entropy on
    the labelled rows of every stream, validated with the classifier's logits (e.g. NNPM's
    pre-training phase)."""

    def __init__(self, method: NeuralMethod) -> None:
        self.method = method

    def training_step(self, batches: dict[str, Batch], ctx: EpochContext
                      ) -> dict[str, torch.Tensor]:
        return self.method.cross_entropy_step(batches)


class DomainLossTask(TrainingTask):
    """``task``'s loss plus the method's domain term between a source and a target batch
    (see "Domain loss" in :class:`NeuralMethod`). Every other hook is ``task``'s."""

    def __init__(self, method: NeuralMethod, task: TrainingTask) -> None:
        self.method = method
        self.task = task

    def training_step(self, batches: dict[str, Batch], ctx: EpochContext
                      ) -> dict[str, torch.Tensor]:
        own = {k: b for k, b in batches.items() if k not in DOMAIN_STREAMS}
        with self.method.capture_layer() as seen:
            losses = dict(self.task.training_step(own, ctx))
        # the phase's own source / target batch when it has one, else the added stream's
        sides = [self.method.batch_features(own[name] if name in own else batches[extra],
                                            seen) for name, extra in DOMAIN_SIDES.items()]
        term = domain_discrepancy(self.method.domain_loss, *sides,
                                  self.method.domain_loss_params)
        losses["loss"] = losses["loss"] + float(self.method.domain_loss_weight) * term
        losses[f"{self.method.domain_loss}_loss"] = term.detach()
        return losses

    def configure_optimizer(self, model: nn.Module, config: TrainConfig) -> Any:
        return self.task.configure_optimizer(model, config)

    def on_fit_start(self, ctx: EpochContext) -> None:
        self.task.on_fit_start(ctx)

    def on_epoch_start(self, ctx: EpochContext) -> None:
        self.task.on_epoch_start(ctx)

    def on_epoch_end(self, ctx: EpochContext) -> Mapping[str, float] | None:
        return self.task.on_epoch_end(ctx)

    def predict_logits(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self.task.predict_logits(model, batch)

    def validate(self, model: nn.Module, data: EmotionData, ctx: EpochContext
                 ) -> dict[str, float]:
        return self.task.validate(model, data, ctx)

    def training_state(self) -> dict[str, Any]:
        return self.task.training_state()

    def load_training_state(self, state: Mapping[str, Any]) -> None:
        self.task.load_training_state(state)


class NeuralMethod(AdaptationMethod, TrainingTask):
    """Torch method base: standardise, build a backbone, train with the shared loop.

    The default behaviour is plain supervised training on ``source`` (what ``source_only``
    does); subclasses change the streams and the loss.

    Parameters
    ----------
    backbone:
        ``"auto"`` (from the features: vectors -> ``mlp``; frames of <= 256 dims, e.g. log-mel
        -> ``snsa``; wider frames, e.g. encoder features -> ``attention``), ``"snsa"``,
        ``"attention"``, ``"mlp"`` or ``"vgg"`` (log-mel frames as images,
        :class:`~emobridge.models.vgg.VGG`).
    backbone_params:
        Keyword arguments of the backbone class (``SNSA``, ``AttentionHead``, ``MLPHead``,
        ``VGG``).
    normalise:
        Input standardisation, see :class:`FeatureNormaliser`. Default ``"per_corpus"``
        (every neural method): on the grid's 25 tasks (``source_only``, Whisper layer-3
        vectors; ``benchmarks/RESULTS.md``, "neural-normalise") it scores 58.5 % mean UA
        against 50.7 for ``"global"``. ``"per_speaker"`` scores 62.7 on those acted corpora
        but falls to 40.8 (per-corpus 58.5) when each target speaker shows mostly one
        emotion, and needs speaker ids at prediction time: choose it where speakers show
        every emotion (the ``recommended`` recipe decides this from the data).
    class_weight:
        ``None`` or ``"balanced"`` (cross-entropy weights inversely proportional to the class
        frequencies of the labelled training data; helps UA on imbalanced corpora).
    domain_loss:
        ``"none"`` (default), ``"mmd"`` or ``"coral"``: a distribution-matching term between a
        source batch and a target batch (:mod:`emobridge.models.domain_losses`) added to the
        method's own loss, weighted by ``domain_loss_weight``. Needs target training data
        (``target_unlabelled`` and/or ``target_labelled``; the term never reads their
        labels). See "Domain loss" below.
    domain_loss_weight:
        Its weight (the ``lambda`` of ``CE + lambda * MMD``).
    domain_loss_layer:
        Where the features are compared: ``"embedding"`` (default; the backbone's output,
        what the classifier reads), ``"first_fc"`` (the output of the backbone's first
        ``nn.Linear``, before its activation: the "first FC layer" of Baklouti et al. on
        ``vgg``) or the dotted name of any backbone sub-module (``"classifier.1"`` on
        ``vgg``: after the first FC's ReLU).
    domain_loss_params:
        Options of the loss: for ``"mmd"`` the keywords of
        :func:`~emobridge.models.domain_losses.mmd` (``estimator``: ``"biased"`` (default,
        the paper's eq. 2), ``"unbiased"``, ``"linear"``; ``kernel``: ``"gaussian"`` or
        ``"multi"``; ``bandwidth``: ``None`` = median heuristic; ``kernel_num``,
        ``kernel_mul``); ``"coral"`` takes none.
    epochs, batch_size, lr, weight_decay, lr_decay_gamma, lr_decay_every_epochs, patience,
    crop_frames, max_grad_norm, device, seed, checkpoint_dir, log_csv, progress, resume:
        Passed to :class:`~emobridge.training.TrainConfig`.

    Domain loss
    -----------
    With ``domain_loss`` set, each step of every phase that :meth:`aligns_phase` accepts
    (default: the phases trained by the method's own ``training_step``, not supervised
    pre-training with :class:`CrossEntropyTask`) adds
    ``domain_loss_weight * D(f(source batch), f(target batch))`` to the method's loss, ``f``
    the features at ``domain_loss_layer``; the step's record gets ``<domain_loss>_loss``
    (``mmd_loss``, ``coral_loss``). The source batch is that of the phase's ``"source"``
    stream and the target batch that of its ``"target"`` stream (``source_only``: source;
    ``dann``, ``nnpm``: both), their features taken from the method's own forward pass
    (no extra pass); a side the phase has no stream for (``source_only``'s target;
    ``supervised`` and ``pseudo_label`` train on one pooled stream) gets an added stream,
    ``domain_source`` (the source) or ``domain_target`` (every target training row, labels
    hidden), and a forward pass of its own, as does a batch the method's step did not pass
    through the backbone as is (e.g. after mixup). So the term combines with any method's
    loss unchanged and with any backbone. Layer outputs of shape ``(batch, frames, d)`` are
    averaged over the frames (real frames when the layer keeps the input's length), other
    shapes flattened per row. With ``domain_loss="none"`` nothing changes (same streams,
    same random draws).

    Attributes (after ``fit``)
    --------------------------
    model_:
        The trained ``nn.Module`` (eval mode).
    classes_, input_dim_, is_sequence_, backbone_:
        What the model was built for (``backbone_`` is the resolved name).
    normaliser_:
        The fitted :class:`FeatureNormaliser`.
    history_:
        Per-epoch metrics (list of dicts; see :class:`~emobridge.training.TrainResult`).
    train_result_:
        The full :class:`~emobridge.training.TrainResult`.
    device_:
        The torch device used.
    """

    name: ClassVar[str] = "neural"

    def __init__(
        self,
        *,
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

    # -- parameters ----------------------------------------------------------------------
    def train_config(self) -> TrainConfig:
        """The :class:`TrainConfig` these parameters describe."""
        return TrainConfig(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
            weight_decay=self.weight_decay, lr_decay_gamma=self.lr_decay_gamma,
            lr_decay_every_epochs=self.lr_decay_every_epochs, patience=self.patience,
            device=self.device, seed=self.seed, crop_frames=self.crop_frames,
            max_grad_norm=self.max_grad_norm, checkpoint_dir=self.checkpoint_dir,
            log_csv=self.log_csv, progress=self.progress, resume=self.resume,
        )

    def phase_paths(self, phase: str) -> dict[str, str | None]:
        """Per-phase ``checkpoint_dir`` (a sub-folder named ``phase``) and ``log_csv``
        (``<stem>.<phase>.csv``), for :attr:`Phase.config` of multi-phase methods."""
        ckpt = None if self.checkpoint_dir is None else str(Path(self.checkpoint_dir) / phase)
        log = None if self.log_csv is None else str(
            Path(self.log_csv).with_name(f"{Path(self.log_csv).stem}.{phase}.csv"))
        return {"checkpoint_dir": ckpt, "log_csv": log}

    # -- hooks (see the module docstring for the order) ----------------------------------
    def check_params(self) -> None:
        """Raise :class:`ConfigError` for a bad parameter value. Default: nothing."""

    def select_data(self, data: FitData) -> FitData:
        """The method's own input requirements and selection. Default: ``data``."""
        return data

    def build_model(self) -> nn.Module:
        """The module to train; default :class:`EmotionClassifier` over the backbone. Also
        used by :meth:`load`, so it may read only parameters and shapes (``classes_``,
        ``input_dim_``, ``is_sequence_``, ``backbone_``) and attributes restored with the
        weights."""
        return EmotionClassifier(self.build_backbone(), len(self.classes_))

    def build_backbone(self) -> nn.Module:
        """The backbone named by ``backbone_`` with ``backbone_params``."""
        return build_backbone(self.backbone_, self.input_dim_, self.is_sequence_,
                              self.backbone_params,
                              pretrained=not getattr(self, "restoring_", False))

    def normalisation_sets(self, data: FitData) -> list[EmotionData]:
        """Data the standardisation statistics are fitted on. Default: every training
        input (source, unlabelled target, labelled target)."""
        return data.training

    def fit_normaliser(self, data: FitData) -> FeatureNormaliser:
        """The fitted standardisation (raw ``data``; ``model_`` is built)."""
        return FeatureNormaliser(self.normalise).fit(self.normalisation_sets(data))

    def init_state(self, data: FitData) -> None:
        """Per-fit state from the standardised ``data``. Default: nothing."""

    def training_streams(self, data: FitData) -> dict[str, EmotionData]:
        """Streams of the default single phase. Default: ``{"source": data.source}``."""
        return {"source": data.source}

    def phases(self, data: FitData) -> Iterator[Phase]:
        """The training runs, in order. Default: one phase ``"train"``."""
        yield Phase("train", self.training_streams(data), validation=data.validation)

    def finish_fit(self, data: FitData) -> None:
        """After the last phase. Default: nothing."""

    def aligns_phase(self, phase: Phase) -> bool:
        """Whether ``domain_loss`` applies to ``phase`` (asked only when it is not
        ``"none"``). Default: phases not trained by a :class:`CrossEntropyTask` (supervised
        pre-training stays plain). A method whose own step computes the term returns
        ``False``."""
        return not isinstance(phase.task, CrossEntropyTask)

    # -- domain loss ---------------------------------------------------------------------
    def domain_layer(self) -> nn.Module:
        """The backbone module whose output ``domain_loss_layer`` names."""
        backbone = self.model_.backbone
        name = self.domain_loss_layer
        if name == "embedding":
            return backbone
        if name == "first_fc":
            for module in backbone.modules():
                if isinstance(module, nn.Linear):
                    return module
            raise ConfigError(f"domain_loss_layer='first_fc': backbone {self.backbone_!r} "
                              "has no linear layer")
        try:
            return backbone.get_submodule(name)
        except AttributeError:
            names = [n for n, _ in backbone.named_modules() if n]
            raise ConfigError(f"domain_loss_layer={name!r}: no such module in backbone "
                              f"{self.backbone_!r}; use 'embedding', 'first_fc' or one of "
                              f"{names[:30]}") from None

    @contextmanager
    def capture_layer(self) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Inside the block, every output of :meth:`domain_layer` is appended to the yielded
        list as ``(backbone input, output)`` (so one forward pass gives both the logits and
        the features, and :meth:`batch_features` finds a batch's features by its input)."""
        current: list[Any] = [None]
        seen: list[tuple[torch.Tensor, torch.Tensor]] = []
        handles = [
            self.model_.backbone.register_forward_pre_hook(
                lambda _module, inputs: current.__setitem__(0, inputs[0] if inputs else None)),
            self.domain_layer().register_forward_hook(
                lambda _module, _inputs, output: seen.append((current[0], output)))]
        try:
            yield seen
        finally:
            for handle in handles:
                handle.remove()

    def batch_features(self, batch: Batch, seen: list[tuple[torch.Tensor, torch.Tensor]]
                       ) -> torch.Tensor:
        """``batch``'s features at ``domain_loss_layer``: from a training forward pass of
        ``batch.x`` captured by :meth:`capture_layer` (with gradient) when there was one,
        else from a forward pass of its own."""
        for x, output in seen:
            if x is batch.x and output.requires_grad:
                return self.layer_rows(output, batch)
        return self.domain_features(batch)

    @staticmethod
    def layer_rows(output: torch.Tensor, batch: Batch) -> torch.Tensor:
        """A layer's output as one row per utterance: ``(batch, frames, d)`` averaged over
        the frames (the real ones when the layer keeps the input's length), other shapes
        flattened."""
        if output.dim() == 3:
            same = batch.mask is not None and output.shape[1] == batch.mask.shape[1]
            return masked_mean(output, batch.mask if same else None)
        return output.reshape(output.shape[0], -1)

    def domain_features(self, batch: Batch) -> torch.Tensor:
        """Features of ``batch`` at ``domain_loss_layer`` from a forward pass of its own,
        one row per utterance."""
        with self.capture_layer() as seen:
            self.model_.embed(batch.x, batch.mask)
        return self.layer_rows(seen[0][1], batch)

    def check_settings(self) -> None:
        """Types, :meth:`check_params` and the domain-loss settings."""
        super().check_settings()
        self.check_params()
        check_domain_loss(self.domain_loss, self.domain_loss_params)
        if not float(self.domain_loss_weight) >= 0:
            raise ConfigError(f"{self.name}: domain_loss_weight must be >= 0, got "
                              f"{self.domain_loss_weight!r}")

    def _with_domain_loss(self, phase: Phase, data: FitData) -> Phase:
        """``phase`` with the domain streams and :class:`DomainLossTask` when aligned."""
        if self.domain_loss == "none" or not self.aligns_phase(phase):
            return phase
        clash = sorted(set(DOMAIN_STREAMS) & set(phase.streams))
        if clash:
            raise EmobridgeError(f"{self.name}: phase {phase.name!r} already has streams "
                                 f"{clash}")
        assert data.target is not None  # checked in fit
        sides = {"source": data.source, "target": data.target.without_labels()}
        streams = {**phase.streams, **{DOMAIN_SIDES[side]: d for side, d in sides.items()
                                       if side not in phase.streams}}
        return replace(phase, streams=streams, task=DomainLossTask(self, phase.task or self),
                       primary=phase.primary or next(iter(phase.streams)))

    # -- TrainingTask defaults -----------------------------------------------------------
    def training_step(
        self, batches: dict[str, Batch], ctx: EpochContext
    ) -> dict[str, torch.Tensor]:
        """Cross-entropy on the labelled rows of every stream's batch."""
        return self.cross_entropy_step(batches)

    def cross_entropy_step(self, batches: dict[str, Batch]) -> dict[str, torch.Tensor]:
        """Mean over streams of :meth:`supervised_loss` (streams with labelled rows)."""
        losses = [self.supervised_loss(b) for b in batches.values() if bool(b.labelled.any())]
        if not losses:
            raise EmobridgeError(f"{self.name}: a training batch has no labelled utterance")
        loss = torch.stack(losses).mean()
        return {"loss": loss, "ce": loss.detach()}

    def supervised_loss(self, batch: Batch, logits: torch.Tensor | None = None,
                        reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy of the labelled rows of ``batch`` (UNLABELLED rows ignored), with the
        ``class_weight`` weights. ``logits`` default: ``model_(batch.x, batch.mask)``."""
        if logits is None:
            logits = self.model_(batch.x, batch.mask)
        weight = self.class_weights_.to(logits.device) if self.class_weights_ is not None \
            else None
        if not bool(batch.labelled.any()):
            return logits.sum() * 0.0
        return nn.functional.cross_entropy(logits, batch.y, weight=weight,
                                           ignore_index=UNLABELLED, reduction=reduction)

    # -- fit -----------------------------------------------------------------------------
    def fit(
        self,
        source: EmotionData,
        target_unlabelled: EmotionData | None = None,
        target_labelled: EmotionData | None = None,
        validation: EmotionData | None = None,
    ) -> NeuralMethod:
        """Train; the fixed sequence of hooks is in the module docstring."""
        self.check_settings()
        data = self.select_data(self._inputs(source, target_unlabelled, target_labelled,
                                             validation))
        if self.domain_loss != "none" and data.target is None:
            raise ConfigError(f"{self.name}: domain_loss={self.domain_loss!r} needs target "
                              "training data to align with (target_unlabelled or "
                              "target_labelled)")
        self.classes_ = tuple(data.source.classes)
        self.input_dim_ = data.source.dim
        self.is_sequence_ = data.source.is_sequence
        self.backbone_ = resolve_backbone(self.backbone, self.input_dim_, self.is_sequence_)
        self.trainer_ = None
        seed_everything(self.seed)  # model initialisation depends on the seed only
        self.model_ = self.build_model()
        if self.domain_loss != "none":
            self.domain_layer()  # a bad layer name fails before any training
        self.normaliser_ = self.fit_normaliser(data)
        data = data.map(self.normaliser_.transform)
        self.class_weights_ = None
        self.train_result_ = None
        self.history_: list[dict[str, Any]] = []
        self.init_state(data)
        for index, phase in enumerate(self.phases(data)):
            if index == 0 and self.class_weights_ is None:
                self.class_weights_ = self._class_weights(phase.streams)
            self._run_phase(self._with_domain_loss(phase, data))
        self.finish_fit(data)
        self.model_.eval()
        return self

    def _inputs(self, source: EmotionData, target_unlabelled: EmotionData | None,
                target_labelled: EmotionData | None, validation: EmotionData | None) -> FitData:
        """Step 2: shared checks; the labels of ``target_unlabelled`` hidden."""
        if source is None or not len(source):
            raise EmobridgeError(f"{self.name}: source data is empty")
        if not source.is_labelled:
            raise EmobridgeError(f"{self.name}: source data must be fully labelled")
        for d in (target_unlabelled, target_labelled, validation):
            if d is None or not len(d):
                continue
            if d.classes != source.classes:
                raise EmobridgeError(f"{self.name}: classes {d.classes} differ from the "
                                     f"source's {source.classes}")
            if d.is_sequence != source.is_sequence or d.dim != source.dim:
                raise EmobridgeError(f"{self.name}: features do not match the source's "
                                     f"({_describe(d)} vs {_describe(source)})")
        data = FitData(source, target_unlabelled, target_labelled, validation)
        if data.target_labelled is not None and not data.target_labelled.is_labelled:
            raise EmobridgeError(f"{self.name}: target_labelled has unlabelled utterances")
        if data.target_unlabelled is not None:
            # An unsupervised method must never read target labels.
            data.target_unlabelled = data.target_unlabelled.without_labels()
        return data

    def _run_phase(self, phase: Phase) -> None:
        """Step 8 for one phase: train, store the result, extend ``history_``."""
        trainer = Trainer(replace(self.train_config(), **dict(phase.config)))
        self.trainer_ = trainer
        self.device_ = trainer.device
        self.model_.to(self.device_)
        result = trainer.fit(self.model_, phase.task or self, phase.streams,
                             validation=phase.validation, primary=phase.primary)
        setattr(self, phase.result_attr, result)
        tag = {} if phase.name == "train" else {"phase": phase.name}
        self.history_ += [{**tag, **record} for record in result.history]

    def _class_weights(self, streams: Mapping[str, EmotionData]) -> torch.Tensor | None:
        """``class_weight="balanced"``: inverse class frequencies of the labelled rows."""
        if self.class_weight is None:
            return None
        if self.class_weight != "balanced":
            raise ConfigError(f"class_weight must be None or 'balanced', got "
                              f"{self.class_weight!r}")
        labels = np.concatenate([d.labels for d in streams.values()])
        labels = labels[labels != UNLABELLED]
        counts = np.bincount(labels, minlength=len(self.classes_)).astype(np.float64)
        weights = np.where(counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)),
                           0.0)
        return torch.as_tensor(weights, dtype=torch.float32)

    # -- predict -------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise EmobridgeError(f"{self.name}: call fit() (or load()) first")

    def _prepare(self, data: EmotionData) -> EmotionData:
        self._check_fitted()
        if not len(data):
            raise EmobridgeError(f"{self.name}: no utterances to predict")
        if data.is_sequence != self.is_sequence_ or data.dim != self.input_dim_:
            raise EmobridgeError(
                f"{self.name}: the model expects "
                f"{_describe(is_sequence=self.is_sequence_, dim=self.input_dim_)}, got "
                f"{_describe(data)}")
        return self.normaliser_.transform(data)

    def _trainer(self) -> Trainer:
        if getattr(self, "trainer_", None) is None:
            self.trainer_ = Trainer(self.train_config())
            self.device_ = self.trainer_.device
        return self.trainer_

    def predict_logits_np(self, data: EmotionData) -> np.ndarray:
        """Class logits ``(n, classes)`` (eval mode, batches, whole utterances)."""
        data = self._prepare(data)
        return self._trainer().predict_logits(self.model_, data, task=self)

    def predict_proba(self, data: EmotionData) -> np.ndarray:
        """Softmax of the logits, ``(len(data), n_classes)``."""
        self.check_params()
        logits = torch.as_tensor(self.predict_logits_np(data))
        return torch.softmax(logits, dim=1).numpy().astype(np.float64)

    def embed(self, data: EmotionData) -> np.ndarray:
        """The pooled representation before the classifier, ``(len(data), d)``."""
        data = self._prepare(data)
        return self._trainer().map_batches(self.model_, data,
                                           lambda m, b: m.embed(b.x, b.mask))

    # -- persistence ---------------------------------------------------------------------
    _NOT_STATE: ClassVar[tuple[str, ...]] = ("restoring_",)

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Everything prediction needs: JSON metadata (name, params, classes, input shape,
        small fitted values such as NNPM's memory size) and named arrays (the model's
        weights and buffers under ``model.``, the normaliser's statistics)."""
        from emobridge import __version__
        from emobridge.methods.state import fitted_scalars, normaliser_state

        self._check_fitted()
        norm_meta, arrays = normaliser_state(self.normaliser_)
        for key, value in self.model_.state_dict().items():
            arrays[f"model.{key}"] = value.detach().cpu().numpy().copy()
        scalars = {k: v for k, v in fitted_scalars(self).items() if k not in self._NOT_STATE}
        meta = {"method": self.name, "params": self.get_params(),
                "classes": list(self.classes_), "input_dim": self.input_dim_,
                "is_sequence": self.is_sequence_, "backbone": self.backbone_,
                "normaliser": norm_meta, "fitted": scalars, "history": self.history_,
                "emobridge_version": __version__}
        return meta, arrays

    @classmethod
    def from_state(cls, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
                   device: str | None = None) -> NeuralMethod:
        """Rebuild a method from :meth:`get_state`'s output (``device`` overrides the
        saved one)."""
        from emobridge.methods.state import normaliser_from_state, restore_scalars

        klass = available_methods().get(meta["method"],
                                        cls if meta["method"] == cls.name else None)
        if klass is None:
            raise EmobridgeError(f"unknown method {meta['method']!r}")
        params = {**meta["params"], "resume": False, "checkpoint_dir": None, "log_csv": None}
        if device is not None:
            params["device"] = device
        method = klass(**{k: v for k, v in params.items() if k in klass.param_names()})
        restore_scalars(method, meta.get("fitted", {}))
        method.classes_ = tuple(meta["classes"])
        method.input_dim_ = int(meta["input_dim"])
        method.is_sequence_ = bool(meta["is_sequence"])
        method.backbone_ = meta["backbone"]
        method.normaliser_ = normaliser_from_state(meta["normaliser"], arrays)
        method.history_ = meta.get("history", [])
        method.class_weights_ = None
        method.trainer_ = None
        trainer = method._trainer()
        method.restoring_ = True  # no pretrained-weights file read: the saved weights follow
        try:
            method.model_ = method.build_model()
        finally:
            del method.restoring_
        state = {k[len("model."):]: torch.from_numpy(np.array(v)) for k, v in arrays.items()
                 if k.startswith("model.")}
        try:
            method.model_.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise EmobridgeError(f"{meta['method']}: saved weights do not fit the model: "
                                 f"{first}") from None
        method.model_.to(trainer.device).eval()
        return method
