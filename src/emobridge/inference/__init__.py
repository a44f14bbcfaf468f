"""Inference: model bundles, the :class:`Recognizer`, timelines over long audio and the
HTTP service (``emobridge serve``)."""

from __future__ import annotations

from typing import Any

__all__ = ["Bundle", "Prediction", "Recognizer", "load_bundle", "save_bundle"]

_LAZY = {"Bundle": "bundle", "load_bundle": "bundle", "save_bundle": "bundle",
         "Prediction": "recognizer", "Recognizer": "recognizer"}


def __getattr__(name: str) -> Any:  # lazy: importing emobridge must not import torch
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f"emobridge.inference.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'emobridge.inference' has no attribute {name!r}")
