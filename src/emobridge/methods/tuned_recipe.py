"""``recommended_tuned``: the recommended recipe on Whisper layers tuned toward the target.

Issue 24's first direction: fine-tune Whisper's middle layers (not the word-tuned top) on
the source plus the pseudo-labelled target, from cached frames. Measured in
``benchmarks/RESULTS.md`` ("finetune", "finetune-pseudo"); not yet the shipped recipe.

Features: :data:`TUNED_RECIPE_FEATURES`, the frames of hidden state ``first - 1`` (the
output of Whisper base's first layer, RMS-levelled audio). ``fit``:

1. hidden states ``first..last`` computed by the pretrained layers and mean-pooled: the
   recipe's own features; the recipe (:class:`~emobridge.methods.recommended.Recommended`,
   ``recipe`` parameters) runs on them and predicts the target pool;
2. pseudo-labels: per predicted class, the ``pick_share`` of its target rows with the
   highest probability (half: a share fixed before any score, as for the recipe's rounds);
   with a ``source_delta`` (the same layers tuned on the labelled source beforehand,
   ``emobridge features tune``) and a source of at least ``source_delta_speakers``
   speakers, the probabilities are the mean of the recipe's on the pretrained layers and
   its on the source-tuned ones (the two go wrong on different targets; tuning on few
   speakers learns them rather than the emotions, "finetune-pseudo");
3. the layers are tuned (:func:`~emobridge.training.encoder_tuning.tune_whisper_layers`) on
   at most ``source_cap`` source utterances (a seeded draw; 500, the largest cap measured
   whose adaptation stayed under 5 min on 2 CPU cores in the benchmark's loop: 251 s at
   most on the grid against 374 s with 1000, the same mean UA, "finetune-pseudo"; this
   method took 280-313 s from four corpora), the picks with their pseudo-labels and the
   labelled target utterances with their labels; their change is cut to ``rank`` and
   rounded to float16 (:mod:`emobridge.models.layer_delta`), so the saved model is the
   fitted one;
4. hidden states from the tuned layers, and the recipe again: the final model.

``predict_proba`` runs the tuned layers on the frames it is given. Transductive, as the
recipe: the pseudo-labels come from the target pool passed as ``target_unlabelled``; no
target label is read. Without a target pool the layers are tuned on the source alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from emobridge.errors import ConfigError, EmobridgeError, EmobridgeWarning
from emobridge.methods.base import AdaptationMethod, register_method
from emobridge.methods.data import EmotionData
from emobridge.methods.recommended import Recommended

#: Frames of Whisper base's first layer on RMS-levelled audio: what the method reads.
TUNED_RECIPE_FEATURES = "whisper:backend=torch,layer=1,pooling=none,level=rms"


@register_method
class RecommendedTuned(AdaptationMethod):
    """The recipe on Whisper hidden states tuned on source + pseudo-labelled target
    (module docstring). Frames only.

    Parameters
    ----------
    encoder_model:
        The Whisper model of the features (``"base"``, a folder or a hub id).
    first, last:
        Tuned hidden states (the features are the frames of state ``first - 1``).
    pick_share:
        Share of each predicted class's target rows taken as pseudo-labels.
    source_cap:
        Most source utterances in the tuning set (``None``: all). Bounds the adaptation's
        time; without source rows (the picks alone) the grid's mean fell 1.4 points.
    epochs, batch_size, lr_layers, lr_heads, weight_decay:
        Tuning settings (:func:`~emobridge.training.encoder_tuning.tune_whisper_layers`).
    rank:
        Rank of each tuned matrix's stored change (``None``: whole).
    source_delta:
        A weight-delta file of layers ``first..last`` tuned on the labelled source
        (``emobridge features tune``); the pseudo-labels then come from the mean of the
        recipe on the pretrained and on these layers. ``None``: the pretrained ones alone.
    source_delta_speakers:
        Fewest source speakers for ``source_delta`` to be used (fewer: it is ignored, with
        a warning, and the fit report says so). 12: on the grid 12 and 16 tie at 75.6 mean
        UA, chosen leave-one-corpus-out among 8-20 it lands at 8-16 (RESULTS.md,
        "finetune-pseudo").
    recipe:
        Parameters of the recipe run before and after tuning (``seed`` is this method's).
    device, seed, progress:
        Where the layers run, the seed of the draw and the tuning, tuning progress bars.
    """

    name = "recommended_tuned"
    default_features = TUNED_RECIPE_FEATURES

    def __init__(self, *, encoder_model: str = "base", first: int = 2, last: int = 4,
                 pick_share: float = 0.5, source_cap: int | None = 500, epochs: int = 3,
                 batch_size: int = 8, lr_layers: float = 2e-5, lr_heads: float = 1e-3,
                 weight_decay: float = 0.01, rank: int | None = None,
                 source_delta: str | None = None, source_delta_speakers: int = 12,
                 recipe: Mapping[str, Any] | None = None, device: str = "cpu",
                 seed: int = 0, progress: bool = False) -> None:
        self._store_params(locals())

    def check_settings(self) -> None:
        super().check_settings()
        if not 0 < self.pick_share <= 1:
            raise ConfigError(f"recommended_tuned: pick_share must be in (0, 1], got "
                              f"{self.pick_share!r}")
        if self.source_cap is not None and self.source_cap < 1:
            raise ConfigError(f"recommended_tuned: source_cap must be >= 1 or null, got "
                              f"{self.source_cap!r}")
        if self.rank is not None and self.rank < 1:
            raise ConfigError(f"recommended_tuned: rank must be >= 1 or null, got {self.rank!r}")
        if self.source_delta is not None and not (isinstance(self.source_delta, str)
                                                  and self.source_delta):
            raise ConfigError(f"recommended_tuned: source_delta must be the path of a weight-"
                              f"delta file or null, got {self.source_delta!r}")
        if isinstance(self.source_delta_speakers, bool) or not isinstance(
                self.source_delta_speakers, int) or self.source_delta_speakers < 1:
            raise ConfigError(f"recommended_tuned: source_delta_speakers must be >= 1, got "
                              f"{self.source_delta_speakers!r}")
        self._recipe().check_settings()

    def check_features(self, output: Literal["frames", "vector"], dim: int | None) -> None:
        if output != "frames":
            raise ConfigError("recommended_tuned: needs frames of the hidden state below the "
                              f"tuned ones (e.g. {TUNED_RECIPE_FEATURES!r}); got vectors")

    def _recipe(self) -> Recommended:
        params = dict(self.recipe or {})
        valid = set(Recommended.param_names()) - {"seed", "views"}  # set here
        unknown = sorted(set(params) - valid)
        if unknown:
            raise ConfigError(f"recommended_tuned: unknown recipe parameters {unknown}; "
                              f"valid: {sorted(valid)}")
        return Recommended(**{**params, "seed": self.seed, "views": self.last - self.first + 1})

    def _span(self, delta: Mapping[str, np.ndarray] | None = None) -> Any:
        """The pretrained layers ``first..last`` (with ``delta`` added), ready to run."""
        from emobridge.features.extractors.whisper import WhisperExtractor
        from emobridge.models.layer_delta import apply_delta
        from emobridge.training.encoder_tuning import LayerSpanClassifier, check_states

        encoder = getattr(self, "encoder_", None) or WhisperExtractor(
            model=self.encoder_model, backend="torch").load()
        check_states(encoder, self.first, self.last, "recommended_tuned")
        self.encoder_ = encoder
        span = LayerSpanClassifier(encoder.layers[self.first - 1: self.last],
                                   encoder.config.d_model, 1)
        if delta:
            apply_delta(span, _renumber(delta, 1 - self.first),
                        source=f"recommended_tuned state (layers numbered from hidden "
                               f"state {self.first})")
        return span.eval()

    def _check_frames(self, data: EmotionData) -> None:
        if not data.is_sequence or data.dim != self.encoder_.config.d_model:
            raise ConfigError(f"recommended_tuned: needs frames of hidden state "
                              f"{self.first - 1} with {self.encoder_.config.d_model} dims "
                              f"(e.g. {TUNED_RECIPE_FEATURES!r})")

    def _vectors(self, data: EmotionData, span: Any = None) -> EmotionData:
        """``data``'s frames through ``span`` (default: the current layers), pooled."""
        from emobridge.runtime import torch_device
        from emobridge.training.encoder_tuning import span_vectors

        self._check_frames(data)
        return span_vectors(self.span_ if span is None else span, data,
                            device=str(torch_device(self.device)))

    def _uses_source_delta(self, source: EmotionData) -> bool:
        """Whether the picks take the source-tuned layers too (:attr:`source_delta`, and
        a source of at least :attr:`source_delta_speakers` speakers)."""
        return self.source_delta is not None and len(set(source.speakers)) >= int(
            self.source_delta_speakers)

    def _picks_from(self, source: EmotionData, target: EmotionData | None) -> str:
        """What the pseudo-labels came from, for the fit report; a ``source_delta`` left
        out for too few source speakers warns."""
        if target is None:
            return "no target pool"
        if self._uses_source_delta(source):
            return "pretrained and source-tuned layers"
        if self.source_delta is not None:
            import warnings

            warnings.warn(f"recommended_tuned: source_delta {self.source_delta} not used: the "
                          f"source has {len(set(source.speakers))} speakers, fewer than "
                          f"source_delta_speakers = {self.source_delta_speakers}",
                          EmobridgeWarning, stacklevel=3)
            return "pretrained layers (source_delta not used: too few source speakers)"
        return "pretrained layers"

    def _source_span(self) -> Any:
        """The layers with :attr:`source_delta` added; a file of other layers raises."""
        from emobridge.models.layer_delta import read_delta

        delta, meta = read_delta(str(self.source_delta))
        states = meta.get("hidden_states")
        if states is not None and states != f"{self.first}-{self.last}":
            raise ConfigError(f"recommended_tuned: source_delta {self.source_delta} holds "
                              f"hidden states {states}, not {self.first}-{self.last}")
        return self._span(delta)

    # -- fit -------------------------------------------------------------------------------
    def fit(self, source: EmotionData, target_unlabelled: EmotionData | None = None,
            target_labelled: EmotionData | None = None,
            validation: EmotionData | None = None) -> RecommendedTuned:
        """Recipe on the pretrained layers, tuning on source + confident pseudo-labels (+
        ``target_labelled``), recipe on the tuned layers (module docstring). ``validation``
        is not used."""
        from emobridge.models.layer_delta import weight_delta

        self.check_settings()
        if not len(source) or not source.is_labelled:
            raise EmobridgeError("recommended_tuned: source data must be non-empty and "
                                 "labelled")
        self.__dict__.pop("encoder_", None)  # encoder_model may have changed since
        self.span_ = self._span()
        self._check_frames(source)
        self.classes_ = tuple(source.classes)
        target = target_unlabelled if target_unlabelled is not None and len(
            target_unlabelled) else None
        tuning, picked = self._tuning_set(source, target, target_labelled)
        tuned = self._tune(tuning)
        pretrained = self.span_.state_dict()
        delta = weight_delta({k: v for k, v in tuned.state_dict().items()
                              if k.startswith("layers.")},
                             {k: v for k, v in pretrained.items() if k.startswith("layers.")},
                             self.rank)
        self.delta_ = {k: v.astype(np.float16)  # the encoder's own layer numbers
                       for k, v in _renumber(delta, self.first - 1).items()}
        self.span_ = self._span(self.delta_)  # what a loaded model will run
        self.recipe_ = self._fit_recipe(source, None if target is None else self._vectors(
            target), target_labelled)
        self.fit_report_ = {**self.recipe_.fit_report(), "tuned_on": len(tuning),
                            "pseudo_labelled": picked, "picks_from": self._picks_from(
                                source, target)}
        return self

    def _fit_recipe(self, source: EmotionData, target_vectors: EmotionData | None,
                    labelled: EmotionData | None, span: Any = None) -> Recommended:
        """The recipe on ``span``'s vectors (default: the current layers); the target
        pool's come computed, because callers that label the pool reuse them."""
        return self._recipe().fit(
            self._vectors(source, span), target_vectors,
            None if labelled is None or not len(labelled) else self._vectors(labelled, span))

    def _pool_proba(self, source: EmotionData, target: EmotionData,
                    labelled: EmotionData | None) -> np.ndarray:
        """The recipe's probabilities on the target pool, adapted to it: on the pretrained
        layers, or the mean of those and the source-tuned layers' (``source_delta``)."""
        spans = [self.span_] + ([self._source_span()] if self._uses_source_delta(source)
                                else [])
        probas = []
        for span in spans:
            vectors = self._vectors(target, span)  # once: the recipe adapts to them, labels them
            probas.append(self._fit_recipe(source, vectors, labelled, span
                                           ).predict_proba(vectors))
        return np.mean(probas, axis=0)

    def _tuning_set(self, source: EmotionData, target: EmotionData | None,
                    labelled: EmotionData | None) -> tuple[EmotionData, int]:
        """Capped source draw, the target's confident pseudo-labels, the labelled target;
        and the number of pseudo-labels."""
        rng = np.random.default_rng(self.seed)
        keep = np.arange(len(source)) if self.source_cap is None else np.sort(
            rng.permutation(len(source))[:self.source_cap])
        parts, picked = [source.subset(keep)], 0
        if target is not None:
            proba = self._pool_proba(source, target, labelled)
            picks = confident_picks(proba, self.pick_share)
            picked = len(picks)
            chosen = target.subset(picks)
            parts.append(type(chosen)(chosen.features, proba[picks].argmax(axis=1),
                                      chosen.speakers, chosen.languages, chosen.ids,
                                      chosen.classes))
        if labelled is not None and len(labelled):
            parts.append(labelled)
        return EmotionData.concat(parts), picked

    def _tune(self, tuning: EmotionData) -> Any:
        from emobridge.training.encoder_tuning import tune_whisper_layers

        return tune_whisper_layers(
            self.encoder_, tuning, self.first, self.last, epochs=self.epochs,
            batch_size=self.batch_size, lr_layers=self.lr_layers, lr_heads=self.lr_heads,
            weight_decay=self.weight_decay, seed=self.seed, device=self.device,
            progress=self.progress)

    # -- prediction and state --------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "recipe_"):
            raise EmobridgeError("recommended_tuned: call fit() (or load()) first")

    def predict_proba(self, data: EmotionData) -> np.ndarray:
        self._check_fitted()
        return self.recipe_.predict_proba(self._vectors(data))

    def embed(self, data: EmotionData) -> np.ndarray:
        """The recipe's standardised vectors of the tuned layers."""
        self._check_fitted()
        return self.recipe_.embed(self._vectors(data))

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The recipe's state (its arrays prefixed ``recipe.``) and the layers' change
        (prefixed ``delta.``, float16)."""
        self._check_fitted()
        recipe_meta, recipe_arrays = self.recipe_.get_state()
        arrays = {f"recipe.{k}": v for k, v in recipe_arrays.items()}
        arrays.update({f"delta.{k}": v for k, v in self.delta_.items()})
        return {"method": self.name, "params": self.get_params(),
                "classes": list(self.classes_), "recipe": recipe_meta,
                "fit_report": self.fit_report()}, arrays

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray],
                   device: str | None = None) -> RecommendedTuned:
        """Rebuild from :meth:`get_state`'s output: the pretrained encoder is loaded and the
        saved change added (checked against it first)."""
        if meta.get("method") != cls.name:
            raise EmobridgeError(f"holds method {meta.get('method')!r}, not {cls.name!r}")
        try:
            params = {k: v for k, v in meta["params"].items() if k in cls.param_names()}
            method = cls(**{**params, **({"device": device} if device else {})})
            method.classes_ = tuple(meta["classes"])
            method.fit_report_ = dict(meta.get("fit_report") or {})
            method.recipe_ = Recommended.from_state(meta["recipe"], {
                k.removeprefix("recipe."): v for k, v in arrays.items()
                if k.startswith("recipe.")})
            method.delta_ = {k.removeprefix("delta."): v for k, v in arrays.items()
                             if k.startswith("delta.")}
        except (KeyError, TypeError, ValueError) as exc:
            raise EmobridgeError(f"recommended_tuned: saved state is incomplete ({exc})"
                                 ) from None
        method.span_ = method._span(method.delta_)
        return method


def _renumber(delta: Mapping[str, np.ndarray], offset: int) -> dict[str, np.ndarray]:
    """``delta`` with every ``layers.<i>.`` name moved to ``layers.<i + offset>.``; a name
    that is not a layer's raises :class:`~emobridge.errors.EmobridgeError`."""
    out = {}
    for key, value in delta.items():
        head, index, rest = (key.split(".", 2) + ["", ""])[:3]
        if head != "layers" or not index.isdigit() or not rest:
            raise EmobridgeError(f"recommended_tuned state: {key!r} is not a layer's change")
        out[f"layers.{int(index) + offset}.{rest}"] = value
    return out


def confident_picks(proba: np.ndarray, share: float) -> np.ndarray:
    """Row indices: per predicted class, the ``share`` of its rows with the highest
    probability (at least one), in ascending order."""
    pred, picks = proba.argmax(axis=1), []
    for c in np.unique(pred):
        rows = np.flatnonzero(pred == c)
        order = np.argsort(-proba[rows, c], kind="stable")
        picks.append(rows[order][:max(1, int(share * len(rows)))])
    return np.sort(np.concatenate(picks))
