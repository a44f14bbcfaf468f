"""Base class of the torch methods: input standardisation, the backbone, the training loop,
batched prediction, embeddings and save / load.

A subclass is a :class:`NeuralMethod` (so an :class:`~emobridge.methods.base.AdaptationMethod`)
*and* a :class:`~emobridge.training.TrainingTask`: it plugs its loss into the shared
:class:`~emobridge.training.Trainer` by overriding a few hooks::

    @register_method
    class MyMethod(NeuralMethod):
        name = "my_method"

        def __init__(self, alpha: float = 1.0, **kwargs):
            super().__init__(**kwargs)      # every NeuralMethod parameter stays available
            self.alpha = alpha

        def _training_streams(self, source, target_unlabelled, target_labelled):
            return {"source": source, "target": target_unlabelled}

        def training_step(self, batches, ctx):
            ce = self.supervised_loss(batches["source"])
            ...
            return {"loss": ce + self.alpha * other, "ce": ce, "other": other}

Hooks (all optional except what the default does not cover):

- :meth:`_normalisation_sets` which data fit the standardisation statistics;
- :meth:`_training_streams` the named streams the trainer batches (already standardised);
- :meth:`_validation_data` the data monitored for early stopping;
- :meth:`_build_model` the ``nn.Module`` (default :class:`EmotionClassifier` over the backbone);
- the :class:`~emobridge.training.TrainingTask` hooks ``training_step``, ``on_fit_start``,
  ``on_epoch_start``, ``on_epoch_end``, ``validate``, ``predict_logits``,
  ``configure_optimizer``, ``training_state`` / ``load_training_state``.

Parameters of subclasses: ``__init__(self, own params..., **kwargs)`` forwarding ``kwargs`` to
``super().__init__``; :meth:`param_names` collects the parameters along the class hierarchy,
so ``get_params``, ``build_method`` and :meth:`save` / :meth:`load` see all of them.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from emobridge.errors import ConfigError, EmobridgeError
from emobridge.fileio import atomic_path, write_json_atomic
from emobridge.methods.base import AdaptationMethod, available_methods
from emobridge.methods.data import UNLABELLED, EmotionData
from emobridge.models import EmotionClassifier, build_backbone, resolve_backbone
from emobridge.runtime import seed_everything
from emobridge.training import (
    Batch,
    EpochContext,
    TrainConfig,
    Trainer,
    TrainingTask,
    TrainResult,
)

Normalise = Literal["global", "per_corpus", "per_speaker", "none"]

__all__ = ["FeatureNormaliser", "NeuralMethod", "Normalise"]


# ----------------------------------------------------------------------------- normalisation

class FeatureNormaliser:
    """Per-dimension z-scoring of features, fitted on training data.

    Modes
    -----
    ``global``
        One mean / std over every frame (or vector) of the fitting data.
    ``per_corpus``
        One mean / std per language (:class:`EmotionData` carries languages, not corpus names,
        so corpora of one language share statistics). At prediction time a language seen in
        fitting uses its stored statistics; an unseen language is standardised with the
        statistics of the data being predicted (transductive, as usual for per-corpus
        normalisation in cross-corpus SER).
    ``per_speaker``
        Each speaker's utterances z-scored with that speaker's own statistics, at training and
        prediction time alike (speaker ids come with the data). Removes speaker and channel
        offsets; needs several utterances per speaker (a speaker with a single vector becomes
        all zeros).
    ``none``
        Features pass through unchanged (as float32).

    Per-corpus / per-speaker z-scoring helps cross-corpus transfer a lot: it removes much of the
    recording-condition and speaker shift. Target statistics estimated from unlabelled target
    data are legitimate in unsupervised adaptation (no labels are read). Dimensions with a std
    below ``eps`` are only centred.
    """

    MODES = ("global", "per_corpus", "per_speaker", "none")

    def __init__(self, mode: Normalise = "global", eps: float = 1e-5) -> None:
        if mode not in self.MODES:
            raise ConfigError(f"normalise must be one of {self.MODES}, got {mode!r}")
        self.mode = mode
        self.eps = eps
        self.stats_: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    @staticmethod
    def _stats(features: Sequence[np.ndarray], eps: float) -> tuple[np.ndarray, np.ndarray]:
        # Running sums in float64: concatenating every frame of a corpus would not fit memory.
        total = np.zeros(features[0].shape[-1])
        total_sq = np.zeros_like(total)
        count = 0
        for f in features:
            f2 = np.asarray(f, dtype=np.float64).reshape(-1, f.shape[-1])
            total += f2.sum(axis=0)
            total_sq += (f2 * f2).sum(axis=0)
            count += f2.shape[0]
        mean = total / count
        var = np.maximum(total_sq / count - mean * mean, 0.0)
        std = np.sqrt(var)
        std[std < eps] = 1.0
        return mean.astype(np.float32), std.astype(np.float32)

    def _keys(self, data: EmotionData) -> np.ndarray:
        if self.mode == "per_corpus":
            return np.asarray([str(v) for v in data.languages], dtype=object)
        if self.mode == "per_speaker":
            return np.asarray([str(v) for v in data.speakers], dtype=object)
        return np.full(len(data), "__all__", dtype=object)

    def fit(self, datasets: Sequence[EmotionData]) -> FeatureNormaliser:
        """Fit statistics on the union of ``datasets`` (``None`` entries ignored)."""
        datasets = [d for d in datasets if d is not None and len(d)]
        if not datasets:
            raise EmobridgeError("FeatureNormaliser.fit: no data")
        self.stats_ = {}
        if self.mode in ("none", "per_speaker"):
            return self
        groups: dict[str, list[np.ndarray]] = {}
        for d in datasets:
            for key, f in zip(self._keys(d), d.features, strict=True):
                groups.setdefault(key, []).append(f)
        self.stats_ = {k: self._stats(v, self.eps) for k, v in groups.items()}
        return self

    def transform(self, data: EmotionData) -> EmotionData:
        """A copy of ``data`` with standardised float32 features."""
        if self.mode == "none" or not len(data):
            feats = [np.asarray(f, dtype=np.float32) for f in data.features]
        else:
            keys = self._keys(data)
            stats = dict(self.stats_)
            missing = sorted(set(keys) - set(stats))
            for key in missing:  # per-speaker always; unseen languages per corpus
                stats[key] = self._stats([f for k, f in zip(keys, data.features, strict=True)
                                          if k == key], self.eps)
            feats = [((np.asarray(f, dtype=np.float32) - stats[k][0]) / stats[k][1])
                     .astype(np.float32) for k, f in zip(keys, data.features, strict=True)]
        return EmotionData(feats, data.labels, data.speakers, data.languages, data.ids,
                           data.classes)

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "eps": self.eps,
                "stats": {k: [m.tolist(), s.tolist()] for k, (m, s) in self.stats_.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureNormaliser:
        norm = cls(d["mode"], d.get("eps", 1e-5))
        norm.stats_ = {k: (np.asarray(m, np.float32), np.asarray(s, np.float32))
                       for k, (m, s) in d.get("stats", {}).items()}
        return norm


# ----------------------------------------------------------------------------- the method

class NeuralMethod(AdaptationMethod, TrainingTask):
    """Torch method base: standardise, build a backbone, train with the shared loop.

    The default behaviour is plain supervised training on ``source`` (what ``source_only``
    does); subclasses change the streams and the loss.

    Parameters
    ----------
    backbone:
        ``"auto"`` (from the features: vectors -> ``mlp``; frames of <= 256 dims, e.g. log-mel
        -> ``snsa``; wider frames, e.g. encoder features -> ``attention``), ``"snsa"``,
        ``"attention"`` or ``"mlp"``.
    backbone_params:
        Keyword arguments of the backbone class (``SNSA``, ``AttentionHead``, ``MLPHead``).
    normalise:
        Input standardisation, see :class:`FeatureNormaliser`.
    class_weight:
        ``None`` or ``"balanced"`` (cross-entropy weights inversely proportional to the class
        frequencies of the labelled training data; helps UA on imbalanced corpora).
    epochs, batch_size, lr, weight_decay, lr_decay_gamma, lr_decay_every_epochs, patience,
    crop_frames, max_grad_norm, device, seed, checkpoint_dir, log_csv, progress, resume:
        Passed to :class:`~emobridge.training.TrainConfig`.

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
        backbone: str = "auto",
        backbone_params: Mapping[str, Any] | None = None,
        normalise: Normalise = "global",
        class_weight: str | None = None,
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
        checkpoint_dir: str | None = None,
        log_csv: str | None = None,
        progress: bool = False,
        resume: bool = False,
    ) -> None:
        self.backbone = backbone
        self.backbone_params = backbone_params
        self.normalise = normalise
        self.class_weight = class_weight
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.lr_decay_gamma = lr_decay_gamma
        self.lr_decay_every_epochs = lr_decay_every_epochs
        self.patience = patience
        self.crop_frames = crop_frames
        self.max_grad_norm = max_grad_norm
        self.device = device
        self.seed = seed
        self.checkpoint_dir = checkpoint_dir
        self.log_csv = log_csv
        self.progress = progress
        self.resume = resume

    # -- parameters ----------------------------------------------------------------------
    @classmethod
    def param_names(cls) -> list[str]:
        """Constructor parameters along the class hierarchy (subclasses take ``**kwargs``)."""
        names: list[str] = []
        for klass in cls.__mro__:
            if not (isinstance(klass, type) and issubclass(klass, NeuralMethod)):
                continue
            if "__init__" not in vars(klass):
                continue
            sig = inspect.signature(klass.__init__)
            for p in sig.parameters.values():
                if p.name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                    continue
                if p.name not in names:
                    names.append(p.name)
        return names

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

    # -- hooks for subclasses ------------------------------------------------------------
    def _normalisation_sets(self, source: EmotionData, target_unlabelled: EmotionData | None,
                            target_labelled: EmotionData | None) -> list[EmotionData]:
        """Data the standardisation statistics are fitted on. Default: every training input
        the method uses (source, unlabelled target, labelled target). ``source_only``
        overrides this to the source alone."""
        return [d for d in (source, target_unlabelled, target_labelled) if d is not None]

    def _training_streams(self, source: EmotionData, target_unlabelled: EmotionData | None,
                          target_labelled: EmotionData | None) -> dict[str, EmotionData]:
        """Named training streams (standardised). Default: ``{"source": source}``."""
        return {"source": source}

    def _validation_data(self, validation: EmotionData | None, source: EmotionData,
                         target_unlabelled: EmotionData | None,
                         target_labelled: EmotionData | None) -> EmotionData | None:
        """Data monitored for early stopping (standardised). Default: ``validation``."""
        return validation

    def _build_model(self) -> nn.Module:
        """The module to train; default :class:`EmotionClassifier` over the backbone."""
        return EmotionClassifier(self._build_backbone(), len(self.classes_))

    def _build_backbone(self) -> nn.Module:
        return build_backbone(self.backbone_, self.input_dim_, self.is_sequence_,
                              self.backbone_params)

    # -- TrainingTask defaults -----------------------------------------------------------
    def training_step(
        self, batches: dict[str, Batch], ctx: EpochContext
    ) -> dict[str, torch.Tensor]:
        """Cross-entropy on the labelled rows of every stream's batch."""
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

    # -- fit / predict -------------------------------------------------------------------
    def _check_inputs(self, source: EmotionData, *others: EmotionData | None) -> None:
        if source is None or not len(source):
            raise EmobridgeError(f"{self.name}: source data is empty")
        if not source.is_labelled:
            raise EmobridgeError(f"{self.name}: source data must be fully labelled")
        for d in others:
            if d is None or not len(d):
                continue
            if d.classes != source.classes:
                raise EmobridgeError(f"{self.name}: classes {d.classes} differ from the "
                                     f"source's {source.classes}")
            if d.is_sequence != source.is_sequence or d.dim != source.dim:
                raise EmobridgeError(
                    f"{self.name}: features do not match the source's "
                    f"({'frames' if d.is_sequence else 'vectors'} of {d.dim} dims vs "
                    f"{'frames' if source.is_sequence else 'vectors'} of {source.dim})")

    def fit(
        self,
        source: EmotionData,
        target_unlabelled: EmotionData | None = None,
        target_labelled: EmotionData | None = None,
        validation: EmotionData | None = None,
    ) -> NeuralMethod:
        """Standardise, build the model, train (see the class docstring for the hooks)."""
        self._check_inputs(source, target_unlabelled, target_labelled, validation)
        if target_unlabelled is not None and len(target_unlabelled):
            # An unsupervised method must never read target labels.
            target_unlabelled = target_unlabelled.without_labels()
        if target_labelled is not None and len(target_labelled) and \
                not target_labelled.is_labelled:
            raise EmobridgeError(f"{self.name}: target_labelled has unlabelled utterances")
        self.classes_ = tuple(source.classes)
        self.input_dim_ = source.dim
        self.is_sequence_ = source.is_sequence
        self.backbone_ = resolve_backbone(self.backbone, self.input_dim_, self.is_sequence_)
        config = self.train_config()
        trainer = Trainer(config)
        self.device_ = trainer.device

        self.normaliser_ = FeatureNormaliser(self.normalise).fit(
            self._normalisation_sets(source, target_unlabelled, target_labelled))
        prep = self.normaliser_.transform
        src = prep(source)
        tgt_u = prep(target_unlabelled) if target_unlabelled is not None and len(
            target_unlabelled) else None
        tgt_l = prep(target_labelled) if target_labelled is not None and len(
            target_labelled) else None
        val = prep(validation) if validation is not None and len(validation) else None

        seed_everything(self.seed)  # model initialisation depends on the seed only
        self.model_ = self._build_model().to(self.device_)
        streams = self._training_streams(src, tgt_u, tgt_l)
        self.class_weights_ = self._class_weights(streams)
        val = self._validation_data(val, src, tgt_u, tgt_l)
        self.trainer_ = trainer
        self.train_result_: TrainResult = trainer.fit(self.model_, self, streams, validation=val)
        self.history_ = self.train_result_.history
        self.model_.eval()
        return self

    def _class_weights(self, streams: Mapping[str, EmotionData]) -> torch.Tensor | None:
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

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise EmobridgeError(f"{self.name}: call fit() (or load()) first")

    def _prepare(self, data: EmotionData) -> EmotionData:
        self._check_fitted()
        if not len(data):
            raise EmobridgeError(f"{self.name}: no utterances to predict")
        if data.is_sequence != self.is_sequence_ or data.dim != self.input_dim_:
            raise EmobridgeError(
                f"{self.name}: the model expects {'frames' if self.is_sequence_ else 'vectors'}"
                f" of {self.input_dim_} dims, got "
                f"{'frames' if data.is_sequence else 'vectors'} of {data.dim}")
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
        logits = torch.as_tensor(self.predict_logits_np(data))
        return torch.softmax(logits, dim=1).numpy().astype(np.float64)

    def embed(self, data: EmotionData) -> np.ndarray:
        """The pooled representation before the classifier, ``(len(data), d)``."""
        data = self._prepare(data)
        return self._trainer().map_batches(self.model_, data,
                                           lambda m, b: m.embed(b.x, b.mask))

    # -- persistence ---------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``method.json`` (name, params, classes, input shape, normaliser) and the
        weights (``model.safetensors``, or ``model.pt`` without safetensors) to ``directory``
        atomically per file."""
        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model_.state_dict().items()}
        try:
            from safetensors.torch import save_file
        except ImportError:
            save_file = None
        if save_file is not None:
            weights = "model.safetensors"
            with atomic_path(directory / weights) as tmp:
                save_file(state, str(tmp))
        else:
            weights = "model.pt"
            with atomic_path(directory / weights) as tmp:
                torch.save(state, tmp)
        from emobridge import __version__

        write_json_atomic(directory / "method.json", {
            "method": self.name,
            "params": _jsonable(self.get_params()),
            "classes": list(self.classes_),
            "input_dim": self.input_dim_,
            "is_sequence": self.is_sequence_,
            "backbone": self.backbone_,
            "normaliser": self.normaliser_.to_dict(),
            "weights": weights,
            "history": self.history_,
            "emobridge_version": __version__,
        })
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | None = None) -> NeuralMethod:
        """Rebuild a method written by :meth:`save` (``device`` overrides the saved one)."""
        directory = Path(directory)
        meta_path = directory / "method.json"
        if not meta_path.exists():
            raise EmobridgeError(f"{directory}: no method.json (not a saved NeuralMethod)")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        methods = available_methods()
        klass = methods.get(meta["method"], cls if meta["method"] == cls.name else None)
        if klass is None:
            raise EmobridgeError(f"{meta_path}: unknown method {meta['method']!r}")
        params = dict(meta["params"])
        if device is not None:
            params["device"] = device
        params["resume"] = False
        method = klass(**{k: v for k, v in params.items() if k in klass.param_names()})
        method.classes_ = tuple(meta["classes"])
        method.input_dim_ = int(meta["input_dim"])
        method.is_sequence_ = bool(meta["is_sequence"])
        method.backbone_ = meta["backbone"]
        method.normaliser_ = FeatureNormaliser.from_dict(meta["normaliser"])
        method.history_ = meta.get("history", [])
        method.class_weights_ = None
        trainer = method._trainer()
        method.model_ = method._build_model()
        path = directory / meta["weights"]
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            method.model_.load_state_dict(state)
        except RuntimeError as exc:
            raise EmobridgeError(f"{path}: weights do not fit the model: {exc}") from None
        method.model_.to(trainer.device).eval()
        return method


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value
