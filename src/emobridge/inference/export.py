"""Export a bundle to ONNX for deployment (``emobridge model export --format onnx``).

The export folder holds

- ``encoder.onnx``: the Whisper encoder up to the deepest layer the bundle's features use,
  input ``mel`` ``(1, n_mels, frames)`` (one <= 30-s window, any length), output the
  selected layers' hidden states concatenated and mean-pooled over frames ``(1, dims)``;
- ``head.onnx``: input ``features`` ``(n, dims)``, output class probabilities ``(n,
  classes)``: the bundle's statistics (``stats = bundle``), then the recipe's per-layer
  logistic regressions, averaged;
- ``frontend.npz``: the log-mel window and mel filters (plain arrays, no pickle);
- ``onnx.json``: classes, audio settings, file checksums, the source bundle and the largest
  difference to the torch path measured at export time;
- ``emobridge_onnx.py``: a copy of :mod:`emobridge.inference.onnx`, the runner that needs
  only onnxruntime, numpy, soundfile and soxr.

Supported: bundles of method ``recommended`` on ``whisper`` features with ``backend=torch``
and ``pooling=mean`` (the recipe and the default model). Exporting needs the ``onnx``
package (``pip install 'emobridge[export]'``); the legacy TorchScript exporter is used
because it needs nothing more (the dynamo exporter needs onnxscript).
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from emobridge.errors import EmobridgeError
from emobridge.fileio import atomic_path, prepare_output_dir, sha256_file, write_json_atomic
from emobridge.inference import onnx as runner

#: The largest difference in probability to the torch path an export may show.
TOLERANCE = 1e-4
OPSET = 17


class _PooledEncoder(nn.Module):
    """Encoder up to the deepest selected layer; the selected states mean-pooled."""

    def __init__(self, encoder: Any, layers: list[int]) -> None:
        super().__init__()
        self.encoder, self.layers = encoder, layers
        n = encoder.config.n_layers
        self.deepest = max(layers) if max(layers) < n else None

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        states = self.encoder(mel, output_hidden_states=True,
                              max_hidden_state=self.deepest).hidden_states
        return torch.cat([states[i] for i in self.layers], dim=-1).mean(dim=1)


class _RecipeHead(nn.Module):
    """Standardise with fixed statistics, then average the views' logistic regressions."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, models: list[Any],
                 n_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.from_numpy(np.asarray(mean, np.float32)))
        self.register_buffer("std", torch.from_numpy(np.asarray(std, np.float32)))
        self.coefs = [torch.from_numpy(np.asarray(m.coef_, np.float32)) for m in models]
        self.biases = [torch.from_numpy(np.asarray(m.intercept_, np.float32)) for m in models]
        # each view's classes placed among all classes (a class absent from a view: 0)
        self.places = [torch.from_numpy(np.eye(n_classes, dtype=np.float32)[m.classes_])
                       for m in models]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = (features - self.mean) / self.std
        blocks = torch.chunk(z, len(self.coefs), dim=1)
        total = 0
        for x, w, b, place in zip(blocks, self.coefs, self.biases, self.places, strict=True):
            logits = x @ w.T + b
            if w.shape[0] == 1:  # binary logistic regression: sigmoid of one score
                p1 = torch.sigmoid(logits)
                proba = torch.cat([1 - p1, p1], dim=1)
            else:
                proba = torch.softmax(logits, dim=1)
            total = total + proba @ place
        return total / len(self.coefs)


def _check_supported(rec: Any) -> tuple[Any, list[int]]:
    """The bundle's extractor and selected layers, or a one-line refusal."""
    method = rec.bundle.meta["method"]["name"]
    if method != "recommended":
        raise EmobridgeError(f"export --format onnx supports bundles of method 'recommended' "
                             f"(the recipe and the default model), not {method!r}")
    ext = rec.extractor
    if ext.name != "whisper" or ext.backend != "torch" or ext.pooling != "mean":
        raise EmobridgeError("export --format onnx supports whisper features with "
                             f"backend=torch and pooling=mean, not {rec.bundle.extractor_spec}")
    layers = [ext.layer] if isinstance(ext.layer, int) else list(ext.layer)
    n_states = ext.load().config.n_layers + 1
    if not all(isinstance(i, int) and 0 <= i < n_states for i in layers):
        raise EmobridgeError(f"export --format onnx needs layer indices 0..{n_states - 1}, "
                             f"got {ext.layer!r}")
    return ext, layers


def _bundle_statistics(rec: Any, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std the recognizer applies with ``stats = bundle``."""
    norm = rec.method.normaliser_
    if norm is None or norm.mode == "none":
        return np.zeros(dims, np.float32), np.ones(dims, np.float32)
    key = "__all__" if norm.mode == "global" else "__bundle__"
    mean, std = norm.stats_[key]
    return np.asarray(mean, np.float32), np.asarray(std, np.float32)


def _export(module: nn.Module, example: torch.Tensor, path: Path, input_name: str,
            output_name: str, dynamic: dict[int, str]) -> None:
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and trace notes
        torch.onnx.export(module.eval(), (example,), str(tmp), dynamo=False,
                          input_names=[input_name], output_names=[output_name],
                          dynamic_axes={input_name: dynamic}, opset_version=OPSET)


def export_onnx(rec: Any, out: str | Path, check_audio: list[np.ndarray] | None = None
                ) -> dict[str, Any]:
    """Export recognizer ``rec``'s bundle to folder ``out`` (see the module docstring) and
    return its manifest. ``check_audio``: 16-kHz waveforms whose probabilities through the
    export must match the torch path within :data:`TOLERANCE` (default: two synthetic
    tones); a larger difference removes nothing but raises."""
    try:
        import onnx  # noqa: F401  (the legacy exporter writes through it)
    except ImportError:
        raise EmobridgeError("export --format onnx needs the onnx package: pip install "
                             "'emobridge[export]'") from None
    ext, layers = _check_supported(rec)
    folder = prepare_output_dir(out, marker=runner.MANIFEST, what="export folder")
    encoder = _PooledEncoder(ext.load(), layers)
    dims = encoder.encoder.config.d_model * len(layers)
    n_mels = encoder.encoder.config.n_mels
    _export(encoder, torch.zeros(1, n_mels, 200), folder / "encoder.onnx", "mel", "features",
            {2: "frames"})
    mean, std = _bundle_statistics(rec, dims)
    head = _RecipeHead(mean, std, rec.method.models_, len(rec.classes))
    _export(head, torch.zeros(2, dims), folder / "head.onnx", "features", "probabilities",
            {0: "batch"})
    frontend = ext._frontend
    with atomic_path(folder / "frontend.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, window=frontend.window.cpu().numpy(),
                 filters=frontend.filters.cpu().numpy())
    shutil.copyfile(runner.__file__, folder / "emobridge_onnx.py")
    manifest = _manifest(rec, ext, layers, dims, folder)
    write_json_atomic(folder / runner.MANIFEST, manifest)
    manifest["max_difference"] = _self_check(rec, folder, check_audio)
    write_json_atomic(folder / runner.MANIFEST, manifest)
    return manifest


def _manifest(rec: Any, ext: Any, layers: list[int], dims: int, folder: Path
              ) -> dict[str, Any]:
    from emobridge import __version__
    from emobridge.models.whisper_encoder import HOP_LENGTH_SAMPLES, N_FFT, WINDOW_MEL_FRAMES

    files = ["encoder.onnx", "head.onnx", "frontend.npz", "emobridge_onnx.py"]
    return {"format": runner.FORMAT, "format_version": 1, "emobridge_version": __version__,
            "classes": list(rec.classes), "sample_rate_hz": int(ext.sample_rate_hz),
            "level": {"mode": ext.level, "dbfs": float(ext.level_dbfs)},
            "n_fft": N_FFT, "hop_samples": HOP_LENGTH_SAMPLES,
            "window_mel_frames": WINDOW_MEL_FRAMES, "layers": layers, "feature_dims": dims,
            "encoder": "encoder.onnx", "head": "head.onnx", "frontend": "frontend.npz",
            "opset": OPSET, "statistics": "bundle",
            "source_bundle": {"path": str(rec.bundle.path),
                              "extractor": rec.bundle.extractor_spec,
                              "method": rec.bundle.meta["method"]["name"]},
            "sha256": {name: sha256_file(folder / name) for name in files}}


def _self_check(rec: Any, folder: Path, waves: list[np.ndarray] | None) -> float:
    """Largest absolute difference in probability between the export (float32) and
    ``rec``'s float32 torch path (``cpu_bf16="off"``)."""
    if waves is None:
        t = np.arange(16_000 * 2) / 16_000
        waves = [(0.3 * np.sin(2 * np.pi * f * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
                  ).astype(np.float32) for f in (140.0, 260.0)]
    exported = runner.OnnxRecognizer(folder)
    setting, rec.extractor.cpu_bf16 = rec.extractor.cpu_bf16, "off"  # the float32 path
    try:
        expected = rec.proba(rec.features(waves), stats="bundle")
    finally:
        rec.extractor.cpu_bf16 = setting
    got = np.array([[exported.predict_proba((w, 16_000))[c] for c in rec.classes]
                    for w in waves])
    diff = float(np.max(np.abs(got - expected)))
    if diff > TOLERANCE:
        raise EmobridgeError(f"export: the ONNX model's probabilities differ from the torch "
                             f"path by {diff:.2g} (more than {TOLERANCE:g})")
    return diff
