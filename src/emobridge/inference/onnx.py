"""Run a model exported with ``emobridge model export --format onnx``, with nothing but
onnxruntime, numpy, soundfile and soxr (no torch, no emobridge install needed: the export
folder holds a copy of this file as ``emobridge_onnx.py``).

    python emobridge_onnx.py EXPORT_DIR a.wav b.flac ...     # one line per file

    >>> from emobridge_onnx import OnnxRecognizer
    >>> rec = OnnxRecognizer("export/")
    >>> rec.predict_proba("a.wav")            # {"anger": 0.1, ...}

The pipeline is the bundle's, step by step, with the bundle's statistics (``stats =
bundle``): decode, mix to mono, resample to 16 kHz (soxr, high quality), scale to the
extractor's RMS level, Whisper's log-mel (numpy; window and mel filters come from the export),
the encoder up to the deepest selected layer (``encoder.onnx``: one <= 30-s window at a time,
its selected layers mean-pooled; longer audio is split into 30-s windows whose means are
combined by frame count, as the torch extractor concatenates their frames), then the
standardisation and classifier (``head.onnx``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST = "onnx.json"
FORMAT = "emobridge-onnx"


class OnnxRecognizer:
    """An exported model; ``threads`` caps onnxruntime's intra-op threads (0: its default)."""

    def __init__(self, folder: str | Path, threads: int = 0) -> None:
        import onnxruntime as ort

        self.folder = Path(folder)
        manifest = self.folder / MANIFEST
        if not manifest.is_file():
            raise ValueError(f"{self.folder}: no {MANIFEST} (not an emobridge ONNX export)")
        self.meta: dict[str, Any] = json.loads(manifest.read_text(encoding="utf-8"))
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"{manifest}: format {self.meta.get('format')!r}, expected "
                             f"{FORMAT!r}")
        self.classes: list[str] = list(self.meta["classes"])
        with np.load(self.folder / self.meta["frontend"], allow_pickle=False) as frontend:
            self.window = frontend["window"].astype(np.float32)
            self.filters = frontend["filters"].astype(np.float32)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(self.folder / self.meta["encoder"]), options,
                                            providers=providers)
        self.head = ort.InferenceSession(str(self.folder / self.meta["head"]), options,
                                         providers=providers)

    # -- audio -----------------------------------------------------------------------------
    def load(self, path: str | Path) -> np.ndarray:
        """A file as mono float32 at the model's rate."""
        import soundfile as sf

        wave, rate = sf.read(str(path), dtype="float32", always_2d=True)
        return self.prepare(wave, rate)

    def prepare(self, wave: np.ndarray, sample_rate_hz: int) -> np.ndarray:
        """Samples (or samples x channels) as mono float32 at the model's rate."""
        import soxr

        wave = np.asarray(wave, dtype=np.float32)
        wave = wave.mean(axis=1) if wave.ndim == 2 else wave
        target = int(self.meta["sample_rate_hz"])
        if sample_rate_hz != target:
            wave = soxr.resample(wave, sample_rate_hz, target, quality="HQ")
        if not wave.size or not np.all(np.isfinite(wave)):
            raise ValueError("audio is empty or not finite")
        return np.ascontiguousarray(wave, dtype=np.float32)

    def _level(self, wave: np.ndarray) -> np.ndarray:
        level = self.meta.get("level") or {}
        if level.get("mode", "none") == "none":
            return wave
        if level["mode"] == "rms":
            value = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))
        else:
            value = float(np.max(np.abs(wave)))
        gain = 10.0 ** (float(level["dbfs"]) / 20.0) / max(value, 1e-8)
        return (wave * gain).astype(np.float32)

    def log_mel(self, wave: np.ndarray) -> np.ndarray:
        """Whisper's log-mel ``(n_mels, samples // hop)`` of a mono 16-kHz waveform."""
        n_fft, hop = int(self.meta["n_fft"]), int(self.meta["hop_samples"])
        n_frames = wave.size // hop
        if n_frames < 1:
            raise ValueError(f"audio of {wave.size} samples is shorter than one frame")
        pad = max(0, n_frames * hop + n_fft // 2 - wave.size)
        padded = np.pad(np.pad(wave, (0, pad)), n_fft // 2, mode="reflect")
        frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop][:n_frames]
        power = np.abs(np.fft.rfft(frames * self.window, axis=1)) ** 2
        mel = np.log10(np.maximum(self.filters @ power.T.astype(np.float32), 1e-10))
        return ((np.maximum(mel, mel.max() - 8.0) + 4.0) / 4.0).astype(np.float32)

    # -- model -----------------------------------------------------------------------------
    def features(self, wave: np.ndarray) -> np.ndarray:
        """The pooled encoder features of a prepared waveform."""
        mel = self.log_mel(self._level(wave))
        width = int(self.meta["window_mel_frames"])
        total, count = None, 0
        for start in range(0, mel.shape[1], width):
            part = mel[:, start:start + width]
            pooled = self.encoder.run(None, {"mel": part[None]})[0][0]
            frames = (part.shape[1] + 1) // 2
            total = pooled * frames if total is None else total + pooled * frames
            count += frames
        return (total / count).astype(np.float32)

    def predict_proba(self, source: str | Path | tuple[np.ndarray, int]) -> dict[str, float]:
        """Class probabilities of a file or a ``(waveform, sample_rate)`` pair."""
        wave = self.prepare(*source) if isinstance(source, tuple) else self.load(source)
        proba = self.head.run(None, {"features": self.features(wave)[None]})[0][0]
        return {c: float(p) for c, p in zip(self.classes, proba, strict=True)}


def main(argv: list[str] | None = None) -> int:
    """``python emobridge_onnx.py EXPORT_DIR FILE...``: one tab-separated line per file."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2:
        print("usage: python emobridge_onnx.py EXPORT_DIR FILE...", file=sys.stderr)
        return 2
    try:
        rec = OnnxRecognizer(args[0])
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    status = 0
    for path in args[1:]:
        try:
            proba = rec.predict_proba(path)
        except (OSError, RuntimeError, ValueError) as exc:  # soundfile's errors included
            print(f"error: {path}: {exc}", file=sys.stderr)
            status = 1
            continue
        best = max(proba, key=proba.__getitem__)
        print("\t".join([path, best, *(f"{c}={p:.4f}" for c, p in proba.items())]))
    return status


if __name__ == "__main__":
    sys.exit(main())
