"""A fitted method as JSON metadata plus named arrays: what ``save`` / ``load`` and model
bundles (:mod:`emobridge.inference.bundle`) write and read.

Nothing here pickles: the metadata is strict JSON, the arrays go to a safetensors file
(numpy arrays of numbers and booleans only).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from emobridge.errors import EmobridgeError
from emobridge.fileio import read_arrays, read_json, write_arrays, write_json_atomic
from emobridge.methods.normalise import FeatureNormaliser

#: File names of a saved method (the bundle uses the same weights file name).
METHOD_JSON = "method.json"
WEIGHTS_FILE = "model.safetensors"

_SCALARS = (bool, int, float, str, type(None))
#: A public fitted attribute (``n_memory_slots_``), never ``_private`` or ``__dunder__``.
_FITTED_NAME = re.compile(r"[a-z][a-z0-9_]*_")


def normaliser_state(norm: FeatureNormaliser) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The normaliser's settings (JSON) and statistics (``normaliser.<i>.mean/std``)."""
    keys = list(getattr(norm, "stats_", {}))
    arrays: dict[str, np.ndarray] = {}
    for i, key in enumerate(keys):
        mean, std = norm.stats_[key]
        arrays[f"normaliser.{i}.mean"] = np.asarray(mean, dtype=np.float32)
        arrays[f"normaliser.{i}.std"] = np.asarray(std, dtype=np.float32)
    return {"mode": norm.mode, "eps": norm.eps, "keys": keys,
            "min_speaker_utterances": norm.min_speaker_utterances}, arrays


def normaliser_from_state(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
                          ) -> FeatureNormaliser:
    """Rebuild a :class:`FeatureNormaliser` written by :func:`normaliser_state`."""
    norm = FeatureNormaliser(meta["mode"], meta.get("eps", 1e-5),
                             meta.get("min_speaker_utterances", 1))
    norm.stats_ = {key: (np.asarray(arrays[f"normaliser.{i}.mean"], np.float32),
                         np.asarray(arrays[f"normaliser.{i}.std"], np.float32))
                   for i, key in enumerate(meta.get("keys", []))}
    return norm


def fitted_scalars(method: Any) -> dict[str, Any]:
    """Fitted attributes (``name_``) holding JSON scalars or tuples of them, e.g. NNPM's
    ``n_memory_slots_``: the small learned state a method may need to rebuild its model."""
    found: dict[str, Any] = {}
    for name, value in vars(method).items():
        if not name.endswith("_") or name.startswith("_"):
            continue
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, _SCALARS) or (
                isinstance(value, tuple) and all(isinstance(v, _SCALARS) for v in value)):
            found[name] = {"tuple": list(value)} if isinstance(value, tuple) else value
    return found


def restore_scalars(method: Any, scalars: Mapping[str, Any]) -> None:
    """Set the attributes written by :func:`fitted_scalars`; anything else in a (crafted)
    file -- a private or dunder name, a non-scalar value -- raises :class:`EmobridgeError`."""
    for name, value in scalars.items():
        plain = isinstance(value, _SCALARS) or (
            isinstance(value, dict) and set(value) == {"tuple"}
            and all(isinstance(v, _SCALARS) for v in value["tuple"]))
        if not (isinstance(name, str) and _FITTED_NAME.fullmatch(name) and plain):
            raise EmobridgeError(f"saved state: refusing fitted value {name!r}")
        if isinstance(value, dict) and set(value) == {"tuple"}:
            value = tuple(value["tuple"])
        setattr(method, name, value)


def save_method_files(directory: str | Path, meta: Mapping[str, Any],
                      arrays: Mapping[str, np.ndarray]) -> Path:
    """``directory/method.json`` (``meta`` plus the weights file name) and
    ``directory/model.safetensors``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_arrays(directory / WEIGHTS_FILE, arrays)
    write_json_atomic(directory / METHOD_JSON, {**meta, "weights": WEIGHTS_FILE})
    return directory


def read_method_files(directory: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The ``(meta, arrays)`` of a folder written by :func:`save_method_files`."""
    directory = Path(directory)
    path = directory / METHOD_JSON
    meta = read_json(path, f"{directory}: no method.json (not a saved method)")
    if not isinstance(meta, dict) or "method" not in meta:
        raise EmobridgeError(f"{path}: not a saved method (no 'method' entry)")
    return meta, read_arrays(directory / meta.get("weights", WEIGHTS_FILE))


def method_state(method: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``method.get_state()`` with a clear error for a method that cannot be saved."""
    if not hasattr(method, "get_state"):
        raise EmobridgeError(f"method {getattr(method, 'name', type(method).__name__)!r} "
                             "cannot be saved (no get_state)")
    return method.get_state()


def method_from_state(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
                      device: str | None = None) -> Any:
    """Rebuild the registered method named in ``meta`` (see each method's ``from_state``)."""
    from emobridge.methods import available_methods

    name = meta.get("method")
    klass = available_methods().get(name)
    if klass is None or not hasattr(klass, "from_state"):
        raise EmobridgeError(f"unknown or unloadable method {name!r}; known: "
                             f"{sorted(available_methods())}")
    return klass.from_state(meta, arrays, device=device)
