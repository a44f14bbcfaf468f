"""Layer selection and temporal pooling shared by every encoder extractor."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from emobridge.errors import FeatureError

Pooling = Literal["none", "mean", "meanstd"]
#: ``int`` (one layer, negative counts from the last), a list of ints (concatenated along
#: the feature axis), or ``"mean"`` (average of all layers).
LayerSelection = int | Sequence[int] | Literal["mean"]


def select_layers(hidden_states: Sequence[np.ndarray], layer: LayerSelection) -> np.ndarray:
    """Pick layer(s) from per-layer ``(frames, dims)`` arrays.

    ``hidden_states[0]`` is the input embedding, ``hidden_states[-1]`` the last layer (the
    transformers convention). A list concatenates along dims; ``"mean"`` averages all layers.
    """
    n = len(hidden_states)
    if isinstance(layer, str):
        if layer != "mean":
            raise FeatureError(f"layer must be an int, a list of ints or 'mean', got {layer!r}")
        return np.mean(np.stack(hidden_states), axis=0)
    indices = [layer] if isinstance(layer, int) else list(layer)
    if not indices:
        raise FeatureError("layer list is empty")
    for i in indices:
        if not -n <= int(i) < n:
            raise FeatureError(f"layer {i} out of range: the encoder has {n} hidden states")
    picked = [hidden_states[int(i)] for i in indices]
    return picked[0] if len(picked) == 1 else np.concatenate(picked, axis=-1)


def pool(frames: np.ndarray, pooling: Pooling) -> np.ndarray:
    """Pool ``(frames, dims)`` over time: ``none`` keeps frames, ``mean``, or ``meanstd``."""
    if pooling == "none":
        return frames.astype(np.float32)
    if pooling == "mean":
        return frames.mean(axis=0).astype(np.float32)
    if pooling == "meanstd":
        return np.concatenate([frames.mean(axis=0), frames.std(axis=0)]).astype(np.float32)
    raise FeatureError(f"pooling must be 'none', 'mean' or 'meanstd', got {pooling!r}")
