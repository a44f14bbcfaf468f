"""Shared fixtures: every test makes its own small audio; nothing reads ../shared or the net."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

# Keep tests light on the 2-core CI machine and deterministic.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")



@pytest.fixture(autouse=True)
def _python_sigint_handler():
    """Run every test with Python's own SIGINT handler. A non-interactive shell starts
    background jobs (``pytest ... &``) with SIGINT ignored, and that disposition is inherited
    by the subprocesses the Ctrl-C tests signal, which would then never see KeyboardInterrupt;
    a Python handler is reset to the default on exec, so children start with it too."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)

def voiced_tone(duration_s: float = 1.0, f0_hz: float = 150.0, sample_rate_hz: int = 16_000,
                seed: int = 0) -> np.ndarray:
    """A short harmonic tone with a little noise: enough structure for features to differ."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(duration_s * sample_rate_hz)) / sample_rate_hz
    wave = sum(np.sin(2 * np.pi * f0_hz * k * t) / k for k in range(1, 6))
    wave = 0.3 * wave / np.max(np.abs(wave)) + 0.01 * rng.standard_normal(t.size)
    return wave.astype(np.float32)


def write_tone(path: Path, duration_s: float = 0.5, f0_hz: float = 150.0,
               sample_rate_hz: int = 16_000, channels: int = 1, seed: int = 0,
               fmt: str | None = None) -> Path:
    """Write a tone to ``path`` (format from the suffix unless ``fmt`` is given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    wave = voiced_tone(duration_s, f0_hz, sample_rate_hz, seed)
    if channels > 1:
        wave = np.stack([wave] * channels, axis=1)
    sf.write(str(path), wave, sample_rate_hz, format=fmt)
    return path


@pytest.fixture
def tone_file(tmp_path: Path):
    """Factory fixture: ``tone_file("a/b.wav", duration_s=..., f0_hz=...)`` -> Path."""

    def make(relative: str, **kwargs) -> Path:
        return write_tone(tmp_path / relative, **kwargs)

    return make


def pytest_addoption(parser) -> None:
    parser.addoption("--fuzz-long", action="store_true", default=False,
                     help="run the fuzz tests (tests/fuzz) with 1,000 examples per surface")


def save_tiny_whisper(folder: Path, encoder_layers: int = 3) -> Path:
    """A tiny random transformers Whisper (16 dims, 2 heads, seed 0) saved to ``folder``."""
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    config = transformers.WhisperConfig(
        d_model=16, encoder_layers=encoder_layers, encoder_attention_heads=2,
        encoder_ffn_dim=32, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=32,
        num_mel_bins=80, max_source_positions=1500, max_target_positions=16, vocab_size=64,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=3,
        suppress_tokens=None, begin_suppress_tokens=None)
    transformers.WhisperModel(config).save_pretrained(folder)
    return folder
