"""Fine-tuning a span of a Whisper encoder's layers on cached frames, as a weight delta.

Issue 24's first direction (``benchmarks/RESULTS.md``, "finetune"): the recommended recipe
reads the mean-pooled hidden states 2-4 of Whisper base; tuning the layers that make them on
labelled emotional speech moves RAVDESS -> EMO-DB from 73 to 91 % UA. The frames below the
span (``whisper:backend=torch,layer=K,pooling=none``, ``K = first - 1``) are computed once
by the feature store, so each epoch runs only the span.

Hidden states are numbered as the ``whisper`` extractor's ``layer``: state 0 is the input of
the first transformer layer, state ``i`` the output of layer ``i``. Tuning states ``first`` to
``last`` trains ``encoder.layers[first - 1 : last]``. ``last`` stays below the top state,
which carries the encoder's final layer norm.

Objective (choices of this toolkit, fixed before any score): one linear head per tuned state
on its mean over real frames (what the recipe pools), the heads' logits averaged, class-
balanced cross-entropy (weights ``n / (classes x count)``). AdamW with two learning rates:
``lr_layers`` 2e-5 for the pretrained layers (small steps keep what pre-training learnt),
``lr_heads`` 1e-3 for the fresh heads; weight decay 0.01, 3 epochs, batches of 8. The heads
are dropped afterwards: :func:`span_delta` keeps only the layers' change, keyed by the
encoder's parameter names, for the extractor's ``delta`` option.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emobridge.errors import ConfigError
from emobridge.models.layer_delta import weight_delta
from emobridge.models.layers import masked_mean
from emobridge.runtime import seed_everything
from emobridge.training.batching import UNLABELLED, Batch
from emobridge.training.config import TrainConfig
from emobridge.training.loop import Trainer
from emobridge.training.task import EpochContext, TrainingTask

if TYPE_CHECKING:
    import pandas as pd

    from emobridge.methods.data import EmotionData
    from emobridge.models.whisper_encoder import WhisperEncoder

__all__ = ["LayerSpanClassifier", "check_states", "span_delta", "span_vectors", "tune_on_manifest",
           "tune_whisper_layers"]


class LayerSpanClassifier(nn.Module):
    """Copies of encoder ``layers`` (float32) with one linear head per layer on its output's
    mean over real frames; ``forward`` averages the heads' logits."""

    def __init__(self, layers: Sequence[nn.Module], d_model: int, n_classes: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for layer in layers).float()
        self.heads = nn.ModuleList(nn.Linear(d_model, n_classes) for _ in self.layers)

    def pooled(self, x: torch.Tensor, mask: torch.Tensor | None) -> list[torch.Tensor]:
        """Each layer's output ``(batch, frames, d)`` averaged over the real frames."""
        attn = None if mask is None or bool(mask.all()) else mask[:, None, None, :]
        outs = []
        for layer in self.layers:
            x = layer(x, attn)
            outs.append(masked_mean(x, mask))
        return outs

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        pooled = self.pooled(x, mask)
        return sum(head(p) for head, p in zip(self.heads, pooled, strict=True)) / len(pooled)


class _SpanTask(TrainingTask):
    """Class-balanced cross-entropy; AdamW with one learning rate for the layers, one for
    the heads."""

    def __init__(self, class_weight: torch.Tensor, lr_layers: float) -> None:
        self.class_weight = class_weight
        self.lr_layers = lr_layers

    def make_optimizer(self, model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
        assert isinstance(model, LayerSpanClassifier)
        return torch.optim.AdamW([{"params": model.layers.parameters(), "lr": self.lr_layers},
                                  {"params": model.heads.parameters(), "lr": config.lr}],
                                 weight_decay=config.weight_decay)

    def training_step(self, batches: dict[str, Batch], ctx: EpochContext
                      ) -> dict[str, torch.Tensor]:
        batch = batches["train"]
        logits = ctx.model(batch.x, batch.mask)
        loss = F.cross_entropy(logits, batch.y, weight=self.class_weight.to(logits.device))
        return {"loss": loss}


def check_states(encoder: WhisperEncoder, first: int, last: int,
                 who: str = "encoder tuning") -> None:
    """Refuse hidden states ``first..last`` that ``encoder`` cannot tune (``who`` names the
    caller in the :class:`~emobridge.errors.ConfigError`)."""
    top = encoder.config.n_layers
    if not (isinstance(first, int) and isinstance(last, int) and 1 <= first <= last < top):
        raise ConfigError(f"{who}: hidden states first..last must satisfy 1 <= first "
                          f"<= last < {top} (the top state has the final layer norm), got "
                          f"{first!r}..{last!r}")


def _check_span(encoder: WhisperEncoder, frames: EmotionData, first: int, last: int) -> None:
    check_states(encoder, first, last)
    if not frames.is_sequence or frames.dim != encoder.config.d_model:
        raise ConfigError(f"encoder tuning: needs frames (pooling=none) of hidden state "
                          f"{first - 1} with {encoder.config.d_model} dims, got "
                          f"{'frames' if frames.is_sequence else 'vectors'} of {frames.dim}")
    if (frames.labels == UNLABELLED).any() or len(np.unique(frames.labels)) < 2:
        raise ConfigError("encoder tuning: every utterance needs a label, and at least two "
                          "classes must be present")


def tune_whisper_layers(encoder: WhisperEncoder, frames: EmotionData, first: int = 2,
                        last: int = 4, *, epochs: int = 3, batch_size: int = 8,
                        lr_layers: float = 2e-5, lr_heads: float = 1e-3,
                        weight_decay: float = 0.01, seed: int = 0, device: str = "cpu",
                        progress: bool = False) -> LayerSpanClassifier:
    """Hidden states ``first..last`` of ``encoder`` tuned on ``frames`` (labelled frames of
    hidden state ``first - 1``); returns the tuned span (eval mode). ``encoder`` itself is
    not changed. Deterministic for a ``seed`` on one device."""
    _check_span(encoder, frames, first, last)
    seed_everything(seed)  # the heads' initial weights
    model = LayerSpanClassifier(encoder.layers[first - 1: last], encoder.config.d_model,
                                len(frames.classes))
    counts = np.bincount(frames.labels, minlength=len(frames.classes)).astype(np.float64)
    weight = np.where(counts > 0, len(frames.labels) / (len(counts) * np.maximum(counts, 1)),
                      0.0)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr_heads,
                         weight_decay=weight_decay, device=device, seed=seed,
                         progress=progress)
    task = _SpanTask(torch.tensor(weight, dtype=torch.float32), lr_layers)
    Trainer(config).fit(model, task, {"train": frames})
    return model.cpu().eval()


def span_delta(encoder: WhisperEncoder, span: LayerSpanClassifier, first: int,
               rank: int | None = 16) -> dict[str, np.ndarray]:
    """The tuned span's change from ``encoder``'s layers (heads dropped), keyed by the
    encoder's parameter names (``layers.<i>.<param>``), matrices cut to ``rank``."""
    pretrained = encoder.state_dict()
    tuned = {f"layers.{first - 1 + i}.{name}": value for i, layer in enumerate(span.layers)
             for name, value in layer.state_dict().items()}
    return weight_delta(tuned, {name: pretrained[name] for name in tuned}, rank)


@torch.no_grad()
def span_vectors(span: LayerSpanClassifier, frames: EmotionData, batch_size: int = 16,
                 device: str = "cpu") -> EmotionData:
    """``frames`` (of the state below ``span``) as the span's mean-pooled states side by
    side, one float32 vector per utterance (what the ``whisper`` extractor gives with
    ``layer=[first..last], pooling=mean`` on the same audio); utterances of similar length
    are batched together."""
    from emobridge.training.batching import collate

    span = span.to(device).eval()
    order = np.argsort([len(f) for f in frames.features], kind="stable")
    out: list[np.ndarray] = [np.empty(0)] * len(frames)
    for start in range(0, len(order), batch_size):
        rows = order[start: start + batch_size]
        batch = collate([frames.features[i] for i in rows], np.zeros(len(rows)), rows)
        pooled = torch.cat(span.pooled(batch.x.to(device), batch.mask.to(device)), dim=1)
        for i, vector in zip(rows, pooled.float().cpu().numpy(), strict=True):
            out[i] = vector
    return type(frames)(out, frames.labels, frames.speakers, frames.languages, frames.ids,
                        frames.classes)


def tune_on_manifest(manifest: pd.DataFrame, store: str | Path, classes: Sequence[str], *,
                     model: str = "base", level: str = "rms", first: int = 2, last: int = 4,
                     rank: int | None = 16, epochs: int = 3, batch_size: int = 8,
                     lr_layers: float = 2e-5, lr_heads: float = 1e-3,
                     weight_decay: float = 0.01, seed: int = 0, device: str = "cpu",
                     progress: bool = False) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Hidden states ``first..last`` of Whisper ``model`` tuned on a labelled manifest (its
    ``emotion`` column mapped into ``classes``): frames of state ``first - 1`` (audio at
    ``level``, as the recipe's features) extracted into the feature ``store`` (cached rows
    reused), :func:`tune_whisper_layers`, :func:`span_delta`. Returns the delta and the
    metadata to write with it (model, states, rank, frames id, settings, version)."""
    from emobridge import __version__
    from emobridge.features.extractors.whisper import WhisperExtractor
    from emobridge.features.store import FeatureStore
    from emobridge.methods.data import EmotionData

    frames = WhisperExtractor(model=model, backend="torch", layer=first - 1, pooling="none",
                              level=level, device=device)
    encoder = frames.load()
    check_states(encoder, first, last)  # before the frames are extracted
    feature_store = FeatureStore(store)
    feature_store.extract(manifest, frames, progress=progress)
    data = EmotionData.from_manifest(manifest, feature_store.load(manifest, frames), classes)
    span = tune_whisper_layers(encoder, data, first, last, epochs=epochs,
                               batch_size=batch_size, lr_layers=lr_layers, lr_heads=lr_heads,
                               weight_decay=weight_decay, seed=seed, device=device,
                               progress=progress)
    settings = {"model": model, "level": level, "hidden_states": f"{first}-{last}",
                "rank": str(rank), "frames": frames.id, "utterances": str(len(data)),
                "classes": ",".join(classes), "epochs": str(epochs),
                "batch_size": str(batch_size), "lr_layers": str(lr_layers),
                "lr_heads": str(lr_heads), "weight_decay": str(weight_decay),
                "seed": str(seed), "emobridge": __version__}
    return span_delta(encoder, span, first, rank), settings
