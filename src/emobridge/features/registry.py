"""Extractor registry and spec parsing.

A spec is either a dict ``{"name": "logmel", "params": {...}}`` or a string
``"logmel"`` / ``"logmel:preset=byols,n_mels=80"`` (values parsed as JSON where possible,
so ``layer=-1``, ``layers=[4,5]`` and ``normalise=true`` work).
"""

from __future__ import annotations

import inspect
from typing import Any

from emobridge.errors import FeatureError
from emobridge.features.base import Extractor
from emobridge.parsing import parse_pairs
from emobridge.registry import Registry

_EXTRACTORS: Registry[type[Extractor]] = Registry("extractor", "emobridge.features.extractors")

#: Class decorator adding an extractor under ``cls.name``.
register_extractor = _EXTRACTORS.register


def available_extractors() -> dict[str, type[Extractor]]:
    """Registered extractor classes by name (importing the built-ins first)."""
    return _EXTRACTORS.available()


def parse_spec(spec: str | dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Split a spec into ``(name, params)``."""
    if isinstance(spec, dict):
        if "name" not in spec:
            raise FeatureError(f"extractor spec {spec!r} has no 'name'")
        extra = set(spec) - {"name", "params"}
        if extra:
            raise FeatureError(f"extractor spec: unknown keys {sorted(extra)}")
        return str(spec["name"]), dict(spec.get("params") or {})
    name, _, rest = spec.partition(":")
    return name.strip(), parse_pairs(_split_top_level(rest), f"extractor spec {spec!r}:")


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets (so ``layers=[1,2]`` stays whole)."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "[{("
        depth -= ch in "]})"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current)
    return [p for p in (p.strip() for p in parts) if p]


def takes_device(name: str) -> bool:
    """Whether extractor ``name`` has a ``device`` parameter (can run on a GPU)."""
    cls = available_extractors().get(name)
    return cls is not None and "device" in inspect.signature(cls.__init__).parameters


def build_extractor(spec: str | dict[str, Any], device: str | None = None) -> Extractor:
    """Instantiate an extractor from a spec; unknown names or parameters raise FeatureError.
    ``device`` goes to extractors that take one, unless the spec sets it (the device is not
    part of an extractor's id: cached features are shared across devices)."""
    name, params = parse_spec(spec)
    if device is not None and takes_device(name):
        params.setdefault("device", device)
    cls = _EXTRACTORS.get(name)
    try:
        return cls(**params)
    except TypeError as exc:
        raise FeatureError(f"extractor {name!r}: bad parameters {params}: {exc}") from None
